package store

import (
	"fmt"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// maxLogSearch bounds how far back recovery looks for the record matching
// the database when the log got ahead of it.
const maxLogSearch = 100000

// recover brings a database to a consistent state when it is opened, after
// a clean shutdown or a crash at any point:
//
//  1. A hot rollback journal is played back, as SQLite would: the
//     interrupted transaction was never acknowledged.
//  2. The logical content (database file plus committed WAL frames) is
//     checksummed, with the checksum after each committed WAL transaction.
//  3. That is reconciled with the changeset log: WAL transactions the log
//     is missing are turned into changesets exactly as they would have been
//     live; records the database does not have (the log is written before
//     SQLite makes a commit durable) are dropped; if neither explains the
//     difference, one changeset holding every page brings the log to the
//     database's content.
//
// Afterwards the position equals the checksum of the content.
func (db *DB) recover() error {
	if err := db.rollbackHotJournal(); err != nil {
		return err
	}

	pageSize, pageN, err := db.databaseFileSize()
	if err != nil {
		return err
	}
	walInfo, err := db.wal.Stat()
	if err != nil {
		return err
	}
	var txns []sqlite.WALTxn
	scan, err := sqlite.ScanWAL(db.wal, walInfo.Size(), func(t sqlite.WALTxn) error {
		txns = append(txns, t)
		return nil
	})
	if err != nil {
		return err
	}
	if scan.Valid && pageSize != 0 && scan.Header.PageSize != pageSize {
		db.logger.Warn("ignoring WAL written with another page size", "wal_page_size", scan.Header.PageSize, "page_size", pageSize)
		scan, txns = sqlite.WALScan{}, nil
	}
	if pageSize == 0 && scan.Valid {
		pageSize = scan.Header.PageSize
	}
	db.filePageSize = pageSize

	// Checksum the database file, then each WAL transaction on top of it.
	chk, err := checksumPages(pageSize, pageN, db.readDatabasePage)
	if err != nil {
		return fmt.Errorf("checksum database file: %w", err)
	}
	sums := []ltx.Checksum{chk.Sum()}
	sizes := []uint32{chk.PageN()}
	undos := make([]checksumUndo, len(txns))
	buf := make([]byte, pageSize)
	h := ltx.NewHasher()
	for i, t := range txns {
		undos[i] = checksumUndo{pageN: chk.PageN(), old: make(map[uint32]ltx.Checksum)}
		for _, f := range t.Frames {
			if f.Pgno > t.Commit {
				continue
			}
			if err := readFullAt(db.wal, buf, f.Offset+sqlite.WALFrameHeaderSize); err != nil {
				return fmt.Errorf("read wal frame at %d: %w", f.Offset, err)
			}
			undos[i].record(chk, f.Pgno)
			chk.Set(f.Pgno, checksumPage(h, f.Pgno, buf))
		}
		for pgno := t.Commit + 1; pgno <= chk.PageN(); pgno++ {
			undos[i].record(chk, pgno)
		}
		chk.Resize(t.Commit)
		sums = append(sums, chk.Sum())
		sizes = append(sizes, chk.PageN())
	}

	logPos := db.log.Pos()
	if j, ok := db.matchLog(logPos, sums, sizes, txns, scan); ok {
		// The log is at state j: rewind the checksums to it and replay
		// the WAL transactions after it as new changesets.
		for i := len(txns) - 1; i >= j; i-- {
			undos[i].apply(chk)
		}
		db.chk, db.pos = chk, logPos
		db.initWALState(scan, txns[:j])
		for _, t := range txns[j:] {
			if err := db.applyWALTxn(t); err != nil {
				return fmt.Errorf("rebuild changeset from wal: %w", err)
			}
		}
		if n := len(txns) - j; n > 0 {
			db.logger.Info("rebuilt changesets from the WAL", "count", n, "txid", db.pos.TXID)
		}
	} else {
		db.chk = chk
		db.initWALState(scan, txns)
		if err := db.reconcileLog(logPos); err != nil {
			return err
		}
	}
	db.walExists = scan.Valid || walInfo.Size() > 0
	if fi, err := db.journal.Stat(); err == nil && fi.Size() > 0 {
		db.journalExists = true
	}
	if db.pos.TXID > 0 && db.pos.PostApplyChecksum != db.chk.Sum() {
		return fmt.Errorf("recovered position %s does not match content checksum %s", db.pos, db.chk.Sum())
	}
	return db.log.Sync()
}

// matchLog finds the state index (number of WAL transactions applied) that
// the log's position describes.
func (db *DB) matchLog(logPos ltx.Pos, sums []ltx.Checksum, sizes []uint32, txns []sqlite.WALTxn, scan sqlite.WALScan) (int, bool) {
	if logPos.TXID == 0 {
		// An empty log matches an empty database.
		for j, n := range sizes {
			if n == 0 {
				return j, true
			}
		}
		return 0, false
	}
	// The last record names the WAL range it came from.
	if info, err := db.log.Info(logPos.TXID); err == nil && scan.Valid &&
		info.Header.WALSalt1 == scan.Header.Salt1 && info.Header.WALSalt2 == scan.Header.Salt2 {
		for j := 1; j < len(sums); j++ {
			if txns[j-1].End == info.Header.WALOffset+info.Header.WALSize && sums[j] == logPos.PostApplyChecksum {
				return j, true
			}
		}
	}
	for j := len(sums) - 1; j >= 0; j-- {
		if sums[j] == logPos.PostApplyChecksum {
			return j, true
		}
	}
	return 0, false
}

// reconcileLog makes the log end at the database's current content when
// no WAL transaction explains the difference. Caller has exclusive access.
func (db *DB) reconcileLog(logPos ltx.Pos) error {
	sum := db.chk.Sum()

	// The log is ahead: drop the records the database never got.
	base := db.log.Base()
	for txid, n := logPos.TXID, 0; txid > base.TXID && n < maxLogSearch; txid, n = txid-1, n+1 {
		info, err := db.log.Info(txid)
		if err != nil {
			break
		}
		if info.Header.PreApplyChecksum == sum {
			if err := db.log.TruncateAfter(txid - 1); err != nil {
				return err
			}
			db.pos = db.log.Pos()
			db.logger.Warn("dropped changesets the database does not have", "after_txid", db.pos.TXID, "dropped", logPos.TXID-db.pos.TXID)
			return nil
		}
	}

	// Otherwise one changeset with every page accounts for whatever changed.
	db.pos = logPos
	if db.chk.PageN() == 0 && logPos.TXID == 0 {
		return nil
	}
	before := db.pos
	if err := db.commit(change{
		pageSize: db.chk.pageSize,
		commit:   db.chk.PageN(),
		read:     db.readPage,
		full:     true,
		sync:     true,
	}); err != nil {
		return fmt.Errorf("write recovery changeset: %w", err)
	}
	db.logger.Warn("database content did not match the changeset log; wrote a changeset with every page",
		"txid", db.pos.TXID, "previous", before)
	return nil
}

// initWALState records the committed frames of txns as the latest versions
// of their pages.
func (db *DB) initWALState(scan sqlite.WALScan, txns []sqlite.WALTxn) {
	db.walState.reset()
	if !scan.Valid {
		return
	}
	db.walState.hdr, db.walState.valid = scan.Header, true
	db.walState.commitEnd = sqlite.WALHeaderSize
	for _, t := range txns {
		for _, f := range t.Frames {
			db.walState.pages[f.Pgno] = f.Offset
		}
		for pgno := range db.walState.pages {
			if pgno > t.Commit {
				delete(db.walState.pages, pgno)
			}
		}
		db.walState.commitEnd = t.End
	}
}

// rollbackHotJournal plays back a hot rollback journal into the database
// file, undoing a transaction that was interrupted by a crash.
func (db *DB) rollbackHotJournal() error {
	fi, err := db.journal.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	restored := 0
	rb, hot, err := sqlite.ReadHotJournal(db.journal, fi.Size(), func(pgno uint32, data []byte) error {
		restored++
		_, err := db.dbFile.WriteAt(data, int64(pgno-1)*int64(len(data)))
		return err
	})
	if err != nil {
		return fmt.Errorf("roll back hot journal: %w", err)
	}
	if !hot {
		return nil
	}
	if err := db.dbFile.Truncate(int64(rb.PageN) * int64(rb.PageSize)); err != nil {
		return fmt.Errorf("roll back hot journal: %w", err)
	}
	if err := db.dbFile.Sync(); err != nil {
		return err
	}
	if err := db.journal.Truncate(0); err != nil {
		return err
	}
	if err := db.journal.Sync(); err != nil {
		return err
	}
	db.logger.Info("rolled back an interrupted transaction from its hot journal", "pages", restored)
	return nil
}

// databaseFileSize returns the page size and size in pages of the database
// file alone, from its header.
func (db *DB) databaseFileSize() (pageSize, pageN uint32, err error) {
	fi, err := db.dbFile.Stat()
	if err != nil {
		return 0, 0, err
	}
	if fi.Size() == 0 {
		return 0, 0, nil
	}
	b := make([]byte, sqlite.HeaderSize)
	if err := readFullAt(db.dbFile, b, 0); err != nil {
		return 0, 0, err
	}
	hdr, err := sqlite.ParseDBHeader(b)
	if err != nil {
		return 0, 0, fmt.Errorf("database file: %w", err)
	}
	pageN = uint32(fi.Size() / int64(hdr.PageSize))
	if n, ok := hdr.InHeaderPageN(); ok {
		pageN = n
	}
	return hdr.PageSize, pageN, nil
}

// checksumUndo remembers what one WAL transaction changed in a
// pageChecksums so that recovery can step back over it.
type checksumUndo struct {
	pageN uint32
	old   map[uint32]ltx.Checksum
}

func (u *checksumUndo) record(c *pageChecksums, pgno uint32) {
	if _, ok := u.old[pgno]; !ok {
		u.old[pgno] = c.Get(pgno)
	}
}

func (u *checksumUndo) apply(c *pageChecksums) {
	c.Resize(max(u.pageN, c.PageN()))
	for pgno, sum := range u.old {
		if pgno <= c.PageN() {
			c.Set(pgno, sum)
		}
	}
	c.Resize(u.pageN)
}
