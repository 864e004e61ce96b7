package http

import (
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"

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

// POST /import?name=DB&epoch=N replaces or creates a database on the
// primary with the SQLite file in the body, validated first. N is the term
// the client found the primary in (GET /info): an import meant for one
// primary is never applied by another.
func (s *Server) handleImport(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if err := store.ValidateName(name); err != nil {
		writeError(w, http.StatusBadRequest, "import: %v", err)
		return
	}
	epoch, err := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "import: want ?epoch=N, the primary's epoch from GET /info")
		return
	}
	term := s.currentTerm(w)
	if term == nil {
		return
	}
	if err := term.Admit(epoch); err != nil {
		writeError(w, termStatus(err), "import: %v", err)
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
	pos, err := term.Import(r.Context(), epoch, name, tmp.Name())
	if err != nil {
		code := termStatus(err)
		if code == http.StatusBadRequest {
			code = http.StatusUnprocessableEntity
		}
		writeError(w, code, "%v", err)
		return
	}
	WriteJSON(w, http.StatusOK, struct {
		Pos string `json:"pos"`
	}{pos.String()})
}
