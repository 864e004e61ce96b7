package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/ltx"
)

// importFile writes a database of pageN random pages (a valid header on
// page 1) into dir and returns its model and path.
func importFile(t *testing.T, dir string, pageN uint32, seed int64) (*testDB, string) {
	t.Helper()
	m, _ := newTestDB(4096, seed).change(t, pageN)
	f, err := os.CreateTemp(dir, "upload-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(m.file()); err != nil {
		t.Fatal(err)
	}
	return m, f.Name()
}

// dbState is what a user of a database can observe of it.
type dbState struct {
	pos, logPos ltx.Pos
	file        []byte
}

func stateOf(t *testing.T, f *termFixture, name string) dbState {
	t.Helper()
	db := f.r.st.DB(name)
	if db == nil {
		return dbState{}
	}
	b, err := os.ReadFile(filepath.Join(f.r.st.Dir(), "dbs", name, databaseFile))
	if err != nil {
		t.Fatal(err)
	}
	return dbState{db.Pos(), db.Log().Pos(), b}
}

// strays lists the import's temporary files left in the store's directory.
func strays(t *testing.T, st *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(st.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".import") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestImportFile: an import replaces a database, or creates one, with the
// file's content as one transaction whose changeset is in the log, whether
// it takes the file or copies it; the store reopens at the same position.
func TestImportFile(t *testing.T) {
	for _, tc := range []struct {
		name string // database
		take bool
	}{
		{"db", false},
		{"db", true},
		{"new.db", false},
		{"new.db", true},
	} {
		t.Run(tc.name+map[bool]string{false: " copied", true: " taken"}[tc.take], func(t *testing.T) {
			f := newTermFixture(t)
			before := stateOf(t, f, tc.name)
			m, path := importFile(t, f.r.st.Dir(), 300, 5)
			validated := ""
			pos, err := f.term.ImportFile(t.Context(), f.epoch, tc.name, path, ImportOptions{
				Validate: func(p string) error { validated = p; return nil },
				Take:     tc.take,
			})
			if err != nil {
				t.Fatal(err)
			}
			if validated == "" {
				t.Fatal("Validate was not called")
			}
			want := ltx.Pos{TXID: before.pos.TXID + 1, PostApplyChecksum: m.checksum()}
			if pos != want {
				t.Fatalf("import at %s, want %s", pos, want)
			}
			m.pos = want
			f.r.name = tc.name
			f.r.check(m)

			// The log's record, replayed onto nothing, is the file.
			rd := f.r.st.DB(tc.name).Log().NewReader()
			_, sr, err := rd.Read(pos.TXID)
			if err != nil {
				t.Fatal(err)
			}
			out, err := os.Create(filepath.Join(t.TempDir(), "replayed"))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := ltx.ApplyTo(out, sr); err != nil {
				t.Fatal(err)
			}
			rd.Close()
			if got, _ := os.ReadFile(out.Name()); !bytes.Equal(got, m.file()) {
				t.Fatal("the logged changeset does not hold the imported file")
			}
			out.Close()

			_, err = os.Stat(path)
			if tc.take && !os.IsNotExist(err) {
				t.Fatalf("the taken file is still at %s: %v", path, err)
			} else if !tc.take && err != nil {
				t.Fatalf("the copied file is gone: %v", err)
			}
			if s := strays(t, f.r.st); len(s) > 0 {
				t.Fatalf("temporary files left: %v", s)
			}

			f.term.End(context.Background())
			f.r.st.Close()
			st := openReplica(t, f.r.st.Dir())
			if got := st.DB(tc.name).Pos(); got != pos {
				t.Fatalf("reopened at %s, want %s", got, pos)
			}
		})
	}
}

// TestImportRefusedChangesNothing: a file its validation refuses, and one
// that cannot be put in place after its changeset was logged, leave every
// database, log and file as they were, create no database, and leave the
// file where it was; a valid import afterwards works.
func TestImportRefusedChangesNothing(t *testing.T) {
	shm := "/dev/shm" // another filesystem: the file cannot be renamed into place
	if _, err := os.Stat(shm); err != nil {
		t.Skip("no /dev/shm")
	}
	corrupt := errors.New("integrity_check failed: page 7 is never used")
	for _, tc := range []struct {
		desc     string
		name     string
		dir      string // where the file is; "" for the store's directory
		validate func(string) error
		want     string
	}{
		{"refused", "db", "", func(string) error { return corrupt }, "page 7 is never used"},
		{"refused, new database", "new.db", "", func(string) error { return corrupt }, "page 7 is never used"},
		{"not renamed", "db", shm, nil, "rename"},
		{"not renamed, new database", "new.db", shm, nil, "rename"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			f := newTermFixture(t)
			before := stateOf(t, f, "db")
			dir := tc.dir
			if dir == "" {
				dir = f.r.st.Dir()
			}
			m, path := importFile(t, dir, 64, 9)
			t.Cleanup(func() { os.Remove(path) })
			_, err := f.term.ImportFile(t.Context(), f.epoch, tc.name, path, ImportOptions{Validate: tc.validate, Take: true})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("import: %v, want an error mentioning %q", err, tc.want)
			}
			var refused *ImportRefusedError
			if isRefusal := errors.As(err, &refused); isRefusal != (tc.validate != nil) {
				t.Fatalf("error %v: reported as a refusal of the file: %v", err, isRefusal)
			}
			if got := stateOf(t, f, "db"); got.pos != before.pos || got.logPos != before.logPos || !bytes.Equal(got.file, before.file) {
				t.Fatalf("a failed import changed the database: at %s (log %s), was %s", got.pos, got.logPos, before.pos)
			}
			if tc.name == "new.db" && tc.validate != nil {
				if f.r.st.DB(tc.name) != nil {
					t.Fatal("a refused import created the database")
				}
				if _, err := os.Stat(filepath.Join(f.r.st.Dir(), "dbs", tc.name)); !os.IsNotExist(err) {
					t.Fatalf("a refused import left a directory for the database: %v", err)
				}
			}
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, m.file()) {
				t.Fatalf("the file is not where it was, as it was: %v", err)
			}
			if s := strays(t, f.r.st); len(s) > 0 {
				t.Fatalf("temporary files left: %v", s)
			}

			// The log still takes the next transaction.
			m2, path2 := importFile(t, f.r.st.Dir(), 32, 10)
			pos, err := f.term.ImportFile(t.Context(), f.epoch, "db", path2, ImportOptions{Take: true})
			if err != nil {
				t.Fatal(err)
			}
			m2.pos = pos
			f.r.check(m2)
		})
	}
}

