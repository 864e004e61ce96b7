package sqlite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// WAL file layout (https://www.sqlite.org/fileformat.html#the_write_ahead_log).
const (
	WALHeaderSize      = 32
	WALFrameHeaderSize = 24

	walMagicLE  = 0x377f0682 // checksums computed over little-endian words
	walMagicBE  = 0x377f0683 // checksums computed over big-endian words
	walVersion  = 3007000
	walMaxFrame = 1 << 31
)

// WALHeader is the 32-byte header at the start of a WAL file.
type WALHeader struct {
	Magic         uint32
	PageSize      uint32
	CheckpointSeq uint32
	Salt1, Salt2  uint32
	Checksum1     uint32
	Checksum2     uint32
}

// BigEndianChecksum reports whether frame checksums use big-endian words.
func (h WALHeader) BigEndianChecksum() bool { return h.Magic == walMagicBE }

// FrameSize returns the size of one frame (header plus page).
func (h WALHeader) FrameSize() int64 { return WALFrameHeaderSize + int64(h.PageSize) }

// FrameOffset returns the file offset of the zero-based frame i.
func (h WALHeader) FrameOffset(i int64) int64 { return WALHeaderSize + i*h.FrameSize() }

// ErrInvalidWALHeader is returned for a header that SQLite would not accept.
var ErrInvalidWALHeader = errors.New("invalid WAL header")

// ParseWALHeader decodes and validates a WAL header, including its checksum.
func ParseWALHeader(b []byte) (WALHeader, error) {
	if len(b) < WALHeaderSize {
		return WALHeader{}, fmt.Errorf("%w: %d bytes", ErrInvalidWALHeader, len(b))
	}
	h := WALHeader{
		Magic:         binary.BigEndian.Uint32(b[0:]),
		PageSize:      binary.BigEndian.Uint32(b[8:]),
		CheckpointSeq: binary.BigEndian.Uint32(b[12:]),
		Salt1:         binary.BigEndian.Uint32(b[16:]),
		Salt2:         binary.BigEndian.Uint32(b[20:]),
		Checksum1:     binary.BigEndian.Uint32(b[24:]),
		Checksum2:     binary.BigEndian.Uint32(b[28:]),
	}
	if h.Magic != walMagicLE && h.Magic != walMagicBE {
		return WALHeader{}, fmt.Errorf("%w: bad magic %#x", ErrInvalidWALHeader, h.Magic)
	}
	if v := binary.BigEndian.Uint32(b[4:]); v != walVersion {
		return WALHeader{}, fmt.Errorf("%w: unsupported version %d", ErrInvalidWALHeader, v)
	}
	if !IsValidPageSize(h.PageSize) {
		return WALHeader{}, fmt.Errorf("%w: page size %d", ErrInvalidWALHeader, h.PageSize)
	}
	s1, s2 := WALChecksum(h.BigEndianChecksum(), 0, 0, b[:24])
	if s1 != h.Checksum1 || s2 != h.Checksum2 {
		return WALHeader{}, fmt.Errorf("%w: checksum mismatch", ErrInvalidWALHeader)
	}
	return h, nil
}

// WALFrameHeader is the 24-byte header preceding each page in the WAL.
type WALFrameHeader struct {
	Pgno         uint32
	Commit       uint32 // database size in pages after commit; zero for non-commit frames
	Salt1, Salt2 uint32
	Checksum1    uint32
	Checksum2    uint32
}

// ParseWALFrameHeader decodes a frame header without validating it.
func ParseWALFrameHeader(b []byte) WALFrameHeader {
	return WALFrameHeader{
		Pgno:      binary.BigEndian.Uint32(b[0:]),
		Commit:    binary.BigEndian.Uint32(b[4:]),
		Salt1:     binary.BigEndian.Uint32(b[8:]),
		Salt2:     binary.BigEndian.Uint32(b[12:]),
		Checksum1: binary.BigEndian.Uint32(b[16:]),
		Checksum2: binary.BigEndian.Uint32(b[20:]),
	}
}

// WALChecksum continues SQLite's WAL checksum (s1, s2) over b, whose length
// must be a multiple of 8. Words are read big- or little-endian depending on
// the WAL header magic.
func WALChecksum(bigEndian bool, s1, s2 uint32, b []byte) (uint32, uint32) {
	order := binary.ByteOrder(binary.LittleEndian)
	if bigEndian {
		order = binary.BigEndian
	}
	for i := 0; i+8 <= len(b); i += 8 {
		s1 += order.Uint32(b[i:]) + s2
		s2 += order.Uint32(b[i+4:]) + s1
	}
	return s1, s2
}

