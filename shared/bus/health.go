package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// DefaultStallAfter is how long a durable with pending work may go without
// progress before /readyz fails naming it.
const DefaultStallAfter = 60 * time.Second

// Health is what the runners of one service know about their durables: it
// feeds /readyz (Check) and the per-durable Prometheus metrics. One Health
// serves every Runner of a service; it keeps no global state.
type Health struct {
	stallAfter time.Duration
	m          *runnerMetrics

	mu     sync.Mutex
	states map[string]*durableState
}

// NewHealth returns a Health whose metrics are registered on reg (nil:
// not registered, for tests and tools). stallAfter 0 is DefaultStallAfter.
func NewHealth(reg prometheus.Registerer, stallAfter time.Duration) *Health {
	if stallAfter <= 0 {
		stallAfter = DefaultStallAfter
	}
	h := &Health{stallAfter: stallAfter, m: newRunnerMetrics(), states: map[string]*durableState{}}
	if reg != nil {
		h.m.register(reg)
	}
	return h
}

// StallAfter is the configured time without progress that makes a durable
// with pending work unready.
func (h *Health) StallAfter() time.Duration { return h.stallAfter }

// state returns the record of a durable, creating it.
func (h *Health) state(stream, durable string, capacity int) *durableState {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := stream + "/" + durable
	if s, ok := h.states[key]; ok {
		s.mu.Lock()
		s.capacity += capacity
		s.mu.Unlock()
		return s
	}
	now := time.Now()
	s := &durableState{stream: stream, name: durable, capacity: capacity, progress: now, infoAt: now}
	h.states[key] = s
	return s
}

// Check is a readiness probe (obs.Check): it fails, naming each durable,
// when one with pending work has made no progress for StallAfter, or when
// the server has not answered for its consumer info that long. It recovers
// by itself as soon as messages flow again.
func (h *Health) Check(context.Context) error {
	h.mu.Lock()
	states := make([]*durableState, 0, len(h.states))
	for _, s := range h.states {
		states = append(states, s)
	}
	h.mu.Unlock()
	slices.SortFunc(states, func(a, b *durableState) int { return strings.Compare(a.name, b.name) })
	now := time.Now()
	var errs []error
	for _, s := range states {
		if why := s.unready(now, h.stallAfter); why != "" {
			errs = append(errs, errors.New(why))
		}
	}
	return errors.Join(errs...)
}

// durableState is one durable's delivery record, shared by the runner's
// fetch loop, its workers and its watchdog.
type durableState struct {
	stream, name string

	mu       sync.Mutex
	capacity int       // handlers that may run at once
	busy     int       // handlers running
	progress time.Time // last delivery, settle, or moment with every handler busy
	// pendingSince is the first poll that saw undelivered messages with
	// no progress since; zero while nothing waits.
	pendingSince time.Time
	pending      uint64
	ackPending   int
	maxAck       int
	infoAt       time.Time // last answered consumer info (or start)
	infoErr      error
}

func (s *durableState) delivered(now time.Time) {
	s.mu.Lock()
	s.progress = now
	s.pendingSince = time.Time{}
	s.mu.Unlock()
}

func (s *durableState) begin() {
	s.mu.Lock()
	s.busy++
	s.mu.Unlock()
}

func (s *durableState) end(now time.Time) {
	s.mu.Lock()
	s.busy--
	s.progress = now
	s.mu.Unlock()
}

// observe records a consumer info answer.
func (s *durableState) observe(now time.Time, info *jetstream.ConsumerInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.infoAt, s.infoErr = now, nil
	s.pending, s.ackPending, s.maxAck = info.NumPending, info.NumAckPending, info.Config.MaxAckPending
	if s.pending == 0 {
		s.pendingSince = time.Time{}
	} else if s.pendingSince.IsZero() {
		s.pendingSince = now
	}
}

func (s *durableState) infoFailed(err error) {
	s.mu.Lock()
	s.infoErr = err
	s.mu.Unlock()
}

// stuckFor is how long messages have been waiting with a handler free and
// nothing delivered; 0 when the durable is not stuck. Busy handlers are
// progress (a 50 GB package takes a while), and so is a consumer whose
// MaxAckPending is used up: the server holds back on purpose.
func (s *durableState) stuckFor(now time.Time) time.Duration {
	if s.busy > 0 && s.busy >= s.capacity {
		s.progress = now
	}
	if s.pending == 0 || s.pendingSince.IsZero() {
		return 0
	}
	if s.maxAck > 0 && s.ackPending >= s.maxAck {
		return 0
	}
	return now.Sub(later(s.progress, s.pendingSince))
}

func (s *durableState) stuck(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stuckFor(now)
}

