package fuse

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	bfuse "bazil.org/fuse"
	"bazil.org/fuse/fuseutil"

	"github.com/litefs-project/litefs/store"
)

const (
	rootID = bfuse.NodeID(1)

	// The kernel may cache entries and attributes this long. Only the
	// kernel changes files through the mount on a writable node; when the
	// daemon changes them itself it invalidates the kernel's copy.
	entryValid = 10 * time.Second
	attrValid  = 10 * time.Second
)

// node is an inode the kernel knows about: the root, one file of a
// database, or a status file.
type node struct {
	id      bfuse.NodeID
	name    string
	db      *store.DB // nil for the root and status files
	kind    store.FileKind
	status  string // name of a status file, "" otherwise
	lookups uint64 // references the kernel holds, released by Forget
}

// nodeTable assigns node IDs. A name gets a new ID each time the file it
// names is created, so the kernel never mixes cached data of a deleted
// file with its successor; an ID is freed once the kernel forgets it.
type nodeTable struct {
	mu     sync.Mutex
	byID   map[bfuse.NodeID]*node
	byName map[string]*node
	next   bfuse.NodeID
}

func (t *nodeTable) init() {
	t.byID = map[bfuse.NodeID]*node{rootID: {id: rootID, lookups: 1}}
	t.byName = make(map[string]*node)
	t.next = rootID + 1
}

func (t *nodeTable) get(id bfuse.NodeID) *node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byID[id]
}

// ref returns the node for name, creating it if the name has none or names
// a different database instance, and counts one kernel reference.
func (t *nodeTable) ref(name string, db *store.DB, kind store.FileKind, status string) *node {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.byName[name]
	if n == nil || n.db != db || n.kind != kind {
		n = &node{id: t.next, name: name, db: db, kind: kind, status: status}
		t.next++
		t.byID[n.id] = n
		t.byName[name] = n
	}
	n.lookups++
	return n
}

// named returns the node the kernel knows for name, or nil.
func (t *nodeTable) named(name string) *node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byName[name]
}

// unlink detaches name from its node; the node lives on while referenced.
func (t *nodeTable) unlink(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.byName[name]
	if n == nil {
		return
	}
	delete(t.byName, name)
	if n.lookups == 0 {
		delete(t.byID, n.id)
	}
}

func (t *nodeTable) forget(id bfuse.NodeID, count uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.byID[id]
	if n == nil || id == rootID {
		return
	}
	n.lookups -= min(count, n.lookups)
	if n.lookups == 0 && t.byName[n.name] != n {
		delete(t.byID, id)
	}
}

// resolve finds the file a name in the root directory refers to.
func (s *Server) resolve(name string) (db *store.DB, kind store.FileKind, status string, err error) {
	if isStatusFile(name) {
		if _, ok := s.statusContent(name); !ok {
			return nil, 0, "", syscall.ENOENT
		}
		return nil, 0, name, nil
	}
	dbName, kind := store.ParseFilename(name)
	db = s.store.DB(dbName)
	if db == nil || !db.Exists(kind) {
		return nil, 0, "", syscall.ENOENT
	}
	return db, kind, "", nil
}

func (s *Server) attr(n *node, a *bfuse.Attr) error {
	a.Inode = uint64(n.id)
	a.Nlink = 1
	a.Uid, a.Gid = s.uid, s.gid
	a.Valid = attrValid
	switch {
	case n.id == rootID:
		a.Mode = os.ModeDir | 0o755
		a.Nlink = 2
		a.Mtime, a.Ctime, a.Atime = s.started, s.started, s.started
		return nil
	case n.status != "":
		content, ok := s.statusContent(n.status)
		if !ok {
			return syscall.ENOENT
		}
		a.Mode, a.Size, a.Valid = 0o444, uint64(len(content)), 0
		a.Mtime = time.Now()
		return nil
	}
	size, mtime, err := n.db.Stat(n.kind)
	if err != nil {
		return err
	}
	a.Size = uint64(size)
	a.Blocks = (a.Size + 511) / 512
	a.Mtime, a.Ctime, a.Atime = mtime, mtime, mtime
	a.Mode = 0o644
	if n.kind == store.FilePos {
		a.Mode, a.Valid = 0o444, 0
	}
	return nil
}

func (s *Server) lookup(r *bfuse.LookupRequest) {
	if r.Node != rootID {
		r.RespondError(syscall.ENOENT)
		return
	}
	db, kind, status, err := s.resolve(r.Name)
	if err != nil {
		s.fail(r, "lookup", r.Name, err)
		return
	}
	n := s.nodes.ref(r.Name, db, kind, status)
	resp := bfuse.LookupResponse{Node: n.id, EntryValid: entryValid}
	if status != "" {
		// A status file appears and disappears with the node's role: the
		// kernel must ask again at every lookup.
		resp.EntryValid = 0
	}
	if err := s.attr(n, &resp.Attr); err != nil {
		s.nodes.forget(n.id, 1)
		s.fail(r, "lookup", r.Name, err)
		return
	}
	r.Respond(&resp)
}

