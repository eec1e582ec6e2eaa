// Command stager stages telescope data packages for one site: see README.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

// version is set at link time (-ldflags "-X main.version=…"); otherwise the
// module version or VCS revision from the build info is used.
var version = ""

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "stager:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := logx.New(stderr, getenv(config.LogLevel), getenv(config.LogFormat), "stager")
	cfg, err := stager.ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	cfg.Version = buildVersion()
	return stager.Run(ctx, cfg, log)
}

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return bi.Main.Version
}
