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
)

// runExport implements "litefs export -name DB PATH".
func runExport(args []string) error {
	fs := flag.NewFlagSet("litefs export", flag.ContinueOnError)
	name := fs.String("name", "", "database to export")
	u := fs.String("url", defaultURL(), "the local node's API (or $LITEFS_URL)")
	if err := fs.Parse(args); err != nil {
		return err
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
	resp, err := lhttp.NewAPIClient().HTTP.Do(req)
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
	n, err := io.Copy(tmp, resp.Body)
	if err == nil {
		err = tmp.Sync()
	}
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
	u := fs.String("url", defaultURL(), "the local node's API (or $LITEFS_URL); must be the primary")
	if err := fs.Parse(args); err != nil {
		return err
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
	api := lhttp.NewAPIClient()
	info, err := api.Info(ctx, *u)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if !info.IsPrimary {
		return fmt.Errorf("import: %s is not the primary (the primary is %q at %s)", *u, info.Primary, info.PrimaryURL)
	}
	pos, err := api.Import(ctx, *u, *name, info.Epoch, f)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	out := struct{ Pos string }{pos}
	fmt.Fprintf(os.Stderr, "imported %s as %s, now at %s\n", fs.Arg(0), *name, out.Pos)
	return nil
}