// TestImportRefusedWithoutWaiting: a file the validation refuses is
// refused while a writer is in a transaction: nothing waits for the
// database before the file has passed.
func TestImportRefusedWithoutWaiting(t *testing.T) {
	f := newTermFixture(t)
	db := f.db()
	writer := rangelock.Lock{Owner: writerOwner, Start: sqlite.ReservedByte, End: sqlite.ReservedByte, Type: rangelock.Write}
	if !db.dbLocks.TryLock(writer) {
		t.Fatal("the writer could not lock")
	}
	defer db.dbLocks.TryLock(rangelock.Lock{Owner: writerOwner, Start: writer.Start, End: writer.End, Type: rangelock.Unlock})
	_, path := importFile(t, f.r.st.Dir(), 16, 3)
	// Only a bound on a failure of this test: an import that waited for
	// the writer would be cut off here rather than refused.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := f.term.ImportFile(ctx, f.epoch, "db", path, ImportOptions{
		Validate: func(string) error { return io.ErrUnexpectedEOF },
		Take:     true,
	})
	var refused *ImportRefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("import: %v, want a refusal", err)
	}
}

// TestImportDuringExport: an export that began before an import still
// sends the database as it was when it began, whole.
func TestImportDuringExport(t *testing.T) {
	f := newTermFixture(t)
	before := stateOf(t, f, "db")
	snap, err := f.db().OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	m, path := importFile(t, f.r.st.Dir(), 50, 11)
	pos, err := f.term.ImportFile(t.Context(), f.epoch, "db", path, ImportOptions{Take: true})
	if err != nil {
		t.Fatal(err)
	}
	m.pos = pos
	f.r.check(m)
	var out bytes.Buffer
	if _, err := snap.WriteDatabase(&out); err != nil {
		t.Fatal(err)
	}
	if snap.Pos() != before.pos || !bytes.Equal(out.Bytes(), before.file) {
		t.Fatalf("the export begun at %s sent %d bytes at %s, not the %d bytes it began with", before.pos, out.Len(), snap.Pos(), len(before.file))
	}
}
