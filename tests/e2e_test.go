// Package tests runs ccat-staging end to end on real parts: an embedded
// JetStream server, a fresh PostgreSQL database, real tar packages on disk,
// and the real planner, stagers and ledger in this process.
package tests

import (
	"archive/tar"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/nats-io/nats.go/jetstream"
)

func TestPipelineEndToEnd(t *testing.T) {
	s := startSystem(t)
	// p0 lives only in Cologne, p1 only in the US, p2 at both sites: a job to
	// Cologne must read p2 from Cologne (same-site preference) and p1 from
	// across the ocean.
	want := map[string]tarpkg.Info{
		"e2e-p0": s.archive("e2e-p0", tarpkg.Tree(10, 8, 256<<10), "cologne-lta"),
		"e2e-p1": s.archive("e2e-p1", tarpkg.Tree(11, 5, 128<<10), "us-lta"),
		"e2e-p2": s.archive("e2e-p2", tarpkg.Tree(12, 3, 64<<10), "us-lta", "cologne-lta"),
	}
	wantSource := map[string]string{"e2e-p0": "cologne-lta", "e2e-p1": "us-lta", "e2e-p2": "cologne-lta"}
	req := event.Submit{JobID: "e2e-job-1", Packages: []string{"e2e-p0", "e2e-p1", "e2e-p2"},
		Destination: event.Destination{Site: "cologne"}, RequestedBy: "e2e", Note: "end to end"}
	s.submit("submit-1", req)

	job := s.waitJob("e2e-job-1", 60*time.Second)
	if job.Status != "completed" {
		t.Fatalf("job status %q (%s), want completed: %s", job.Status, job.Message, mustJSON(job))
	}
	if job.Counts.Total != 3 || job.Counts.Completed != 3 || job.Counts.Failed != 0 {
		t.Errorf("counts = %+v", job.Counts)
	}
	if job.Destination.Location != "cologne-processing" {
		t.Errorf("destination = %+v, want cologne-processing (priority 1 beats cologne-old)", job.Destination)
	}
	if job.RequestedBy != "e2e" || job.Priority != "normal" {
		t.Errorf("requested_by/priority = %q/%q", job.RequestedBy, job.Priority)
	}
	root := filepath.Join(s.base, "cologne", "processing")
	for _, p := range job.Packages {
		info := want[p.PackageID]
		if p.Status != "completed" || p.Attempts < 1 || p.CompletedAt == nil || p.StartedAt == nil || p.PlannedAt == nil {
			t.Errorf("%s: %+v", p.PackageID, p)
		}
		if p.Source.Location != wantSource[p.PackageID] {
			t.Errorf("%s: source %+v, want %s", p.PackageID, p.Source, wantSource[p.PackageID])
		}
		if p.Path != filepath.Join(root, p.PackageID) {
			t.Errorf("%s: path %q, want under %s", p.PackageID, p.Path, root)
		}
		if p.SizeBytes != info.SizeBytes || p.Files != len(info.Files) {
			t.Errorf("%s: size/files %d/%d, want %d/%d", p.PackageID, p.SizeBytes, p.Files, info.SizeBytes, len(info.Files))
		}
		checkStaged(t, p.Path, info)
	}
	if got := visibleEntries(t, root); !slices.Equal(got, []string{"e2e-p0", "e2e-p1", "e2e-p2"}) {
		t.Errorf("processing root holds %v", got)
	}
	if td := tempDirs(t, s.base); len(td) > 0 {
		t.Errorf("temp dirs left behind: %v", td)
	}
	for _, other := range []string{"cologne/old", "us/processing"} {
		if got := visibleEntries(t, filepath.Join(s.base, other)); len(got) > 0 {
			t.Errorf("%s should be empty, holds %v", other, got)
		}
	}

	// The list endpoint finds it by status and site.
	list, err := s.api.Jobs(t.Context(), map[string][]string{"status": {"completed"}, "site": {"cologne"}})
	if err != nil || len(list.Jobs) != 1 || list.Jobs[0].JobID != "e2e-job-1" {
		t.Errorf("GET /v1/jobs?status=completed&site=cologne = %+v, %v", list, err)
	}

	// Everything emitted validates against the schemas, and carries its id as
	// Nats-Msg-Id (checked inside events).
	evs := s.events(subject.EventsStream)
	if n := len(ofType(evs, event.TypePlanned)); n != 1 {
		t.Errorf("%d planned events, want 1", n)
	}
	if n := len(ofType(evs, event.TypeDone)); n != 3 {
		t.Errorf("%d done events, want 3", n)
	}
	if n := len(ofType(evs, event.TypeStarted)); n < 3 {
		t.Errorf("%d started events, want >= 3", n)
	}
	s.events(subject.ArchiveStream)

	// A duplicate submit (same job, same content, a new CloudEvent id) is a
	// no-op: no new plan, no new work.
	before := len(evs)
	reqInfo := streamInfo(t, s.bus.JS, subject.RequestsStream)
	s.submit("submit-1-again", req)
	waitQuiet(t, s, subject.EventsStream)
	evs = s.events(subject.EventsStream)
	if got := len(evs) - before; got != 1 { // the submit itself
		t.Errorf("duplicate submit produced %d new events (%v), want only the submit", got, types(evs[before:]))
	}
	if after := streamInfo(t, s.bus.JS, subject.RequestsStream); after.State.LastSeq != reqInfo.State.LastSeq {
		t.Errorf("duplicate submit published %d new requests", after.State.LastSeq-reqInfo.State.LastSeq)
	}

	// A redelivered event (the same done event stored again, as after a
	// lost ack beyond the duplicate window) changes nothing.
	done := ofType(evs, event.TypeDone)[0]
	m, err := bus.Msg(subject.Done, done)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set(jetstream.MsgIDHeader, done.ID+"-redelivered") // get past JetStream's dedup on purpose
	if _, err := s.bus.JS.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	// And the stager, handed the same request again, does not stage twice.
	pl := dataOf[event.Planned](t, ofType(evs, event.TypePlanned)[0])
	var again event.Request
	for _, r := range s.requestsOf(evs, pl) {
		again = r
	}
	again2, _ := event.New("ccat-staging/tests", "request-again", "", again)
	again2.ID = pl.Packages[0].RequestID // the very same event id
	rm, _ := bus.Msg(subject.Request("cologne", "normal"), again2)
	rm.Header.Set(jetstream.MsgIDHeader, again2.ID+"-redelivered")
	if _, err := s.bus.JS.PublishMsg(t.Context(), rm); err != nil {
		t.Fatal(err)
	}
	waitQuiet(t, s, subject.EventsStream)
	waitDrained(t, s, subject.RequestsStream)
	job2, err := s.api.Job(t.Context(), "e2e-job-1")
	if err != nil {
		t.Fatal(err)
	}
	if job2.Status != "completed" || job2.Counts != job.Counts || job2.BytesDone != job.BytesDone {
		t.Errorf("after redelivery: %s %+v bytes %d; before: %+v bytes %d", job2.Status, job2.Counts, job2.BytesDone, job.Counts, job.BytesDone)
	}
	for i, p := range job2.Packages {
		if p.Status != "completed" || p.Path != job.Packages[i].Path {
			t.Errorf("after redelivery %s: %+v", p.PackageID, p)
		}
	}
	if got := visibleEntries(t, root); !slices.Equal(got, []string{"e2e-p0", "e2e-p1", "e2e-p2"}) {
		t.Errorf("processing root holds %v after redelivery", got)
	}
}