// WALFrameRef locates one frame of a committed transaction.
type WALFrameRef struct {
	Pgno   uint32
	Offset int64 // offset of the frame header
}

// WALTxn is one committed transaction found in a WAL file.
type WALTxn struct {
	Start, End int64 // byte range of the transaction's frames
	Commit     uint32
	Frames     []WALFrameRef
}

// WALScan describes the committed prefix of a WAL file.
type WALScan struct {
	Header    WALHeader
	Valid     bool  // false when the file has no valid header
	CommitEnd int64 // offset just past the last committed frame
	Commit    uint32
	Checksum1 uint32 // running checksum at CommitEnd
	Checksum2 uint32
}

// ScanWAL walks the frames of a WAL file the way SQLite's recovery does:
// frames must carry the header's salts and continue the checksum chain, and
// only frames up to the last commit frame count. fn, if non-nil, is called
// once per committed transaction in order.
func ScanWAL(r io.ReaderAt, size int64, fn func(WALTxn) error) (WALScan, error) {
	var scan WALScan
	if size < WALHeaderSize {
		return scan, nil
	}
	hb := make([]byte, WALHeaderSize)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return scan, fmt.Errorf("read wal header: %w", err)
	}
	hdr, err := ParseWALHeader(hb)
	if err != nil {
		return scan, nil // SQLite ignores a WAL with an invalid header
	}
	scan.Header, scan.Valid = hdr, true
	scan.CommitEnd = WALHeaderSize
	scan.Checksum1, scan.Checksum2 = hdr.Checksum1, hdr.Checksum2

	be := hdr.BigEndianChecksum()
	s1, s2 := hdr.Checksum1, hdr.Checksum2
	frame := make([]byte, hdr.FrameSize())
	var txn WALTxn
	txn.Start = WALHeaderSize
	for i := int64(0); i < walMaxFrame; i++ {
		off := hdr.FrameOffset(i)
		if off+hdr.FrameSize() > size {
			break
		}
		if _, err := r.ReadAt(frame, off); err != nil {
			return scan, fmt.Errorf("read wal frame %d: %w", i, err)
		}
		fh := ParseWALFrameHeader(frame)
		if fh.Pgno == 0 || fh.Salt1 != hdr.Salt1 || fh.Salt2 != hdr.Salt2 {
			break
		}
		s1, s2 = WALChecksum(be, s1, s2, frame[:8])
		s1, s2 = WALChecksum(be, s1, s2, frame[WALFrameHeaderSize:])
		if s1 != fh.Checksum1 || s2 != fh.Checksum2 {
			break
		}
		txn.Frames = append(txn.Frames, WALFrameRef{Pgno: fh.Pgno, Offset: off})
		if fh.Commit == 0 {
			continue
		}
		txn.End, txn.Commit = off+hdr.FrameSize(), fh.Commit
		scan.CommitEnd, scan.Commit = txn.End, fh.Commit
		scan.Checksum1, scan.Checksum2 = s1, s2
		if fn != nil {
			if err := fn(txn); err != nil {
				return scan, err
			}
		}
		txn = WALTxn{Start: txn.End}
	}
	return scan, nil
}

// EncodeWALFrameHeader writes a frame header, computing its checksum from
// the running checksum (s1, s2). It returns the new running checksum.
// Used by tests that build WAL files by hand.
func EncodeWALFrameHeader(b []byte, hdr WALHeader, pgno, commit uint32, s1, s2 uint32, page []byte) (uint32, uint32) {
	binary.BigEndian.PutUint32(b[0:], pgno)
	binary.BigEndian.PutUint32(b[4:], commit)
	binary.BigEndian.PutUint32(b[8:], hdr.Salt1)
	binary.BigEndian.PutUint32(b[12:], hdr.Salt2)
	s1, s2 = WALChecksum(hdr.BigEndianChecksum(), s1, s2, b[:8])
	s1, s2 = WALChecksum(hdr.BigEndianChecksum(), s1, s2, page)
	binary.BigEndian.PutUint32(b[16:], s1)
	binary.BigEndian.PutUint32(b[20:], s2)
	return s1, s2
}
