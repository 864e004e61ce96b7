package store

// Invalidator is told when the store changes a file behind the kernel's
// back (a replica applying a changeset), so that the kernel drops what it
// cached. The FUSE layer implements it. Calls are made without any store
// lock held: the kernel may write dirty pages back through the filesystem
// while it invalidates them.
type Invalidator interface {
	// InvalidateData drops cached data of a file in [off, off+size); size
	// -1 means to the end of the file. Its attributes are dropped too; off
	// -1 drops only the attributes.
	InvalidateData(name string, off, size int64)
	// InvalidateEntry drops the cached directory entry of name, which
	// appeared or disappeared.
	InvalidateEntry(name string)
}

type nopInvalidator struct{}

func (nopInvalidator) InvalidateData(string, int64, int64) {}
func (nopInvalidator) InvalidateEntry(string)              {}

// SetInvalidator registers the FUSE layer's invalidation hooks.
func (s *Store) SetInvalidator(inv Invalidator) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inv = inv
}

func (s *Store) invalidator() Invalidator {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inv == nil {
		return nopInvalidator{}
	}
	return s.inv
}

// Changed returns a channel that is closed at the next change to any
// database: a commit, a database created or deleted.
func (s *Store) Changed() <-chan struct{} {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	return s.changed
}

// notify wakes everyone waiting on Changed.
func (s *Store) notify() {
	s.changeMu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.changeMu.Unlock()
}
