// Package reissue remembers which request generation of a package the
// reconciler published last, so that re-issues are counted (to give up
// after a bound) and several planners running the reconciler agree: the
// next generation is claimed by compare-and-set, and only the planner whose
// write wins publishes it.
package reissue

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

// State is the last generation issued for a package and why.
type State struct {
	Generation int       `json:"generation"`
	Why        string    `json:"why"`
	At         time.Time `json:"at"`
	// GaveUp is set once the package was failed for good: nothing more to do.
	GaveUp bool `json:"gave_up,omitempty"`
}

// Store reads and writes PLANNER_REISSUES. Safe for concurrent use.
type Store struct {
	kv jetstream.KeyValue
}

// Open creates or updates the bucket; entries expire after ttl (0 = 30
// days), long after any job could still be reconciled.
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int, ttl time.Duration) (*Store, error) {
	if replicas == 0 {
		replicas = 1
	}
	if ttl == 0 {
		ttl = 30 * 24 * time.Hour
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.PlannerReissuesBucket,
		Description: "<job>.<package> -> last request generation re-issued by the reconciler",
		History:     1,
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.PlannerReissuesBucket, err)
	}
	return &Store{kv: kv}, nil
}

func key(jobID, packageID string) string { return kvkey.For(jobID) + "." + kvkey.For(packageID) }

// Current returns the package's last state; generation 1 (the planner's own
// request) when it was never re-issued. rev is what Claim needs.
func (s *Store) Current(ctx context.Context, jobID, packageID string) (st State, rev uint64, err error) {
	e, err := s.kv.Get(ctx, key(jobID, packageID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return State{Generation: 1}, 0, nil
	}
	if err != nil {
		return State{}, 0, fmt.Errorf("reissue state of %s/%s: %w", jobID, packageID, err)
	}
	if err := json.Unmarshal(e.Value(), &st); err != nil || st.Generation < 1 {
		return State{Generation: 1}, e.Revision(), nil
	}
	return st, e.Revision(), nil
}

// ErrLost is returned by Claim when another writer changed the state since
// Current: that planner re-issues, this one must not.
var ErrLost = errors.New("reissue claimed by another planner")

// Claim records next as the package's state if it is still at rev.
func (s *Store) Claim(ctx context.Context, jobID, packageID string, rev uint64, next State) error {
	val, err := json.Marshal(next)
	if err != nil {
		return err
	}
	k := key(jobID, packageID)
	if rev == 0 {
		_, err = s.kv.Create(ctx, k, val)
	} else {
		_, err = s.kv.Update(ctx, k, val, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return ErrLost
	}
	if err != nil {
		return fmt.Errorf("reissue state of %s/%s: %w", jobID, packageID, err)
	}
	return nil
}
