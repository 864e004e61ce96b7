package store

import (
	"fmt"
	"os"
)

// pageStage holds copies of pages, in memory up to a limit and in a
// temporary file beyond it, so that memory stays bounded however many
// pages are staged.
type pageStage struct {
	dir      string
	pageSize uint32
	limit    int // pages kept in memory

	mem  map[uint32][]byte
	file *os.File
	offs map[uint32]int64 // pgno -> offset in file
	end  int64
}

func newPageStage(dir string, pageSize uint32, memBytes int) *pageStage {
	return &pageStage{
		dir:      dir,
		pageSize: pageSize,
		limit:    max(memBytes/int(pageSize), 1),
		mem:      make(map[uint32][]byte),
		offs:     make(map[uint32]int64),
	}
}

// Has reports whether pgno is staged.
func (s *pageStage) Has(pgno uint32) bool {
	if _, ok := s.mem[pgno]; ok {
		return true
	}
	_, ok := s.offs[pgno]
	return ok
}

// Put stages a copy of data as pgno, unless pgno is already staged.
func (s *pageStage) Put(pgno uint32, data []byte) error {
	if s.Has(pgno) {
		return nil
	}
	if len(s.mem) < s.limit {
		s.mem[pgno] = append([]byte(nil), data...)
		return nil
	}
	if s.file == nil {
		f, err := os.CreateTemp(s.dir, ".stage-*")
		if err != nil {
			return fmt.Errorf("create page stage: %w", err)
		}
		os.Remove(f.Name()) // the open descriptor keeps it until closed
		s.file = f
	}
	if _, err := s.file.WriteAt(data, s.end); err != nil {
		return fmt.Errorf("stage page %d: %w", pgno, err)
	}
	s.offs[pgno] = s.end
	s.end += int64(len(data))
	return nil
}

// Get copies staged pgno into buf and reports whether it was staged.
func (s *pageStage) Get(pgno uint32, buf []byte) (bool, error) {
	if data, ok := s.mem[pgno]; ok {
		copy(buf, data)
		return true, nil
	}
	off, ok := s.offs[pgno]
	if !ok {
		return false, nil
	}
	if _, err := s.file.ReadAt(buf, off); err != nil {
		return true, fmt.Errorf("read staged page %d: %w", pgno, err)
	}
	return true, nil
}

// Drop forgets pgno; its space in the file is not reused.
func (s *pageStage) Drop(pgno uint32) {
	delete(s.mem, pgno)
	delete(s.offs, pgno)
}

// Close releases the temporary file.
func (s *pageStage) Close() error {
	s.mem, s.offs = nil, nil
	if s.file != nil {
		return s.file.Close()
	}
	return nil
}
