package ltx

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// On disk, a log is a directory of segment files named by the TXID of their
// first record ("%016x.ltxs"). A segment is a sequence of records, each an
// 8-byte frame header (big-endian length, CRC-32C of the body) followed by
// one complete LTX file holding exactly one transaction, so record i of a
// segment has TXID first+i. When a segment is sealed, an index file
// ("%016x.idx": the record offsets, 8 bytes each) is written beside it and
// both are fsynced. Only the last (active) segment can have a torn tail,
// which OpenLog cuts off.
//
// A "base" file holds the position the log starts from when it has no
// records yet (a replica that installed a snapshot).
const (
	segmentExt     = ".ltxs"
	indexExt       = ".idx"
	baseFile       = "base"
	frameHeaderLen = 8

	// DefaultSegmentSize is the size at which the active segment is sealed.
	DefaultSegmentSize = 16 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by the log.
var (
	ErrTXIDNotFound  = errors.New("txid not in log")
	ErrNotContiguous = errors.New("changeset not contiguous with log position")
)

// Options tunes a Log.
type Options struct {
	SegmentSize   int64         // seal the active segment beyond this size
	SegmentMaxAge time.Duration // seal the active segment once its first record is this old (0: never)

	// ReadOnly opens a log that another process may be appending to, for
	// inspection: nothing is repaired or written, and Append fails.
	ReadOnly bool
}

// Log is the changeset log of one database. It is safe for concurrent use:
// one appender and any number of readers.
type Log struct {
	dir  string
	opts Options

	mu        sync.Mutex
	segs      []*segment // ascending by first TXID; the last one is active
	active    *os.File   // the last segment, open for writing
	activeIdx []int64    // record offsets in the active segment
	activeEnd int64      // end of the last complete record in the active segment
	firstTime time.Time  // time of the active segment's first record
	base      Pos        // position before the first record
	pos       Pos        // position after the last record
	lastTime  time.Time  // timestamp of the last record
	dirty     bool       // records appended since the last Sync
	bw        *bufio.Writer
	closed    bool
	encs      encoderCache
	// gen counts truncations and resets: a segment file name may then be
	// used again for other records, so readers reopen their files.
	gen uint64

	appended      atomic.Int64 // records appended since the log was opened
	appendedBytes atomic.Int64 // their encoded size
}

// Appended returns how many records, and how many bytes of LTX, were
// appended since the log was opened.
func (l *Log) Appended() (records, bytes int64) {
	return l.appended.Load(), l.appendedBytes.Load()
}

// encoderCache hands out LTX encoders without allocating one per commit.
// An ltx.Encoder embeds a 136 KiB LZ4 hash table; allocating and clearing
// one per transaction costs more than encoding a small changeset and keeps
// the garbage collector busy. The encoder has no Reset, so a pristine
// encoder, made once, is copied over the one in use: all its state is in
// plain fields, and the LZ4 table needs no clearing (its in-use bitmap,
// copied as zeros, says which entries are valid).
type encoderCache struct {
	target   switchWriter
	pristine *Encoder
	work     *Encoder
}

// switchWriter forwards writes to a writer that can be changed.
type switchWriter struct{ w io.Writer }

func (s *switchWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

// get returns a fresh encoder writing to w. The previous one must be done.
func (c *encoderCache) get(w io.Writer) (*Encoder, error) {
	if c.pristine == nil {
		enc, err := NewEncoder(&c.target)
		if err != nil {
			return nil, err
		}
		c.pristine, c.work = enc, new(Encoder)
	}
	c.target.w = w
	*c.work = *c.pristine
	return c.work, nil
}

type segment struct {
	first TXID
	n     int // number of records
	path  string
}

func (s *segment) last() TXID { return s.first + TXID(s.n) - 1 }

// OpenLog opens (creating if needed) the log in dir, repairing a torn tail.
func OpenLog(dir string, opts Options) (*Log, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create log dir: %w", err)
		}
	}
	l := &Log{dir: dir, opts: opts}
	if err := l.load(); err != nil {
		return nil, fmt.Errorf("open log %s: %w", dir, err)
	}
	return l, nil
}

func (l *Log) load() error {
	if b, err := os.ReadFile(filepath.Join(l.dir, baseFile)); err == nil {
		p, err := ParsePos(strings.TrimSpace(string(b)))
		if err != nil {
			return fmt.Errorf("parse base position: %w", err)
		}
		l.base = p
	} else if !os.IsNotExist(err) {
		return err
	}

	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		name := ent.Name()
		if !strings.HasSuffix(name, segmentExt) {
			continue
		}
		first, err := parseTXID(strings.TrimSuffix(name, segmentExt))
		if err != nil {
			continue
		}
		l.segs = append(l.segs, &segment{first: first, path: filepath.Join(l.dir, name)})
	}
	sort.Slice(l.segs, func(i, j int) bool { return l.segs[i].first < l.segs[j].first })

	// Sealed segments: trust their index, rebuilding it if it is missing.
	for i := 0; i < len(l.segs)-1; i++ {
		seg := l.segs[i]
		n, err := readIndexCount(idxPath(seg.path))
		if err != nil {
			offs, _, err := scanSegment(seg.path, seg.first)
			if err != nil {
				return err
			}
			if !l.opts.ReadOnly {
				if err := writeIndex(idxPath(seg.path), offs); err != nil {
					return err
				}
			}
			n = len(offs)
		}
		seg.n = n
		// A gap between segments can only come from outside damage; keep
		// the contiguous prefix.
		if next := l.segs[i+1]; next.first != seg.first+TXID(seg.n) || seg.n == 0 {
			for _, s := range l.segs[i+1:] {
				if !l.opts.ReadOnly {
					_ = os.Remove(s.path)
					_ = os.Remove(idxPath(s.path))
				}
			}
			l.segs = l.segs[:i+1]
			break
		}
	}

	if len(l.segs) == 0 {
		l.pos = l.base
		return nil
	}
	return l.openActive()
}

