package http

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand"
	"strings"
	"testing"
	"testing/iotest"
)

// testFrame is a frame with its payload, as a test writes and expects it.
type testFrame struct {
	Frame
	payload []byte
}

func randBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// encodeFrames writes frames to a buffer with a FrameWriter, each payload
// in pieces of at most step bytes (0: in one call; -1: through Write for
// frames without payload).
func encodeFrames(t *testing.T, step int, frames ...testFrame) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	for _, f := range frames {
		if step < 0 && len(f.payload) == 0 {
			if err := fw.Write(f.Frame); err != nil {
				t.Fatalf("Write(%v): %v", f.Frame, err)
			}
			continue
		}
		if err := fw.Begin(f.Frame); err != nil {
			t.Fatalf("Begin(%v): %v", f.Frame, err)
		}
		p := f.payload
		for len(p) > 0 {
			k := len(p)
			if step > 0 {
				k = min(k, step)
			}
			var n int
			var err error
			if step > 0 && len(p)%2 == 0 {
				n, err = fw.PayloadWriter().Write(p[:k])
			} else {
				n, err = fw.WritePayload(p[:k])
			}
			if err != nil || n != k {
				t.Fatalf("WritePayload: %d, %v; want %d", n, err, k)
			}
			p = p[k:]
		}
		if err := fw.End(); err != nil {
			t.Fatalf("End: %v", err)
		}
	}
	return buf.Bytes()
}

// rawFrame hand-encodes a frame with the given chunking and a correct CRC
// (or crc, if non-nil).
func rawFrame(typ byte, name string, meta uint64, chunks [][]byte, crc *uint32) []byte {
	var b []byte
	b = append(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint64(b, meta)
	for _, c := range chunks {
		b = binary.BigEndian.AppendUint32(b, uint32(len(c)))
		b = append(b, c...)
	}
	b = binary.BigEndian.AppendUint32(b, 0)
	sum := crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
	if crc != nil {
		sum = *crc
	}
	return binary.BigEndian.AppendUint32(b, sum)
}

// readAllFrames reads every frame of a stream until Next fails, checking
// that the stream ends with an error (a FrameReader cannot tell the end of
// a stream from a truncation at a frame boundary).
func readAllFrames(t *testing.T, r io.Reader) []testFrame {
	t.Helper()
	fr := NewFrameReader(r)
	var got []testFrame
	for {
		f, payload, err := fr.Next()
		if err != nil {
			if errors.Is(err, ErrBadFrame) {
				t.Fatalf("frame %d: Next: %v", len(got), err)
			}
			return got
		}
		b, err := io.ReadAll(payload)
		if err != nil {
			t.Fatalf("frame %d (%v): payload: %v", len(got), f, err)
		}
		// Reading past the end keeps returning io.EOF.
		if n, err := payload.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("frame %d: read after end: %d, %v", len(got), n, err)
		}
		got = append(got, testFrame{f, b})
	}
}

func checkFrames(t *testing.T, got, want []testFrame) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Frame != want[i].Frame {
			t.Errorf("frame %d: header %+v, want %+v", i, got[i].Frame, want[i].Frame)
		}
		if !bytes.Equal(got[i].payload, want[i].payload) {
			t.Errorf("frame %d: payload of %d bytes differs from the %d written", i, len(got[i].payload), len(want[i].payload))
		}
	}
}

// isFrameError reports whether err is what a corrupt or truncated frame must give.
func isFrameError(err error) bool {
	return err != nil && !errors.Is(err, io.EOF) &&
		(errors.Is(err, ErrBadFrame) || errors.Is(err, io.ErrUnexpectedEOF))
}

// readOneFrame reads the first frame of a stream completely, returning the
// first error from Next or the payload.
func readOneFrame(data []byte) (Frame, []byte, error) {
	fr := NewFrameReader(bytes.NewReader(data))
	f, payload, err := fr.Next()
	if err != nil {
		return f, nil, err
	}
	b, err := io.ReadAll(payload)
	return f, b, err
}

