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

	leaseWaits *prometheus.CounterVec
	leaseWait  *prometheus.HistogramVec
	takeovers  *prometheus.CounterVec
	leaseLost  *prometheus.CounterVec
	// presentChecks counts the unleased already_present checks by what
	// they found (present, absent, held, read_failed, gone).
	presentChecks *prometheus.CounterVec
	// cancelLookups counts withdrawn checks by where they were answered
	// (view, bucket).
	cancelLookups *prometheus.CounterVec
	// outbox counts answers settled off the worker, by result (acked,
	// nak).
	outbox *prometheus.CounterVec
	// quarantined counts final paths that held something other than the
	// package's verified copy, moved aside instead of deleted.
	quarantined *prometheus.CounterVec
	// manifests counts manifests fetched by reference, by outcome (ok,
	// bad_manifest, io_error).
	manifests *prometheus.CounterVec
	// syncWait is how long each extraction waited for its tree to become
	// durable after the last entry was written, by location and sync mode
	// (file: the fsyncs draining and the directories'; filesystem: the one
	// syncfs, which includes other writers' dirty data).
	syncWait *prometheus.HistogramVec
	// commitBatch is how many commits each taking of a location's commit
	// lock put in place (dest.Committer): 1 when commits do not overlap.
	commitBatch *prometheus.HistogramVec
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
	m.leaseWaits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_lease_waits_total",
		Help: "Lease acquisitions (STAGER_LEASES) that found the copy held by another holder and waited, by purpose (stage, delete).",
	}, []string{"purpose"})
	m.leaseWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stager_lease_wait_seconds",
		Help:    "Time from asking for a copy's lease to holding it, by purpose.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
	}, []string{"purpose"})
	m.takeovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_lease_takeovers_total",
		Help: "Leases taken over after the previous holder's expired (it died or lost touch), by purpose.",
	}, []string{"purpose"})
	m.leaseLost = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_leases_lost_total",
		Help: "Leases found lost right before an irreversible step (commit, removal), which was then not taken, by purpose.",
	}, []string{"purpose"})
	m.presentChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_present_checks_total",
		Help: "Requests checked for a verified copy from one read of its lease, without taking it, by result: present (answered already_present), absent (no record, the lease not read), held (somebody holds the lease), read_failed, gone (the copy went while the lease was read); all but present go on under the lease.",
	}, []string{"result"})
	m.cancelLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_cancel_lookups_total",
		Help: "Checks whether a request's job is cancelled, by where they were answered: view (the watched copy of CANCELLED) or bucket (a KV get, while the view is not loaded).",
	}, []string{"source"})
	m.outbox = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_outbox_settled_total",
		Help: "Successful attempts whose done was published asynchronously and settled off the worker, by result: acked (after the done's PubAck; then the lease and lock are let go of) or nak (no PubAck: the request goes back).",
	}, []string{"result"})
	m.quarantined = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stager_quarantined_total",
		Help: "Final paths that held something other than the package's verified copy, moved to <root>/.ccat-staging/quarantine (never deleted), by location.",
	}, []string{"location"})
	m.syncWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stager_sync_wait_seconds",
		Help:    "Per extraction, the wait after the last entry was written until the tree was durable, by location and sync mode (file, filesystem).",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
	}, []string{"location", "mode"})
	m.commitBatch = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stager_commit_batch_size",
		Help:    "Commits per batch of the group commit (one taking of the location's commit lock, one fsync of its manifests directory and one of its root), by location.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	}, []string{"location"})
	m.reg.MustRegister(m.outcomes, m.bytes, m.inflight, m.duration, m.dead, m.cleanups, m.freed,
		m.leaseWaits, m.leaseWait, m.takeovers, m.leaseLost, m.presentChecks, m.cancelLookups, m.outbox, m.quarantined, m.manifests, m.syncWait, m.commitBatch)
	return m
}
