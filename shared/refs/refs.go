// Package refs is the PLANNER_REFS bucket: it counts references to staged copies (CTA-style): per
// processing location and package, the set of jobs that still need the
// copy. A job takes a reference when one of its packages is scheduled there
// (dedup followers too) and drops it on release or cancel. When the set
// becomes empty the time is recorded; once the location's retention has
// passed since then, the copy may be deleted. Every write is compare-and-set
// on the key's revision, so several planners (and the stagers claiming a
// deletion) never lose each other's updates. The planner writes it; a
// stager only claims a deletion and forgets the entry of a deleted copy.
//
// Nothing scans the bucket. Besides the entries (<site>.<location>.<package
// key>) it holds two indexes, under keys no site name can start with:
//
//	_job.<job token>.<entry key>  the job references that copy
//	_idle.<entry key>             the copy's set became empty
//	_lapse.<yyyymmdd>.<job token> the day the job took references
//
// so a release or cancel reads only its job's index keys (O(its packages)),
// the sweep reads only idle copies, and references lapse by day. An index
// key may outlive what it points at (a crash between two writes); readers
// check the entry and tidy up, so an index is a hint that is never wrong in
// the direction that matters: an entry with references always has its job
// keys written first.
package refs

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
)

// Entry is the value of one key.
type Entry struct {
	PackageID string   `json:"package_id"`
	Site      string   `json:"site"`
	Location  string   `json:"location"`
	Jobs      []string `json:"jobs"`
	// LastJobs are the jobs that held the copy when the set became empty.
	LastJobs  []string   `json:"last_jobs,omitempty"`
	EmptiedAt *time.Time `json:"emptied_at,omitempty"`
	// ScheduledAt is when a deletion item was published for the entry at
	// the revision it then had (ScheduledRev).
	ScheduledAt  *time.Time `json:"scheduled_at,omitempty"`
	ScheduledRev uint64     `json:"scheduled_rev,omitempty"`
	// DeletingFor is set by the stager that claimed the deletion decided at
	// that revision; a redelivered item for it may go on.
	DeletingFor uint64 `json:"deleting_for,omitempty"`
}

// Item is an entry with its key and revision.
type Item struct {
	Key      string
	Revision uint64
	Entry
}

// Table reads and writes the PLANNER_REFS bucket. Safe for concurrent use.
type Table struct {
	kv jetstream.KeyValue
}

// Open creates or updates the bucket.
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int) (*Table, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.PlannerRefsBucket,
		Description: "<location>.<package> -> jobs referencing the staged copy (planner writes, stagers claim deletions)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.PlannerRefsBucket, err)
	}
	t := &Table{kv: kv}
	if err := t.migrate(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// Index key prefixes; site names never start with '_'.
const (
	jobPrefix   = "_job."
	idlePrefix  = "_idle."
	lapsePrefix = "_lapse."
	// indexedKey marks a bucket whose indexes are complete; a bucket
	// written before them is indexed once, by the first planner to start.
	indexedKey = "_indexed.v1"
	dayLayout  = "20060102"
)

// jobToken is a job id as one key token: as is when it has no '.', else
// "=" + base64url (ids never start with '='), so that _job.<token>.> matches
// exactly that job's keys.
func jobToken(jobID string) string {
	if jobID != "" && !strings.Contains(jobID, ".") {
		return jobID
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(jobID))
}

func jobIndexKey(jobID, key string) string { return jobPrefix + jobToken(jobID) + "." + key }

// isEntry tells an entry key from an index key.
func isEntry(key string) bool { return !strings.HasPrefix(key, "_") }

// migrate indexes the entries of a bucket written before the indexes.
func (t *Table) migrate(ctx context.Context) error {
	if _, err := t.kv.Get(ctx, indexedKey); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("refs %s: %w", indexedKey, err)
	}
	keys, err := t.kv.ListKeys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return fmt.Errorf("refs keys: %w", err)
	}
	if keys != nil {
		defer func() { _ = keys.Stop() }()
		for key := range keys.Keys() {
			if !isEntry(key) {
				continue
			}
			it, err := t.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			for _, j := range it.Jobs {
				if err := t.index(ctx, j, key); err != nil {
					return err
				}
			}
			if len(it.Jobs) == 0 {
				if err := t.markIdle(ctx, key); err != nil {
					return err
				}
			}
		}
	}
	if _, err := t.kv.Put(ctx, indexedKey, []byte("1")); err != nil {
		return fmt.Errorf("refs %s: %w", indexedKey, err)
	}
	return nil
}

func (t *Table) index(ctx context.Context, jobID, key string) error {
	if _, err := t.kv.Put(ctx, jobIndexKey(jobID, key), nil); err != nil {
		return fmt.Errorf("refs index of %s: %w", jobID, err)
	}
	return nil
}

func (t *Table) markIdle(ctx context.Context, key string) error {
	if _, err := t.kv.Put(ctx, idlePrefix+key, nil); err != nil {
		return fmt.Errorf("refs idle %s: %w", key, err)
	}
	return nil
}

