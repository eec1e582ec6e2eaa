package probe

import (
	"context"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
)

// WatchedKV is a real bucket that counts the calls reaching it (Get, Put,
// Create, Update) and the most running at once, and cancels the caller's
// context at call CancelAt: what a worker pool promises is visible only
// from the bucket's side.
type WatchedKV struct {
	jetstream.KeyValue
	Calls, Peak atomic.Int64
	CancelAt    int64
	Cancel      context.CancelFunc

	now atomic.Int64
}

func (k *WatchedKV) enter() func() {
	if n := k.Calls.Add(1); n == k.CancelAt && k.Cancel != nil {
		k.Cancel()
	}
	cur := k.now.Add(1)
	for p := k.Peak.Load(); cur > p && !k.Peak.CompareAndSwap(p, cur); p = k.Peak.Load() {
	}
	return func() { k.now.Add(-1) }
}

func (k *WatchedKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	defer k.enter()()
	return k.KeyValue.Get(ctx, key)
}

func (k *WatchedKV) Put(ctx context.Context, key string, v []byte) (uint64, error) {
	defer k.enter()()
	return k.KeyValue.Put(ctx, key, v)
}

func (k *WatchedKV) Create(ctx context.Context, key string, v []byte, o ...jetstream.KVCreateOpt) (uint64, error) {
	defer k.enter()()
	return k.KeyValue.Create(ctx, key, v, o...)
}

func (k *WatchedKV) Update(ctx context.Context, key string, v []byte, rev uint64) (uint64, error) {
	defer k.enter()()
	return k.KeyValue.Update(ctx, key, v, rev)
}

// WatchedJS opens buckets as usual and hands out KV, wrapping the one it
// opened, in their place.
type WatchedJS struct {
	jetstream.KeyValueManager
	KV *WatchedKV
}

func (j WatchedJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := j.KeyValueManager.CreateOrUpdateKeyValue(ctx, cfg)
	j.KV.KeyValue = kv
	return j.KV, err
}
