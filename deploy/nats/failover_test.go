package natscluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// testFailover publishes requests as the planner while a stager of cologne
// consumes them, kills the STAGING_REQUESTS stream leader part-way, and
// checks that every request whose publication was acknowledged is consumed
// and acknowledged exactly once.
func testFailover(t *testing.T, c *cluster) {
	const total = 300
	const killAfter = 100
	const site, prio = "cologne", "low"
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()

	_, pjs := connect(t, c, "planner")
	_, sjs := connect(t, c, "stager-cologne")
	_, ajs := connect(t, c, "admin")

	var (
		mu        sync.Mutex
		published = map[string]bool{} // publication acknowledged
		acked     = map[string]int{}  // DoubleAck acknowledged
		delivered = map[string]int{}
		killed    string
	)

	kill := func() {
		si, err := streamInfoRetry(ctx, ajs, subject.RequestsStream)
		if err != nil {
			t.Errorf("stream info before the kill: %v", err)
			return
		}
		leader := c.byName(si.Cluster.Leader)
		if leader == nil {
			t.Errorf("no node named %q leads %s", si.Cluster.Leader, subject.RequestsStream)
			return
		}
		mu.Lock()
		killed = leader.name
		mu.Unlock()
		t.Logf("killing %s, leader of %s", leader.name, subject.RequestsStream)
		leader.ns.Shutdown()
	}

	pubDone := make(chan struct{})
	var pubStart, pubEnd time.Time
	var firstBatch time.Duration
	go func() {
		defer close(pubDone)
		pubStart = time.Now()
		for i := range total {
			if i == killAfter {
				firstBatch = time.Since(pubStart)
				kill()
			}
			job, pkg := "job-failover", fmt.Sprintf("pkg-%03d", i)
			id := fmt.Sprintf("request:%s:%s:1", job, pkg)
			e, err := event.New("ccat-staging/planner", id, "", request(job, pkg, site, prio))
			if err != nil {
				t.Error(err)
				return
			}
			// The planner's rule: retry with the same id until the stream
			// acknowledges; a retry of a write that did land is a duplicate.
			for ctx.Err() == nil {
				pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := bus.Publish(pctx, pjs, subject.Request(site, prio), e)
				pcancel()
				if err == nil {
					mu.Lock()
					published[id] = true
					mu.Unlock()
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		pubEnd = time.Now()
	}()

	// The stager's rule: count a request as handled only once its DoubleAck
	// is confirmed; an unconfirmed one comes back after AckWait.
	durable := subject.StagerDurable(site, prio)
	consume := func() error {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		cons, err := sjs.Consumer(cctx, subject.RequestsStream, durable)
		if err != nil {
			return err
		}
		batch, err := cons.Fetch(50, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			var e event.Envelope
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				return fmt.Errorf("undecodable request: %w", err)
			}
			mu.Lock()
			delivered[e.ID]++
			mu.Unlock()
			actx, acancel := context.WithTimeout(ctx, 3*time.Second)
			err := m.DoubleAck(actx)
			acancel()
			if err == nil {
				mu.Lock()
				acked[e.ID]++
				mu.Unlock()
			}
		}
		return batch.Error()
	}
	// Done when every acknowledged publication was delivered and the
	// consumer holds nothing: no pending message, no unsettled delivery.
	finished := func() bool {
		select {
		case <-pubDone:
		default:
			return false
		}
		mu.Lock()
		for id := range published {
			if delivered[id] == 0 {
				mu.Unlock()
				return false
			}
		}
		mu.Unlock()
		ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
		defer icancel()
		cons, err := ajs.Consumer(ictx, subject.RequestsStream, durable)
		if err != nil {
			return false
		}
		ci, err := cons.Info(ictx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	}
	var consumeErrs int
	for !finished() && ctx.Err() == nil {
		if err := consume(); err != nil {
			// Expected while the cluster elects new leaders.
			if consumeErrs%20 == 0 {
				t.Logf("consume: %v", err)
			}
			consumeErrs++
			time.Sleep(50 * time.Millisecond)
		}
	}
	<-pubDone

	mu.Lock()
	defer mu.Unlock()
	t.Logf("published %d, delivered %d distinct, acked %d distinct", len(published), len(delivered), len(acked))
	// The checks below get their own time: ctx may be spent when the run failed.
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if killed == "" {
		t.Fatal("no leader was killed")
	}
	si, err := streamInfoRetry(ctx, ajs, subject.RequestsStream)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %s; new leader %s; published %d/%d (first %d in %s: %.0f msg/s R3 sync_interval=always, all in %s); consume errors during failover: %d",
		killed, si.Cluster.Leader, len(published), total, killAfter, firstBatch.Round(time.Millisecond),
		float64(killAfter)/firstBatch.Seconds(), pubEnd.Sub(pubStart).Round(time.Millisecond), consumeErrs)
	if si.Cluster.Leader == killed {
		t.Errorf("leader is still the killed node %s", killed)
	}
	if len(published) != total {
		t.Errorf("%d of %d publications acknowledged", len(published), total)
	}
	// Exactly-once effect: every acknowledged publication reached the
	// stager, no confirmed ack was followed by a redelivery, and nothing
	// unknown was delivered. A DoubleAck that timed out in the failover may
	// still have landed (then no redelivery follows) or not (then the
	// message comes back after AckWait); the stager's idempotent handler
	// absorbs both.
	var redelivered, unconfirmed int
	for id := range published {
		if delivered[id] == 0 {
			t.Errorf("request %s was acknowledged to the planner but never delivered", id)
		}
		if acked[id] > 1 {
			t.Errorf("request %s: %d confirmed acks, want at most 1", id, acked[id])
		}
		if acked[id] == 0 {
			unconfirmed++
		}
		if delivered[id] > 1 {
			redelivered++
		}
	}
	for id := range delivered {
		if !published[id] {
			t.Errorf("delivered %s, which was never acknowledged to the publisher", id)
		}
	}
	t.Logf("%d requests delivered twice, %d whose ack was never confirmed (it landed: nothing is pending)", redelivered, unconfirmed)
	cons, err := ajs.Consumer(ctx, subject.RequestsStream, durable)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumPending != 0 || ci.NumAckPending != 0 {
		t.Errorf("%s: %d pending, %d ack pending after the run, want 0 and 0", durable, ci.NumPending, ci.NumAckPending)
	}
}

func streamInfoRetry(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	for {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := js.Stream(ictx, name)
		if err == nil {
			var si *jetstream.StreamInfo
			si, err = s.Info(ictx)
			if err == nil && si.Cluster != nil && si.Cluster.Leader != "" {
				cancel()
				return si, nil
			}
			if err == nil {
				err = errors.New("no leader yet")
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
