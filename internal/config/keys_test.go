package config

import (
	"fmt"
	"strings"
	"testing"
)

// TestParseRecursiveMerges: merge keys follow aliases, and the key check
// once followed them without end. A mapping merging itself overflowed the
// stack (a fatal error, not a panic: litefs died on a four-line file), and
// mappings merging each other thrice over forty levels took 3^40 steps.
// Both are now refused with yaml.v3's own error. Found by FuzzParse; the
// inputs are also kept in testdata/fuzz/FuzzParse.
func TestParseRecursiveMerges(t *testing.T) {
	var chain strings.Builder
	chain.WriteString(static + "proxy:\n  passthrough:\n    - &x0 {debug: true}\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&chain, "    - &x%d {<<: [*x%d, *x%d, *x%d]}\n", i, i-1, i-1, i-1)
	}
	chain.WriteString("fuse: {<<: *x40, dir: /m}\n")
	for _, tc := range []struct {
		name, in, want string
	}{
		{"mapping merges itself", static + "fuse: &f\n  <<: *f\n", "anchor 'f' value contains itself"},
		{"mapping merges itself in a list", static + dirs + "exec:\n  - &e\n    <<: [*e]\n", "anchor 'e' value contains itself"},
		{"merges of merges", chain.String(), "excessive aliasing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in), false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
