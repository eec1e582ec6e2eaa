package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
)

// BenchmarkApply measures the projection's throughput: batches of 500
// events (whole jobs, as the consumer sees them under load) applied one
// transaction each. Reports events/s. "small jobs" is the worst case (4
// packages, 3 progress reports per attempt: a third of the events are
// per-job); "long transfers" has 20 packages and 20 reports per attempt.
func BenchmarkApply(b *testing.B) {
	for _, c := range []struct {
		name               string
		packages, progress int
	}{{"small jobs", 4, 3}, {"long transfers", 20, 20}} {
		b.Run(c.name, func(b *testing.B) { benchApply(b, c.packages, c.progress) })
	}
}

func benchApply(b *testing.B, packages, progress int) {
	st := newStoreB(b)
	const batch = 500
	b.ResetTimer()
	total := 0
	var took time.Duration
	for i := range b.N {
		b.StopTimer()
		var evs []store.Event
		for len(evs) < 4*batch {
			id := fmt.Sprintf("bench-%d-%d", i, len(evs))
			msgs, err := scenario.Events(scenario.Job{ID: id, Packages: packages, Progress: progress})
			if err != nil {
				b.Fatal(err)
			}
			evs = append(evs, toEventsB(b, msgs)...)
		}
		b.StartTimer()
		start := time.Now()
		for len(evs) > 0 {
			n := min(batch, len(evs))
			if _, err := st.Apply(b.Context(), evs[:n], nil); err != nil {
				b.Fatal(err)
			}
			total += n
			evs = evs[n:]
		}
		took += time.Since(start)
	}
	b.ReportMetric(float64(total)/took.Seconds(), "events/s")
}
