package archive

import (
	"context"
	"io"
	"time"
)

// Throttle limits r to bytesPerSecond (averaged since the first read), so
// that staging does not saturate a link the archive shares with others.
// bytesPerSecond <= 0 returns r unchanged.
func Throttle(ctx context.Context, r io.ReadCloser, bytesPerSecond int64) io.ReadCloser {
	if bytesPerSecond <= 0 {
		return r
	}
	return &throttled{ReadCloser: r, ctx: ctx, rate: bytesPerSecond}
}

type throttled struct {
	io.ReadCloser
	ctx   context.Context
	rate  int64
	start time.Time
	n     int64
}

func (t *throttled) Read(p []byte) (int, error) {
	if t.start.IsZero() {
		t.start = time.Now()
	}
	// Small reads keep the pace smooth and the sleeps short.
	if max := int(t.rate / 10); max > 0 && len(p) > max {
		p = p[:max]
	}
	due := t.start.Add(time.Duration(float64(t.n) / float64(t.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		tm := time.NewTimer(d)
		select {
		case <-t.ctx.Done():
			tm.Stop()
			return 0, t.ctx.Err()
		case <-tm.C:
		}
	}
	n, err := t.ReadCloser.Read(p)
	t.n += int64(n)
	return n, err
}
