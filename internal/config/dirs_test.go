package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// validWith returns a valid configuration but for the given directories.
func validWith(fuseDir, dataDir string) Config {
	c := New()
	c.Lease.Type = "static"
	c.FUSE.Dir, c.Data.Dir = fuseDir, dataDir
	return c
}

// TestDirsRequired: neither directory has a default. LiteFS requires both,
// and a silent default would mount or fill a directory the configuration
// never names.
func TestDirsRequired(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no fuse section", "lease:\n  type: static\ndata:\n  dir: /var/lib/app\n", "fuse.dir is required"},
		{"fuse section without dir", "lease:\n  type: static\nfuse:\n  debug: true\ndata:\n  dir: /var/lib/app\n", "fuse.dir is required"},
		{"no data section", "lease:\n  type: static\nfuse:\n  dir: /mnt/app\n", "data.dir is required"},
		{"data section without dir", "lease:\n  type: static\nfuse:\n  dir: /mnt/app\ndata:\n  retention: 1m\n", "data.dir is required"},
		{"neither", "lease:\n  type: static\n", "fuse.dir is required"},
		{"empty file", "", "fuse.dir is required"},
		{"null dir", "lease:\n  type: static\nfuse:\n  dir: ~\ndata:\n  dir: /d\n", "fuse.dir is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in), false)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Parse = (fuse.dir %q, data.dir %q, %v), want error %q", c.FUSE.Dir, c.Data.Dir, err, tc.want)
			}
		})
	}
	if c := New(); c.FUSE.Dir != "" || c.Data.Dir != "" {
		t.Errorf("New() has fuse.dir %q, data.dir %q; want no default", c.FUSE.Dir, c.Data.Dir)
	}
}

