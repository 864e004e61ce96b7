package store

import (
	"encoding/binary"

	"github.com/litefs-project/litefs/internal/sqlite"
)

// The WAL index (the -shm file) starts with two copies of a 48-byte header
// followed by the checkpoint information; SQLite keeps it in native byte
// order. A replica writes changesets straight into the database file and
// keeps its WAL empty, so after each apply it rewrites this header: an
// empty WAL, the new database size, and a changed iChange counter so that
// every reader drops its page cache at its next transaction.
const (
	walIndexHeaderSize = 48
	walIndexCkptOffset = 2 * walIndexHeaderSize
	walIndexCkptSize   = 40
	walIndexMinSize    = walIndexCkptOffset + walIndexCkptSize
	walIndexVersion    = 3007000
	readmarkNotUsed    = 0xffffffff

	// Byte offsets of SQLite's locks in the -shm file.
	shmLockWrite = 120
	shmLockRead4 = 127
	shmLockDMS   = 128
)

// shmOrder is the byte order SQLite uses in shared memory: the machine's.
var (
	shmOrder     = binary.NativeEndian
	shmBigEndian = binary.NativeEndian.Uint16([]byte{0, 1}) == 1
)

// resetWALIndex rewrites the WAL index header in shm (at least
// walIndexMinSize bytes) for an empty WAL over a database of pageN pages.
// Caller holds the locks that keep readers out.
func resetWALIndex(shm []byte, pageSize, pageN uint32) {
	hdr := shm[:walIndexHeaderSize]
	change := shmOrder.Uint32(hdr[8:]) + 1
	bigEnd := hdr[13]
	salt1, salt2 := shmOrder.Uint32(hdr[32:]), shmOrder.Uint32(hdr[36:])

	clear(hdr)
	shmOrder.PutUint32(hdr[0:], walIndexVersion)
	shmOrder.PutUint32(hdr[8:], change)
	hdr[12] = 1 // isInit
	hdr[13] = bigEnd
	shmOrder.PutUint16(hdr[14:], uint16(pageSize&0xff00|pageSize>>16))
	shmOrder.PutUint32(hdr[16:], 0) // mxFrame: the WAL is empty
	shmOrder.PutUint32(hdr[20:], pageN)
	shmOrder.PutUint32(hdr[32:], salt1)
	shmOrder.PutUint32(hdr[36:], salt2)
	s1, s2 := sqlite.WALChecksum(shmBigEndian, 0, 0, hdr[:40])
	shmOrder.PutUint32(hdr[40:], s1)
	shmOrder.PutUint32(hdr[44:], s2)
	copy(shm[walIndexHeaderSize:], hdr)

	// Checkpoint information: nothing backfilled, reader 0 on the database.
	ckpt := shm[walIndexCkptOffset:walIndexMinSize]
	shmOrder.PutUint32(ckpt[0:], 0)
	shmOrder.PutUint32(ckpt[4:], 0)
	for i := 1; i < 5; i++ {
		shmOrder.PutUint32(ckpt[4+4*i:], readmarkNotUsed)
	}
	shmOrder.PutUint32(ckpt[32:], 0) // nBackfillAttempted
}
