package scenario

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/jackc/pgx/v5"
)

// AlreadyPresent measures the pure control plane: requests for packages
// whose verified copy is already at the destination, so the stager only
// checks the verification record and answers. Nothing here touches the
// archive or writes a package.
func AlreadyPresent() harness.Scenario {
	return harness.Scenario{Name: "already-present", Issue: 17,
		Doc: "N tiny packages (20,000; 4,000 in short mode) are staged once (not measured); then (1) a second set of jobs of 100 " +
			"packages asks for all of them at once: packages/s from the first submit to the last one completed in the ledger; " +
			"(2) a third set is offered at 2,000 packages/s (jobs of 20, 100 jobs/s) for 10 s (2 s in short mode): p50/p99 " +
			"submit → visible and the work queue's growth. Whole pipeline as in control-plane (one stager, 4 workers). " +
			"Targets (issue 17): ≥ 5,000 packages/s; p99 < 250 ms at 2,000/s offered with a flat backlog.",
		Run: runAlreadyPresent, Windowed: true, SmallFiles: true}
}

func runAlreadyPresent(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	const perJob, offeredJobsPerSecond, offeredPerJob = 100, 100, 20
	window := 10 * time.Second
	if env.Short {
		window = 2 * time.Second
	}
	n := int(window.Seconds()) * offeredJobsPerSecond * offeredPerJob
	rate := harness.Row{Name: fmt.Sprintf("already present, %d packages in %d jobs submitted at once, packages/s", n, n/perJob), Ours: true}
	p50 := harness.Row{Name: "at 2,000 packages/s offered: submit → visible completed, p50"}
	p99 := harness.Row{Name: "at 2,000 packages/s offered: submit → visible completed, p99"}
	growth := harness.Row{Name: "at 2,000 packages/s offered: backlog growth, requests/s"}
	final := harness.Row{Name: "at 2,000 packages/s offered: backlog when the offer ends, requests"}
	for r := range env.Repeat {
		dir := filepath.Join(env.WorkDir, fmt.Sprintf("run-%d", r))
		res, err := presentOnce(ctx, env, dir, n, perJob, offeredJobsPerSecond, offeredPerJob)
		env.Discard(dir)
		if err != nil {
			return nil, err
		}
		rate.Samples = append(rate.Samples, res.rate)
		p50.Samples = append(p50.Samples, harness.Percentile(res.latencyMs, 50))
		p99.Samples = append(p99.Samples, harness.Percentile(res.latencyMs, 99))
		if g, last, ok := backlogGrowth(res.depths); ok {
			growth.Samples = append(growth.Samples, g)
			final.Samples = append(final.Samples, last)
		}
		env.Log.Info().Int("run", r+1).Float64("packages_per_s", res.rate).Float64("p99_ms", harness.Percentile(res.latencyMs, 99)).Int("offered_followed", res.followed).Msg("already present")
	}
	return []harness.Table{
		{Title: "Already-present requests: throughput", Unit: "packages/s", Rows: []harness.Row{rate},
			Notes: []string{"no baseline row: the target is absolute (≥ 5,000 packages/s); the control-plane scenario's nats bench rows bound what the broker can carry"}},
		{Title: "Already-present requests at 2,000 packages/s offered", Unit: "see row", LowerIsBetter: true, Rows: []harness.Row{p50, p99, growth, final},
			Notes: []string{"latency from each job's scheduled submit to the ledger's transaction that applied its staging.done (for a package that followed an earlier job's request still in the planner's in-flight table: the later of its job's plan and the followed done; the count is in the log as offered_followed); growth ≈ 0 means the backlog stays flat"}},
	}, nil
}

type presentResult struct {
	rate      float64
	followed  int // offered packages that followed an earlier request
	latencyMs []float64
	depths    []depth
}

