package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The reconciler looks for quiet packages' requests in the work queue. A
// work-queue stream admits no second consumer over the stagers' subjects,
// so the queue is read with batched direct gets (nats-server 2.11+): one
// request returns up to queueBatch messages of a subject filter, so a
// million queued requests cost a thousand round trips, not a million.
// Only the headers are looked at; nothing is kept but the candidates.

// queueBatch is the messages one direct-get batch returns.
const queueBatch = 1000

// queueBatchTimeout bounds the wait for each message of a batch.
const queueBatchTimeout = 10 * time.Second

// ensureDirectGet turns on direct gets on STAGING_REQUESTS when a stream
// provisioned before them lacks it. Only the planner does this (it alone
// reads the queue so); bus.StreamDiff ignores the setting, so no other
// service tries to change the stream for it.
func (s *service) ensureDirectGet(ctx context.Context) error {
	st, err := s.js.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", subject.RequestsStream, err)
	}
	cfg := st.CachedInfo().Config
	if cfg.AllowDirect {
		return nil
	}
	cfg.AllowDirect = true
	if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("allow direct get on %s: %w", subject.RequestsStream, err)
	}
	s.log.Info().Str("stream", subject.RequestsStream).Msg("direct get turned on for the reconciler's batched queue reads")
	return nil
}

// errNoDirect says the stream answers no direct gets.
var errNoDirect = errors.New("direct get not available")

// walkQueue calls f with the stream sequence and Nats-Msg-Id of every
// message on subj from sequence from on, in order, until f returns false
// or the stream has no more.
func walkQueue(ctx context.Context, nc *nats.Conn, stream, subj string, from uint64, f func(seq uint64, msgID string) bool) error {
	for {
		next, n, stop, err := directBatch(ctx, nc, stream, subj, from, f)
		if err != nil || stop || n == 0 {
			return err
		}
		from = next
	}
}

// directBatch reads one batch; it returns the sequence to go on from, how
// many messages it saw, and whether f asked to stop.
func directBatch(ctx context.Context, nc *nats.Conn, stream, subj string, from uint64, f func(uint64, string) bool) (uint64, int, bool, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return 0, 0, false, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, err := json.Marshal(struct {
		Seq   uint64 `json:"seq"`
		Next  string `json:"next_by_subj"`
		Batch int    `json:"batch"`
	}{from, subj, queueBatch})
	if err != nil {
		return 0, 0, false, err
	}
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return 0, 0, false, err
	}
	next, n, stop := from, 0, false
	for {
		mctx, cancel := context.WithTimeout(ctx, queueBatchTimeout)
		m, err := sub.NextMsgWithContext(mctx)
		cancel()
		if err != nil {
			if n == 0 && errors.Is(err, context.DeadlineExceeded) {
				return 0, 0, false, fmt.Errorf("%w on %s: %v", errNoDirect, stream, err)
			}
			return 0, n, false, fmt.Errorf("direct get %s: %w", stream, err)
		}
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			switch m.Header.Get("Status") {
			case "204": // end of batch
				return next, n, stop, nil
			case "404": // nothing more
				return next, 0, stop, nil
			case "503":
				return 0, 0, false, fmt.Errorf("%w on %s", errNoDirect, stream)
			default:
				return 0, n, false, fmt.Errorf("direct get %s: status %s %s", stream, m.Header.Get("Status"), m.Header.Get("Description"))
			}
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return 0, n, false, fmt.Errorf("direct get %s: bad sequence %q", stream, m.Header.Get(jetstream.SequenceHeader))
		}
		n++
		next = seq + 1
		if !stop && !f(seq, m.Header.Get(jetstream.MsgIDHeader)) {
			stop = true // drain the rest of the batch
		}
	}
}
