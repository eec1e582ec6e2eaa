// Command bench runs ccat-staging's benchmarks (issue 7) on the local
// machine: every scenario measures our figure and its baselines in the same
// run, repeats each variant, and writes medians with min–max and ratios to
// bench/RESULTS.md and stdout.
//
//	go run ./bench [-short] [-n 3] [-out bench/RESULTS.md] [scenario ...]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/scenario"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	all := scenario.All()
	names := make([]string, len(all))
	for i, s := range all {
		names[i] = s.Name
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	short := fs.Bool("short", getenv("BENCH_SHORT") != "" && getenv("BENCH_SHORT") != "0", "short mode, under 5 minutes (also BENCH_SHORT=1)")
	repeat := fs.Int("n", 3, "runs per variant (at least 3)")
	out := fs.String("out", defaultOut(), "where to write the results (markdown)")
	work := fs.String("work", getenv("BENCH_WORKDIR"), "scratch directory (default: a new one under $TMPDIR); needs several GiB free")
	profile := fs.String("pprof", "", "write CPU profiles to this directory: <scenario>.cpu.pprof, or one per measured window for scenarios that mark theirs (projection); the services run in-process, so it shows their hot spots")
	cold := fs.Bool("cold", false, "drop the page cache before every byte-moving run (needs root)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: bench [flags] [scenario ...]\nscenarios: %s\n", strings.Join(names, ", "))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *repeat < 3 {
		return fmt.Errorf("-n %d: medians need at least 3 runs", *repeat)
	}
	scenario.Cold = *cold
	pick := all
	if fs.NArg() > 0 {
		pick = nil
		for _, n := range fs.Args() {
			i := slices.IndexFunc(all, func(s harness.Scenario) bool { return s.Name == n })
			if i < 0 {
				return fmt.Errorf("unknown scenario %q (have %s)", n, strings.Join(names, ", "))
			}
			pick = append(pick, all[i])
		}
	}
	log := logx.New(stderr, getenv(config.LogLevel), getenv(config.LogFormat), "bench")
	base := *work
	if base == "" {
		var err error
		if base, err = os.MkdirTemp("", "ccat-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(base)
	}
	// Scratch of many small files is deleted only after every measurement
	// (harness.Env.Discard says why): with the temp base when the bench
	// exits; under -work not by the bench at all, so that runs back to back
	// (A/B of two builds) do not measure each other's deletions.
	trash := filepath.Join(base, ".trash")
	if *work != "" {
		defer log.Info().Str("dir", trash).Msg("scratch of many small files left for you to delete (more than 6 minutes before the next run on this file system)")
	}
	m := harness.DescribeMachine(ctx)
	var results []harness.Result
	for _, s := range pick {
		if s.Run == nil {
			results = append(results, harness.Result{Scenario: s, Err: errors.New("not implemented yet")})
			continue
		}
		dir := filepath.Join(base, s.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		log.Info().Str("scenario", s.Name).Bool("short", *short).Msg("running")
		stopProfile := func() {}
		if !s.Windowed {
			var err error
			if stopProfile, err = startProfile(*profile, s.Name); err != nil {
				return err
			}
		} else if *profile != "" {
			if err := os.MkdirAll(*profile, 0o755); err != nil {
				return err
			}
		}
		start := time.Now()
		env := harness.Env{Short: *short, Repeat: *repeat, WorkDir: dir,
			Log: log.With().Str("scenario", s.Name).Logger(), ProfileDir: *profile, Trash: trash}
		tables, err := s.Run(ctx, env)
		if err != nil {
			log.Error().Err(err).Str("scenario", s.Name).Msg("scenario failed")
		}
		took := time.Since(start)
		stopProfile()
		results = append(results, harness.Result{Scenario: s, Tables: tables, Err: err, Took: took})
		if s.SmallFiles {
			env.Discard(dir)
		} else if rerr := os.RemoveAll(dir); rerr != nil {
			log.Warn().Err(rerr).Msg("could not remove scratch dir")
		}
		if ctx.Err() != nil {
			break
		}
	}
	report := harness.Report(m, *short, *repeat, results)
	fmt.Fprint(stdout, report)
	// Running some scenarios updates their sections and keeps the others.
	if old, err := os.ReadFile(*out); err == nil && fs.NArg() > 0 {
		report = harness.Merge(string(old), report, names)
	}
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	log.Info().Str("file", *out).Msg("results written")
	return ctx.Err()
}

// startProfile starts a CPU profile into dir/<name>.cpu.pprof when dir is
// set and returns the function that stops it.
func startProfile(dir, name string) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// defaultOut is bench/RESULTS.md from the repository root (where the
// Taskfile runs us), or RESULTS.md when run from inside bench/.
func defaultOut() string {
	if st, err := os.Stat("bench"); err == nil && st.IsDir() {
		return filepath.Join("bench", "RESULTS.md")
	}
	return "RESULTS.md"
}
