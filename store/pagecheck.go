package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// This file checks the SQLite structure of a changeset that a HALT holder
// forwards, before the primary applies it. The checksums of a changeset
// only prove that it continues the database; a holder can compute correct
// checksums for any content. The check refuses a changeset whose pages
// SQLite would read as corrupt, looking only at the pages it changes and
// at page 1, so its cost is proportional to the changeset, not the
// database:
//
//   - page 1's header: magic, page size (equal to the database's; a page
//     size change must be made on the primary), file format versions,
//     reserved bytes (unchanged), payload fractions, the in-header page
//     count against the changeset's size when SQLite would trust it, the
//     freelist head and count, schema format and text encoding;
//   - every page within the changeset's size, never the lock page, in
//     ascending order;
//   - every changed page that claims to be a b-tree page (type byte 2, 5,
//     10 or 13, or page 1 at offset 100): header inside the page, cell
//     count, cell pointers inside the cell content area, each cell (with
//     its payload and overflow pointer) inside the page, child and
//     overflow page numbers within the database, freeblock chain in
//     ascending order and in bounds;
//   - a changed page that was a valid b-tree page before, and is no
//     longer one, must be a page the changeset links to as an overflow or
//     freelist page (from a cell, from another changed page's first word,
//     a freelist trunk's entries or the freelist head on page 1), or a
//     pointer-map page of an auto-vacuum database: SQLite never changes a
//     page's role without writing the page that links to it;
//   - every b-tree root page that sqlite_schema names on page 1 (when
//     page 1 is a leaf) is within the database, and a valid b-tree page if
//     the changeset writes it.
//
// It is a sanity check, not PRAGMA integrity_check: pages the changeset
// does not write are not read (except page 1 and the old content of pages
// that stop being b-tree pages), cells are not checked for overlaps, and
// records and overflow chains are not followed. A changeset crafted so
// that every page keeps a plausible shape can still corrupt a database.

// ErrCorruptChangeset is returned for a forwarded changeset whose pages
// SQLite would not accept.
var ErrCorruptChangeset = errors.New("changeset would corrupt the database")

// B-tree page types (the first byte of a b-tree page's header).
const (
	btreeInteriorIndex = 2
	btreeInteriorTable = 5
	btreeLeafIndex     = 10
	btreeLeafTable     = 13
)

// oldContent is the database a changeset applies to, as the check sees it.
type oldContent struct {
	pageSize uint32
	pageN    uint32
	read     func(pgno uint32, buf []byte) error // a page of the current content
}

// checkedPage is what the check keeps of a changed page once decoded.
type checkedPage struct {
	pgno   uint32
	first  uint32 // the first word: an overflow page's or trunk's next page
	btree  bool   // a valid b-tree page
	claims string // why it is not one, if its type byte says it is
	ptrmap string // why it is not a pointer-map page, if it sits where one must
}

// How the changeset links to a page.
const (
	refOverflow = 1 << iota // from a cell or another overflow page: the page holds payload
	refFree                 // from the freelist: the page's content is anything
)

// pageChecker holds the shape of the database after the changeset.
type pageChecker struct {
	pageSize uint32
	usable   uint32 // page size less the reserved bytes
	commit   uint32 // pages after the changeset
	lockPgno uint32
	autoVac  bool              // the database keeps pointer-map pages
	refs     map[uint32]uint8  // pages the changeset links to as overflow or free pages
	pages    []checkedPage     // every changed page but page 1
	written  map[uint32]bool   // every changed page
	btrees   map[uint32]string // changed pages' b-tree verdicts: "" valid, else why not
}

func corruptPage(pgno uint32, format string, args ...any) error {
	return fmt.Errorf("%w: page %d: %s", ErrCorruptChangeset, pgno, fmt.Sprintf(format, args...))
}

// checkDB checks a forwarded changeset against the database's current
// content. Caller keeps other writers out, so the content cannot change
// between the check and the apply.
func (db *DB) checkForwarded(data io.ReaderAt, size int64) error {
	db.mu.Lock()
	old := oldContent{pageSize: db.chk.pageSize, pageN: db.chk.PageN()}
	db.mu.Unlock()
	old.read = func(pgno uint32, buf []byte) error {
		db.mu.Lock()
		defer db.mu.Unlock()
		if db.closed {
			return ErrNotExist
		}
		return db.readPage(pgno, buf)
	}
	if err := checkChangeset(io.NewSectionReader(data, 0, size), old); err != nil {
		return fmt.Errorf("changeset for %s: %w", db.name, err)
	}
	return nil
}

