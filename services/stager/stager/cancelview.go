package stager

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// cancelView is this instance's copy of the CANCELLED bucket, kept by a
// watch, so that the withdrawn check of every request costs a map lookup
// instead of a KV round trip.
//
// The view may lag the bucket by the watch's delivery delay: a request
// fetched in that moment is staged although its job was just cancelled.
// That is the case a cancel arriving right after the check has always
// been (the check was never atomic with the start): the package is staged,
// its done still counts (a done is final, whatever the order with the
// cancel), and the copy, referenced by nobody once the cancel dropped the
// job's references, goes with the next sweep. Until the watch has
// delivered the bucket's initial contents, and whenever it is not running,
// lookups fall back to the KV get.
type cancelView struct {
	mu    sync.RWMutex
	ready bool
	ttl   time.Duration        // the bucket's entry age limit (0: none)
	jobs  map[string]time.Time // job id -> when it was cancelled
}

func newCancelView() *cancelView { return &cancelView{jobs: map[string]time.Time{}} }

// lookup says whether jobID is cancelled, and ok=false while the view
// cannot tell (not loaded yet).
func (v *cancelView) lookup(jobID string, now time.Time) (cancelled, ok bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if !v.ready {
		return false, false
	}
	at, found := v.jobs[jobID]
	// An entry past the bucket's age limit is gone from the bucket even
	// though no delete was watched: answer as the KV get would.
	return found && (v.ttl <= 0 || now.Sub(at) < v.ttl), true
}

func (v *cancelView) apply(e jetstream.KeyValueEntry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e == nil {
		v.ready = true // the initial contents are in
		return
	}
	switch e.Operation() {
	case jetstream.KeyValuePut:
		v.jobs[e.Key()] = e.Created()
	default:
		delete(v.jobs, e.Key())
	}
}

// reset forgets everything: lookups fall back to the bucket until a new
// watch has delivered its initial contents.
func (v *cancelView) reset(ttl time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ready, v.ttl, v.jobs = false, ttl, map[string]time.Time{}
}

// prune drops entries past the bucket's age limit, so the view holds what
// the bucket holds (a month of cancellations by default).
func (v *cancelView) prune(now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ttl <= 0 {
		return
	}
	for k, at := range v.jobs {
		if now.Sub(at) >= v.ttl {
			delete(v.jobs, k)
		}
	}
}

// watchCancelled keeps s.cancels up to date until ctx ends: it waits for
// the planner to create the bucket, watches it, and starts over (with the
// view falling back to the bucket meanwhile) when the watch ends.
func (s *service) watchCancelled(ctx context.Context, log zerolog.Logger) {
	const retry = 2 * time.Second
	for ctx.Err() == nil {
		err := s.watchCancelledOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			log.Warn().Err(err).Str("bucket", subject.CancelledBucket).Msg("watching cancelled jobs; the bucket is asked per request meanwhile")
		}
		sleepCtx(ctx, retry)
	}
}

func (s *service) watchCancelledOnce(ctx context.Context) error {
	kv, err := s.js.KeyValue(ctx, subject.CancelledBucket)
	if err != nil {
		return err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return err
	}
	s.cancels.reset(st.TTL())
	defer s.cancels.reset(0)
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-prune.C:
			s.cancels.prune(now)
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch of " + subject.CancelledBucket + " ended")
			}
			s.cancels.apply(e)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
