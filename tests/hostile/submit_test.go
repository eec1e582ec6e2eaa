package hostile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
)

// knownPackage is archived before the submit corpus runs, so that a case
// that is otherwise valid fails only for the reason it is about.
const knownPackage = "corpus-known"

// submitCase is one row of testdata/submits.json: exactly one of Raw (the
// bytes as they are), Envelope (a JSON object sent as it is) or Data
// (wrapped in a valid envelope of Type, default the submit type, with id
// ev-<name>). Every message carries Nats-Msg-Id msg-<name>.
type submitCase struct {
	Name     string          `json:"name"`
	Raw      *string         `json:"raw"`
	Envelope json.RawMessage `json:"envelope"`
	Data     json.RawMessage `json:"data"`
	Type     string          `json:"type"`
	Why      string          `json:"why"`
	Expect   struct {
		SubmitID string `json:"submit_id"`
		JobID    string `json:"job_id"`
		Reason   string `json:"reason"`
	} `json:"expect"`
}

func loadSubmitCases(t *testing.T) []submitCase {
	t.Helper()
	b, err := os.ReadFile("testdata/submits.json")
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.ReplaceAll(string(b), "@known@", knownPackage))
	var cases []submitCase
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	return cases
}

func (c submitCase) payload(t *testing.T) []byte {
	t.Helper()
	switch {
	case c.Raw != nil:
		return []byte(*c.Raw)
	case c.Envelope != nil:
		return c.Envelope
	}
	typ := c.Type
	if typ == "" {
		typ = event.TypeSubmit
	}
	env := event.Envelope{ID: "ev-" + c.Name, Source: "ccat-staging/tests/hostile", Type: typ,
		Time: time.Now().UTC(), DataContentType: "application/json", Data: c.Data}
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectRejected waits for the rejection of a submit and checks its reason
// and job id, and that the ledger shows the job rejected when it has one.
func (s *system) expectRejected(t *testing.T, submitID, jobID, reason string) {
	t.Helper()
	e, ok := s.events.wait(t, "rejected:"+submitID, 30*time.Second)
	if !ok {
		t.Fatalf("no staging.rejected with id rejected:%s within 30s", submitID)
	}
	r, err := event.DataAs[event.Rejected](e)
	if err != nil {
		t.Fatal(err)
	}
	if r.Reason != reason || r.JobID != jobID || r.SubmitID != submitID {
		t.Errorf("rejected = {reason %q, job_id %q, submit_id %q}, want {%q, %q, %q} (message: %s)",
			r.Reason, r.JobID, r.SubmitID, reason, jobID, submitID, r.Message)
	}
	if jobID == "" || reason == event.ReasonJobIDConflict {
		return
	}
	j := s.waitJob(t, jobID, 30*time.Second)
	if j.Status != "rejected" || j.Reason != reason {
		t.Errorf("ledger job %s: status %q reason %q, want rejected %q", jobID, j.Status, j.Reason, reason)
	}
}

// testSubmits drives the corpus of hostile staging.submit messages.
func testSubmits(t *testing.T, s *system) {
	cases := loadSubmitCases(t)
	if len(cases) < 40 {
		t.Fatalf("corpus has %d submit cases", len(cases))
	}
	names := map[string]bool{}
	for _, c := range cases {
		if names[c.Name] {
			t.Fatalf("case %q twice in the corpus", c.Name)
		}
		names[c.Name] = true
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			if _, err := s.publishRaw(subject.Submit, c.payload(t), "msg-"+c.Name); err != nil {
				t.Fatal(err)
			}
			s.expectRejected(t, c.Expect.SubmitID, c.Expect.JobID, c.Expect.Reason)
		})
	}
}