// TestDirsOverlap: a data directory at or under the mount makes the
// daemon write its own data through its own mount, and the first create
// deadlocks it; a mount inside the data directory puts it among the
// store's files. Both are refused, comparing cleaned absolute paths.
func TestDirsOverlap(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, fuse, data string
		want             []string // substrings of the error; none means valid
	}{
		{"unrelated", "/mnt/app", "/var/lib/app", nil},
		{"siblings sharing a prefix", "/srv/app", "/srv/app-data", nil},
		{"sibling with a dot", "/srv/app", "/srv/app.data", nil},
		{"data beside, named like a parent", "/srv/app/mnt", "/srv/app/..mnt", nil},
		{"same", "/srv/app", "/srv/app", []string{`data.dir "/srv/app"`, `fuse.dir "/srv/app"`, "same directory"}},
		{"same with a trailing slash", "/srv/app/", "/srv/app", []string{`data.dir "/srv/app"`, `fuse.dir "/srv/app/" (/srv/app)`, "same directory"}},
		{"same through dot-dot", "/srv/x/../app", "/srv/./app", []string{`fuse.dir "/srv/x/../app" (/srv/app)`, `data.dir "/srv/./app" (/srv/app)`}},
		{"data inside fuse", "/srv/mnt", "/srv/mnt/data", []string{`data.dir "/srv/mnt/data" is inside fuse.dir "/srv/mnt"`}},
		{"data deep inside fuse", "/srv/mnt", "/srv/mnt/a/b/c", []string{`data.dir "/srv/mnt/a/b/c" is inside fuse.dir "/srv/mnt"`}},
		{"data inside fuse, name starts with dots", "/srv/mnt", "/srv/mnt/..data", []string{`data.dir "/srv/mnt/..data" is inside fuse.dir "/srv/mnt"`}},
		{"data inside fuse at the root", "/", "/var/lib/app", []string{`data.dir "/var/lib/app" is inside fuse.dir "/"`}},
		{"fuse inside data", "/srv/data/mnt", "/srv/data", []string{`fuse.dir "/srv/data/mnt" is inside data.dir "/srv/data"`}},
		{"fuse inside data at the root", "/srv/mnt", "/", []string{`fuse.dir "/srv/mnt" is inside data.dir "/"`}},
		{"relative, data inside fuse", "mnt", "mnt/data", []string{`data.dir "mnt/data" (` + filepath.Join(wd, "mnt/data") + `) is inside fuse.dir "mnt" (` + filepath.Join(wd, "mnt") + `)`}},
		{"relative against absolute", filepath.Join(wd, "mnt"), "./mnt/data", []string{`data.dir "./mnt/data"`, `is inside fuse.dir "` + filepath.Join(wd, "mnt") + `"`}},
		{"relative, unrelated", "mnt", "data", nil},
		{"NUL in fuse.dir", "/srv/a\x00b", "/srv/data", []string{`fuse.dir "/srv/a\x00b" contains a NUL byte`}},
		{"NUL in data.dir", "/srv/mnt", "/srv/d\x00", []string{`data.dir "/srv/d\x00" contains a NUL byte`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validWith(tc.fuse, tc.data)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() accepted fuse.dir %q, data.dir %q", tc.fuse, tc.data)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestDirsOverlapParsed: the same check applies to a parsed file.
func TestDirsOverlapParsed(t *testing.T) {
	_, err := Parse([]byte("lease:\n  type: static\nfuse:\n  dir: /litefs\ndata:\n  dir: /litefs/data\n"), false)
	if err == nil || !strings.Contains(err.Error(), `data.dir "/litefs/data" is inside fuse.dir "/litefs"`) {
		t.Fatalf("Parse = %v, want data.dir inside fuse.dir refused", err)
	}
}

// TestValidateDirsSymlinks: a data directory reached through a symbolic
// link into the mount is the same deadlock as one inside it, so the
// check is repeated on the paths as the filesystem resolves them. Links
// whose targets do not exist yet count too: litefs would create them.
func TestValidateDirsSymlinks(t *testing.T) {
	root := t.TempDir()
	mnt := filepath.Join(root, "mnt")
	for _, d := range []string{mnt, filepath.Join(mnt, "deep"), filepath.Join(root, "sub"), filepath.Join(root, "data"), filepath.Join(root, "elsewhere")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := func(name, target string) string {
		p := filepath.Join(root, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	toMnt := link("to-mnt", mnt)
	dangling := link("dangling", filepath.Join(mnt, "data"))
	relative := link("relative", "mnt")
	link("sub/deep", filepath.Join(mnt, "deep"))
	toData := link("to-data", filepath.Join(root, "data"))
	loop := link("loop-a", filepath.Join(root, "loop-b"))
	link("loop-b", loop)
	fine := link("fine", filepath.Join(root, "elsewhere"))

	for _, tc := range []struct {
		name, fuse, data string
		want             []string // substrings of the error; none means valid
	}{
		{"data through a link to the mount", mnt, filepath.Join(toMnt, "data"),
			[]string{`data.dir "` + toMnt + `/data" (resolves to ` + mnt + `/data) is inside fuse.dir "` + mnt + `"`}},
		{"data is a link to the mount", mnt, toMnt,
			[]string{`data.dir "` + toMnt + `" (resolves to ` + mnt + `)`, "same directory"}},
		{"data is a dangling link into the mount", mnt, dangling,
			[]string{`data.dir "` + dangling + `" (resolves to ` + mnt + `/data) is inside fuse.dir`}},
		{"relative link", mnt, filepath.Join(relative, "x"), []string{"resolves to " + mnt + "/x", "is inside fuse.dir"}},
		// The kernel follows the link before "..": physically mnt/d.
		{"dot-dot after a link", mnt, filepath.Join(root, "sub") + "/deep/../d", []string{"resolves to " + mnt + "/d", "is inside fuse.dir"}},
		{"mount through a link into the data", filepath.Join(toData, "mnt"), filepath.Join(root, "data"),
			[]string{`fuse.dir "` + toData + `/mnt" (resolves to ` + root + `/data/mnt) is inside data.dir`}},
		{"link loop", mnt, filepath.Join(loop, "x"), []string{`data.dir "` + loop + `/x"`, "too many levels of symbolic links"}},
		{"link elsewhere", mnt, filepath.Join(fine, "data"), nil},
		{"nothing exists yet", filepath.Join(root, "new/mnt"), filepath.Join(root, "new/data"), nil},
		{"lexical overlap is still refused", mnt, filepath.Join(mnt, "data"), []string{"is inside fuse.dir"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validWith(tc.fuse, tc.data)
			err := c.ValidateDirs()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("ValidateDirs() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateDirs() accepted fuse.dir %q, data.dir %q", tc.fuse, tc.data)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ValidateDirs() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}
