package http

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// smallReads returns at most n bytes a read, as a network body does.
type smallReads struct {
	r io.Reader
	n int
}

func (s smallReads) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.n)]) }

// TestSpoolReuse: one spool receives payload after payload, as a stream's
// changesets; each reads back exactly as sent, whether it stayed in memory
// or went to a file, and nothing of a larger payload before it shows.
func TestSpoolReuse(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	payload := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	sp := &spool{dir: t.TempDir()}
	defer sp.Close()
	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"a commit", 1000},
		{"beyond what is kept", spoolKeep + 1},
		{"all of memory", spoolMemory},
		{"one byte over memory, to a file", spoolMemory + 1},
		{"small after a file", 10},
		{"twice memory", 2 * spoolMemory},
		{"a commit again", 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := payload(tc.size)
			if err := sp.reset(); err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(sp, smallReads{bytes.NewReader(want), 3000})
			if err != nil || n != int64(tc.size) {
				t.Fatalf("copy: %d bytes, %v; want %d", n, err, tc.size)
			}
			if sp.size != int64(tc.size) {
				t.Fatalf("size %d, want %d", sp.size, tc.size)
			}
			if onFile := sp.file != nil; onFile != (tc.size > spoolMemory) {
				t.Fatalf("payload of %d bytes on a file: %v", tc.size, onFile)
			}
			got, err := io.ReadAll(io.NewSectionReader(sp, 0, sp.size))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read back %d bytes, differing from what was sent", len(got))
			}
			// Nothing beyond the payload, from an earlier larger one.
			if n, err := sp.ReadAt(make([]byte, 1), sp.size); n != 0 || err != io.EOF {
				t.Fatalf("read at the end: %d bytes, %v; want 0, EOF", n, err)
			}
		})
	}
}
