// Command ledgerbench measures the ledger's read API: it seeds a database
// with synthetic jobs (SQL, straight into the projection's tables), serves
// the API in-process and sends a fixed rate of requests, then reports the
// p50/p99 latency per endpoint. It is a benchmark, not a test.
//
//	go run ./bench/cmd/ledgerbench -jobs 1000000 -rate 500 -duration 30s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/httpapi"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/rs/zerolog"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "ledgerbench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ledgerbench", flag.ContinueOnError)
	dsn := fs.String("db", "postgres://postgres@127.0.0.1:5432/ledger_bench?sslmode=disable", "database (created and seeded if needed)")
	jobs := fs.Int("jobs", 1_000_000, "jobs to have in the table")
	pkgs := fs.Int("packages", 3, "packages per job")
	rate := fs.Int("rate", 500, "requests per second")
	dur := fs.Duration("duration", 30*time.Second, "how long to send requests")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := db.EnsureDatabase(ctx, *dsn); err != nil {
		return err
	}
	bdb, err := db.Open(ctx, *dsn, 16)
	if err != nil {
		return err
	}
	defer bdb.Close()
	st := store.New(bdb)
	if _, err := st.Migrate(ctx); err != nil {
		return err
	}
	var have int
	if err := bdb.NewRaw("SELECT count(*) FROM jobs").Scan(ctx, &have); err != nil {
		return err
	}
	if have < *jobs {
		start := time.Now()
		if err := seed(ctx, st, have, *jobs, *pkgs); err != nil {
			return err
		}
		fmt.Fprintf(out, "seeded %d jobs (%d packages each) in %s\n", *jobs-have, *pkgs, time.Since(start).Round(time.Millisecond))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: httpapi.NewServer(httpapi.Deps{Store: st, Log: zerolog.New(io.Discard), Registry: obs.NewRegistry()})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()

	n := *jobs
	endpoints := []struct {
		name string
		path func(r *rand.Rand) string
	}{
		{"GET /v1/jobs?limit=50", func(*rand.Rand) string { return "/v1/jobs?limit=50" }},
		{"GET /v1/jobs?status=&site=", func(r *rand.Rand) string {
			return "/v1/jobs?status=" + []string{"completed", "failed", "in_progress", "scheduled"}[r.IntN(4)] + "&site=" + []string{"cologne", "us"}[r.IntN(2)]
		}},
		{"GET /v1/jobs/{id}", func(r *rand.Rand) string { return fmt.Sprintf("/v1/jobs/bench-%d", r.IntN(n)) }},
		{"GET /v1/jobs/{id}/events", func(r *rand.Rand) string { return fmt.Sprintf("/v1/jobs/bench-%d/events", r.IntN(n)) }},
	}
	type sample struct {
		ep   int
		took time.Duration
		code int
	}
	var mu sync.Mutex
	var samples []sample
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 10 * time.Second}
	// Open loop: request i is due at start + i/rate whatever happened to
	// the earlier ones, so a slow server cannot lower the offered load (a
	// ticker would silently drop ticks instead).
	interval := time.Second / time.Duration(*rate)
	start := time.Now()
	total := int(*dur / interval)
	var wg sync.WaitGroup
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		ep := i % len(endpoints)
		path := endpoints[ep].path(rng)
		wg.Go(func() {
			t0 := time.Now()
			resp, err := client.Get(base + path)
			code := 0
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			samples = append(samples, sample{ep, time.Since(t0), code})
			mu.Unlock()
		})
	}
	wg.Wait()
	fmt.Fprintf(out, "%d jobs, %d requests offered at %d/s over %s (sent in %s)\n", n, len(samples), *rate, *dur,
		time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "%-28s %8s %10s %10s %10s %6s\n", "endpoint", "n", "p50", "p99", "max", "errors")
	for i, e := range endpoints {
		var ds []time.Duration
		bad := 0
		for _, s := range samples {
			if s.ep == i {
				ds = append(ds, s.took)
				if s.code != 200 {
					bad++
				}
			}
		}
		slices.Sort(ds)
		if len(ds) == 0 {
			continue
		}
		q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
		fmt.Fprintf(out, "%-28s %8d %10s %10s %10s %6d\n", e.name, len(ds), q(0.50).Round(10*time.Microsecond),
			q(0.99).Round(10*time.Microsecond), ds[len(ds)-1].Round(10*time.Microsecond), bad)
	}
	return nil
}