func TestFrameRoundTrip(t *testing.T) {
	types := []FrameType{FrameChangeset, FrameSnapshot, FrameDrop, FrameReady, FrameHeartbeat}
	payloads := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one byte", []byte{0}},
		{"small", randBytes(1, 1000)},
		{"exactly one chunk", randBytes(2, chunkSize)},
		{"one chunk plus one", randBytes(3, chunkSize+1)},
		{"multi-chunk", randBytes(4, 3*chunkSize+12345)},
	}
	names := []string{"", "a", "db.sqlite", strings.Repeat("n", maxNameLen), "\x00\xff€"}
	metas := []uint64{0, 1, 1<<64 - 1, 0x0102030405060708}

	for _, typ := range types {
		for _, p := range payloads {
			t.Run(typ.String()+"/"+p.name, func(t *testing.T) {
				for i, name := range names {
					want := testFrame{Frame{Type: typ, Name: name, Meta: metas[i%len(metas)]}, p.data}
					for _, step := range []int{0, 1000, 7} {
						if step == 7 && len(p.data) > 2*chunkSize {
							continue // too many calls for no more coverage
						}
						data := encodeFrames(t, step, want)
						checkFrames(t, readAllFrames(t, bytes.NewReader(data)), []testFrame{want})
					}
				}
			})
		}
	}

	t.Run("write without payload", func(t *testing.T) {
		want := testFrame{Frame: Frame{Type: FrameReady, Name: "x", Meta: 42}}
		data := encodeFrames(t, -1, want)
		// type, name length, name, meta, terminating chunk length, crc
		if wantLen := 1 + 2 + 1 + 8 + 4 + 4; len(data) != wantLen {
			t.Fatalf("encoded %d bytes, want %d", len(data), wantLen)
		}
		if !bytes.Equal(data, rawFrame(byte(FrameReady), "x", 42, nil, nil)) {
			t.Fatalf("encoding %x differs from the documented format", data)
		}
		checkFrames(t, readAllFrames(t, bytes.NewReader(data)), []testFrame{want})
	})

	t.Run("multi-chunk encoding", func(t *testing.T) {
		p := randBytes(5, 2*chunkSize+10)
		data := encodeFrames(t, 0, testFrame{Frame{Type: FrameSnapshot, Name: "db"}, p})
		want := rawFrame(byte(FrameSnapshot), "db", 0, [][]byte{p[:chunkSize], p[chunkSize : 2*chunkSize], p[2*chunkSize:]}, nil)
		if !bytes.Equal(data, want) {
			t.Fatalf("multi-chunk frame is not encoded as 64 KiB chunks")
		}
	})
}

func TestFrameNameTooLong(t *testing.T) {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	if err := fw.Begin(Frame{Type: FrameDrop, Name: strings.Repeat("n", maxNameLen+1)}); err == nil {
		t.Fatal("Begin accepted a 256-byte name")
	}
	if err := fw.Write(Frame{Type: FrameDrop, Name: strings.Repeat("n", 1000)}); err == nil {
		t.Fatal("Write accepted a 1000-byte name")
	}
	// A hand-made frame with a name that is too long is refused.
	data := rawFrame(byte(FrameDrop), strings.Repeat("n", maxNameLen+1), 0, nil, nil)
	if _, _, err := readOneFrame(data); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("reading a 256-byte name: %v, want ErrBadFrame", err)
	}
}

