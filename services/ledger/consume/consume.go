// Package consume feeds the ledger's projection from a JetStream durable
// consumer: it pulls batches, sorts valid events from poison, applies each
// batch in one transaction and acks only after the commit. Several batches
// may be applied at once, by one ledger (Workers) or by several instances
// sharing the durable: the projection's merge rules commute and its SQL
// guards make that safe.
package consume

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Metrics are the projection's Prometheus metrics, shared by the consumers
// of one Run.
type Metrics struct {
	Applied    *prometheus.CounterVec
	Duplicates prometheus.Counter
	Poison     *prometheus.CounterVec
	Batch      prometheus.Histogram
	Latency    prometheus.Histogram
	Failures   prometheus.Counter
	Pending    *prometheus.GaugeVec
}

// NewMetrics registers the projection metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Applied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledger_events_applied_total",
			Help: "Events applied to the projection, by type."}, []string{"type"}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "ledger_events_duplicate_total",
			Help: "Events already in the log (redeliveries, re-publications), ignored."}),
		Poison: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledger_events_poison_total",
			Help: "Messages recorded as poison, by reason."}, []string{"reason"}),
		Batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ledger_batch_size",
			Help: "Messages per applied batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ledger_batch_apply_seconds",
			Help: "Time to apply and commit one batch.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		Failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "ledger_batch_failures_total",
			Help: "Batches that failed to apply and were handed back for redelivery."}),
		Pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ledger_consumer_pending",
			Help: "Messages still to deliver to the ledger's consumer, polled from consumer info every few seconds."}, []string{"durable"}),
	}
	reg.MustRegister(m.Applied, m.Duplicates, m.Poison, m.Batch, m.Latency, m.Failures, m.Pending)
	return m
}

// Consumer applies one durable consumer's messages to the store. It reads
// through the shared runner (bus.Runner, batch mode), which provisions the
// durable again when it or its stream disappears, resets a pull that
// stopped delivering, and reports the durable's state to Health.
type Consumer struct {
	Store *store.Store
	JS    jetstream.JetStream
	// Config is the durable's configuration, to provision it again.
	Config  jetstream.ConsumerConfig
	Stream  string
	Durable string
	// StreamConfig is the stream's configuration, to provision it again.
	StreamConfig jetstream.StreamConfig
	// Health and Settings configure the runner; nil Health: a private one.
	Health   *bus.Health
	Settings bus.Consumers
	Batch    int
	// MaxBytes caps a batch's size in bytes as well (0 means 4 MiB): a
	// batch of 500 plans of a hundred packages each is tens of megabytes
	// once decoded and turned into SQL, and Workers of them are in memory
	// at once.
	MaxBytes int
	// Workers is how many batches are applied at once, each in its own
	// transaction on its own connection: one PostgreSQL backend runs one
	// statement at a time, so a single applier leaves the database's other
	// cores idle while the projection catches up. 0 means 2.
	Workers int
	// MaxWait bounds how long one pull waits for a first message, and so how
	// long Run takes to notice cancellation.
	MaxWait time.Duration
	Log     zerolog.Logger
	Metrics *Metrics
	// Applied, when not nil, is called after each committed batch.
	Applied func(store.Result)

	// failures counts batches failed in a row, by any applier: the retry
	// delay follows the database's state, not a message's history.
	failures atomic.Int64
}

// maxRetryDelay caps the delay before a failed batch is tried again. A
// batch fails when the database does; retrying one every few seconds is no
// load, and a longer delay is only time lost once the database is back.
const maxRetryDelay = 5 * time.Second

// Run consumes until ctx is cancelled and returns nil then.
func (c *Consumer) Run(ctx context.Context) error {
	if c.Batch <= 0 {
		c.Batch = 500
	}
	if c.MaxWait <= 0 {
		c.MaxWait = time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 4 << 20
	}
	// The next batches are fetched and validated while earlier ones are
	// applied, by Workers appliers at once: PostgreSQL and the validation
	// then use the machine's cores at the same time. Each fetched batch is
	// split among the appliers by job (split), because a batch locks its
	// jobs' rows first: two appliers given the same job take turns, which
	// they did for nearly every batch when batches were handed out whole.
	// Order between batches does not matter (the merge rules commute);
	// each batch is acked only after its own commit, and a batch fetched
	// when shutdown begins is still applied (handle finishes it).
	queues := make([]chan batch, c.Workers)
	for w := range queues {
		queues[w] = make(chan batch, 1)
	}
	r := c.Settings.Runner(c.JS, c.Health, c.Log)
	r.Durables = []bus.Durable{{Stream: c.StreamConfig, Consumer: c.Config}}
	r.Mode, r.BatchSize, r.BatchBytes, r.BatchWait = bus.Batch, c.Batch, c.MaxBytes, c.MaxWait
	// The pending gauge follows consumer info polled every few seconds,
	// not only committed batches: during a stall it must rise, or the lag
	// alert cannot fire.
	r.OnInfo = func(durable string, info *jetstream.ConsumerInfo) {
		c.Metrics.Pending.WithLabelValues(durable).Set(float64(info.NumPending))
	}
	r.Batch = func(ctx context.Context, msgs []jetstream.Msg) {
		for w, b := range split(msgs, classifyAll(c.Stream, msgs, c.Workers > 1), c.Workers) {
			if len(b.msgs) > 0 {
				queues[w] <- b
			}
		}
	}
	go func() {
		defer func() {
			for _, q := range queues {
				close(q)
			}
		}()
		_ = r.Run(ctx)
	}()
	var wg sync.WaitGroup
	for _, q := range queues {
		wg.Go(func() {
			for b := range q {
				c.handle(ctx, b)
			}
		})
	}
	wg.Wait()
	return nil
}

