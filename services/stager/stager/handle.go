package stager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/services/stager/unpack"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// attempt is one delivery of one request being handled.
type attempt struct {
	msg     jetstream.Msg
	reqID   string // CloudEvent id of the request
	req     event.Request
	n       int // delivery count, 1-based
	log     zerolog.Logger
	dest    dest.Location
	started time.Time
	read    atomic.Int64 // archive bytes read so far
	// lease and unlock are the copy's lease and in-process lock while this
	// attempt holds them; handle lets go of both once the outcome is out.
	lease  *lease.Lease
	unlock func()
	// unleased says presentUnleased answered: the answer holds nothing.
	unleased bool
	// handedOff says the outbox owns the attempt's outcome: it settles the
	// message and lets go of the lease and the lock after the PubAck.
	handedOff bool
	// startedPub is the staging.started publication in flight; its PubAck is
	// awaited before the done goes out (startedWait).
	startedPub jetstream.PubAckFuture
}

func (a *attempt) outcome(s *service) event.Outcome {
	loc := a.req.Destination.Location
	return event.Outcome{
		JobID: a.req.JobID, PackageID: a.req.PackageID, Site: s.cfg.Site, Location: loc,
		Attempt: a.n, RequestID: a.reqID, Instance: dest.SafeInstance(s.cfg.Instance),
	}
}

// handle settles m exactly once: it publishes the outcome of the attempt and
// only then acks (done, or a permanent failure: Term) or hands the message
// back with a delay (a transient failure).
func (s *service) handle(ctx context.Context, m jetstream.Msg) {
	// A bug met by one message must not take down the instance (or, in the
	// demo, every service in the process): the message goes back, and after
	// MaxDeliver it ends as retries_exhausted.
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Any("panic", r).Str("stack", string(debug.Stack())).Msg("handler panicked; handing the message back")
			_ = m.NakWithDelay(s.cfg.RetryMax)
		}
	}()
	n := 1
	if md, err := m.Metadata(); err == nil {
		n = int(md.NumDelivered)
	}
	env, err := event.Decode(m.Data())
	var req event.Request
	if err == nil {
		req, err = event.DataAs[event.Request](env)
	}
	if err != nil {
		s.refuse(ctx, m, env, n, err)
		return
	}
	a := &attempt{
		msg: m, reqID: env.ID, req: req, n: n, started: time.Now(),
		log: s.log.With().Str(logx.JobID, req.JobID).Str(logx.PackageID, req.PackageID).
			Int(logx.Attempt, n).Str(logx.EventID, env.ID).Logger(),
	}
	s.mu.Lock()
	s.busy++
	s.mu.Unlock()
	s.m.inflight.Inc()
	defer func() {
		s.mu.Lock()
		s.busy--
		s.mu.Unlock()
		s.m.inflight.Dec()
	}()

	if s.withdrawn(ctx, a) {
		return
	}

	// InProgress keeps a short AckWait from redelivering a healthy but long
	// package; a dead stager stops sending it and the work moves on quickly.
	hctx, stop := context.WithCancel(ctx)
	defer stop()
	go s.keepAlive(hctx, a)
	// The copy is let go of only once the outcome is published: here, or
	// by the outbox after the done's PubAck.
	defer func() {
		if !a.handedOff {
			s.letGo(ctx, a)
		}
	}()

	done, err := s.stage(hctx, a)
	stop()
	if err == nil && s.outbox != nil {
		// The outcome is decided and the copy (if any) committed: the
		// worker need not wait for the done's PubAck, the ack, nor the
		// lease's release. The outbox does them in that order and only
		// then lets go of the lease and the lock.
		s.startedWait(a)
		s.succeedLater(ctx, a, done)
		return
	}
	if err == nil {
		s.startedWait(a)
		s.succeed(ctx, a, done)
		return
	}
	s.fail(ctx, a, err)
}

