package sqlite

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// JournalMagic starts every valid rollback journal header.
var JournalMagic = []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7}

const (
	journalHeaderMin = 28
	maxSectorSize    = 0x10000
)

// IsHotJournalHeader reports whether b, the start of a rollback journal,
// carries the journal magic. A committed journal in PERSIST mode, or in
// exclusive locking mode, has its header zeroed instead of being deleted.
func IsHotJournalHeader(b []byte) bool {
	return len(b) >= len(JournalMagic) && bytes.Equal(b[:len(JournalMagic)], JournalMagic)
}

// JournalRollback describes how to undo an interrupted transaction.
type JournalRollback struct {
	PageSize uint32
	PageN    uint32 // database size, in pages, before the transaction
}

// ReadHotJournal reads a hot rollback journal the way SQLite plays it back:
// every journal header segment in turn, each record verified by its
// checksum, stopping at the first torn record. fn receives the first copy of
// each page, which is its content before the transaction; data is only valid
// during the call. ok is false if the journal is not hot (empty, zeroed
// header or unreadable header), in which case there is nothing to roll back.
func ReadHotJournal(r io.ReaderAt, size int64, fn func(pgno uint32, data []byte) error) (rb JournalRollback, ok bool, err error) {
	hdr := make([]byte, journalHeaderMin)
	var (
		off        int64
		sectorSize int64
		seen       = make(map[uint32]bool)
	)
	for first := true; ; first = false {
		if off+journalHeaderMin > size {
			break
		}
		if _, err := r.ReadAt(hdr, off); err != nil {
			return rb, false, fmt.Errorf("read journal header at %d: %w", off, err)
		}
		if !IsHotJournalHeader(hdr) {
			break
		}
		nRec := binary.BigEndian.Uint32(hdr[8:])
		cksumInit := binary.BigEndian.Uint32(hdr[12:])
		dbSize := binary.BigEndian.Uint32(hdr[16:])
		if first {
			sectorSize = int64(binary.BigEndian.Uint32(hdr[20:]))
			rb.PageSize = binary.BigEndian.Uint32(hdr[24:])
			if sectorSize < 32 || sectorSize > maxSectorSize || sectorSize&(sectorSize-1) != 0 || !IsValidPageSize(rb.PageSize) {
				return JournalRollback{}, false, nil
			}
			rb.PageN = dbSize
		}
		recSize := int64(rb.PageSize) + 8
		recOff := off + sectorSize
		if nRec == 0xffffffff {
			nRec = uint32((size - recOff) / recSize)
		}

		rec := make([]byte, recSize)
		torn := false
		for i := uint32(0); i < nRec; i++ {
			if recOff+recSize > size {
				torn = true
				break
			}
			if _, err := r.ReadAt(rec, recOff); err != nil {
				return rb, false, fmt.Errorf("read journal record at %d: %w", recOff, err)
			}
			recOff += recSize
			pgno := binary.BigEndian.Uint32(rec[0:])
			data := rec[4 : 4+rb.PageSize]
			if pgno == 0 || pgno == LockPgno(rb.PageSize) {
				torn = true
				break
			}
			if binary.BigEndian.Uint32(rec[4+rb.PageSize:]) != journalPageChecksum(cksumInit, data) {
				torn = true
				break
			}
			if pgno > rb.PageN || seen[pgno] {
				continue
			}
			seen[pgno] = true
			if err := fn(pgno, data); err != nil {
				return rb, false, err
			}
		}
		if torn {
			break
		}
		// The next header starts at the next sector boundary.
		off = ((recOff-1)/sectorSize + 1) * sectorSize
	}
	if rb.PageSize == 0 {
		return JournalRollback{}, false, nil
	}
	return rb, true, nil
}

// journalPageChecksum is SQLite's cheap journal record checksum: the
// header's random initial value plus every 200th byte from the page's end.
func journalPageChecksum(init uint32, data []byte) uint32 {
	sum := init
	for i := len(data) - 200; i > 0; i -= 200 {
		sum += uint32(data[i])
	}
	return sum
}
