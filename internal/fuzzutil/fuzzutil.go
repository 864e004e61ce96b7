// Package fuzzutil holds what the fuzz targets of several packages share:
// a meter of heap allocation, LTX seeds made by the real encoder and their
// damaged variants, and a repair of an LTX file's checksum that lets the
// fuzzer's mutations reach the checks behind it. It is for tests only.
package fuzzutil

import (
	"bytes"
	"encoding/binary"
	"hash/crc64"
	"runtime"
	"testing"

	format "github.com/superfly/ltx"

	"github.com/litefs-project/litefs/ltx"
)

// Allocated returns the bytes fn allocates on the heap (in the whole
// process: other goroutines count too, so limits must leave room). A
// decoder that trusts a length field allocates what the field says, which
// the input need not back.
func Allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// EncodeLTX encodes an LTX file holding pgnos (ascending) from pages, with
// the post-apply checksum given, right or wrong.
func EncodeLTX(tb testing.TB, hdr ltx.Header, pages map[uint32][]byte, pgnos []uint32, post ltx.Checksum) []byte {
	tb.Helper()
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		tb.Fatal(err)
	}
	if err := enc.EncodeHeader(hdr); err != nil {
		tb.Fatalf("encode header %+v: %v", hdr, err)
	}
	for _, pgno := range pgnos {
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, pages[pgno]); err != nil {
			tb.Fatalf("encode page %d: %v", pgno, err)
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		tb.Fatalf("close encoder: %v", err)
	}
	return buf.Bytes()
}

// Page returns content for page pgno of one of three kinds by pgno:
// random, compressible or zero, so that seeds hold long and short LZ4
// blocks. seed varies the random content.
func Page(pageSize, pgno uint32, seed int64) []byte {
	b := make([]byte, pageSize)
	switch pgno % 3 {
	case 0:
		x := uint64(seed)*0x9e3779b97f4a7c15 + uint64(pgno)
		for i := range b {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b[i] = byte(x)
		}
	case 1:
		for i := range b {
			b[i] = byte(i/7) + byte(seed)
		}
	}
	return b
}

// Variants returns b truncated at a few places (inside the header, the
// first page header, its block size and the trailer) and with single bits
// flipped in the header's fields, the first page and the trailer.
func Variants(b []byte) [][]byte {
	var out [][]byte
	for _, n := range []int{0, 1, ltx.HeaderSize - 1, ltx.HeaderSize, ltx.HeaderSize + 6, ltx.HeaderSize + 10, len(b) / 2, len(b) - ltx.TrailerSize, len(b) - 1} {
		if n >= 0 && n < len(b) {
			out = append(out, bytes.Clone(b[:n]))
		}
	}
	for _, off := range []int{4, 9, 13, 23, 31, 47, ltx.HeaderSize + 3, ltx.HeaderSize + 5, ltx.HeaderSize + 8, ltx.HeaderSize + 12, len(b) - 20, len(b) - 12, len(b) - 1} {
		if off >= 0 && off < len(b) {
			c := bytes.Clone(b)
			c[off] ^= 0x10
			out = append(out, c)
		}
	}
	return out
}

// HugeBlock returns b with its first page's block size set to 4 GiB,
// backed by nothing.
func HugeBlock(b []byte) []byte {
	c := bytes.Clone(b)
	if len(c) >= ltx.HeaderSize+10 {
		binary.BigEndian.PutUint32(c[ltx.HeaderSize+format.PageHeaderSize:], 0xffffffff)
	}
	return c
}

// FixChecksum returns b with its file checksum rewritten to match its
// content, if its page block can be walked, so that mutations of the
// header and pages get past the checksum to the checks behind it. It
// returns b unchanged otherwise.
func FixChecksum(b []byte) []byte {
	const phSize = format.PageHeaderSize
	if len(b) < ltx.HeaderSize+phSize+ltx.TrailerSize {
		return b
	}
	pageSize := int(binary.BigEndian.Uint32(b[8:]))
	if pageSize <= 0 || pageSize > format.MaxPageSize {
		return b
	}
	h := crc64.New(crc64.MakeTable(crc64.ISO))
	h.Write(b[:ltx.HeaderSize])
	page := make([]byte, pageSize)
	off := ltx.HeaderSize
	for {
		if off+phSize > len(b)-ltx.TrailerSize {
			return b
		}
		ph := b[off : off+phSize]
		if bytes.Equal(ph, make([]byte, phSize)) {
			break
		}
		if binary.BigEndian.Uint16(ph[4:])&format.PageHeaderFlagSize == 0 || off+phSize+4 > len(b) {
			return b
		}
		size := int(binary.BigEndian.Uint32(b[off+phSize:]))
		end := off + phSize + 4 + size
		if size < 0 || end > len(b)-ltx.TrailerSize || end < off {
			return b
		}
		_, data, err := format.DecodePageData(b[off:end])
		if err != nil || len(data) > pageSize {
			return b
		}
		// The checksum covers the page as the decoder leaves its buffer,
		// one for every page: a short block overwrites only its start.
		copy(page, data)
		h.Write(b[off : off+phSize+4])
		h.Write(page)
		off = end
	}
	h.Write(b[off : len(b)-8])
	c := bytes.Clone(b)
	binary.BigEndian.PutUint64(c[len(c)-8:], uint64(ltx.ChecksumFlag|ltx.Checksum(h.Sum64())))
	return c
}
