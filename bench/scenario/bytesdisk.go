package scenario

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/fixture"
	"github.com/ccatobs/ccat-staging/bench/harness"
)

// Cold makes the byte scenarios drop the page cache before every timed run
// (needs root); otherwise the source is read once before each run (warm).
var Cold = false

// BytesDisk is issue scenario 3: one realistic package staged disk → disk.
func BytesDisk() harness.Scenario {
	return harness.Scenario{Name: "bytes-disk", Issue: 3,
		Doc: "One realistic tar (a few 256 MiB files and thousands of 64 KiB–512 KiB files; 4 GiB, 512 MiB in short mode) " +
			"staged disk → disk by the real stager (submit → staging.done through planner and JetStream, unpack + per-file sha256 verify), " +
			"once with the processing location's sync: filesystem (one syncfs) and once with sync: file (per-file fsync, the default), " +
			"against the CCAT way (`cp`, `openssl dgst -sha256`, `tar -x`, `rm`), bare `tar -x` and `cat > /dev/null` of the source. " +
			"Every variant ends with `sync`, included in its time. MB = 10^6 bytes of tar.",
		Run: runBytesDisk}
}

func runBytesDisk(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	total := int64(4 << 30)
	if env.Short {
		total = 512 << 20
	}
	spec := fixture.Realistic(total)
	lta := filepath.Join(env.WorkDir, "lta")
	src := filepath.Join(lta, "raw", "pkg.tar")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		return nil, err
	}
	env.Log.Info().Int64("bytes", total).Int("large", spec.Large).Int("small", spec.Small).Msg("writing fixture")
	info, err := fixture.Write(src, spec)
	if err != nil {
		return nil, err
	}
	// The stager twice, one pipeline per sync setting of the processing
	// location, each in its own work directory (its archive holds a hard
	// link to the same tar).
	stagers := map[string]*diskStager{}
	errs := map[string]error{}
	for _, mode := range []string{"file", "filesystem"} {
		dir := "sync-" + mode
		if err := os.MkdirAll(filepath.Join(env.WorkDir, dir, "lta", "raw"), 0o755); err != nil {
			return nil, err
		}
		if err := os.Link(src, filepath.Join(env.WorkDir, dir, "lta", "raw", "pkg.tar")); err != nil {
			return nil, err
		}
		s, err := newDiskStager(ctx, env, dir, "raw/pkg.tar", info, mode)
		if err != nil {
			env.Log.Error().Err(err).Str("sync", mode).Msg("stager not measurable")
			errs[mode] = err
			continue
		}
		defer s.Close()
		stagers[mode] = s
	}
	scratch := filepath.Join(env.WorkDir, "scratch")
	out := filepath.Join(env.WorkDir, "out")
	q := quote
	stage := func(mode string) func(i int) (time.Duration, error) {
		return func(i int) (time.Duration, error) {
			if stagers[mode] == nil {
				return 0, errMissing
			}
			return stagers[mode].Stage(ctx, i)
		}
	}
	// The default comes first: the ratio column is against the first of ours.
	variants := []struct {
		name string
		ours string // the stager's sync mode, "" for a baseline
		run  func(i int) (time.Duration, error)
	}{
		{"cat source > /dev/null (read limit)", "", func(int) (time.Duration, error) {
			return sh(ctx, "cat "+q(src)+" > /dev/null; sync")
		}},
		{"tar -x (bare)", "", func(int) (time.Duration, error) {
			return sh(ctx, fmt.Sprintf("mkdir -p %[2]s && tar -xf %[1]s -C %[2]s && sync", q(src), q(out)))
		}},
		{"CCAT way: cp + openssl dgst -sha256 + tar -x + rm", "", func(int) (time.Duration, error) {
			return sh(ctx, fmt.Sprintf("mkdir -p %[2]s %[3]s && cp %[1]s %[3]s/pkg.tar && openssl dgst -sha256 %[3]s/pkg.tar >/dev/null && tar -xf %[3]s/pkg.tar -C %[2]s && rm %[3]s/pkg.tar && sync",
				q(src), q(out), q(scratch)))
		}},
		{"ccat-staging stager, sync: file, the default (submit → done, unpack + verify)", "file", stage("file")},
		{"ccat-staging stager, sync: filesystem (submit → done, unpack + verify)", "filesystem", stage("filesystem")},
	}
	rows := make([]harness.Row, len(variants))
	for i, v := range variants {
		rows[i] = harness.Row{Name: v.name, Ours: v.ours != ""}
		if err := errs[v.ours]; err != nil {
			rows[i].Missing = fmt.Sprintf("not measured: %v", err)
		}
	}
	// Interleave the variants so drift of the machine (other processes,
	// writeback) spreads over all of them rather than biasing one.
	for r := range env.Repeat {
		for i, v := range variants {
			if v.ours != "" && stagers[v.ours] == nil {
				continue
			}
			if err := hollow(env, out); err != nil {
				return nil, err
			}
			for _, s := range stagers {
				if err := s.Clean(); err != nil {
					return nil, err
				}
			}
			if err := prepareCache(ctx, src, Cold); err != nil {
				return nil, fmt.Errorf("prepare cache: %w", err)
			}
			d, err := v.run(r)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
			rows[i].Samples = append(rows[i].Samples, mbps(info.SizeBytes, d))
			env.Log.Info().Str("variant", v.name).Int("run", r+1).Dur("took", d).Float64("mb_per_s", mbps(info.SizeBytes, d)).Msg("bytes-disk")
		}
	}
	_ = hollow(env, out)
	cache := "warm (source read once before each run)"
	if Cold {
		cache = "cold (page cache dropped before each run)"
	}
	return []harness.Table{{
		Title: fmt.Sprintf("Disk → disk, %.0f MB tar, %d files", float64(info.SizeBytes)/1e6, len(info.Files)),
		Unit:  "MB/s",
		Rows:  rows,
		Notes: []string{"page cache: " + cache + "; `sync` after every run is inside the timing",
			"the stager's figure is from publishing staging.submit to receiving staging.done, plus the same trailing `sync`",
			"sync: the processing location's setting — file fsyncs every file and directory, filesystem writes without fsync and calls syncfs(2) once before the commit (services/stager/README.md)"},
	}}, nil
}
