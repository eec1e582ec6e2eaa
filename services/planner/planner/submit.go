package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/inflight"
	"github.com/ccatobs/ccat-staging/services/planner/jobs"
	"github.com/ccatobs/ccat-staging/services/planner/publish"
	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// retryAfter asks for the submit to be delivered again after d: the
// catalog may not have caught up with the archive yet.
type retryAfter struct {
	d   time.Duration
	why string
}

func (r *retryAfter) Error() string { return r.why }

// handleSubmit plans one submit and settles it: acked once the plan and
// every request are acknowledged by JetStream (or the submit was a
// duplicate), terminated after a staging.rejected is published, delivered
// again later on anything transient.
func (s *service) handleSubmit(ctx context.Context, m jetstream.Msg) {
	start := time.Now()
	log := s.log.With().Str("consumer", subject.PlannerSubmit).Logger()
	md, err := m.Metadata()
	if err != nil {
		// Only a message not from JetStream lacks metadata; nothing to settle.
		log.Error().Err(err).Msg("submit without JetStream metadata")
		return
	}
	log = log.With().Uint64(logx.StreamSeq, md.Sequence.Stream).Uint64("delivered", md.NumDelivered).Logger()
	// The logger travels in ctx and gains the submit's ids as submit
	// learns them, so the lines below carry them too.
	ctx = log.WithContext(ctx)
	outcome, err := s.submit(ctx, m, md)
	log = *zerolog.Ctx(ctx)
	if ra, ok := errors.AsType[*retryAfter](err); ok {
		s.m.submits.WithLabelValues("retried").Inc()
		log.Info().Str("why", ra.why).Dur("retry_in", ra.d).Msg("submit delayed")
		if err := m.NakWithDelay(ra.d); err != nil {
			log.Error().Err(err).Msg("nak lost; the server redelivers after AckWait")
		}
		return
	}
	switch {
	case err == nil:
		s.m.submits.WithLabelValues(outcome).Inc()
		if outcome == "planned" {
			s.m.planSeconds.Observe(time.Since(start).Seconds())
		}
	case fault.IsPermanent(err):
		s.m.submits.WithLabelValues("rejected").Inc()
	default:
		s.m.submits.WithLabelValues("retried").Inc()
	}
	bus.Settle(ctx, m, err, log)
}

