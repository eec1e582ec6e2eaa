package bus_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBacklogReportsWhatWaits(t *testing.T) {
	srv := jstest.New(t)
	ctx := t.Context()
	if err := bus.Provision(ctx, srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cons, err := bus.ProvisionStager(ctx, srv.JS, "cologne", bus.StagerConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b := bus.NewBacklog("stager_consumer_pending", "stager_consumer_ack_pending", "site", "priority")
	for i, p := range subject.Priorities {
		b.Add(cons[i], "cologne", p)
	}
	for i := range 3 {
		ev, _ := event.New("t", "id-"+string(rune('a'+i)), "", event.Cancel{JobID: "j", RequestedBy: "x"})
		if _, err := bus.Publish(ctx, srv.JS, subject.Request("cologne", "normal"), ev); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP stager_consumer_pending Messages waiting in the consumer (JetStream num_pending).
# TYPE stager_consumer_pending gauge
stager_consumer_pending{priority="high",site="cologne"} 0
stager_consumer_pending{priority="low",site="cologne"} 0
stager_consumer_pending{priority="normal",site="cologne"} 3
`
	// The server counts a consumer's pending messages asynchronously after
	// the stream acknowledged them: the gauge gets there, not necessarily
	// at once.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := testutil.CollectAndCompare(b, strings.NewReader(want), "stager_consumer_pending")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
