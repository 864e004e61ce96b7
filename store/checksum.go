package store

import (
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"

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
	c := &pageChecksums{pageSize: pageSize, pages: make([]ltx.Checksum, pageN)}
	if pageN == 0 {
		return c, nil
	}
	lockPgno := sqlite.LockPgno(pageSize)
	workers := runtime.GOMAXPROCS(0)
	if workers > 8 {
		workers = 8
	}
	if pageN < 1024 {
		workers = 1
	}
	const chunk = 256 // pages per unit of work
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = uint32(1)
	)
	claim := func() (uint32, uint32, bool) {
		mu.Lock()
		defer mu.Unlock()
		if first != nil || next > pageN {
			return 0, 0, false
		}
		lo := next
		hi := min(lo+chunk-1, pageN)
		next = hi + 1
		return lo, hi, true
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, pageSize)
			h := ltx.NewHasher()
			for {
				lo, hi, ok := claim()
				if !ok {
					return
				}
				for pgno := lo; pgno <= hi; pgno++ {
					if pgno == lockPgno {
						continue
					}
					if err := read(pgno, buf); err != nil {
						mu.Lock()
						if first == nil {
							first = fmt.Errorf("read page %d: %w", pgno, err)
						}
						mu.Unlock()
						return
					}
					c.pages[pgno-1] = checksumPage(h, pgno, buf)
				}
			}
		}()
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
