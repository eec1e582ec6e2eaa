package planner

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics live on the registry of one Run, so several planners in one
// process (demo, tests) never collide.
type metrics struct {
	submits         *prometheus.CounterVec // outcome: planned, duplicate, rejected, retried
	rejections      *prometheus.CounterVec // reason
	requests        *prometheus.CounterVec // site, priority
	packageFailed   *prometheus.CounterVec // reason (no_source)
	planSeconds     prometheus.Histogram
	catalog         *prometheus.CounterVec // outcome: added, replaced, unchanged, removed, conflict, invalid, ignored
	topology        *prometheus.CounterVec // outcome: reloaded, failed
	sites           prometheus.Gauge
	followed        prometheus.Counter
	reconcileRounds *prometheus.CounterVec // outcome: ok, failed, behind
	ledgerBehind    *prometheus.GaugeVec   // durable: 1 while the reconciler waits for it
	ledgerLag       *prometheus.GaugeVec   // durable: stream sequences not yet acknowledged
	reconcileSkip   *prometheus.CounterVec // reason: outcome_recorded
	queueReads      prometheus.Counter
	reissued        prometheus.Counter
	gaveUp          *prometheus.CounterVec // reason
	cancels         *prometheus.CounterVec // outcome
	releases        *prometheus.CounterVec // outcome: recorded, invalid, retried
	cleanups        *prometheus.CounterVec // outcome: scheduled, republished, failed
	lapsed          prometheus.Counter
	manifests       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, version string) *metrics {
	m := &metrics{
		submits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_submits_total", Help: "staging.submit events handled, by outcome (planned, duplicate, rejected, retried).",
		}, []string{"outcome"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_rejections_total", Help: "staging.rejected events published, by reason.",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_requests_published_total", Help: "staging.request events acknowledged by JetStream (duplicates included), by site and priority.",
		}, []string{"site", "priority"}),
		packageFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_packages_unplanned_total", Help: "packages planned as failed, by reason.",
		}, []string{"reason"}),
		planSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "planner_plan_seconds", Help: "time from receiving a submit to every publication acknowledged.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		catalog: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_catalog_events_total", Help: "archive.* events handled by the catalog, by outcome.",
		}, []string{"outcome"}),
		topology: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_topology_reloads_total", Help: "topology reloads, by outcome (reloaded, failed).",
		}, []string{"outcome"}),
		followed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "planner_packages_following_total", Help: "packages planned to follow another job's request (cross-job dedup).",
		}),
		reconcileRounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_reconcile_rounds_total", Help: "reconciler rounds, by outcome (ok, failed, behind: the ledger or planner-outcomes had not applied every event, so the round did nothing).",
		}, []string{"outcome"}),
		ledgerBehind: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "planner_reconcile_record_behind", Help: "1 while the last reconciler round found the durable (ledger-events, planner-outcomes) behind the stream and did nothing.",
		}, []string{"durable"}),
		ledgerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "planner_reconcile_record_lag", Help: "STAGING_EVENTS sequences between the durable's ack floor and the stream's head at the last reconciler round that found it behind (0 when caught up).",
		}, []string{"durable"}),
		reconcileSkip: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_reconcile_skipped_total", Help: "quiet packages the reconciler left alone or would not give up, by reason (outcome_recorded: the planner saw its outcome though the ledger does not show it; copy_staged: past its re-issues but its copy is known staged, so re-issued instead of given up).",
		}, []string{"reason"}),
		queueReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "planner_reconcile_queue_reads_total", Help: "work-queue messages the reconciler read looking for quiet packages' requests.",
		}),
		reissued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "planner_requests_reissued_total", Help: "lost requests re-issued as a new generation by the reconciler.",
		}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_cancels_total", Help: "staging.cancel events handled, by outcome (recorded, invalid, retried).",
		}, []string{"outcome"}),
		gaveUp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_packages_given_up_total", Help: "packages the reconciler failed for good, by reason (stalled, no_source, ...).",
		}, []string{"reason"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_releases_total", Help: "staging.release events handled, by outcome (recorded, invalid, retried).",
		}, []string{"outcome"}),
		cleanups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "planner_cleanups_total", Help: "deletion items for unreferenced staged copies, by outcome (scheduled, republished, failed).",
		}, []string{"outcome"}),
		lapsed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "planner_references_lapsed_total", Help: "references to staged copies dropped because their job held them longer than PLANNER_REF_RETENTION without a release or cancel.",
		}),
		manifests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "planner_manifests_stored_total", Help: "inline file lists too large for the catalog or a request, stored in MANIFESTS and passed on by reference.",
		}),
		sites: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "planner_sites", Help: "sites in the topology in use.",
		}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "planner_build_info", Help: "always 1; the version label says which build runs.", ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	reg.MustRegister(m.submits, m.rejections, m.requests, m.packageFailed, m.planSeconds, m.catalog, m.topology, m.sites, m.followed, m.reconcileRounds, m.ledgerBehind, m.ledgerLag, m.reconcileSkip, m.queueReads, m.reissued, m.gaveUp, m.cancels, m.releases, m.cleanups, m.lapsed, m.manifests, info)
	return m
}
