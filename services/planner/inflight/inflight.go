// Package inflight deduplicates staging across jobs: it records, per
// processing location and package, which request is staging the package
// there, so a second job that needs the same package at the same location
// follows that request instead of staging it again. An entry lives until
// the request's outcome (staging.done, or a staging.failed that ends it)
// or until the bucket's TTL, a safety net for outcomes that never come:
// after it a job stages the package again, which costs a transfer, never
// correctness (the stager finds it already present).
package inflight

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/kvkey"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
)

// Entry is the request staging a package at a location.
type Entry struct {
	RequestID string    `json:"request_id"`
	JobID     string    `json:"job_id"`
	At        time.Time `json:"at"`
}

// Table reads and writes the PLANNER_INFLIGHT bucket. Safe for concurrent use.
type Table struct {
	kv jetstream.KeyValue
}

// Open creates or updates the bucket; ttl bounds how long an entry waits
// for its outcome (0 = 24h).
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int, ttl time.Duration) (*Table, error) {
	if replicas == 0 {
		replicas = 1
	}
	if ttl == 0 {
		ttl = 24 * time.Hour
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.PlannerInflightBucket,
		Description: "<location>.<package> -> request staging it (planner cross-job dedup)",
		History:     1,
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.PlannerInflightBucket, err)
	}
	return &Table{kv: kv}, nil
}

// Key is the bucket key of a package at a location.
func Key(location, packageID string) string { return location + "." + kvkey.For(packageID) }

// Want is one package a job wants staged at a location by request RequestID.
type Want struct {
	Location, PackageID, RequestID string
}

// Acquire records each wanted package as staged by the job's own request
// unless another job's request already is, and returns, per package id, the
// request id it follows (its own, or the other job's). Entries of the same
// job are its own (a re-plan after a crash). Up to parallel keys are
// written at once.
func (t *Table) Acquire(ctx context.Context, jobID string, wants []Want, parallel int) (map[string]string, error) {
	var (
		mu  sync.Mutex
		out = make(map[string]string, len(wants))
	)
	// The first failed write cancels gctx: no further write is started.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, min(parallel, len(wants))))
	for _, w := range wants {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			// A slot freed by a failure must not start another write.
			if err := gctx.Err(); err != nil {
				return err
			}
			id, err := t.acquire(gctx, jobID, w)
			if err != nil {
				return err
			}
			mu.Lock()
			out[w.PackageID] = id
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// Cancelled before any write started: the caller's cause, not a partial map.
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return out, nil
}

func (t *Table) acquire(ctx context.Context, jobID string, w Want) (string, error) {
	key := Key(w.Location, w.PackageID)
	val, err := json.Marshal(Entry{RequestID: w.RequestID, JobID: jobID, At: time.Now().UTC()})
	if err != nil {
		return "", err
	}
	for range 4 {
		_, err := t.kv.Create(ctx, key, val)
		if err == nil {
			return w.RequestID, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", fmt.Errorf("inflight %s: %w", key, err)
		}
		e, err := t.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released in between: try again
		}
		if err != nil {
			return "", fmt.Errorf("inflight %s: %w", key, err)
		}
		var cur Entry
		if json.Unmarshal(e.Value(), &cur) != nil || cur.RequestID == "" {
			// Unreadable: take it over rather than follow nothing.
			if _, err := t.kv.Update(ctx, key, val, e.Revision()); err == nil {
				return w.RequestID, nil
			}
			continue
		}
		// Another job's request, or this job's own from an earlier attempt
		// at planning it: either way that request is the one to follow.
		return cur.RequestID, nil
	}
	return "", fmt.Errorf("inflight %s: key keeps changing", key)
}

// Release forgets the entry of a package at a location if it still names
// requestID: an outcome of an older request never frees a newer one.
func (t *Table) Release(ctx context.Context, location, packageID, requestID string) (bool, error) {
	key := Key(location, packageID)
	e, err := t.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inflight %s: %w", key, err)
	}
	var cur Entry
	if json.Unmarshal(e.Value(), &cur) == nil && cur.RequestID != requestID {
		return false, nil
	}
	if err := t.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // changed in between: not ours to free any more
		}
		return false, fmt.Errorf("inflight %s: %w", key, err)
	}
	return true, nil
}

// ReleaseJob frees every entry held by a request of jobID (the job was
// cancelled: its requests not yet started are withdrawn, so no other job
// may follow them). It walks the bucket's keys, which is fine for a rare
// operator action. An entry changed in between is left to its new holder.
func (t *Table) ReleaseJob(ctx context.Context, jobID string) (int, error) {
	keys, err := t.kv.ListKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("inflight keys: %w", err)
	}
	defer func() { _ = keys.Stop() }()
	n := 0
	for key := range keys.Keys() {
		e, err := t.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("inflight %s: %w", key, err)
		}
		var cur Entry
		if json.Unmarshal(e.Value(), &cur) != nil || cur.JobID != jobID {
			continue
		}
		if err := t.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
			return n, fmt.Errorf("inflight %s: %w", key, err)
		}
		n++
	}
	return n, nil
}
