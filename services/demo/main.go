// Command demo runs the whole of ccat-staging in one process: an embedded
// JetStream server, the ledger (with its API), the planner and one stager per
// site, over a demo archive of real tar packages on local disk. It announces
// the packages, submits one staging job per site and prints what happened.
//
// With DEMO_ONCE=1 it exits as soon as the jobs end: 0 if every job
// completed, 1 if one failed or did not finish within DEMO_TIMEOUT of being
// submitted. Otherwise the system stays up (ledger API and NATS) until Ctrl-C.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/inproc"
	"github.com/ccatobs/ccat-staging/devkit/natsembed"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	if err := run(context.Background(), os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// settings of the demo, from the environment.
type settings struct {
	databaseURL string
	ledgerAddr  string
	dir         string // keep the demo's files here instead of a temp dir
	once        bool
	timeout     time.Duration
	packages    int
	packageSize int64
	logLevel    string
}

func load(getenv func(string) string) (settings, error) {
	env := config.NewEnv(getenv)
	s := settings{
		databaseURL: env.String(config.DatabaseURL, "postgres://postgres@127.0.0.1:5432/ccat_staging_demo?sslmode=disable"),
		ledgerAddr:  env.String("LEDGER_HTTP_ADDR", "127.0.0.1:8080"),
		dir:         env.String("DEMO_DIR", ""),
		once:        env.Bool("DEMO_ONCE", false),
		timeout:     env.Duration("DEMO_TIMEOUT", time.Minute),
		packages:    env.Int("DEMO_PACKAGES", 6),
		packageSize: int64(env.Int("DEMO_PACKAGE_MB", 4)) << 20,
		logLevel:    env.String(config.LogLevel, "warn"),
	}
	if s.packages < 1 || s.packages > 1000 {
		return s, fmt.Errorf("DEMO_PACKAGES=%d: want 1..1000", s.packages)
	}
	return s, env.Err()
}

func run(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := load(getenv)
	if err != nil {
		return err
	}
	log := logx.New(stderr, s.logLevel, "auto", "demo")

	dir := s.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ccat-staging-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ns, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "nats"), Name: "demo", Log: &log})
	if err != nil {
		return err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	natsURL := ns.ClientURL()

	fmt.Fprintf(stdout, "ccat-staging demo\n  work dir   %s\n  NATS       %s (embedded JetStream)\n  database   %s\n", dir, natsURL, db.Redact(s.databaseURL))

	topo, pkgs, err := makeArchive(dir, s.packages, s.packageSize)
	if err != nil {
		return fmt.Errorf("demo archive: %w", err)
	}
	env := map[string]string{
		config.NATSURL:     natsURL,
		config.DatabaseURL: s.databaseURL,
		config.Topology:    topo,
		"LEDGER_HTTP_ADDR": s.ledgerAddr,
		// Free ports: several stagers share this process, and a system
		// deployment may already use the defaults.
		"PLANNER_HTTP_ADDR": "127.0.0.1:0",
		"STAGER_HTTP_ADDR":  "127.0.0.1:0",
		"STAGER_WORKERS":    "2",
	}

	// Start the services (the same launcher the system tests and the
	// benchmarks use); each stops when the demo returns.
	pl, err := inproc.Start(ctx, inproc.Options{
		Sites:  []string{"cologne", "us"},
		Env:    inproc.SameEnv(env, "demo-"),
		Log:    logx.Unnamed(stderr, s.logLevel, "auto"),
		Within: 30 * time.Second,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted during start-up: not a failure
		}
		return err
	}
	defer pl.Stop()
	errc := pl.Errors
	api := ledgerapi.Client{BaseURL: pl.LedgerURL}
	fmt.Fprintf(stdout, "  ledger API %s\n\n", api.BaseURL)

	nc, err := nats.Connect(natsURL, nats.Name("demo"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// The services provision the streams too; doing it here means the
	// announcements cannot race the first service's start-up.
	if err := bus.Provision(ctx, js, bus.StreamConfig{}); err != nil {
		return err
	}
	ids := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		for i, loc := range p.locations {
			ev, err := event.New("ccat-staging/demo", fmt.Sprintf("archived:%s:%s", loc, p.id), p.id, event.PackageArchived{
				PackageID: p.id, Location: loc, Key: p.keys[i], SizeBytes: p.info.SizeBytes,
				Checksum: p.info.Checksum, Format: "tar", Files: p.info.Files,
			})
			if err != nil {
				return err
			}
			if _, err := bus.Publish(ctx, js, subject.Archived, ev); err != nil {
				return err
			}
		}
		ids = append(ids, p.id)
	}
	fmt.Fprintf(stdout, "announced %d packages (archive.package.archived) at cologne-lta and us-lta\n", len(pkgs))

	stamp := time.Now().UTC().Format("20060102-150405")
	var jobs []string
	for _, site := range []string{"cologne", "us"} {
		id := fmt.Sprintf("demo-%s-%s", stamp, site)
		ev, err := event.New("ccat-staging/demo", "submit:"+id, id, event.Submit{
			JobID: id, Packages: ids, Destination: event.Destination{Site: site},
			RequestedBy: "demo", Priority: event.PriorityNormal, Note: "one-process demo",
		})
		if err != nil {
			return err
		}
		if _, err := bus.Publish(ctx, js, subject.Submit, ev); err != nil {
			return err
		}
		jobs = append(jobs, id)
	}
	submitted := time.Now()
	fmt.Fprintf(stdout, "submitted %d staging jobs (staging.submit): %s\n\n", len(jobs), strings.Join(jobs, ", "))

	wctx, wcancel := context.WithTimeout(ctx, s.timeout)
	defer wcancel()
	var results []ledgerapi.Job
	var waitErr error
	for _, id := range jobs {
		j, err := api.Wait(wctx, id, 100*time.Millisecond, ledgerapi.Job.Terminal)
		if err != nil {
			waitErr = errors.Join(waitErr, err)
			if j.JobID == "" {
				j = ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: id, Status: "unknown"}}
			}
		}
		results = append(results, j)
	}
	select {
	case err := <-errc:
		return err
	default:
	}
	printJobs(stdout, results, time.Since(submitted))

	failed := waitErr != nil
	for _, j := range results {
		if j.Status != "completed" {
			failed = true
		}
	}
	fmt.Fprintf(stdout, `
Inspect the streams with the nats CLI (from the repository root):
  go -C tools tool nats --server %[1]s stream ls
  go -C tools tool nats --server %[1]s stream info STAGING_EVENTS
  go -C tools tool nats --server %[1]s consumer report STAGING_REQUESTS
  go -C tools tool nats --server %[1]s stream view STAGING_EVENTS
  go -C tools tool nats --server %[1]s kv ls CATALOG
and the ledger API:
  curl -s %[2]s/v1/jobs | jq
  curl -s %[2]s/v1/jobs/%[3]s | jq
`, natsURL, api.BaseURL, jobs[0])

	if s.once {
		if waitErr != nil {
			return fmt.Errorf("jobs did not finish within %s: %w", s.timeout, waitErr)
		}
		if failed {
			return errors.New("a staging job did not complete")
		}
		fmt.Fprintln(stdout, "DEMO_ONCE: all jobs completed")
		return nil
	}
	fmt.Fprintln(stdout, "Running until Ctrl-C.")
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func printJobs(w io.Writer, jobs []ledgerapi.Job, took time.Duration) {
	for _, j := range jobs {
		dest := ""
		if j.Destination != (ledgerapi.Place{}) {
			dest = j.Destination.Site + " / " + j.Destination.Location
		}
		fmt.Fprintf(w, "job %s  %s  → %s  (%d of %d packages completed, %d failed, %s)\n",
			j.JobID, strings.ToUpper(j.Status), dest, j.Counts.Completed, j.Counts.Total, j.Counts.Failed, human(j.BytesDone))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PACKAGE\tSTATUS\tBYTES\tTIME\tFROM\tWHERE IT LANDED")
		for _, p := range j.Packages {
			from := p.Source.Location
			secs := 0.0 // null until the package ends
			if p.DurationSeconds != nil {
				secs = *p.DurationSeconds
			}
			where := p.Path
			if p.Reason != "" && p.Status != "completed" {
				where = p.Reason + ": " + p.Message
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%.2fs\t%s\t%s\n", p.PackageID, p.Status, human(p.SizeBytes), secs, from, where)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "all jobs ended %.1fs after submission\n", took.Seconds())
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
