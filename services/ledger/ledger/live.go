package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ccatobs/ccat-staging/services/ledger/httpapi"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// natsLive reads stager backlogs from the work queue's consumers and live
// instances from the heartbeat bucket. It only reads: the ledger never
// creates stager consumers or the bucket.
type natsLive struct {
	js jetstream.JetStream
}

func (l natsLive) Backlog(ctx context.Context, site string) ([]httpapi.Backlog, error) {
	out := []httpapi.Backlog{}
	for _, p := range subject.Priorities {
		name := subject.StagerDurable(site, p)
		c, err := l.js.Consumer(ctx, subject.RequestsStream, name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("consumer %s: %w", name, err)
		}
		info := c.CachedInfo()
		out = append(out, httpapi.Backlog{Durable: name, Priority: p, Pending: info.NumPending, AckPending: info.NumAckPending})
	}
	return out, nil
}

func (l natsLive) Stagers(ctx context.Context) ([]heartbeat.Beat, error) {
	kv, err := l.js.KeyValue(ctx, subject.StagerBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil // no stager has ever started
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", subject.StagerBucket, err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list stagers: %w", err)
	}
	var out []heartbeat.Beat
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue // expired between list and get
		}
		var b heartbeat.Beat
		if json.Unmarshal(e.Value(), &b) == nil {
			out = append(out, b)
		}
	}
	return out, nil
}
