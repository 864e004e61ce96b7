// Command litefs mounts a FUSE filesystem of replicated SQLite databases.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/litefs-project/litefs/internal/config"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "development"

func main() {
	os.Exit(run(os.Args[1:]))
}

// exitError carries a process exit status out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func run(args []string) int {
	if len(args) == 0 {
		printUsage(os.Stderr)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "mount":
		err = runMount(rest)
	case "log":
		err = runLog(rest)
	case "run":
		err = runRun(rest)
	case "demote":
		err = runDemote(rest)
	case "export":
		err = runExport(rest)
	case "import":
		err = runImport(rest)
	case "version":
		fmt.Println("litefs", Version)
	case "help", "-h", "-help", "--help":
		printUsage(os.Stdout)
	default:
		fmt.Fprintf(os.Stderr, "litefs: unknown command %q\n\n", cmd)
		printUsage(os.Stderr)
		return 2
	}

	var exit exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.code
	case errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintln(os.Stderr, "litefs:", err)
		return 1
	}
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `litefs is a FUSE filesystem of replicated SQLite databases.

Usage:

	litefs <command> [arguments]

Commands:

	mount     mount the filesystem, join the cluster, run the application
	run       promote this node (-promote), then run a command
	demote    hand the primary's lease to a caught-up candidate
	export    write a consistent copy of a database to a file
	import    replace or create a database on the primary from a file
	log       list a database's changesets
	version   print the version

Run "litefs <command> -h" for a command's flags.
`)
}

// newLogger builds the daemon's logger from the log settings.
func newLogger(c config.LogConfig, w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if c.Debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 && !c.Timestamp {
				return slog.Attr{}
			}
			return a
		},
	}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
