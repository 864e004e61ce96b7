package http

import (
	"errors"
	"io"
	"net/http"
	"os"

	"github.com/litefs-project/litefs/store"
)

// GET /export?name=DB streams a consistent copy of a database as a plain
// SQLite file, from a pinned view: writers keep going meanwhile. The
// X-Litefs-Pos header names the position it is at.
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
	if _, err := snap.WriteDatabase(w); err != nil {
		s.logger.Warn("export", "db", name, "err", err)
	}
}

// POST /import?name=DB replaces or creates a database on the primary with
// the SQLite file in the body, validated first.
func (s *Server) handleImport(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if err := store.ValidateName(name); err != nil {
		writeError(w, http.StatusBadRequest, "import: %v", err)
		return
	}
	if !s.opts.IsPrimary() {
		writeError(w, http.StatusServiceUnavailable, "import: this node is not the primary")
		return
	}
	tmp, err := os.CreateTemp(s.store.Dir(), ".upload-*")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "import: %v", err)
		return
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, r.Body); err != nil {
		writeError(w, http.StatusBadRequest, "import: read upload: %v", err)
		return
	}
	if s.opts.ValidateImport != nil {
		if err := s.opts.ValidateImport(tmp.Name()); err != nil {
			s.logger.Warn("import refused", "db", name, "err", err)
			writeError(w, http.StatusUnprocessableEntity, "import of %s refused: %v", name, err)
			return
		}
	}
	pos, err := s.store.Import(r.Context(), name, tmp.Name())
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, "%v", err)
		return
	}
	WriteJSON(w, http.StatusOK, struct {
		Pos string `json:"pos"`
	}{pos.String()})
}
