package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/litefs-project/litefs/ltx"
)

// TestSnapshotReadsWithoutLock: a snapshot reads its pages without the
// database's lock, so commits go on while it reads, and whatever they do
// to the pages being read, the snapshot still holds the database as it
// was when it was opened.
func TestSnapshotReadsWithoutLock(t *testing.T) {
	errDisk := errors.New("injected read error")
	tests := []struct {
		name string
		// during runs while the second batch of pages (65-128) is being
		// read, before the read; it returns the error the read gets.
		during func(t *testing.T, src *replica, m *testDB) (*testDB, error)
		// wantErr, if set, is what the snapshot must fail with instead.
		wantErr string
	}{
		{name: "pages overwritten", during: func(t *testing.T, src *replica, m *testDB) (*testDB, error) {
			next, b := m.change(t, 150, 1, 64, 65, 66, 100, 128, 129, 150)
			src.apply(next, b)
			return next, nil
		}},
		{name: "database shrunk", during: func(t *testing.T, src *replica, m *testDB) (*testDB, error) {
			next, b := m.change(t, 70, 1, 66)
			src.apply(next, b)
			return next, nil
		}},
		{name: "database grown", during: func(t *testing.T, src *replica, m *testDB) (*testDB, error) {
			next, b := m.change(t, 300, 2, 70)
			src.apply(next, b)
			return next, nil
		}},
		{name: "database replaced", during: func(t *testing.T, src *replica, m *testDB) (*testDB, error) {
			q, _ := newTestDB(4096, 21).change(t, 40)
			if _, err := src.st.ApplySnapshot(context.Background(), src.name, bytes.NewReader(q.snapshot(t))); err != nil {
				t.Fatal(err)
			}
			src.check(q)
			// The read then goes to a closed file; the pages it wanted were
			// saved before the file was replaced.
			return q, errDisk
		}},
		{name: "read error", during: func(t *testing.T, src *replica, m *testDB) (*testDB, error) {
			return m, errDisk
		}, wantErr: "read page 65 for a snapshot: injected read error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newReplica(t, "snap.db")
			m := newTestDB(4096, 20)
			for _, s := range []step{{150, nil}, {150, []uint32{3, 70, 140}}} {
				next, b := m.change(t, s.commit, s.pgnos...)
				src.apply(next, b)
				m = next
			}
			at := m
			db := src.st.DB(src.name)
			snap, err := db.OpenSnapshot()
			if err != nil {
				t.Fatal(err)
			}
			defer snap.Close()

			ran := false
			read := viewReadAt
			viewReadAt = func(f io.ReaderAt, buf []byte, off int64) error {
				if ran || off < 64*4096 {
					return read(f, buf, off)
				}
				ran = true
				if !db.mu.TryLock() {
					t.Error("the snapshot holds the database's lock while it reads pages")
					return errors.New("read under the database's lock")
				}
				db.mu.Unlock()
				var injected error
				m, injected = tt.during(t, src, m)
				if err := read(f, buf, off); err != nil || injected != nil {
					return errors.Join(err, injected)
				}
				return nil
			}
			defer func() { viewReadAt = read }()

			var buf bytes.Buffer
			_, err = snap.WriteTo(&buf)
			if !ran {
				t.Fatal("the second batch was never read")
			}
			if t.Failed() {
				return
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WriteTo: %v, want an error containing %q", err, tt.wantErr)
				}
				src.check(m) // the failed read changed nothing
				return
			}
			if err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			src.check(m)
			dst := newReplica(t, "snap.db")
			pos, err := dst.st.ApplySnapshot(context.Background(), dst.name, bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatalf("the snapshot does not install: %v", err)
			}
			if pos != at.pos {
				t.Fatalf("the snapshot installed at %s, want %s", pos, at.pos)
			}
			dst.check(at)
			if _, _, err := ltx.Verify(bytes.NewReader(buf.Bytes())); err != nil {
				t.Fatalf("the snapshot does not verify: %v", err)
			}
		})
	}
}
