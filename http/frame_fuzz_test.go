package http

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"
	"testing/iotest"

	"github.com/litefs-project/litefs/internal/fuzzutil"
)

// fixFrameCRCs rewrites the CRC of every frame of a stream whose structure
// can be walked, so that the fuzzer's mutations of types, names, metas and
// chunk lengths reach the checks behind the CRC.
func fixFrameCRCs(data []byte) []byte {
	c := bytes.Clone(data)
	for off := 0; ; {
		start := off
		if off+3 > len(c) {
			return c
		}
		off += 3 + int(binary.BigEndian.Uint16(c[off+1:])) + 8
		for {
			if off+4 > len(c) {
				return c
			}
			n := int(binary.BigEndian.Uint32(c[off:]))
			off += 4
			if n == 0 {
				break
			}
			if n < 0 || n > len(c)-off {
				return c
			}
			off += n
		}
		if off+4 > len(c) {
			return c
		}
		binary.BigEndian.PutUint32(c[off:], crc32.Checksum(c[start:off], crcTable))
		off += 4
	}
}

// seedStream encodes frames with the writer.
func seedStream(frames ...testFrame) []byte {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	for _, f := range frames {
		fw.Begin(f.Frame)
		fw.WritePayload(f.payload)
		fw.End()
	}
	return buf.Bytes()
}

// readFrames reads every frame of data, reading each payload in pieces of
// at most step bytes, until the stream ends or fails.
func readFrames(r io.Reader, step int) ([]testFrame, error) {
	fr := NewFrameReader(r)
	var frames []testFrame
	for {
		f, payload, err := fr.Next()
		if err != nil {
			return frames, err
		}
		var b []byte
		buf := make([]byte, step)
		for {
			n, err := payload.Read(buf)
			b = append(b, buf[:n]...)
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return frames, err
			}
		}
		frames = append(frames, testFrame{f, b})
	}
}

// FuzzFrameReader reads arbitrary bytes as a replication stream: the
// reader gives frames or an error naming a bad or truncated frame, never a
// panic, never a payload the input does not hold, and never an allocation
// a length field asks for but the input does not back.
func FuzzFrameReader(f *testing.F) {
	seeds := [][]byte{
		nil,
		seedStream(testFrame{Frame{Type: FrameReady}, nil}),
		seedStream(
			testFrame{Frame{Type: FrameChangeset, Name: "db", Meta: 7}, randBytes(1, 300)},
			testFrame{Frame{Type: FrameHeartbeat, Meta: 1700000000000}, nil},
			testFrame{Frame{Type: FrameDrop, Name: "old.db"}, nil}),
		seedStream(testFrame{Frame{Type: FrameSnapshot, Name: "big.db", Meta: 3}, randBytes(2, chunkSize+100)}),
		rawFrame(byte(FrameChangeset), "db", 1, [][]byte{{1, 2, 3}, {4}, {5, 6}}, nil),
	}
	// Chunk lengths the input does not back: the largest allowed, and
	// beyond it.
	huge := rawFrame(byte(FrameSnapshot), "db", 0, nil, nil)
	huge = append(huge[:len(huge)-8], 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0)
	hugeOK := bytes.Clone(huge)
	binary.BigEndian.PutUint32(hugeOK[len(hugeOK)-8:], maxChunk)
	seeds = append(seeds, huge, hugeOK)
	for _, s := range seeds {
		f.Add(s, false, uint16(0))
		f.Add(s, true, uint16(1))
		for _, n := range []int{1, 3, 11, len(s) / 2, len(s) - 4, len(s) - 1} {
			if n > 0 && n < len(s) {
				f.Add(bytes.Clone(s[:n]), true, uint16(7))
				c := bytes.Clone(s)
				c[n] ^= 0x40
				f.Add(c, false, uint16(n))
				f.Add(c, true, uint16(n))
			}
		}
	}

	f.Fuzz(func(t *testing.T, data []byte, fix bool, step uint16) {
		if fix {
			data = fixFrameCRCs(data)
		}
		var frames []testFrame
		var err error
		if n := fuzzutil.Allocated(func() { frames, err = readFrames(bytes.NewReader(data), 1+int(step)) }); n > 1<<20+4*uint64(len(data))+uint64(step) {
			t.Fatalf("reading %d bytes of frames allocated %d bytes (%d frames, then %v)", len(data), n, len(frames), err)
		}
		if !errors.Is(err, io.EOF) && !isFrameError(err) {
			t.Fatalf("a stream of %d bytes ended with %v, neither its end nor a bad or truncated frame", len(data), err)
		}
		total := 0
		for _, fr := range frames {
			total += len(fr.payload)
			if len(fr.Name) > maxNameLen || fr.Type < FrameChangeset || fr.Type > FrameHeartbeat {
				t.Fatalf("accepted frame %+v", fr.Frame)
			}
		}
		if total > len(data) {
			t.Fatalf("%d bytes of payload from a stream of %d bytes", total, len(data))
		}

		// The same stream read a byte at a time gives the same frames.
		oneByte, err2 := readFrames(iotest.OneByteReader(bytes.NewReader(data)), 1)
		if (err == nil) != (err2 == nil) || len(oneByte) != len(frames) {
			t.Fatalf("read a byte at a time: %d frames then %v; at once: %d frames then %v", len(oneByte), err2, len(frames), err)
		}
		checkFrames(t, oneByte, frames)

		// Frames accepted are frames the writer writes: encoding them again
		// and reading that back gives them again.
		var buf bytes.Buffer
		fw := NewFrameWriter(&buf)
		for _, fr := range frames {
			if err := fw.Begin(fr.Frame); err != nil {
				t.Fatalf("accepted frame %+v does not encode: %v", fr.Frame, err)
			}
			if _, err := fw.WritePayload(fr.payload); err != nil {
				t.Fatal(err)
			}
			if err := fw.End(); err != nil {
				t.Fatal(err)
			}
		}
		again, err := readFrames(&buf, 4096)
		if !errors.Is(err, io.EOF) {
			t.Fatalf("re-encoded frames: %v", err)
		}
		checkFrames(t, again, frames)
	})
}
