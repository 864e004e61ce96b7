package ltx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	format "github.com/superfly/ltx"
)

// ErrInvalid is returned for an LTX file whose structure litefs refuses:
// one its encoder could not have written.
var ErrInvalid = errors.New("invalid ltx file")

// NewDecoder returns a decoder of the LTX file in r that refuses what
// litefs's encoder could never have written, before acting on it.
//
// The format package's decoder trusts the file's fields: it allocates
// whatever a page's size prefix says (up to 4 GiB, backed by nothing), and
// accepts pages and trailers that its own encoder refuses (the lock page,
// pages beyond the commit or out of order, a post-apply
// checksum without its flag). A changeset comes from another node, so the
// decoder reads through a checkedReader, which follows the file's
// structure as it streams past and fails the read that would hand the
// decoder a field it must not act on.
func NewDecoder(r io.Reader) *Decoder { return format.NewDecoder(newCheckedReader(r)) }

// The parts of an LTX file, in order.
const (
	partHeader     = iota // the header, HeaderSize bytes
	partPageHeader        // a page header; all zeros ends the page block
	partPageSize          // the size of the page's LZ4 block
	partPageData          // the LZ4 block
	partTail              // the page index and the trailer
)

const (
	pageHeaderSize = format.PageHeaderSize
	// tailChunk is how much of the tail is read at a time.
	tailChunk = 4096
)

// fieldLen is the length of each fixed-size part.
var fieldLen = [...]int{partHeader: HeaderSize, partPageHeader: pageHeaderSize, partPageSize: 4}

// maxBlockSize is the largest LZ4 block a page of pageSize bytes can
// compress to: LZ4's bound for incompressible input (n + n/255 + 16).
func maxBlockSize(pageSize uint32) uint32 { return pageSize + pageSize/255 + 16 }

// checkedReader passes an LTX file through, checking each fixed-size
// field (header, page header, block size) whole before handing out any of
// its bytes, and holding back the trailer until the input ends after it.
type checkedReader struct {
	r    io.Reader
	part int
	err  error // sticky: the file was refused or the input failed

	field  [HeaderSize]byte // the current fixed-size field, checked
	fieldN int              // its length
	served int              // how much of it was handed out
	next   int              // the part after it

	remain uint32 // bytes of the current LZ4 block still to pass through

	hdr  Header
	lock uint32 // the lock page, never in a file
	prev uint32 // the last page number

	tailBuf []byte // holds tail
	tail    []byte // the tail read but not handed out; its last TrailerSize bytes wait for EOF
	eof     bool   // the input ended, and the trailer in tail is checked
}

func newCheckedReader(r io.Reader) *checkedReader {
	return &checkedReader{r: r, part: partHeader}
}

func (c *checkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	switch c.part {
	case partPageData:
		n, err := c.r.Read(p[:min(uint32(len(p)), c.remain)])
		c.remain -= uint32(n)
		if c.remain == 0 {
			c.part = partPageHeader
		}
		if err != nil {
			c.err = err
		}
		return n, err
	case partTail:
		return c.readTail(p)
	}
	if c.served == c.fieldN {
		if err := c.nextField(); err != nil {
			c.err = err
			return 0, err
		}
	}
	n := copy(p, c.field[c.served:c.fieldN])
	c.served += n
	if c.served == c.fieldN {
		c.part = c.next
	}
	return n, nil
}

