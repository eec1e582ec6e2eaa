// Package catalog is the planner's record of which archive copies of each
// package exist: a JetStream KV bucket (subject.CatalogBucket) keyed by
// package id (kvkey.For) whose value is the JSON list of copies. It lives in JetStream so
// that it survives restarts and is shared by every planner instance; all
// writes are compare-and-set on the key's revision, so concurrent planners
// never lose each other's copies.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/ccatobs/ccat-staging/services/planner/kvkey"
	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
)

// Result says what Add or Remove changed.
type Result string

const (
	Added     Result = "added"     // a new copy was recorded
	Replaced  Result = "replaced"  // the copy at that location changed (re-archived)
	Unchanged Result = "unchanged" // the same announcement again: nothing to do
	Removed   Result = "removed"   // the copy at that location was forgotten
)

// ErrConflict is wrapped by Add when a copy's checksum or size differs from
// the copies already recorded at other locations: two different packages
// under one id. The first recorded content wins; the conflicting copy is not
// recorded, because staging it would give jobs bytes that differ depending
// on which copy was chosen.
var ErrConflict = errors.New("catalog conflict")

// casRetries bounds the compare-and-set loop; each retry means another
// writer updated the key in between, which settles in a few rounds.
const casRetries = 16

// Catalog reads and writes the CATALOG bucket. It is safe for concurrent use.
type Catalog struct {
	kv jetstream.KeyValue
}

// Open creates or updates the bucket and returns the catalog.
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int) (*Catalog, error) {
	if replicas == 0 {
		replicas = 1
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.CatalogBucket,
		Description: "package id -> JSON list of archive copies (planner catalog)",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.CatalogBucket, err)
	}
	return &Catalog{kv: kv}, nil
}

// FromArchived turns an announcement into a copy.
func FromArchived(a event.PackageArchived) route.Copy {
	return route.Copy{Location: a.Location, Key: a.Key, SizeBytes: a.SizeBytes, Checksum: a.Checksum, Format: a.Format, Files: a.Files, Manifest: a.Manifest}
}

// Add records a copy of a package. The same announcement twice is Unchanged;
// a new announcement for a location already recorded replaces that copy,
// unless copies at other locations disagree about the content (ErrConflict).
func (c *Catalog) Add(ctx context.Context, packageID string, cp route.Copy) (Result, error) {
	return c.update(ctx, packageID, func(copies []route.Copy) ([]route.Copy, Result, error) {
		for _, o := range copies {
			if o.Location != cp.Location && (o.Checksum != cp.Checksum || o.SizeBytes != cp.SizeBytes) {
				return nil, "", fmt.Errorf("%w: package %s at %s has %s (%d bytes) but the copy at %s has %s (%d bytes)",
					ErrConflict, packageID, cp.Location, cp.Checksum, cp.SizeBytes, o.Location, o.Checksum, o.SizeBytes)
			}
		}
		i := slices.IndexFunc(copies, func(o route.Copy) bool { return o.Location == cp.Location })
		if i < 0 {
			return append(copies, cp), Added, nil
		}
		if sameCopy(copies[i], cp) {
			return copies, Unchanged, nil
		}
		copies[i] = cp
		return copies, Replaced, nil
	})
}

// Remove forgets the copy of a package at location. Removing a copy that is
// not recorded is Unchanged; when the last copy goes the package stays
// known with no copies.
func (c *Catalog) Remove(ctx context.Context, packageID, location string) (Result, error) {
	return c.update(ctx, packageID, func(copies []route.Copy) ([]route.Copy, Result, error) {
		n := len(copies)
		copies = slices.DeleteFunc(copies, func(o route.Copy) bool { return o.Location == location })
		if len(copies) == n {
			return copies, Unchanged, nil
		}
		return copies, Removed, nil
	})
}

func (c *Catalog) update(ctx context.Context, id string, change func([]route.Copy) ([]route.Copy, Result, error)) (Result, error) {
	for range casRetries {
		copies, rev, _, err := c.get(ctx, id)
		if err != nil {
			return "", err
		}
		next, res, err := change(copies)
		if err != nil || res == Unchanged {
			return res, err
		}
		slices.SortFunc(next, func(a, b route.Copy) int {
			if a.Location < b.Location {
				return -1
			}
			if a.Location > b.Location {
				return 1
			}
			return 0
		})
		// The last copy going away leaves an empty list rather than no key,
		// so a job asking for the package learns no_source (it was archived,
		// no copy is left) rather than unknown_package.
		if next == nil {
			next = []route.Copy{}
		}
		switch {
		case rev == 0:
			var val []byte
			if val, err = json.Marshal(next); err == nil {
				_, err = c.kv.Create(ctx, kvkey.For(id), val)
			}
		default:
			var val []byte
			if val, err = json.Marshal(next); err == nil {
				_, err = c.kv.Update(ctx, kvkey.For(id), val, rev)
			}
		}
		if err == nil {
			return res, nil
		}
		if !isCASMiss(err) {
			return "", fmt.Errorf("catalog write %s: %w", id, err)
		}
	}
	return "", fmt.Errorf("catalog write %s: still contended after %d attempts", id, casRetries)
}

// isCASMiss reports whether a write lost a race with another writer.
func isCASMiss(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

// Get returns the copies of a package and whether the catalog knows it at
// all: a known package may have no copies left (all removed).
func (c *Catalog) Get(ctx context.Context, id string) ([]route.Copy, bool, error) {
	copies, _, ok, err := c.get(ctx, id)
	return copies, ok, err
}

func (c *Catalog) get(ctx context.Context, id string) ([]route.Copy, uint64, bool, error) {
	e, err := c.kv.Get(ctx, kvkey.For(id))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, false, nil
	case err != nil:
		return nil, 0, false, fmt.Errorf("catalog read %s: %w", id, err)
	}
	copies := []route.Copy{}
	if err := json.Unmarshal(e.Value(), &copies); err != nil {
		// Only this package writes the bucket; a value it cannot read is
		// treated as no copies so that a new announcement can repair it.
		return []route.Copy{}, e.Revision(), true, nil
	}
	return copies, e.Revision(), true, nil
}

// Lookup returns the copies of every id the catalog knows (ids it does not
// know are absent from the map), reading up to
// parallel keys at once: a 10,000-package job would otherwise wait for
// 10,000 sequential round trips.
func (c *Catalog) Lookup(ctx context.Context, ids []string, parallel int) (map[string][]route.Copy, error) {
	var (
		mu  sync.Mutex
		out = make(map[string][]route.Copy, len(ids))
	)
	// The first failed read cancels gctx: no further read is started.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, min(parallel, len(ids))))
	for _, id := range ids {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			// A slot freed by a failure must not start another read.
			if err := gctx.Err(); err != nil {
				return err
			}
			copies, known, err := c.Get(gctx, id)
			if err != nil || !known {
				return err
			}
			mu.Lock()
			out[id] = copies
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// Cancelled before any read started: the caller's cause, not a partial map.
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return out, nil
}

func sameCopy(a, b route.Copy) bool {
	return a.Location == b.Location && a.Key == b.Key && a.SizeBytes == b.SizeBytes &&
		a.Checksum == b.Checksum && a.Format == b.Format && slices.Equal(a.Files, b.Files) &&
		(a.Manifest == nil) == (b.Manifest == nil) && (a.Manifest == nil || *a.Manifest == *b.Manifest)
}
