// Command ccat-provision creates the streams, buckets and consumers a
// clustered ccat-staging deployment shares, with admin credentials, before
// the services start (docs/deployment.md, "Provisioning").
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ccatobs/ccat-staging/deploy/provision"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ccat-provision:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, _ []string, getenv func(string) string, _, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := logx.New(stderr, getenv(config.LogLevel), getenv(config.LogFormat), "provision")
	cfg, err := provision.ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	return provision.Run(ctx, cfg, log)
}