// checkChangeset decodes the changeset in r and checks the structure of
// the pages it writes, as documented at the top of this file.
func checkChangeset(r io.Reader, old oldContent) error {
	dec := ltx.NewDecoder(r)
	dec.SetRetainPageIndex(false)
	if err := dec.DecodeHeader(); err != nil {
		return fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	hdr := dec.Header()
	if old.pageN > 0 && hdr.PageSize != old.pageSize {
		return corruptPage(1, "the changeset changes the page size from %d to %d bytes; a page size can only be changed on the primary", old.pageSize, hdr.PageSize)
	}
	if hdr.Commit == 0 {
		return corruptPage(1, "the changeset leaves the database without pages")
	}
	c := &pageChecker{
		pageSize: hdr.PageSize,
		commit:   hdr.Commit,
		lockPgno: sqlite.LockPgno(hdr.PageSize),
		refs:     make(map[uint32]uint8),
		written:  make(map[uint32]bool),
		btrees:   make(map[uint32]string),
	}

	var oldPage1, page1 []byte
	if old.pageN > 0 {
		oldPage1 = make([]byte, hdr.PageSize)
		if err := old.read(1, oldPage1); err != nil {
			return fmt.Errorf("read page 1: %w", err)
		}
	}
	buf := make([]byte, hdr.PageSize)
	var prev uint32
	for {
		var ph ltx.PageHeader
		if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("%w: %v", ErrMismatch, err)
		}
		pgno := ph.Pgno
		switch {
		case pgno <= prev:
			return corruptPage(pgno, "out of order, after page %d", prev)
		case pgno > c.commit:
			return corruptPage(pgno, "beyond the database's size of %d pages after the changeset", c.commit)
		case pgno == c.lockPgno:
			return corruptPage(pgno, "the lock page, which SQLite never writes")
		}
		prev = pgno
		c.written[pgno] = true
		if pgno == 1 {
			page1 = append([]byte(nil), buf...)
		}
		if c.usable == 0 {
			p1 := page1
			if p1 == nil {
				p1 = oldPage1
			}
			if p1 == nil {
				return corruptPage(1, "the database has no page 1 and the changeset does not write one")
			}
			if err := c.header(p1, oldPage1); err != nil {
				return err
			}
		}
		if pgno != 1 {
			c.page(pgno, buf)
		}
	}
	if err := dec.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	if c.usable == 0 {
		// No pages: the size may still change, which page 1 must say.
		if oldPage1 == nil {
			return corruptPage(1, "the database has no page 1 and the changeset does not write one")
		}
		if err := c.header(oldPage1, oldPage1); err != nil {
			return err
		}
	}
	p1 := page1
	if p1 == nil {
		p1 = oldPage1
	} else {
		if why := c.btree(1, p1, sqlite.HeaderSize); why != "" {
			return corruptPage(1, "the sqlite_schema b-tree: %s", why)
		}
		if t := p1[sqlite.HeaderSize]; t != btreeLeafTable && t != btreeInteriorTable {
			return corruptPage(1, "the sqlite_schema b-tree is not a table b-tree (type %d)", t)
		}
	}
	c.ref(be32(p1[32:]), refFree) // the freelist's first trunk
	if err := c.schemaRoots(p1); err != nil {
		return err
	}
	return c.roles(old)
}

