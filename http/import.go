package http

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/litefs-project/litefs/internal/sqlite"
	"github.com/litefs-project/litefs/store"
)

// POST /import?name=DB&epoch=N replaces or creates a database on the
// primary with the SQLite file in the body, validated first. N is the term
// the client found the primary in (GET /info): an import meant for one
// primary is never applied by another.
//
// The upload is checked as it arrives, before it costs disk: a declared
// length over MaxImportSize is refused with 413 before a byte is read; the
// SQLite header, read first, gives the database's exact size (page size x
// page count), and an upload of any other size is refused with 400 (a
// declared length at once, an undeclared one as soon as it runs past that
// size). Nothing reaches the store before the whole upload is in. The
// store then validates it (ValidateImport, 422 if refused) while it
// checksums its pages, and changes nothing unless it passed; the file
// becomes the database file, or is removed whatever happens.
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
	limit := s.opts.MaxImportSize
	if r.ContentLength > limit {
		refuseUpload(w, http.StatusRequestEntityTooLarge, "import: the upload is %d bytes, over this node's limit of %d bytes (http.max-import-size)", r.ContentLength, limit)
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

	body := http.MaxBytesReader(w, r.Body, limit)
	hdr := make([]byte, sqlite.HeaderSize)
	if n, err := io.ReadFull(body, hdr); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		writeError(w, http.StatusBadRequest, "import: not a SQLite database: the upload is only %d bytes", n)
		return
	} else if err != nil {
		uploadError(w, err)
		return
	}
	h, err := sqlite.ParseDBHeader(hdr)
	if err != nil {
		refuseUpload(w, http.StatusBadRequest, "import: %v", err)
		return
	}
	pageN, ok := h.InHeaderPageN()
	if !ok {
		refuseUpload(w, http.StatusBadRequest, "import: the SQLite header's database size is not valid (the file was last written by SQLite before 3.7.0); VACUUM it with a current SQLite first")
		return
	}
	want := int64(h.PageSize) * int64(pageN)
	shape := fmt.Sprintf("%d bytes (%d pages of %d bytes)", want, pageN, h.PageSize)
	if want > limit {
		refuseUpload(w, http.StatusRequestEntityTooLarge, "import: the database is %s by its SQLite header, over this node's limit of %d bytes (http.max-import-size)", shape, limit)
		return
	}
	if r.ContentLength >= 0 && r.ContentLength != want {
		refuseUpload(w, http.StatusBadRequest, "import: the upload is %d bytes, but its SQLite header declares a database of %s", r.ContentLength, shape)
		return
	}

	tmp, err := os.CreateTemp(s.store.Dir(), ".upload-*")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "import: %v", err)
		return
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.Write(hdr); err != nil {
		writeError(w, http.StatusInternalServerError, "import: %v", err)
		return
	}
	// One byte more than the header declares tells a longer upload apart.
	// Copied 1 MiB at a time: with io.Copy's 32 KiB, a large upload costs
	// twice the system calls.
	n, err := io.CopyBuffer(writerOnly{tmp}, io.LimitReader(body, want-int64(len(hdr))+1), make([]byte, 1<<20))
	if err != nil {
		uploadError(w, err)
		return
	}
	switch got := int64(len(hdr)) + n; {
	case got > want:
		refuseUpload(w, http.StatusBadRequest, "import: the upload is longer than the database of %s its SQLite header declares", shape)
		return
	case got < want:
		writeError(w, http.StatusBadRequest, "import: the upload is %d bytes, but its SQLite header declares a database of %s", got, shape)
		return
	}
	// The store validates the file while it checksums its pages, and
	// takes the file as the new database file rather than copy it.
	pos, err := term.ImportFile(r.Context(), epoch, name, tmp.Name(), store.ImportOptions{
		Validate: s.opts.ValidateImport,
		Take:     true,
	})
	var refused *store.ImportRefusedError
	if errors.As(err, &refused) {
		writeError(w, http.StatusUnprocessableEntity, "import of %s refused: %v", name, refused.Err)
		return
	}
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

// refuseUpload answers an upload refused before its end: the rest of the
// body is not read, so the connection is not reused.
func refuseUpload(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Connection", "close")
	writeError(w, code, format, args...)
}

// uploadError answers an upload that could not be read to its end.
func uploadError(w http.ResponseWriter, err error) {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		refuseUpload(w, http.StatusRequestEntityTooLarge, "import: the upload is over this node's limit of %d bytes (http.max-import-size)", tooLarge.Limit)
	case errors.Is(err, errBodyTooSlow):
		refuseUpload(w, http.StatusRequestTimeout, "import: %v", err)
	default:
		refuseUpload(w, http.StatusBadRequest, "import: read upload: %v", err)
	}
}

// writerOnly hides a file's ReadFrom, which would copy through a buffer
// of its own choosing.
type writerOnly struct{ io.Writer }
