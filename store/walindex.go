package store

import (
	"encoding/binary"

	"github.com/litefs-project/litefs/internal/sqlite"
)

// The primary writes a forwarded commit of a WAL-mode database into its
// WAL as SQLite would (forward.go), so it also keeps the WAL index that
// its own readers use up to date, as SQLite's writer does
// (https://www.sqlite.org/walformat.html#the_wal_index_file_format). The
// index is a sequence of 32 KiB blocks. The first holds the header and
// checkpoint information (walIndexMinSize bytes), then the page numbers of
// frames 1 to walIndexFirstFrames; every block ends in a hash table of
// 8192 two-byte slots, each naming a frame (1-based within the block)
// whose page hashes there, with linear probing. litefs only ever uses the
// first block: a forwarded commit that would go beyond it folds the WAL
// into the database file first.
const (
	walIndexBlock       = 32 << 10
	walIndexHashOffset  = 16 << 10
	walIndexHashSlots   = 8192
	walIndexHashMult    = 383
	walIndexFirstFrames = 4096 - walIndexMinSize/4
)

// walIndexHeader is the part of the WAL index header the primary writes.
type walIndexHeader struct {
	change       uint32
	bigEndian    bool // checksums in the WAL are big-endian
	pageSize     uint32
	maxFrame     uint32 // frames in the WAL that readers may use
	pageN        uint32 // database size in pages after the last of them
	frameSum1    uint32 // running checksum of the WAL after that frame
	frameSum2    uint32
	salt1, salt2 uint32 // the WAL header's salts
}

// readWALIndexHeader decodes the header of the index in shm, and reports
// whether it is one SQLite would trust: initialised, both copies equal and
// its checksum right.
func readWALIndexHeader(shm []byte) (walIndexHeader, bool) {
	if len(shm) < walIndexMinSize {
		return walIndexHeader{}, false
	}
	b := shm[:walIndexHeaderSize]
	if string(b) != string(shm[walIndexHeaderSize:2*walIndexHeaderSize]) || b[12] != 1 {
		return walIndexHeader{}, false
	}
	if s1, s2 := sqlite.WALChecksum(shmBigEndian, 0, 0, b[:40]); s1 != shmOrder.Uint32(b[40:]) || s2 != shmOrder.Uint32(b[44:]) {
		return walIndexHeader{}, false
	}
	ps := uint32(shmOrder.Uint16(b[14:]))
	ps = ps&0xff00 | (ps&1)<<16 // 1 stands for 65536
	return walIndexHeader{
		change:    shmOrder.Uint32(b[8:]),
		bigEndian: b[13] != 0,
		pageSize:  ps,
		maxFrame:  shmOrder.Uint32(b[16:]),
		pageN:     shmOrder.Uint32(b[20:]),
		frameSum1: shmOrder.Uint32(b[24:]),
		frameSum2: shmOrder.Uint32(b[28:]),
		// The salts are the WAL header's bytes as they are.
		salt1: binary.BigEndian.Uint32(b[32:]),
		salt2: binary.BigEndian.Uint32(b[36:]),
	}, true
}

// writeWALIndexHeader writes both copies of the header, with its checksum.
// Caller holds the locks that keep readers out.
func writeWALIndexHeader(shm []byte, h walIndexHeader) {
	var b [walIndexHeaderSize]byte
	shmOrder.PutUint32(b[0:], walIndexVersion)
	shmOrder.PutUint32(b[8:], h.change)
	b[12] = 1 // isInit
	if h.bigEndian {
		b[13] = 1
	}
	shmOrder.PutUint16(b[14:], uint16(h.pageSize&0xff00|h.pageSize>>16))
	shmOrder.PutUint32(b[16:], h.maxFrame)
	shmOrder.PutUint32(b[20:], h.pageN)
	shmOrder.PutUint32(b[24:], h.frameSum1)
	shmOrder.PutUint32(b[28:], h.frameSum2)
	binary.BigEndian.PutUint32(b[32:], h.salt1)
	binary.BigEndian.PutUint32(b[36:], h.salt2)
	s1, s2 := sqlite.WALChecksum(shmBigEndian, 0, 0, b[:40])
	shmOrder.PutUint32(b[40:], s1)
	shmOrder.PutUint32(b[44:], s2)
	copy(shm[walIndexHeaderSize:], b[:])
	copy(shm, b[:])
}

// appendWALIndex records frames first, first+1, ... (1-based frame
// numbers in the WAL) holding pgnos in the first block of the index, as
// SQLite's walIndexAppend does: frame 1 clears the block's page numbers and
// hash table first. shm holds at least one block; the frames fit in it.
func appendWALIndex(shm []byte, first uint32, pgnos []uint32) {
	for i, pgno := range pgnos {
		idx := first + uint32(i)
		if idx == 1 {
			clear(shm[walIndexMinSize:walIndexBlock])
		}
		shmOrder.PutUint32(shm[walIndexMinSize+4*(idx-1):], pgno)
		key := pgno * walIndexHashMult % walIndexHashSlots
		for shmOrder.Uint16(shm[walIndexHashOffset+2*key:]) != 0 {
			key = (key + 1) % walIndexHashSlots
		}
		shmOrder.PutUint16(shm[walIndexHashOffset+2*key:], uint16(idx))
	}
}

// resetWALIndexCheckpoint marks nothing of the WAL checkpointed, with
// every reader slot free but the one that reads the database file alone,
// as SQLite's recovery leaves it. Caller holds the locks that keep readers
// out.
func resetWALIndexCheckpoint(shm []byte) {
	ckpt := shm[walIndexCkptOffset:walIndexMinSize]
	shmOrder.PutUint32(ckpt[0:], 0) // nBackfill
	shmOrder.PutUint32(ckpt[4:], 0) // reader 0: the database file alone
	for i := 1; i < 5; i++ {
		shmOrder.PutUint32(ckpt[4+4*i:], readmarkNotUsed)
	}
	shmOrder.PutUint32(ckpt[32:], 0) // nBackfillAttempted
}
