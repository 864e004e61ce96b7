// Package fuse serves a store's databases as a flat FUSE directory. It
// translates kernel requests into store calls and store errors into errno
// values; it knows nothing of replication.
//
// Requests are handled on the goroutine that reads them from the kernel,
// one at a time: a FUSE round trip costs far less that way than when every
// request is handed to a new goroutine, and SQLite's commit path is a chain
// of small requests. The only requests that may wait on another request
// (a blocking lock) are moved to their own goroutine, so the loop never
// stalls.
package fuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
	"unsafe"

	bfuse "bazil.org/fuse"

	"github.com/litefs-project/litefs/store"
)

// Options configures a mount.
type Options struct {
	AllowOther bool   // let other users access the mount
	Debug      bool   // log every FUSE request
	Status     Status // contents of .primary and .lag; nil on a standalone node
	Logger     *slog.Logger
	// Observe, if set, is told how long each request took on the serve
	// loop, by kind ("read", "write", "lock", ...).
	Observe func(op string, d time.Duration)
}

// Server is a mounted filesystem.
type Server struct {
	ctx     context.Context // base of the contexts of requests that wait
	dir     string
	conn    *bfuse.Conn
	store   *store.Store
	logger  *slog.Logger
	debug   bool
	status  Status
	observe func(op string, d time.Duration)
	uid     uint32
	gid     uint32
	started time.Time

	nodes nodeTable

	mu       sync.Mutex
	handles  map[bfuse.HandleID]*handle
	nextFH   bfuse.HandleID
	inflight map[bfuse.RequestID]context.CancelFunc // waiting requests, for interrupts

	async sync.WaitGroup
	done  chan struct{} // closed when the serve loop exits
	err   error         // why the serve loop exited
}

// Mount mounts the store's databases at dir and starts serving requests.
// A stale mount left by a crashed daemon is cleaned up first. The
// contexts of requests that wait derive from ctx.
func Mount(ctx context.Context, dir string, st *store.Store, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cleanStaleMount(dir, opts.Logger)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create mount directory: %w", err)
	}

	mopts := []bfuse.MountOption{
		bfuse.FSName("litefs"),
		bfuse.Subtype("litefs"),
		bfuse.LockingPOSIX(),
		bfuse.ExplicitInvalidateData(),
		bfuse.HandleKillPriv(),
	}
	if opts.AllowOther {
		mopts = append(mopts, bfuse.AllowOther())
	}
	conn, err := bfuse.Mount(dir, mopts...)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	s := &Server{
		ctx:      ctx,
		dir:      dir,
		conn:     conn,
		store:    st,
		logger:   opts.Logger,
		debug:    opts.Debug,
		status:   opts.Status,
		observe:  opts.Observe,
		uid:      uint32(os.Getuid()),
		gid:      uint32(os.Getgid()),
		started:  time.Now(),
		handles:  make(map[bfuse.HandleID]*handle),
		nextFH:   1,
		inflight: make(map[bfuse.RequestID]context.CancelFunc),
		done:     make(chan struct{}),
	}
	s.nodes.init()
	// The store invalidates what the kernel caches of files it changes
	// itself (replicated pages); from the first request on.
	st.SetInvalidator(s)
	go s.serve()
	if err := s.disablePoll(); err != nil {
		_ = s.Unmount(ctx)
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	return s, nil
}

