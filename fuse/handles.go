package fuse

import (
	"context"
	"fmt"
	"syscall"
	"time"

	bfuse "bazil.org/fuse"

	"github.com/litefs-project/litefs/internal/rangelock"
	"github.com/litefs-project/litefs/store"
)

// handle is an open file description.
type handle struct {
	id      bfuse.HandleID
	node    *node
	listing []byte // directory listing, built when reading starts
}

func (s *Server) newHandle(n *node) bfuse.HandleID {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextFH
	s.nextFH++
	s.handles[id] = &handle{id: id, node: n}
	return id
}

func (s *Server) handleOf(id bfuse.HandleID) *handle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handles[id]
}

// openFlags returns how the kernel should cache a file. Database files stay
// cached across opens; the daemon invalidates them when it changes them
// itself. The position and status files are generated on every read.
func openFlags(kind store.FileKind) bfuse.OpenResponseFlags {
	if kind == store.FilePos {
		return bfuse.OpenDirectIO
	}
	return bfuse.OpenKeepCache
}

func (s *Server) open(r *bfuse.OpenRequest) {
	n := s.nodes.get(r.Node)
	if n == nil {
		r.RespondError(syscall.ESTALE)
		return
	}
	if r.Dir {
		r.Respond(&bfuse.OpenResponse{Handle: s.newHandle(n)})
		return
	}
	writing := !r.Flags.IsReadOnly()
	switch {
	case n.status != "":
		// The kernel may still hold the entry of a status file that the
		// node's role change removed.
		if _, ok := s.statusContent(n.status); !ok {
			r.RespondError(syscall.ENOENT)
			return
		}
		if writing {
			r.RespondError(syscall.EACCES)
			return
		}
		r.Respond(&bfuse.OpenResponse{Handle: s.newHandle(n), Flags: bfuse.OpenDirectIO})
		return
	case !n.db.Exists(n.kind):
		r.RespondError(syscall.ENOENT)
		return
	case writing && n.kind == store.FilePos:
		r.RespondError(syscall.EACCES)
		return
	case writing && n.kind == store.FileJournal && !n.db.Writable():
		// Refusing the journal makes SQLite report "attempt to write a
		// readonly database" at once; it opens a journal per transaction,
		// so the connection can write once the node is primary. A WAL is
		// kept open for a connection's life, and SQLite would keep one it
		// could only open read-only that way, so a WAL opens read-write
		// and a replica refuses the writes themselves.
		s.failOpen(r, "open", n.name, store.ErrReadOnly)
		return
	}
	r.Respond(&bfuse.OpenResponse{Handle: s.newHandle(n), Flags: openFlags(n.kind)})
}

func (s *Server) read(r *bfuse.ReadRequest) {
	h := s.handleOf(r.Handle)
	if h == nil {
		r.RespondError(syscall.EBADF)
		return
	}
	if r.Dir {
		s.readdir(r, h)
		return
	}
	n := h.node
	if n.status != "" {
		content, _ := s.statusContent(n.status)
		resp := bfuse.ReadResponse{Data: make([]byte, r.Size)}
		if r.Offset < int64(len(content)) {
			resp.Data = resp.Data[:copy(resp.Data, content[r.Offset:])]
		} else {
			resp.Data = resp.Data[:0]
		}
		r.Respond(&resp)
		return
	}
	buf := make([]byte, r.Size)
	k, err := n.db.ReadAt(n.kind, buf, r.Offset)
	if err != nil {
		s.fail(r, "read", n.name, err)
		return
	}
	r.Respond(&bfuse.ReadResponse{Data: buf[:k]})
}

func (s *Server) write(r *bfuse.WriteRequest) {
	h := s.handleOf(r.Handle)
	if h == nil {
		r.RespondError(syscall.EBADF)
		return
	}
	n := h.node
	if n.db == nil {
		r.RespondError(syscall.EACCES)
		return
	}
	k, err := n.db.WriteAt(n.kind, r.Data, r.Offset)
	if err != nil {
		if p := store.PendingOf(err); p != nil {
			s.awaitWrite(r, n.name, p, k)
			return
		}
		s.fail(r, "write", n.name, err)
		return
	}
	r.Respond(&bfuse.WriteResponse{Size: k})
}

