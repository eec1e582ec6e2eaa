package scenario

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/rs/zerolog"
)

// Backlog is issue scenario 7: a deep work queue with the stagers stopped.
func Backlog() harness.Scenario {
	return harness.Scenario{Name: "backlog", Issue: 7,
		Doc: "Ledger and planner run as processes of their own (built from services/*/main.go) against an embedded JetStream server; " +
			"the benchmark then queues 1,000,000 requests (3,000 in short mode) in STAGING_REQUESTS as the planner would, with their " +
			"jobs' staging.planned events, while no stager runs. RSS of each service is read from /proc before, with the queue full, and " +
			"at its peak while one stager process (4 workers) drains the queue, for at most 10 minutes (20 s in short mode).",
		Run: runBacklog}
}

func runBacklog(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	n, drainCap := 1_000_000, 10*time.Minute
	if env.Short {
		n, drainCap = 3_000, 20*time.Second
	}
	const perJob = 100
	bins, err := buildServices(ctx, env.WorkDir, "ledger", "planner", "stager")
	if err != nil {
		return nil, err
	}
	rows := map[string]*harness.Row{}
	var order []string
	row := func(name string) *harness.Row {
		if r, ok := rows[name]; ok {
			return r
		}
		rows[name] = &harness.Row{Name: name}
		order = append(order, name)
		return rows[name]
	}
	drain := harness.Row{Name: "drain rate, requests/s"}
	var notes []string
	// One pass per repeat would queue 3 M requests in full mode; RSS is a
	// level, not a rate, so one pass with three samples of it is honest.
	res, err := backlogOnce(ctx, env, filepath.Join(env.WorkDir, "run"), bins, n, perJob, drainCap)
	if err != nil {
		return nil, err
	}
	for _, s := range res.rss {
		r := row(s.name)
		r.Samples = append(r.Samples, s.mb...)
	}
	drain.Samples = res.drainRates
	notes = append(notes, res.notes...)
	out := []harness.Row{}
	for _, name := range order {
		out = append(out, *rows[name])
	}
	return []harness.Table{
		{Title: fmt.Sprintf("Backlog of %d requests: RSS per service", n), Unit: "MB RSS", LowerIsBetter: true, Rows: out,
			Notes: append([]string{"one pass; each row's samples are its RSS readings in that phase (median, min – max); target < 150 MB per service"}, notes...)},
		{Title: "Backlog drain", Unit: "requests/s", Rows: []harness.Row{drain},
			Notes: []string{"samples: completed requests per second over consecutive 10 s windows of the drain"}},
	}, nil
}

type rssSeries struct {
	name string
	mb   []float64
}

type backlogResult struct {
	rss        []rssSeries
	drainRates []float64
	notes      []string
}

