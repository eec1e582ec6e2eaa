package planner_test

import (
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"slices"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// An announcement from an archiver that sends a large list inline (here
// 20,000 files, about 2.6 MB: over the KV value and request limits) used to
// be catalogued whole (the KV write failed) or have its list dropped from
// the request. The planner now stores the list in MANIFESTS and the catalog
// and the request carry the reference, which fetches back to the same list;
// small lists stay inline, and a list announced by reference keeps it.
func TestLargeInlineListTravelsByReference(t *testing.T) {
	h := start(t, testTopology, nil)
	big := make([]event.File, 20_000)
	for i := range big {
		big[i] = event.File{Path: fmt.Sprintf("big/f%06d.fits", i), SizeBytes: int64(i), SHA256: sum[7:]}
	}
	// A server max payload of 1 MiB would refuse the inline announcement
	// itself; the test server allows more, as a deployment may.
	ev, err := event.New("test", "archived:us-lta:big", "big", event.PackageArchived{
		PackageID: "big", Location: "us-lta", Key: "obs/big.tar", SizeBytes: 10240, Checksum: sum, Format: "tar", Files: big})
	if err != nil {
		t.Fatal(err)
	}
	if len(ev.Data) < 1<<20 {
		t.Fatalf("test list only %d bytes", len(ev.Data))
	}
	if h.srv.NC.MaxPayload() < int64(len(ev.Data))+4096 {
		t.Fatalf("test server max payload %d below the inline announcement", h.srv.NC.MaxPayload())
	}
	h.publish(subject.Archived, ev)
	h.archived("small", "us-lta")
	// An announcement already by reference (stagectl's form) is passed on
	// as it is: the planner never fetches it.
	given := &event.ManifestRef{SHA256: sum[7:], SizeBytes: 1234, Files: 7}
	ev, err = event.New("test", "archived:us-lta:byref", "byref", event.PackageArchived{
		PackageID: "byref", Location: "us-lta", Key: "obs/byref.tar", SizeBytes: 10240, Checksum: sum, Format: "tar", Manifest: given})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Archived, ev)
	h.submit("sub-ref", event.Submit{JobID: "job-ref", Packages: []string{"big", "small", "byref"},
		Destination: event.Destination{Site: "us"}, RequestedBy: "test"})
	var reqs []event.Request
	poll.Until(t, 10*time.Second, "the request published", func() error {
		reqs = reqs[:0]
		for _, m := range h.messages(subject.RequestsStream, "staging.request.us.>") {
			if err := event.ValidateData(m.Env.Type, m.Env.Data); err != nil {
				t.Fatalf("request %s: %v", m.Env.ID, err)
			}
			reqs = append(reqs, dataOf[event.Request](t, m.Env))
		}
		if len(reqs) < 3 {
			return fmt.Errorf("%d requests", len(reqs))
		}
		return nil
	})
	i := slices.IndexFunc(reqs, func(r event.Request) bool { return r.PackageID == "big" })
	r := reqs[i]
	if r.Files != nil || r.Manifest == nil || r.Manifest.Files != len(big) || r.FileCount() != len(big) {
		t.Fatalf("big request: %d inline files, manifest %+v", len(r.Files), r.Manifest)
	}
	obs, err := manifest.Open(t.Context(), h.js)
	if err != nil {
		t.Fatal(err)
	}
	got, err := manifest.Fetch(t.Context(), obs, sum, *r.Manifest, t.TempDir())
	if err != nil || !slices.Equal(got, big) {
		t.Fatalf("fetched %d entries (%v), want the announced %d", len(got), err, len(big))
	}
	for _, r := range reqs {
		switch r.PackageID {
		case "small":
			if r.Manifest != nil || len(r.Files) != 1 {
				t.Errorf("small request: %+v", r)
			}
		case "byref":
			if r.Files != nil || r.Manifest == nil || *r.Manifest != *given {
				t.Errorf("byref request: files %d, manifest %+v, want %+v", len(r.Files), r.Manifest, given)
			}
		}
	}
}
