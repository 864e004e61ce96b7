package fuse

import (
	"errors"

	bfuse "bazil.org/fuse"
)

// The Server implements store.Invalidator: a replica changes files behind
// the kernel's back, and the kernel must drop what it cached of them.
// These calls come from the replication goroutine, never from the serve
// loop: the kernel may write dirty pages back through the filesystem while
// it invalidates them, which the serve loop must be free to handle.

// InvalidateData drops the kernel's cached data of [off, off+size) of the
// named file (size -1: to its end) and its attributes; off -1 drops only
// the attributes.
func (s *Server) InvalidateData(name string, off, size int64) {
	n := s.nodes.named(name)
	if n == nil {
		return // the kernel never looked it up, so caches nothing
	}
	if err := s.conn.InvalidateNode(n.id, off, size); err != nil && !errors.Is(err, bfuse.ErrNotCached) {
		s.logger.Warn("fuse: invalidate cached data", "file", name, "err", err)
	}
}

// InvalidateEntry drops the kernel's cached directory entry for name.
func (s *Server) InvalidateEntry(name string) {
	if err := s.conn.InvalidateEntry(rootID, name); err != nil && !errors.Is(err, bfuse.ErrNotCached) {
		s.logger.Warn("fuse: invalidate directory entry", "file", name, "err", err)
	}
}
