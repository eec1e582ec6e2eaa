package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/nats-io/nats.go/jetstream"
)

// delivery is a message as a Runner hands it to a handler: it records the
// handler's own reply, so the runner settles only messages the handler left
// unsettled and counts every verdict, and it carries the runner's Retry
// policy to Settle.
type delivery struct {
	jetstream.Msg
	retry      Retry
	maxDeliver int // the durable's MaxDeliver (0: unlimited)

	// onVerdict is told the first reply (the runner counts it), whenever
	// it comes: a deferred message is settled after its handler returned.
	onVerdict func(v, reason string)

	mu       sync.Mutex
	replied  string // ack, nak, term
	reason   string
	deferred bool // the handler settles it later (Defer)
}

func (d *delivery) mark(v, reason string) {
	d.mu.Lock()
	first := d.replied == ""
	if first {
		d.replied, d.reason = v, reason
	}
	d.mu.Unlock()
	if first && d.onVerdict != nil {
		d.onVerdict(v, reason)
	}
}

// Defer tells the Runner that delivered m not to settle it when the
// handler returns: the handler has handed m to something that settles it
// later (the stager's outbox acks a request only once its done's PubAck
// is in). Without it the runner acks a message its handler left unsettled,
// before the effect the ack stands for is durable. A message not from a
// Runner needs nothing.
func Defer(m jetstream.Msg) {
	if d, ok := m.(*delivery); ok {
		d.mu.Lock()
		d.deferred = true
		d.mu.Unlock()
	}
}

func (d *delivery) isDeferred() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deferred
}

func (d *delivery) verdict() (string, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.replied, d.reason
}

func (d *delivery) Ack() error { d.mark("ack", ""); return d.Msg.Ack() }
func (d *delivery) DoubleAck(ctx context.Context) error {
	d.mark("ack", "")
	return d.Msg.DoubleAck(ctx)
}
func (d *delivery) Nak() error { d.mark("nak", ""); return d.Msg.Nak() }
func (d *delivery) NakWithDelay(delay time.Duration) error {
	d.mark("nak", "")
	return d.Msg.NakWithDelay(delay)
}
func (d *delivery) Term() error { d.mark("term", ""); return d.Msg.Term() }
func (d *delivery) TermWithReason(reason string) error {
	d.mark("term", reason)
	return d.Msg.TermWithReason(reason)
}

// retryOf is the Retry policy m was delivered under: its runner's, or the
// default for a message that did not come through a Runner.
func retryOf(m jetstream.Msg) Retry {
	if d, ok := m.(*delivery); ok {
		return d.retry
	}
	return DefaultRetry()
}

// Typed adapts a handler of one event type to a Handler: the message is
// decoded and its data validated against the type's schema first, and one
// that is not a valid T is terminated with the reason (invalid_envelope,
// unknown_type, invalid_data) instead of reaching h.
func Typed[T event.Data](h func(ctx context.Context, env event.Envelope, data T) error) Handler {
	return func(ctx context.Context, m jetstream.Msg) error {
		env, err := event.Decode(m.Data())
		var data T
		if err == nil {
			data, err = event.DataAs[T](env)
		}
		if err != nil {
			reason := event.ReasonInvalidEnvelope
			if ie, ok := errors.AsType[*event.InvalidError](err); ok {
				reason = ie.Reason
			}
			return fault.Permanent(reason, fmt.Errorf("not a valid %s: %w", data.EventType(), err))
		}
		return h(ctx, env, data)
	}
}
