//go:build long

package natscluster

import (
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
)

// TestPipelineFailover kills the STAGING_EVENTS leader while jobs flow
// through the real services; every job must still complete. It is in the
// long suite (go test -tags long ./deploy/nats) because recovery is slow
// when the killed node also led one of the planner's consumers: the
// planner's pull iterators notice the loss only after two missed idle
// heartbeats (~30 s with the default 30 s expiry), and a submit whose
// DoubleAck failed during the election comes back only after the consumer's
// AckWait (60 s).
func TestPipelineFailover(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	jobs := p.archive(t, 4, 2)
	for i, jb := range jobs {
		if i%2 == 0 {
			p.submit(t, jb)
		}
	}
	_, ajs := connect(t, p.c, "admin")
	si, err := streamInfoRetry(t.Context(), ajs, subject.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	victim := p.c.byName(si.Cluster.Leader)
	t.Logf("killing %s, leader of %s, while jobs flow", victim.name, subject.EventsStream)
	killed := time.Now()
	victim.ns.Shutdown()
	for i, jb := range jobs {
		if i%2 == 1 {
			p.submit(t, jb)
		}
	}
	p.check(t, jobs, 150*time.Second)
	t.Logf("all %d jobs completed %s after the kill", len(jobs), time.Since(killed).Round(time.Millisecond))
}
