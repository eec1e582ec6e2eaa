// Package jobs remembers which job ids the planner has accepted, so that
// job_id works as the idempotency key across redeliveries, restarts and
// several planner instances. A job is claimed (state planning) before its
// plan is published and marked planned after every publication was
// acknowledged; a crash in between leaves a claim that the redelivered
// submit picks up again, so the job is re-planned rather than lost.
package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/kvkey"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// States of a remembered job.
const (
	Planning = "planning" // claimed; plan not yet fully published
	Planned  = "planned"  // plan and every request acknowledged by JetStream
)

// Record is what the bucket holds per job id.
type Record struct {
	Hash      string    `json:"hash"`
	State     string    `json:"state"`
	SubmitID  string    `json:"submit_id"` // the submit that first claimed the job
	Packages  int       `json:"packages"`
	ClaimedAt time.Time `json:"claimed_at"`
	PlannedAt time.Time `json:"planned_at,omitzero"`
}

// Verdict is what to do with a submit given what is remembered.
type Verdict int

const (
	// New: nothing remembered; plan it.
	New Verdict = iota
	// Resume: the same content was claimed but its plan not finished (a
	// crash or a concurrent planner): plan it again; the deterministic event
	// ids make repeated publications duplicates.
	Resume
	// Duplicate: the same content was already planned; acknowledge, do nothing.
	Duplicate
	// Conflict: the id is taken by different content.
	Conflict
)

// Hash is the fingerprint of a submit's content, normalised so that what
// does not change the job's meaning (package order, an omitted default
// priority) does not change the hash.
func Hash(s event.Submit) string {
	n := s
	n.Packages = slices.Clone(s.Packages)
	slices.Sort(n.Packages)
	if n.Priority == "" {
		n.Priority = event.PriorityNormal
	}
	b, _ := json.Marshal(n) // a struct of strings always encodes
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Store reads and writes the PLANNER_JOBS bucket. Safe for concurrent use.
type Store struct {
	kv jetstream.KeyValue
}

// Open creates or updates the bucket. A record expires retention after its
// last write (0 keeps it for ever): a job id resubmitted after that is
// planned afresh, so keep retention longer than the longest job.
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int, retention time.Duration) (*Store, error) {
	if replicas == 0 {
		replicas = 1
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.PlannerJobsBucket,
		Description: "job id -> hash of the accepted submit (planner idempotency)",
		History:     1,
		TTL:         retention,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.PlannerJobsBucket, err)
	}
	return &Store{kv: kv}, nil
}

// Check says what to do with a job id and content hash without changing
// anything.
func (s *Store) Check(ctx context.Context, jobID, hash string) (Verdict, Record, error) {
	rec, _, err := s.get(ctx, jobID)
	if err != nil || rec == nil {
		return New, Record{}, err
	}
	return verdict(*rec, hash), *rec, nil
}

func verdict(rec Record, hash string) Verdict {
	switch {
	case rec.Hash != hash:
		return Conflict
	case rec.State == Planned:
		return Duplicate
	default:
		return Resume
	}
}

// Claim records the job as planning unless it is already remembered, and
// returns the verdict against what is remembered afterwards. Two planners
// claiming the same id at once: one creates, the other sees its record.
func (s *Store) Claim(ctx context.Context, jobID, hash, submitID string, packages int) (Verdict, Record, error) {
	rec := Record{Hash: hash, State: Planning, SubmitID: submitID, Packages: packages, ClaimedAt: time.Now().UTC()}
	val, err := json.Marshal(rec)
	if err != nil {
		return 0, Record{}, fmt.Errorf("encode job %s: %w", jobID, err)
	}
	for range 4 {
		if _, err = s.kv.Create(ctx, kvkey.For(jobID), val); err == nil {
			return New, rec, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, Record{}, fmt.Errorf("claim job %s: %w", jobID, err)
		}
		got, _, err := s.get(ctx, jobID)
		if err != nil {
			return 0, Record{}, err
		}
		if got != nil {
			return verdict(*got, hash), *got, nil
		}
		// Deleted in between (by an operator): try to create again.
	}
	return 0, Record{}, fmt.Errorf("claim job %s: key keeps changing", jobID)
}

// MarkPlanned records that the job's plan and requests are all published.
func (s *Store) MarkPlanned(ctx context.Context, jobID string) error {
	rec, rev, err := s.get(ctx, jobID)
	if err != nil {
		return err
	}
	if rec == nil {
		return fmt.Errorf("mark job %s planned: no claim", jobID)
	}
	if rec.State == Planned {
		return nil
	}
	rec.State = Planned
	rec.PlannedAt = time.Now().UTC()
	val, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode job %s: %w", jobID, err)
	}
	if _, err := s.kv.Update(ctx, kvkey.For(jobID), val, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			// Another planner marked the same content planned first.
			return nil
		}
		return fmt.Errorf("mark job %s planned: %w", jobID, err)
	}
	return nil
}

// Touch rewrites a job's record unchanged, so that its retention counts
// from now: called when the job ends for the planner (release, cancel). A
// missing record or a concurrent write leaves things as they are.
func (s *Store) Touch(ctx context.Context, jobID string) error {
	e, err := s.kv.Get(ctx, kvkey.For(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read job %s: %w", jobID, err)
	}
	if _, err := s.kv.Update(ctx, kvkey.For(jobID), e.Value(), e.Revision()); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("touch job %s: %w", jobID, err)
	}
	return nil
}

// Get returns the record of a job, or nil.
func (s *Store) Get(ctx context.Context, jobID string) (*Record, error) {
	rec, _, err := s.get(ctx, jobID)
	return rec, err
}

func (s *Store) get(ctx context.Context, jobID string) (*Record, uint64, error) {
	e, err := s.kv.Get(ctx, kvkey.For(jobID))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, nil
	case err != nil:
		return nil, 0, fmt.Errorf("read job %s: %w", jobID, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode job %s: %w", jobID, err)
	}
	return &rec, e.Revision(), nil
}
