package manifest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/nats-io/nats.go/jetstream"
)

const sum = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func files(n int) []event.File {
	out := make([]event.File, n)
	for i := range out {
		out[i] = event.File{Path: fmt.Sprintf("d%03d/f%07d.dat", i%100, i), SizeBytes: int64(i % 7), SHA256: strings.Repeat("ab", 32)}
	}
	return out
}

// The hand-rolled encoding is byte for byte what encoding/json produces for
// an inline list, escapes included, so both forms describe the same bytes.
func TestEncodeMatchesEncodingJSON(t *testing.T) {
	fs := append(files(3), event.File{Path: "odd \"name\"\\ é\t<&>.fits", SizeBytes: 1 << 40, SHA256: strings.Repeat("0f", 32)})
	var buf bytes.Buffer
	ref, err := manifest.Encode(&buf, fs)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(fs)
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("encoded\n%s\nwant\n%s", buf.Bytes(), want)
	}
	if ref.SizeBytes != int64(len(want)) || ref.Files != len(fs) || manifest.EncodedSize(fs) != int64(len(want)) {
		t.Fatalf("ref %+v, EncodedSize %d, want %d bytes", ref, manifest.EncodedSize(fs), len(want))
	}
	got, err := manifest.Decode(&buf, len(fs))
	if err != nil || !equal(got, fs) {
		t.Fatalf("decode: %v %v", err, got)
	}
}

func equal(a, b []event.File) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStoreFetchRoundTripAndTamper(t *testing.T) {
	srv := jstest.New(t)
	ctx := t.Context()
	if err := bus.Provision(ctx, srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(ctx, srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatalf("provisioning twice: %v", err)
	}
	obs, err := manifest.Open(ctx, srv.JS)
	if err != nil {
		t.Fatal(err)
	}
	fs := files(20_000)
	ref, err := manifest.Store(ctx, obs, sum, fs, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Storing the same list again sends nothing: the object keeps its nuid.
	before, _ := obs.GetInfo(ctx, sum)
	if ref2, err := manifest.Store(ctx, obs, sum, fs, t.TempDir()); err != nil || ref2 != ref {
		t.Fatalf("second store: %v %+v", err, ref2)
	}
	if after, _ := obs.GetInfo(ctx, sum); after.NUID != before.NUID {
		t.Fatalf("an identical manifest was uploaded again")
	}
	got, err := manifest.Fetch(ctx, obs, sum, ref, t.TempDir())
	if err != nil || !equal(got, fs) {
		t.Fatalf("fetch: %v (%d entries)", err, len(got))
	}

	// Every way the object can differ from the reference is permanent,
	// bad_manifest, and says what differs.
	tampered := append([]byte(nil), mustEncode(t, fs)...)
	tampered[100] ^= 1 // same size, other bytes
	cases := []struct {
		name, want string
		prepare    func()
		ref        event.ManifestRef
	}{
		{"digest", "sha256", func() { putBytes(t, obs, sum, tampered) }, ref},
		{"size", "bytes", func() { putBytes(t, obs, sum, append(mustEncode(t, fs), ' ')) }, ref},
		{"count", "entries", func() { putBytes(t, obs, sum, mustEncode(t, fs)) }, event.ManifestRef{SHA256: ref.SHA256, SizeBytes: ref.SizeBytes, Files: ref.Files + 1}},
		{"missing", "not found", func() { _ = obs.Delete(ctx, sum) }, ref},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.prepare()
			_, err := manifest.Fetch(ctx, obs, sum, c.ref, t.TempDir())
			if !fault.IsPermanent(err) || fault.Reason(err, "") != event.ReasonBadManifest || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v (permanent %v, reason %q), want permanent bad_manifest mentioning %q",
					err, fault.IsPermanent(err), fault.Reason(err, ""), c.want)
			}
		})
	}
}

func mustEncode(t *testing.T, fs []event.File) []byte {
	var buf bytes.Buffer
	if _, err := manifest.Encode(&buf, fs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// putBytes replaces the object as someone with write access to the bucket
// could: the object store's own digest is then consistent, only the
// reference's differs.
func putBytes(t *testing.T, obs jetstream.ObjectStore, name string, b []byte) {
	t.Helper()
	if _, err := obs.PutBytes(t.Context(), name, b); err != nil {
		t.Fatal(err)
	}
}

func TestTooManyFilesFitNeitherForm(t *testing.T) {
	srv := jstest.New(t)
	if err := bus.Provision(t.Context(), srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	obs, err := manifest.Open(t.Context(), srv.JS)
	if err != nil {
		t.Fatal(err)
	}
	_, err = manifest.Store(t.Context(), obs, sum, make([]event.File, manifest.MaxEntries+1), t.TempDir())
	if !errors.Is(err, manifest.ErrTooLarge) || !strings.Contains(err.Error(), "1000001 files") {
		t.Fatalf("got %v", err)
	}
	if _, err := obs.GetInfo(t.Context(), sum); err == nil {
		t.Fatal("a refused manifest was stored")
	}
}

// The schemas take either form and refuse both at once.
func TestSchemasTakeEitherForm(t *testing.T) {
	ref := &event.ManifestRef{SHA256: strings.Repeat("a", 64), SizeBytes: 100, Files: 2}
	base := event.PackageArchived{PackageID: "p", Location: "lta", Key: "p.tar", SizeBytes: 10, Checksum: sum, Format: "tar"}
	req := event.Request{JobID: "j", PackageID: "p", Generation: 1, Priority: "normal",
		Source: event.Source{Location: "lta", Site: "s", Storage: "disk", Key: "p.tar"}, Destination: event.Target{Site: "s", Location: "proc"},
		SizeBytes: 10, Checksum: sum, Format: "tar"}
	inline := files(2)
	for _, c := range []struct {
		name string
		data event.Data
		ok   bool
	}{
		{"archived inline", with(base, inline, nil), true},
		{"archived by reference", with(base, nil, ref), true},
		{"archived both", with(base, inline, ref), false},
		{"archived neither", base, true},
		{"archived bad digest", with(base, nil, &event.ManifestRef{SHA256: "x", SizeBytes: 100, Files: 2}), false},
		{"archived too many", with(base, nil, &event.ManifestRef{SHA256: ref.SHA256, SizeBytes: 100, Files: manifest.MaxEntries + 1}), false},
		{"request by reference", withReq(req, nil, ref), true},
		{"request both", withReq(req, inline, ref), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ev, err := event.New("test", "id", "", c.data)
			if err != nil {
				t.Fatal(err)
			}
			err = event.ValidateData(ev.Type, ev.Data)
			if (err == nil) != c.ok {
				t.Fatalf("valid %v, want %v: %v", err == nil, c.ok, err)
			}
		})
	}
}

func with(a event.PackageArchived, fs []event.File, ref *event.ManifestRef) event.PackageArchived {
	a.Files, a.Manifest = fs, ref
	return a
}

func withReq(r event.Request, fs []event.File, ref *event.ManifestRef) event.Request {
	r.Files, r.Manifest = fs, ref
	return r
}

func manifestSum(i int) string { return fmt.Sprintf("sha256:%064x", i+1) }
