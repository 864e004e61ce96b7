package store

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
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
// path element of printable UTF-8 that does not end in a suffix reserved
// for its files.
//
// Names travel to other nodes, into logs, metrics and listings, so a name
// must read the same everywhere: no control characters (a newline would
// forge a log line, an escape sequence would drive a terminal), no
// invisible bidirectional controls (U+202E displays "evil\u202egpj.db" as
// "evilbd.jpg"), no leading or trailing whitespace (" a.db" and "a.db"
// look alike), and nothing that is not UTF-8.
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
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidName, name)
	}
	for i, r := range name {
		switch {
		case unicode.Is(unicode.Cc, r):
			return fmt.Errorf("%w: %q contains the control character %U at byte %d", ErrInvalidName, name, r, i)
		case isBidiControl(r):
			return fmt.Errorf("%w: %q contains the bidirectional text control %U at byte %d, which changes how the name displays", ErrInvalidName, name, r, i)
		case r == '\u2028' || r == '\u2029':
			return fmt.Errorf("%w: %q contains the line separator %U at byte %d", ErrInvalidName, name, r, i)
		}
	}
	if first, _ := utf8.DecodeRuneInString(name); unicode.IsSpace(first) {
		return fmt.Errorf("%w: %q begins with whitespace", ErrInvalidName, name)
	}
	if last, _ := utf8.DecodeLastRuneInString(name); unicode.IsSpace(last) {
		return fmt.Errorf("%w: %q ends with whitespace", ErrInvalidName, name)
	}
	if _, kind := ParseFilename(name); kind != FileDatabase {
		return fmt.Errorf("%w: %q ends in %q, which is reserved for the database's %s file", ErrInvalidName, name, kind.Suffix(), kind)
	}
	return nil
}

// isBidiControl reports whether r is one of Unicode's bidirectional
// formatting characters: the marks (ALM, LRM, RLM), the embeddings and
// overrides (LRE, RLE, PDF, LRO, RLO) and the isolates (LRI, RLI, FSI, PDI).
func isBidiControl(r rune) bool {
	switch {
	case r == '\u061c', r == '\u200e', r == '\u200f':
		return true
	case r >= '\u202a' && r <= '\u202e':
		return true
	case r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}
