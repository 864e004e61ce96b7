package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// validateDirs checks fuse.dir and data.dir on their own: both are
// required (neither has a default, as in LiteFS), and neither may be the
// other or lie inside it. A data directory at or under the mount makes
// litefs write its own data through its own mount, which deadlocks it on
// the first create; a mount inside the data directory hides the store's
// files or sits among them. Paths are compared cleaned and absolute; the
// filesystem is not read (see ValidateDirs).
func (c *Config) validateDirs() error {
	switch {
	case c.FUSE.Dir == "":
		return errors.New("fuse.dir is required")
	case c.Data.Dir == "":
		return errors.New("data.dir is required")
	case strings.IndexByte(c.FUSE.Dir, 0) >= 0:
		return fmt.Errorf("fuse.dir %q contains a NUL byte", c.FUSE.Dir)
	case strings.IndexByte(c.Data.Dir, 0) >= 0:
		return fmt.Errorf("data.dir %q contains a NUL byte", c.Data.Dir)
	}
	fuseDir, dataDir := absPath(c.FUSE.Dir), absPath(c.Data.Dir)
	return checkOverlap(
		dirName{"fuse.dir", c.FUSE.Dir, fuseDir, ""},
		dirName{"data.dir", c.Data.Dir, dataDir, ""},
	)
}

// ValidateDirs repeats Validate's check of fuse.dir against data.dir on
// the paths the filesystem will resolve them to: symbolic links among
// their existing parts are followed (a link into the mount is the same
// deadlock as a path into it), and the parts that do not exist yet are
// taken as the directories litefs will create. It reads the filesystem,
// so it is run once at start-up, before anything is created or mounted.
func (c *Config) ValidateDirs() error {
	if err := c.validateDirs(); err != nil {
		return err
	}
	fuseDir, err := resolvePath(c.FUSE.Dir)
	if err != nil {
		return fmt.Errorf("fuse.dir %q: %w", c.FUSE.Dir, err)
	}
	dataDir, err := resolvePath(c.Data.Dir)
	if err != nil {
		return fmt.Errorf("data.dir %q: %w", c.Data.Dir, err)
	}
	return checkOverlap(
		dirName{"fuse.dir", c.FUSE.Dir, fuseDir, "resolves to "},
		dirName{"data.dir", c.Data.Dir, dataDir, "resolves to "},
	)
}

// dirName is a configured directory as an error message shows it.
type dirName struct {
	key, value string
	path       string // the value cleaned and absolute, or resolved
	how        string // how path was derived from value, for the message
}

func (d dirName) String() string {
	if d.path == d.value {
		return fmt.Sprintf("%s %q", d.key, d.value)
	}
	return fmt.Sprintf("%s %q (%s%s)", d.key, d.value, d.how, d.path)
}

func checkOverlap(fuseDir, dataDir dirName) error {
	switch {
	case fuseDir.path == dataDir.path:
		return fmt.Errorf("%s and %s are the same directory: the data directory must be outside the mount", dataDir, fuseDir)
	case within(dataDir.path, fuseDir.path):
		return fmt.Errorf("%s is inside %s: the data directory must be outside the mount, or litefs would write its data through its own mount", dataDir, fuseDir)
	case within(fuseDir.path, dataDir.path):
		return fmt.Errorf("%s is inside %s: the mount must be outside the data directory", fuseDir, dataDir)
	}
	return nil
}

// within reports whether path lies strictly inside dir; both are clean
// and absolute.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == "." {
		return false
	}
	// A name such as "..data" is inside; only ".." itself, or a path
	// through it, leaves dir.
	return rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// absPath is p cleaned and made absolute against the working directory
// (which litefs does not change), or only cleaned if that is unknown.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

// maxLinks bounds the symbolic links followed for one path, as the
// kernel's own limit does (ELOOP).
const maxLinks = 40

// resolvePath returns the absolute, symlink-free path the kernel would
// resolve p to, component by component: a symbolic link is replaced by
// its target (also when the target does not exist), ".." goes up from
// what is resolved so far, and from the first component that cannot be
// looked up (it does not exist, or cannot be read) on the rest is taken
// as plain names, as the directories litefs will create there.
func resolvePath(p string) (string, error) {
	if !filepath.IsAbs(p) {
		wd, err := os.Getwd()
		if err != nil {
			return "", err
		}
		p = wd + string(filepath.Separator) + p
	}
	todo := strings.Split(p, string(filepath.Separator))
	resolved := string(filepath.Separator)
	missing, links := false, 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, name)
		if missing {
			resolved = next
			continue
		}
		fi, err := os.Lstat(next)
		if err != nil {
			// Whatever litefs will do there (create it, or fail to), no
			// link is followed from here on.
			missing, resolved = true, next
			continue
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("too many levels of symbolic links at %s", next)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			resolved = string(filepath.Separator)
		}
		todo = append(strings.Split(target, string(filepath.Separator)), todo...)
	}
	return resolved, nil
}
