package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/litefs-project/litefs"
	lhttp "github.com/litefs-project/litefs/http"
)

// DefaultURL is the local node's API when -url is not given.
const DefaultURL = "http://127.0.0.1:20202"

func defaultURL() string {
	if u := os.Getenv("LITEFS_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// runRun implements "litefs run": optionally promote the local node, then
// run a command.
func runRun(args []string) error {
	fs := flag.NewFlagSet("litefs run", flag.ContinueOnError)
	var node apiFlags
	node.register(fs, "the local node's API")
	url := &node.url
	promote := fs.Bool("promote", false, "make this node the primary by handoff before running the command")
	ifCandidate := fs.Bool("if-candidate", false, "do nothing unless this node is a candidate")
	var withLock string
	fs.StringVar(&withLock, "with-lock", "", "run the command holding the HALT lock on the database at this path in the mount")
	fs.StringVar(&withLock, "with-halt-lock-on", "", "same as -with-lock (LiteFS's spelling)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: litefs run [flags] [-- CMD ARGS...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if !*promote && len(argv) == 0 {
		return errors.New("run: nothing to do: give -promote or a command after --")
	}
	if withLock != "" && len(argv) == 0 {
		return errors.New("run: -with-lock needs a command after --")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	api, err := node.client()
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}

	if *ifCandidate {
		info, err := api.Info(ctx, *url)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		if !info.Candidate {
			fmt.Fprintln(os.Stderr, "litefs run: this node is not a candidate; skipping")
			return nil
		}
	}
	if *promote {
		start := time.Now()
		info, err := api.Promote(ctx, *url, lhttp.PromoteRequest{})
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		fmt.Fprintf(os.Stderr, "litefs run: %s is the primary (%s)\n", info.Hostname, time.Since(start).Round(time.Millisecond))
	}
	if len(argv) == 0 {
		return nil
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if withLock != "" {
		start := time.Now()
		lock, err := litefs.Halt(withLock)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		defer litefs.Unhalt(lock)
		fmt.Fprintf(os.Stderr, "litefs run: HALT lock on %s held (%s)\n", withLock, time.Since(start).Round(time.Millisecond))
	}
	status, err := runChild(argv, sigs, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return fmt.Errorf("run %s: %w", argv[0], err)
	}
	if status != 0 {
		return exitError{code: status}
	}
	return nil
}

// runDemote implements "litefs demote": the local primary hands the lease
// to a caught-up candidate.
func runDemote(args []string) error {
	fs := flag.NewFlagSet("litefs demote", flag.ContinueOnError)
	var node apiFlags
	node.register(fs, "the local node's API")
	if err := fs.Parse(args); err != nil {
		return err
	}
	api, err := node.client()
	if err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := api.Demote(ctx, node.url)
	if err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	fmt.Printf("%s is the primary\n", info.Hostname)
	return nil
}
