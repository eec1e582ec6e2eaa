package scenario

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
)

// Projection is issue scenario 5: the ledger catching up with a full stream.
func Projection() harness.Scenario {
	return harness.Scenario{Name: "projection", Issue: 5,
		Doc: "STAGING_EVENTS pre-filled with the lifecycle of jobs of 100 packages (submit, planned, 100 × started, 100 × done; " +
			"500 jobs = 101,000 events, 50 jobs in short mode), then the ledger started on a fresh database: events/s from its start " +
			"(migrations included) until its durable consumer has nothing pending or unacknowledged. Baseline in the same run: the same " +
			"events inserted as rows with COPY (pgx CopyFrom, one transaction) into a table shaped like the ledger's event_log. " +
			"Also the same events interleaved as a busy system publishes them (25 jobs in flight: their submits and plans, then " +
			"their packages round-robin, each done 50 events after its started), so that outcomes update rows planned in earlier batches.",
		Run: runProjection, Windowed: true}
}

type pendingEvent struct {
	subj, id string
	data     event.Data
}

// lifecycle returns the events of jobs × perJob packages, in the order the
// services would publish them (a job's events together).
func lifecycle(jobs, perJob int) []pendingEvent {
	var out []pendingEvent
	for j := range jobs {
		job := fmt.Sprintf("proj-%05d", j)
		pkgs := make([]string, perJob)
		planned := event.Planned{JobID: job, RequestedBy: "bench", Priority: event.PriorityNormal,
			Destination: event.Target{Site: system.Site, Location: system.Processing}}
		for p := range pkgs {
			pkgs[p] = fmt.Sprintf("%s-p%03d", job, p)
			planned.Packages = append(planned.Packages, event.PlannedPackage{PackageID: pkgs[p], Status: event.StatusScheduled,
				RequestID: "request:" + job + ":" + pkgs[p] + ":1", SizeBytes: 2560, Checksum: "sha256:" + fmt.Sprintf("%064x", p),
				Source: &event.Source{Location: system.DiskLTA, Site: system.Site, Storage: "disk", Key: "raw/" + pkgs[p] + ".tar"}})
		}
		out = append(out, pendingEvent{subject.Submit, "submit:" + job, event.Submit{JobID: job, Packages: pkgs,
			Destination: event.Destination{Site: system.Site}, RequestedBy: "bench"}})
		out = append(out, pendingEvent{subject.Planned, "planned:" + job, planned})
		for _, p := range planned.Packages {
			o := event.Outcome{JobID: job, PackageID: p.PackageID, Site: system.Site, Location: system.Processing,
				Attempt: 1, RequestID: p.RequestID, Instance: "bench-1"}
			out = append(out, pendingEvent{subject.Started, "started:" + p.RequestID + ":1", event.Started{Outcome: o}})
			out = append(out, pendingEvent{subject.Done, "done:" + p.RequestID, event.Done{Outcome: o,
				Path: "/processing/" + p.PackageID, SizeBytes: 2560, Files: 1, DurationSeconds: 0.01}})
		}
	}
	return out
}

// interleave reorders lifecycle's events the way a busy system publishes
// them: inFlight jobs at a time, each job's submit and plan first, then the
// packages of all of them round-robin, a package's done published spread
// events after its started (other transfers run meanwhile). Batches then
// hold outcomes of packages planned in earlier batches, so the ledger
// updates rows instead of writing them whole.
func interleave(evs []pendingEvent, perJob, inFlight, spread int) []pendingEvent {
	per := 2 + 2*perJob
	out := make([]pendingEvent, 0, len(evs))
	for g := 0; g < len(evs); g += per * inFlight {
		group := evs[g:min(len(evs), g+per*inFlight)]
		jobs := len(group) / per
		for j := range jobs {
			out = append(out, group[j*per], group[j*per+1])
		}
		var starts, dones []pendingEvent
		for p := range perJob {
			for j := range jobs {
				starts = append(starts, group[j*per+2+2*p])
				dones = append(dones, group[j*per+3+2*p])
			}
		}
		for i := range len(starts) + spread {
			if i < len(starts) {
				out = append(out, starts[i])
			}
			if d := i - spread; d >= 0 && d < len(dones) {
				out = append(out, dones[d])
			}
		}
	}
	return out
}