func (s *durableState) unready(now time.Time, after time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.stuckFor(now); d >= after {
		return fmt.Sprintf("durable %s: %d messages pending, none delivered for %s", s.name, s.pending, d.Round(time.Second))
	}
	if s.infoErr != nil && now.Sub(s.infoAt) >= after {
		return fmt.Sprintf("durable %s: no consumer info for %s: %v", s.name, now.Sub(s.infoAt).Round(time.Second), s.infoErr)
	}
	return ""
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// runnerMetrics are the runner's Prometheus metrics, labelled by durable.
type runnerMetrics struct {
	lastDelivery *prometheus.GaugeVec
	pending      *prometheus.GaugeVec
	ackPending   *prometheus.GaugeVec
	stalled      *prometheus.GaugeVec
	delivered    *prometheus.CounterVec
	redelivered  *prometheus.CounterVec
	settled      *prometheus.CounterVec
	undecodable  *prometheus.CounterVec
	reprovisions *prometheus.CounterVec
	resets       *prometheus.CounterVec
	errors       *prometheus.CounterVec
	// dispatched is how many messages each fetch round of a Priority
	// runner's dispatcher handed out, by its first (highest) durable.
	dispatched *prometheus.HistogramVec
	// held is how many messages a Priority runner's dispatcher holds for
	// a worker, by its first (highest) durable.
	held *prometheus.GaugeVec
}

func newRunnerMetrics() *runnerMetrics {
	d := []string{"durable"}
	return &runnerMetrics{
		lastDelivery: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ccat_consumer_last_delivery_timestamp_seconds",
			Help: "Unix time of the durable's last delivered message."}, d),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ccat_consumer_pending",
			Help: "Messages not yet delivered (num_pending), polled from consumer info every few seconds."}, d),
		ackPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ccat_consumer_ack_pending",
			Help: "Messages delivered and not yet settled (num_ack_pending), polled from consumer info."}, d),
		stalled: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ccat_consumer_stalled_seconds",
			Help: "How long messages have waited with a handler free and nothing delivered (0: flowing)."}, d),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_delivered_total",
			Help: "Messages delivered to this process."}, d),
		redelivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_redelivered_total",
			Help: "Deliveries that were not a message's first."}, d),
		settled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_settled_total",
			Help: "Messages settled, by verdict (ack, nak, term) and reason code."}, []string{"durable", "verdict", "reason"}),
		undecodable: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_undecodable_total",
			Help: "Messages terminated because they were not a valid event, by reason."}, []string{"durable", "reason"}),
		reprovisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_reprovisioned_total",
			Help: "Times the durable (or its stream) was found missing and created again."}, d),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_resets_total",
			Help: "Times the subscription was reset because messages waited and nothing arrived."}, d),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ccat_consumer_fetch_errors_total",
			Help: "Failed pulls (broker away, consumer missing, heartbeats missed)."}, d),
		dispatched: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ccat_consumer_dispatch_batch_messages",
			Help:    "Messages fetched per round of a priority runner (for idle workers, and while handling is fast for busy ones), by its highest durable.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}, d),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ccat_consumer_dispatch_held_messages",
			Help: "Messages a priority runner fetched and holds for a worker (ahead of busy workers only while handling is fast), by its highest durable."}, d),
	}
}

func (m *runnerMetrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.lastDelivery, m.pending, m.ackPending, m.stalled, m.delivered, m.redelivered,
		m.settled, m.undecodable, m.reprovisions, m.resets, m.errors, m.dispatched, m.held)
}

// Environment variables of the consumer runners, the same in every service.
const (
	EnvStallAfter   = "CONSUMER_STALL_AFTER"
	EnvPollInterval = "CONSUMER_POLL_INTERVAL"
)

// Consumers are the settings every Runner of a service shares.
type Consumers struct {
	// StallAfter: a durable with pending work and no progress for this long
	// fails /readyz (0: DefaultStallAfter).
	StallAfter time.Duration
	// PollInterval: how often consumer info is polled (0: 5 s); a silent
	// subscription is reset after three polls' worth.
	PollInterval time.Duration
	// Retry is the redelivery policy (zero: DefaultRetry).
	Retry Retry
}

// ConsumersFromEnv reads CONSUMER_STALL_AFTER, CONSUMER_POLL_INTERVAL and
// the STAGER_RETRY_* policy; malformed values are reported through e.Err.
func ConsumersFromEnv(e *config.Env) Consumers {
	return Consumers{
		StallAfter:   e.Duration(EnvStallAfter, DefaultStallAfter),
		PollInterval: e.Duration(EnvPollInterval, 5*time.Second),
		Retry:        RetryFromEnv(e),
	}
}

// Runner returns a Runner with these settings, Health and log; the caller
// sets the durables, the mode and the handler.
func (c Consumers) Runner(js jetstream.JetStream, h *Health, log zerolog.Logger) Runner {
	return Runner{JS: js, Health: h, Retry: c.Retry, PollInterval: c.PollInterval, Log: log}
}