// FromKV wraps an existing bucket (the stager's side).
func FromKV(kv jetstream.KeyValue) *Table { return &Table{kv: kv} }

// Ref is one reference to take. Key is the copy's bucket key, chosen by the
// planner (<site>.<location>.<package key>); the deletion item carries it, so
// nobody else needs to derive it.
type Ref struct {
	Key, Site, Location, PackageID string
}

// Add records that jobID references each copy, up to parallel keys at once.
// A reference cancels a deletion not yet claimed (the revision changes, so a
// stager holding the old item leaves the copy alone).
func (t *Table) Add(ctx context.Context, jobID string, refs []Ref, parallel int) error {
	if len(refs) == 0 {
		return nil
	}
	lapse := lapsePrefix + time.Now().UTC().Format(dayLayout) + "." + jobToken(jobID)
	if _, err := t.kv.Put(ctx, lapse, []byte(jobID)); err != nil {
		return fmt.Errorf("refs %s: %w", lapse, err)
	}
	// The first failure cancels gctx: no further reference is started, and
	// writes in flight stop at their next round trip.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, min(parallel, len(refs))))
	for _, r := range refs {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			// A slot freed by a failure must not start another write.
			if err := gctx.Err(); err != nil {
				return err
			}
			return t.add(gctx, jobID, r)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// Cancelled before any write started: the caller's cause, not nil.
	return context.Cause(ctx)
}

func (t *Table) add(ctx context.Context, jobID string, r Ref) error {
	// The job's index key first: an entry naming the job is always
	// reachable from its release or cancel.
	if err := t.index(ctx, jobID, r.Key); err != nil {
		return err
	}
	// Most copies are new: one create instead of a get and a create.
	b, err := json.Marshal(Entry{PackageID: r.PackageID, Site: r.Site, Location: r.Location, Jobs: []string{jobID}})
	if err != nil {
		return err
	}
	if _, err := t.kv.Create(ctx, r.Key, b); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("refs %s: %w", r.Key, err)
	}
	return t.update(ctx, r.Key, func(e *Entry, exists bool) bool {
		if exists && slices.Contains(e.Jobs, jobID) {
			return false
		}
		if !exists || e.DeletingFor != 0 {
			// A copy being deleted is gone for this job: it starts afresh,
			// and its request is staged again after the deletion.
			*e = Entry{}
		}
		e.PackageID, e.Site, e.Location = r.PackageID, r.Site, r.Location
		e.Jobs = append(e.Jobs, jobID)
		e.EmptiedAt, e.LastJobs, e.ScheduledAt, e.ScheduledRev = nil, nil, nil, 0
		return true
	})
}

// DropJob removes jobID from every entry holding it and returns how many it
// changed. It reads the job's index keys only, so it costs in proportion to
// the job's packages whatever the bucket holds.
func (t *Table) DropJob(ctx context.Context, jobID string, now time.Time) (int, error) {
	prefix := jobPrefix + jobToken(jobID) + "."
	keys, err := t.kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return 0, fmt.Errorf("refs of %s: %w", jobID, err)
	}
	var entries []string
	if keys != nil {
		for k := range keys.Keys() {
			entries = append(entries, strings.TrimPrefix(k, prefix))
		}
		_ = keys.Stop()
	}
	n := 0
	for _, key := range entries {
		dropped, err := t.Drop(ctx, key, jobID, now)
		if err != nil {
			return n, err
		}
		if dropped {
			n++
		}
	}
	return n, nil
}

// Drop removes jobID from the entry under key (the job's package there
// failed for good, or the job was released) and reports whether it was
// there. An entry left empty is marked idle for the sweep.
func (t *Table) Drop(ctx context.Context, key, jobID string, now time.Time) (bool, error) {
	dropped, emptied := false, false
	err := t.update(ctx, key, func(e *Entry, exists bool) bool {
		i := slices.Index(e.Jobs, jobID)
		if !exists || i < 0 {
			return false
		}
		last := slices.Clone(e.Jobs)
		e.Jobs = slices.Delete(e.Jobs, i, i+1)
		if len(e.Jobs) == 0 {
			at := now.UTC()
			e.EmptiedAt, e.LastJobs = &at, last
		}
		dropped, emptied = true, len(e.Jobs) == 0
		return true
	})
	if err != nil {
		return false, err
	}
	if emptied {
		if err := t.markIdle(ctx, key); err != nil {
			return dropped, err
		}
	}
	// The index key goes last: a crash before leaves a hint that the next
	// release finds pointing at nothing.
	if err := t.kv.Delete(ctx, jobIndexKey(jobID, key)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return dropped, fmt.Errorf("refs index of %s: %w", jobID, err)
	}
	return dropped, nil
}

