package stager_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/rs/zerolog"
)

// paced serves one archive slowly: chunk bytes every tick, or, with
// stallAt > 0, stalls after that many bytes until the reader's ctx ends.
type paced struct {
	data    []byte
	chunk   int
	tick    time.Duration
	stallAt int
	opened  atomic.Int32
}

func (p *paced) Size(context.Context, string) (int64, error) { return int64(len(p.data)), nil }

func (p *paced) Open(ctx context.Context, _ string) (io.ReadCloser, error) {
	p.opened.Add(1)
	return &pacedReader{ctx: ctx, p: p}, nil
}

type pacedReader struct {
	ctx context.Context
	p   *paced
	off int
}

func (r *pacedReader) Read(b []byte) (int, error) {
	if r.off >= len(r.p.data) {
		return 0, io.EOF
	}
	if r.p.stallAt > 0 && r.off >= r.p.stallAt {
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	select {
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	case <-time.After(r.p.tick):
	}
	n := copy(b[:min(len(b), r.p.chunk)], r.p.data[r.off:])
	r.off += n
	return n, nil
}

func (r *pacedReader) Close() error { return nil }

func bigPackage(t *testing.T, mib int) []byte {
	return tartest.Build(t, tartest.File("big.dat", strings.Repeat("0123456789abcdef", mib<<16)), tartest.File("small", "s"))
}

// TestLongPackageKeepsItsDelivery: a package that streams for longer than
// AckWait is kept by InProgress (no second delivery) and reports progress.
func TestLongPackageKeepsItsDelivery(t *testing.T) {
	w := newWorld(t)
	tb := bigPackage(t, 8)
	p := w.put(w.archive, "slow", tb)
	src := &paced{data: tb, chunk: 256 << 10, tick: 60 * time.Millisecond} // about 2 s
	cfg := w.config()
	cfg.AckWait, cfg.ProgressInterval = time.Second, 200*time.Millisecond
	w.start(stager.WithBackend(cfg, src))
	id := w.submit(request("job-slow", p))
	d := waitID[event.Done](t, w.rec, "done:"+id)
	if d.Attempt != 1 || src.opened.Load() != 1 {
		t.Errorf("done = %+v after %d opens, want one attempt", d, src.opened.Load())
	}
	if _, again := w.rec.byID("started:" + id + ":2"); again {
		t.Errorf("package was redelivered although InProgress was sent")
	}
	prog := w.rec.ofType(event.TypeProgress, "progress:"+id+":1:")
	if len(prog) < 2 {
		t.Fatalf("%d progress events, want several", len(prog))
	}
	var last int64
	for _, e := range prog {
		pr, err := event.DataAs[event.Progress](e)
		if err != nil {
			t.Fatal(err)
		}
		if pr.BytesDone <= last || pr.BytesTotal != p.size || pr.RateBytesPerSecond <= 0 {
			t.Errorf("progress %s = %+v", e.ID, pr)
		}
		last = pr.BytesDone
	}
}

// TestGracefulShutdown: after cancel, an in-flight package finishes within
// the grace period; past it, the attempt is interrupted, its temp dir
// removed, and the request handed back for the next stager.
func TestGracefulShutdown(t *testing.T) {
	tests := []struct {
		name        string
		stall       bool
		grace       time.Duration
		wantDoneBy1 bool
	}{
		{"finishes within grace", false, 20 * time.Second, true},
		{"interrupted after grace", true, 300 * time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			tb := bigPackage(t, 4)
			p := w.put(w.archive, "inflight", tb)
			src := &paced{data: tb, chunk: 256 << 10, tick: 40 * time.Millisecond}
			if tt.stall {
				src.stallAt = 1 << 20
			}
			cfg := w.config()
			cfg.ShutdownGrace = tt.grace
			stop := w.start(stager.WithBackend(cfg, src))
			id := w.submit(request("job-sd", p))
			waitID[event.Started](t, w.rec, "started:"+id+":1")
			poll.Until(t, 5*time.Second, "a temp dir", poll.True(func() bool { return len(w.procEntries()) == 1 }))
			stop()
			if tt.wantDoneBy1 {
				d := waitID[event.Done](t, w.rec, "done:"+id)
				if d.Attempt != 1 {
					t.Errorf("done = %+v", d)
				}
				return
			}
			f := waitID[event.Failed](t, w.rec, "failed:"+id+":1")
			if f.Permanent {
				t.Errorf("interrupted attempt failed permanently: %+v", f)
			}
			if got := w.procEntries(); len(got) != 0 {
				t.Errorf("left behind: %v", got)
			}
			// The next stager (reading the disk archive) completes it.
			w.start(w.config())
			d := waitID[event.Done](t, w.rec, "done:"+id)
			if d.Attempt != 2 {
				t.Errorf("done = %+v, want attempt 2", d)
			}
		})
	}
}

// TestStartupSweep: temp dirs of this instance (a crash's leftovers) are
// removed at start-up; other instances' are not touched.
func TestStartupSweep(t *testing.T) {
	w := newWorld(t)
	mine := filepath.Join(w.proc, ".staging-t1-pkg-x-123")
	theirs := filepath.Join(w.proc, ".staging-t2-pkg-y-456")
	for _, d := range []string{mine, theirs} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "sub", "f"), []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w.start(w.config())
	poll.Until(t, 5*time.Second, "sweep", poll.True(func() bool {
		_, err := os.Stat(mine)
		return errors.Is(err, os.ErrNotExist)
	}))
	if _, err := os.Stat(theirs); err != nil {
		t.Errorf("another instance's temp dir was removed: %v", err)
	}
}

// TestDiskFull: on a small tmpfs, a package that does not fit is delayed
// with no_space (not permanent) and staged once space frees up. Both the
// guard before starting and a disk filling up mid-stream are covered.
func TestDiskFull(t *testing.T) {
	tests := []struct {
		name   string
		factor float64 // below 1 the guard lets it start and the write hits ENOSPC
	}{
		{"free-space guard", 1.1},
		{"ENOSPC while writing", 0.01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", w.proc).Run(); err != nil {
				t.Fatalf("mount a small tmpfs (the test needs root, as in CI): %v", err)
			}
			t.Cleanup(func() { _ = exec.Command("umount", "-l", w.proc).Run() })
			ballast := filepath.Join(w.proc, "ballast")
			if err := os.WriteFile(ballast, make([]byte, 5<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			tb := bigPackage(t, 4)
			p := w.put(w.archive, "fat", tb)
			cfg := w.config()
			cfg.FreeSpaceFactor = tt.factor
			cfg.MaxDeliver = 50
			w.start(cfg)
			id := w.submit(request("job-full", p))
			f := waitID[event.Failed](t, w.rec, "failed:"+id+":1")
			if f.Reason != event.ReasonNoSpace || f.Permanent {
				t.Errorf("failed = %+v, want transient no_space", f)
			}
			if got := w.procEntries(); len(got) != 1 {
				t.Errorf("left behind on a full disk: %v", got)
			}
			if err := os.Remove(ballast); err != nil {
				t.Fatal(err)
			}
			d := waitID[event.Done](t, w.rec, "done:"+id)
			if d.Attempt < 2 {
				t.Errorf("done = %+v", d)
			}
		})
	}
}

func TestHTTPEndpoints(t *testing.T) {
	w := newWorld(t)
	cfg := w.config()
	cfg.HTTPAddr = "127.0.0.1:0"
	addr := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- stager.RunReady(ctx, cfg, zerolog.Nop(), func(a net.Addr) { addr <- a })
	}()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a.String()
	case <-time.After(10 * time.Second):
		t.Fatal("no listener")
	}
	p := w.put(w.archive, "m1", samplePackage(t))
	waitID[event.Done](t, w.rec, "done:"+w.submit(request("job-m", p)))
	for path, want := range map[string]string{
		"/healthz":         `"ok"`,
		"/readyz":          `"nats":"ok"`,
		"/metrics":         `stager_attempts_total{outcome="done",reason=""} 1`,
		"/metrics#backlog": `stager_consumer_pending{priority="normal",site=`,
	} {
		path, _, _ = strings.Cut(path, "#")
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s = %d, want %s in:\n%.2000s", path, resp.StatusCode, want, b)
		}
	}

}
