package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns the two ends of a new pseudo-terminal: what is written to
// term comes out of the returned channel, as a user would see it.
func openPTY(t *testing.T) (term *os.File, screen <-chan string) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 4096)
		for {
			n, err := ptm.Read(b)
			if n > 0 {
				ch <- string(b[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		pts.Close()
		ptm.Close()
		<-done
	})
	return pts, ch
}

// waitScreen reads the terminal until it has shown want.
func waitScreen(t *testing.T, screen <-chan string, seen *strings.Builder, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for !strings.Contains(seen.String(), want) {
		select {
		case s := <-screen:
			seen.WriteString(s)
		case <-timeout:
			t.Fatalf("the terminal never showed %q; it showed %q", want, seen.String())
		}
	}
}

// TestProgressOnTerminal: on a terminal, a transfer shows how far it is,
// then what the other side does once every byte is through, and the line
// is erased at the end.
func TestProgressOnTerminal(t *testing.T) {
	defer func(d time.Duration) { progressAfter = d }(progressAfter)
	progressAfter = 0
	term, screen := openPTY(t)
	var seen strings.Builder

	p := startProgress(term, "import", 3<<20)
	if p == nil {
		t.Fatal("no progress on a terminal")
	}
	p.After("the primary validates and applies it")
	r := p.Reader(bytes.NewReader(make([]byte, 3<<20)))
	if _, err := io.CopyN(io.Discard, r, 1<<20); err != nil {
		t.Fatal(err)
	}
	waitScreen(t, screen, &seen, "import: 1.0 MiB of 3.0 MiB (33%)")
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	waitScreen(t, screen, &seen, "import: 3.0 MiB sent; the primary validates and applies it")
	p.Stop()
	waitScreen(t, screen, &seen, "\r\x1b[K")
	if s := seen.String(); !strings.HasSuffix(s, "\r\x1b[K") {
		t.Fatalf("the line was not erased last: %q", s)
	}
}

// TestProgressNotTerminal: written to a pipe or a file (a script, a CI
// log), nothing is drawn and the data is passed on as it is.
func TestProgressNotTerminal(t *testing.T) {
	defer func(d time.Duration) { progressAfter = d }(progressAfter)
	progressAfter = 0
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, out := range []*os.File{pw, file} {
		p := startProgress(out, "export", 100)
		if p != nil {
			t.Fatalf("progress on %s, which is not a terminal", out.Name())
		}
		// The upload keeps the file itself, which the kernel sends
		// without copying.
		if r := p.Reader(file); r != io.Reader(file) {
			t.Fatalf("the reader was wrapped: %T", r)
		}
		p.After("anything")
		p.Stop()
	}
	if fi, err := file.Stat(); err != nil || fi.Size() != 0 {
		t.Fatalf("something was written to the file: %v, %v", fi, err)
	}
}

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1023, "1023 bytes"},
		{1536, "1.5 KiB"},
		{5 << 20, "5.0 MiB"},
		{1075154944, "1.00 GiB"},
	} {
		if got := formatBytes(tc.n); got != tc.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
