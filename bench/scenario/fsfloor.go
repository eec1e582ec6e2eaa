package scenario

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"
)

// fsFloor measures what durable staging of a tiny package must cost the file
// system at the least, with the stager's concurrency and nothing else: per
// package a temp directory, one 1 KiB file written and fsynced, the
// directory fsynced, renamed into place, and the parent fsynced. It is the
// baseline the control plane's packages/s is divided by: the pipeline can
// only approach it by doing less per package (or the same once for many
// packages), never by beating the disk. The caller gets rid of dir
// (Env.Discard).
func fsFloor(ctx context.Context, dir string, workers, n int) (float64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	data := make([]byte, 1024)
	for i := range data {
		data[i] = byte(i * 7)
	}
	one := func(i int) error {
		tmp, err := os.MkdirTemp(dir, ".staging-floor-")
		if err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(tmp, "data.bin"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o640)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := syncPath(tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, fmt.Sprintf("pkg-%07d", i))); err != nil {
			return err
		}
		return syncPath(dir)
	}
	start := time.Now()
	// gctx ends when a worker fails and, once Wait returns, always: only the
	// caller's ctx says whether the run was cut short.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return one(i) })
	}
	if err := g.Wait(); err != nil {
		return 0, fmt.Errorf("file-system floor: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
