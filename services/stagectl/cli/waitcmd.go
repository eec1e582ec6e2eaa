package cli

import (
	"context"
	"fmt"
	"time"
)

// runWait follows a job submitted earlier (by stagectl or anyone else) as
// submit --wait does, with the same output and exit codes.
func runWait(ctx context.Context, e *env, args []string) error {
	var o waitOpts
	fs := newFlagSet("stagectl wait", e.stderr)
	fs.DurationVar(&o.timeout, "timeout", 0, "give up after this long (exit 6); 0 waits forever")
	fs.DurationVar(&o.poll, "poll", time.Second, "how often to ask the ledger")
	fs.BoolVar(&o.plain, "plain", false, "plain progress lines even on a terminal")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl wait JOB [--timeout D] [--poll D] [--plain] [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("wait takes exactly one job id")
	}
	if o.poll <= 0 {
		return usagef("--poll must be positive")
	}
	return wait(ctx, e, pos[0], o)
}
