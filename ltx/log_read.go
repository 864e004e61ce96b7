package ltx

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sort"
)

// RecordInfo describes one record of the log.
type RecordInfo struct {
	Header  Header
	Trailer Trailer
	Size    int64 // size of the encoded LTX file
}

// Pos returns the position after the record.
func (r RecordInfo) Pos() Pos {
	return Pos{TXID: r.Header.MaxTXID, PostApplyChecksum: r.Trailer.PostApplyChecksum}
}

// locate finds the segment and frame offset of txid. Caller holds l.mu.
func (l *Log) locate(txid TXID) (*segment, int64, error) {
	if txid < l.firstTXID() || txid > l.pos.TXID || len(l.segs) == 0 {
		return nil, 0, fmt.Errorf("%w: %s (log holds %s..%s)", ErrTXIDNotFound, txid, l.firstTXID(), l.pos.TXID)
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].last() >= txid })
	if i == len(l.segs) {
		return nil, 0, fmt.Errorf("%w: %s", ErrTXIDNotFound, txid)
	}
	seg := l.segs[i]
	k := int64(txid - seg.first)
	if i == len(l.segs)-1 && l.active != nil {
		return seg, l.activeIdx[k], nil
	}
	f, err := os.Open(idxPath(seg.path))
	if err != nil {
		return nil, 0, fmt.Errorf("open index: %w", err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 8*k); err != nil {
		return nil, 0, fmt.Errorf("read index of %s: %w", seg.path, err)
	}
	return seg, int64(binary.BigEndian.Uint64(b[:])), nil
}

// readRecordInfo reads the frame header, LTX header and trailer at off.
func readRecordInfo(r io.ReaderAt, off int64) (RecordInfo, error) {
	var info RecordInfo
	var fh [frameHeaderLen]byte
	if _, err := r.ReadAt(fh[:], off); err != nil {
		return info, fmt.Errorf("read frame header: %w", err)
	}
	info.Size = int64(binary.BigEndian.Uint32(fh[:]))
	b := make([]byte, HeaderSize)
	if _, err := r.ReadAt(b, off+frameHeaderLen); err != nil {
		return info, fmt.Errorf("read ltx header: %w", err)
	}
	if err := info.Header.UnmarshalBinary(b); err != nil {
		return info, fmt.Errorf("decode ltx header: %w", err)
	}
	t := make([]byte, TrailerSize)
	if _, err := r.ReadAt(t, off+frameHeaderLen+info.Size-TrailerSize); err != nil {
		return info, fmt.Errorf("read ltx trailer: %w", err)
	}
	if err := info.Trailer.UnmarshalBinary(t); err != nil {
		return info, fmt.Errorf("decode ltx trailer: %w", err)
	}
	return info, nil
}

func (l *Log) readHeaderAt(f *os.File, off int64) (Header, error) {
	info, err := readRecordInfo(f, off)
	return info.Header, err
}

// recordInfo returns the description of txid's record. Caller holds l.mu.
func (l *Log) recordInfo(txid TXID) (RecordInfo, error) {
	seg, off, err := l.locate(txid)
	if err != nil {
		return RecordInfo{}, err
	}
	if seg == l.segs[len(l.segs)-1] && l.active != nil {
		return readRecordInfo(l.active, off)
	}
	f, err := os.Open(seg.path)
	if err != nil {
		return RecordInfo{}, err
	}
	defer f.Close()
	return readRecordInfo(f, off)
}

// Info returns the description of the record holding txid.
func (l *Log) Info(txid TXID) (RecordInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recordInfo(txid)
}

// Reader reads records from a log, keeping the current segment open
// between calls. A Reader is not safe for concurrent use.
type Reader struct {
	log  *Log
	path string
	gen  uint64 // the log's gen when f was opened
	f    *os.File
}

// NewReader returns a reader over l. Close it when done.
func (l *Log) NewReader() *Reader { return &Reader{log: l} }

// Read returns the description and encoded bytes of txid's record. The
// returned reader is valid until the next call to Read or Close.
func (r *Reader) Read(txid TXID) (RecordInfo, *io.SectionReader, error) {
	r.log.mu.Lock()
	seg, off, err := r.log.locate(txid)
	var path string
	if seg != nil {
		path = seg.path
	}
	gen := r.log.gen
	r.log.mu.Unlock()
	if err != nil {
		return RecordInfo{}, nil, err
	}

	// The same name may be another file since a truncation or reset.
	if r.path != path || r.gen != gen {
		if r.f != nil {
			r.f.Close()
			r.f = nil
		}
		// The segment may be pruned between locate and open; report the
		// record as gone rather than failing obscurely.
		f, err := os.Open(path)
		if os.IsNotExist(err) {
			return RecordInfo{}, nil, fmt.Errorf("%w: %s pruned", ErrTXIDNotFound, txid)
		} else if err != nil {
			return RecordInfo{}, nil, err
		}
		r.f, r.path, r.gen = f, path, gen
	}
	info, err := readRecordInfo(r.f, off)
	if err != nil {
		return info, nil, fmt.Errorf("read changeset %s: %w", txid, err)
	}
	return info, io.NewSectionReader(r.f, off+frameHeaderLen, info.Size), nil
}

// Close releases the reader's open segment.
func (r *Reader) Close() error {
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f, r.path = nil, ""
	return err
}
