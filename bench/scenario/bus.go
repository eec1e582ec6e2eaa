package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/nats-io/nats.go/jetstream"
)

// errMissing marks a variant that cannot run in this build or on this tree.
var errMissing = errors.New("not available")

// Source of every event the benchmarks publish.
const Source = "ccat-staging/bench"

// newEvent builds an event and checks it against its schema, so the
// benchmarks never measure the services refusing bad input.
func newEvent(id string, d event.Data) (event.Envelope, error) {
	ev, err := event.New(Source, id, "", d)
	if err != nil {
		return ev, err
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return ev, err
	}
	if _, err := event.Validate(raw); err != nil {
		return ev, fmt.Errorf("bench built an invalid %s: %w", ev.Type, err)
	}
	return ev, nil
}

// publish sends one event and waits for its PubAck.
func publish(ctx context.Context, js jetstream.JetStream, subj, id string, d event.Data) error {
	ev, err := newEvent(id, d)
	if err != nil {
		return err
	}
	_, err = bus.Publish(ctx, js, subj, ev)
	return err
}

// publishAsync sends many events with up to 4096 in flight and waits for
// every PubAck: filling a stream must not be the slow part. Every
// checkEvery-th event is validated against its schema (all of them with 1);
// the others are built by the same code.
func publishAsync(ctx context.Context, js jetstream.JetStream, n, checkEvery int, next func(i int) (string, string, event.Data)) error {
	var futures []jetstream.PubAckFuture
	flush := func() error {
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Minute):
			return errors.New("publish acks did not arrive within 2m")
		}
		for _, f := range futures {
			select {
			case err := <-f.Err():
				return err
			default:
			}
		}
		futures = futures[:0]
		return nil
	}
	for i := range n {
		subj, id, d := next(i)
		var ev event.Envelope
		var err error
		if checkEvery <= 1 || i%checkEvery == 0 {
			ev, err = newEvent(id, d)
		} else {
			ev, err = event.New(Source, id, "", d)
		}
		if err != nil {
			return err
		}
		m, err := bus.Msg(subj, ev)
		if err != nil {
			return err
		}
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("publish %s: %w", id, err)
		}
		futures = append(futures, f)
		if len(futures) == 4096 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// waitIdle polls a durable consumer until it has nothing pending or
// unacknowledged, i.e. its service has applied everything in the stream.
// failed, when not nil, reports a service that stopped, so a dead service
// ends the wait at once instead of after within.
func waitIdle(ctx context.Context, js jetstream.JetStream, stream, durable string, within time.Duration, failed func() error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		c, err := js.Consumer(ctx, stream, durable)
		if err == nil {
			info, err := c.Info(ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream > 0 {
				return nil
			}
		}
		if failed != nil {
			if err := failed(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumer %s/%s not idle: %w", stream, durable, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
