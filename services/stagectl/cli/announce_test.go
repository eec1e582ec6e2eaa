package cli

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// announce sends a list too large to travel inline by reference, and
// refuses what fits neither form with a message that says why, publishing
// nothing (before, the publish failed with "nats: maximum payload
// exceeded").
func TestAnnounceChoosesTheForm(t *testing.T) {
	srv := provisioned(t)
	ctx := t.Context()
	const sum = "sha256:5f0c0d5b0e8a46d4c1f0a6d3cbb6f9a7e2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7"
	files := func(n int) []event.File {
		out := make([]event.File, n)
		for i := range out {
			out[i] = event.File{Path: fmt.Sprintf("raw/scan-%07d.fits", i), SizeBytes: 7, SHA256: sum[7:]}
		}
		return out
	}
	pkg := func(fs []event.File) event.PackageArchived {
		return event.PackageArchived{PackageID: "p", Location: "cologne-lta", Key: "raw/p.tar", SizeBytes: 1 << 20,
			Checksum: sum, Format: "tar", Files: fs}
	}
	const maxPayload = 1 << 20 // the server's default, whatever the test server allows

	// 10,000 files (about 1.2 MB) exceed one message: by reference.
	big := files(10_000)
	ev, form, err := announce(ctx, srv.JS, maxPayload, "archived:big", pkg(big))
	if err != nil || form != "reference" {
		t.Fatalf("form %q, err %v", form, err)
	}
	got := lastEvent(t, srv, subject.ArchiveStream, subject.Archived)
	d, err := event.DataAs[event.PackageArchived](got)
	if err != nil || got.ID != ev.ID || d.Files != nil || d.Manifest == nil || d.Manifest.Files != len(big) {
		t.Fatalf("event %s: %+v (%v)", got.ID, d, err)
	}
	obs, err := manifest.Open(ctx, srv.JS)
	if err != nil {
		t.Fatal(err)
	}
	back, err := manifest.Fetch(ctx, obs, sum, *d.Manifest, t.TempDir())
	if err != nil || !reflect.DeepEqual(back, big) {
		t.Fatalf("stored manifest: %d entries, %v", len(back), err)
	}

	// 100 files stay inline.
	if _, form, err := announce(ctx, srv.JS, maxPayload, "archived:small", pkg(files(100))); err != nil || form != "inline" {
		t.Fatalf("small: form %q, err %v", form, err)
	}

	seq := lastEvent(t, srv, subject.ArchiveStream, subject.Archived).ID
	for _, tc := range []struct {
		name       string
		d          event.PackageArchived
		maxPayload int64
		want       []string
	}{
		{"more files than a manifest holds", pkg(make([]event.File, manifest.MaxEntries+1)), maxPayload,
			[]string{"1000001 files", "at most 1000000", "inline or by reference", "cannot be announced"}},
		{"event over max payload even by reference", func() event.PackageArchived {
			d := pkg(files(100))
			d.Key = strings.Repeat("k", 4000)
			return d
		}(), 4096, []string{"over the server's max payload of 4096"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := announce(ctx, srv.JS, tc.maxPayload, "archived:refused", tc.d)
			if err == nil {
				t.Fatal("announced")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "maximum payload exceeded") {
				t.Errorf("raw server error: %v", err)
			}
			if last := lastEvent(t, srv, subject.ArchiveStream, subject.Archived).ID; last != seq {
				t.Errorf("published %s", last)
			}
		})
	}
}
