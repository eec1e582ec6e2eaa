package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/rs/zerolog"
)

// Defaults of an S3 location's parallel read (topology s3.parts and
// s3.part_size). Four 8 MiB parts keep a loopback or LAN server busy while
// the extractor hashes and writes, and bound a package's read buffers to
// 32 MiB, so two workers stay well inside the stager's memory budget. A long
// link wants more parts in flight (see the stager README).
const (
	DefaultParts    = 4
	DefaultPartSize = 8 << 20
	// partAttempts bounds the GETs of one part: a reset connection or a 5xx
	// mid-body is worth another try, a part that fails three times fails the
	// attempt (transiently, so the whole package is retried later).
	partAttempts = 3
	partBackoff  = 100 * time.Millisecond
)

// ErrObjectChanged reports that an object no longer has the ETag stat'ed
// when the read began: it was replaced or deleted mid-read. The bytes read
// so far all belong to the old version; the attempt fails transiently and
// the next one starts over on whatever is there then.
var ErrObjectChanged = errors.New("object changed while being read")

// getRange fills dst with the object's bytes from off, or fails.
type getRange func(ctx context.Context, off int64, dst []byte) error

// partStats counts what a parallel read did, for metrics and tests.
type partStats struct {
	retries atomic.Int64 // part GETs repeated after a failure
	buffers atomic.Int64 // part buffers allocated (the memory bound)
	workers atomic.Int64 // fetching goroutines still running
	gets    atomic.Int64 // ranged GETs sent
	bytes   atomic.Int64 // bytes received in complete parts
}

// partReader reads an object of known size as numbered parts fetched by up
// to `parts` goroutines, each owning one buffer, and hands the bytes out in
// order, so the one-pass extractor sees a plain stream. Worker w fetches
// parts w, w+n, w+2n, … and may fetch its next part only once the reader has
// consumed its previous one: at most parts × partSize bytes are buffered.
type partReader struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	slots  []partSlot
	stats  *partStats
	what   string // "s3 <key>", for errors

	nparts int
	next   int    // part to hand out next
	held   int    // slot whose buffer cur points into, or -1
	cur    []byte // unread rest of the current part
	err    error  // sticky
}

type partSlot struct {
	ready chan partResult // worker → reader, one part at a time
	free  chan struct{}   // reader → worker: the previous part is consumed
}

type partResult struct {
	buf []byte
	err error
}

// newPartReader starts the workers. ctx bounds every GET; Close (or ctx's
// end) stops them all.
func newPartReader(ctx context.Context, what string, size, partSize int64, parts int, get getRange, stats *partStats) *partReader {
	if stats == nil {
		stats = &partStats{}
	}
	nparts := int((size + partSize - 1) / partSize)
	ctx, cancel := context.WithCancel(ctx)
	r := &partReader{ctx: ctx, cancel: cancel, stats: stats, what: what, nparts: nparts, held: -1,
		slots: make([]partSlot, min(parts, nparts))}
	bufSize := min(partSize, size)
	for w := range r.slots {
		r.slots[w] = partSlot{ready: make(chan partResult, 1), free: make(chan struct{}, 1)}
		r.wg.Add(1)
		stats.workers.Add(1)
		go r.work(w, size, partSize, bufSize, get)
	}
	return r
}

func (r *partReader) work(w int, size, partSize, bufSize int64, get getRange) {
	defer r.wg.Done()
	defer r.stats.workers.Add(-1)
	s := r.slots[w]
	var buf []byte
	for i := w; i < r.nparts; i += len(r.slots) {
		if buf == nil {
			buf = make([]byte, bufSize)
			r.stats.buffers.Add(1)
		} else {
			select { // the buffer still holds part i-n until the reader is done with it
			case <-s.free:
			case <-r.ctx.Done():
				return
			}
		}
		off := int64(i) * partSize
		dst := buf[:min(partSize, size-off)]
		err := r.fetch(i, off, dst, get)
		select {
		case s.ready <- partResult{buf: dst, err: err}:
		case <-r.ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// fetch GETs one part, retrying what may pass (a reset, a 5xx, a short
// body) a bounded number of times; a changed or vanished object and a
// cancelled context are final.
func (r *partReader) fetch(i int, off int64, dst []byte, get getRange) error {
	var err error
	for attempt := 1; ; attempt++ {
		if err = get(r.ctx, off, dst); err == nil {
			return nil
		}
		if r.ctx.Err() != nil || errors.Is(err, ErrObjectChanged) || fault.IsPermanent(err) || attempt == partAttempts {
			return fmt.Errorf("part %d (bytes %d-%d), attempt %d of %d: %w", i, off, off+int64(len(dst))-1, attempt, partAttempts, err)
		}
		r.stats.retries.Add(1)
		// The stager puts its attempt's logger (job, package, attempt ids)
		// in ctx; without one this logs nothing.
		zerolog.Ctx(r.ctx).Warn().Err(err).Int("part", i).Int64("offset", off).Int("part_attempt", attempt).
			Str("object", r.what).Msg("s3 part failed, fetching it again")
		t := time.NewTimer(partBackoff << (attempt - 1))
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return fmt.Errorf("part %d: %w", i, r.ctx.Err())
		}
	}
}

// Read implements io.Reader: the bytes of part 0, then part 1, …
func (r *partReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.cur) == 0 {
		if r.held >= 0 {
			r.slots[r.held].free <- struct{}{} // capacity 1, and only one part per slot is out
			r.held = -1
		}
		if r.next == r.nparts {
			r.err = io.EOF
			return 0, io.EOF
		}
		w := r.next % len(r.slots)
		select {
		case res := <-r.slots[w].ready:
			if res.err != nil {
				r.err = r.wrap(res.err)
				return 0, r.err
			}
			r.cur, r.held = res.buf, w
			r.next++
		case <-r.ctx.Done():
			r.err = transient(r.what, r.ctx.Err())
			return 0, r.err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// wrap keeps a classified error's class and makes anything else transient.
func (r *partReader) wrap(err error) error {
	if fault.IsPermanent(err) {
		return err
	}
	return transient(r.what, err)
}

// Close stops every worker and waits for them, so no GET outlives the read.
func (r *partReader) Close() error {
	r.cancel()
	r.wg.Wait()
	if r.err == nil {
		r.err = errors.New("read after close")
	}
	return nil
}
