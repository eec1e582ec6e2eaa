package planner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The reconciler acts only on facts. The ledger's API is a projection: it
// can stop (or fall behind) while its HTTP server keeps answering, and
// then a package that completed still looks scheduled. So before it
// judges anything a round asks JetStream how far the ledger's durable has
// got: every event published before the round began must be acknowledged
// (the ledger acknowledges only after its transaction committed, so the
// API shows it). The same holds for the planner's own planner-outcomes
// durable, whose record the reconciler checks per package.

// behindError says a durable has not applied every event up to a stream
// sequence: the round does nothing.
type behindError struct {
	durable string
	head    uint64 // the stream's last sequence when the round began
	floor   uint64 // the durable's ack floor
	cause   error  // the durable could not be read at all
}

func (e *behindError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s: lag unknown: %v", e.durable, e.cause)
	}
	return fmt.Sprintf("%s has acknowledged up to %d of %d", e.durable, e.floor, e.head)
}

func (e *behindError) Unwrap() error { return e.cause }

// lag is the number of stream sequences between the durable's ack floor
// and the head it had to reach (an upper bound on its unapplied events).
func (e *behindError) lag() uint64 {
	if e.head > e.floor {
		return e.head - e.floor
	}
	return 0
}

// caughtUp reports whether the durable has acknowledged every message of
// its filter up to head. It costs one consumer info and, when the ack
// floor is below head, one next-by-subject read per filter subject: a
// message of the filter between the floor and head means the durable has
// not applied it (messages up to the ack floor are all acknowledged).
func caughtUp(ctx context.Context, st jetstream.Stream, durable string, head uint64) (bool, uint64, error) {
	cons, err := st.Consumer(ctx, durable)
	if err != nil {
		return false, 0, fmt.Errorf("consumer %s: %w", durable, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("consumer %s: %w", durable, err)
	}
	floor := info.AckFloor.Stream
	if floor >= head || (info.NumPending == 0 && info.NumAckPending == 0) {
		return true, floor, nil
	}
	filters := info.Config.FilterSubjects
	if info.Config.FilterSubject != "" {
		filters = append(filters, info.Config.FilterSubject)
	}
	if len(filters) == 0 {
		filters = st.CachedInfo().Config.Subjects
	}
	for _, f := range filters {
		m, err := st.GetMsg(ctx, floor+1, jetstream.WithGetMsgSubject(f))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return false, floor, fmt.Errorf("stream %s after %d: %w", f, floor, err)
		}
		if m.Sequence <= head {
			return false, floor, nil
		}
	}
	return true, floor, nil
}

// waitCaughtUp polls caughtUp until it holds or within has passed; a
// healthy durable applies thousands of events a second, so it reaches a
// fixed head quickly even under load. It returns a *behindError otherwise.
func (s *service) waitCaughtUp(ctx context.Context, st jetstream.Stream, durable string, head uint64, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ok, floor, err := caughtUp(ctx, st, durable, head)
		if ok {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return &behindError{durable: durable, head: head, floor: floor, cause: err}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(100*time.Millisecond, within/4+time.Millisecond)):
		}
	}
}
