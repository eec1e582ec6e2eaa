// Package bus is the JetStream plumbing every service shares: connecting,
// provisioning streams and consumers idempotently, publishing events with
// their id as Nats-Msg-Id, and settling a message according to how its
// handler failed.
package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Link holds the connection settings for long links (a site across an
// ocean, a firewall that drops idle flows): how soon a connection that
// looks open but carries nothing is noticed, and how reconnects are paced.
type Link struct {
	// PingInterval and MaxPingsOut: a connection is declared stale (and a
	// reconnect begins) when MaxPingsOut pings in a row go unanswered, so a
	// half-open connection is found within about (MaxPingsOut+1) ×
	// PingInterval: 30 s with the defaults (10 s, 2). The client's own
	// default, 2 min × 2, took 4–6 minutes.
	PingInterval time.Duration
	MaxPingsOut  int
	// ReconnectWait is the pause between reconnect attempts, to which a
	// random ReconnectJitter is added, so that every service of a site
	// does not come back in the same millisecond after a broker restart.
	// Reconnects go on forever.
	ReconnectWait, ReconnectJitter time.Duration
}

// DefaultLink is what Connect uses.
func DefaultLink() Link {
	return Link{PingInterval: 10 * time.Second, MaxPingsOut: 2, ReconnectWait: 500 * time.Millisecond, ReconnectJitter: time.Second}
}

// Connect dials NATS with DefaultLink settings; see ConnectLink.
func Connect(ctx context.Context, url, name string, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	return ConnectLink(ctx, url, name, DefaultLink(), log)
}

// ConnectLink dials NATS and returns the connection and a JetStream
// handle. A server that is not up yet is waited for (with backoff, until
// ctx ends), and a connection that drops or goes silent is re-established
// forever: a service outlives a broker restart and may start before the
// broker. Disconnects and reconnects are logged with the server's name.
// Close the connection with Drain when done.
func ConnectLink(ctx context.Context, url, name string, link Link, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	d := DefaultLink()
	if link.PingInterval <= 0 {
		link.PingInterval = d.PingInterval
	}
	if link.MaxPingsOut <= 0 {
		link.MaxPingsOut = d.MaxPingsOut
	}
	if link.ReconnectWait <= 0 {
		link.ReconnectWait = d.ReconnectWait
	}
	// The client forgets the server as the connection drops, so the last
	// one connected to is remembered for the disconnect's log line.
	var last atomic.Pointer[[2]string]
	remember := func(c *nats.Conn) { last.Store(&[2]string{c.ConnectedServerName(), c.ConnectedUrlRedacted()}) }
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.PingInterval(link.PingInterval),
		nats.MaxPingsOutstanding(link.MaxPingsOut),
		nats.ReconnectWait(link.ReconnectWait),
		nats.ReconnectJitter(link.ReconnectJitter, link.ReconnectJitter),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if err != nil { // nil on a deliberate Close or Drain
				ev := log.Warn().Err(err)
				if l := last.Load(); l != nil {
					ev = ev.Str("server", l[0]).Str("url", l[1])
				}
				ev.Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			remember(c)
			log.Info().Str("server", c.ConnectedServerName()).Str("url", c.ConnectedUrlRedacted()).
				Uint64("reconnects", c.Stats().Reconnects).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if s != nil {
				ev = ev.Str("subject", s.Subject)
			}
			ev.Msg("nats async error")
		}),
	}
	var nc *nats.Conn
	var err error
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		nc, err = nats.Connect(url, opts...)
		if err == nil {
			break
		}
		// Authentication and URL errors will not heal by waiting.
		if !errors.Is(err, nats.ErrNoServers) && !errors.Is(err, nats.ErrTimeout) {
			return nil, nil, fmt.Errorf("connect to nats at %s: %w", url, err)
		}
		log.Warn().Err(err).Dur("retry_in", wait).Msg("nats not reachable yet")
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("connect to nats at %s: %w (last error: %w)", url, ctx.Err(), err)
		case <-time.After(wait):
		}
	}
	remember(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// Publish sends ev on subj with its id as Nats-Msg-Id and waits for the
// stream's acknowledgement. A duplicate (same id inside the stream's window)
// is success.
func Publish(ctx context.Context, js jetstream.Publisher, subj string, ev event.Envelope) (*jetstream.PubAck, error) {
	m, err := Msg(subj, ev)
	if err != nil {
		return nil, err
	}
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("publish %s %s: %w", subj, ev.ID, err)
	}
	return ack, nil
}

// Msg encodes ev as a NATS message for subj carrying Nats-Msg-Id and the
// content type, ready for PublishMsg or PublishMsgAsync.
func Msg(subj string, ev event.Envelope) (*nats.Msg, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", ev.Type, err)
	}
	m := nats.NewMsg(subj)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, ev.ID)
	m.Header.Set("Content-Type", "application/cloudevents+json")
	return m, nil
}

// Settle sends exactly one reply for a handler's verdict on m: DoubleAck on
// success, Term (with the error's reason) on a permanent error, NakWithDelay
// otherwise, the delay from the Retry policy of the Runner that delivered m
// (DefaultRetry otherwise) — none once m has had its durable's last
// delivery, so MAX_DELIVERIES fires at once. It is the one settle: a Runner
// settles what its handler left unsettled through it too. It uses its own
// deadline so that a reply still goes out while shutdown cancels ctx.
func Settle(ctx context.Context, m jetstream.Msg, err error, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	switch {
	case err == nil:
		err = m.DoubleAck(ctx)
	case fault.IsPermanent(err):
		reason := fault.Reason(err, "permanent")
		log.Error().Err(err).Str("reason", reason).Msg("giving up on message")
		err = m.TermWithReason(reason)
	default:
		reason := fault.Reason(err, "")
		d := Backoff(m, reason)
		log.Warn().Err(err).Str("reason", reason).Dur("retry_in", d).Msg("will retry message")
		err = m.NakWithDelay(d)
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		log.Error().Err(err).Msg("settle reply lost; the server redelivers after AckWait")
	}
}

// Backoff is the redelivery delay after the failed delivery of m for
// reason, by the Retry policy m was delivered under. A bare Nak would burn
// MaxDeliver in milliseconds during a dependency blip.
func Backoff(m jetstream.Msg, reason string) time.Duration {
	n := uint64(1)
	if md, err := m.Metadata(); err == nil {
		n = md.NumDelivered
	}
	if d, ok := m.(*delivery); ok && d.maxDeliver > 0 && int(n) >= d.maxDeliver {
		return 0 // nothing left to wait for: let MAX_DELIVERIES fire now
	}
	return retryOf(m).Delay(int(n), reason)
}
