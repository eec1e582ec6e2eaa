package stager

import (
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics live on a registry per Run, so several stagers in one process
// (the demo, the tests) never share or collide.
type metrics struct {
	reg      *prometheus.Registry
	outcomes *prometheus.CounterVec
	bytes    prometheus.Counter
	inflight prometheus.Gauge
	duration prometheus.Histogram
	dead     prometheus.Counter
	cleanups *prometheus.CounterVec
	freed    prometheus.Counter
	// manifests counts manifests fetched by reference, by outcome (ok,
	// bad_manifest, io_error).
	manifests *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: obs.NewRegistry(),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stager_attempts_total",
			Help: "Settled attempts by outcome (done, already_present, retry, failed) and failure reason.",
		}, []string{"outcome", "reason"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stager_archive_bytes_read_total",
			Help: "Bytes read from archive locations, whatever the outcome.",
		}),
		manifests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stager_manifest_fetches_total",
			Help: "Manifests fetched from MANIFESTS by reference, by outcome (ok, bad_manifest, io_error).",
		}, []string{"outcome"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stager_packages_in_flight",
			Help: "Requests being handled by this instance.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "stager_stage_duration_seconds",
			Help:    "Time from taking a request to a verified package in place.",
			Buckets: prometheus.ExponentialBuckets(0.1, 4, 10),
		}),
		dead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stager_dead_letters_total",
			Help: "Requests that ran out of deliveries and were moved to the dead-letter stream.",
		}),
	}
	m.cleanups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_cleanups_total",
		Help: "Deletion items settled, by outcome (deleted, referenced, gone, retry, failed, invalid).",
	}, []string{"outcome"})
	m.freed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stager_bytes_freed_total",
		Help: "Bytes of staged copies deleted because no job referenced them any more.",
	})
	m.reg.MustRegister(m.outcomes, m.bytes, m.inflight, m.duration, m.dead, m.cleanups, m.freed, m.manifests)
	return m
}
