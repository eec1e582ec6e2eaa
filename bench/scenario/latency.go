package scenario

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Latency is issue scenario 2: a steady offered load, and whether the
// pipeline keeps up with it.
func Latency() harness.Scenario {
	return harness.Scenario{Name: "latency", Issue: 2,
		Doc: "1,000 tiny packages/s offered for 60 s (2 s in short mode) as jobs of 10 packages submitted on a fixed schedule " +
			"(100 jobs/s), whole pipeline as in control-plane. Latency is from each job's scheduled submit to its packages' " +
			"staging.done applied by the ledger; the work-queue depth (STAGING_REQUESTS messages) is sampled every second while " +
			"the load is offered: a flat backlog means the pipeline keeps up.",
		Run: runLatency, SmallFiles: true}
}

func runLatency(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	const jobsPerSecond, perJob = 100, 10
	window := 60 * time.Second
	if env.Short {
		window = 2 * time.Second
	}
	n := int(window.Seconds()) * jobsPerSecond * perJob
	p50 := harness.Row{Name: "submit → visible completed, p50"}
	p99 := harness.Row{Name: "submit → visible completed, p99"}
	p999 := harness.Row{Name: "submit → visible completed, p99.9"}
	growth := harness.Row{Name: "backlog growth while offered, requests/s"}
	final := harness.Row{Name: "backlog when the offer ends, requests"}
	done := harness.Row{Name: "completed, packages/s (first submit → last visible)"}
	for r := range env.Repeat {
		dir := filepath.Join(env.WorkDir, fmt.Sprintf("run-%d", r))
		sys, pkgs, err := startTiny(ctx, env, dir, n, nil, 1)
		if err != nil {
			return nil, err
		}
		reqs, err := sys.JS.Stream(ctx, subject.RequestsStream)
		if err != nil {
			_ = sys.Close()
			return nil, err
		}
		start := time.Now()
		sent, depths, err := offer(ctx, sys, reqs, pkgs, "lat", jobsPerSecond, perJob)
		if err != nil {
			_ = sys.Close()
			return nil, err
		}
		end, err := waitCompleted(ctx, sys, len(pkgs), 2*time.Minute)
		if err != nil {
			_ = sys.Close()
			return nil, err
		}
		lat, err := doneLatencies(ctx, sys, sent)
		if st, serr := stageTimes(ctx, sys, sent, earliest(sent)); serr == nil {
			env.Log.Info().Str("stages", st.String()).Msg("latency: where the time went")
		}
		if cerr := sys.Close(); cerr != nil {
			env.Log.Warn().Err(cerr).Msg("close system")
		}
		env.Discard(dir)
		if err != nil {
			return nil, err
		}
		p50.Samples = append(p50.Samples, harness.Percentile(lat, 50))
		p99.Samples = append(p99.Samples, harness.Percentile(lat, 99))
		p999.Samples = append(p999.Samples, harness.Percentile(lat, 99.9))
		done.Samples = append(done.Samples, float64(len(pkgs))/end.Sub(start).Seconds())
		if g, last, ok := backlogGrowth(depths); ok {
			growth.Samples = append(growth.Samples, g)
			final.Samples = append(final.Samples, last)
		}
		env.Log.Info().Int("run", r+1).Float64("p50_ms", harness.Percentile(lat, 50)).Float64("p99_ms", harness.Percentile(lat, 99)).
			Int("depth_samples", len(depths)).Msg("latency")
	}
	return []harness.Table{
		{Title: fmt.Sprintf("Latency at %d packages/s offered for %s", jobsPerSecond*perJob, window), Unit: "ms", LowerIsBetter: true,
			Rows: []harness.Row{p50, p99, p999}},
		{Title: "Does the backlog stay flat?", Unit: "see row", Rows: []harness.Row{growth, final, done},
			Notes: []string{"growth = (depth at the end of the offer − depth after 1 s) ÷ elapsed; ≈ 0 means the stagers keep up with the offered rate"}},
	}, nil
}

type depth struct {
	at time.Duration
	n  uint64
}

// offer submits pkgs as jobs of perJob packages on a fixed schedule of
// jobsPerSecond and samples the work queue's depth every second while it
// does. Each job's latency counts from its scheduled time, so a slow
// publish counts against us.
func offer(ctx context.Context, sys *system.System, reqs jetstream.Stream, pkgs []string, prefix string, jobsPerSecond, perJob int) (map[string]time.Time, []depth, error) {
	var depths []depth
	start := time.Now()
	sent := map[string]time.Time{}
	next := start.Add(time.Second)
	for j := 0; j*perJob < len(pkgs); j++ {
		at := start.Add(time.Duration(j) * time.Second / time.Duration(jobsPerSecond))
		time.Sleep(time.Until(at))
		if now := time.Now(); !now.Before(next) {
			if si, err := reqs.Info(ctx); err == nil {
				depths = append(depths, depth{now.Sub(start), si.State.Msgs})
			}
			next = next.Add(time.Second)
		}
		s, err := submitJobs(ctx, sys, fmt.Sprintf("%s-%05d", prefix, j), pkgs[j*perJob:min(len(pkgs), (j+1)*perJob)], perJob, "")
		if err != nil {
			return nil, nil, err
		}
		for k := range s {
			sent[k] = at
		}
	}
	if si, err := reqs.Info(ctx); err == nil {
		depths = append(depths, depth{time.Since(start), si.State.Msgs})
	}
	return sent, depths, nil
}

// backlogGrowth is (depth at the end of the offer − depth after 1 s) ÷
// elapsed, and the last depth.
func backlogGrowth(depths []depth) (growth, last float64, ok bool) {
	if len(depths) < 2 {
		return 0, 0, false
	}
	a, b := depths[0], depths[len(depths)-1]
	return (float64(b.n) - float64(a.n)) / (b.at - a.at).Seconds(), float64(b.n), true
}
