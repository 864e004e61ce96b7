package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// progressAfter is how long a transfer runs before its progress is shown:
// a short one prints nothing but its result.
var progressAfter = time.Second

// progress shows on a terminal how far a long import or export is: one
// line, redrawn a few times a second and erased at the end. It shows
// nothing when its output is not a terminal, so scripts and CI logs get
// only the result. The methods of a nil *progress do nothing.
type progress struct {
	out   *os.File
	verb  string // "import", "export"
	total int64  // bytes expected; -1 if unknown
	start time.Time
	n     atomic.Int64
	after atomic.Pointer[string] // shown once all bytes are through

	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex // serializes drawing
	drawn bool       // a line is on the terminal
}

// startProgress starts showing a transfer of total bytes (-1: unknown) on
// out if out is a terminal, and returns nil otherwise. Stop ends it.
func startProgress(out *os.File, verb string, total int64) *progress {
	if !isTerminal(out) {
		return nil
	}
	p := &progress{out: out, verb: verb, total: total, start: time.Now(), stop: make(chan struct{})}
	p.wg.Go(p.run)
	return p
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Reader counts what is read through r.
func (p *progress) Reader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return &countingReader{r: r, n: &p.n}
}

// After sets what the line says once every byte is through: what the
// other side is doing with them.
func (p *progress) After(s string) {
	if p != nil {
		p.after.Store(&s)
	}
}

// Stop erases the line and returns once nothing more is drawn.
func (p *progress) Stop() {
	if p == nil {
		return
	}
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.out, "\r\x1b[K")
	}
}

func (p *progress) run() {
	select {
	case <-time.After(progressAfter):
	case <-p.stop:
		return
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		p.mu.Lock()
		fmt.Fprint(p.out, "\r"+p.line(time.Since(p.start))+"\x1b[K")
		p.drawn = true
		p.mu.Unlock()
		select {
		case <-t.C:
		case <-p.stop:
			return
		}
	}
}

// line is the progress after d.
func (p *progress) line(d time.Duration) string {
	n := p.n.Load()
	after := p.after.Load()
	if after != nil && p.total >= 0 && n >= p.total {
		return fmt.Sprintf("%s: %s sent; %s (%.0fs)", p.verb, formatBytes(n), *after, d.Seconds())
	}
	rate := ""
	if d > 0 {
		rate = fmt.Sprintf(", %.0f MB/s", float64(n)/1e6/d.Seconds())
	}
	if p.total > 0 {
		return fmt.Sprintf("%s: %s of %s (%d%%)%s", p.verb, formatBytes(n), formatBytes(p.total), n*100/p.total, rate)
	}
	return fmt.Sprintf("%s: %s%s", p.verb, formatBytes(n), rate)
}

// formatBytes renders n in binary units, as SQLite sizes usually are.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// countingReader adds what it reads to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
