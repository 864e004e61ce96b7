//go:build !cgo

package sqlcheck

import _ "modernc.org/sqlite" // registers the "sqlite" driver

// Without cgo (a static binary): the pure-Go translation of SQLite.
const driverName = "sqlite"
