package store

import (
	"cmp"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// pageChecksums tracks the LTX checksum of every page of a database's
// logical content, so that the whole-database checksum can be kept up to
// date in O(changed pages) per commit: the database checksum is the XOR of
// its page checksums (with ltx.ChecksumFlag set).
type pageChecksums struct {
	pageSize uint32
	pages    []ltx.Checksum // index pgno-1; zero for the lock page
	xor      ltx.Checksum
}

// Sum returns the checksum of the whole database.
func (c *pageChecksums) Sum() ltx.Checksum { return ltx.ChecksumFlag | c.xor }

// PageN returns the number of pages tracked.
func (c *pageChecksums) PageN() uint32 { return uint32(len(c.pages)) }

// Get returns the checksum of pgno, zero if beyond the end.
func (c *pageChecksums) Get(pgno uint32) ltx.Checksum {
	if pgno == 0 || pgno > uint32(len(c.pages)) {
		return 0
	}
	return c.pages[pgno-1]
}

// Set records the checksum of pgno, growing the database if needed.
func (c *pageChecksums) Set(pgno uint32, sum ltx.Checksum) {
	if pgno > uint32(len(c.pages)) {
		c.Resize(pgno)
	}
	c.xor ^= c.pages[pgno-1] ^ sum
	c.pages[pgno-1] = sum
}

// Resize grows or shrinks the database to n pages; dropped pages leave the sum.
func (c *pageChecksums) Resize(n uint32) {
	for i := n; i < uint32(len(c.pages)); i++ {
		c.xor ^= c.pages[i]
	}
	if n <= uint32(cap(c.pages)) {
		old := uint32(len(c.pages))
		c.pages = c.pages[:n]
		for i := old; i < n; i++ {
			c.pages[i] = 0
		}
		return
	}
	grown := make([]ltx.Checksum, n, n+n/4)
	copy(grown, c.pages)
	c.pages = grown
}

// Clone returns an independent copy.
func (c *pageChecksums) Clone() *pageChecksums {
	cp := *c
	cp.pages = append([]ltx.Checksum(nil), c.pages...)
	return &cp
}

// pageReader reads one page of a database's logical content into buf.
type pageReader func(pgno uint32, buf []byte) error

// checksumPages computes the checksum of pages 1..pageN using read, which
// must be safe for concurrent use. The work is spread over the CPUs because
// start-up of a large database is bound by it.
func checksumPages(pageSize, pageN uint32, read pageReader) (*pageChecksums, error) {
	return checksumRuns(pageSize, pageN, func(lo, n uint32, b []byte) error {
		lockPgno := sqlite.LockPgno(pageSize)
		for j := range n {
			if pgno := lo + j; pgno != lockPgno {
				if err := read(pgno, b[j*pageSize:(j+1)*pageSize]); err != nil {
					return fmt.Errorf("read page %d: %w", pgno, err)
				}
			}
		}
		return nil
	})
}

// checksumFile computes the checksum of every page of a database file of
// pageN pages, reading 1 MiB at a time.
func checksumFile(f io.ReaderAt, pageSize, pageN uint32) (*pageChecksums, error) {
	return checksumRuns(pageSize, pageN, func(lo, n uint32, b []byte) error {
		if _, err := f.ReadAt(b, int64(lo-1)*int64(pageSize)); err != nil {
			return fmt.Errorf("read pages %d-%d: %w", lo, lo+n-1, err)
		}
		return nil
	})
}

// checksumRuns computes the checksum of pages 1..pageN, which readRun puts
// into b a run of up to 1 MiB of pages at a time (n pages from lo). Runs
// are spread over the CPUs (one worker below 1024 pages, where starting
// more costs more than it saves); the first error stops every worker.
func checksumRuns(pageSize, pageN uint32, readRun func(lo, n uint32, b []byte) error) (*pageChecksums, error) {
	c := &pageChecksums{pageSize: pageSize, pages: make([]ltx.Checksum, pageN)}
	if pageN == 0 {
		return c, nil
	}
	perRun := max(1, uint32(1<<20)/pageSize)
	runs := (pageN + perRun - 1) / perRun
	workers := min(runtime.GOMAXPROCS(0), 8, int(runs))
	if pageN < 1024 {
		workers = 1
	}
	lockPgno := sqlite.LockPgno(pageSize)
	var (
		next  atomic.Uint32
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for range workers {
		wg.Go(func() {
			buf := make([]byte, perRun*pageSize)
			h := ltx.NewHasher()
			for {
				i := next.Add(1) - 1
				if i >= runs {
					return
				}
				lo := i*perRun + 1
				n := min(perRun, pageN-lo+1)
				b := buf[:n*pageSize]
				if err := readRun(lo, n, b); err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
					next.Store(runs) // the others stop too
					return
				}
				for j := range n {
					if pgno := lo + j; pgno != lockPgno {
						c.pages[pgno-1] = checksumPage(h, pgno, b[j*pageSize:(j+1)*pageSize])
					}
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	for _, sum := range c.pages {
		c.xor ^= sum
	}
	return c, nil
}

// checksumPage returns the LTX checksum of one page using a scratch hasher.
func checksumPage(h hash.Hash64, pgno uint32, data []byte) ltx.Checksum {
	return ltx.ChecksumPageWith(h, pgno, data)
}

// readFullAt reads len(buf) bytes at off; bytes past the end of the file
// read as zeros, as SQLite treats a short database file.
func readFullAt(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if err == io.EOF {
		clear(buf[n:])
		return nil
	}
	return err
}
