package scenario

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ccatobs/ccat-staging/bench/harness"
)

// ControlPlane is issue scenario 1: many tiny packages through the whole pipeline.
func ControlPlane() harness.Scenario {
	return harness.Scenario{Name: "control-plane", Issue: 1,
		Doc: "N tiny packages (a 1 KiB file in a 2.5 KiB tar; 20,000 in 200 jobs, 2,000 in 20 jobs in short mode) through planner, " +
			"one stager (4 workers) and ledger on an embedded JetStream server (file storage) and a fresh PostgreSQL database per run: " +
			"packages/s from the first submit to the last package completed in the ledger's tables, and submit → visible latency " +
			"(all jobs are submitted at once, so this latency is mostly time queued; scenario latency measures a steady load). " +
			"Baselines in the same run: the file-system floor (a Go loop with the stager's 4 workers doing only what durable staging of a tiny package must: " +
			"temp dir, one 1 KiB file, fsync of file and directory, rename into place, fsync of the parent; in the same scratch file system), " +
			"and `nats bench js pub async` then `nats bench js consume --acks explicit` (512 B, file storage) on an embedded server.",
		Run: runControlPlane, SmallFiles: true}
}

// floorWorkers is the stager's concurrency in the control-plane runs
// (STAGER_WORKERS in startTiny), so the floor is measured at the same.
const floorWorkers = 4

func runControlPlane(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	jobs, perJob, natsMsgs := 200, 100, 200_000
	if env.Short {
		jobs, natsMsgs = 20, 50_000
	}
	ours := harness.Row{Name: fmt.Sprintf("ccat-staging pipeline, %d packages in %d jobs", jobs*perJob, jobs), Ours: true}
	floor := harness.Row{Name: fmt.Sprintf("file-system floor, %d packages, %d workers (Go loop: temp dir, 1 KiB file, fsync file + dir, rename, fsync parent)", jobs*perJob, floorWorkers)}
	pub := harness.Row{Name: "JetStream async publish (nats bench), msgs/s"}
	con := harness.Row{Name: "JetStream durable consume, explicit ack (nats bench), msgs/s"}
	p50 := harness.Row{Name: "submit → visible completed, p50"}
	p99 := harness.Row{Name: "submit → visible completed, p99"}
	var notes []string
	for r := range env.Repeat {
		dir := filepath.Join(env.WorkDir, fmt.Sprintf("nats-%d", r))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		floorDir := filepath.Join(env.WorkDir, fmt.Sprintf("floor-%d", r))
		fr, err := fsFloor(ctx, floorDir, floorWorkers, jobs*perJob)
		env.Discard(floorDir)
		if err != nil {
			return nil, err
		}
		floor.Samples = append(floor.Samples, fr)
		env.Log.Info().Int("run", r+1).Float64("packages_per_s", fr).Msg("file-system floor")

		pr, cr, err := natsBench(ctx, dir, natsMsgs, 512)
		if err != nil {
			return nil, err
		}
		pub.Samples = append(pub.Samples, pr)
		con.Samples = append(con.Samples, cr)
		env.Log.Info().Int("run", r+1).Float64("pub_msgs_per_s", pr).Float64("consume_msgs_per_s", cr).Msg("nats bench")

		res, err := pipelineTiny(ctx, env, filepath.Join(env.WorkDir, fmt.Sprintf("pipeline-%d", r)), jobs, perJob)
		if err != nil {
			ours.Missing = fmt.Sprintf("not measured: %v", err)
			p50.Missing, p99.Missing = ours.Missing, ours.Missing
			env.Log.Error().Err(err).Msg("pipeline run failed")
			break
		}
		ours.Samples = append(ours.Samples, res.rate)
		p50.Samples = append(p50.Samples, harness.Percentile(res.latencyMs, 50))
		p99.Samples = append(p99.Samples, harness.Percentile(res.latencyMs, 99))
		env.Log.Info().Int("run", r+1).Float64("packages_per_s", res.rate).Float64("p50_ms", harness.Percentile(res.latencyMs, 50)).
			Float64("p99_ms", harness.Percentile(res.latencyMs, 99)).Msg("pipeline")
		notes = append(notes, res.notes...)
	}
	return []harness.Table{
		{Title: "Control plane throughput", Unit: "packages/s (nats rows: msgs/s)", Rows: []harness.Row{ours, floor, pub, con},
			Notes: append([]string{
				"each package costs the broker 3 stored messages (request, started, done) plus its share of submit and planned, and ~5 deliveries (stager, ledger ×3, …); the ratio is packages/s ÷ the broker's raw msgs/s",
				fmt.Sprintf("nats bench: %d messages of 512 B per run, fresh embedded server and stream each run", natsMsgs),
			}, notes...)},
		{Title: "Control plane latency (submit published → package completed in the ledger)", Unit: "ms", LowerIsBetter: true,
			Rows:  []harness.Row{p50, p99},
			Notes: []string{"visible = the ledger's transaction that applied staging.done (event_log.applied_at); each run's percentile over all its packages, then median over runs"}},
	}, nil
}

type tinyResult struct {
	rate      float64
	latencyMs []float64
	notes     []string
}