// seed writes jobs from..to-1 straight into the projection with
// generate_series, in chunks, as if their events had been applied: a
// realistic mix of statuses over two sites and a year of creation times.
func seed(ctx context.Context, st *store.Store, from, to, pkgs int) error {
	const chunk = 100_000
	for lo := from; lo < to; lo += chunk {
		hi := min(lo+chunk, to)
		_, err := st.DB().ExecContext(ctx, `
			INSERT INTO jobs (job_id, status, requested_by, priority, note, dest_site, dest_location, planned, created_at, updated_at,
				completed_at, n_total, n_completed, n_failed, n_scheduled, n_in_progress, bytes_total, bytes_done, bytes_staged)
			SELECT 'bench-' || i,
				(ARRAY['completed','completed','completed','failed','in_progress','scheduled'])[1 + i % 6],
				'user' || (i % 50), 'normal', 'seeded job ' || i,
				(ARRAY['cologne','us'])[1 + (i / 7) % 2], (ARRAY['cologne-proc','us-processing'])[1 + (i / 7) % 2], true,
				timestamptz '2026-01-01' + (i || ' seconds')::interval * 30,
				timestamptz '2026-01-01' + (i || ' seconds')::interval * 30 + interval '1 hour',
				CASE WHEN i % 6 < 4 THEN timestamptz '2026-01-01' + (i || ' seconds')::interval * 30 + interval '1 hour' END,
				?, CASE WHEN i % 6 < 3 THEN ? ELSE 0 END, CASE WHEN i % 6 = 3 THEN ? ELSE 0 END,
				CASE WHEN i % 6 = 5 THEN ? ELSE 0 END, CASE WHEN i % 6 = 4 THEN ? ELSE 0 END, ? * 10240, 0,
				CASE WHEN i % 6 < 3 THEN ? * 10240 ELSE 0 END
			FROM generate_series(?::bigint, ?::bigint) AS i ON CONFLICT DO NOTHING;
			INSERT INTO job_packages (job_id, package_id, status, attempts, dest_site, dest_location, size_bytes, planned_at, updated_at)
			SELECT 'bench-' || i, 'bench-' || i || '-pkg-' || p,
				(ARRAY['completed','completed','completed','failed','in_progress','scheduled'])[1 + i % 6], 1,
				(ARRAY['cologne','us'])[1 + (i / 7) % 2], (ARRAY['cologne-proc','us-processing'])[1 + (i / 7) % 2], 10240,
				timestamptz '2026-01-01' + (i || ' seconds')::interval * 30, timestamptz '2026-01-01' + (i || ' seconds')::interval * 30
			FROM generate_series(?::bigint, ?::bigint) AS i, generate_series(1, ?) AS p ON CONFLICT DO NOTHING;
			INSERT INTO event_log (source, id, type, event_time, job_id, data)
			SELECT 'ccat-staging/planner', 'planned:bench-' || i, 'ccat.staging.planned.v1',
				timestamptz '2026-01-01' + (i || ' seconds')::interval * 30, 'bench-' || i, '{}'
			FROM generate_series(?::bigint, ?::bigint) AS i ON CONFLICT DO NOTHING`,
			pkgs, pkgs, pkgs, pkgs, pkgs, pkgs, pkgs, lo, hi-1, lo, hi-1, pkgs, lo, hi-1)
		if err != nil {
			return fmt.Errorf("seed jobs %d-%d: %w", lo, hi, err)
		}
	}
	_, err := st.DB().ExecContext(ctx, "ANALYZE jobs; ANALYZE job_packages; ANALYZE event_log")
	return err
}
