package scenario

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
)

// startTiny starts a whole system with n tiny packages announced and
// catalogued; every package id points at the same 1 KiB tar, since only the
// control plane is measured.
func startTiny(ctx context.Context, env harness.Env, dir string, n int, extra map[string]string, stagers int) (*system.System, []string, error) {
	e := map[string]string{"STAGER_WORKERS": strconv.Itoa(floorWorkers)}
	for k, v := range extra {
		e[k] = v
	}
	sys, err := system.New(ctx, system.Options{WorkDir: dir, Log: env.Log.Level(zerolog.WarnLevel), Env: e, MaxStore: 16 << 30})
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*system.System, []string, error) {
		_ = sys.Close()
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(sys.LTA, "raw"), 0o755); err != nil {
		return fail(err)
	}
	data := make([]byte, 1024)
	for i := range data {
		data[i] = byte(i * 7)
	}
	info, err := tarpkg.Write(filepath.Join(sys.LTA, "raw", "tiny.tar"), []tarpkg.Entry{{Path: "data.bin", Data: data}})
	if err != nil {
		return fail(err)
	}
	if err := sys.StartLedger(ctx); err != nil {
		return fail(err)
	}
	if err := sys.StartPlanner(); err != nil {
		return fail(err)
	}
	for i := range stagers {
		if err := sys.StartStager(fmt.Sprintf("bench-%d", i+1)); err != nil {
			return fail(err)
		}
	}
	pkgs := make([]string, n)
	for i := range pkgs {
		pkgs[i] = fmt.Sprintf("tiny-%06d", i)
	}
	err = publishAsync(ctx, sys.JS, n, 1, func(i int) (string, string, event.Data) {
		return subject.Archived, "archived:" + system.DiskLTA + ":" + pkgs[i], event.PackageArchived{PackageID: pkgs[i],
			Location: system.DiskLTA, Key: "raw/tiny.tar", SizeBytes: info.SizeBytes, Checksum: info.Checksum, Format: "tar", Files: info.Files}
	})
	if err != nil {
		return fail(err)
	}
	for _, durable := range []string{subject.PlannerCatalog, subject.LedgerArchive} {
		if err := waitIdle(ctx, sys.JS, subject.ArchiveStream, durable, 5*time.Minute, sys.Failed); err != nil {
			return fail(err)
		}
	}
	return sys, pkgs, nil
}

// submitJobs publishes one submit per job of perJob packages and returns
// when each was published.
func submitJobs(ctx context.Context, sys *system.System, prefix string, pkgs []string, perJob int, priority string) (map[string]time.Time, error) {
	sent := map[string]time.Time{}
	for j := 0; j*perJob < len(pkgs); j++ {
		id := fmt.Sprintf("%s-%04d", prefix, j)
		s := event.Submit{JobID: id, Packages: pkgs[j*perJob : min(len(pkgs), (j+1)*perJob)],
			Destination: event.Destination{Site: system.Site}, RequestedBy: "bench", Priority: priority}
		sent[id] = time.Now()
		if err := publish(ctx, sys.JS, subject.Submit, "submit:"+id, s); err != nil {
			return nil, err
		}
	}
	return sent, nil
}

// waitCompleted polls the ledger's tables until want packages are completed
// and returns when it saw the last one. It gives up when nothing moves for
// stall, or when a package fails.
func waitCompleted(ctx context.Context, sys *system.System, want int, stall time.Duration) (time.Time, error) {
	conn, err := pgx.Connect(ctx, sys.DBURL)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	last, lastMove := -1, time.Now()
	for {
		var done, failed int
		err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed') FROM job_packages`).Scan(&done, &failed)
		now := time.Now()
		if err != nil {
			return now, fmt.Errorf("poll ledger: %w", err)
		}
		if done >= want {
			return now, nil
		}
		if failed > 0 {
			return now, fmt.Errorf("%d packages failed", failed)
		}
		if done != last {
			last, lastMove = done, now
		} else if now.Sub(lastMove) > stall {
			return now, fmt.Errorf("stalled at %d of %d packages completed for %s", done, want, stall)
		}
		if err := sys.Failed(); err != nil {
			return now, err
		}
		select {
		case <-ctx.Done():
			return now, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// doneLatencies returns, per completed package, the time from its job's
// submit to the ledger transaction that applied its staging.done.
func doneLatencies(ctx context.Context, sys *system.System, sent map[string]time.Time) ([]float64, error) {
	conn, err := pgx.Connect(ctx, sys.DBURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT job_id, applied_at FROM event_log WHERE type = $1`, event.TypeDone)
	if err != nil {
		return nil, fmt.Errorf("read event_log: %w", err)
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

func pipelineTiny(ctx context.Context, env harness.Env, dir string, jobs, perJob int) (tinyResult, error) {
	sys, pkgs, err := startTiny(ctx, env, dir, jobs*perJob, nil, 1)
	if err != nil {
		return tinyResult{}, err
	}
	defer func() {
		if err := sys.Close(); err != nil {
			env.Log.Warn().Err(err).Msg("close system")
		}
		env.Discard(dir)
	}()
	start := time.Now()
	sent, err := submitJobs(ctx, sys, "cp", pkgs, perJob, "")
	if err != nil {
		return tinyResult{}, err
	}
	end, err := waitCompleted(ctx, sys, len(pkgs), 2*time.Minute)
	if err != nil {
		return tinyResult{}, err
	}
	lat, err := doneLatencies(ctx, sys, sent)
	if err != nil {
		return tinyResult{}, err
	}
	if len(lat) != len(pkgs) {
		return tinyResult{}, fmt.Errorf("ledger has %d staging.done for %d packages", len(lat), len(pkgs))
	}
	if st, err := stageTimes(ctx, sys, sent, start); err == nil {
		env.Log.Info().Str("stages", st.String()).Msg("control plane: where the time went")
	}
	return tinyResult{rate: float64(len(pkgs)) / end.Sub(start).Seconds(), latencyMs: lat}, nil
}
