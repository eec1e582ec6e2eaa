package hostile

import (
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// testRequests publishes work items straight onto a site's work queue, as a
// compromised or buggy planner could: the stager must re-check every one
// against its own topology and refuse, with a permanent bad_request
// staging.failed (id failed:<request id>:1), anything that would make it
// read or write where it must not.
func testRequests(t *testing.T, s *system) {
	good := func(id string) event.Request {
		return event.Request{JobID: "hr-" + id, PackageID: knownPackage, Generation: 1, Priority: event.PriorityNormal,
			Source:      event.Source{Location: "cologne-lta", Site: "cologne", Storage: "disk", Key: "raw/" + knownPackage + ".tar"},
			Destination: event.Target{Site: "cologne", Location: "cologne-processing"},
			SizeBytes:   1, Checksum: "sha256:" + strings.Repeat("0", 64), Format: "tar"}
	}
	cases := []struct {
		name  string
		edit  func(*event.Request)
		raw   string // sent as it is instead of the request
		event bool   // a staging.failed is expected (the ids are readable)
	}{
		{name: "other-site", edit: func(r *event.Request) { r.Destination = event.Target{Site: "us", Location: "us-processing"} }, event: true},
		{name: "destination-is-archive", edit: func(r *event.Request) { r.Destination.Location = "cologne-lta" }, event: true},
		{name: "destination-inactive", edit: func(r *event.Request) { r.Destination.Location = "cologne-closed" }, event: true},
		{name: "destination-unknown", edit: func(r *event.Request) { r.Destination.Location = "atlantis" }, event: true},
		{name: "source-is-processing", edit: func(r *event.Request) { r.Source.Location = "cologne-processing" }, event: true},
		{name: "source-unknown", edit: func(r *event.Request) { r.Source.Location = "atlantis-lta" }, event: true},
		{name: "storage-mismatch", edit: func(r *event.Request) { r.Source.Storage = "s3" }, event: true},
		{name: "key-traversal", edit: func(r *event.Request) { r.Source.Key = "../../../../etc/passwd" }, event: true},
		{name: "key-absolute", edit: func(r *event.Request) { r.Source.Key = "/etc/passwd" }, event: true},
		{name: "package-id-traversal", edit: func(r *event.Request) { r.PackageID = "../../" + escapeMarker }, event: false},
		{name: "not-json", raw: "{\"id\": ", event: false},
	}
	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				id := "request:hr-" + c.name + ":" + knownPackage + ":1"
				subj := subject.Request("cologne", event.PriorityNormal)
				if c.raw != "" {
					if _, err := s.publishRaw(subj, []byte(c.raw), id); err != nil {
						t.Fatal(err)
					}
				} else {
					r := good(c.name)
					c.edit(&r)
					s.publish(subj, id, r)
				}
				if !c.event {
					// Nothing readable to answer with: the message is terminated,
					// which the idle work queue at the end of the group shows.
					return
				}
				e, ok := s.events.wait(t, "failed:"+id+":1", 30*time.Second)
				if !ok {
					t.Fatalf("no staging.failed for %s", id)
				}
				f, err := event.DataAs[event.Failed](e)
				if err != nil {
					t.Fatal(err)
				}
				if f.Reason != event.ReasonBadRequest || !f.Permanent {
					t.Errorf("staging.failed: reason %q permanent %v (%s), want permanent bad_request", f.Reason, f.Permanent, f.Message)
				}
			})
		}
	})
	t.Run("work-queue-drained", func(t *testing.T) {
		// After every case has ended: nothing may be left pending or be
		// redelivered forever.
		for _, p := range subject.Priorities {
			s.waitConsumerIdle(t, subject.RequestsStream, subject.StagerDurable("cologne", p))
		}
	})
}
