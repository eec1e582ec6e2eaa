package tests

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// releaseTopology is testTopology with retentions: us-processing deletes a
// copy as soon as no job holds it (0s); cologne-processing keeps it for 7
// days after the last release.
const releaseTopology = `sites:
  - name: cologne
    locations:
      - {name: cologne-lta, type: long_term_archive, storage: disk, priority: 1, path: %[1]s/cologne/lta}
      - {name: cologne-processing, type: processing, storage: disk, priority: 1, path: %[1]s/cologne/processing, retention: 168h}
  - name: us
    locations:
      - {name: us-lta, type: long_term_archive, storage: disk, priority: 1, path: %[1]s/us/lta}
      - {name: us-processing, type: processing, storage: disk, priority: 1, path: %[1]s/us/processing, retention: 0s}
`

// startReleaseSystem is startSystem with releaseTopology and a planner that
// sweeps for expired copies every 100 ms.
func startReleaseSystem(t *testing.T) *system {
	t.Helper()
	return startSystemWith(t, releaseTopology, map[string]string{planner.EnvReleaseSweep: "100ms"})
}

func (s *system) copyStatus(pkg, location string) (string, error) {
	var p ledgerapi.PackageInfo
	if err := s.api.Get(s.t.Context(), "/v1/packages/"+pkg, &p); err != nil {
		return "", err
	}
	for _, c := range p.StagedCopies {
		if c.Location == location {
			return c.Status, nil
		}
	}
	return "", fmt.Errorf("no staged copy of %s at %s", pkg, location)
}

// waitCopy polls the ledger until the copy has the status.
func (s *system) waitCopy(pkg, location, status string) {
	s.t.Helper()
	poll.Until(s.t, 30*time.Second, fmt.Sprintf("the copy of %s at %s %s", pkg, location, status), func() error {
		got, err := s.copyStatus(pkg, location)
		if err == nil && got != status {
			err = fmt.Errorf("status %q", got)
		}
		return err
	})
}

// Two jobs share a staged copy at a location with retention 0s: releasing
// the first keeps the files (the second still holds them), releasing the
// second deletes them, the stager reports staging.released with the bytes
// freed and the ledger shows the copy deleted. A copy at a location with a
// long retention stays on disk after its release, deletion_scheduled.
func TestReleaseDeletesOnlyUnreferencedCopies(t *testing.T) {
	s := startReleaseSystem(t)
	info := s.archive("rel-p0", tarpkg.Tree(12, 3, 256<<10), "us-lta")
	kept := s.archive("rel-k0", tarpkg.Tree(8, 2, 128<<10), "cologne-lta")
	for _, j := range []string{"rel-a", "rel-b"} {
		s.submit("submit-"+j, event.Submit{JobID: j, Packages: []string{"rel-p0"},
			Destination: event.Destination{Site: "us"}, RequestedBy: "release-test"})
		if job := s.waitJob(j, 60*time.Second); job.Status != event.StatusCompleted {
			t.Fatalf("job %s = %s: %s", j, job.Status, mustJSON(job))
		}
	}
	s.submit("submit-rel-c", event.Submit{JobID: "rel-c", Packages: []string{"rel-k0"},
		Destination: event.Destination{Site: "cologne"}, RequestedBy: "release-test"})
	if job := s.waitJob("rel-c", 60*time.Second); job.Status != event.StatusCompleted {
		t.Fatalf("job rel-c = %s: %s", job.Status, mustJSON(job))
	}
	dir := filepath.Join(s.base, "us", "processing", "rel-p0")
	keptDir := filepath.Join(s.base, "cologne", "processing", "rel-k0")
	checkStaged(t, dir, info)
	checkStaged(t, keptDir, kept)
	s.waitCopy("rel-p0", "us-processing", "staged")

	release := func(job string) {
		s.publish(subject.Release, "release:"+job, event.Release{JobID: job, RequestedBy: "release-test"})
	}
	release("rel-a")
	release("rel-c")
	// The ledger applies events in stream order, so once it shows rel-c's
	// copy deletion_scheduled it has seen rel-a's release too; the planner
	// drops references before its sweep runs again (every 100 ms).
	s.waitCopy("rel-k0", "cologne-processing", "deletion_scheduled")
	waitReleaseConsumed(t, s)
	time.Sleep(300 * time.Millisecond) // a few sweeps, which must delete nothing
	checkStaged(t, dir, info)
	if got, err := s.copyStatus("rel-p0", "us-processing"); err != nil || got != "staged" {
		t.Errorf("copy of rel-p0 after releasing one of two jobs: %q (%v), want staged", got, err)
	}

	release("rel-b")
	s.waitCopy("rel-p0", "us-processing", "deleted")
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after the last release: %v", dir, err)
	}
	if got := visibleEntries(t, filepath.Join(s.base, "us", "processing")); len(got) != 0 {
		t.Errorf("us-processing still holds %v", got)
	}
	rels := ofType(s.events(subject.EventsStream), event.TypeReleased)
	if len(rels) != 1 {
		t.Fatalf("%d staging.released events, want 1", len(rels))
	}
	r := dataOf[event.Released](t, rels[0])
	if r.PackageID != "rel-p0" || r.Location != "us-processing" || r.Site != "us" || r.Path != dir || r.Reason != "" || r.BytesFreed <= 0 {
		t.Errorf("released = %+v", r)
	}
	if want := stager.ReleasedID("us-processing", "rel-p0", r.RefsRevision, 0); rels[0].ID != want {
		t.Errorf("released id %s, want %s", rels[0].ID, want)
	}

	// The long-retention copy is untouched and waits for its retention.
	checkStaged(t, keptDir, kept)
	if got, err := s.copyStatus("rel-k0", "cologne-processing"); err != nil || got != "deletion_scheduled" {
		t.Errorf("copy of rel-k0: %q (%v), want deletion_scheduled", got, err)
	}

	// A new job for the deleted package stages it again.
	s.submit("submit-rel-d", event.Submit{JobID: "rel-d", Packages: []string{"rel-p0"},
		Destination: event.Destination{Site: "us"}, RequestedBy: "release-test"})
	if job := s.waitJob("rel-d", 60*time.Second); job.Status != event.StatusCompleted || job.Packages[0].AlreadyPresent {
		t.Fatalf("job rel-d = %s: %s", job.Status, mustJSON(job))
	}
	checkStaged(t, dir, info)
	s.waitCopy("rel-p0", "us-processing", "staged")
}

// waitReleaseConsumed waits until the planner has handled every release.
func waitReleaseConsumed(t *testing.T, s *system) {
	t.Helper()
	poll.Until(t, 10*time.Second, "planner-release settled", func() error {
		c, err := s.bus.JS.Consumer(t.Context(), subject.EventsStream, subject.PlannerRelease)
		if err != nil {
			return err
		}
		info, err := c.Info(t.Context())
		if err == nil && (info.NumPending != 0 || info.NumAckPending != 0) {
			err = fmt.Errorf("%d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		return err
	})
}