// keepAlive sends InProgress and publishes progress until ctx ends.
func (s *service) keepAlive(ctx context.Context, a *attempt) {
	beat := time.NewTicker(max(s.cfg.AckWait/4, 100*time.Millisecond))
	defer beat.Stop()
	prog := time.NewTicker(s.cfg.ProgressInterval)
	defer prog.Stop()
	var seq int
	var last int64
	lastAt := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if err := a.msg.InProgress(); err != nil {
				a.log.Warn().Err(err).Msg("in-progress")
			}
		case now := <-prog.C:
			done := a.read.Load()
			if done == last {
				continue
			}
			seq++
			rate := float64(done-last) / now.Sub(lastAt).Seconds()
			last, lastAt = done, now
			p := event.Progress{Outcome: a.outcome(s), BytesDone: done, BytesTotal: a.req.SizeBytes, RateBytesPerSecond: max(rate, 0)}
			id := "progress:" + a.reqID + ":" + strconv.Itoa(a.n) + ":" + strconv.Itoa(seq)
			if err := s.publish(ctx, subject.Progress, id, a.req.PackageID, p); err != nil && ctx.Err() == nil {
				a.log.Warn().Err(err).Msg("progress event")
			}
		}
	}
}

// stage does the work of one attempt and returns the done event's data.
func (s *service) stage(ctx context.Context, a *attempt) (event.Done, error) {
	src, d, err := s.resolve(a.req)
	if err != nil {
		return event.Done{}, err
	}
	a.dest = d
	// The pure control plane: a verified copy that nobody is deleting is
	// answered from one read of its lease (presentUnleased, lease.go), with
	// no staging.started (the ledger records a done without one: the done
	// carries its own attempt and time) and no lease taken or released.
	if done, ok := s.presentUnleased(ctx, a); ok {
		a.unleased = true
		return done, nil
	}
	// Published without waiting: its PubAck is awaited before the done
	// (startedWait), while the lease is taken and the package staged.
	if a.startedPub, err = s.publishAsync(subject.Started, "started:"+a.reqID+":"+strconv.Itoa(a.n), a.req.PackageID, event.Started{Outcome: a.outcome(s)}); err != nil {
		return event.Done{}, fault.Transient(event.ReasonIOError, err)
	}
	// One owner of the copy at a time: this instance's workers queue on the
	// in-process lock, every instance of the site on the copy's lease.
	// Another instance may be deleting the copy (claimed, not yet removed),
	// and a copy reported present must still be there: the only way around
	// them is presentUnleased's, which found the copy present with nobody
	// holding its lease. Both are held until the outcome is published
	// (handle lets go of them).
	a.unlock, err = s.lock(ctx, d.Name+"/"+a.req.PackageID)
	if err != nil {
		return event.Done{}, fault.Transient(event.ReasonIOError, err)
	}
	a.lease, err = s.acquireLease(ctx, d, a.req.PackageID, lease.Holder{Purpose: lease.PurposeStage, JobID: a.req.JobID, RequestID: a.reqID}, a.log)
	if err != nil {
		return event.Done{}, fault.Transient(event.ReasonIOError, fmt.Errorf("lease of %s at %s: %w", a.req.PackageID, d.Name, err))
	}
	if m, ok := d.Present(a.req.PackageID, a.req.Checksum); ok {
		return s.doneData(a, m.Count(), true), nil
	}
	release, err := s.reserve(d, a.req.SizeBytes)
	if err != nil {
		return event.Done{}, err
	}
	defer release()

	backend, err := s.backend(src)
	if err != nil {
		return event.Done{}, err
	}
	files, err := s.manifestFiles(ctx, a)
	if err != nil {
		return event.Done{}, err
	}
	a.log.Info().Str("source", src.Name).Str("key", a.req.Source.Key).Int64("size_bytes", a.req.SizeBytes).Msg("staging")
	r, err := backend.Open(a.log.WithContext(ctx), a.req.Source.Key) // the backend logs with the attempt's ids
	if err != nil {
		return event.Done{}, err
	}
	defer r.Close()
	r = archive.Throttle(ctx, r, s.cfg.ReadRate)
	tmp, err := d.TempDir(a.req.PackageID)
	if err != nil {
		return event.Done{}, err
	}
	committed := false
	defer func() {
		if !committed {
			if err := removeAll(tmp); err != nil {
				a.log.Error().Err(err).Str("dir", tmp).Msg("removing temp dir")
			}
		}
	}()
	sum := strings.TrimPrefix(a.req.Checksum, "sha256:")
	res, err := unpack.Extract(ctx, r, tmp, unpack.Options{
		Size: a.req.SizeBytes, SHA256: sum, Files: files,
		MaxEntries: s.cfg.MaxEntries, MaxTotalBytes: s.cfg.MaxUnpackedBytes, HashFiles: s.cfg.HashFiles, Read: &a.read,
		DirMode: d.Perms.Dir(), FileMode: d.Perms.File(), ChangeGroup: d.Perms.ChangeGroup, GID: d.Perms.GID,
		Sync: d.Sync,
	})
	s.m.bytes.Add(float64(a.read.Load()))
	if err != nil {
		return event.Done{}, err
	}
	s.m.syncWait.WithLabelValues(d.Name, string(d.Sync)).Observe(res.Synced.Seconds())
	// A lease lost while extracting (this instance lost touch for longer
	// than its TTL) may be another's now: do not put a copy in place that a
	// deletion may be removing; the redelivery starts over.
	if err := s.confirmLease(ctx, a.lease, a.log); err != nil {
		return event.Done{}, fault.Transient(event.ReasonIOError, err)
	}
	c, err := d.Commit(tmp, a.req.PackageID, dest.Manifest{
		PackageID: a.req.PackageID, Checksum: a.req.Checksum, SizeBytes: res.Bytes, List: res.Files, StagedAt: time.Now().UTC(),
	})
	if err != nil {
		return event.Done{}, err
	}
	committed = true
	done := s.doneData(a, res.Files.Len(), c.Already)
	if c.Quarantined != "" {
		// Never deleted: it may be someone's work. The done event says
		// where it went, so the ledger and the operator can find it.
		done.Quarantined = c.Quarantined
		s.m.quarantined.WithLabelValues(d.Name).Inc()
		a.log.Warn().Str(logx.Location, d.Name).Str("quarantined", c.Quarantined).
			Msg("the final path held something that was not this package's verified copy; moved it to the quarantine")
	}
	return done, nil
}

