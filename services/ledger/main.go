// Command ledger projects ccat-staging's events into PostgreSQL and serves
// the read API. "ledger rebuild" drops the projection and replays the streams.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ccatobs/ccat-staging/services/ledger/ledger"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "ledger: %v\n", err)
		os.Exit(1)
	}
}

// run is main with the process's surroundings passed in.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := logx.New(stderr, getenv(config.LogLevel), getenv(config.LogFormat), "ledger")
	cfg, err := ledger.ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	cfg.Version = version
	cmd := ""
	if len(args) > 1 {
		cmd = args[1]
	}
	switch cmd {
	case "", "serve":
		return ledger.Run(ctx, cfg, log)
	case "rebuild":
		st, err := ledger.Rebuild(ctx, cfg, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rebuilt the ledger from %d messages in %s\n", st.Messages, st.Took.Round(1e6))
		return nil
	default:
		return fmt.Errorf("unknown command %q (want serve or rebuild)", cmd)
	}
}