// requestsOf rebuilds the request events of a plan from the planned event.
func (s *system) requestsOf(_ []event.Envelope, pl event.Planned) []event.Request {
	var out []event.Request
	for _, p := range pl.Packages {
		if p.Source == nil {
			continue
		}
		out = append(out, event.Request{JobID: pl.JobID, PackageID: p.PackageID, Generation: 1, Priority: pl.Priority,
			Source: *p.Source, Destination: pl.Destination, SizeBytes: p.SizeBytes, Checksum: p.Checksum, Format: "tar"})
	}
	return out
}

func TestCorruptedPackageFailsAndLeavesNothing(t *testing.T) {
	s := startSystem(t)
	info := s.archive("bad-p0", tarpkg.Tree(20, 4, 64<<10), "cologne-lta")
	// Flip bytes of the archived tar after its checksum was announced.
	path := filepath.Join(s.base, "cologne", "lta", "raw", "bad-p0.tar")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s.submit("submit-bad", event.Submit{JobID: "bad-job", Packages: []string{"bad-p0"}, Destination: event.Destination{Location: "cologne-processing"}, RequestedBy: "e2e"})
	job := s.waitJob("bad-job", 90*time.Second)
	if job.Status != "failed" || len(job.Packages) != 1 || job.Packages[0].Reason != event.ReasonChecksumMismatch {
		t.Fatalf("job = %s", mustJSON(job))
	}
	root := filepath.Join(s.base, "cologne", "processing")
	if got := visibleEntries(t, root); len(got) > 0 {
		t.Errorf("processing root holds %v after a checksum mismatch", got)
	}
	if td := tempDirs(t, s.base); len(td) > 0 {
		t.Errorf("temp dirs left behind: %v", td)
	}
	failed := ofType(s.events(subject.EventsStream), event.TypeFailed)
	last := dataOf[event.Failed](t, failed[len(failed)-1])
	if !last.Permanent || last.Reason != event.ReasonChecksumMismatch {
		t.Errorf("last failed event = %+v", last)
	}
	_ = info
}