func runProjection(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	jobs := 500
	if env.Short {
		jobs = 50
	}
	evs := lifecycle(jobs, 100)
	mixed := interleave(evs, 100, 25, 50)
	ours := harness.Row{Name: "ledger projection (batched apply from JetStream, 2 appliers: the default)", Ours: true}
	inter := harness.Row{Name: "ledger projection of interleaved jobs (25 in flight, a package's done 50 events after its started)"}
	one := harness.Row{Name: "ledger projection with one applier (LEDGER_APPLY_WORKERS=1)"}
	cp := harness.Row{Name: "COPY into an event_log-shaped table (pgx CopyFrom)"}
	var batches []float64
	for r := range env.Repeat {
		rate, copyRate, batch, err := projectOnce(ctx, env, filepath.Join(env.WorkDir, fmt.Sprintf("run-%d", r)), evs, nil)
		if err != nil {
			return nil, err
		}
		ours.Samples = append(ours.Samples, rate)
		cp.Samples = append(cp.Samples, copyRate)
		if batch > 0 {
			batches = append(batches, batch)
		}
		rate1, _, _, err := projectOnce(ctx, env, filepath.Join(env.WorkDir, fmt.Sprintf("run-%d-one", r)), evs,
			map[string]string{"LEDGER_APPLY_WORKERS": "1"})
		if err != nil {
			return nil, err
		}
		one.Samples = append(one.Samples, rate1)
		rateMixed, _, _, err := projectOnce(ctx, env, filepath.Join(env.WorkDir, fmt.Sprintf("run-%d-interleaved", r)), mixed, nil)
		if err != nil {
			return nil, err
		}
		inter.Samples = append(inter.Samples, rateMixed)
		env.Log.Info().Int("run", r+1).Int("events", len(evs)).Float64("ledger_events_per_s", rate).
			Float64("one_applier_events_per_s", rate1).Float64("interleaved_events_per_s", rateMixed).
			Float64("copy_rows_per_s", copyRate).Msg("projection")
	}
	batchRow := harness.Row{Name: "ledger's mean batch size (events per transaction, from its /metrics)", Samples: batches}
	if len(batches) == 0 {
		batchRow.Missing = "the ledger's /metrics did not expose ledger_batch_size"
	}
	return []harness.Table{{Title: fmt.Sprintf("Ledger projection, %d events", len(evs)), Unit: "events/s (COPY: rows/s)",
		Rows: []harness.Row{ours, inter, one, cp},
		Notes: []string{"the ledger writes more than the baseline: every event also updates jobs, job_packages and attempts; COPY only appends the log",
			"fresh embedded JetStream server and fresh database per run"}},
		{Title: "Ledger batching", Unit: "events", Rows: []harness.Row{batchRow}}}, nil
}

