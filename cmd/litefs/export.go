package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	lhttp "github.com/litefs-project/litefs/http"
	"github.com/litefs-project/litefs/internal/sqlite"
)

// runExport implements "litefs export -name DB PATH".
func runExport(args []string) error {
	fs := flag.NewFlagSet("litefs export", flag.ContinueOnError)
	name := fs.String("name", "", "database to export")
	var node apiFlags
	node.register(fs, "the local node's API")
	u := &node.url
	if err := fs.Parse(args); err != nil {
		return err
	}
	api, err := node.client()
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if *name == "" || fs.NArg() != 1 {
		return errors.New("export: usage: litefs export -name DB PATH")
	}
	path := fs.Arg(0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *u+"/export?name="+url.QueryEscape(*name), nil)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	resp, err := api.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer resp.Body.Close()
	if err := lhttp.CheckResponse(resp); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".litefs-export-*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer os.Remove(tmp.Name())
	prog := startProgress(os.Stderr, "export", resp.ContentLength)
	n, err := io.Copy(tmp, prog.Reader(resp.Body))
	if err == nil {
		err = tmp.Sync()
	}
	prog.Stop()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(os.Stderr, "exported %s at %s to %s (%d bytes)\n", *name, resp.Header.Get("X-Litefs-Pos"), path, n)
	return nil
}

// runImport implements "litefs import -name DB PATH".
func runImport(args []string) error {
	fs := flag.NewFlagSet("litefs import", flag.ContinueOnError)
	name := fs.String("name", "", "database to replace or create")
	var node apiFlags
	node.register(fs, "the local node's API; must be the primary")
	u := &node.url
	if err := fs.Parse(args); err != nil {
		return err
	}
	api, err := node.client()
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if *name == "" || fs.NArg() != 1 {
		return errors.New("import: usage: litefs import -name DB PATH")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	// The import is for the term the primary is in now: if the primary
	// changes before the upload is in, it is refused rather than applied
	// elsewhere.
	info, err := api.Info(ctx, *u)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if !info.IsPrimary {
		return fmt.Errorf("import: %s is not the primary (the primary is %q at %s)", *u, info.Primary, info.PrimaryURL)
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if err := checkImportFile(f, st.Size()); err != nil {
		return fmt.Errorf("import: %s: %w", fs.Arg(0), err)
	}
	// On a terminal, a long upload shows how far it is. Otherwise the file
	// goes as it is, which lets the kernel send it without copying.
	prog := startProgress(os.Stderr, "import", st.Size())
	prog.After("the primary validates and applies it")
	pos, err := api.Import(ctx, *u, *name, info.Epoch, prog.Reader(f), st.Size())
	prog.Stop()
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	out := struct{ Pos string }{pos}
	fmt.Fprintf(os.Stderr, "imported %s as %s, now at %s\n", fs.Arg(0), *name, out.Pos)
	return nil
}

// checkImportFile refuses, before anything is sent, a file the primary
// would refuse for its shape: one that is not a SQLite database, or whose
// size is not the one its header declares. The primary checks again.
func checkImportFile(f *os.File, size int64) error {
	hdr := make([]byte, sqlite.HeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return fmt.Errorf("not a SQLite database: it is only %d bytes", size)
	}
	h, err := sqlite.ParseDBHeader(hdr)
	if err != nil {
		return err
	}
	if pageN, ok := h.InHeaderPageN(); ok {
		if want := int64(h.PageSize) * int64(pageN); want != size {
			return fmt.Errorf("the file is %d bytes, but its SQLite header declares a database of %d bytes (%d pages of %d bytes)", size, want, pageN, h.PageSize)
		}
	}
	return nil
}
