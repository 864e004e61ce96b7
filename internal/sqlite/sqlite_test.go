package sqlite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// sqlite3CLI returns the path of the sqlite3 command-line shell, skipping
// the test when it is not installed.
func sqlite3CLI(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Skip("sqlite3 CLI not found on PATH")
	}
	return p
}

// runSQL runs script with the sqlite3 CLI on db, in dir, and returns its
// standard output. Dot-commands such as .shell are allowed in script, and
// run with dir as working directory.
func runSQL(t *testing.T, dir, db, script string) string {
	t.Helper()
	cmd := exec.Command(sqlite3CLI(t), "-bail", "-batch", db)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(script)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sqlite3 %s: %v\nstderr: %s\nscript:\n%s", db, err, stderr.String(), script)
	}
	if stderr.Len() > 0 {
		t.Fatalf("sqlite3 %s wrote to stderr: %s\nscript:\n%s", db, stderr.String(), script)
	}
	return stdout.String()
}

// outputValue returns the integer printed on the line "name=<n>" by a
// script line such as: SELECT 'name=' || (...);
func outputValue(t *testing.T, out, name string) int64 {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, name+"="); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("bad %s value %q", name, v)
			}
			return n
		}
	}
	t.Fatalf("no %s= line in sqlite3 output:\n%s", name, out)
	return 0
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDBHeaderRealFiles(t *testing.T) {
	sqlite3CLI(t)
	for _, pageSize := range []uint32{512, 1024, 2048, 4096, 8192, 16384, 32768, 65536} {
		for _, wal := range []bool{false, true} {
			mode := "delete"
			if wal {
				mode = "wal"
			}
			t.Run(fmt.Sprintf("%d_%s", pageSize, mode), func(t *testing.T) {
				dir := t.TempDir()
				// Three write transactions after the mode is set: CREATE and
				// two INSERTs; the first one's overflow pages grow the file.
				out := runSQL(t, dir, "db", fmt.Sprintf(`PRAGMA page_size=%d;
PRAGMA journal_mode=%s;
CREATE TABLE t(x);
INSERT INTO t VALUES(randomblob(3000));
INSERT INTO t VALUES(randomblob(100));
SELECT 'pages=' || (SELECT page_count FROM pragma_page_count());
`, pageSize, mode))
				wantPages := outputValue(t, out, "pages")
				db := readFile(t, filepath.Join(dir, "db"))

				// Independent checks on the raw bytes first.
				raw := binary.BigEndian.Uint16(db[16:18])
				if pageSize == 65536 && raw != 1 {
					t.Fatalf("raw page size field = %d, want 1 for 65536-byte pages", raw)
				} else if pageSize < 65536 && uint32(raw) != pageSize {
					t.Fatalf("raw page size field = %d, want %d", raw, pageSize)
				}
				if int64(len(db)) != wantPages*int64(pageSize) {
					t.Fatalf("file size %d is not %d pages of %d", len(db), wantPages, pageSize)
				}

				h, err := ParseDBHeader(db[:HeaderSize])
				if err != nil {
					t.Fatal(err)
				}
				if h.PageSize != pageSize {
					t.Errorf("PageSize = %d, want %d", h.PageSize, pageSize)
				}
				wantVersion := uint8(1)
				if wal {
					wantVersion = 2
				}
				if h.WriteVersion != wantVersion || h.ReadVersion != wantVersion {
					t.Errorf("versions = %d/%d, want %d/%d", h.WriteVersion, h.ReadVersion, wantVersion, wantVersion)
				}
				if h.IsWAL() != wal {
					t.Errorf("IsWAL() = %v, want %v", h.IsWAL(), wal)
				}
				n, ok := h.InHeaderPageN()
				if !ok || int64(n) != wantPages {
					t.Errorf("InHeaderPageN() = %d, %v; want %d, true", n, ok, wantPages)
				}
				if !wal && h.ChangeCounter != 3 {
					// In rollback mode the counter is bumped once per write
					// transaction.
					t.Errorf("ChangeCounter = %d, want 3", h.ChangeCounter)
				}
				if h.VersionValid != h.ChangeCounter {
					t.Errorf("VersionValid = %d, ChangeCounter = %d; SQLite keeps them equal", h.VersionValid, h.ChangeCounter)
				}

				// The whole file parses as well as the first 100 bytes.
				if h2, err := ParseDBHeader(db); err != nil || h2 != h {
					t.Errorf("ParseDBHeader(whole file) = %+v, %v; want %+v", h2, err, h)
				}
			})
		}
	}
}

