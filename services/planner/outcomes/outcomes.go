// Package outcomes is the planner's own record of staging outcomes
// (PLANNER_OUTCOMES), kept where the reconciler looks before it re-issues
// or gives up on a package. The ledger's read API is a projection that may
// lag or stall behind a live HTTP server; this record is written by the
// planner-outcomes consumer from the same events, so a package whose
// outcome exists is never judged lost just because the ledger has not
// shown it yet.
//
// Two kinds of key, both addressable (no scans):
//
//	job.<job>.<package>      the final outcome of the job's own request
//	copy.<location>.<package> the last request that staged the copy there
//
// The copy key covers packages that follow another job's request (cross-job
// dedup): their outcome is the followed request's, published under the
// other job's id. Entries expire with the bucket's TTL (the job retention),
// long after any job could still be reconciled.
package outcomes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/kvkey"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Kinds of outcome.
const (
	Done   = "done"
	Failed = "failed" // failed for good (permanent or retries exhausted)
)

// Record is one outcome as the planner saw it.
type Record struct {
	Kind      string    `json:"kind"`
	JobID     string    `json:"job_id"`
	RequestID string    `json:"request_id,omitempty"`
	Location  string    `json:"location"`
	EventID   string    `json:"event_id"`
	At        time.Time `json:"at"` // the event's time
}

// Store reads and writes PLANNER_OUTCOMES. Safe for concurrent use.
type Store struct {
	kv jetstream.KeyValue
}

// Open creates or updates the bucket; entries expire ttl after they were
// last written.
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int, ttl time.Duration) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.PlannerOutcomesBucket,
		Description: "job.<job>.<package> and copy.<location>.<package> -> final staging outcome (planner reconciler)",
		History:     1,
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.PlannerOutcomesBucket, err)
	}
	return &Store{kv: kv}, nil
}

func jobKey(jobID, packageID string) string {
	return "job." + kvkey.For(jobID) + "." + kvkey.For(packageID)
}

func copyKey(location, packageID string) string {
	return "copy." + location + "." + kvkey.For(packageID)
}

// Put records an outcome of the job's request for the package; a done one
// also records that the copy exists at the location. Writing the same
// outcome twice (a redelivery) changes nothing that matters.
func (s *Store) Put(ctx context.Context, packageID string, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, jobKey(r.JobID, packageID), b); err != nil {
		return fmt.Errorf("record outcome of %s/%s: %w", r.JobID, packageID, err)
	}
	if r.Kind == Done && r.Location != "" {
		if _, err := s.kv.Put(ctx, copyKey(r.Location, packageID), b); err != nil {
			return fmt.Errorf("record copy of %s at %s: %w", packageID, r.Location, err)
		}
	}
	return nil
}

// Of returns what is recorded of the job's package at location: the
// job's own final outcome (own true), which settles the package; else a
// copy staged there since the job planned it (own false) — by the request
// the package follows (dedup), or by another job after this one took its
// reference, which keeps the copy until this job lets it go. The latter is
// proof the copy exists, not that this job's request ended: it forbids
// giving the package up, while a re-issue (answered already_present) stays
// harmless.
func (s *Store) Of(ctx context.Context, jobID, packageID, location string, plannedAt time.Time) (r *Record, own bool, err error) {
	if r, err := s.get(ctx, jobKey(jobID, packageID)); err != nil || r != nil {
		return r, r != nil, err
	}
	if location == "" {
		return nil, false, nil
	}
	r, err = s.get(ctx, copyKey(location, packageID))
	if err != nil || r == nil {
		return nil, false, err
	}
	if r.At.Before(plannedAt) {
		return nil, false, nil // an older copy, possibly deleted since
	}
	return r, false, nil
}

func (s *Store) get(ctx context.Context, key string) (*Record, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("outcome %s: %w", key, err)
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("outcome %s: %w", key, err)
	}
	return &r, nil
}
