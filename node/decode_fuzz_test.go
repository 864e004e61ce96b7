package node

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	lhttp "github.com/litefs-project/litefs/http"
)

// FuzzHandoffBody decodes the bodies of POST /handoff, /handoff/release
// and /promote as their handlers do: malformed JSON is an error, never a
// panic, and what is accepted is the request it says, which encodes and
// decodes to itself.
func FuzzHandoffBody(f *testing.F) {
	for _, s := range []string{
		`{"hostname":"node-b","epoch":7}`,
		`{"hostname":"","epoch":7}`,
		`{"hostname":"node-b","epoch":-7}`,
		`{"hostname":"node-b","epoch":18446744073709551616}`,
		`{"hostname":"node-b","epoch":1e3}`,
		`{"hostname":42}`,
		`{"epoch":7}`,
		`{}`, ``, `null`, `[]`, `{`,
		`{"hostname":"node-b"} {"hostname":"node-c"}`,
		`{"hostname":"` + strings.Repeat("x", 70<<10) + `"}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, promote bool) {
		r := httptest.NewRequest("POST", "/handoff", bytes.NewReader(body))
		var v any = new(lhttp.HandoffRequest)
		if promote {
			v = new(lhttp.PromoteRequest)
		}
		if err := decode(r, v); err != nil {
			return
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("accepted request %+v does not encode: %v", v, err)
		}
		again := reflect.New(reflect.TypeOf(v).Elem()).Interface()
		if err := json.Unmarshal(b, again); err != nil || !reflect.DeepEqual(again, v) {
			t.Fatalf("accepted request %+v encodes as %s, which decodes to %+v (%v)", v, b, again, err)
		}
		if h, ok := v.(*lhttp.HandoffRequest); ok && len(h.Hostname) > 64<<10 {
			t.Fatalf("accepted a hostname of %d bytes from a body limited to 64 KiB", len(h.Hostname))
		}
	})
}
