package scenario

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
)

// API is issue scenario 6: the ledger's read API under a steady request rate.
func API() harness.Scenario {
	return harness.Scenario{Name: "api", Issue: 6,
		Doc: "The ledger's read API over 1,000,000 jobs (50,000 in short mode) seeded straight into its tables with one INSERT … " +
			"SELECT generate_series per table (after its migrations ran), one package each, statuses, sites and users mixed. An open-loop " +
			"Go load generator offers 500 requests/s for 60 s (4 s in short mode), a third each: job list filtered by status and site " +
			"(limit 50), job detail of a random job, site summary. Latency is from the scheduled send time to the end of the body, so a " +
			"stall counts against us (no coordinated omission). Baseline in the same run: a Go handler answering `{}` at the same rate, " +
			"the floor of the load generator and loopback.",
		Run: runAPI}
}

func runAPI(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	jobs, window := 1_000_000, 60*time.Second
	if env.Short {
		jobs, window = 50_000, 4*time.Second
	}
	const rate = 500
	sys, err := system.New(ctx, system.Options{WorkDir: filepath.Join(env.WorkDir, "sys"), Log: env.Log.Level(zerolog.WarnLevel)})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := sys.Close(); err != nil {
			env.Log.Warn().Err(err).Msg("close system")
		}
	}()
	if err := sys.StartLedger(ctx); err != nil {
		return nil, err
	}
	seedStart := time.Now()
	if err := seedJobs(ctx, sys.DBURL, jobs); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	env.Log.Info().Int("jobs", jobs).Dur("took", time.Since(seedStart)).Msg("seeded")

	floor, stopFloor, err := floorServer()
	if err != nil {
		return nil, err
	}
	defer stopFloor()

	statuses := []string{"completed", "failed", "in_progress", "scheduled"}
	sites := []string{system.Site, "cologne", "us"}
	kinds := []struct {
		name string
		path func(r *rand.Rand) string
	}{
		{"job list, status + site filter, limit 50", func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/jobs?status=%s&site=%s&limit=50", statuses[r.IntN(len(statuses))], sites[r.IntN(len(sites))])
		}},
		{"job detail", func(r *rand.Rand) string { return fmt.Sprintf("/v1/jobs/api-%07d", 1+r.IntN(jobs)) }},
		{"site summary", func(r *rand.Rand) string { return "/v1/sites/" + system.Site }},
	}
	type rowPair struct{ p50, p99 harness.Row }
	rows := make([]rowPair, len(kinds)+1)
	for i, k := range kinds {
		rows[i] = rowPair{harness.Row{Name: k.name + ", p50"}, harness.Row{Name: k.name + ", p99"}}
	}
	// Unloaded: one request at a time, so the table shows each endpoint's
	// own cost next to its cost under load.
	unloaded := make([]harness.Row, len(kinds))
	client := &http.Client{Timeout: 60 * time.Second}
	rng := rand.New(rand.NewPCG(3, 4))
	for i, k := range kinds {
		unloaded[i].Name = k.name + ", one at a time, p50 of 10"
		for r := range env.Repeat {
			var ms []float64
			for range 10 {
				t0 := time.Now()
				if err := get(ctx, client, sys.API.BaseURL+k.path(rng)); err != nil {
					return nil, fmt.Errorf("unloaded %s: %w", k.name, err)
				}
				ms = append(ms, float64(time.Since(t0))/float64(time.Millisecond))
			}
			_ = r
			unloaded[i].Samples = append(unloaded[i].Samples, harness.Median(ms))
		}
	}
	rows[len(kinds)] = rowPair{harness.Row{Name: "baseline: Go handler answering {} , p50"}, harness.Row{Name: "baseline: Go handler answering {}, p99"}}
	// The same rate on list and detail alone, so one slow endpoint does not
	// hide what the others can do.
	solo := []rowPair{{harness.Row{Name: "job list, in a list + detail mix, p50"}, harness.Row{Name: "job list, in a list + detail mix, p99"}},
		{harness.Row{Name: "job detail, in a list + detail mix, p50"}, harness.Row{Name: "job detail, in a list + detail mix, p99"}}}
	var notes []string
	for r := range env.Repeat {
		sl, serrs, err := loadRun(ctx, sys.API.BaseURL, rate, window/2, 2, func(rng *rand.Rand, k int) string { return kinds[k].path(rng) })
		if err != nil && serrs == 0 {
			return nil, err
		}
		if serrs > 0 {
			notes = append(notes, fmt.Sprintf("run %d, list + detail mix: %d requests failed: %v", r+1, serrs, err))
		}
		for i := range solo {
			solo[i].p50.Samples = append(solo[i].p50.Samples, harness.Percentile(sl[i], 50))
			solo[i].p99.Samples = append(solo[i].p99.Samples, harness.Percentile(sl[i], 99))
		}
		lat, errs, err := loadRun(ctx, sys.API.BaseURL, rate, window, len(kinds), func(rng *rand.Rand, k int) string { return kinds[k].path(rng) })
		if err != nil && errs == 0 {
			return nil, err
		}
		for i := range kinds {
			rows[i].p50.Samples = append(rows[i].p50.Samples, harness.Percentile(lat[i], 50))
			rows[i].p99.Samples = append(rows[i].p99.Samples, harness.Percentile(lat[i], 99))
		}
		if errs > 0 {
			notes = append(notes, fmt.Sprintf("run %d: %d of %d requests failed or answered non-2xx (not in the percentiles): %v", r+1, errs, int(window.Seconds()*rate), err))
		}
		fl, ferrs, err := loadRun(ctx, floor, rate, window/3, 1, func(*rand.Rand, int) string { return "/" })
		if err != nil && ferrs == 0 {
			return nil, err
		}
		if ferrs > 0 {
			notes = append(notes, fmt.Sprintf("run %d: baseline had %d errors", r+1, ferrs))
		}
		rows[len(kinds)].p50.Samples = append(rows[len(kinds)].p50.Samples, harness.Percentile(fl[0], 50))
		rows[len(kinds)].p99.Samples = append(rows[len(kinds)].p99.Samples, harness.Percentile(fl[0], 99))
		env.Log.Info().Int("run", r+1).Float64("list_p99_ms", harness.Percentile(lat[0], 99)).
			Float64("detail_p99_ms", harness.Percentile(lat[1], 99)).Float64("site_p99_ms", harness.Percentile(lat[2], 99)).Msg("api")
	}
	out := unloaded
	for _, p := range append(solo, rows...) {
		out = append(out, p.p50, p.p99)
	}
	return []harness.Table{{Title: fmt.Sprintf("Read API at %d requests/s over %d jobs", rate, jobs), Unit: "ms", LowerIsBetter: true,
		Rows: out, Notes: append([]string{"each run's percentile over its requests, then median over runs; the list + detail mix runs for half the window, the baseline for a third"}, notes...)}}, nil
}