func (s *service) doneData(a *attempt, files int, already bool) event.Done {
	return event.Done{
		Outcome: a.outcome(s), Path: a.dest.Final(a.req.PackageID), SizeBytes: a.req.SizeBytes, Files: files,
		DurationSeconds: time.Since(a.started).Seconds(), AlreadyPresent: already,
	}
}

// resolve finds the request's source and destination in the topology. The
// planner resolved them too, but the topology may have changed since, and a
// request must never make this stager read or write where it should not.
func (s *service) resolve(req event.Request) (topology.Location, dest.Location, error) {
	bad := func(format string, args ...any) (topology.Location, dest.Location, error) {
		return topology.Location{}, dest.Location{}, fault.Permanent(event.ReasonBadRequest, fmt.Errorf(format, args...))
	}
	if req.Destination.Site != s.cfg.Site {
		return bad("request for site %q reached the stager of site %q", req.Destination.Site, s.cfg.Site)
	}
	d, ok := s.dests[req.Destination.Location]
	if !ok {
		return bad("destination %q is not an active processing location of site %q", req.Destination.Location, s.cfg.Site)
	}
	src, ok := s.topo.Location(req.Source.Location)
	if !ok {
		return bad("source location %q is not in the topology", req.Source.Location)
	}
	if src.Type != topology.TypeLongTermArchive && src.Type != topology.TypeBuffer {
		return bad("source location %q is a %s location, not an archive", src.Name, src.Type)
	}
	if req.Source.Storage != "" && req.Source.Storage != src.Storage {
		return bad("source location %q is %s storage, the request says %s", src.Name, src.Storage, req.Source.Storage)
	}
	if req.Format != "tar" {
		return bad("format %q is not supported", req.Format)
	}
	return src, d, nil
}

func (s *service) backend(loc topology.Location) (archive.Backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.backends[loc.Name]; ok {
		return b, nil
	}
	open := archive.For
	if s.cfg.openBackend != nil {
		open = s.cfg.openBackend
	}
	b, err := open(loc, s.cfg.S3Credentials[loc.Name])
	if err != nil {
		return nil, fault.Permanent(event.ReasonBadRequest, err)
	}
	// A backend with counters of its own (S3's parallel parts) exports them
	// once, when it is first built.
	if c, ok := b.(interface {
		Collectors(location string) []prometheus.Collector
	}); ok {
		for _, col := range c.Collectors(loc.Name) {
			if err := s.m.reg.Register(col); err != nil {
				return nil, fmt.Errorf("metrics of location %s: %w", loc.Name, err)
			}
		}
	}
	s.backends[loc.Name] = b
	return b, nil
}