// testSubmitSpecials holds the submit cases that are generated rather than
// stored: sizes, missing headers and sequences of submits.
func testSubmitSpecials(t *testing.T, s *system) {
	valid := func(jobID string, packages []string) event.Submit {
		return event.Submit{JobID: jobID, Packages: packages, Destination: event.Destination{Site: "cologne"}, RequestedBy: "hostile"}
	}
	envelope := func(t *testing.T, id string, d any) []byte {
		t.Helper()
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(event.Envelope{ID: id, Source: "ccat-staging/tests/hostile", Type: event.TypeSubmit, Data: raw})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ids := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s-%06d", prefix, i)
		}
		return out
	}
	t.Run("no-nats-msg-id", func(t *testing.T) {
		t.Parallel()
		// Neither a readable CloudEvent id nor a Nats-Msg-Id: the planner
		// names the submit by its stream sequence.
		ack, err := s.publishRaw(subject.Submit, []byte("{not json"), "")
		if err != nil {
			t.Fatal(err)
		}
		s.expectRejected(t, fmt.Sprintf("seq-%d", ack.Sequence), "", event.ReasonInvalidRequest)
	})
	t.Run("over-event-max-size", func(t *testing.T) {
		t.Parallel()
		d := valid("h-over-max-size", []string{knownPackage})
		d.Note = strings.Repeat("n", event.MaxSize) // refused on size before parsing
		if _, err := s.publishRaw(subject.Submit, envelope(t, "ev-over-max-size", d), "msg-over-max-size"); err != nil {
			t.Fatal(err)
		}
		s.expectRejected(t, "msg-over-max-size", "", event.ReasonInvalidRequest)
	})
	t.Run("over-nats-max-payload", func(t *testing.T) {
		t.Parallel()
		_, err := s.publishRaw(subject.Submit, make([]byte, maxPayload+1), "msg-over-max-payload")
		if !errors.Is(err, nats.ErrMaxPayload) {
			t.Fatalf("publish of %d bytes: %v, want nats.ErrMaxPayload", maxPayload+1, err)
		}
	})
	t.Run("too-many-packages", func(t *testing.T) {
		t.Parallel()
		d := valid("h-too-many", ids("tm", maxPackages+1))
		if _, err := s.publishRaw(subject.Submit, envelope(t, "ev-too-many", d), "msg-too-many"); err != nil {
			t.Fatal(err)
		}
		s.expectRejected(t, "ev-too-many", "h-too-many", event.ReasonTooManyPackages)
	})
	t.Run("over-schema-max-items", func(t *testing.T) {
		t.Parallel()
		d := valid("h-over-max-items", ids("mi", 100_001))
		if _, err := s.publishRaw(subject.Submit, envelope(t, "ev-over-max-items", d), "msg-over-max-items"); err != nil {
			t.Fatal(err)
		}
		s.expectRejected(t, "ev-over-max-items", "h-over-max-items", event.ReasonInvalidRequest)
	})
	t.Run("job-id-conflict", func(t *testing.T) {
		t.Parallel()
		s.publish(subject.Submit, "ev-conflict-1", valid("h-conflict", []string{knownPackage}))
		first := s.waitJob(t, "h-conflict", 60*time.Second)
		if first.Status != event.StatusCompleted {
			t.Fatalf("first submit of h-conflict: %s %s", first.Status, first.Message)
		}
		other := valid("h-conflict", []string{knownPackage})
		other.Priority = event.PriorityHigh
		s.publish(subject.Submit, "ev-conflict-2", other)
		s.expectRejected(t, "ev-conflict-2", "h-conflict", event.ReasonJobIDConflict)
		// The conflicting submit must not touch the job the id belongs to.
		j := s.waitJob(t, "h-conflict", 10*time.Second)
		if j.Status != event.StatusCompleted || j.Priority != event.PriorityNormal {
			t.Errorf("h-conflict after the conflicting submit: %s priority %s", j.Status, j.Priority)
		}
	})
	t.Run("extensions-and-minimal-attributes-accepted", func(t *testing.T) {
		t.Parallel()
		// Any valid CloudEvent is accepted: unknown extensions present,
		// optional attributes (time, datacontenttype, dataschema) absent.
		raw, _ := json.Marshal(valid("h-extensions", []string{knownPackage}))
		b, _ := json.Marshal(map[string]any{"specversion": "1.0", "id": "ev-extensions", "source": "urn:other-sdk",
			"type": event.TypeSubmit, "data": json.RawMessage(raw), "traceparent": "00-abc-def-01", "partitionkey": 7})
		if _, err := s.publishRaw(subject.Submit, b, "msg-extensions"); err != nil {
			t.Fatal(err)
		}
		if j := s.waitJob(t, "h-extensions", 60*time.Second); j.Status != event.StatusCompleted {
			t.Errorf("submit with extensions: %s %s", j.Status, j.Message)
		}
	})
}
