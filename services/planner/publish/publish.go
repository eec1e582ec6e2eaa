// Package publish sends many JetStream messages with a bounded number
// awaiting acknowledgement: one synchronous publish at a time manages a few
// thousand messages a second here, while a window of asynchronous ones
// plans a 10,000-package job in a fraction of a second. Every
// acknowledgement is checked; nothing is fire-and-forget.
package publish

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Result counts what the stream did with the messages.
type Result struct {
	Stored     int // newly stored
	Duplicates int // dropped as duplicates (same Nats-Msg-Id inside the window)
}

// All publishes msgs in order with at most window unacknowledged and
// returns once every message is acknowledged, or the first failure. The
// JetStream context's own async limit must be at least window, or
// PublishMsgAsync stalls. On error some messages may be stored: callers
// publish events with deterministic ids, so repeating All is safe.
func All(ctx context.Context, js jetstream.Publisher, msgs []*nats.Msg, window int) (Result, error) {
	var res Result
	if window < 1 {
		window = 1
	}
	type pending struct {
		f jetstream.PubAckFuture
		m *nats.Msg
	}
	q := make([]pending, 0, min(window, len(msgs)))
	wait := func(p pending) error {
		select {
		case ack := <-p.f.Ok():
			if ack.Duplicate {
				res.Duplicates++
			} else {
				res.Stored++
			}
			return nil
		case err := <-p.f.Err():
			return fmt.Errorf("publish %s %s: %w", p.m.Subject, p.m.Header.Get(jetstream.MsgIDHeader), err)
		case <-ctx.Done():
			return fmt.Errorf("publish %s %s: %w", p.m.Subject, p.m.Header.Get(jetstream.MsgIDHeader), ctx.Err())
		}
	}
	for _, m := range msgs {
		if len(q) == window {
			if err := wait(q[0]); err != nil {
				return res, err
			}
			q = q[1:]
		}
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return res, fmt.Errorf("publish %s %s: %w", m.Subject, m.Header.Get(jetstream.MsgIDHeader), err)
		}
		q = append(q, pending{f, m})
	}
	for _, p := range q {
		if err := wait(p); err != nil {
			return res, err
		}
	}
	return res, nil
}
