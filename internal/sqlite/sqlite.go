// Package sqlite decodes the parts of SQLite's on-disk formats that litefs
// needs to observe: the database header, the rollback journal and the
// write-ahead log. It never writes SQLite files; it only interprets bytes.
package sqlite

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Database header layout (https://www.sqlite.org/fileformat.html).
const (
	HeaderSize = 100

	// PendingByte is the offset of the byte-range locks SQLite uses on the
	// database file. The page holding it (the "lock page") is never written.
	PendingByte  = 0x40000000
	ReservedByte = PendingByte + 1
	SharedFirst  = PendingByte + 2
	SharedSize   = 510

	MinPageSize = 512
	MaxPageSize = 65536
)

// Magic is the string every SQLite database file starts with.
const Magic = "SQLite format 3\x00"

// ErrNotDatabase is returned when a buffer does not start with a valid header.
var ErrNotDatabase = errors.New("not a SQLite database header")

// DBHeader holds the database header fields litefs cares about.
type DBHeader struct {
	PageSize      uint32
	WriteVersion  uint8 // 1 = rollback journal, 2 = WAL
	ReadVersion   uint8
	ChangeCounter uint32
	PageN         uint32 // in-header database size, valid only if VersionValid
	VersionValid  uint32
}

// ParseDBHeader decodes the first 100 bytes of a database file.
func ParseDBHeader(b []byte) (DBHeader, error) {
	if len(b) < HeaderSize {
		return DBHeader{}, fmt.Errorf("%w: %d bytes, need %d", ErrNotDatabase, len(b), HeaderSize)
	}
	if string(b[:len(Magic)]) != Magic {
		return DBHeader{}, fmt.Errorf("%w: bad magic", ErrNotDatabase)
	}
	pageSize, ok := DecodePageSize(binary.BigEndian.Uint16(b[16:18]))
	if !ok {
		return DBHeader{}, fmt.Errorf("%w: invalid page size field %d", ErrNotDatabase, binary.BigEndian.Uint16(b[16:18]))
	}
	return DBHeader{
		PageSize:      pageSize,
		WriteVersion:  b[18],
		ReadVersion:   b[19],
		ChangeCounter: binary.BigEndian.Uint32(b[24:28]),
		PageN:         binary.BigEndian.Uint32(b[28:32]),
		VersionValid:  binary.BigEndian.Uint32(b[92:96]),
	}, nil
}

// IsWAL reports whether the header marks the database as being in WAL mode.
func (h DBHeader) IsWAL() bool { return h.WriteVersion == 2 || h.ReadVersion == 2 }

// InHeaderPageN returns the database size recorded in the header and whether
// SQLite would trust it: the field is only valid when the "version valid for"
// number matches the change counter and the size is non-zero.
func (h DBHeader) InHeaderPageN() (uint32, bool) {
	return h.PageN, h.PageN > 0 && h.VersionValid == h.ChangeCounter
}

// DecodePageSize converts the 2-byte header encoding into a page size.
func DecodePageSize(v uint16) (uint32, bool) {
	sz := uint32(v)
	if sz == 1 {
		sz = 65536
	}
	return sz, IsValidPageSize(sz)
}

// IsValidPageSize reports whether sz is a power of two from 512 to 65536.
func IsValidPageSize(sz uint32) bool {
	return sz >= MinPageSize && sz <= MaxPageSize && sz&(sz-1) == 0
}

// LockPgno returns the number of the page containing PendingByte.
func LockPgno(pageSize uint32) uint32 {
	return uint32(PendingByte/int64(pageSize)) + 1
}
