package ltx

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Replay rebuilds a database from the log: it applies the changesets from
// an empty database up to and including upTo (0 for all of them) to f,
// which should be empty. Each changeset is decoded and its file checksum
// verified, it must continue the previous one, and after each the checksum
// of the rebuilt content must equal the changeset's post-apply checksum.
// It returns the position reached.
func (l *Log) Replay(f *os.File, upTo TXID) (Pos, error) {
	base, end := l.Base(), l.Pos()
	if base.TXID != 0 {
		return Pos{}, fmt.Errorf("replay: the log starts after txid %s; earlier changesets were pruned", base.TXID)
	}
	if upTo == 0 || upTo > end.TXID {
		upTo = end.TXID
	}

	r := l.NewReader()
	defer r.Close()
	var (
		pos      Pos
		sums     []Checksum // per page of the rebuilt content, index pgno-1
		xor      Checksum
		pageSize uint32
	)
	for txid := TXID(1); txid <= upTo; txid++ {
		_, sr, err := r.Read(txid)
		if err != nil {
			return pos, err
		}
		dec := NewDecoder(sr)
		dec.SetRetainPageIndex(false)
		if err := dec.DecodeHeader(); err != nil {
			return pos, fmt.Errorf("changeset %s: %w", txid, err)
		}
		hdr := dec.Header()
		if hdr.MinTXID != pos.TXID+1 || (hdr.MinTXID > 1 && hdr.PreApplyChecksum != pos.PostApplyChecksum) {
			return pos, fmt.Errorf("changeset %s (pre-apply %s) does not follow position %s", txid, hdr.PreApplyChecksum, pos)
		}
		if hdr.PageSize != pageSize {
			// A page size change rewrites every page.
			sums, xor, pageSize = nil, 0, hdr.PageSize
		}
		buf := make([]byte, hdr.PageSize)
		h := NewHasher()
		for {
			var ph PageHeader
			if err := dec.DecodePage(&ph, buf); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return pos, fmt.Errorf("changeset %s: %w", txid, err)
			}
			if _, err := f.WriteAt(buf, int64(ph.Pgno-1)*int64(hdr.PageSize)); err != nil {
				return pos, fmt.Errorf("write page %d: %w", ph.Pgno, err)
			}
			for uint32(len(sums)) < ph.Pgno {
				sums = append(sums, 0)
			}
			sum := ChecksumPageWith(h, ph.Pgno, buf)
			xor ^= sums[ph.Pgno-1] ^ sum
			sums[ph.Pgno-1] = sum
		}
		if err := dec.Close(); err != nil {
			return pos, fmt.Errorf("changeset %s: %w", txid, err)
		}
		if err := f.Truncate(int64(hdr.Commit) * int64(hdr.PageSize)); err != nil {
			return pos, err
		}
		for uint32(len(sums)) > hdr.Commit {
			xor ^= sums[len(sums)-1]
			sums = sums[:len(sums)-1]
		}
		pos = Pos{TXID: hdr.MaxTXID, PostApplyChecksum: dec.Trailer().PostApplyChecksum}
		if got := ChecksumFlag | xor; got != pos.PostApplyChecksum {
			return pos, fmt.Errorf("after changeset %s the rebuilt content has checksum %s, the changeset says %s", txid, got, pos.PostApplyChecksum)
		}
	}
	return pos, f.Sync()
}