func (s *Server) getattr(r *bfuse.GetattrRequest) {
	n := s.nodes.get(r.Node)
	if n == nil {
		r.RespondError(syscall.ESTALE)
		return
	}
	var resp bfuse.GetattrResponse
	if err := s.attr(n, &resp.Attr); err != nil {
		s.fail(r, "getattr", n.name, err)
		return
	}
	r.Respond(&resp)
}

func (s *Server) setattr(r *bfuse.SetattrRequest) {
	n := s.nodes.get(r.Node)
	if n == nil {
		r.RespondError(syscall.ESTALE)
		return
	}
	// Modes and owners are fixed (every file is the daemon's, 0644 or
	// 0444): a change is refused rather than claimed and dropped. Setting
	// them to what they are succeeds; SQLite does that, as root, to each
	// journal and WAL it creates. Times are accepted and ignored: a file's
	// time is that of its content, and touch(1) must keep working.
	if err := s.checkFixedAttrs(n, r); err != nil {
		s.fail(r, "setattr", n.name, err)
		return
	}
	if r.Valid.Size() {
		if n.db == nil {
			r.RespondError(syscall.EACCES)
			return
		}
		var pid uint32
		if n.kind == store.FileDatabase {
			pid = processOf(r.Pid)
		}
		err := n.db.Truncate(n.kind, int64(r.Size), pid)
		if err != nil {
			s.reply(r, "truncate", n.name, err, func() { s.respondSetattr(r, n) })
			return
		}
	}
	s.respondSetattr(r, n)
}

// permBits are the mode bits chmod(2) sets.
const permBits = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky

// checkFixedAttrs refuses with EPERM a setattr that changes a file's mode,
// owner or group.
func (s *Server) checkFixedAttrs(n *node, r *bfuse.SetattrRequest) error {
	if !r.Valid.Mode() && !r.Valid.Uid() && !r.Valid.Gid() {
		return nil
	}
	var a bfuse.Attr
	if err := s.attr(n, &a); err != nil {
		return err
	}
	switch {
	case r.Valid.Mode() && r.Mode&permBits != a.Mode&permBits:
		return fmt.Errorf("change mode to %v (is %v): modes in the mount are fixed: %w", r.Mode&permBits, a.Mode&permBits, syscall.EPERM)
	case r.Valid.Uid() && r.Uid != a.Uid:
		return fmt.Errorf("change owner to %d (is %d): owners in the mount are fixed: %w", r.Uid, a.Uid, syscall.EPERM)
	case r.Valid.Gid() && r.Gid != a.Gid:
		return fmt.Errorf("change group to %d (is %d): groups in the mount are fixed: %w", r.Gid, a.Gid, syscall.EPERM)
	}
	return nil
}

// processOf returns the process a thread belongs to. FUSE names the
// thread that made a request, lock requests name its process, and the
// store asks whether a truncating process holds a lock. 0 if unknown (the
// thread is in a PID namespace the daemon cannot see).
func processOf(tid uint32) uint32 {
	if tid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(tid), 10) + "/status")
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(b, []byte("\nTgid:"))
	if !ok {
		return 0
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	pid, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(pid)
}

func (s *Server) respondSetattr(r *bfuse.SetattrRequest, n *node) {
	var resp bfuse.SetattrResponse
	if err := s.attr(n, &resp.Attr); err != nil {
		s.fail(r, "setattr", n.name, err)
		return
	}
	r.Respond(&resp)
}

func (s *Server) create(r *bfuse.CreateRequest) {
	if r.Node != rootID {
		r.RespondError(syscall.EPERM)
		return
	}
	dbName, kind := store.ParseFilename(r.Name)
	var db *store.DB
	var err error
	switch {
	case isStatusFile(r.Name):
		err = syscall.EACCES
	case kind == store.FileDatabase:
		if db = s.store.DB(r.Name); db == nil {
			db, err = s.store.CreateDB(r.Name)
		} else if r.Flags&bfuse.OpenExclusive != 0 {
			err = syscall.EEXIST
		}
	default:
		if db = s.store.DB(dbName); db == nil {
			err = syscall.ENOENT
		} else if db.Exists(kind) && r.Flags&bfuse.OpenExclusive != 0 {
			err = syscall.EEXIST
		} else if kind == store.FilePos || kind == store.FileLock {
			if r.Flags.IsReadOnly() {
				break
			}
			err = syscall.EACCES
		} else {
			err = db.Create(kind)
		}
	}
	if err == nil && r.Flags&bfuse.OpenTruncate != 0 && kind != store.FileDatabase {
		err = db.Truncate(kind, 0, 0)
	}
	if err != nil && store.PendingOf(err) == nil {
		s.failOpen(r, "create", r.Name, err)
		return
	}
	s.reply(r, "create", r.Name, err, func() { s.respondCreate(r, db, kind) })
}