func TestFrameStream(t *testing.T) {
	frames := []testFrame{
		{Frame{Type: FrameSnapshot, Name: "a.db", Meta: 1}, randBytes(10, 200000)},
		{Frame{Type: FrameChangeset, Name: "a.db", Meta: 2}, randBytes(11, 5000)},
		{Frame{Type: FrameHeartbeat, Meta: 1700000000000}, nil},
		{Frame{Type: FrameChangeset, Name: "b.db", Meta: 3}, randBytes(12, chunkSize)},
		{Frame{Type: FrameDrop, Name: "a.db"}, nil},
		{Frame{Type: FrameReady}, nil},
		{Frame{Type: FrameChangeset, Name: strings.Repeat("z", maxNameLen)}, []byte("x")},
	}
	data := encodeFrames(t, 3000, frames...)

	readers := map[string]func() io.Reader{
		"buffer":   func() io.Reader { return bytes.NewBuffer(append([]byte(nil), data...)) },
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
	}
	for name, r := range readers {
		t.Run(name, func(t *testing.T) {
			checkFrames(t, readAllFrames(t, r()), frames)
		})
	}

	// The end of a stream is reported as an error by Next.
	t.Run("end", func(t *testing.T) {
		fr := NewFrameReader(bytes.NewBuffer(data))
		for i := range frames {
			if _, _, err := fr.Next(); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		if f, _, err := fr.Next(); err == nil {
			t.Fatalf("Next after the last frame returned %+v", f)
		}
	})

	// Hand-made chunking the writer never produces is read the same.
	t.Run("odd chunking", func(t *testing.T) {
		p := randBytes(13, maxChunk+100)
		var raw []byte
		raw = append(raw, rawFrame(byte(FrameSnapshot), "odd", 7, [][]byte{p[:1], p[1:2], p[2 : maxChunk+2], p[maxChunk+2:]}, nil)...)
		raw = append(raw, rawFrame(byte(FrameChangeset), "odd", 8, [][]byte{p[:3]}, nil)...)
		checkFrames(t, readAllFrames(t, bytes.NewBuffer(raw)), []testFrame{
			{Frame{Type: FrameSnapshot, Name: "odd", Meta: 7}, p},
			{Frame{Type: FrameChangeset, Name: "odd", Meta: 8}, p[:3]},
		})
	})
}

// Next drains and verifies a payload that was not read to its end.
func TestFramePartialRead(t *testing.T) {
	frames := []testFrame{
		{Frame{Type: FrameSnapshot, Name: "a", Meta: 1}, randBytes(20, 3*chunkSize+77)},
		{Frame{Type: FrameChangeset, Name: "b", Meta: 2}, randBytes(21, 100)},
		{Frame{Type: FrameChangeset, Name: "c", Meta: 3}, randBytes(22, 100)},
		{Frame{Type: FrameHeartbeat, Meta: 4}, nil},
	}
	data := encodeFrames(t, 0, frames...)

	for _, n := range []int{0, 1, 50, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 76, 3*chunkSize + 77} {
		fr := NewFrameReader(bytes.NewBuffer(data))
		f, payload, err := fr.Next()
		if err != nil || f != frames[0].Frame {
			t.Fatalf("first frame: %+v, %v", f, err)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(payload, buf); err != nil {
			t.Fatalf("read %d bytes: %v", n, err)
		}
		if !bytes.Equal(buf, frames[0].payload[:n]) {
			t.Fatalf("first %d bytes differ", n)
		}
		// Skip the second frame's payload entirely.
		f, _, err = fr.Next()
		if err != nil || f != frames[1].Frame {
			t.Fatalf("after reading %d bytes: second frame %+v, %v", n, f, err)
		}
		f, payload, err = fr.Next()
		if err != nil || f != frames[2].Frame {
			t.Fatalf("third frame: %+v, %v", f, err)
		}
		if b, err := io.ReadAll(payload); err != nil || !bytes.Equal(b, frames[2].payload) {
			t.Fatalf("third payload: %d bytes, %v", len(b), err)
		}
		if f, _, err = fr.Next(); err != nil || f != frames[3].Frame {
			t.Fatalf("fourth frame: %+v, %v", f, err)
		}
	}

	// A corrupt payload that is not read is still caught by Next.
	t.Run("corrupt skipped payload", func(t *testing.T) {
		for _, off := range []int{20, chunkSize + 30, 2*chunkSize + 5, len(encodeFrames(t, 0, frames[0])) - 1} {
			bad := append([]byte(nil), data...)
			bad[off] ^= 0x10
			fr := NewFrameReader(bytes.NewBuffer(bad))
			f, payload, err := fr.Next()
			if err != nil || f != frames[0].Frame {
				t.Fatalf("offset %d: first frame: %+v, %v", off, f, err)
			}
			if _, err := payload.Read(make([]byte, 10)); err != nil {
				t.Fatalf("offset %d: first read: %v", off, err)
			}
			if f, _, err := fr.Next(); !isFrameError(err) {
				t.Fatalf("offset %d: Next after a corrupt frame: %+v, %v; want ErrBadFrame", off, f, err)
			}
			// The failure sticks to the payload.
			if _, err := io.ReadAll(payload); !isFrameError(err) {
				t.Fatalf("offset %d: payload after the failure: %v", off, err)
			}
		}
	})
}

func TestFrameCorruption(t *testing.T) {
	const name = "corrupt.db"
	payload := randBytes(30, 2*chunkSize+500) // three chunks
	frame := testFrame{Frame{Type: FrameChangeset, Name: name, Meta: 0xdeadbeef}, payload}
	data := encodeFrames(t, 0, frame)
	if _, b, err := readOneFrame(data); err != nil || !bytes.Equal(b, payload) {
		t.Fatalf("intact frame: %v", err)
	}

	const (
		offType    = 0
		offNameLen = 1
		offName    = 3
		offMeta    = offName + len(name)
		offChunk1  = offMeta + 8
		offData1   = offChunk1 + 4
		offChunk2  = offData1 + chunkSize
		offChunk3  = offChunk2 + 4 + chunkSize
		offEnd     = offChunk3 + 4 + 500
		offCRC     = offEnd + 4
	)
	if offCRC+4 != len(data) {
		t.Fatalf("frame of %d bytes, layout expects %d", len(data), offCRC+4)
	}

	tests := []struct {
		name string
		off  int
		bits []byte
	}{
		{"type", offType, []byte{0x01, 0x02, 0x04, 0x08, 0x80}},
		{"name length", offNameLen, []byte{0x01, 0x80}},
		{"name length low", offNameLen + 1, []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80}},
		{"name", offName + 3, []byte{0x01, 0x20, 0x80}},
		{"meta", offMeta, []byte{0x01, 0x80}},
		{"meta low", offMeta + 7, []byte{0x01, 0x80}},
		{"first chunk length high", offChunk1, []byte{0x01, 0x80}},
		{"first chunk length low", offChunk1 + 3, []byte{0x01, 0x02, 0x80}},
		{"first chunk length mid", offChunk1 + 2, []byte{0x01, 0x80}},
		{"last chunk length", offChunk3 + 3, []byte{0x01, 0x04}},
		{"end marker", offEnd + 3, []byte{0x01, 0x80}},
		{"payload start", offData1, []byte{0x01, 0x80}},
		{"payload middle", offChunk2 + 4 + 1000, []byte{0x04}},
		{"payload end", offEnd - 1, []byte{0x01}},
		{"crc", offCRC, []byte{0x01, 0x80}},
		{"crc last", offCRC + 3, []byte{0x01}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, bit := range tt.bits {
				bad := append([]byte(nil), data...)
				bad[tt.off] ^= bit
				f, b, err := readOneFrame(bad)
				if !isFrameError(err) {
					t.Fatalf("bit %#x at offset %d: frame %+v with %d bytes, err %v; want ErrBadFrame or unexpected EOF",
						bit, tt.off, f, len(b), err)
				}
			}
		})
	}

	// Every single-bit error in a small frame is caught.
	t.Run("every bit", func(t *testing.T) {
		small := encodeFrames(t, 0, testFrame{Frame{Type: FrameSnapshot, Name: "s", Meta: 9}, randBytes(31, 40)})
		for off := range small {
			for bit := 0; bit < 8; bit++ {
				bad := append([]byte(nil), small...)
				bad[off] ^= 1 << bit
				if f, b, err := readOneFrame(bad); !isFrameError(err) {
					t.Fatalf("bit %d at offset %d: frame %+v with %d bytes, err %v", bit, off, f, len(b), err)
				}
			}
		}
	})

	// A corrupt frame in the middle of a stream: those before it are read
	// whole, then the corrupt one fails.
	t.Run("in stream", func(t *testing.T) {
		first := testFrame{Frame{Type: FrameHeartbeat, Meta: 1}, nil}
		second := testFrame{Frame{Type: FrameChangeset, Name: "x"}, randBytes(32, 1000)}
		stream := encodeFrames(t, 0, first, second, first)
		n1 := len(encodeFrames(t, 0, first))
		stream[n1+500] ^= 0x40
		fr := NewFrameReader(bytes.NewBuffer(stream))
		f, p, err := fr.Next()
		if err != nil || f != first.Frame {
			t.Fatalf("first frame: %+v, %v", f, err)
		}
		if _, err := io.ReadAll(p); err != nil {
			t.Fatalf("first payload: %v", err)
		}
		f, p, err = fr.Next()
		if err != nil || f != second.Frame {
			t.Fatalf("second frame: %+v, %v", f, err)
		}
		if _, err := io.ReadAll(p); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("corrupt second payload: %v, want ErrBadFrame", err)
		}
	})
}