// awaitWrite answers a write whose commit waits for another node. (A
// function of its own, so that what it captures escapes only here.)
func (s *Server) awaitWrite(r *bfuse.WriteRequest, name string, p *store.Pending, k int) {
	s.await(r, "write", name, p, func() { r.Respond(&bfuse.WriteResponse{Size: k}) })
}

// reply answers a request that may have completed a transaction with ok,
// or with its error; see await.
func (s *Server) reply(r bfuse.Request, op, name string, err error, ok func()) {
	if p := store.PendingOf(err); p != nil {
		s.await(r, op, name, p, ok)
		return
	}
	if err != nil {
		s.fail(r, op, name, err)
		return
	}
	ok()
}

// await answers a request whose commit waits for another node (a
// store.Pending) from a goroutine of its own once the answer comes, while
// the loop serves every other request.
func (s *Server) await(r bfuse.Request, op, name string, p *store.Pending, ok func()) {
	s.goAsync(r, func(ctx context.Context) {
		if err := p.Wait(ctx); err != nil {
			s.fail(r, op, name, err)
			return
		}
		ok()
	})
}

// respond answers a request that carries no data once err (possibly a
// store.Pending) allows.
func (s *Server) respond(r interface {
	bfuse.Request
	Respond()
}, op, name string, err error) {
	if err == nil {
		r.Respond()
		return
	}
	s.reply(r, op, name, err, r.Respond)
}

func (s *Server) fsync(r *bfuse.FsyncRequest) {
	if r.Dir {
		r.Respond()
		return
	}
	h := s.handleOf(r.Handle)
	if h == nil {
		r.RespondError(syscall.EBADF)
		return
	}
	if n := h.node; n.db != nil {
		if err := n.db.Sync(n.kind); err != nil {
			s.fail(r, "fsync", n.name, err)
			return
		}
	}
	r.Respond()
}

// flush is sent on every close(2): POSIX locks of the closing process on
// the file are released.
func (s *Server) flush(r *bfuse.FlushRequest) {
	if h := s.handleOf(r.Handle); h != nil && h.node.db != nil {
		err := h.node.db.ReleaseOwner(h.node.kind, rangelock.Owner(r.LockOwner))
		s.respond(r, "flush", h.node.name, err)
		return
	}
	r.Respond()
}

// release is sent when the last descriptor of an open file description is
// closed, which also ends the OFD locks taken through it.
func (s *Server) release(r *bfuse.ReleaseRequest) {
	s.mu.Lock()
	h := s.handles[r.Handle]
	delete(s.handles, r.Handle)
	s.mu.Unlock()
	if h != nil && h.node.db != nil {
		err := h.node.db.ReleaseHandle(h.node.kind, uint64(r.Handle))
		s.respond(r, "release", h.node.name, err)
		return
	}
	r.Respond()
}

// lockTarget resolves the handle of a lock request into the file and the
// lock it asks for.
func (s *Server) lockTarget(fh bfuse.HandleID, owner bfuse.LockOwner, l bfuse.FileLock) (*node, rangelock.Lock, error) {
	h := s.handleOf(fh)
	if h == nil {
		return nil, rangelock.Lock{}, syscall.EBADF
	}
	if h.node.db == nil {
		return nil, rangelock.Lock{}, syscall.EINVAL
	}
	req := rangelock.Lock{
		Owner:  rangelock.Owner(owner),
		Start:  l.Start,
		End:    l.End,
		PID:    uint32(l.PID),
		Handle: uint64(fh),
	}
	switch l.Type {
	case bfuse.LockRead:
		req.Type = rangelock.Read
	case bfuse.LockWrite:
		req.Type = rangelock.Write
	case bfuse.LockUnlock:
		req.Type = rangelock.Unlock
	default:
		return nil, req, fmt.Errorf("lock type %d: %w", l.Type, syscall.EINVAL)
	}
	return h.node, req, nil
}

func (s *Server) lock(r *bfuse.LockRequest) {
	n, req, err := s.lockTarget(r.Handle, r.LockOwner, r.Lock)
	if err != nil {
		s.fail(r, "lock", "", err)
		return
	}
	if n.kind == store.FileLock && req.Type == rangelock.Write {
		s.lockHalt(r, n, req) // may ask the primary: off the loop
		return
	}
	ok, err := n.db.Lock(n.kind, req)
	s.answerLock(r, n, ok, err)
}

