package planner_test

import (
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// Durables deleted while the planner runs are provisioned again and their
// messages handled: the planner's loops used to exit for good on
// ErrConsumerDeleted. /readyz names the consumers check.
func TestPlannerHealsDeletedDurables(t *testing.T) {
	h := start(t, testTopology, func(c *planner.Config) { c.Consumers.PollInterval = 100 * time.Millisecond })
	h.archived("p1", "us-lta")
	h.submit("s1", event.Submit{JobID: "j1", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:j1")

	for _, d := range []struct{ stream, name string }{
		{subject.EventsStream, subject.PlannerSubmit}, {subject.ArchiveStream, subject.PlannerCatalog},
	} {
		if err := h.js.DeleteConsumer(t.Context(), d.stream, d.name); err != nil {
			t.Fatal(err)
		}
	}
	h.archived("p2", "us-lta")
	h.submit("s2", event.Submit{JobID: "j2", Packages: []string{"p2"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:j2")
	poll.Until(t, 10*time.Second, "the planner ready again", func() error {
		resp, err := http.Get("http://" + h.httpAddr + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"consumers":"ok"`) {
			return fmt.Errorf("readyz %d %s", resp.StatusCode, b)
		}
		return nil
	})
	if m := h.metrics(); !strings.Contains(m, `ccat_consumer_reprovisioned_total{durable="planner-submit"}`) {
		t.Errorf("metrics do not count the re-provisioning of planner-submit")
	}
}
