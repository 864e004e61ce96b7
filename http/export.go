package http

import (
	"errors"
	"net/http"

	"github.com/litefs-project/litefs/store"
)

// GET /export?name=DB streams a consistent copy of a database as a plain
// SQLite file, from a pinned view: writers keep going meanwhile. The
// X-Litefs-Pos header names the position it is at.
//
// The view holds the pages writers overwrite until they are sent (in a
// hidden temporary file beyond a few MiB), so a client must keep reading:
// each write has ExportWriteTimeout, after which the export is aborted and
// the view released.
func (s *Server) handleExport(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	db := s.store.DB(name)
	if db == nil {
		writeError(w, http.StatusNotFound, "export: no database %q on this node", name)
		return
	}
	snap, err := db.OpenSnapshot()
	if errors.Is(err, store.ErrEmpty) {
		writeError(w, http.StatusNotFound, "export: database %q has no committed transaction", name)
		return
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, "export: %v", err)
		return
	}
	defer snap.Close()
	w.Header().Set("Content-Type", "application/vnd.sqlite3")
	w.Header().Set("X-Litefs-Pos", snap.Pos().String())
	dw := newDeadlineWriter(w, http.NewResponseController(w), s.opts.ExportWriteTimeout)
	n, err := snap.WriteDatabase(dw)
	if err == nil {
		err = dw.Flush()
	}
	if err != nil {
		s.logger.Warn("export aborted; its snapshot is released", "db", name, "peer", r.RemoteAddr, "bytes", n, "write_timeout", s.opts.ExportWriteTimeout.String(), "err", err)
	}
}