// batch is a fetched batch, sorted into valid events and poison.
type batch struct {
	msgs   []jetstream.Msg
	events []store.Event
	poison []store.Poison
}

// classified is one message sorted: a valid event (ok) or poison, and for
// an event the key split divides batches by.
type classified struct {
	ev  store.Event
	p   store.Poison
	ok  bool
	key string
}

// classifyAll classifies every message of a batch, with the split key when
// keyed. Validation (JSON Schema) is most of the ledger's CPU, so a big
// batch is classified by several goroutines; the result keeps the batch's
// order.
func classifyAll(stream string, msgs []jetstream.Msg, keyed bool) []classified {
	rs := make([]classified, len(msgs))
	classify := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			m := msgs[i]
			var seq uint64
			var ts time.Time
			if md, err := m.Metadata(); err == nil {
				seq, ts = md.Sequence.Stream, md.Timestamp
			}
			r := &rs[i]
			r.ev, r.p, r.ok = Classify(stream, m.Subject(), seq, ts, m.Data())
			if r.ok && keyed {
				r.key = splitKey(r.ev)
			}
		}
	}
	workers := min(runtime.GOMAXPROCS(0), len(msgs)/minPerWorker)
	if workers <= 1 {
		classify(0, len(msgs))
	} else {
		var wg sync.WaitGroup
		per := (len(msgs) + workers - 1) / workers
		for lo := 0; lo < len(msgs); lo += per {
			wg.Go(func() { classify(lo, min(lo+per, len(msgs))) })
		}
		wg.Wait()
	}
	return rs
}

// Sort separates valid events from poison, the way Apply expects them.
func Sort(stream string, msgs []jetstream.Msg) ([]store.Event, []store.Poison) {
	b := split(msgs, classifyAll(stream, msgs, false), 1)[0]
	return b.events, b.poison
}

// splitKey is what keeps events together when a batch is split among the
// appliers: the job (whose row each batch locks first), else the package.
func splitKey(e store.Event) string {
	if j := e.JobID(); j != "" {
		return j
	}
	return e.PackageID()
}

// split divides a classified batch into n, by key: the events of one job
// always land in the same part, poison in the first.
func split(msgs []jetstream.Msg, rs []classified, n int) []batch {
	out := make([]batch, n)
	for i, r := range rs {
		w := 0
		if n > 1 && r.ok {
			h := fnv.New32a()
			_, _ = h.Write([]byte(r.key))
			w = int(h.Sum32() % uint32(n))
		}
		b := &out[w]
		b.msgs = append(b.msgs, msgs[i])
		if r.ok {
			b.events = append(b.events, r.ev)
		} else {
			b.poison = append(b.poison, r.p)
		}
	}
	return out
}

// minPerWorker is the fewest messages worth a goroutine of their own.
const minPerWorker = 32

// ReasonWrongSubject is the poison reason of an event whose type does not
// belong on the subject it arrived on.
const ReasonWrongSubject = "wrong_subject"

// subjectOf is the one subject each event type may arrive on.
var subjectOf = map[string]string{
	event.TypePackageArchived: subject.Archived,
	event.TypePackageRemoved:  subject.Removed,
	event.TypeSubmit:          subject.Submit,
	event.TypePlanned:         subject.Planned,
	event.TypeRejected:        subject.Rejected,
	event.TypeStarted:         subject.Started,
	event.TypeProgress:        subject.Progress,
	event.TypeDone:            subject.Done,
	event.TypeFailed:          subject.Failed,
	event.TypeCancel:          subject.Cancel,
	event.TypeRelease:         subject.Release,
	event.TypeStalled:         subject.Stalled,
	event.TypeReleased:        subject.Released,
}

