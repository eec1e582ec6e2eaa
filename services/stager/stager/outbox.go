package stager

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// The outbox settles successful attempts off the worker: the worker
// publishes the done event asynchronously and goes on to its next request,
// and a settler acks the request once the done's PubAck is in — ack only
// after the outcome is durable, as succeed does — and only then lets go of
// what the attempt holds (the copy's lease and the in-process lock), so a
// deletion still cannot take the copy before its done is stored. The
// worker is spared the done's, the ack's and the release's round trips;
// for tiny packages those were most of its time.

// outboxPubAckWait bounds the wait for a done's PubAck (the client sets no
// timeout on asynchronous publishes); a request whose PubAck does not come
// goes back, and its redelivery publishes the same done id again (the
// stream drops the duplicate).
const outboxPubAckWait = 10 * time.Second

type pendingDone struct {
	a    *attempt
	done event.Done
	fut  jetstream.PubAckFuture
}

type outbox struct {
	q  chan pendingDone
	wg sync.WaitGroup
}

// startOutbox starts n settlers; a worker waits for room when n*4 answers
// already wait for their PubAck (then it is the broker that is slow, and
// the worker should not fetch more).
func (s *service) startOutbox(ctx context.Context, n int) {
	o := &outbox{q: make(chan pendingDone, 4*n)}
	for range n {
		o.wg.Go(func() {
			for p := range o.q {
				s.settleDone(ctx, p)
			}
		})
	}
	s.outbox = o
}

// closeOutbox settles what is in the outbox and returns when it is empty;
// called once no worker runs any more.
func (s *service) closeOutbox() {
	if s.outbox == nil {
		return
	}
	close(s.outbox.q)
	s.outbox.wg.Wait()
}

// succeedLater publishes done without waiting and leaves the ack to a
// settler.
func (s *service) succeedLater(ctx context.Context, a *attempt, done event.Done) {
	env, err := event.New(s.source, "done:"+a.reqID, a.req.PackageID, done)
	var fut jetstream.PubAckFuture
	if err == nil {
		m, merr := bus.Msg(subject.Done, env)
		if err = merr; err == nil {
			fut, err = s.js.PublishMsgAsync(m)
		}
	}
	if err != nil {
		s.m.outbox.WithLabelValues("nak").Inc()
		a.log.Error().Err(err).Msg("publishing done; handing the request back")
		s.nak(a, s.cfg.RetryBase)
		return
	}
	// The runner must not ack the request when handle returns: the
	// settler does, once the done is stored.
	bus.Defer(a.msg)
	a.handedOff = true
	select {
	case s.outbox.q <- pendingDone{a: a, done: done, fut: fut}:
	case <-ctx.Done():
		// Shutting down with the outbox full: settle it here.
		s.settleDone(ctx, pendingDone{a: a, done: done, fut: fut})
	}
}

// awaitPubAck waits up to outboxPubAckWait for an asynchronous
// publication's PubAck.
func awaitPubAck(fut jetstream.PubAckFuture) error {
	t := time.NewTimer(outboxPubAckWait)
	defer t.Stop()
	select {
	case <-fut.Ok():
		return nil
	case err := <-fut.Err():
		return err
	case <-t.C:
		return errors.New("no PubAck within " + outboxPubAckWait.String())
	}
}

// settleDone acks the request once its done is stored, or hands it back,
// and then lets go of the attempt's lease and lock.
func (s *service) settleDone(ctx context.Context, p pendingDone) {
	defer s.letGo(ctx, p.a)
	if err := awaitPubAck(p.fut); err != nil {
		s.m.outbox.WithLabelValues("nak").Inc()
		p.a.log.Error().Err(err).Msg("publishing done; handing the request back")
		s.nak(p.a, s.cfg.RetryBase)
		return
	}
	s.m.outbox.WithLabelValues("acked").Inc()
	s.succeeded(p.a, p.done)
	s.ack(ctx, p.a)
}