func (s *Server) respondCreate(r *bfuse.CreateRequest, db *store.DB, kind store.FileKind) {
	n := s.nodes.ref(r.Name, db, kind, "")
	var resp bfuse.CreateResponse
	resp.Node, resp.EntryValid = n.id, entryValid
	if err := s.attr(n, &resp.Attr); err != nil {
		s.nodes.forget(n.id, 1)
		s.fail(r, "create", r.Name, err)
		return
	}
	resp.Handle = s.newHandle(n)
	resp.Flags = openFlags(kind)
	r.Respond(&resp)
}

// failOpen responds to a refused open or create. A read-only node refuses
// to create or open a journal or WAL for writing with EACCES: SQLite then
// opens the database read-only, and writes fail at once with "attempt to
// write a readonly database".
func (s *Server) failOpen(r bfuse.Request, op, name string, err error) {
	if errno(err) == syscall.EROFS {
		// Routine on a replica: every reader's connection asks first.
		s.logger.Debug("fuse: refused to open for writing on a read-only node", "file", name)
		r.RespondError(syscall.EACCES)
		return
	}
	s.fail(r, op, name, err)
}

func (s *Server) remove(r *bfuse.RemoveRequest) {
	if r.Node != rootID || r.Dir {
		r.RespondError(syscall.ENOENT)
		return
	}
	dbName, kind := store.ParseFilename(r.Name)
	var err error
	switch {
	case isStatusFile(r.Name):
		err = syscall.EPERM
	case kind == store.FileDatabase:
		if err = s.store.DeleteDB(r.Name); err == nil {
			for _, k := range allKinds {
				s.nodes.unlink(r.Name + k.Suffix())
			}
		}
	case kind == store.FilePos || kind == store.FileLock:
		err = syscall.EPERM
	default:
		if db := s.store.DB(dbName); db == nil {
			err = syscall.ENOENT
		} else {
			err = db.Remove(kind)
		}
	}
	s.reply(r, "remove", r.Name, err, func() {
		s.nodes.unlink(r.Name)
		r.Respond()
	})
}

var allKinds = []store.FileKind{store.FileDatabase, store.FileJournal, store.FileWAL, store.FileSHM, store.FilePos, store.FileLock}

// readdir lists the databases, their files and the status files.
func (s *Server) readdir(r *bfuse.ReadRequest, h *handle) {
	if r.Offset == 0 || h.listing == nil {
		var buf []byte
		buf = bfuse.AppendDirent(buf, bfuse.Dirent{Inode: uint64(rootID), Name: ".", Type: bfuse.DT_Dir})
		buf = bfuse.AppendDirent(buf, bfuse.Dirent{Inode: uint64(rootID), Name: "..", Type: bfuse.DT_Dir})
		for _, name := range statusFiles {
			if _, ok := s.statusContent(name); ok {
				buf = bfuse.AppendDirent(buf, bfuse.Dirent{Inode: direntInode(name), Name: name, Type: bfuse.DT_File})
			}
		}
		for _, db := range s.store.DBs() {
			for _, k := range allKinds {
				if k.Listed() && db.Exists(k) {
					name := db.Name() + k.Suffix()
					buf = bfuse.AppendDirent(buf, bfuse.Dirent{Inode: direntInode(name), Name: name, Type: bfuse.DT_File})
				}
			}
		}
		h.listing = buf
	}
	resp := bfuse.ReadResponse{Data: make([]byte, r.Size)}
	fuseutil.HandleRead(r, &resp, h.listing)
	r.Respond(&resp)
}

// direntInode gives directory entries a stable inode number derived from
// the name (FNV-1a); stat() reports the node ID instead.
func direntInode(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h | 1<<62
}

func (s *Server) statfs(r *bfuse.StatfsRequest) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.store.Dir(), &st); err != nil {
		s.fail(r, "statfs", "", err)
		return
	}
	r.Respond(&bfuse.StatfsResponse{
		Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail,
		Files: st.Files, Ffree: st.Ffree,
		Bsize: uint32(st.Bsize), Frsize: uint32(st.Frsize), Namelen: 255,
	})
}
