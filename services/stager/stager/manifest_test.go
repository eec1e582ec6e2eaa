package stager_test

import (
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/manifest"
)

// A request carrying its manifest by reference is staged against the list
// fetched from MANIFESTS; a reference whose object is missing, replaced or
// tampered with fails on the first delivery, permanently, as bad_manifest,
// before the archive is opened (those requests name an archive key that
// does not exist: reading it first would fail source_missing instead).
func TestManifestByReference(t *testing.T) {
	w := newWorld(t)
	ctx := t.Context()
	if err := bus.Provision(ctx, w.srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	obs, err := manifest.Open(ctx, w.srv.JS)
	if err != nil {
		t.Fatal(err)
	}
	meta := `{"obs":"2026-11-26"}`
	list := []event.File{
		{Path: "meta.json", SizeBytes: int64(len(meta)), SHA256: tartest.SHA256([]byte(meta))},
		{Path: "raw/scan-001.fits", SizeBytes: 100_000, SHA256: tartest.SHA256([]byte(strings.Repeat("A", 100_000)))},
	}
	store := func(checksum string, fs []event.File) *event.ManifestRef {
		ref, err := manifest.Store(ctx, obs, checksum, fs, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return &ref
	}
	byRef := func(job, id string, tb []byte, fs []event.File) event.Request {
		r := request(job, w.put(w.archive, id, tb))
		r.Manifest = store(r.Checksum, fs)
		return r
	}
	// Distinct packages (distinct checksums, so distinct objects): a
	// trailing zero block keeps each tar valid.
	variant := func(n int) []byte { return append(samplePackage(t), make([]byte, 512*n)...) }

	good := byRef("job-good", "good", variant(0), list)

	wrong := append([]event.File(nil), list...)
	wrong[0].SHA256 = strings.Repeat("0", 64) // the list is really used
	lies := byRef("job-lies", "lies", variant(1), wrong)

	tampered := byRef("job-tampered", "tampered", variant(2), list)
	tampered.Source.Key = "packages/not-there.tar"
	other := append(list[:1:1], event.File{Path: "raw/evil.fits", SizeBytes: 1, SHA256: strings.Repeat("1", 64)})
	var enc strings.Builder
	if _, err := manifest.Encode(&enc, other); err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(ctx, tampered.Checksum, []byte(enc.String())); err != nil {
		t.Fatal(err)
	}

	missing := byRef("job-missing", "missing", variant(3), list)
	missing.Source.Key = "packages/not-there.tar"
	if err := obs.Delete(ctx, missing.Checksum); err != nil {
		t.Fatal(err)
	}

	ids := map[string]string{}
	for name, r := range map[string]event.Request{"good": good, "lies": lies, "tampered": tampered, "missing": missing} {
		ids[name] = w.submit(r)
	}
	w.start(w.config())

	done := waitID[event.Done](t, w.rec, "done:"+ids["good"])
	if done.Files != 3 || done.AlreadyPresent {
		t.Errorf("done = %+v", done)
	}
	f := waitID[event.Failed](t, w.rec, "failed:"+ids["lies"]+":1")
	if !f.Permanent || f.Reason == event.ReasonBadManifest {
		t.Errorf("a valid manifest that disagrees with the archive: %+v", f)
	}
	for name, want := range map[string]string{"tampered": "sha256", "missing": "not found"} {
		f := waitID[event.Failed](t, w.rec, "failed:"+ids[name]+":1")
		if !f.Permanent || f.Reason != event.ReasonBadManifest || !strings.Contains(f.Message, want) {
			t.Errorf("%s: failed = %+v, want permanent %s mentioning %q", name, f, event.ReasonBadManifest, want)
		}
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
	for _, name := range []string{"tampered", "missing"} {
		if _, ok := w.rec.byID("failed:" + ids[name] + ":2"); ok {
			t.Errorf("%s was retried", name)
		}
	}
}