// openActive scans the last segment, truncates a torn tail and opens it for
// appending. Caller holds l.mu or has exclusive access.
func (l *Log) openActive() error {
	seg := l.segs[len(l.segs)-1]
	offs, end, err := scanSegment(seg.path, seg.first)
	if err != nil {
		return err
	}
	if l.opts.ReadOnly {
		f, err := os.Open(seg.path)
		if err != nil {
			return err
		}
		// Keep the records complete at open time; the file stays open
		// read-only so that locate can read them.
		l.active, l.activeIdx, l.activeEnd = f, offs, end
		seg.n = len(offs)
		return l.loadPos()
	}
	f, err := os.OpenFile(seg.path, os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err != nil {
		f.Close()
		return err
	} else if fi.Size() != end {
		if err := f.Truncate(end); err != nil {
			f.Close()
			return fmt.Errorf("truncate torn tail of %s: %w", seg.path, err)
		}
	}
	_ = os.Remove(idxPath(seg.path)) // the active segment has no index file
	l.active, l.activeIdx, l.activeEnd = f, offs, end
	seg.n = len(offs)
	l.bw = bufio.NewWriterSize(io.NewOffsetWriter(f, 0), 64<<10)

	if len(offs) > 0 {
		hdr, err := l.readHeaderAt(f, offs[0])
		if err != nil {
			return err
		}
		l.firstTime = time.UnixMilli(hdr.Timestamp)
	}
	return l.loadPos()
}

// loadPos sets base and pos from the records. Caller holds l.mu.
func (l *Log) loadPos() error {
	var total int
	for _, s := range l.segs {
		total += s.n
	}
	if total == 0 {
		l.pos = l.base
		return nil
	}
	// Segments are contiguous, so the last TXID follows from the count.
	l.pos.TXID = l.segs[0].first + TXID(total) - 1
	first, err := l.recordInfo(l.firstTXID())
	if err != nil {
		return err
	}
	last, err := l.recordInfo(l.lastTXID())
	if err != nil {
		return err
	}
	l.base = first.Header.PreApplyPos()
	l.pos = Pos{TXID: last.Header.MaxTXID, PostApplyChecksum: last.Trailer.PostApplyChecksum}
	l.lastTime = time.UnixMilli(last.Header.Timestamp)
	return nil
}

// scanSegment reads the records of a segment, verifying each frame's CRC,
// header, TXID and chaining, and returns their offsets and the end of the
// last good record.
func scanSegment(path string, first TXID) (offs []int64, end int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := fi.Size()
	br := bufio.NewReaderSize(f, 256<<10)
	var fh [frameHeaderLen]byte
	var body []byte
	var prevPost Checksum
	for off := int64(0); ; {
		if _, err := io.ReadFull(br, fh[:]); err != nil {
			return offs, off, nil
		}
		n := int64(binary.BigEndian.Uint32(fh[0:]))
		if n < HeaderSize+TrailerSize || off+frameHeaderLen+n > size {
			return offs, off, nil
		}
		if int64(cap(body)) < n {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(br, body); err != nil {
			return offs, off, nil
		}
		if crc32.Checksum(body, crcTable) != binary.BigEndian.Uint32(fh[4:]) {
			return offs, off, nil
		}
		// A record holds one valid transaction, the next TXID, starting
		// from the checksum the record before it ended at.
		var hdr Header
		if err := hdr.UnmarshalBinary(body); err != nil || hdr.Validate() != nil ||
			hdr.MinTXID != hdr.MaxTXID || hdr.MaxTXID != first+TXID(len(offs)) {
			return offs, off, nil
		}
		if len(offs) > 0 && hdr.PreApplyChecksum != prevPost {
			return offs, off, nil
		}
		prevPost = Checksum(binary.BigEndian.Uint64(body[n-TrailerSize:]))
		offs = append(offs, off)
		off += frameHeaderLen + n
	}
}

// Dir returns the directory holding the log.
func (l *Log) Dir() string { return l.dir }

// Pos returns the position after the last record.
func (l *Log) Pos() Pos {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pos
}

// Base returns the position before the first record still in the log.
func (l *Log) Base() Pos {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.base
}

// LastTime returns the timestamp of the newest record.
func (l *Log) LastTime() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastTime
}

func (l *Log) firstTXID() TXID {
	if len(l.segs) == 0 {
		return l.base.TXID + 1
	}
	return l.segs[0].first
}

func (l *Log) lastTXID() TXID { return l.pos.TXID }

// Append encodes one transaction as an LTX record: hdr must continue the
// log (MinTXID == MaxTXID == Pos().TXID+1 and the pre-apply checksum equal
// to the current post-apply checksum); pages writes the changed pages in
// ascending order. The record is not fsynced; see Sync.
func (l *Log) Append(hdr Header, post Checksum, pages func(*Encoder) error) (Pos, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.checkNext(hdr); err != nil {
		return l.pos, err
	}
	return l.write(hdr, func(w io.Writer) (Trailer, error) {
		enc, err := l.encs.get(w)
		if err != nil {
			return Trailer{}, err
		}
		if err := enc.EncodeHeader(hdr); err != nil {
			return Trailer{}, fmt.Errorf("encode header: %w", err)
		}
		if err := pages(enc); err != nil {
			return Trailer{}, err
		}
		enc.SetPostApplyChecksum(post)
		if err := enc.Close(); err != nil {
			return Trailer{}, fmt.Errorf("close encoder: %w", err)
		}
		return enc.Trailer(), nil
	})
}

// AppendEncoded appends an already encoded and verified LTX file (a record
// received from another node), keeping its bytes as they are.
func (l *Log) AppendEncoded(hdr Header, trailer Trailer, r io.Reader) (Pos, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.checkNext(hdr); err != nil {
		return l.pos, err
	}
	return l.write(hdr, func(w io.Writer) (Trailer, error) {
		if _, err := io.Copy(w, r); err != nil {
			return Trailer{}, err
		}
		return trailer, nil
	})
}

func (l *Log) checkNext(hdr Header) error {
	if l.closed {
		return errors.New("log closed")
	}
	if l.opts.ReadOnly {
		return errors.New("log opened read-only")
	}
	if hdr.MinTXID != hdr.MaxTXID || hdr.MinTXID != l.pos.TXID+1 {
		return fmt.Errorf("%w: changeset %s-%s after position %s", ErrNotContiguous, hdr.MinTXID, hdr.MaxTXID, l.pos)
	}
	if !hdr.IsSnapshot() && hdr.PreApplyChecksum != l.pos.PostApplyChecksum {
		return fmt.Errorf("%w: pre-apply checksum %s, log is at %s", ErrNotContiguous, hdr.PreApplyChecksum, l.pos)
	}
	return nil
}

// write appends one record produced by body. Caller holds l.mu.
func (l *Log) write(hdr Header, body func(io.Writer) (Trailer, error)) (Pos, error) {
	if err := l.maybeRoll(hdr); err != nil {
		return l.pos, err
	}
	off := l.activeEnd
	cw := &crcWriter{w: l.bw}
	l.bw.Reset(io.NewOffsetWriter(l.active, off+frameHeaderLen))
	trailer, err := body(cw)
	if err == nil {
		err = l.bw.Flush()
	}
	if err == nil && cw.n > 1<<32-1 {
		err = fmt.Errorf("changeset of %d bytes is too large", cw.n)
	}
	if err == nil {
		var fh [frameHeaderLen]byte
		binary.BigEndian.PutUint32(fh[0:], uint32(cw.n))
		binary.BigEndian.PutUint32(fh[4:], cw.crc)
		_, err = l.active.WriteAt(fh[:], off)
	}
	if err != nil {
		// Leave the active segment ending at the last complete record.
		_ = l.active.Truncate(off)
		return l.pos, fmt.Errorf("append changeset %s: %w", hdr.MaxTXID, err)
	}

	if len(l.activeIdx) == 0 {
		l.firstTime = time.UnixMilli(hdr.Timestamp)
	}
	l.activeIdx = append(l.activeIdx, off)
	l.activeEnd = off + frameHeaderLen + cw.n
	l.segs[len(l.segs)-1].n++
	l.pos = Pos{TXID: hdr.MaxTXID, PostApplyChecksum: trailer.PostApplyChecksum}
	l.lastTime = time.UnixMilli(hdr.Timestamp)
	l.appended.Add(1)
	l.appendedBytes.Add(cw.n)
	l.dirty = true
	return l.pos, nil
}

// maybeRoll seals the active segment when it is full or old, and creates a
// new one when there is none. Caller holds l.mu.
func (l *Log) maybeRoll(hdr Header) error {
	if l.active != nil {
		full := l.activeEnd >= l.opts.SegmentSize
		old := l.opts.SegmentMaxAge > 0 && len(l.activeIdx) > 0 &&
			time.UnixMilli(hdr.Timestamp).Sub(l.firstTime) >= l.opts.SegmentMaxAge
		if !full && !old {
			return nil
		}
		if err := l.seal(); err != nil {
			return err
		}
	}
	path := filepath.Join(l.dir, fmt.Sprintf("%016x%s", uint64(hdr.MinTXID), segmentExt))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create segment: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	l.segs = append(l.segs, &segment{first: hdr.MinTXID, path: path})
	l.active, l.activeIdx, l.activeEnd = f, nil, 0
	if l.bw == nil {
		l.bw = bufio.NewWriterSize(io.NewOffsetWriter(f, 0), 64<<10)
	}
	return nil
}

// seal makes the active segment immutable: fsync it, write its index.
// Caller holds l.mu.
func (l *Log) seal() error {
	seg := l.segs[len(l.segs)-1]
	if err := l.active.Sync(); err != nil {
		return fmt.Errorf("sync segment: %w", err)
	}
	if err := writeIndex(idxPath(seg.path), l.activeIdx); err != nil {
		return err
	}
	if err := l.active.Close(); err != nil {
		return err
	}
	l.active, l.activeIdx, l.activeEnd = nil, nil, 0
	return nil
}

// Sync makes every appended record durable.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.dirty || l.active == nil || l.opts.ReadOnly {
		return nil
	}
	if err := l.active.Sync(); err != nil {
		return fmt.Errorf("sync log: %w", err)
	}
	l.dirty = false
	return nil
}