// submit returns the outcome ("planned" or "duplicate") or an error: a
// permanent one after the rejection is published, *retryAfter, or a
// transient one.
func (s *service) submit(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata) (string, error) {
	log := zerolog.Ctx(ctx)
	env, err := event.Decode(m.Data())
	if err != nil {
		id := m.Headers().Get(jetstream.MsgIDHeader)
		if id == "" {
			id = "seq-" + strconv.FormatUint(md.Sequence.Stream, 10)
		}
		return "", s.reject(ctx, *log, "", id, event.ReasonInvalidRequest, "not a valid CloudEvent: "+err.Error())
	}
	log.UpdateContext(func(c zerolog.Context) zerolog.Context { return c.Str(logx.EventID, env.ID) })
	sub, err := event.DataAs[event.Submit](env)
	if err != nil {
		reason := event.ReasonInvalidRequest
		if otherVersion(env.Type) {
			// A client speaking a submit version this planner does not know
			// gets told so, rather than that its request is malformed.
			reason = event.ReasonUnsupportedVersion
		}
		return "", s.reject(ctx, *log, jobIDOf(env.Data), env.ID, reason, err.Error())
	}
	if sub.Priority == "" {
		sub.Priority = event.PriorityNormal
	}
	log.UpdateContext(func(c zerolog.Context) zerolog.Context { return c.Str(logx.JobID, sub.JobID) })
	rej := func(reason, msg string) error { return s.reject(ctx, *log, sub.JobID, env.ID, reason, msg) }

	// job_id first: a resubmit of a planned job is a no-op even if the
	// topology or catalog changed since.
	hash := jobs.Hash(sub)
	v, rec, err := s.jobs.Check(ctx, sub.JobID, hash)
	if err != nil {
		return "", err
	}
	switch v {
	case jobs.Duplicate:
		log.Info().Str("first_submit_id", rec.SubmitID).Msg("job already planned with the same content; nothing to do")
		return "duplicate", nil
	case jobs.Conflict:
		return "", rej(event.ReasonJobIDConflict, fmt.Sprintf("job %s was already submitted with different content (submit %s)", sub.JobID, rec.SubmitID))
	}

	if len(sub.Packages) > s.cfg.MaxPackages {
		return "", rej(event.ReasonTooManyPackages, fmt.Sprintf("%d packages, at most %d per job", len(sub.Packages), s.cfg.MaxPackages))
	}
	if dups := duplicates(sub.Packages); len(dups) > 0 {
		return "", rej(event.ReasonDuplicatePackage, "packages listed more than once: "+listSome(dups))
	}
	topo := s.topo.Load()
	dest, err := route.Destination(topo, sub.Destination)
	if r, ok := errors.AsType[*route.Refusal](err); ok {
		return "", rej(r.Reason, r.Message)
	} else if err != nil {
		return "", err
	}
	log.UpdateContext(func(c zerolog.Context) zerolog.Context {
		return c.Str(logx.Site, dest.Site).Str(logx.Location, dest.Name)
	})

	// Plan against a catalog at least as new as this submit: a client that
	// announces copies and then submits must not get a plan made from the
	// copies the catalog happened to have read so far (a package known at
	// one site only, while its same-site copy was announced just before).
	if err := s.awaitCatalog(ctx, 2*time.Second); err != nil {
		if md.NumDelivered < uint64(s.cfg.UnknownPackageRetries) {
			return "", &retryAfter{s.cfg.UnknownPackageDelay, err.Error()}
		}
		log.Warn().Err(err).Msg("planning with a catalog that is still behind")
	}

	lookupStart := time.Now()
	copies, err := s.catalog.Lookup(ctx, sub.Packages, s.cfg.LookupParallel)
	if err != nil {
		return "", err
	}
	lookup := time.Since(lookupStart)
	var unknown []string
	for _, id := range sub.Packages {
		if _, ok := copies[id]; !ok {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		// The announcement may be in the ARCHIVE stream but not yet in the
		// catalog: only refuse once the catalog consumer has caught up.
		behind, err := s.catalogBehind(ctx)
		if err != nil {
			return "", err
		}
		if behind > 0 && md.NumDelivered < uint64(s.cfg.UnknownPackageRetries) {
			return "", &retryAfter{s.cfg.UnknownPackageDelay, fmt.Sprintf("%d unknown packages while the catalog has %d announcements to read", len(unknown), behind)}
		}
		// Caught up now, but an announcement may have been recorded (by any
		// planner) between the lookup and the consumer info: look again.
		more, err := s.catalog.Lookup(ctx, unknown, s.cfg.LookupParallel)
		if err != nil {
			return "", err
		}
		maps.Copy(copies, more)
		unknown = slices.DeleteFunc(unknown, func(id string) bool { _, ok := more[id]; return ok })
		if len(unknown) > 0 {
			return "", rej(event.ReasonUnknownPackage, "packages not in the catalog: "+listSome(unknown))
		}
	}

	p := makePlan(topo, dest, sub, copies)
	var failed []string
	for _, pp := range p.Packages {
		if pp.Status == event.StatusFailed {
			s.m.packageFailed.WithLabelValues(pp.Reason).Inc()
			failed = append(failed, pp.PackageID)
		}
	}
	if len(failed) > 0 {
		// One line per job, not per package: a job can have thousands.
		log.Warn().Int("packages", len(failed)).Str("reason", event.ReasonNoSource).Str("which", listSome(failed)).Msg("packages without a usable source")
	}

	switch v, rec, err := s.jobs.Claim(ctx, sub.JobID, hash, env.ID, len(sub.Packages)); {
	case err != nil:
		return "", err
	case v == jobs.Duplicate:
		return "duplicate", nil
	case v == jobs.Conflict:
		return "", rej(event.ReasonJobIDConflict, fmt.Sprintf("job %s was already submitted with different content (submit %s)", sub.JobID, rec.SubmitID))
	}
	// A long plan must not outlive the submit's AckWait.
	_ = m.InProgress()
	follows, err := s.dedup(ctx, sub.JobID, &p)
	if err != nil {
		return "", err
	}
	// References before requests: a deletion decided earlier is cancelled
	// before any stager can see this job's request.
	if err := s.reference(ctx, sub.JobID, p); err != nil {
		return "", err
	}

	pubStart := time.Now()
	planned, err := s.plannedMsgs(p)
	if err != nil {
		return "", err
	}
	reqs, err := s.requestMsgs(ctx, p, sub, dest, copies, follows, log)
	if err != nil {
		return "", err
	}
	if _, err := publish.All(ctx, s.js, planned, s.cfg.PublishWindow); err != nil {
		return "", err
	}
	res, err := publish.All(ctx, s.js, reqs, s.cfg.PublishWindow)
	if err != nil {
		return "", err
	}
	s.m.requests.WithLabelValues(dest.Site, sub.Priority).Add(float64(len(reqs)))
	if err := s.jobs.MarkPlanned(ctx, sub.JobID); err != nil {
		return "", err
	}
	log.Info().Int("packages", len(sub.Packages)).Int("requests", len(reqs)).Int("duplicates", res.Duplicates).Int("following", len(follows)).
		Dur("catalog_lookup", lookup).Dur("publish", time.Since(pubStart)).
		Int("plan_parts", len(planned)).Str("priority", sub.Priority).Msg("job planned")
	return "planned", nil
}

// awaitCatalog waits until the catalog consumer has finished with every
// ARCHIVE message stored before the call, or fails after within.
func (s *service) awaitCatalog(ctx context.Context, within time.Duration) error {
	si, err := s.archiveStream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s info: %w", subject.ArchiveStream, err)
	}
	target := si.State.LastSeq
	deadline := time.Now().Add(within)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		ci, err := s.catCons.Info(ctx)
		if err != nil {
			return fmt.Errorf("consumer %s info: %w", subject.PlannerCatalog, err)
		}
		if ci.AckFloor.Stream >= target {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("catalog is %d announcements behind after %s", target-ci.AckFloor.Stream, within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// catalogBehind says how many ARCHIVE messages the catalog consumer has not
// finished with. It compares the consumer's ack floor with the stream's
// last sequence rather than trusting the consumer's pending counts, which
// the server updates asynchronously: an announcement stored just before the
// submit could otherwise look absent and pending-free at once.
func (s *service) catalogBehind(ctx context.Context) (uint64, error) {
	si, err := s.archiveStream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s info: %w", subject.ArchiveStream, err)
	}
	ci, err := s.catCons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer %s info: %w", subject.PlannerCatalog, err)
	}
	if ci.AckFloor.Stream >= si.State.LastSeq {
		return 0, nil
	}
	return si.State.LastSeq - ci.AckFloor.Stream, nil
}

// makePlan picks each package's source; packages without a usable copy are
// failed with no_source and the rest of the job goes ahead.
func makePlan(topo *topology.Topology, dest topology.Location, sub event.Submit, copies map[string][]route.Copy) event.Planned {
	p := event.Planned{
		JobID: sub.JobID, RequestedBy: sub.RequestedBy, Priority: sub.Priority, Note: sub.Note,
		Destination: event.Target{Site: dest.Site, Location: dest.Name},
		Packages:    make([]event.PlannedPackage, 0, len(sub.Packages)),
	}
	for _, id := range sub.Packages {
		c, at, ok := route.Source(topo, dest, copies[id])
		if !ok {
			p.Packages = append(p.Packages, event.PlannedPackage{
				PackageID: id, Status: event.StatusFailed, Reason: event.ReasonNoSource, Message: route.NoSourceMessage(topo, copies[id]),
			})
			continue
		}
		p.Packages = append(p.Packages, event.PlannedPackage{
			PackageID: id, Status: event.StatusScheduled, RequestID: RequestID(sub.JobID, id, 1),
			Source:    &event.Source{Location: at.Name, Site: at.Site, Storage: at.Storage, Key: c.Key},
			SizeBytes: c.SizeBytes, Checksum: c.Checksum,
		})
	}
	return p
}

// dedup, when enabled, lets each scheduled package follow a request of
// another job already staging it to the same location: its plan line takes
// that request's id and no request of its own is published. It returns the
// packages that follow.
func (s *service) dedup(ctx context.Context, jobID string, p *event.Planned) (map[string]bool, error) {
	if s.inflight == nil {
		return nil, nil
	}
	var wants []inflight.Want
	for _, pp := range p.Packages {
		if pp.Status == event.StatusScheduled {
			wants = append(wants, inflight.Want{Location: p.Destination.Location, PackageID: pp.PackageID, RequestID: pp.RequestID})
		}
	}
	got, err := s.inflight.Acquire(ctx, jobID, wants, s.cfg.LookupParallel)
	if err != nil {
		return nil, err
	}
	follows := map[string]bool{}
	for i, pp := range p.Packages {
		if id, ok := got[pp.PackageID]; ok && id != pp.RequestID {
			p.Packages[i].RequestID = id
			follows[pp.PackageID] = true
		}
	}
	if len(follows) > 0 {
		s.m.followed.Add(float64(len(follows)))
	}
	return follows, nil
}

// RequestID is the event id of a package's request of a generation.
func RequestID(jobID, packageID string, generation int) string {
	return "request:" + jobID + ":" + packageID + ":" + strconv.Itoa(generation)
}

// PlannedID is the event id of part n (1-based) of a job's plan.
func PlannedID(jobID string, part int) string {
	if part <= 1 {
		return "planned:" + jobID
	}
	return "planned:" + jobID + ":" + strconv.Itoa(part)
}

// plannedMsgs encodes the plan, split into parts of at most PlanPartBytes of
// package lines. The split depends only on the plan, so a re-plan after a
// crash produces the same parts with the same ids.
func (s *service) plannedMsgs(p event.Planned) ([]*nats.Msg, error) {
	var parts [][]event.PlannedPackage
	start, size := 0, 0
	for i, pp := range p.Packages {
		b, err := json.Marshal(pp)
		if err != nil {
			return nil, fmt.Errorf("encode plan of %s: %w", p.JobID, err)
		}
		if i > start && size+len(b)+1 > s.cfg.PlanPartBytes {
			parts = append(parts, p.Packages[start:i])
			start, size = i, 0
		}
		size += len(b) + 1
	}
	parts = append(parts, p.Packages[start:])
	msgs := make([]*nats.Msg, 0, len(parts))
	for i, pkgs := range parts {
		part := p
		part.Packages = pkgs
		if len(parts) > 1 {
			part.Part, part.Parts = i+1, len(parts)
		}
		env, err := event.New(Source, PlannedID(p.JobID, i+1), p.JobID, part)
		if err != nil {
			return nil, err
		}
		m, err := bus.Msg(subject.Planned, env)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// requestMsgs encodes one request per scheduled package. A file list too
// large for the request message (a catalog entry written before lists went
// by reference) goes by reference: the stager fetches and verifies it.
func (s *service) requestMsgs(ctx context.Context, p event.Planned, sub event.Submit, dest topology.Location, copies map[string][]route.Copy, follows map[string]bool, log *zerolog.Logger) ([]*nats.Msg, error) {
	subj := subject.Request(dest.Site, sub.Priority)
	msgs := make([]*nats.Msg, 0, len(p.Packages))
	for _, pp := range p.Packages {
		if pp.Status != event.StatusScheduled || follows[pp.PackageID] {
			continue
		}
		i := slices.IndexFunc(copies[pp.PackageID], func(c route.Copy) bool { return c.Location == pp.Source.Location })
		c := copies[pp.PackageID][i]
		req := event.Request{
			JobID: sub.JobID, PackageID: pp.PackageID, Generation: 1, Priority: sub.Priority,
			Source: *pp.Source, Destination: p.Destination,
			SizeBytes: c.SizeBytes, Checksum: c.Checksum, Format: c.Format, Files: c.Files, Manifest: c.Manifest,
		}
		m, err := s.requestMsg(subj, pp.RequestID, req)
		if err != nil {
			return nil, err
		}
		if int64(len(m.Data)) > s.maxPayload-4096 && len(req.Files) > 0 {
			log.Warn().Str(logx.PackageID, pp.PackageID).Int("files", len(req.Files)).Int("bytes", len(m.Data)).
				Msg("request too large with its file list inline; sending the list by reference")
			obs, err := manifest.Open(ctx, s.js)
			if err != nil {
				return nil, fault.Transient(event.ReasonIOError, err)
			}
			ref, err := manifest.Store(ctx, obs, req.Checksum, req.Files, "")
			if err != nil {
				return nil, fmt.Errorf("manifest of %s: %w", pp.PackageID, err)
			}
			s.m.manifests.Inc()
			req.Files, req.Manifest = nil, &ref
			if m, err = s.requestMsg(subj, pp.RequestID, req); err != nil {
				return nil, err
			}
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func (s *service) requestMsg(subj, id string, req event.Request) (*nats.Msg, error) {
	env, err := event.New(Source, id, req.PackageID, req)
	if err != nil {
		return nil, err
	}
	return bus.Msg(subj, env)
}

// reject publishes staging.rejected for a submit and returns the permanent
// error that terminates it. If the publication fails the error is
// transient, so the submit comes back and is judged again.
func (s *service) reject(ctx context.Context, log zerolog.Logger, jobID, submitID, reason, msg string) error {
	env, err := event.New(Source, "rejected:"+submitID, jobID, event.Rejected{JobID: jobID, SubmitID: submitID, Reason: reason, Message: msg})
	if err != nil {
		return err
	}
	if _, err := bus.Publish(ctx, s.js, subject.Rejected, env); err != nil {
		return err
	}
	s.m.rejections.WithLabelValues(reason).Inc()
	log.Warn().Str("reason", reason).Str("detail", msg).Msg("submit rejected")
	return fault.Permanent(reason, errors.New(msg))
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// jobIDOf digs the job id out of data that failed validation, so the
// rejection can still be tied to the job when the id itself is fine.
func jobIDOf(data []byte) string {
	var v struct {
		JobID any `json:"job_id"`
	}
	if json.Unmarshal(data, &v) != nil {
		return ""
	}
	if id, ok := v.JobID.(string); ok && idRE.MatchString(id) {
		return id
	}
	return ""
}

func duplicates(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	var dups []string
	for _, id := range ids {
		if seen[id] && !slices.Contains(dups, id) {
			dups = append(dups, id)
		}
		seen[id] = true
	}
	return dups
}

// listSome names at most ten items, so a message stays readable for a
// 10,000-package job.
func listSome(ids []string) string {
	if len(ids) <= 10 {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:10], ", "), len(ids)-10)
}

// otherVersion reports whether typ is a staging.submit of another version
// than the one this planner speaks, e.g. "ccat.staging.submit.v2".
func otherVersion(typ string) bool {
	v, ok := strings.CutPrefix(typ, "ccat.staging.submit.v")
	if !ok || typ == event.TypeSubmit {
		return false
	}
	_, err := strconv.Atoi(v)
	return err == nil
}