// header checks page 1's database header and learns the usable size.
// old is the current page 1, nil for a database without pages.
func (c *pageChecker) header(b, old []byte) error {
	bad := func(format string, args ...any) error {
		return corruptPage(1, "database header: "+format, args...)
	}
	if string(b[:len(sqlite.Magic)]) != sqlite.Magic {
		return bad("bad magic %q", b[:len(sqlite.Magic)])
	}
	if ps, ok := sqlite.DecodePageSize(be16(b[16:])); !ok || ps != c.pageSize {
		return bad("page size field %d, but the changeset's pages are %d bytes", be16(b[16:]), c.pageSize)
	}
	if w, r := b[18], b[19]; (w != 1 && w != 2) || (r != 1 && r != 2) {
		return bad("file format write version %d, read version %d (want 1 or 2)", w, r)
	}
	reserved := uint32(b[20])
	if old != nil && b[20] != old[20] {
		return bad("the reserved space per page changes from %d to %d bytes", old[20], b[20])
	}
	if c.pageSize-reserved < 480 {
		return bad("%d reserved bytes leave fewer than 480 usable bytes per page", reserved)
	}
	if b[21] != 64 || b[22] != 32 || b[23] != 32 {
		return bad("payload fractions %d/%d/%d (want 64/32/32)", b[21], b[22], b[23])
	}
	if n, changeCounter, validFor := be32(b[28:]), be32(b[24:]), be32(b[92:]); n != 0 && changeCounter == validFor && n != c.commit {
		return bad("the database size field says %d pages, the changeset %d", n, c.commit)
	}
	if trunk := be32(b[32:]); trunk == 1 || trunk > c.commit {
		return bad("freelist trunk page %d is not a page of the database (%d pages)", trunk, c.commit)
	}
	if free := be32(b[36:]); free >= c.commit {
		return bad("%d free pages in a database of %d pages", free, c.commit)
	}
	if f := be32(b[44:]); f > 4 {
		return bad("schema format %d (want 0 to 4)", f)
	}
	if root := be32(b[52:]); root > c.commit {
		return bad("largest root page %d beyond the database's %d pages", root, c.commit)
	}
	if e := be32(b[56:]); e > 3 {
		return bad("text encoding %d (want 1, 2 or 3)", e)
	}
	c.usable = c.pageSize - reserved
	c.autoVac = be32(b[52:]) != 0
	return nil
}

// page records what a changed page (not page 1) is and what it links to.
func (c *pageChecker) page(pgno uint32, b []byte) {
	p := checkedPage{pgno: pgno, first: be32(b)}
	// The first word of an overflow page or a freelist trunk is the next
	// page of its chain; of a b-tree page it is its header, which only a
	// database of over 2^25 pages could mistake for a page number.
	c.ref(p.first, refOverflow|refFree)
	if n := be32(b[4:]); n <= c.usable/4-2 {
		// Shaped like a freelist trunk: its entries are free pages.
		for i := uint32(0); i < n; i++ {
			c.ref(be32(b[8+4*i:]), refFree)
		}
	}
	why := c.btree(pgno, b, 0)
	p.btree = why == ""
	c.btrees[pgno] = why
	if !p.btree && isBtreeType(b[0]) {
		p.claims = why
	}
	if c.autoVac && c.isPtrmap(pgno) {
		p.ptrmap = c.ptrmapWhy(pgno, b)
	}
	c.pages = append(c.pages, p)
}

func (c *pageChecker) ref(pgno uint32, kind uint8) {
	if pgno >= 2 && pgno <= c.commit {
		c.refs[pgno] |= kind
	}
}

func isBtreeType(t byte) bool {
	return t == btreeInteriorIndex || t == btreeInteriorTable || t == btreeLeafIndex || t == btreeLeafTable
}

// roles refuses changed pages that are not what they must be.
func (c *pageChecker) roles(old oldContent) error {
	var buf []byte
	for _, p := range c.pages {
		switch {
		case p.btree:
			continue
		case p.ptrmap != "":
			return corruptPage(p.pgno, "not a valid pointer-map page, which an auto-vacuum database keeps there: %s", p.ptrmap)
		case c.autoVac && c.isPtrmap(p.pgno):
			continue
		case p.claims != "":
			// A free page may hold anything; an overflow page starts
			// with the next page of its chain.
			if r := c.refs[p.pgno]; r&refFree != 0 || (r&refOverflow != 0 && p.first <= c.commit) {
				continue
			}
			return corruptPage(p.pgno, "not a valid b-tree page: %s", p.claims)
		case c.refs[p.pgno] != 0, p.pgno > old.pageN:
			continue
		}
		// A page whose role the changeset does not explain: it must not
		// have been a b-tree page.
		if buf == nil {
			buf = make([]byte, c.pageSize)
		}
		if err := old.read(p.pgno, buf); err != nil {
			return fmt.Errorf("read page %d: %w", p.pgno, err)
		}
		if isBtreeType(buf[0]) && c.btree(p.pgno, buf, 0) == "" && !(c.autoVac && c.isPtrmap(p.pgno)) {
			return corruptPage(p.pgno, "was a b-tree page and is no longer one (type byte %d), nor a page the changeset links to as an overflow or free page", buf[0])
		}
	}
	return nil
}