// disablePoll makes the kernel stop sending poll requests, which litefs
// answers with ENOSYS, before any other file in the mount is opened.
//
// Go's os package registers every file it opens with epoll, and the
// runtime does so with a raw system call during which the goroutine cannot
// be stopped. On a FUSE file that call waits for a poll reply from the
// daemon; if the daemon runs in the same process (tests, or a program
// embedding the filesystem) and the garbage collector stops the world at
// that moment, the reply never comes. One poll answered here, from an
// ordinary (stoppable) system call, turns polling off for the mount.
func (s *Server) disablePoll() error {
	fd, err := syscall.Open(filepath.Join(s.dir, ".lag"), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open status file: %w", err)
	}
	defer syscall.Close(fd)
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	defer syscall.Close(ep)
	// syscall.EpollCtl is a raw system call, during which this goroutine
	// could not be stopped either; make an ordinary one.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)}
	_, _, errno := syscall.Syscall6(syscall.SYS_EPOLL_CTL, uintptr(ep), syscall.EPOLL_CTL_ADD, uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	if errno != 0 && errno != syscall.EPERM {
		return fmt.Errorf("epoll_ctl: %w", errno)
	}
	return nil
}

// Dir returns the mount point.
func (s *Server) Dir() string { return s.dir }

// Done is closed when the filesystem stops serving (it was unmounted).
func (s *Server) Done() <-chan struct{} { return s.done }

// Unmount unmounts the filesystem and waits for the serve loop to exit.
// If the mount stays busy until ctx ends, it is detached lazily instead.
func (s *Server) Unmount(ctx context.Context) error {
	for {
		err := bfuse.Unmount(s.dir)
		if err == nil {
			break
		}
		select {
		case <-s.done:
			return nil
		case <-ctx.Done():
			s.logger.Warn("mount still busy; detaching it lazily", "dir", s.dir, "err", err)
			if err := lazyUnmount(s.dir); err != nil {
				return fmt.Errorf("unmount %s: %w", s.dir, err)
			}
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	<-s.done
	s.async.Wait()
	return s.conn.Close()
}

func (s *Server) serve() {
	defer close(s.done)
	for {
		req, err := s.conn.ReadRequest()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.err = err
				s.logger.Error("fuse: read request", "err", err)
			}
			return
		}
		if s.debug {
			s.logger.Debug("fuse: request", "req", req.String())
		}
		if s.observe == nil {
			s.handle(req)
			continue
		}
		start := time.Now()
		s.handle(req)
		s.observe(opName(req), time.Since(start))
	}
}

// opName names a request's kind for metrics.
func opName(req bfuse.Request) string {
	switch req.(type) {
	case *bfuse.ReadRequest:
		return "read"
	case *bfuse.WriteRequest:
		return "write"
	case *bfuse.LookupRequest:
		return "lookup"
	case *bfuse.GetattrRequest:
		return "getattr"
	case *bfuse.SetattrRequest:
		return "setattr"
	case *bfuse.OpenRequest:
		return "open"
	case *bfuse.CreateRequest:
		return "create"
	case *bfuse.FlushRequest:
		return "flush"
	case *bfuse.ReleaseRequest:
		return "release"
	case *bfuse.FsyncRequest:
		return "fsync"
	case *bfuse.RemoveRequest:
		return "remove"
	case *bfuse.LockRequest, *bfuse.LockWaitRequest, *bfuse.UnlockRequest, *bfuse.QueryLockRequest:
		return "lock"
	case *bfuse.ForgetRequest, *bfuse.BatchForgetRequest:
		return "forget"
	}
	return "other"
}

// goAsync runs fn on its own goroutine with a context that an interrupt
// from the kernel cancels.
func (s *Server) goAsync(req bfuse.Request, fn func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(s.ctx)
	id := req.Hdr().ID
	s.mu.Lock()
	s.inflight[id] = cancel
	s.mu.Unlock()
	s.async.Add(1)
	go func() {
		defer s.async.Done()
		defer func() {
			s.mu.Lock()
			delete(s.inflight, id)
			s.mu.Unlock()
			cancel()
		}()
		fn(ctx)
	}()
}

func (s *Server) interrupt(r *bfuse.InterruptRequest) {
	s.mu.Lock()
	cancel := s.inflight[r.IntrID]
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	r.Respond()
}

// handle dispatches one request. It runs on the serve loop. A panic in a
// handler is a bug; it is logged with its stack and the request fails with
// EIO, rather than taking the mount, and every application using it, down.
func (s *Server) handle(req bfuse.Request) {
	defer func() {
		if v := recover(); v != nil {
			s.logger.Error("fuse: panic handling request", "req", req.String(), "panic", v, "stack", string(debug.Stack()))
			req.RespondError(syscall.EIO)
		}
	}()
	switch r := req.(type) {
	case *bfuse.LookupRequest:
		s.lookup(r)
	case *bfuse.GetattrRequest:
		s.getattr(r)
	case *bfuse.SetattrRequest:
		s.setattr(r)
	case *bfuse.OpenRequest:
		s.open(r)
	case *bfuse.CreateRequest:
		s.create(r)
	case *bfuse.ReadRequest:
		s.read(r)
	case *bfuse.WriteRequest:
		s.write(r)
	case *bfuse.FlushRequest:
		s.flush(r)
	case *bfuse.ReleaseRequest:
		s.release(r)
	case *bfuse.FsyncRequest:
		s.fsync(r)
	case *bfuse.RemoveRequest:
		s.remove(r)
	case *bfuse.ForgetRequest:
		s.nodes.forget(r.Hdr().Node, r.N)
		r.Respond()
	case *bfuse.BatchForgetRequest:
		for _, f := range r.Forget {
			s.nodes.forget(f.NodeID, f.N)
		}
		r.Respond()
	case *bfuse.LockRequest:
		s.lock(r)
	case *bfuse.LockWaitRequest:
		s.lockWait(r)
	case *bfuse.UnlockRequest:
		s.unlock(r)
	case *bfuse.QueryLockRequest:
		s.queryLock(r)
	case *bfuse.InterruptRequest:
		s.interrupt(r)
	case *bfuse.StatfsRequest:
		s.statfs(r)
	case *bfuse.MkdirRequest:
		s.logger.Warn("fuse: refused mkdir; databases live in a flat directory", "name", r.Name)
		r.RespondError(syscall.EPERM)
	case *bfuse.RenameRequest, *bfuse.SymlinkRequest, *bfuse.LinkRequest, *bfuse.MknodRequest:
		r.RespondError(syscall.EPERM)
	case *bfuse.DestroyRequest:
		r.Respond()
	default:
		// Extended attributes, access checks, fallocate, polling: ENOSYS
		// makes the kernel stop asking or fall back to its own handling.
		req.RespondError(syscall.ENOSYS)
	}
}

// errno converts a store or OS error into the errno reported to SQLite.
func errno(err error) syscall.Errno {
	var en syscall.Errno
	switch {
	case errors.Is(err, store.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, store.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, store.ErrUnaligned), errors.Is(err, store.ErrInvalidPage), errors.Is(err, store.ErrInvalidName):
		return syscall.EINVAL
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.As(err, &en):
		return en
	}
	return syscall.EIO
}

// fail responds with err's errno, logging faults that are not routine.
func (s *Server) fail(req bfuse.Request, op string, name string, err error) {
	en := errno(err)
	switch en {
	case syscall.ENOENT, syscall.EAGAIN, syscall.EINTR:
	case syscall.EROFS:
		// Routine on a replica (SQLite deletes the WAL when its last
		// connection closes); the store logs refused writes itself.
		s.logger.Debug("fuse: "+op+" refused on a replica", "file", name, "err", err)
	default:
		s.logger.Warn("fuse: "+op+" failed", "file", name, "errno", en.Error(), "err", err)
	}
	req.RespondError(en)
}

// cleanStaleMount detaches a FUSE mount whose daemon died, which otherwise
// fails every access with "transport endpoint is not connected".
func cleanStaleMount(dir string, logger *slog.Logger) {
	if _, err := os.Stat(dir); err == nil || os.IsNotExist(err) {
		return
	}
	logger.Warn("detaching stale mount", "dir", dir)
	_ = lazyUnmount(dir)
}

func lazyUnmount(dir string) error {
	out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u -z: %v: %s", err, out)
	}
	return nil
}