// lockHalt takes the HALT byte without waiting for other holders, on a
// goroutine of its own: on a replica it is a round trip to the primary.
func (s *Server) lockHalt(r *bfuse.LockRequest, n *node, req rangelock.Lock) {
	s.goAsync(r, func(ctx context.Context) {
		ok, err := n.db.LockHalt(ctx, req, false)
		s.answerLock(r, n, ok, err)
	})
}

// answerLock answers an F_SETLK request: EAGAIN when not granted.
func (s *Server) answerLock(r *bfuse.LockRequest, n *node, ok bool, err error) {
	switch {
	case err != nil && store.PendingOf(err) == nil:
		s.fail(r, "lock", n.name, err)
	case !ok:
		r.RespondError(syscall.EAGAIN)
	default:
		s.respond(r, "lock", n.name, err)
	}
}

func (s *Server) unlock(r *bfuse.UnlockRequest) {
	n, req, err := s.lockTarget(r.Handle, r.LockOwner, r.Lock)
	if err != nil {
		s.fail(r, "unlock", "", err)
		return
	}
	_, err = n.db.Lock(n.kind, req)
	s.respond(r, "unlock", n.name, err)
}

// lockWait tries the lock at once and, only if another owner holds it,
// waits on a goroutine of its own so the serve loop keeps going. A lock on
// the HALT file always goes to its own goroutine: it may ask the primary.
func (s *Server) lockWait(r *bfuse.LockWaitRequest) {
	n, req, err := s.lockTarget(r.Handle, r.LockOwner, r.Lock)
	if err != nil {
		s.fail(r, "lock", "", err)
		return
	}
	if n.kind != store.FileLock {
		ok, err := n.db.Lock(n.kind, req)
		if err != nil || ok {
			s.respond(r, "lock", n.name, err)
			return
		}
	}
	s.waitLock(r, n, req)
}

// waitLock waits for a lock on a goroutine of its own.
func (s *Server) waitLock(r *bfuse.LockWaitRequest, n *node, req rangelock.Lock) {
	s.goAsync(r, func(ctx context.Context) {
		err := n.db.LockWait(ctx, n.kind, req)
		if p := store.PendingOf(err); p != nil {
			err = p.Wait(ctx)
		}
		if err != nil {
			s.fail(r, "lock", n.name, err)
			return
		}
		r.Respond()
	})
}

func (s *Server) queryLock(r *bfuse.QueryLockRequest) {
	n, req, err := s.lockTarget(r.Handle, r.LockOwner, r.Lock)
	if err != nil {
		s.fail(r, "getlk", "", err)
		return
	}
	resp := bfuse.QueryLockResponse{Lock: bfuse.FileLock{Type: bfuse.LockUnlock}}
	if l, ok := n.db.QueryLock(n.kind, req); ok {
		resp.Lock = bfuse.FileLock{Start: l.Start, End: l.End, PID: int32(l.PID), Type: bfuse.LockRead}
		if l.Type == rangelock.Write {
			resp.Lock.Type = bfuse.LockWrite
		}
	}
	r.Respond(&resp)
}

// Status supplies the contents of the mount's status files.
type Status interface {
	// PrimaryHostname returns the primary's hostname when this node is a
	// replica that knows its primary.
	PrimaryHostname() (string, bool)
	// Lag returns how far this node is behind the primary.
	Lag() time.Duration
}

var statusFiles = []string{".primary", ".lag"}

func isStatusFile(name string) bool { return name == ".primary" || name == ".lag" }

// statusContent renders a status file; ok is false when it does not exist.
func (s *Server) statusContent(name string) (string, bool) {
	switch name {
	case ".primary":
		if s.status == nil {
			return "", false
		}
		host, ok := s.status.PrimaryHostname()
		if !ok {
			return "", false
		}
		return host + "\n", true
	case ".lag":
		var lag time.Duration
		if s.status != nil {
			lag = s.status.Lag()
		}
		return fmt.Sprintf("%+010d\n", lag.Milliseconds()), true
	}
	return "", false
}
