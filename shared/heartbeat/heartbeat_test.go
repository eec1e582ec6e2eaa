package heartbeat_test

import (
	"context"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/nats-io/nats.go/jetstream"
)

// countingJS counts the calls that create or change the bucket.
type countingJS struct {
	jetstream.JetStream
	changes int
}

func (c *countingJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	c.changes++
	return c.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
}

// A stager whose NATS user may not change streams calls Bucket at every
// start: it must only look when the bucket is already as wanted.
func TestBucketChangesOnlyWhatDiffers(t *testing.T) {
	srv := jstest.New(t)
	js := &countingJS{JetStream: srv.JS}
	for _, tc := range []struct {
		name    string
		changes int
	}{
		{"missing bucket is created", 1},
		{"existing bucket is left alone", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js.changes = 0
			kv, err := heartbeat.Bucket(t.Context(), js, 1)
			if err != nil {
				t.Fatal(err)
			}
			if js.changes != tc.changes {
				t.Errorf("%d create/update calls, want %d", js.changes, tc.changes)
			}
			st, err := kv.Status(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if c := st.Config(); c.TTL != heartbeat.TTL || c.History != 1 || c.Replicas != 1 {
				t.Errorf("bucket config %+v", c)
			}
		})
	}
}
