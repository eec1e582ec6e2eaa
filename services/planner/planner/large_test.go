package planner_test

import (
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/catalog"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// A 10,000-package job is planned in one go: the plan is split into parts
// that fit a message, every request is stored once, and the time it took
// is reported (not asserted: the machine is shared).
func TestTenThousandPackageJob(t *testing.T) {
	const n = 10000
	// Parts of 512 KiB, so the split is exercised whatever the server's
	// max_payload (the deployment's 8 MB would fit the plan in one event).
	const partBytes = 512 << 10
	h := start(t, testTopology, func(c *planner.Config) { c.PlanPartBytes = partBytes })
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("obs-2026-11-26-scan-%05d", i)
	}
	// Seed the catalog directly: the archive consumer's speed is not what
	// this test measures.
	cat, err := catalog.Open(t.Context(), h.js, 1)
	if err != nil {
		t.Fatal(err)
	}
	seedStart := time.Now()
	var wg sync.WaitGroup
	work := make(chan string)
	for range 32 {
		wg.Go(func() {
			for id := range work {
				c := route.Copy{Location: "cologne-lta", Key: "raw/2026/" + id + ".tar", SizeBytes: 50 << 30, Checksum: sum, Format: "tar",
					Files: []event.File{{Path: id + "/data.fits", SizeBytes: 50 << 30, SHA256: sum[7:]}}}
				if _, err := cat.Add(t.Context(), id, c); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	t.Logf("seeded %d catalog entries in %v", n, time.Since(seedStart))

	submitted := time.Now()
	h.submit("s-big", event.Submit{JobID: "j-big", Packages: ids, Destination: event.Destination{Site: "cologne"}, RequestedBy: "survey", Priority: "high"})
	reqs, err := h.js.Stream(t.Context(), subject.RequestsStream)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "every request of the large job queued", func() error {
		info, err := reqs.Info(t.Context())
		if err != nil {
			return err
		}
		if info.State.Msgs != n {
			return fmt.Errorf("%d requests stored", info.State.Msgs)
		}
		return nil
	})
	wall := time.Since(submitted)
	h.settled(subject.EventsStream, subject.PlannerSubmit)
	planSum := regexp.MustCompile(`planner_plan_seconds_sum ([0-9.e+-]+)`).FindStringSubmatch(h.metrics())
	if planSum == nil {
		t.Fatal("no planner_plan_seconds_sum in metrics")
	}
	t.Logf("10,000-package job: planned in %s s (planner_plan_seconds), %v from submit to the last request stored", planSum[1], wall)

	// The plan arrives in parts; together they list every package once.
	parts := h.messages(subject.EventsStream, subject.Planned)
	seen := map[string]bool{}
	for i, m := range parts {
		p := dataOf[event.Planned](t, m.Env)
		if m.Env.ID != planner.PlannedID("j-big", i+1) || p.Part != i+1 || p.Parts != len(parts) {
			t.Errorf("part %d: id %s, part %d of %d", i+1, m.Env.ID, p.Part, p.Parts)
		}
		if len(m.Env.Data) > partBytes+4096 {
			t.Errorf("part %d carries %d bytes of data", i+1, len(m.Env.Data))
		}
		for _, pp := range p.Packages {
			if seen[pp.PackageID] || pp.Status != event.StatusScheduled {
				t.Errorf("%s listed twice or not scheduled", pp.PackageID)
			}
			seen[pp.PackageID] = true
		}
	}
	if len(parts) < 2 || len(seen) != n {
		t.Errorf("%d parts listing %d packages, want >1 parts and %d", len(parts), len(seen), n)
	}
	t.Logf("plan split into %d parts", len(parts))

	// Requests all on the high subject, first and last checked in full.
	info, err := reqs.Info(t.Context(), jetstream.WithSubjectFilter(subject.RequestsAll))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects["staging.request.cologne.high"]; got != n || len(info.State.Subjects) != 1 {
		t.Errorf("subjects = %v, want %d on staging.request.cologne.high", info.State.Subjects, n)
	}
	for _, seq := range []uint64{info.State.FirstSeq, info.State.LastSeq} {
		raw, err := reqs.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		env, err := event.Validate(raw.Data)
		if err != nil {
			t.Fatal(err)
		}
		r := dataOf[event.Request](t, env)
		if env.ID != planner.RequestID("j-big", r.PackageID, 1) || raw.Header.Get(jetstream.MsgIDHeader) != env.ID {
			t.Errorf("request %d: id %s", seq, env.ID)
		}
	}
}
