package scenario

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
)

// ScaleOut is issue scenario 8: the control-plane workload with 1, 2 and 4
// stager instances of one site.
func ScaleOut() harness.Scenario {
	return harness.Scenario{Name: "scale-out", Issue: 8,
		Doc: "The control-plane workload (tiny packages; 5,000 in 50 jobs, 400 in 4 jobs in short mode) with 1, 2 and 4 stager " +
			"instances (4 workers each) sharing the site's durable consumers; everything else as in control-plane. " +
			"The ratio column is the speed-up over one instance.",
		Run: runScaleOut, SmallFiles: true}
}

func runScaleOut(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	// 5,000 rather than control-plane's 20,000 in full mode: three sizes
	// times three runs of 20,000 would take most of an hour on 2 cores.
	jobs, perJob := 50, 100
	if env.Short {
		jobs = 4
	}
	counts := []int{1, 2, 4}
	rows := make([]harness.Row, len(counts))
	for i, n := range counts {
		rows[i] = harness.Row{Name: fmt.Sprintf("%d stager instance(s)", n), Ours: i == 0}
	}
	for r := range env.Repeat {
		for i, n := range counts {
			dir := filepath.Join(env.WorkDir, fmt.Sprintf("run-%d-%d", r, n))
			rate, err := tinyRate(ctx, env, dir, jobs, perJob, n)
			if err != nil {
				return nil, fmt.Errorf("%d instances: %w", n, err)
			}
			rows[i].Samples = append(rows[i].Samples, rate)
			env.Log.Info().Int("run", r+1).Int("instances", n).Float64("packages_per_s", rate).Msg("scale-out")
		}
	}
	return []harness.Table{{Title: fmt.Sprintf("Scale-out, %d tiny packages", jobs*perJob), Unit: "packages/s",
		LowerIsBetter: true, Rows: rows,
		Notes: []string{"all instances run in one process on the same 2 cores as planner, ledger, JetStream and PostgreSQL, so this shows contention as much as scaling"}}}, nil
}

// tinyRate runs one control-plane pass with the given number of stager
// instances and returns packages/s from first submit to last completed.
func tinyRate(ctx context.Context, env harness.Env, dir string, jobs, perJob, stagers int) (float64, error) {
	sys, pkgs, err := startTiny(ctx, env, dir, jobs*perJob, nil, stagers)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err := sys.Close(); err != nil {
			env.Log.Warn().Err(err).Msg("close system")
		}
		env.Discard(dir)
	}()
	start := time.Now()
	if _, err := submitJobs(ctx, sys, "so", pkgs, perJob, ""); err != nil {
		return 0, err
	}
	end, err := waitCompleted(ctx, sys, len(pkgs), 2*time.Minute)
	if err != nil {
		return 0, err
	}
	return float64(len(pkgs)) / end.Sub(start).Seconds(), nil
}