// btree checks the b-tree page header at off in b and every cell, and
// records the overflow pages its cells link to. It returns why the page
// is not a valid b-tree page, or "".
func (c *pageChecker) btree(pgno uint32, b []byte, off uint32) string {
	t := b[off]
	if !isBtreeType(t) {
		return fmt.Sprintf("type byte %d", t)
	}
	leaf := t == btreeLeafIndex || t == btreeLeafTable
	hdrSize := uint32(12)
	if leaf {
		hdrSize = 8
	}
	u := c.usable
	if off+hdrSize > u {
		return "header beyond the usable space"
	}
	nCell := uint32(be16(b[off+3:]))
	if nCell > (c.pageSize-8)/6 {
		return fmt.Sprintf("%d cells, more than a page can hold", nCell)
	}
	ptrs := off + hdrSize
	cellFirst := ptrs + 2*nCell
	top := uint32(be16(b[off+5:]))
	if top == 0 {
		top = 65536
	}
	if top < cellFirst || top > u {
		return fmt.Sprintf("cell content area at %d outside %d..%d", top, cellFirst, u)
	}
	if !leaf {
		if child := be32(b[off+8:]); child < 2 || child > c.commit {
			return fmt.Sprintf("right child page %d outside 2..%d", child, c.commit)
		}
	}
	for i := uint32(0); i < nCell; i++ {
		pc := uint32(be16(b[ptrs+2*i:]))
		if pc < top || pc > u-4 {
			return fmt.Sprintf("cell %d at offset %d outside the cell content area %d..%d", i, pc, top, u-4)
		}
		if why := c.cell(t, b[:u], pc); why != "" {
			return fmt.Sprintf("cell %d at offset %d: %s", i, pc, why)
		}
	}
	// The freeblock chain, as SQLite walks it.
	free := uint32(b[off+7]) + top
	if pc := uint32(be16(b[off+1:])); pc > 0 {
		if pc < top {
			return fmt.Sprintf("first freeblock at %d before the cell content area at %d", pc, top)
		}
		for {
			if pc > u-4 {
				return fmt.Sprintf("freeblock at %d beyond the usable space", pc)
			}
			next, size := uint32(be16(b[pc:])), uint32(be16(b[pc+2:]))
			free += size
			if next <= pc+size+3 {
				if next > 0 {
					return fmt.Sprintf("freeblocks out of order at %d", pc)
				}
				if pc+size > u {
					return fmt.Sprintf("freeblock at %d of %d bytes beyond the usable space", pc, size)
				}
				break
			}
			pc = next
		}
	}
	if free > u || free < cellFirst {
		return fmt.Sprintf("free space, fragments and content area add up to %d bytes, outside %d..%d", free, cellFirst, u)
	}
	return ""
}

// cell checks the cell at pc of a page of type t (b is the usable part of
// the page) and records its overflow page.
func (c *pageChecker) cell(t byte, b []byte, pc uint32) string {
	p := pc
	if t == btreeInteriorIndex || t == btreeInteriorTable {
		if p+4 > uint32(len(b)) {
			return "left child pointer beyond the page"
		}
		if child := be32(b[p:]); child < 2 || child > c.commit {
			return fmt.Sprintf("left child page %d outside 2..%d", child, c.commit)
		}
		p += 4
	}
	if t == btreeInteriorTable {
		if _, n := varint(b[p:]); n == 0 {
			return "rowid beyond the page"
		}
		return ""
	}
	payload, n := varint(b[p:])
	if n == 0 {
		return "payload size beyond the page"
	}
	p += uint32(n)
	if payload > 1<<31 {
		return fmt.Sprintf("payload of %d bytes", payload)
	}
	u := uint64(c.usable)
	maxLocal, minLocal := (u-12)*64/255-23, (u-12)*32/255-23
	if t == btreeLeafTable {
		if _, n := varint(b[p:]); n == 0 {
			return "rowid beyond the page"
		} else {
			p += uint32(n)
		}
		maxLocal = u - 35
	}
	if payload <= maxLocal {
		if uint64(p)+payload > u {
			return fmt.Sprintf("payload of %d bytes beyond the page", payload)
		}
		return ""
	}
	local := minLocal + (payload-minLocal)%(u-4)
	if local > maxLocal {
		local = minLocal
	}
	end := uint64(p) + local
	if end+4 > u {
		return fmt.Sprintf("local payload of %d bytes beyond the page", local)
	}
	ovfl := be32(b[end:])
	if ovfl < 2 || ovfl > c.commit {
		return fmt.Sprintf("overflow page %d outside 2..%d", ovfl, c.commit)
	}
	c.ref(ovfl, refOverflow)
	return ""
}