// Idle returns the entries marked idle that still have no reference: the
// sweep's candidates, read in proportion to their number. Marks whose
// entry is gone (the copy deleted) or referenced again are removed, each
// by compare-and-set so that a fresh mark is never lost.
func (t *Table) Idle(ctx context.Context) ([]Item, error) {
	keys, err := t.kv.ListKeysFiltered(ctx, idlePrefix+">")
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("refs idle keys: %w", err)
	}
	var marks []string
	for k := range keys.Keys() {
		marks = append(marks, k)
	}
	_ = keys.Stop()
	var out []Item
	for _, mark := range marks {
		mk, err := t.kv.Get(ctx, mark)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("refs %s: %w", mark, err)
		}
		it, err := t.Get(ctx, strings.TrimPrefix(mark, idlePrefix))
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, err
		}
		if err == nil && len(it.Jobs) == 0 {
			out = append(out, it)
			continue
		}
		if err := t.kv.Delete(ctx, mark, jetstream.LastRevision(mk.Revision())); err != nil && !isConflict(err) {
			return nil, fmt.Errorf("refs %s: %w", mark, err)
		}
	}
	return out, nil
}

// Lapse drops the references of every job that took them more than
// retention before now (by day) and returns how many it dropped: the
// retention of references a job never released nor cancelled. It reads
// one key per job holding references. retention <= 0 does nothing.
func (t *Table) Lapse(ctx context.Context, now time.Time, retention time.Duration) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	keys, err := t.kv.ListKeysFiltered(ctx, lapsePrefix+">")
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("refs lapse keys: %w", err)
	}
	cutoff := now.UTC().Add(-retention)
	var due []string
	for k := range keys.Keys() {
		day, _, ok := strings.Cut(strings.TrimPrefix(k, lapsePrefix), ".")
		d, err := time.Parse(dayLayout, day)
		// A day ends at its next midnight: the references of that day are
		// all older than retention once that has passed.
		if ok && err == nil && d.AddDate(0, 0, 1).Before(cutoff) {
			due = append(due, k)
		}
	}
	_ = keys.Stop()
	n := 0
	for _, k := range due {
		e, err := t.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("refs %s: %w", k, err)
		}
		m, err := t.DropJob(ctx, string(e.Value()), now)
		if err != nil {
			return n, err
		}
		n += m
		if err := t.kv.Delete(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return n, fmt.Errorf("refs %s: %w", k, err)
		}
	}
	return n, nil
}

// List returns every entry, reading every key: for audits and migrations,
// never on a hot path.
func (t *Table) List(ctx context.Context) ([]Item, error) {
	keys, err := t.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("refs keys: %w", err)
	}
	defer func() { _ = keys.Stop() }()
	var out []Item
	for key := range keys.Keys() {
		if !isEntry(key) {
			continue
		}
		it, err := t.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	return out, nil
}

// Get reads one entry.
func (t *Table) Get(ctx context.Context, key string) (Item, error) {
	kve, err := t.kv.Get(ctx, key)
	if err != nil {
		return Item{}, fmt.Errorf("refs %s: %w", key, err)
	}
	it := Item{Key: key, Revision: kve.Revision()}
	if err := json.Unmarshal(kve.Value(), &it.Entry); err != nil {
		return Item{}, fmt.Errorf("refs %s: %w", key, err)
	}
	return it, nil
}

// ErrChanged says the entry is no longer at the revision a caller expected.
var ErrChanged = errors.New("refs entry changed")

// Put writes e at key if the key is still at rev, and returns the new
// revision; ErrChanged when another writer came first.
func (t *Table) Put(ctx context.Context, key string, e Entry, rev uint64) (uint64, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	r, err := t.kv.Update(ctx, key, b, rev)
	if isConflict(err) {
		return 0, ErrChanged
	}
	if err != nil {
		return 0, fmt.Errorf("refs %s: %w", key, err)
	}
	return r, nil
}

// Forget deletes key if it is still at rev (the copy is gone and nobody
// took a reference since); a changed entry is left to its new holders.
func (t *Table) Forget(ctx context.Context, key string, rev uint64) error {
	err := t.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	if err != nil && !isConflict(err) {
		return fmt.Errorf("refs %s: %w", key, err)
	}
	return nil
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence)
}

// update applies f to the entry under key by compare-and-set, retrying
// when another writer came first; f returns false to leave it unchanged.
func (t *Table) update(ctx context.Context, key string, f func(e *Entry, exists bool) bool) error {
	for range 16 {
		var (
			e   Entry
			rev uint64
		)
		kve, err := t.kv.Get(ctx, key)
		exists := err == nil
		switch {
		case exists:
			rev = kve.Revision()
			if json.Unmarshal(kve.Value(), &e) != nil {
				e = Entry{} // unreadable: rebuilt by f
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return fmt.Errorf("refs %s: %w", key, err)
		}
		if !f(&e, exists) {
			return nil
		}
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if exists {
			_, err = t.kv.Update(ctx, key, b, rev)
		} else {
			_, err = t.kv.Create(ctx, key, b)
		}
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("refs %s: %w", key, err)
		}
	}
	return fmt.Errorf("refs %s: key keeps changing", key)
}