// nextField reads the field of the current part whole and checks it.
func (c *checkedReader) nextField() error {
	n := fieldLen[c.part]
	if k, err := io.ReadFull(c.r, c.field[:n]); err != nil {
		if k > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	c.fieldN, c.served = n, 0
	b := c.field[:n]
	switch c.part {
	case partHeader:
		if err := c.hdr.UnmarshalBinary(b); err != nil {
			return fmt.Errorf("%w: header: %v", ErrInvalid, err)
		}
		if err := c.hdr.Validate(); err != nil {
			return fmt.Errorf("%w: header: %v", ErrInvalid, err)
		}
		c.lock = format.LockPgno(c.hdr.PageSize)
		c.next = partPageHeader
	case partPageHeader:
		var ph PageHeader
		if err := ph.UnmarshalBinary(b); err != nil {
			return fmt.Errorf("%w: page header: %v", ErrInvalid, err)
		}
		if ph.IsZero() {
			// The end of the pages. Whether a snapshot holds every page
			// is for its reader to say (the store refuses one that does
			// not, as not matching its checksum).
			c.next = partTail
			return nil
		}
		if err := c.checkPage(ph); err != nil {
			return err
		}
		c.prev = ph.Pgno
		c.next = partPageSize
	case partPageSize:
		size := binary.BigEndian.Uint32(b)
		if size == 0 || size > maxBlockSize(c.hdr.PageSize) {
			return fmt.Errorf("%w: page %d: a block of %d bytes for a page of %d", ErrInvalid, c.prev, size, c.hdr.PageSize)
		}
		c.remain = size
		c.next = partPageData
	}
	return nil
}

// checkPage checks a page header against the header and the page before
// it, as the encoder does when it writes them.
func (c *checkedReader) checkPage(ph PageHeader) error {
	switch {
	case ph.Flags != format.PageHeaderFlagSize:
		// The LZ4 frame encoding of older LTX versions: litefs never
		// wrote it, and its length is not known before decoding.
		return fmt.Errorf("%w: page %d: flags 0x%04x, not an LZ4 block with its size", ErrInvalid, ph.Pgno, ph.Flags)
	case ph.Pgno == 0:
		return fmt.Errorf("%w: page number 0", ErrInvalid)
	case ph.Pgno > c.hdr.Commit:
		return fmt.Errorf("%w: page %d beyond the commit of %d pages", ErrInvalid, ph.Pgno, c.hdr.Commit)
	case ph.Pgno == c.lock:
		return fmt.Errorf("%w: page %d is the lock page", ErrInvalid, ph.Pgno)
	case ph.Pgno <= c.prev:
		return fmt.Errorf("%w: page %d after page %d", ErrInvalid, ph.Pgno, c.prev)
	case c.hdr.IsSnapshot() && ph.Pgno != c.nextSnapshotPage():
		return fmt.Errorf("%w: snapshot has page %d after page %d", ErrInvalid, ph.Pgno, c.prev)
	}
	return nil
}

// nextSnapshotPage is the page a snapshot holds after c.prev.
func (c *checkedReader) nextSnapshotPage() uint32 {
	if c.prev+1 == c.lock {
		return c.prev + 2
	}
	return c.prev + 1
}

// readTail passes the page index through and holds the trailer back until
// the input ends: only then is it known to be the trailer, and checked.
func (c *checkedReader) readTail(p []byte) (int, error) {
	for {
		if c.eof {
			if len(c.tail) == 0 {
				return 0, io.EOF
			}
			n := copy(p, c.tail)
			c.tail = c.tail[n:]
			return n, nil
		}
		if len(c.tail) > TrailerSize {
			n := copy(p, c.tail[:len(c.tail)-TrailerSize])
			c.tail = c.tail[n:]
			return n, nil
		}
		if c.tailBuf == nil {
			c.tailBuf = make([]byte, TrailerSize+tailChunk)
		}
		k := copy(c.tailBuf, c.tail) // the held-back bytes to the front
		n, err := c.r.Read(c.tailBuf[k:])
		c.tail = c.tailBuf[:k+n]
		switch {
		case errors.Is(err, io.EOF):
			if err := c.checkTrailer(); err != nil {
				c.err = err
				return 0, err
			}
			c.eof = true
		case err != nil:
			c.err = err
			return 0, err
		}
	}
}

// checkTrailer checks the last TrailerSize bytes of the input.
func (c *checkedReader) checkTrailer() error {
	if len(c.tail) < TrailerSize {
		return io.ErrUnexpectedEOF
	}
	var t Trailer
	if err := t.UnmarshalBinary(c.tail[len(c.tail)-TrailerSize:]); err != nil {
		return fmt.Errorf("%w: trailer: %v", ErrInvalid, err)
	}
	if err := t.Validate(c.hdr); err != nil {
		return fmt.Errorf("%w: trailer: %v", ErrInvalid, err)
	}
	if c.hdr.Commit == 0 && t.PostApplyChecksum != ChecksumFlag {
		return fmt.Errorf("%w: trailer: post-apply checksum %s for an empty database", ErrInvalid, t.PostApplyChecksum)
	}
	return nil
}
