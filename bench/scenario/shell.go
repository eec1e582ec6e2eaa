// Package scenario holds the benchmark scenarios of issue 7, each measuring
// ccat-staging and its baselines in the same run.
package scenario

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
)

// All lists every scenario in the order they run by default.
func All() []harness.Scenario {
	return []harness.Scenario{BytesDisk(), BytesS3(), BytesS3LongLink(), ControlPlane(), Latency(), AlreadyPresent(), Projection(), API(), Backlog(), ScaleOut()}
}

// sh runs a shell command line and returns its wall time. Baselines are
// shell pipelines on purpose: they are what an operator would type.
func sh(ctx context.Context, script string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, "sh", "-ec", script)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = nil, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("%s: %w: %s", script, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return took, nil
}

// syncAll flushes every dirty page of the machine, so each variant pays for
// its own writeback and not for the previous one's.
func syncAll(ctx context.Context) error {
	_, err := sh(ctx, "sync")
	return err
}

// prepareCache either drops the page cache (cold) or reads src once (warm)
// before a timed run. Dropping needs root; the caller reports which was done.
func prepareCache(ctx context.Context, src string, cold bool) error {
	if err := syncAll(ctx); err != nil {
		return err
	}
	if cold {
		return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
	}
	_, err := sh(ctx, "cat "+quote(src)+" > /dev/null")
	return err
}

// quote single-quotes s for sh.
func quote(s string) string {
	out := []byte{'\''}
	for _, c := range []byte(s) {
		if c == '\'' {
			out = append(out, []byte(`'\''`)...)
			continue
		}
		out = append(out, c)
	}
	return string(append(out, '\''))
}

// mbps converts bytes over a duration to MB/s (10^6 bytes).
func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }
