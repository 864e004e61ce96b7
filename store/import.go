package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// Import replaces the named database, or creates it, with the SQLite
// database file at path, as one transaction of the term of epoch:
// in-flight writers finish, new ones (and HALT grants) wait, and the whole
// file becomes the next changeset, which every replica receives. The
// caller has validated the file (it is a sound SQLite database); Import
// checks only its shape. An import that completes after the term began to
// end is reported as failed: its outcome is unknown.
func (t *Term) Import(ctx context.Context, epoch uint64, name, path string) (ltx.Pos, error) {
	if err := t.enter(epoch); err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer t.leave()
	s := t.store
	f, err := os.Open(path)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer f.Close()
	pageSize, pageN, err := importShape(f)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	db := s.DB(name)
	if db == nil {
		if db, err = s.createDB(name, false); err != nil {
			return ltx.Pos{}, err
		}
	}
	hold, err := t.HoldWrites(ctx, name)
	if err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer hold.Release()

	tmp, err := os.CreateTemp(s.Dir(), ".import-*")
	if err != nil {
		return ltx.Pos{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	pos := db.Pos()
	hdr := ltx.Header{
		Version:   ltx.Version,
		PageSize:  pageSize,
		Commit:    pageN,
		MinTXID:   pos.TXID + 1,
		MaxTXID:   pos.TXID + 1,
		Timestamp: now().UnixMilli(),
		NodeID:    s.nodeID,
	}
	if pos.TXID > 0 {
		hdr.PreApplyChecksum = pos.PostApplyChecksum
	}
	enc, err := ltx.NewEncoder(tmp)
	if err != nil {
		return ltx.Pos{}, err
	}
	if err := enc.EncodeHeader(hdr); err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	h := ltx.NewHasher()
	var xor ltx.Checksum
	buf := make([]byte, pageSize)
	lockPgno := sqlite.LockPgno(pageSize)
	for pgno := uint32(1); pgno <= pageN; pgno++ {
		if pgno == lockPgno {
			continue
		}
		if _, err := f.ReadAt(buf, int64(pgno-1)*int64(pageSize)); err != nil {
			return ltx.Pos{}, fmt.Errorf("import %s: read page %d: %w", name, pgno, err)
		}
		xor ^= checksumPage(h, pgno, buf)
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, buf); err != nil {
			return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
		}
	}
	enc.SetPostApplyChecksum(ltx.ChecksumFlag | xor)
	if err := enc.Close(); err != nil {
		return ltx.Pos{}, fmt.Errorf("import %s: %w", name, err)
	}
	ctx, cancel := t.bind(ctx)
	defer cancel()
	newPos, err := db.applyChangesetSync(ctx, tmp, enc.N(), hold.Owner())
	if err != nil {
		return newPos, fmt.Errorf("import %s: %w", name, t.waitErr(ctx, err))
	}
	if t.isEnding() {
		return newPos, fmt.Errorf("import %s: %w while it was applied; it may or may not survive the change of primary", name, t.endedErr())
	}
	db.logger.Info("database imported", "pages", pageN, "page_size", pageSize, "pos", newPos.String())
	return newPos, nil
}

// importShape reads the page size and page count of a database file.
func importShape(f *os.File) (pageSize, pageN uint32, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	hdr := make([]byte, sqlite.HeaderSize)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, fi.Size()), hdr); err != nil {
		return 0, 0, fmt.Errorf("not a SQLite database: %d bytes", fi.Size())
	}
	pageSize = uint32(binary.BigEndian.Uint16(hdr[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	if pageSize < 512 || pageSize > 65536 || pageSize&(pageSize-1) != 0 {
		return 0, 0, fmt.Errorf("not a SQLite database: page size %d", pageSize)
	}
	if fi.Size()%int64(pageSize) != 0 {
		return 0, 0, fmt.Errorf("file size %d is not a multiple of its page size %d", fi.Size(), pageSize)
	}
	return pageSize, uint32(fi.Size() / int64(pageSize)), nil
}
