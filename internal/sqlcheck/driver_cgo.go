//go:build cgo

package sqlcheck

import _ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver

// The C library: several times faster than the translation on large files.
const driverName = "sqlite3"