func backlogOnce(ctx context.Context, env harness.Env, dir string, bins map[string]string, n, perJob int, drainCap time.Duration) (backlogResult, error) {
	var res backlogResult
	sys, err := system.New(ctx, system.Options{WorkDir: dir, Log: env.Log.Level(zerolog.WarnLevel), MaxStore: 32 << 30})
	if err != nil {
		return res, err
	}
	var children []*child
	defer func() {
		for _, c := range children {
			c.Stop()
		}
		if err := sys.Close(); err != nil {
			env.Log.Warn().Err(err).Msg("close system")
		}
		_ = os.RemoveAll(dir)
	}()
	if err := os.MkdirAll(filepath.Join(sys.LTA, "raw"), 0o755); err != nil {
		return res, err
	}
	info, err := tarpkg.Write(filepath.Join(sys.LTA, "raw", "tiny.tar"), []tarpkg.Entry{{Path: "data.bin", Data: make([]byte, 1024)}})
	if err != nil {
		return res, err
	}
	off := map[string]string{"PLANNER_HTTP_ADDR": "off", "STAGER_HTTP_ADDR": "off", "STAGER_INSTANCE": "bench-1", "STAGER_WORKERS": "4"}
	start := func(name string) (*child, error) {
		c, err := startChild(name, bins[name], sys.Environ(off))
		if err != nil {
			return nil, err
		}
		children = append(children, c)
		return c, nil
	}
	led, err := start("ledger")
	if err != nil {
		return res, err
	}
	pl, err := start("planner")
	if err != nil {
		return res, err
	}
	services := []*child{led, pl}
	sample := func(phase string) error {
		for _, c := range services {
			if err := c.Exited(); err != nil {
				return err
			}
			mb, err := c.RSS()
			if err != nil {
				return err
			}
			key := c.name + ", " + phase
			i := -1
			for j, s := range res.rss {
				if s.name == key {
					i = j
				}
			}
			if i < 0 {
				res.rss = append(res.rss, rssSeries{name: key})
				i = len(res.rss) - 1
			}
			res.rss[i].mb = append(res.rss[i].mb, mb)
		}
		return nil
	}
	// Let both connect, provision and settle.
	if err := waitConsumer(ctx, sys, subject.EventsStream, subject.LedgerEvents, time.Minute, led.Exited); err != nil {
		return res, err
	}
	for range 3 {
		time.Sleep(time.Second)
		if err := sample("idle"); err != nil {
			return res, err
		}
	}
	jobs := n / perJob
	reqID := func(j, p int) (string, string, string) {
		job := fmt.Sprintf("bl-%06d", j)
		pkg := fmt.Sprintf("bl-%06d-%03d", j, p)
		return job, pkg, "request:" + job + ":" + pkg + ":1"
	}
	src := event.Source{Location: system.DiskLTA, Site: system.Site, Storage: "disk", Key: "raw/tiny.tar"}
	dst := event.Target{Site: system.Site, Location: system.Processing}
	queueStart := time.Now()
	err = publishAsync(ctx, sys.JS, jobs, 1, func(j int) (string, string, event.Data) {
		job, _, _ := reqID(j, 0)
		pl := event.Planned{JobID: job, RequestedBy: "bench", Priority: event.PriorityNormal, Destination: dst}
		for p := range perJob {
			_, pkg, id := reqID(j, p)
			pl.Packages = append(pl.Packages, event.PlannedPackage{PackageID: pkg, Status: event.StatusScheduled, RequestID: id,
				Source: &src, SizeBytes: info.SizeBytes, Checksum: info.Checksum})
		}
		return subject.Planned, "planned:" + job, pl
	})
	if err != nil {
		return res, fmt.Errorf("publish plans: %w", err)
	}
	err = publishAsync(ctx, sys.JS, n, 1000, func(i int) (string, string, event.Data) {
		job, pkg, id := reqID(i/perJob, i%perJob)
		return subject.Request(system.Site, event.PriorityNormal), id, event.Request{JobID: job, PackageID: pkg, Generation: 1,
			Priority: event.PriorityNormal, Source: src, Destination: dst, SizeBytes: info.SizeBytes, Checksum: info.Checksum,
			Format: "tar", Files: info.Files}
	})
	if err != nil {
		return res, fmt.Errorf("queue requests: %w", err)
	}
	res.notes = append(res.notes, fmt.Sprintf("queued %d requests (+%d staging.planned) in %s", n, jobs, time.Since(queueStart).Round(time.Second)))
	if err := waitIdle(ctx, sys.JS, subject.EventsStream, subject.LedgerEvents, 10*time.Minute, led.Exited); err != nil {
		return res, err
	}
	for range 5 {
		time.Sleep(time.Second)
		if err := sample("queue full, stagers stopped"); err != nil {
			return res, err
		}
	}
	st, err := start("stager")
	if err != nil {
		return res, err
	}
	services = append(services, st)
	reqs, err := sys.JS.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return res, err
	}
	drainStart := time.Now()
	lastCount, lastAt := uint64(n), drainStart
	for {
		time.Sleep(time.Second)
		if err := sample("draining"); err != nil {
			return res, err
		}
		si, err := reqs.Info(ctx)
		if err != nil {
			return res, err
		}
		left := si.State.Msgs
		if now := time.Now(); now.Sub(lastAt) >= 10*time.Second || left == 0 {
			res.drainRates = append(res.drainRates, float64(lastCount-left)/now.Sub(lastAt).Seconds())
			lastCount, lastAt = left, now
		}
		if left == 0 {
			res.notes = append(res.notes, fmt.Sprintf("drained %d requests in %s", n, time.Since(drainStart).Round(time.Second)))
			break
		}
		if time.Since(drainStart) > drainCap {
			res.notes = append(res.notes, fmt.Sprintf("not drained: %d of %d requests left after %s (drain stopped there)", left, n, drainCap))
			break
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
	}
	return res, nil
}

// waitConsumer waits until a durable exists (its service has provisioned it).
func waitConsumer(ctx context.Context, sys *system.System, stream, durable string, within time.Duration, failed func() error) error {
	deadline := time.Now().Add(within)
	for {
		if _, err := sys.JS.Consumer(ctx, stream, durable); err == nil {
			return nil
		}
		if err := failed(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consumer %s/%s not created within %s", stream, durable, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