// lock serialises work on one package at one location within this
// instance, so two jobs asking for the same package extract it once.
func (s *service) lock(ctx context.Context, key string) (func(), error) {
	for {
		s.mu.Lock()
		ch, busy := s.locks[key]
		if !busy {
			ch = make(chan struct{})
			s.locks[key] = ch
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				delete(s.locks, key)
				s.mu.Unlock()
				close(ch)
			}, nil
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// reserve checks that the destination has room for the package next to the
// packages in flight, and holds that room until release.
func (s *service) reserve(d dest.Location, size int64) (func(), error) {
	need := int64(float64(size) * s.cfg.FreeSpaceFactor)
	free, err := d.Free()
	if err != nil {
		return nil, fault.Transient(event.ReasonIOError, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if free-s.reserved[d.Name] < need {
		return nil, fault.Transient(event.ReasonNoSpace, fmt.Errorf("%s has %d bytes free, %d promised to packages in flight, this one needs %d",
			d.Root, free, s.reserved[d.Name], need))
	}
	s.reserved[d.Name] += need
	return func() {
		s.mu.Lock()
		s.reserved[d.Name] -= need
		s.mu.Unlock()
	}, nil
}

func (s *service) succeed(ctx context.Context, a *attempt, done event.Done) {
	if err := s.publish(ctx, subject.Done, "done:"+a.reqID, a.req.PackageID, done); err != nil {
		// Nothing is lost: the package is in place, so the redelivery
		// answers already_present with the same event id.
		a.log.Error().Err(err).Msg("publishing done; handing the request back")
		s.nak(a, s.cfg.RetryBase)
		return
	}
	s.succeeded(a, done)
	s.ack(ctx, a)
}

// succeeded counts and logs a done event that is durably published.
func (s *service) succeeded(a *attempt, done event.Done) {
	outcome := "done"
	if done.AlreadyPresent {
		outcome = "already_present"
	}
	s.m.outcomes.WithLabelValues(outcome, "").Inc()
	s.m.duration.Observe(done.DurationSeconds)
	a.log.Info().Str("path", done.Path).Int("files", done.Files).Bool("already_present", done.AlreadyPresent).
		Float64("duration_seconds", done.DurationSeconds).Msg("staged")
}

// fail publishes the failed event of the attempt and settles the message:
// Term when the failure is permanent, otherwise a delayed redelivery. When
// the last delivery fails, the MAX_DELIVERIES advisory ends the request as
// retries_exhausted (see deadLetters).
func (s *service) fail(ctx context.Context, a *attempt, err error) {
	reason := fault.Reason(err, event.ReasonIOError)
	permanent := fault.IsPermanent(err)
	// A mismatch may be a bad read rather than a bad copy: read again before
	// declaring the package corrupt.
	if permanent && reason == event.ReasonChecksumMismatch && a.n < s.cfg.ChecksumAttempts {
		permanent = false
	}
	f := event.Failed{Outcome: a.outcome(s), Reason: reason, Message: truncate(err.Error(), 2000), Permanent: permanent}
	if err := s.publish(ctx, subject.Failed, "failed:"+a.reqID+":"+strconv.Itoa(a.n), a.req.PackageID, f); err != nil {
		a.log.Error().Err(err).Msg("publishing failed event; handing the request back")
		s.nak(a, s.cfg.RetryBase)
		return
	}
	s.m.outcomes.WithLabelValues(map[bool]string{true: "failed", false: "retry"}[permanent], reason).Inc()
	if permanent {
		a.log.Error().Err(err).Str("reason", reason).Msg("package failed")
		if err := a.msg.TermWithReason(reason); err != nil {
			a.log.Error().Err(err).Msg("term")
		}
		return
	}
	delay := s.backoff(a.n)
	if reason == event.ReasonNoSpace {
		delay = s.cfg.NoSpaceDelay
	}
	if a.n >= s.cfg.MaxDeliver {
		delay = 0 // nothing left to wait for: let the advisory fire now
	}
	a.log.Warn().Err(err).Str("reason", reason).Dur("retry_in", delay).Msg("attempt failed, will retry")
	s.nak(a, delay)
}

func (s *service) ack(ctx context.Context, a *attempt) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := a.msg.DoubleAck(actx); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		a.log.Error().Err(err).Msg("ack lost; the redelivery will answer already_present")
	}
}

func (s *service) nak(a *attempt, d time.Duration) {
	var err error
	if d <= 0 {
		err = a.msg.Nak()
	} else {
		err = a.msg.NakWithDelay(d)
	}
	if err != nil {
		a.log.Error().Err(err).Msg("nak lost; the server redelivers after AckWait")
	}
}

// backoff is the delay before delivery n+1 by the shared retry policy
// (bus.Retry, which the ledger's explain reads too): RetryBase doubling per
// attempt, capped at RetryMax, with ±20 % jitter so a site's failed
// packages do not all come back in the same second.
func (s *service) backoff(n int) time.Duration {
	return s.cfg.Consumers().Retry.Delay(n, "")
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// refuse ends a message that is not a valid request. When enough of it can
// be read to say which package it was about, a permanent bad_request failure
// is published so the ledger sees it; then the message is terminated, never
// redelivered.
func (s *service) refuse(ctx context.Context, m jetstream.Msg, env event.Envelope, n int, cause error) {
	log := s.log.With().Int(logx.Attempt, n).Str(logx.EventID, env.ID).Logger()
	var loose struct {
		JobID       string `json:"job_id"`
		PackageID   string `json:"package_id"`
		Destination struct {
			Location string `json:"location"`
		} `json:"destination"`
	}
	_ = json.Unmarshal(env.Data, &loose)
	if env.ID != "" && idRE.MatchString(loose.JobID) && idRE.MatchString(loose.PackageID) && nameRE.MatchString(loose.Destination.Location) {
		f := event.Failed{
			Outcome: event.Outcome{JobID: loose.JobID, PackageID: loose.PackageID, Site: s.cfg.Site, Location: loose.Destination.Location,
				Attempt: n, RequestID: env.ID, Instance: dest.SafeInstance(s.cfg.Instance)},
			Reason: event.ReasonBadRequest, Message: truncate("invalid request: "+cause.Error(), 2000), Permanent: true,
		}
		if err := s.publish(ctx, subject.Failed, "failed:"+env.ID+":"+strconv.Itoa(n), loose.PackageID, f); err != nil {
			log.Error().Err(err).Msg("publishing failed event for an invalid request; handing it back")
			if err := m.NakWithDelay(s.backoff(n)); err != nil {
				log.Error().Err(err).Msg("nak")
			}
			return
		}
	}
	s.m.outcomes.WithLabelValues("failed", event.ReasonBadRequest).Inc()
	log.Error().Err(cause).Msg("invalid request message; terminating it")
	if err := m.TermWithReason(event.ReasonBadRequest); err != nil {
		log.Error().Err(err).Msg("term")
	}
}

// publish builds an event with event.New and publishes it, with its own
// deadline so that outcomes still go out while shutdown cancels ctx.
func (s *service) publish(ctx context.Context, subj, id, sub string, data event.Data) error {
	env, err := event.New(s.source, id, sub, data)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err = bus.Publish(pctx, s.js, subj, env)
	return err
}

// publishAsync publishes an event without waiting for its PubAck.
func (s *service) publishAsync(subj, id, sub string, data event.Data) (jetstream.PubAckFuture, error) {
	env, err := event.New(s.source, id, sub, data)
	if err != nil {
		return nil, err
	}
	m, err := bus.Msg(subj, env)
	if err != nil {
		return nil, err
	}
	return s.js.PublishMsgAsync(m)
}

// startedWait waits for the started event's PubAck, so the ledger never
// gets a done before its started from this attempt. A started that did not
// make it is only logged: the done carries its own attempt and time.
func (s *service) startedWait(a *attempt) {
	if a.startedPub == nil {
		return
	}
	if err := awaitPubAck(a.startedPub); err != nil {
		a.log.Warn().Err(err).Msg("started event not stored; the done says the attempt")
	}
}

// letGo releases the attempt's lease and in-process lock.
func (s *service) letGo(ctx context.Context, a *attempt) {
	s.releaseLease(ctx, a.lease, a.log)
	if a.unlock != nil {
		a.unlock()
	}
}

// removeAll removes a temp dir; a dir that is already gone is fine.
func removeAll(dir string) error { return os.RemoveAll(dir) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
