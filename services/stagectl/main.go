// Command stagectl is the operator's and scientist's client of ccat-staging:
// it submits, follows, explains, cancels and releases staging jobs, announces
// archived packages and audits staged copies. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ccatobs/ccat-staging/services/stagectl/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