// isPtrmap reports whether pgno is a pointer-map page of an auto-vacuum
// database (SQLite's ptrmapPageno).
func (c *pageChecker) isPtrmap(pgno uint32) bool {
	if pgno < 2 {
		return false
	}
	per := c.usable/5 + 1
	at := (pgno-2)/per*per + 2
	if at == c.lockPgno {
		at++
	}
	return at == pgno
}

// ptrmapWhy checks the entries of a pointer-map page for the pages within
// the database: a type SQLite knows and a parent within the database.
func (c *pageChecker) ptrmapWhy(pgno uint32, b []byte) string {
	for i := uint32(0); i < c.usable/5; i++ {
		of := pgno + 1 + i
		if of > c.commit {
			break
		}
		e := b[5*i : 5*i+5]
		if e[0] > 5 {
			return fmt.Sprintf("entry for page %d has type %d", of, e[0])
		}
		if parent := be32(e[1:]); e[0] != 0 && parent > c.commit {
			return fmt.Sprintf("entry for page %d names parent page %d beyond the database", of, parent)
		}
	}
	return ""
}

// schemaRoots checks the root pages sqlite_schema names, when page 1 is a
// leaf and holds the whole schema: within the database, and valid b-tree
// pages if the changeset writes them.
func (c *pageChecker) schemaRoots(p1 []byte) error {
	const off = sqlite.HeaderSize
	if p1[off] != btreeLeafTable || c.btree(1, p1, off) != "" {
		return nil
	}
	u := p1[:c.usable]
	nCell := uint32(be16(p1[off+3:]))
	for i := uint32(0); i < nCell; i++ {
		pc := uint32(be16(p1[off+8+2*i:]))
		root, ok := schemaRoot(u, pc, c.usable)
		if !ok || root <= 0 {
			continue
		}
		if root > int64(c.commit) {
			return corruptPage(1, "sqlite_schema names root page %d, beyond the database's %d pages", root, c.commit)
		}
		if why, ok := c.btrees[uint32(root)]; ok && why != "" {
			return corruptPage(uint32(root), "a b-tree root that sqlite_schema names, but not a valid b-tree page: %s", why)
		}
	}
	return nil
}

// schemaRoot returns the rootpage column of the sqlite_schema record in the
// table-leaf cell at pc, if the cell holds it locally.
func schemaRoot(b []byte, pc, usable uint32) (int64, bool) {
	payload, n := varint(b[pc:])
	if n == 0 {
		return 0, false
	}
	p := pc + uint32(n)
	if _, n = varint(b[p:]); n == 0 { // rowid
		return 0, false
	}
	p += uint32(n)
	if payload > uint64(usable-35) {
		return 0, false // spills: the record may not be local; leave it
	}
	rec := b[p:]
	if uint64(len(rec)) < payload {
		return 0, false
	}
	rec = rec[:payload]
	hdrLen, n := varint(rec)
	if n == 0 || hdrLen > uint64(len(rec)) {
		return 0, false
	}
	hp, body := uint64(n), hdrLen
	for col := 0; col < 4; col++ {
		st, n := varint(rec[hp:hdrLen])
		if n == 0 {
			return 0, false
		}
		hp += uint64(n)
		size := serialSize(st)
		if col < 3 {
			body += size
			continue
		}
		if body+size > uint64(len(rec)) {
			return 0, false
		}
		v := rec[body : body+size]
		switch {
		case st == 0:
			return 0, true
		case st == 8:
			return 0, true
		case st == 9:
			return 1, true
		case st >= 1 && st <= 6:
			x := int64(int8(v[0]))
			for _, c := range v[1:] {
				x = x<<8 | int64(c)
			}
			return x, true
		}
		return 0, false
	}
	return 0, false
}

// serialSize is the size of a record value of serial type st.
func serialSize(st uint64) uint64 {
	switch {
	case st <= 4:
		return st
	case st == 5:
		return 6
	case st == 6 || st == 7:
		return 8
	case st < 12:
		return 0
	}
	return (st - 12) / 2
}

// varint decodes a SQLite varint from b; n is 0 if b ends first.
func varint(b []byte) (v uint64, n int) {
	for i := 0; i < 9; i++ {
		if i >= len(b) {
			return 0, 0
		}
		if i == 8 {
			return v<<8 | uint64(b[i]), 9
		}
		v = v<<7 | uint64(b[i]&0x7f)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return v, 9
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