// loadRun offers rate requests/s for d, spread round-robin over kinds, and
// returns each kind's latencies in ms and the number of failures.
func loadRun(ctx context.Context, base string, rate int, d time.Duration, kinds int, path func(*rand.Rand, int) string) ([][]float64, int, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}
	defer client.CloseIdleConnections()
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	lat := make([][]float64, kinds)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := 0
	var firstErr error
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			select {
			case <-time.After(w):
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
		k := i % kinds
		url := base + path(rng, k)
		wg.Go(func() {
			err := get(ctx, client, url)
			ms := float64(time.Since(at)) / float64(time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if errs == 0 {
					firstErr = err
				}
				errs++
				return
			}
			lat[k] = append(lat[k], ms)
		})
	}
	wg.Wait()
	if firstErr != nil {
		return lat, errs, fmt.Errorf("%w (first of %d failures)", firstErr, errs)
	}
	return lat, errs, nil
}

func get(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s: %d %.200s", url, resp.StatusCode, body)
	}
	return nil
}

// floorServer answers every request with {} from a plain Go handler.
func floorServer() (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return "http://" + l.Addr().String(), func() { _ = srv.Close() }, nil
}

// seedJobs inserts n jobs with one package each straight into the ledger's
// tables, in the shapes its projection writes.
func seedJobs(ctx context.Context, dbURL string, n int) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	stmts := []string{
		`INSERT INTO jobs (job_id, status, requested_by, priority, dest_site, dest_location, submit_id, planned,
		   created_at, updated_at, completed_at, n_total, n_scheduled, n_in_progress, n_completed, n_failed, bytes_total, bytes_done, bytes_staged)
		 SELECT 'api-' || lpad(g::text, 7, '0'),
		   (ARRAY['completed','completed','completed','failed','in_progress','scheduled'])[1 + g % 6],
		   'user' || (g % 10), 'normal',
		   (ARRAY['bench','cologne','us'])[1 + g % 3], (ARRAY['bench-processing','cologne-processing','us-processing'])[1 + g % 3],
		   'submit:' || g, true,
		   now() - make_interval(secs => $1 - g), now() - make_interval(secs => $1 - g),
		   CASE WHEN g % 6 < 4 THEN now() - make_interval(secs => $1 - g) END,
		   1, (g % 6 = 5)::int, (g % 6 = 4)::int, (g % 6 < 3)::int, (g % 6 = 3)::int, 1000000, CASE WHEN g % 6 < 3 THEN 1000000 ELSE 0 END,
		   CASE WHEN g % 6 < 3 THEN 1000000 ELSE 0 END
		 FROM generate_series(1, $1::int) AS g`,
		`INSERT INTO job_packages (job_id, package_id, status, attempts, request_id, src_location, src_site, src_storage, src_key,
		   dest_site, dest_location, path, size_bytes, checksum, files, planned_at, completed_at, updated_at)
		 SELECT 'api-' || lpad(g::text, 7, '0'), 'apipkg-' || lpad(g::text, 7, '0'),
		   (ARRAY['completed','completed','completed','failed','in_progress','scheduled'])[1 + g % 6], 1,
		   'request:api-' || lpad(g::text, 7, '0') || ':apipkg-' || lpad(g::text, 7, '0') || ':1',
		   'bench-lta', 'bench', 'disk', 'raw/apipkg-' || g || '.tar',
		   (ARRAY['bench','cologne','us'])[1 + g % 3], (ARRAY['bench-processing','cologne-processing','us-processing'])[1 + g % 3],
		   CASE WHEN g % 6 < 3 THEN '/processing/apipkg-' || g ELSE '' END, 1000000, 'sha256:' || md5(g::text) || md5(g::text), 10,
		   now() - make_interval(secs => $1 - g), CASE WHEN g % 6 < 4 THEN now() - make_interval(secs => $1 - g) END,
		   now() - make_interval(secs => $1 - g)
		 FROM generate_series(1, $1::int) AS g`,
		`ANALYZE`,
	}
	for _, s := range stmts {
		args := []any{n}
		if s == `ANALYZE` {
			args = nil
		}
		if _, err := conn.Exec(ctx, s, args...); err != nil {
			return fmt.Errorf("%.60s…: %w", s, err)
		}
	}
	return nil
}
