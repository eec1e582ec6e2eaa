package stager

import (
	"context"
	"net"

	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/rs/zerolog"
)

// WithBackend makes every archive location of cfg read through b.
func WithBackend(cfg Config, b archive.Backend) Config {
	cfg.openBackend = func(topology.Location, archive.Credentials) (archive.Backend, error) { return b, nil }
	return cfg
}

// RunReady is Run that reports the HTTP listener's address.
func RunReady(ctx context.Context, cfg Config, log zerolog.Logger, ready func(net.Addr)) error {
	return run(ctx, cfg, log, ready)
}

// WithTestHold sets the test hook directory (STAGER_TEST_HOLD_DIR).
func WithTestHold(cfg Config, dir string) Config {
	cfg.testHold = dir
	return cfg
}
