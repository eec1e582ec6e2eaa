package bus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Backlog reports, at scrape time, how many messages wait in consumers
// (num_pending) and how many are delivered but not yet acknowledged
// (num_ack_pending). Asking the server on scrape keeps the figures exact
// and costs one API call per consumer per scrape.
type Backlog struct {
	pending, ackPending *prometheus.Desc
	entries             []backlogEntry
}

type backlogEntry struct {
	cons   jetstream.Consumer
	labels []string
}

// NewBacklog returns a collector of two gauges, named by the caller (so the
// names stand in the service's code, where dashboards' checks find them),
// with the given label names.
func NewBacklog(pendingName, ackPendingName string, labels ...string) *Backlog {
	return &Backlog{
		pending: prometheus.NewDesc(pendingName,
			"Messages waiting in the consumer (JetStream num_pending).", labels, nil),
		ackPending: prometheus.NewDesc(ackPendingName,
			"Messages delivered and not yet acknowledged (JetStream num_ack_pending).", labels, nil),
	}
}

// Add registers a consumer with its label values. Call it before the
// collector is registered.
func (b *Backlog) Add(cons jetstream.Consumer, labelValues ...string) {
	b.entries = append(b.entries, backlogEntry{cons, labelValues})
}

// Describe implements prometheus.Collector.
func (b *Backlog) Describe(ch chan<- *prometheus.Desc) {
	ch <- b.pending
	ch <- b.ackPending
}

// Collect implements prometheus.Collector. A consumer the server does not
// answer for within two seconds is left out of this scrape rather than
// reported as zero, so an outage never looks like an empty queue.
func (b *Backlog) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, e := range b.entries {
		info, err := e.cons.Info(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(b.pending, prometheus.GaugeValue, float64(info.NumPending), e.labels...)
		ch <- prometheus.MustNewConstMetric(b.ackPending, prometheus.GaugeValue, float64(info.NumAckPending), e.labels...)
	}
}