func TestFrameTruncated(t *testing.T) {
	frames := []testFrame{
		{Frame{Type: FrameDrop, Name: "gone.db"}, nil},
		{Frame{Type: FrameHeartbeat, Meta: 12345}, nil},
		{Frame{Type: FrameChangeset, Name: "t.db", Meta: 3}, randBytes(40, 300)},
		{Frame{Type: FrameSnapshot, Name: strings.Repeat("s", maxNameLen), Meta: 4}, randBytes(41, 1)},
	}
	check := func(t *testing.T, data []byte, n int) {
		t.Helper()
		f, b, err := readOneFrame(data[:n])
		if n == 0 {
			// An empty stream ended cleanly between frames.
			if !errors.Is(err, io.EOF) {
				t.Fatalf("empty stream: %v, want io.EOF", err)
			}
			return
		}
		if !isFrameError(err) {
			t.Fatalf("truncated at %d of %d: frame %+v with %d bytes, err %v; want an error", n, len(data), f, len(b), err)
		}
	}
	for _, fr := range frames {
		t.Run(fr.Type.String(), func(t *testing.T) {
			data := encodeFrames(t, 0, fr)
			for n := 0; n < len(data); n++ {
				check(t, data, n)
			}
			if _, b, err := readOneFrame(data); err != nil || !bytes.Equal(b, fr.payload) {
				t.Fatalf("whole frame: %v", err)
			}
		})
	}

	// A multi-chunk frame: every offset around the chunk boundaries and
	// the end, and a sample of the rest.
	t.Run("multi-chunk", func(t *testing.T) {
		data := encodeFrames(t, 0, testFrame{Frame{Type: FrameSnapshot, Name: "big"}, randBytes(42, 2*chunkSize+100)})
		hdr := 1 + 2 + 3 + 8
		boundaries := []int{0, hdr, hdr + 4 + chunkSize, hdr + 2*(4+chunkSize), len(data) - 8}
		seen := map[int]bool{}
		for _, b := range boundaries {
			for n := max(b-16, 0); n < min(b+16, len(data)); n++ {
				seen[n] = true
				check(t, data, n)
			}
		}
		for n := 0; n < len(data); n += 997 {
			if !seen[n] {
				check(t, data, n)
			}
		}
	})

	// Truncated after a complete frame: the first frame reads whole and
	// the second fails.
	t.Run("second frame", func(t *testing.T) {
		data := encodeFrames(t, 0, frames[2], frames[3])
		n1 := len(encodeFrames(t, 0, frames[2]))
		for n := n1 + 1; n < len(data); n++ {
			fr := NewFrameReader(bytes.NewBuffer(data[:n]))
			if _, p, err := fr.Next(); err != nil {
				t.Fatalf("truncated at %d: first frame: %v", n, err)
			} else if _, err := io.ReadAll(p); err != nil {
				t.Fatalf("truncated at %d: first payload: %v", n, err)
			}
			f, p, err := fr.Next()
			if err == nil {
				_, err = io.ReadAll(p)
			}
			if !isFrameError(err) {
				t.Fatalf("truncated at %d: second frame %+v, err %v", n, f, err)
			}
		}
	})
}

