package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/litefs-project/litefs/internal/config"
	"github.com/litefs-project/litefs/ltx"
)

// runLog prints the changesets in a database's log. It reads the data
// directory directly, read-only, so it works whether or not the node runs.
func runLog(args []string) error {
	fs := flag.NewFlagSet("litefs log", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file to read data.dir from (default: the usual search)")
	dataDir := fs.String("data-dir", "", "data directory (overrides the config file)")
	name := fs.String("name", "", "database name (required)")
	limit := fs.Int("n", 20, "show the newest n changesets; 0 for all")
	verify := fs.Bool("verify", false, "decode every changeset and check its file checksum")
	replay := fs.String("replay", "", "rebuild the database from its changesets into this file, verifying every one")
	upTo := fs.Uint64("txid", 0, "with -replay, stop after this transaction (default: the newest)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: litefs log -name DB [flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		fs.Usage()
		return errors.New("-name is required")
	}
	if *dataDir == "" {
		cfg, _, err := config.Load(*configPath, true)
		if err != nil {
			return err
		}
		*dataDir = cfg.Data.Dir
	}

	dir := filepath.Join(*dataDir, "dbs", *name, "log")
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("database %q: no changeset log in %s", *name, *dataDir)
	}
	l, err := ltx.OpenLog(dir, ltx.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer l.Close()
	if *replay != "" {
		return replayLog(l, *replay, ltx.TXID(*upTo))
	}

	base, pos := l.Base(), l.Pos()
	fmt.Printf("database %s: position %s, changesets %s..%s\n\n", *name, pos, base.TXID+1, pos.TXID)
	first := base.TXID + 1
	if *limit > 0 && pos.TXID >= ltx.TXID(*limit) && pos.TXID-ltx.TXID(*limit)+1 > first {
		first = pos.TXID - ltx.TXID(*limit) + 1
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TXID\tTIME\tDB PAGES\tPAGE SIZE\tBYTES\tPRE-APPLY\tPOST-APPLY")
	r := l.NewReader()
	defer r.Close()
	for txid := first; txid <= pos.TXID; txid++ {
		info, sr, err := r.Read(txid)
		if err != nil {
			return err
		}
		if *verify {
			if _, _, err := ltx.Verify(sr); err != nil {
				return fmt.Errorf("changeset %s: %w", txid, err)
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\t%s\n", txid,
			time.UnixMilli(info.Header.Timestamp).UTC().Format(time.RFC3339Nano),
			info.Header.Commit, info.Header.PageSize, info.Size,
			info.Header.PreApplyChecksum, info.Trailer.PostApplyChecksum)
	}
	return w.Flush()
}

// replayLog rebuilds a database file from a log.
func replayLog(l *ltx.Log, path string, upTo ltx.TXID) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	pos, err := l.Replay(f, upTo)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	fmt.Printf("rebuilt %s at position %s\n", path, pos)
	return nil
}