// header builds a 100-byte database header with the given fields.
func header(pageSizeField uint16, write, read uint8, changeCounter, pageN, versionValid uint32) []byte {
	b := make([]byte, HeaderSize)
	copy(b, "SQLite format 3\x00")
	binary.BigEndian.PutUint16(b[16:], pageSizeField)
	b[18], b[19] = write, read
	binary.BigEndian.PutUint32(b[24:], changeCounter)
	binary.BigEndian.PutUint32(b[28:], pageN)
	binary.BigEndian.PutUint32(b[92:], versionValid)
	return b
}

func TestParseDBHeaderSynthetic(t *testing.T) {
	for _, tc := range []struct {
		name      string
		b         []byte
		want      DBHeader
		wantErr   bool
		wantPageN uint32
		wantValid bool
		wantWAL   bool
	}{
		{
			name:      "rollback",
			b:         header(4096, 1, 1, 7, 42, 7),
			want:      DBHeader{PageSize: 4096, WriteVersion: 1, ReadVersion: 1, ChangeCounter: 7, PageN: 42, VersionValid: 7},
			wantPageN: 42, wantValid: true,
		},
		{
			name:      "wal",
			b:         header(1024, 2, 2, 0x01020304, 0x0a0b0c0d, 0x01020304),
			want:      DBHeader{PageSize: 1024, WriteVersion: 2, ReadVersion: 2, ChangeCounter: 0x01020304, PageN: 0x0a0b0c0d, VersionValid: 0x01020304},
			wantPageN: 0x0a0b0c0d, wantValid: true, wantWAL: true,
		},
		{
			name:      "65536 encoded as 1",
			b:         header(1, 1, 1, 1, 2, 1),
			want:      DBHeader{PageSize: 65536, WriteVersion: 1, ReadVersion: 1, ChangeCounter: 1, PageN: 2, VersionValid: 1},
			wantPageN: 2, wantValid: true,
		},
		{
			name:      "512",
			b:         header(512, 1, 1, 1, 1, 1),
			want:      DBHeader{PageSize: 512, WriteVersion: 1, ReadVersion: 1, ChangeCounter: 1, PageN: 1, VersionValid: 1},
			wantPageN: 1, wantValid: true,
		},
		{
			name:      "32768",
			b:         header(32768, 1, 1, 1, 1, 1),
			want:      DBHeader{PageSize: 32768, WriteVersion: 1, ReadVersion: 1, ChangeCounter: 1, PageN: 1, VersionValid: 1},
			wantPageN: 1, wantValid: true,
		},
		{
			name:      "stale in-header size (version-valid-for differs)",
			b:         header(4096, 1, 1, 8, 42, 7),
			want:      DBHeader{PageSize: 4096, WriteVersion: 1, ReadVersion: 1, ChangeCounter: 8, PageN: 42, VersionValid: 7},
			wantPageN: 42, wantValid: false,
		},
		{
			name:      "zero in-header size",
			b:         header(4096, 1, 1, 3, 0, 3),
			want:      DBHeader{PageSize: 4096, WriteVersion: 1, ReadVersion: 1, ChangeCounter: 3, VersionValid: 3},
			wantPageN: 0, wantValid: false,
		},
		{
			name:      "legacy file: everything zero but page size",
			b:         header(1024, 1, 1, 0, 0, 0),
			want:      DBHeader{PageSize: 1024, WriteVersion: 1, ReadVersion: 1},
			wantPageN: 0, wantValid: false,
		},
		{
			name:      "read version 2 only",
			b:         header(4096, 1, 2, 1, 1, 1),
			want:      DBHeader{PageSize: 4096, WriteVersion: 1, ReadVersion: 2, ChangeCounter: 1, PageN: 1, VersionValid: 1},
			wantPageN: 1, wantValid: true, wantWAL: true,
		},
		{name: "short", b: header(4096, 1, 1, 1, 1, 1)[:99], wantErr: true},
		{name: "empty", b: nil, wantErr: true},
		{name: "bad magic", b: append([]byte("SQLite format 4\x00"), header(4096, 1, 1, 1, 1, 1)[16:]...), wantErr: true},
		{name: "magic without NUL", b: append([]byte("SQLite format 3 "), header(4096, 1, 1, 1, 1, 1)[16:]...), wantErr: true},
		{name: "page size 0", b: header(0, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 2", b: header(2, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 256", b: header(256, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 511", b: header(511, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 1000", b: header(1000, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 4097", b: header(4097, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 65535", b: header(65535, 1, 1, 1, 1, 1), wantErr: true},
		{name: "page size 49152", b: header(49152, 1, 1, 1, 1, 1), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseDBHeader(tc.b)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseDBHeader = %+v, want error", h)
				}
				if !errors.Is(err, ErrNotDatabase) {
					t.Fatalf("error %v is not ErrNotDatabase", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h != tc.want {
				t.Fatalf("ParseDBHeader = %+v, want %+v", h, tc.want)
			}
			if n, ok := h.InHeaderPageN(); n != tc.wantPageN || ok != tc.wantValid {
				t.Errorf("InHeaderPageN() = %d, %v; want %d, %v", n, ok, tc.wantPageN, tc.wantValid)
			}
			if h.IsWAL() != tc.wantWAL {
				t.Errorf("IsWAL() = %v, want %v", h.IsWAL(), tc.wantWAL)
			}
		})
	}
}

func TestDecodePageSize(t *testing.T) {
	for _, tc := range []struct {
		field uint16
		want  uint32
		ok    bool
	}{
		{1, 65536, true},
		{512, 512, true},
		{1024, 1024, true},
		{2048, 2048, true},
		{4096, 4096, true},
		{8192, 8192, true},
		{16384, 16384, true},
		{32768, 32768, true},
		{0, 0, false},
		{2, 2, false},
		{256, 256, false},
		{513, 513, false},
		{3072, 3072, false},
		{65535, 65535, false},
	} {
		got, ok := DecodePageSize(tc.field)
		if ok != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("DecodePageSize(%d) = %d, %v; want %d, %v", tc.field, got, ok, tc.want, tc.ok)
		}
	}
}

func TestIsValidPageSize(t *testing.T) {
	valid := map[uint32]bool{512: true, 1024: true, 2048: true, 4096: true, 8192: true, 16384: true, 32768: true, 65536: true}
	for _, sz := range []uint32{0, 1, 2, 256, 511, 512, 513, 768, 1024, 1536, 2048, 4096, 4095, 8192, 16384, 32768, 49152, 65535, 65536, 65537, 131072, 1 << 31} {
		if got := IsValidPageSize(sz); got != valid[sz] {
			t.Errorf("IsValidPageSize(%d) = %v, want %v", sz, got, valid[sz])
		}
	}
}

func TestLockPgno(t *testing.T) {
	// PendingByte is 0x40000000 = 1073741824; the lock page holds it.
	for _, tc := range []struct {
		pageSize uint32
		want     uint32
	}{
		{512, 2097153},
		{1024, 1048577},
		{4096, 262145},
		{8192, 131073},
		{65536, 16385},
	} {
		if got := LockPgno(tc.pageSize); got != tc.want {
			t.Errorf("LockPgno(%d) = %d, want %d", tc.pageSize, got, tc.want)
		}
		// The lock page's byte range contains PendingByte.
		first := int64(tc.want-1) * int64(tc.pageSize)
		if PendingByte < first || PendingByte >= first+int64(tc.pageSize) {
			t.Errorf("page %d of size %d does not contain the pending byte", tc.want, tc.pageSize)
		}
	}
	if PendingByte != 1<<30 || ReservedByte != PendingByte+1 || SharedFirst != PendingByte+2 || SharedSize != 510 {
		t.Errorf("lock byte constants differ from SQLite's: %#x %#x %#x %d", PendingByte, ReservedByte, SharedFirst, SharedSize)
	}
}
