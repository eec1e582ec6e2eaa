package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

// Source is the CloudEvents source of everything stagectl publishes.
const Source = "ccat-staging/stagectl"

func (e *env) ledger() *ledgerapi.Client {
	return &ledgerapi.Client{BaseURL: e.cfg.LedgerURL, Token: e.cfg.LedgerToken}
}

// connect dials NATS for one command; close it with nc.Close. Unlike a
// service (bus.Connect) a one-shot command does not reconnect forever, and
// has no disconnect handler that would report its own Close on stderr after
// the command is done.
func (e *env) connect(ctx context.Context) (*nats.Conn, jetstream.JetStream, error) {
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(d)), time.Millisecond)
	}
	nc, err := nats.Connect(e.cfg.NATSURL, nats.Name("stagectl"), nats.Timeout(timeout), nats.MaxReconnects(3))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats at %s: %w", e.cfg.NATSURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// publish sends one event, checked against its schema first so that a
// mistake is a usage error here rather than a rejection downstream.
func publish[T event.Data](ctx context.Context, e *env, subj, id string, data T) (event.Envelope, error) {
	ev, err := event.New(Source, id, "", data)
	if err != nil {
		return ev, err
	}
	if err := event.ValidateData(ev.Type, ev.Data); err != nil {
		return ev, withCode(ExitUsage, err)
	}
	nc, js, err := e.connect(ctx)
	if err != nil {
		return ev, err
	}
	defer nc.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := bus.Publish(pctx, js, subj, ev); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			return ev, fmt.Errorf("%w (no stream takes %s: are the services provisioned?)", err, subj)
		}
		return ev, err
	}
	return ev, nil
}

// newUUID returns a random (version 4) UUID: the id of an event that stands
// for one act of a person, like a submit.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// newJobID returns a job id that sorts by time and is unique enough to never
// collide between people submitting in the same second.
func newJobID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "job-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}
