package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var configType = reflect.TypeOf(Config{})

// checkKeys walks a mapping node alongside the struct it decodes into and
// reports the first key the struct has no field for, with its full dotted
// name and line, e.g. `unknown key "fuse.dri" at line 3`.
func checkKeys(n *yaml.Node, t reflect.Type, prefix string) error {
	w := keyWalker{done: make(map[walked]bool)}
	return w.checkKeys(n, t, prefix)
}

// keyWalker remembers the nodes it has checked. Merge keys follow aliases,
// so without it a mapping that merges itself ("a: &a {<<: *a}") would be
// walked until the stack overflows, and mappings merging each other many
// times over would be walked an exponential number of times. Each node is
// checked once for each type; yaml.v3 then refuses a recursive alias when
// decoding.
type keyWalker struct {
	done map[walked]bool
}

type walked struct {
	n *yaml.Node
	t reflect.Type
}

func (w keyWalker) checkKeys(n *yaml.Node, t reflect.Type, prefix string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if w.done[walked{n, t}] {
		return nil
	}
	w.done[walked{n, t}] = true
	switch {
	case t == reflect.TypeOf(ExecConfigs{}):
		if n.Kind == yaml.SequenceNode {
			for _, item := range n.Content {
				if err := w.checkKeys(item, reflect.TypeOf(ExecConfig{}), prefix+"[]"); err != nil {
					return err
				}
			}
		}
		return nil
	case t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode:
		return nil
	}

	fields := make(map[string]reflect.Type)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" {
			fields[tag] = f.Type
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Tag == "!!merge" {
			// A YAML merge key ("<<") brings in another mapping's keys,
			// which must be valid here too.
			if err := w.checkMerged(val, t, prefix); err != nil {
				return err
			}
			continue
		}
		name := key.Value
		if prefix != "" {
			name = prefix + "." + key.Value
		}
		ft, ok := fields[key.Value]
		if !ok {
			return fmt.Errorf("unknown key %q at line %d", name, key.Line)
		}
		if err := w.checkKeys(val, ft, name); err != nil {
			return err
		}
	}
	return nil
}

// checkMerged checks the mapping (or aliases of mappings) merged into a
// mapping by a "<<" key.
func (w keyWalker) checkMerged(n *yaml.Node, t reflect.Type, prefix string) error {
	switch n.Kind {
	case yaml.AliasNode:
		return w.checkMerged(n.Alias, t, prefix)
	case yaml.SequenceNode:
		for _, item := range n.Content {
			if err := w.checkMerged(item, t, prefix); err != nil {
				return err
			}
		}
		return nil
	}
	return w.checkKeys(n, t, prefix)
}

// ExpandEnv replaces $VAR and ${VAR} with environment variables, as LiteFS
// does. Inside braces a comparison is allowed and becomes "true" or
// "false": ${VAR == "value"}, ${VAR != 'value'}, ${VAR == OTHER_VAR}.
func ExpandEnv(s string) string {
	return os.Expand(s, expandVar)
}

var (
	compareQuoted = regexp.MustCompile(`^(\w+)\s*(==|!=)\s*(?:"([^"]*)"|'([^']*)')$`)
	compareVars   = regexp.MustCompile(`^(\w+)\s*(==|!=)\s*(\w+)$`)
)

func expandVar(expr string) string {
	expr = strings.TrimSpace(expr)
	if m := compareQuoted.FindStringSubmatch(expr); m != nil {
		want := m[3] + m[4]
		return strconv.FormatBool((os.Getenv(m[1]) == want) == (m[2] == "=="))
	}
	if m := compareVars.FindStringSubmatch(expr); m != nil {
		return strconv.FormatBool((os.Getenv(m[1]) == os.Getenv(m[3])) == (m[2] == "=="))
	}
	return os.Getenv(expr)
}
