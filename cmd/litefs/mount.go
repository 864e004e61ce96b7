package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/litefs-project/litefs/internal/config"
)

// unmountTimeout is how long shutdown waits for a busy mount to be released
// before detaching it lazily.
const unmountTimeout = 10 * time.Second

func runMount(args []string) error {
	fs := flag.NewFlagSet("litefs mount", flag.ContinueOnError)
	configPath := fs.String("config", "", "path to the config file (default: ./litefs.yml, $HOME/litefs.yml, /etc/litefs.yml)")
	noExpandEnv := fs.Bool("no-expand-env", false, "do not expand $VAR and ${VAR} in the config file")
	fuseDebug := fs.Bool("fuse.debug", false, "log every FUSE request")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: litefs mount [flags] [-- command args...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}

	if os.Getenv("HOSTNAME") == "" {
		if host, err := os.Hostname(); err == nil {
			os.Setenv("HOSTNAME", host)
		}
	}
	cfg, path, err := config.Load(*configPath, !*noExpandEnv)
	if err != nil {
		return err
	}
	// Symbolic links are followed only here, at start-up and before
	// anything is created or mounted.
	if err := cfg.ValidateDirs(); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if *fuseDebug {
		cfg.FUSE.Debug = true
	}
	logger := newLogger(cfg.Log, os.Stderr)
	logger.Info("config file read", "path", path)

	var cmds []command
	if argv := fs.Args(); len(argv) > 0 {
		cmds = []command{{argv: argv}}
	} else if cmds, err = parseExec(cfg.Exec, cfg.Lease.Candidate); err != nil {
		return err
	}

	// Signals go to the application once it runs, so watch them directly.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	d := &daemon{cfg: cfg, logger: logger}
	if err := d.open(ctx); err != nil {
		if !cfg.ExitOnError {
			return stayUp(err, sigs, logger)
		}
		return err
	}
	var runErr error
	if d.waitReady(sigs, cfg.SkipSync) {
		runErr = runCommands(cmds, sigs, logger)
		if runErr != nil && !cfg.ExitOnError {
			runErr = stayUp(runErr, sigs, logger)
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unmountTimeout+gracefulHandoffTimeout)
	defer cancel()
	if err := d.close(shutdownCtx); err != nil {
		logger.Error("shutdown", "err", err)
		if runErr == nil {
			runErr = err
		}
	}
	return runErr
}

// stayUp keeps litefs running after its start-up or its application
// failed, until a signal, so that an operator can look at the machine
// rather than watch it restart (exit-on-error: false). It returns err.
func stayUp(err error, sigs <-chan os.Signal, logger *slog.Logger) error {
	logger.Error("exit-on-error is false: staying up until SIGINT or SIGTERM", "err", err)
	sig := <-sigs
	logger.Info("signal received, shutting down", "signal", sig.String())
	return err
}

// waitReady waits until the node is primary or caught up with the primary
// before the application starts, unless skip-sync is set. It returns false
// if a signal asked litefs to stop first.
func (d *daemon) waitReady(sigs <-chan os.Signal, skip bool) bool {
	if skip {
		return true
	}
	select {
	case <-d.node.Ready():
		return true
	case <-time.After(time.Second):
		d.logger.Info("waiting to be primary or in sync with the primary before starting the application")
	}
	select {
	case <-d.node.Ready():
		return true
	case sig := <-sigs:
		d.logger.Info("signal received, shutting down", "signal", sig.String())
		return false
	}
}

// command is one program to run once the filesystem is mounted.
type command struct {
	argv []string
}

// parseExec turns the "exec" setting into commands, dropping the ones
// marked if-candidate on a node that is not a candidate.
func parseExec(list config.ExecConfigs, candidate bool) ([]command, error) {
	var cmds []command
	for _, e := range list {
		if e.IfCandidate && !candidate {
			continue
		}
		argv, err := splitCommand(e.Cmd)
		if err != nil {
			return nil, fmt.Errorf("exec %q: %w", e.Cmd, err)
		}
		if len(argv) > 0 {
			cmds = append(cmds, command{argv: argv})
		}
	}
	return cmds, nil
}

// runCommands runs every command but the last to completion, then the last
// one as the application: SIGINT and SIGTERM are forwarded to it and its
// exit status becomes litefs's. Without commands it waits for a signal.
func runCommands(cmds []command, sigs <-chan os.Signal, logger *slog.Logger) error {
	if len(cmds) == 0 {
		sig := <-sigs
		logger.Info("signal received, shutting down", "signal", sig.String())
		return nil
	}
	for i, c := range cmds {
		last := i == len(cmds)-1
		logger.Info("starting command", "cmd", c.argv)
		status, err := runChild(c.argv, sigs, logger)
		if err != nil {
			return fmt.Errorf("run %q: %w", c.argv[0], err)
		}
		if last {
			logger.Info("command exited", "cmd", c.argv[0], "status", status)
			if status != 0 {
				return exitError{code: status}
			}
			return nil
		}
		if status != 0 {
			return fmt.Errorf("command %q exited with status %d", c.argv[0], status)
		}
	}
	return nil
}

// runChild starts argv, forwards SIGINT and SIGTERM delivered to litefs
// until it exits, and returns its exit status.
func runChild(argv []string, sigs <-chan os.Signal, logger *slog.Logger) (int, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var err error
	for waiting := true; waiting; {
		select {
		case err = <-exited:
			waiting = false
		case sig := <-sigs:
			logger.Info("forwarding signal to command", "signal", sig.String(), "pid", cmd.Process.Pid)
			_ = cmd.Process.Signal(sig)
		}
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return exit.ExitCode(), nil
	}
	return 0, err
}