func TestFrameUnknownType(t *testing.T) {
	for _, typ := range []byte{0, 6, 7, 0x80, 0xff} {
		data := rawFrame(typ, "x", 0, [][]byte{[]byte("payload")}, nil)
		f, b, err := readOneFrame(data)
		if !errors.Is(err, ErrBadFrame) {
			t.Fatalf("type %d: frame %+v with %d bytes, err %v; want ErrBadFrame", typ, f, len(b), err)
		}
	}
	if s := FrameType(9).String(); s != "frame(9)" {
		t.Fatalf("FrameType(9).String() = %q", s)
	}
	if s := FrameHeartbeat.String(); s != "heartbeat" {
		t.Fatalf("FrameHeartbeat.String() = %q", s)
	}
}

func TestFrameChunkTooLarge(t *testing.T) {
	for _, n := range []uint32{maxChunk + 1, 1 << 31, 1<<32 - 1} {
		var b []byte
		b = append(b, byte(FrameSnapshot))
		b = binary.BigEndian.AppendUint16(b, 1)
		b = append(b, 'x')
		b = binary.BigEndian.AppendUint64(b, 0)
		b = binary.BigEndian.AppendUint32(b, n)
		b = append(b, make([]byte, 100)...) // the reader must not wait for the chunk
		f, p, err := NewFrameReader(bytes.NewBuffer(b)).Next()
		if err != nil {
			t.Fatalf("chunk of %d: Next: %v", n, err)
		}
		if got, err := io.ReadAll(p); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("chunk of %d: frame %+v read %d bytes, err %v; want ErrBadFrame", n, f, len(got), err)
		}
	}
	// A chunk of exactly the maximum is accepted.
	p := randBytes(50, maxChunk)
	if _, got, err := readOneFrame(rawFrame(byte(FrameSnapshot), "x", 0, [][]byte{p}, nil)); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("chunk of the maximum size: %d bytes, %v", len(got), err)
	}
	// So is a frame with a wrong CRC refused even when the chunking is valid.
	crc := uint32(0)
	if _, _, err := readOneFrame(rawFrame(byte(FrameReady), "", 0, nil, &crc)); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("wrong crc: %v, want ErrBadFrame", err)
	}
}

// A failing underlying writer is reported.
func TestFrameWriterError(t *testing.T) {
	fw := NewFrameWriter(errWriter{})
	if err := fw.Write(Frame{Type: FrameReady}); err == nil {
		t.Fatal("Write to a failing writer succeeded")
	}
	fw = NewFrameWriter(errWriter{})
	if err := fw.Begin(Frame{Type: FrameSnapshot}); err != nil {
		t.Fatalf("Begin is buffered: %v", err)
	}
	// More than the writer's buffer: the failure shows before End.
	_, err := fw.WritePayload(make([]byte, 4*chunkSize))
	if err == nil {
		err = fw.End()
	}
	if err == nil {
		t.Fatal("writing a large payload to a failing writer succeeded")
	}
}

type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("disk on fire") }
