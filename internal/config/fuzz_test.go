package config

import (
	"os"
	"reflect"
	"testing"
)

// FuzzParse feeds arbitrary files to Parse. Whatever the input, Parse
// returns rather than panics, and a configuration it accepts names both
// directories, passes Validate again and parses the same way twice. Inputs
// it found that once broke these are kept under testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../../litefs.yml.example")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example, false)
	f.Add(example, true)
	for _, s := range []string{
		"",
		minimal,
		fullYAML,
		static,
		dirs,
		"fuse:\n  dir: /litefs\ndata:\n  dir: /litefs/data\nlease:\n  type: static\n",
		"fuse:\n  dir: mnt\ndata:\n  dir: ./mnt/../mnt/x\nlease:\n  type: static\n",
		"fuse:\n  dir: \"/a\\0b\"\ndata:\n  dir: /d\nlease:\n  type: static\n",
		"fuse: {dir: /m}\ndata: {dir: /d, retention: 0s}\nlease: {type: static}\n",
		"fuse: &f {dir: /m}\ndata:\n  <<: *f\nlease: {type: static}\n",
		"lease:\n  type: etcd\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    key: k\n    ttl: 2s\n" + dirs,
		"lease:\n  type: consul\n  consul: {url: http://c:8500, key: k}\n" + dirs + "exec:\n  - cmd: a\n    if-candidate: true\n  - <<: {cmd: b}\n",
		"fuse:\n  dir: ${HOME}/mnt\ndata:\n  dir: $HOME/data\nlease:\n  type: static\n  candidate: ${HOME == \"/root\"}\n",
		"a: &a [*a]\n",
		"- - - - - - - -\n",
		"lease: [\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, expandEnv bool) {
		c, err := Parse(data, expandEnv)
		if err != nil {
			return
		}
		if c.FUSE.Dir == "" || c.Data.Dir == "" {
			t.Fatalf("accepted a configuration without fuse.dir (%q) or data.dir (%q)", c.FUSE.Dir, c.Data.Dir)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a configuration Validate refuses: %v", err)
		}
		again, err := Parse(data, expandEnv)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("a second Parse of the same input differs: %v\n%+v\n%+v", err, again, c)
		}
	})
}
