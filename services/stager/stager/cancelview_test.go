package stager

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// entry is a KeyValueEntry as a watch delivers it.
type entry struct {
	jetstream.KeyValueEntry
	key     string
	op      jetstream.KeyValueOp
	created time.Time
}

func (e entry) Key() string                     { return e.key }
func (e entry) Operation() jetstream.KeyValueOp { return e.op }
func (e entry) Created() time.Time              { return e.created }

// The view answers only once the watch's initial contents are in, follows
// puts, deletes and purges, and treats entries past the bucket's age limit
// as gone (as the KV get would), dropping them on prune.
func TestCancelView(t *testing.T) {
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	put := func(k string, age time.Duration) jetstream.KeyValueEntry {
		return entry{key: k, op: jetstream.KeyValuePut, created: now.Add(-age)}
	}
	del := func(k string, op jetstream.KeyValueOp) jetstream.KeyValueEntry { return entry{key: k, op: op} }
	type want struct {
		job           string
		cancelled, ok bool
	}
	for _, tc := range []struct {
		name    string
		ttl     time.Duration
		updates []jetstream.KeyValueEntry // nil entry: initial contents done
		prune   bool
		want    []want
		size    int
	}{
		{name: "not loaded: ask the bucket", updates: []jetstream.KeyValueEntry{put("j1", 0)},
			want: []want{{"j1", false, false}, {"j2", false, false}}, size: 1},
		{name: "loaded", updates: []jetstream.KeyValueEntry{put("j1", 0), nil, put("j2", 0)},
			want: []want{{"j1", true, true}, {"j2", true, true}, {"j3", false, true}}, size: 2},
		{name: "delete and purge", updates: []jetstream.KeyValueEntry{put("j1", 0), put("j2", 0), nil, del("j1", jetstream.KeyValueDelete), del("j2", jetstream.KeyValuePurge)},
			want: []want{{"j1", false, true}, {"j2", false, true}}, size: 0},
		{name: "past the age limit", ttl: time.Hour, updates: []jetstream.KeyValueEntry{put("old", 2*time.Hour), put("new", time.Minute), nil},
			want: []want{{"old", false, true}, {"new", true, true}}, size: 2},
		{name: "pruned", ttl: time.Hour, updates: []jetstream.KeyValueEntry{put("old", 2*time.Hour), put("new", time.Minute), nil}, prune: true,
			want: []want{{"old", false, true}, {"new", true, true}}, size: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newCancelView()
			v.reset(tc.ttl)
			for _, e := range tc.updates {
				v.apply(e)
			}
			if tc.prune {
				v.prune(now)
			}
			for _, w := range tc.want {
				if c, ok := v.lookup(w.job, now); c != w.cancelled || ok != w.ok {
					t.Errorf("lookup(%s) = %v, %v; want %v, %v", w.job, c, ok, w.cancelled, w.ok)
				}
			}
			if len(v.jobs) != tc.size {
				t.Errorf("view holds %d jobs, want %d", len(v.jobs), tc.size)
			}
		})
	}
}