// projectOnce returns the ledger's events/s, COPY's rows/s, and the ledger's
// mean batch size from its /metrics (0 when unreadable).
func projectOnce(ctx context.Context, env harness.Env, dir string, evs []pendingEvent, svcEnv map[string]string) (float64, float64, float64, error) {
	sys, err := system.New(ctx, system.Options{WorkDir: dir, Log: env.Log.Level(zerolog.WarnLevel), Env: svcEnv})
	if err != nil {
		return 0, 0, 0, err
	}
	defer func() {
		if err := sys.Close(); err != nil {
			env.Log.Warn().Err(err).Msg("close system")
		}
	}()
	if err := publishAsync(ctx, sys.JS, len(evs), 1, func(i int) (string, string, event.Data) {
		return evs[i].subj, evs[i].id, evs[i].data
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("fill stream: %w", err)
	}
	copyRate, err := copyBaseline(ctx, sys.DBURL, evs)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("copy baseline: %w", err)
	}
	stopProfile := env.Profile("projection-" + filepath.Base(dir))
	start := time.Now()
	if err := sys.StartLedger(ctx); err != nil {
		stopProfile()
		return 0, 0, 0, err
	}
	err = waitIdle(ctx, sys.JS, subject.EventsStream, subject.LedgerEvents, 15*time.Minute, sys.Failed)
	took := time.Since(start)
	stopProfile()
	if err != nil {
		return 0, 0, 0, err
	}
	var batch float64
	if sum, count, err := metricPair(ctx, sys.API.BaseURL+"/metrics", "ledger_batch_size"); err == nil && count > 0 {
		env.Log.Info().Float64("mean_batch", sum/count).Float64("batches", count).Msg("ledger batches")
		batch = sum / count
	} else {
		env.Log.Warn().Err(err).Msg("ledger batch size not readable from /metrics")
	}
	// Where the time goes: the mean time to apply and commit one batch,
	// against the wall time per batch.
	if sum, count, err := metricPair(ctx, sys.API.BaseURL+"/metrics", "ledger_batch_apply_seconds"); err == nil && count > 0 {
		env.Log.Info().Float64("mean_apply_ms", 1000*sum/count).Float64("wall_ms_per_batch", 1000*time.Since(start).Seconds()/count).
			Msg("ledger apply time")
	}
	conn, err := pgx.Connect(ctx, sys.DBURL)
	if err != nil {
		return 0, 0, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM event_log WHERE stream = $1 OR stream = ''`, subject.EventsStream).Scan(&n); err != nil {
		return 0, 0, 0, fmt.Errorf("count event_log: %w", err)
	}
	if n != len(evs) {
		return 0, 0, 0, fmt.Errorf("ledger applied %d of %d events", n, len(evs))
	}
	return float64(len(evs)) / took.Seconds(), copyRate, batch, nil
}

// copyBaseline COPYs the same events into bench_event_log, a table with
// event_log's columns, keys and indexes, in the ledger's own database (before
// the ledger starts, so the two never compete).
func copyBaseline(ctx context.Context, dbURL string, evs []pendingEvent) (float64, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `CREATE TABLE bench_event_log (
    seq bigserial NOT NULL UNIQUE, source text NOT NULL, id text NOT NULL, type text NOT NULL,
    subject text NOT NULL DEFAULT '', event_time timestamptz NOT NULL, job_id text, package_id text,
    stream text NOT NULL DEFAULT '', stream_seq bigint NOT NULL DEFAULT 0, data jsonb NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, id));
CREATE INDEX bench_event_log_job ON bench_event_log (job_id, event_time, seq) WHERE job_id IS NOT NULL;
CREATE INDEX bench_event_log_package ON bench_event_log (package_id, event_time, seq) WHERE package_id IS NOT NULL;`); err != nil {
		return 0, err
	}
	rows := make([][]any, len(evs))
	for i, e := range evs {
		ev, err := newEvent(e.id, e.data)
		if err != nil {
			return 0, err
		}
		var ids struct {
			JobID     *string `json:"job_id"`
			PackageID *string `json:"package_id"`
		}
		_ = json.Unmarshal(ev.Data, &ids)
		rows[i] = []any{ev.Source, ev.ID, ev.Type, ev.Time, ids.JobID, ids.PackageID, subject.EventsStream, int64(i + 1), string(ev.Data)}
	}
	start := time.Now()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"bench_event_log"},
		[]string{"source", "id", "type", "event_time", "job_id", "package_id", "stream", "stream_seq", "data"}, pgx.CopyFromRows(rows))
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if n != int64(len(evs)) {
		return 0, fmt.Errorf("copied %d of %d rows", n, len(evs))
	}
	return float64(n) / took.Seconds(), nil
}

// metricPair reads <name>_sum and <name>_count from a Prometheus text endpoint.
func metricPair(ctx context.Context, url, name string) (float64, float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return 0, 0, err
	}
	var sum, count float64
	var seen int
	for l := range strings.Lines(string(body)) {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case name + "_sum":
			sum, err = strconv.ParseFloat(f[1], 64)
			seen++
		case name + "_count":
			count, err = strconv.ParseFloat(f[1], 64)
			seen++
		}
		if err != nil {
			return 0, 0, err
		}
	}
	if seen != 2 {
		return 0, 0, fmt.Errorf("%s: no %s histogram", url, name)
	}
	return sum, count, nil
}