// Classify validates one raw message: a valid event, or poison with the
// reason why not. subj is the subject it arrived on ("" skips that check,
// for callers that do not know it).
func Classify(stream, subj string, seq uint64, ts time.Time, raw []byte) (store.Event, store.Poison, bool) {
	env, err := event.Validate(raw)
	if err == nil && (bytes.Contains(env.Data, []byte(`\u0000`)) || !utf8.Valid(env.Data)) {
		// Valid JSON, but PostgreSQL's jsonb and text hold neither NUL nor
		// invalid UTF-8: the batch would fail on every delivery.
		err = &event.InvalidError{Reason: event.ReasonInvalidData, Msg: "data contains NUL (\\u0000) or invalid UTF-8, which the ledger cannot store"}
	}
	if err == nil {
		if want, ok := subjectOf[env.Type]; ok && subj != "" && subj != want {
			// NATS permissions decide who may publish on which subject
			// (deploy/nats): a stager outcome or a plan arriving on
			// staging.submit, where any client may publish, is forged.
			return store.Event{}, store.Poison{Stream: stream, StreamSeq: seq, Subject: subj, Reason: ReasonWrongSubject,
				Message: fmt.Sprintf("type %s must arrive on %s, not %s", env.Type, want, subj), EventID: env.ID,
				EventType: env.Type, Raw: raw}, false
		}
		t := env.Time
		if t.IsZero() {
			t = ts
		}
		ev := store.Event{Env: env, Stream: stream, StreamSeq: seq, Time: t.UTC()}
		// Decoded here, once, so that valid data without a Go value (1.0
		// for an integer) or a type the projection has no place for (a
		// work item published on staging.submit) is poison, not a batch
		// that fails on every delivery.
		if err = ev.Decode(); err == nil {
			return ev, store.Poison{}, true
		}
		reason := event.ReasonInvalidData
		if errors.Is(err, store.ErrNoProjection) {
			reason = ReasonWrongSubject
		}
		err = &event.InvalidError{Reason: reason, Msg: err.Error()}
	}
	reason := event.ReasonInvalidEnvelope
	if ie, ok := errors.AsType[*event.InvalidError](err); ok {
		reason = ie.Reason
	}
	return store.Event{}, store.Poison{Stream: stream, StreamSeq: seq, Subject: subj, Reason: reason, Message: err.Error(),
		EventID: env.ID, EventType: env.Type, Raw: raw}, false
}

func (c *Consumer) handle(ctx context.Context, b batch) {
	msgs, events, poison := b.msgs, b.events, b.poison
	start := time.Now()
	// A batch already fetched is finished even when shutdown begins, so a
	// stop does not turn into a failed batch and a redelivery.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	res, err := c.Store.Apply(actx, events, poison)
	if err != nil {
		c.Metrics.Failures.Inc()
		// The batch is handed back whole: every event in it is idempotent, so
		// whatever part of it a retry finds already applied is skipped. The
		// delay grows with the failures in a row (1 s, 2 s, 4 s, 5 s) and
		// starts again at 1 s after a success; this applier also waits it
		// out, so an outage does not spin through the whole backlog.
		d := min(c.Settings.Retry.Nominal(int(c.failures.Add(1)), ""), maxRetryDelay)
		c.Log.Error().Err(err).Int("batch", len(msgs)).Dur("retry_in", d).Str("durable", c.Durable).
			Msg("apply batch failed; handing it back")
		for _, m := range msgs {
			_ = m.NakWithDelay(d)
		}
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		return
	}
	c.failures.Store(0)
	c.Metrics.Latency.Observe(time.Since(start).Seconds())
	c.Metrics.Batch.Observe(float64(len(msgs)))
	c.Metrics.Duplicates.Add(float64(res.Duplicates))
	for typ, n := range res.Applied {
		c.Metrics.Applied.WithLabelValues(typ).Add(float64(n))
	}
	for _, p := range poison {
		c.Metrics.Poison.WithLabelValues(p.Reason).Inc()
		c.Log.Warn().Str("reason", p.Reason).Str(logx.EventID, p.EventID).Str(logx.EventType, p.EventType).
			Uint64(logx.StreamSeq, p.StreamSeq).Str("subject", p.Subject).Str("error", p.Message).
			Msg("poison message recorded and acked")
	}
	if md, err := msgs[len(msgs)-1].Metadata(); err == nil {
		// Fresher than the last poll while batches flow.
		c.Metrics.Pending.WithLabelValues(c.Durable).Set(float64(md.NumPending))
	}
	if c.Log.GetLevel() <= zerolog.DebugLevel {
		for _, e := range events {
			var f struct {
				JobID     string `json:"job_id"`
				PackageID string `json:"package_id"`
				Site      string `json:"site"`
				Attempt   int    `json:"attempt"`
			}
			_ = json.Unmarshal(e.Env.Data, &f)
			c.Log.Debug().Str(logx.EventID, e.Env.ID).Str(logx.EventType, e.Env.Type).Uint64(logx.StreamSeq, e.StreamSeq).
				Str(logx.JobID, f.JobID).Str(logx.PackageID, f.PackageID).Str(logx.Site, f.Site).Int(logx.Attempt, f.Attempt).
				Msg("event applied")
		}
	}
	// Acks go out in order on one connection, so when the server confirms
	// the last one (DoubleAck) it has processed all of them; a lost ack only
	// means a redelivery the event log turns into a no-op.
	for _, m := range msgs[:len(msgs)-1] {
		_ = m.Ack()
	}
	ackCtx, ackCancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer ackCancel()
	if err := msgs[len(msgs)-1].DoubleAck(ackCtx); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		c.Log.Warn().Err(err).Str("durable", c.Durable).Msg("ack not confirmed; the batch may be redelivered (harmless)")
	}
	if c.Applied != nil {
		c.Applied(res)
	}
}