func presentOnce(ctx context.Context, env harness.Env, dir string, n, perJob, jobsPerSecond, offeredPerJob int) (presentResult, error) {
	sys, pkgs, err := startTiny(ctx, env, dir, n, nil, 1)
	if err != nil {
		return presentResult{}, err
	}
	defer func() {
		if err := sys.Close(); err != nil {
			env.Log.Warn().Err(err).Msg("close system")
		}
	}()
	if _, err := submitJobs(ctx, sys, "warm", pkgs, perJob, ""); err != nil {
		return presentResult{}, err
	}
	if _, err := waitCompleted(ctx, sys, n, 2*time.Minute); err != nil {
		return presentResult{}, fmt.Errorf("staging the copies first: %w", err)
	}
	stop := env.Profile(fmt.Sprintf("already-present-%s", filepath.Base(dir)))
	start := time.Now()
	presentSent, err := submitJobs(ctx, sys, "present", pkgs, perJob, "")
	if err != nil {
		stop()
		return presentResult{}, err
	}
	end, err := waitCompleted(ctx, sys, 2*n, 2*time.Minute)
	stop()
	if err != nil {
		return presentResult{}, err
	}
	res := presentResult{rate: float64(n) / end.Sub(start).Seconds()}
	if st, err := stageTimes(ctx, sys, presentSent, start); err == nil {
		env.Log.Info().Str("stages", st.String()).Msg("already present, all at once: where the time went")
	}
	reqs, err := sys.JS.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return presentResult{}, err
	}
	sent, depths, err := offer(ctx, sys, reqs, pkgs, "offered", jobsPerSecond, offeredPerJob)
	if err != nil {
		return presentResult{}, err
	}
	if _, err := waitCompleted(ctx, sys, 3*n, 2*time.Minute); err != nil {
		return presentResult{}, err
	}
	if res.latencyMs, err = doneLatencies(ctx, sys, sent); err != nil {
		return presentResult{}, err
	}
	if st, err := stageTimes(ctx, sys, sent, earliest(sent)); err == nil {
		env.Log.Info().Str("stages", st.String()).Msg("already present, offered: where the time went")
	}
	// A package still in the planner's in-flight table when its next job
	// is planned (the planner handles outcomes after the ledger, and the
	// offer follows the ledger's count at once) follows the earlier
	// request instead of getting its own: no staging.done of its own job,
	// visible once both its job's plan and the followed done are applied.
	followed, err := followerLatencies(ctx, sys, sent)
	if err != nil {
		return presentResult{}, err
	}
	res.followed = len(followed)
	res.latencyMs = append(res.latencyMs, followed...)
	if len(res.latencyMs) != n {
		return presentResult{}, fmt.Errorf("ledger has %d staging.done for %d offered packages", len(res.latencyMs), n)
	}
	res.depths = depths
	return res, nil
}

// followerLatencies returns, per offered package completed by following an
// earlier job's request, the time from its job's submit until both that
// job's plan and the followed request's done were applied by the ledger.
func followerLatencies(ctx context.Context, sys *system.System, sent map[string]time.Time) ([]float64, error) {
	conn, err := pgx.Connect(ctx, sys.DBURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT jp.job_id, GREATEST(d.applied_at, p.applied_at)
		FROM job_packages jp
		JOIN event_log d ON d.type = $1 AND d.id = 'done:' || jp.request_id
		JOIN (SELECT job_id, max(applied_at) AS applied_at FROM event_log WHERE type = $2 GROUP BY job_id) p ON p.job_id = jp.job_id
		WHERE jp.status = 'completed' AND d.job_id <> jp.job_id`, event.TypeDone, event.TypePlanned)
	if err != nil {
		return nil, fmt.Errorf("read followers: %w", err)
	}
	defer rows.Close()
	var out []float64
	for rows.Next() {
		var job string
		var at time.Time
		if err := rows.Scan(&job, &at); err != nil {
			return nil, err
		}
		if t, ok := sent[job]; ok {
			out = append(out, float64(at.Sub(t))/float64(time.Millisecond))
		}
	}
	return out, rows.Err()
}