func TestUnsafeArchiveWritesNothingOutsideTheRoot(t *testing.T) {
	s := startSystem(t)
	before := allFiles(t, s.base)
	dst := filepath.Join(s.base, "cologne", "lta", "raw", "slip.tar")
	info := writeRawTar(t, dst, []rawEntry{
		{tar.Header{Typeflag: tar.TypeReg, Name: "ok.txt"}, []byte("fine\n")},
		{tar.Header{Typeflag: tar.TypeReg, Name: "../../../../escaped.txt"}, []byte("gotcha\n")},
		{tar.Header{Typeflag: tar.TypeReg, Name: "d/../../escaped2.txt"}, []byte("gotcha\n")},
	})
	s.announce(event.PackageArchived{PackageID: "slip", Location: "cologne-lta", Key: "raw/slip.tar", SizeBytes: info.SizeBytes, Checksum: info.Checksum, Format: "tar"})
	s.submit("submit-slip", event.Submit{JobID: "slip-job", Packages: []string{"slip"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "e2e"})
	job := s.waitJob("slip-job", 60*time.Second)
	if job.Status != "failed" || job.Packages[0].Reason != event.ReasonUnsafeArchive {
		t.Fatalf("job = %s", mustJSON(job))
	}
	// Nothing new anywhere except the tar itself and the stager's hidden
	// bookkeeping under the processing root.
	for p := range allFiles(t, s.base) {
		if before[p] || strings.HasPrefix(p, filepath.Join("cologne", "lta", "raw")) ||
			strings.HasPrefix(p, filepath.Join("cologne", "processing", ".")) {
			continue
		}
		t.Errorf("unexpected path after an unsafe archive: %s", p)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(s.base), "escaped.txt")); err == nil {
		t.Error("escaped.txt written outside the test's directory")
	}
}

func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	st, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// waitQuiet waits until a stream has not grown for a while and every
// consumer on it has caught up: the system has finished reacting.
func waitQuiet(t *testing.T, s *system, stream string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last uint64
	stable := 0
	for time.Now().Before(deadline) {
		info := streamInfo(t, s.bus.JS, stream)
		busy := false
		st, _ := s.bus.JS.Stream(t.Context(), stream)
		for name := range st.ConsumerNames(t.Context()).Name() {
			c, err := st.Consumer(t.Context(), name)
			if err != nil {
				continue
			}
			ci, err := c.Info(t.Context())
			if err == nil && (ci.NumPending > 0 || ci.NumAckPending > 0) {
				busy = true
			}
		}
		if info.State.LastSeq == last && !busy {
			stable++
			if stable >= 5 {
				return
			}
		} else {
			stable = 0
		}
		last = info.State.LastSeq
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("stream %s did not settle", stream)
}

// waitDrained waits until a work-queue stream is empty.
func waitDrained(t *testing.T, s *system, stream string) {
	t.Helper()
	poll.Until(t, 30*time.Second, "stream "+stream+" drained", func() error {
		if n := streamInfo(t, s.bus.JS, stream).State.Msgs; n != 0 {
			return fmt.Errorf("%d messages", n)
		}
		return nil
	})
}

func types(evs []event.Envelope) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}