// Close syncs and closes the log.
func (l *Log) Close() error {
	if err := l.Sync(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.active != nil {
		err := l.active.Close()
		l.active = nil
		return err
	}
	return nil
}

// TruncateAfter removes every record after txid, which must be in the log
// or be its base. Used by recovery when the log got ahead of the database.
func (l *Log) TruncateAfter(txid TXID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opts.ReadOnly {
		return errors.New("truncate log: opened read-only")
	}
	if txid >= l.pos.TXID {
		return nil
	}
	if txid < l.base.TXID {
		return fmt.Errorf("truncate log after %s: before base %s: %w", txid, l.base.TXID, ErrTXIDNotFound)
	}
	l.gen++
	if l.active != nil {
		if err := l.seal(); err != nil {
			return err
		}
	}
	// Drop whole segments past txid, then cut the one holding txid+1.
	for len(l.segs) > 0 {
		seg := l.segs[len(l.segs)-1]
		if seg.first <= txid {
			break
		}
		if err := removeSegment(seg); err != nil {
			return err
		}
		l.segs = l.segs[:len(l.segs)-1]
	}
	if len(l.segs) > 0 {
		seg := l.segs[len(l.segs)-1]
		if keep := int(txid - seg.first + 1); keep < seg.n {
			offs, err := readIndex(idxPath(seg.path))
			if err != nil {
				return err
			}
			if err := os.Truncate(seg.path, offs[keep]); err != nil {
				return err
			}
		}
	}
	if len(l.segs) == 0 {
		if err := l.writeBase(l.base); err != nil {
			return err
		}
		l.pos = l.base
		return nil
	}
	if err := l.openActive(); err != nil {
		return err
	}
	return l.active.Sync()
}

// Reset discards every record and starts the log over at base. A replica
// does this when it installs a snapshot.
func (l *Log) Reset(base Pos) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opts.ReadOnly {
		return errors.New("reset log: opened read-only")
	}
	l.gen++
	if l.active != nil {
		_ = l.active.Close()
		l.active = nil
	}
	for _, seg := range l.segs {
		if err := removeSegment(seg); err != nil {
			return err
		}
	}
	l.segs, l.activeIdx, l.activeEnd = nil, nil, 0
	if err := l.writeBase(base); err != nil {
		return err
	}
	l.base, l.pos, l.lastTime, l.dirty = base, base, time.Time{}, false
	return nil
}

