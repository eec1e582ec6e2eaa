package stager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// errCancelled withdraws a request whose job was cancelled before the
// request started: a permanent failure with reason cancelled.
var errCancelled = errors.New("job cancelled before this package started")

// cancelled reports whether the planner recorded the job as cancelled in
// the CANCELLED bucket. The bucket is the planner's (a stager may only read
// it); until the planner has created it nothing is cancelled. A failed
// lookup stages the package anyway: staging a package no longer wanted
// costs a transfer, withdrawing a wanted one would fail a job.
//
// The watched view (cancelView) answers when it can; the bucket only while
// the view is not loaded.
func (s *service) cancelled(ctx context.Context, jobID string) (bool, error) {
	if c, ok := s.cancels.lookup(jobID, time.Now()); ok {
		s.m.cancelLookups.WithLabelValues("view").Inc()
		return c, nil
	}
	s.m.cancelLookups.WithLabelValues("bucket").Inc()
	kv := s.cancelKV.Load()
	if kv == nil {
		b, err := s.js.KeyValue(ctx, subject.CancelledBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("kv bucket %s: %w", subject.CancelledBucket, err)
		}
		s.cancelKV.Store(&b)
		kv = &b
	}
	_, err := (*kv).Get(ctx, jobID)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("cancelled %s: %w", jobID, err)
	}
}

// withdrawn checks the request's job before any work: a cancelled job's
// request is settled as failed/cancelled (permanent) without reading the
// archive. In-flight packages are never interrupted: a half-done copy is
// cheaper to finish than to clean up, and the copy may serve other jobs.
func (s *service) withdrawn(ctx context.Context, a *attempt) bool {
	c, err := s.cancelled(ctx, a.req.JobID)
	if err != nil {
		a.log.Warn().Err(err).Msg("cannot tell whether the job is cancelled; staging it")
		return false
	}
	if !c {
		return false
	}
	a.log.Info().Msg("job cancelled: request withdrawn")
	s.fail(ctx, a, fault.Permanent(event.ReasonCancelled, errCancelled))
	return true
}
