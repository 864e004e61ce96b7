package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadExplicitPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custom.yml")
	writeFile(t, path, addDirs(static+"fuse:\n  dir: /explicit\n"))
	c, got, err := Load(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if got != path || c.FUSE.Dir != "/explicit" {
		t.Fatalf("Load = (fuse.dir %q, path %q), want (/explicit, %q)", c.FUSE.Dir, got, path)
	}

	// Expansion is passed through.
	t.Setenv("LFS_TEST_MOUNT", "/from-env")
	writeFile(t, path, addDirs(static+"fuse:\n  dir: $LFS_TEST_MOUNT\n"))
	if c, _, err = Load(path, true); err != nil || c.FUSE.Dir != "/from-env" {
		t.Fatalf("Load(expand) = %q, %v", c.FUSE.Dir, err)
	}
	if c, _, err = Load(path, false); err != nil || c.FUSE.Dir != "$LFS_TEST_MOUNT" {
		t.Fatalf("Load(no expand) = %q, %v", c.FUSE.Dir, err)
	}
}

func TestLoadExplicitMissing(t *testing.T) {
	// A missing explicit path is an error even when another config exists in
	// the search path.
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "litefs.yml"), minimal)
	t.Chdir(dir)
	path := filepath.Join(dir, "nope", "litefs.yml")
	_, got, err := Load(path, false)
	if err == nil {
		t.Fatal("Load of a missing explicit path succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name %s", err, path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %q is not fs.ErrNotExist", err)
	}
	if errors.Is(err, ErrNotFound) {
		t.Errorf("missing explicit path reported as ErrNotFound (searched)")
	}
	if got != path {
		t.Errorf("Load returned path %q, want %q", got, path)
	}
}

func TestLoadInvalidNamesPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "litefs.yml")
	writeFile(t, path, static+"fuse:\n  dri: /x\n")
	_, got, err := Load(path, false)
	if err == nil {
		t.Fatal("Load of an invalid file succeeded")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `unknown key "fuse.dri" at line 4`) {
		t.Errorf("error = %q, want it to name %s and the unknown key", err, path)
	}
	if got != path {
		t.Errorf("Load returned path %q, want %q", got, path)
	}
}

func TestLoadDirectoryIsError(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Load(dir, false); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Load(directory) error = %v, want one naming %s", err, dir)
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(fa, fb)
}

func TestSearchPaths(t *testing.T) {
	cwd, home := t.TempDir(), t.TempDir()
	t.Chdir(cwd)
	t.Setenv("HOME", home)
	paths := SearchPaths()
	if len(paths) != 3 {
		t.Fatalf("SearchPaths() = %q, want 3 entries", paths)
	}
	if filepath.Base(paths[0]) != "litefs.yml" || !filepath.IsAbs(paths[0]) {
		t.Errorf("first path %q is not an absolute litefs.yml", paths[0])
	}
	writeFile(t, filepath.Join(cwd, "litefs.yml"), "")
	if !sameFile(t, paths[0], filepath.Join(cwd, "litefs.yml")) {
		t.Errorf("first path %q is not in the working directory %s", paths[0], cwd)
	}
	if want := filepath.Join(home, "litefs.yml"); paths[1] != want {
		t.Errorf("second path = %q, want %q", paths[1], want)
	}
	if paths[2] != "/etc/litefs.yml" {
		t.Errorf("third path = %q, want /etc/litefs.yml", paths[2])
	}
}

func TestLoadSearchOrder(t *testing.T) {
	cwd, home := t.TempDir(), t.TempDir()
	t.Chdir(cwd)
	t.Setenv("HOME", home)
	cwdFile, homeFile := filepath.Join(cwd, "litefs.yml"), filepath.Join(home, "litefs.yml")
	writeFile(t, cwdFile, addDirs(static+"fuse:\n  dir: /from-cwd\n"))
	writeFile(t, homeFile, addDirs(static+"fuse:\n  dir: /from-home\n"))

	c, got, err := Load("", false)
	if err != nil {
		t.Fatal(err)
	}
	if c.FUSE.Dir != "/from-cwd" || !sameFile(t, got, cwdFile) {
		t.Fatalf("Load(\"\") = (%q, %q), want the working directory's file", c.FUSE.Dir, got)
	}

	if err := os.Remove(cwdFile); err != nil {
		t.Fatal(err)
	}
	c, got, err = Load("", false)
	if err != nil {
		t.Fatal(err)
	}
	if c.FUSE.Dir != "/from-home" || got != homeFile {
		t.Fatalf("Load(\"\") = (%q, %q), want %s", c.FUSE.Dir, got, homeFile)
	}

	// An invalid file found in the search stops the search with its error.
	writeFile(t, cwdFile, addDirs("lease:\n  type: nope\n"))
	if _, got, err = Load("", false); err == nil || !strings.Contains(err.Error(), "nope") || !sameFile(t, got, cwdFile) {
		t.Fatalf("Load(\"\") with an invalid ./litefs.yml = (%q, %v), want its error", got, err)
	}

	if err := os.Remove(cwdFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(homeFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/etc/litefs.yml"); err == nil {
		t.Skip("/etc/litefs.yml exists on this machine; cannot test the not-found case")
	}
	_, got, err = Load("", false)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load(\"\") with no file = %v, want ErrNotFound", err)
	}
	if got != "" {
		t.Errorf("Load returned path %q with no file", got)
	}
	for _, p := range []string{homeFile, "/etc/litefs.yml"} {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("ErrNotFound message %q does not list %s", err, p)
		}
	}
}
