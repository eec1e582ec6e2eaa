package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stagectl/cli"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// A package of 200,000 small files is announced with stagectl (its file list,
// about 24 MB, goes to MANIFESTS by reference: it fits no message), planned,
// staged by the real planner, stager and ledger, and the staged copy is
// verified against the manifest by stagectl verify. Before the reference
// form the announcement failed with "nats: maximum payload exceeded".
func TestManifestByReferenceEndToEnd(t *testing.T) {
	const n = 200_000
	s := startSystemWith(t, fastProcessing(t), nil)
	start := time.Now()
	entries := make([]tarpkg.Entry, n)
	for i := range entries {
		entries[i] = tarpkg.Entry{Path: fmt.Sprintf("d%03d/f%06d.txt", i%200, i), Data: []byte(fmt.Sprint(i))}
	}
	file := filepath.Join(s.base, "cologne", "lta", "raw", "many.tar")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	info, err := tarpkg.Write(file, entries)
	if err != nil {
		t.Fatal(err)
	}
	entries = nil
	t.Logf("tar of %d files, %d bytes, written in %v", n, info.SizeBytes, time.Since(start))

	start = time.Now()
	r := s.stagectl("archive", "announce", "--location", "cologne-lta", "--key", "raw/many.tar", "--file", file, "--json")
	r.must(t, 0)
	var a cli.Announcement
	if err := json.Unmarshal([]byte(r.stdout), &a); err != nil {
		t.Fatal(err)
	}
	if a.Manifest != "reference" || a.Files != n {
		t.Fatalf("announcement %+v, want %d files by reference", a, n)
	}
	t.Logf("announced in %v", time.Since(start))

	start = time.Now()
	s.submit("submit-many", event.Submit{JobID: "job-many", Packages: []string{"many"},
		Destination: event.Destination{Site: "cologne"}, RequestedBy: "e2e"})
	j := s.waitJob("job-many", time.Minute)
	if j.Status != event.StatusCompleted {
		t.Fatalf("job %+v", j)
	}
	t.Logf("staged in %v", time.Since(start))

	// Every event is valid against its schema (s.events checks), the
	// announcement carries the reference and not the list, and the done
	// event counts every file.
	var archived event.PackageArchived
	for _, ev := range s.events(subject.ArchiveStream) {
		if ev.Type == event.TypePackageArchived {
			archived, _ = event.DataAs[event.PackageArchived](ev)
		}
	}
	if archived.Files != nil || archived.Manifest == nil || archived.Manifest.Files != n {
		t.Fatalf("announcement: %d inline files, reference %+v", len(archived.Files), archived.Manifest)
	}
	var done event.Done
	for _, ev := range s.events(subject.EventsStream) {
		if ev.Type == event.TypeDone {
			done, _ = event.DataAs[event.Done](ev)
		}
		if ev.Type == event.TypeFailed {
			t.Errorf("failed: %s", ev.Data)
		}
	}
	if done.Files != n {
		t.Errorf("done event: %+v", done)
	}
	// The stager had the list: it hashes files only against a manifest
	// (STAGER_HASH_FILES is off), and its verification record holds them.
	var record struct {
		Files []event.File `json:"files"`
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(done.Path), ".ccat-staging", "manifests", "many.json"))
	if err == nil {
		err = json.Unmarshal(b, &record)
	}
	if err != nil || !slices.Equal(record.Files, info.Files) {
		t.Fatalf("verification record: %d files, first %+v (%v): the stager did not verify against the manifest",
			len(record.Files), record.Files[:min(1, len(record.Files))], err)
	}
	// The planner's catalog keeps the reference, not the list.
	kv, err := s.bus.JS.KeyValue(t.Context(), subject.CatalogBucket)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(t.Context(), "many")
	if err != nil {
		t.Fatal(err)
	}
	var copies []struct {
		Files    []event.File       `json:"files"`
		Manifest *event.ManifestRef `json:"manifest"`
	}
	if err := json.Unmarshal(entry.Value(), &copies); err != nil || len(copies) != 1 || copies[0].Files != nil ||
		copies[0].Manifest == nil || *copies[0].Manifest != *archived.Manifest {
		t.Fatalf("catalog entry (%d bytes): %v", len(entry.Value()), err)
	}
	// The ledger accepted the reference form and counts its files.
	var pi struct {
		ArchiveCopies []struct {
			Location string `json:"location"`
			Files    int    `json:"files"`
		} `json:"archive_copies"`
	}
	if err := s.api.Get(t.Context(), "/v1/packages/many", &pi); err != nil {
		t.Fatal(err)
	}
	if len(pi.ArchiveCopies) != 1 || pi.ArchiveCopies[0].Files != n {
		t.Errorf("ledger archive copies: %+v", pi.ArchiveCopies)
	}

	// The staged copy matches the manifest file by file: stagectl verify
	// fetches it by reference, checks its digest and hashes every file.
	start = time.Now()
	s.stagectl("verify", "--location", "cologne-processing").must(t, 0, fmt.Sprintf("verified 1 package(s), %d file(s)", n), "no drift")
	t.Logf("verified in %v", time.Since(start))

	// What is stored is what the reference names.
	obs, err := manifest.Open(t.Context(), s.bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := manifest.Fetch(t.Context(), obs, info.Checksum, *archived.Manifest, t.TempDir())
	if err != nil || len(fs) != n || fs[n-1] != info.Files[n-1] {
		t.Fatalf("stored manifest: %d entries, %v", len(fs), err)
	}
}

// fastProcessing is the test topology with cologne's processing location on
// a RAM file system when the machine has one: the stager fsyncs each of the
// 200,000 files it writes, which on a shared disk costs minutes and measures
// the disk, not the manifest's transport this test is about.
func fastProcessing(t *testing.T) string {
	t.Helper()
	const shm = "/dev/shm"
	if st, err := os.Stat(shm); err != nil || !st.IsDir() {
		return testTopology
	}
	dir, err := os.MkdirTemp(shm, "ccat-e2e-")
	if err != nil {
		return testTopology
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return strings.Replace(testTopology, "path: %[1]s/cologne/processing", "path: "+dir+"/processing", 1)
}
