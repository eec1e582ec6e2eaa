// Command planner runs the ccat-staging planner: see README.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "planner: %v\n", err)
		os.Exit(1)
	}
}

// run is main with the process's surroundings passed in, so a test can run
// the real command and stop it by cancelling ctx.
func run(ctx context.Context, _ []string, getenv func(string) string, _, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := logx.New(stderr, getenv(config.LogLevel), getenv(config.LogFormat), "planner")
	cfg, err := planner.ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	// SIGHUP reloads the topology file, as operators expect of a daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default: // a reload is already queued
				}
			}
		}
	}()
	cfg.Reload = reload
	return planner.Run(ctx, cfg, log)
}
