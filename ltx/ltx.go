// Package ltx owns the on-disk changeset log of each database: one LTX file
// (github.com/superfly/ltx) per committed transaction, appended to segment
// files, indexed for reads by TXID, pruned by age. It is the only package
// that depends on the LTX encoding directly; the rest of litefs uses the
// names re-exported here.
package ltx

import (
	"fmt"
	"io"

	format "github.com/superfly/ltx"
)

// Names re-exported from the LTX format package.
type (
	Pos        = format.Pos
	TXID       = format.TXID
	Checksum   = format.Checksum
	Header     = format.Header
	Trailer    = format.Trailer
	PageHeader = format.PageHeader
	Encoder    = format.Encoder
	Decoder    = format.Decoder
)

const (
	// ChecksumFlag is set on every valid checksum; the checksum of an empty
	// database is ChecksumFlag alone.
	ChecksumFlag = format.ChecksumFlag
	HeaderSize   = format.HeaderSize
	TrailerSize  = format.TrailerSize
	Version      = format.Version
)

// Functions re-exported from the LTX format package.
var (
	NewEncoder   = format.NewEncoder
	ChecksumPage = format.ChecksumPage
	NewHasher    = format.NewHasher
)

// ChecksumPageWith computes a page checksum reusing the scratch hasher h.
var ChecksumPageWith = format.ChecksumPageWithHasher

// ParsePos parses a position as FormatPos writes it (without the newline):
// "TXID/CHECKSUM", 16 hex digits each. The format package's parser does
// not look at the separator.
func ParsePos(s string) (Pos, error) {
	if len(s) == 33 && s[16] != '/' {
		return Pos{}, fmt.Errorf("invalid position %q: want TXID/CHECKSUM", s)
	}
	return format.ParsePos(s)
}

// FormatPos renders a position the way the mount's "-pos" files show it.
func FormatPos(p Pos) string {
	return fmt.Sprintf("%016x/%016x\n", uint64(p.TXID), uint64(p.PostApplyChecksum))
}

// DecodeHeader reads just the header of an encoded LTX file.
func DecodeHeader(r io.Reader) (Header, error) {
	hdr, _, err := format.DecodeHeader(r)
	if err != nil {
		return hdr, fmt.Errorf("decode ltx header: %w", err)
	}
	return hdr, nil
}

// Verify decodes a whole LTX file, checking its structure and file checksum,
// and returns its header and trailer.
func Verify(r io.Reader) (Header, Trailer, error) {
	dec := NewDecoder(r)
	dec.SetRetainPageIndex(false)
	if err := dec.Verify(); err != nil {
		return Header{}, Trailer{}, err
	}
	return dec.Header(), dec.Trailer(), nil
}

// ChecksumReader computes the checksum of a whole database file read from r.
var ChecksumReader = format.ChecksumReader

// ApplyTo decodes the LTX file in r, writes its pages into the database
// file f and truncates f to the changeset's database size. The file
// checksum is only known at the end, so f may already be modified when
// verification fails; callers that must not change anything on bad input
// verify the changeset first.
func ApplyTo(f interface {
	io.WriterAt
	Truncate(int64) error
}, r io.Reader) (Header, Trailer, error) {
	dec := NewDecoder(r)
	dec.SetRetainPageIndex(false)
	if err := dec.DecodeHeader(); err != nil {
		return Header{}, Trailer{}, fmt.Errorf("decode header: %w", err)
	}
	hdr := dec.Header()
	buf := make([]byte, hdr.PageSize)
	for {
		var ph PageHeader
		if err := dec.DecodePage(&ph, buf); err == io.EOF {
			break
		} else if err != nil {
			return hdr, Trailer{}, fmt.Errorf("decode page: %w", err)
		}
		if _, err := f.WriteAt(buf, int64(ph.Pgno-1)*int64(hdr.PageSize)); err != nil {
			return hdr, Trailer{}, fmt.Errorf("write page %d: %w", ph.Pgno, err)
		}
	}
	if err := dec.Close(); err != nil {
		return hdr, Trailer{}, fmt.Errorf("verify changeset: %w", err)
	}
	if err := f.Truncate(int64(hdr.Commit) * int64(hdr.PageSize)); err != nil {
		return hdr, Trailer{}, fmt.Errorf("truncate: %w", err)
	}
	return hdr, dec.Trailer(), nil
}
