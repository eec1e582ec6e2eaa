package scenario

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/jackc/pgx/v5"
)

// stages says where a set of jobs spent its time, from the times the
// services put on their events (one clock: everything runs on this
// machine) and the ledger's applied_at: submit published → plan made
// (planner), plan → staging.done made (request queue + stager), done made →
// applied (ledger). The last of each shows which stage a burst waits on.
type stages struct {
	planMs, stageMs, ledgerMs   []float64 // per package
	lastPlan, lastDone, lastApp time.Duration
}

func (s stages) String() string {
	p := func(xs []float64) string {
		return fmt.Sprintf("p50 %.0f / p99 %.0f ms", harness.Percentile(xs, 50), harness.Percentile(xs, 99))
	}
	return fmt.Sprintf("planner %s; queue+stager %s; ledger %s; last plan at %s, last done at %s, last applied at %s",
		p(s.planMs), p(s.stageMs), p(s.ledgerMs), s.lastPlan.Round(time.Millisecond), s.lastDone.Round(time.Millisecond), s.lastApp.Round(time.Millisecond))
}

// stageTimes reads the stage breakdown of the jobs in sent (job → submit
// time) from the ledger's event log; start is the first submit.
func stageTimes(ctx context.Context, sys *system.System, sent map[string]time.Time, start time.Time) (stages, error) {
	conn, err := pgx.Connect(ctx, sys.DBURL)
	if err != nil {
		return stages{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT d.job_id, p.event_time, d.event_time, d.applied_at
		FROM event_log d
		JOIN (SELECT job_id, max(event_time) AS event_time FROM event_log WHERE type = $2 GROUP BY job_id) p ON p.job_id = d.job_id
		WHERE d.type = $1`, event.TypeDone, event.TypePlanned)
	if err != nil {
		return stages{}, fmt.Errorf("read event_log: %w", err)
	}
	defer rows.Close()
	var s stages
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for rows.Next() {
		var job string
		var planned, done, applied time.Time
		if err := rows.Scan(&job, &planned, &done, &applied); err != nil {
			return stages{}, err
		}
		t, ok := sent[job]
		if !ok {
			continue
		}
		s.planMs = append(s.planMs, ms(planned.Sub(t)))
		s.stageMs = append(s.stageMs, ms(done.Sub(planned)))
		s.ledgerMs = append(s.ledgerMs, ms(applied.Sub(done)))
		s.lastPlan = max(s.lastPlan, planned.Sub(start))
		s.lastDone = max(s.lastDone, done.Sub(start))
		s.lastApp = max(s.lastApp, applied.Sub(start))
	}
	return s, rows.Err()
}

func earliest(sent map[string]time.Time) time.Time {
	var first time.Time
	for _, t := range sent {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first
}
