// Package http moves bytes between nodes: the primary's stream of
// changesets and snapshots to replicas, over plain HTTP. It decides nothing
// about the data; the store verifies and applies it.
package http

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// FrameType identifies a frame on the replication stream.
type FrameType uint8

// Frame types.
const (
	FrameChangeset FrameType = 1 // one LTX changeset for a database
	FrameSnapshot  FrameType = 2 // a whole database as one LTX file
	FrameDrop      FrameType = 3 // the database was deleted
	FrameReady     FrameType = 4 // the replica has everything the primary had when it connected
	FrameHeartbeat FrameType = 5 // nothing to send; Meta is the primary's clock in ms
)

func (t FrameType) String() string {
	switch t {
	case FrameChangeset:
		return "changeset"
	case FrameSnapshot:
		return "snapshot"
	case FrameDrop:
		return "drop"
	case FrameReady:
		return "ready"
	case FrameHeartbeat:
		return "heartbeat"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// A frame on the wire:
//
//	type    u8
//	nameLen u16, name
//	meta    u64
//	chunks  { len u32 (1..maxChunk), data }, then len 0
//	crc     u32, CRC-32C of every byte above
//
// Payloads are chunked so that a snapshot can be streamed without knowing
// its size in advance. The CRC covers the whole frame, so a corrupt type,
// name or length is caught as surely as a corrupt payload, and a payload
// reader reports the frame bad before returning its end.
const (
	maxNameLen = 255
	maxChunk   = 1 << 20
	chunkSize  = 64 << 10 // what the writer emits
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrBadFrame is returned for a frame that fails validation.
var ErrBadFrame = errors.New("bad replication frame")

// Frame is a frame's header.
type Frame struct {
	Type FrameType
	Name string // database name, for per-database frames
	Meta uint64
}

// FrameWriter writes frames to a stream.
type FrameWriter struct {
	w   *bufio.Writer
	crc hash.Hash32
	buf []byte // pending chunk data
}

// NewFrameWriter returns a writer of frames to w.
func NewFrameWriter(w io.Writer) *FrameWriter {
	return &FrameWriter{
		w:   bufio.NewWriterSize(w, chunkSize+16),
		crc: crc32.New(crcTable),
		buf: make([]byte, 0, chunkSize),
	}
}

// Write writes a frame with no payload.
func (fw *FrameWriter) Write(f Frame) error {
	if err := fw.Begin(f); err != nil {
		return err
	}
	return fw.End()
}

// Begin starts a frame; its payload is written with WritePayload (or
// through PayloadWriter) and the frame finished with End.
func (fw *FrameWriter) Begin(f Frame) error {
	if len(f.Name) > maxNameLen {
		return fmt.Errorf("frame name %q too long", f.Name)
	}
	fw.crc.Reset()
	fw.buf = fw.buf[:0]
	hdr := make([]byte, 0, 1+2+len(f.Name)+8)
	hdr = append(hdr, byte(f.Type))
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(f.Name)))
	hdr = append(hdr, f.Name...)
	hdr = binary.BigEndian.AppendUint64(hdr, f.Meta)
	return fw.emit(hdr)
}

// WritePayload appends payload bytes to the current frame.
func (fw *FrameWriter) WritePayload(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), chunkSize-len(fw.buf))
		fw.buf = append(fw.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(fw.buf) == chunkSize {
			if err := fw.flushChunk(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// PayloadWriter returns an io.Writer for the current frame's payload.
func (fw *FrameWriter) PayloadWriter() io.Writer { return payloadWriter{fw} }

type payloadWriter struct{ fw *FrameWriter }

func (p payloadWriter) Write(b []byte) (int, error) { return p.fw.WritePayload(b) }

// End finishes the frame and flushes it to the underlying writer.
func (fw *FrameWriter) End() error {
	if err := fw.flushChunk(); err != nil {
		return err
	}
	if err := fw.emit(binary.BigEndian.AppendUint32(nil, 0)); err != nil {
		return err
	}
	if _, err := fw.w.Write(binary.BigEndian.AppendUint32(nil, fw.crc.Sum32())); err != nil {
		return err
	}
	return fw.w.Flush()
}

func (fw *FrameWriter) flushChunk() error {
	if len(fw.buf) == 0 {
		return nil
	}
	if err := fw.emit(binary.BigEndian.AppendUint32(nil, uint32(len(fw.buf)))); err != nil {
		return err
	}
	err := fw.emit(fw.buf)
	fw.buf = fw.buf[:0]
	return err
}

func (fw *FrameWriter) emit(b []byte) error {
	fw.crc.Write(b)
	_, err := fw.w.Write(b)
	return err
}

// FrameReader reads frames from a stream.
type FrameReader struct {
	r       *bufio.Reader
	crc     hash.Hash32
	payload *payloadReader
}

// NewFrameReader returns a reader of frames from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, chunkSize+16), crc: crc32.New(crcTable)}
}

// Next reads the next frame's header. Its payload must be read to io.EOF
// (which verifies the frame's checksum) before the next call; a frame
// whose payload is not read is drained and verified by Next.
func (fr *FrameReader) Next() (Frame, io.Reader, error) {
	if fr.payload != nil && !fr.payload.done {
		if _, err := io.Copy(io.Discard, fr.payload); err != nil {
			return Frame{}, nil, err
		}
	}
	fr.crc.Reset()
	var f Frame
	// A stream may end cleanly between frames: io.EOF before any byte.
	t, err := fr.r.ReadByte()
	if err != nil {
		return f, nil, err
	}
	fr.crc.Write([]byte{t})
	b, err := fr.read(2)
	if err != nil {
		return f, nil, err
	}
	b = append([]byte{t}, b...)
	f.Type = FrameType(b[0])
	if f.Type < FrameChangeset || f.Type > FrameHeartbeat {
		return f, nil, fmt.Errorf("%w: unknown type %d", ErrBadFrame, b[0])
	}
	nameLen := int(binary.BigEndian.Uint16(b[1:]))
	if nameLen > maxNameLen {
		return f, nil, fmt.Errorf("%w: name length %d", ErrBadFrame, nameLen)
	}
	if b, err = fr.read(nameLen + 8); err != nil {
		return f, nil, err
	}
	f.Name = string(b[:nameLen])
	f.Meta = binary.BigEndian.Uint64(b[nameLen:])
	fr.payload = &payloadReader{fr: fr}
	return f, fr.payload, nil
}

func (fr *FrameReader) read(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(fr.r, b); err != nil {
		if errors.Is(err, io.EOF) && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	fr.crc.Write(b)
	return b, nil
}

// payloadReader returns a frame's chunk data and, at its end, checks the
// frame's CRC: a corrupt frame ends in an error, never in io.EOF.
type payloadReader struct {
	fr     *FrameReader
	remain int // bytes left in the current chunk
	done   bool
	err    error
}

func (p *payloadReader) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.done {
		return 0, io.EOF
	}
	for p.remain == 0 {
		lb, err := p.fr.read(4)
		if err != nil {
			p.err = err
			return 0, err
		}
		n := binary.BigEndian.Uint32(lb)
		if n == 0 {
			return 0, p.finish()
		}
		if n > maxChunk {
			p.err = fmt.Errorf("%w: chunk of %d bytes", ErrBadFrame, n)
			return 0, p.err
		}
		p.remain = int(n)
	}
	n, err := p.fr.r.Read(b[:min(len(b), p.remain)])
	p.fr.crc.Write(b[:n])
	p.remain -= n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		p.err = err
	}
	return n, err
}

// finish reads and checks the frame's CRC.
func (p *payloadReader) finish() error {
	want := p.fr.crc.Sum32()
	var b [4]byte
	if _, err := io.ReadFull(p.fr.r, b[:]); err != nil {
		p.err = io.ErrUnexpectedEOF
		return p.err
	}
	if got := binary.BigEndian.Uint32(b[:]); got != want {
		p.err = fmt.Errorf("%w: checksum %08x, computed %08x", ErrBadFrame, got, want)
		return p.err
	}
	p.done = true
	return io.EOF
}
