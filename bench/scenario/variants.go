package scenario

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
)

// byteVariant is one way of moving a package's bytes, measured in turn with
// the others of its scenario.
type byteVariant struct {
	name    string
	ours    bool
	missing error // why it cannot be measured (nil: it can)
	run     func(i int) (time.Duration, error)
}

// measureBytes runs every variant env.Repeat times, interleaved so machine
// drift spreads over all of them; before each run it clears out and our
// staged copy and syncs, so no run inherits another's dirty pages. It
// returns one row per variant in MB/s of size; a variant that fails
// part-way keeps no samples, since its median would not be trustworthy.
func measureBytes(ctx context.Context, env harness.Env, scenario string, variants []byteVariant, out string, ours *diskStager, size int64) ([]harness.Row, error) {
	rows := make([]harness.Row, len(variants))
	for i, vr := range variants {
		rows[i] = harness.Row{Name: vr.name, Ours: vr.ours}
		if vr.missing != nil {
			rows[i].Missing = "not measured: " + vr.missing.Error()
		}
	}
	for r := range env.Repeat {
		for i, vr := range variants {
			if variants[i].missing != nil {
				continue
			}
			if err := hollow(env, out); err != nil {
				return nil, err
			}
			if ours != nil {
				if err := ours.Clean(); err != nil {
					return nil, err
				}
			}
			if err := syncAll(ctx); err != nil {
				return nil, err
			}
			d, err := vr.run(r)
			if err != nil {
				rows[i].Missing = fmt.Sprintf("failed: %v", err)
				variants[i].missing = err
				env.Log.Error().Err(err).Str("variant", vr.name).Msg(scenario + " variant failed")
				continue
			}
			rows[i].Samples = append(rows[i].Samples, mbps(size, d))
			env.Log.Info().Str("variant", vr.name).Int("run", r+1).Dur("took", d).Float64("mb_per_s", mbps(size, d)).Msg(scenario)
		}
	}
	_ = hollow(env, out)
	for i := range rows {
		if rows[i].Missing != "" && len(rows[i].Samples) > 0 {
			rows[i].Samples = nil
		}
	}
	return rows, nil
}

// hollow gets rid of a run's output before the next run without freeing
// its inodes now: every file under dir is truncated (its blocks go back to
// the file system) and dir is moved to the bench's trash, removed when the
// bench exits. Deleting the thousands of files of a realistic package
// would make the next variant's extraction pay for the inode allocator
// skipping freshly freed inodes on this file system (harness.Env.Discard).
func hollow(env harness.Env, dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			return os.Truncate(p, 0)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("empty %s: %w", dir, err)
	}
	env.Discard(dir)
	return nil
}
