package planner

import (
	"fmt"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The batched walk of the work queue sees every message of its subject
// once, in order, across batches, skips other sites' messages, and stops
// when told to (draining the batch it is in).
func TestWalkQueueInBatches(t *testing.T) {
	srv := bustest.New(t)
	ctx := t.Context()
	if err := bus.Provision(ctx, srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	const n = 2*queueBatch + 500
	for i := range n {
		site := "us"
		if i%3 == 0 {
			site = "cologne"
		}
		m := nats.NewMsg(subject.Request(site, "normal"))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("request:j:p%05d:1", i))
		if _, err := srv.JS.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
	}
	<-srv.JS.PublishAsyncComplete()
	nc := srv.JS.Conn()
	var seen []string
	var last uint64
	err := walkQueue(ctx, nc, subject.RequestsStream, subject.SiteRequests("us"), 1, func(seq uint64, id string) bool {
		if seq <= last {
			t.Fatalf("sequence %d after %d", seq, last)
		}
		last = seq
		seen = append(seen, id)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := n - (n+2)/3; len(seen) != want || seen[0] != "request:j:p00001:1" {
		t.Fatalf("walked %d messages (first %v), want %d us requests", len(seen), seen[:1], want)
	}
	calls := 0
	err = walkQueue(ctx, nc, subject.RequestsStream, subject.SiteRequests("us"), 1, func(uint64, string) bool {
		calls++
		return calls < 10
	})
	if err != nil || calls != 10 {
		t.Errorf("stopped walk: %d calls, %v", calls, err)
	}
}