// Prune removes sealed segments whose newest record is older than before.
// The active segment, which holds the newest record, is never removed.
// It returns the number of records removed.
func (l *Log) Prune(before time.Time) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opts.ReadOnly {
		return 0, errors.New("prune log: opened read-only")
	}
	removed := 0
	for len(l.segs) > 1 {
		seg := l.segs[0]
		fi, err := os.Stat(seg.path)
		if err != nil {
			return removed, err
		}
		if !fi.ModTime().Before(before) {
			break
		}
		if err := removeSegment(seg); err != nil {
			return removed, err
		}
		removed += seg.n
		l.segs = l.segs[1:]
	}
	if removed > 0 {
		info, err := l.recordInfo(l.segs[0].first)
		if err != nil {
			return removed, err
		}
		l.base = info.Header.PreApplyPos()
	}
	return removed, nil
}

func (l *Log) writeBase(p Pos) error {
	tmp := filepath.Join(l.dir, baseFile+".tmp")
	if err := os.WriteFile(tmp, []byte(FormatPos(p)), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(l.dir, baseFile)); err != nil {
		return err
	}
	return syncDir(l.dir)
}

func removeSegment(seg *segment) error {
	if err := os.Remove(idxPath(seg.path)); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Remove(seg.path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

type crcWriter struct {
	w   io.Writer
	crc uint32
	n   int64
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, crcTable, p[:n])
	c.n += int64(n)
	return n, err
}

func idxPath(segPath string) string { return strings.TrimSuffix(segPath, segmentExt) + indexExt }

func writeIndex(path string, offs []int64) error {
	b := make([]byte, 8*len(offs))
	for i, o := range offs {
		binary.BigEndian.PutUint64(b[8*i:], uint64(o))
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write index: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync index: %w", err)
	}
	return f.Close()
}

func readIndexCount(path string) (int, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if fi.Size()%8 != 0 {
		return 0, fmt.Errorf("index %s: size %d not a multiple of 8", path, fi.Size())
	}
	return int(fi.Size() / 8), nil
}

func readIndex(path string) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	offs := make([]int64, len(b)/8)
	for i := range offs {
		offs[i] = int64(binary.BigEndian.Uint64(b[8*i:]))
	}
	return offs, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

func parseTXID(s string) (TXID, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("invalid txid %q", s)
	}
	var v uint64
	if _, err := fmt.Sscanf(s, "%016x", &v); err != nil {
		return 0, fmt.Errorf("invalid txid %q", s)
	}
	return TXID(v), nil
}
