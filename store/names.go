package store

import (
	"fmt"
	"strings"
)

// FileKind is one of the files a database shows in the mount.
type FileKind uint8

const (
	FileDatabase FileKind = iota // NAME
	FileJournal                  // NAME-journal: rollback journal
	FileWAL                      // NAME-wal: write-ahead log
	FileSHM                      // NAME-shm: WAL index, shared memory
	FilePos                      // NAME-pos: read-only position, "TXID/checksum"
	FileLock                     // NAME-lock: hidden, carries the HALT lock byte
)

var kindSuffixes = []struct {
	kind   FileKind
	suffix string
}{
	{FileJournal, "-journal"},
	{FileWAL, "-wal"},
	{FileSHM, "-shm"},
	{FilePos, "-pos"},
	{FileLock, "-lock"},
}

func (k FileKind) String() string {
	if k == FileDatabase {
		return "database"
	}
	for _, s := range kindSuffixes {
		if s.kind == k {
			return s.suffix[1:]
		}
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Suffix returns the file name suffix of the kind ("" for the database).
func (k FileKind) Suffix() string {
	for _, s := range kindSuffixes {
		if s.kind == k {
			return s.suffix
		}
	}
	return ""
}

// Listed reports whether files of this kind appear in directory listings.
func (k FileKind) Listed() bool { return k != FileLock }

// ParseFilename splits a file name in the mount into the database it
// belongs to and its kind.
func ParseFilename(name string) (db string, kind FileKind) {
	for _, s := range kindSuffixes {
		if base, ok := strings.CutSuffix(name, s.suffix); ok && base != "" {
			return base, s.kind
		}
	}
	return name, FileDatabase
}

// ErrInvalidName is returned for a database name litefs cannot hold.
var ErrInvalidName = fmt.Errorf("invalid database name")

// ValidateName checks that name can be a database: a single, non-hidden
// path element that does not end in a suffix reserved for its files.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > 200:
		return fmt.Errorf("%w: %q is longer than 200 bytes", ErrInvalidName, name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: %q contains a slash or NUL; databases live in a flat directory", ErrInvalidName, name)
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("%w: %q starts with a dot; those names are reserved", ErrInvalidName, name)
	}
	if _, kind := ParseFilename(name); kind != FileDatabase {
		return fmt.Errorf("%w: %q ends in %q, which is reserved for the database's %s file", ErrInvalidName, name, kind.Suffix(), kind)
	}
	return nil
}
