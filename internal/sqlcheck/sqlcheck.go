// Package sqlcheck validates a SQLite database file before litefs takes it
// in, with SQLite itself: the C library (github.com/mattn/go-sqlite3) when
// the binary is built with cgo, else its pure-Go translation
// (modernc.org/sqlite), so that a static binary still checks, more slowly.
package sqlcheck

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
)

// Check reports why the file at path is not a sound SQLite database: not
// one at all, or failing PRAGMA integrity_check. It opens the file
// read-only and immutable, so it does not change it (nor look for a
// journal or WAL beside it), and maps it into memory so that pages are not
// copied in one system call each.
func Check(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	hdr := make([]byte, 100)
	_, err = io.ReadFull(f, hdr)
	f.Close()
	if err != nil || !bytes.HasPrefix(hdr, []byte("SQLite format 3\x00")) {
		return errors.New("not a SQLite database: the file does not start with the SQLite header")
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=ro&immutable=1"
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	// One connection, so that the PRAGMA below applies to the check.
	db.SetMaxOpenConns(1)
	// SQLite caps the mapping at its compile-time maximum (2 GiB by
	// default) and reads the rest of a larger file as usual.
	if _, err := db.Exec("PRAGMA mmap_size = 4294967296"); err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	rows, err := db.Query("PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("integrity_check: %w", err)
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	if len(problems) > 0 {
		if len(problems) > 5 {
			problems = append(problems[:5], fmt.Sprintf("and %d more", len(problems)-5))
		}
		return fmt.Errorf("integrity_check failed: %s", strings.Join(problems, "; "))
	}
	return nil
}
