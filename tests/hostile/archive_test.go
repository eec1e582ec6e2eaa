package hostile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// Outcomes of an archive case besides a package failure reason.
const (
	wantCompleted = "completed"
	// A package whose only announcement the catalog refused stays unknown,
	// so a job asking for it is rejected as a whole.
	wantUnknown = event.ReasonUnknownPackage
)

// archiveCase is one hostile package: its bytes, how it is placed and
// announced, and the exact outcome of a job asking for it at site cologne.
type archiveCase struct {
	name string
	tar  func(t *testing.T) []byte
	// announce, when set, edits the truthful announcement (or replaces its
	// data with raw JSON fields, see raw).
	announce func(a *event.PackageArchived)
	// raw, when set, overrides fields of the announcement's JSON data as
	// they are, for values the Go type cannot hold.
	raw map[string]any
	// place, when set, puts the bytes somewhere other than raw/<id>.tar
	// and returns the key to announce.
	place func(t *testing.T, s *system, id string, b []byte) string
	want  string
	// check runs on a completed package's staged directory.
	check func(t *testing.T, dir string)
}

func okTar(t *testing.T) []byte {
	return tarOf(t, reg("data/a.fits", "alpha\n"), reg("data/b.fits", "beta\n"))
}

func archiveCases() []archiveCase {
	up := strings.Repeat("../", 12)
	return []archiveCase{
		// Path escapes in the tar.
		{name: "tar-slip", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, reg("ok.txt", "fine"), reg(up+escapeMarker, "gotcha"))
		}},
		{name: "tar-slip-inside-dir", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, reg("d/../../"+escapeMarker, "gotcha"))
		}},
		{name: "absolute-entry", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, reg("/tmp/"+escapeMarker, "gotcha"))
		}},
		{name: "pax-path-override", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			// An innocent ustar name, overridden by a hand-made PAX record.
			b := append(paxHeader(t, "path", up+escapeMarker), tarOf(t, reg("innocent.txt", "gotcha"))...)
			if h, err := tar.NewReader(bytes.NewReader(b)).Next(); err != nil || h.Name != up+escapeMarker {
				t.Fatalf("hand-made PAX header reads as %+v, %v", h, err)
			}
			return b
		}},
		{name: "long-name-traversal", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, reg(strings.Repeat("../", 60)+escapeMarker, "gotcha"))
		}},
		{name: "symlink-absolute", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc", Linkname: "/etc"}})
		}},
		{name: "symlink-climbs-out", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "up", Linkname: up}})
		}},
		{name: "write-through-symlink", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			// The link itself stays inside; the file written through it is
			// the classic two-step escape.
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "d", Linkname: "sub"}},
				reg("d/"+escapeMarker, "gotcha"))
		}},
		{name: "symlink-parent-then-write", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "x", Linkname: ".."}},
				reg("x/"+escapeMarker, "gotcha"))
		}},
		{name: "hardlink-absolute", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "passwd", Linkname: "/etc/passwd"}})
		}},
		{name: "hardlink-climbs-out", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "../../" + escapeMarker}})
		}},
		{name: "hardlink-dangling", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "not-in-archive"}})
		}},
		// Special files.
		{name: "char-device", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}})
		}},
		{name: "block-device", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}})
		}},
		{name: "fifo", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "pipe"}})
		}},
		// Structure.
		{name: "duplicate-entry", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, reg("a.txt", "first"), reg("a.txt", "second"))
		}},
		{name: "dir-then-file-same-name", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "a/", Mode: 0o755}}, reg("a", "file"))
		}},
		{name: "truncated", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			b := tarOf(t, reg("big.bin", strings.Repeat("x", 4096)))
			return b[:512+1000] // header plus part of the data, announced as it is
		}},
		{name: "not-a-tar", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			b := make([]byte, 4096)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(r.UintN(256))
			}
			return b
		}},
		{name: "gzipped-tar", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			zw.Write(okTar(t))
			zw.Close()
			return buf.Bytes()
		}},
		// Bombs: more entries, or more declared bytes, than the limits allow.
		{name: "too-many-entries", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			var es []rawEntry
			for i := range maxEntries + 1 {
				es = append(es, reg(fmt.Sprintf("f/%03d", i), ""))
			}
			return tarOf(t, es...)
		}},
		{name: "declared-size-bomb", want: event.ReasonUnsafeArchive, tar: func(t *testing.T) []byte {
			// A header claiming a terabyte, followed by nothing: the
			// extractor must refuse before it believes the header.
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bomb.bin", Size: 1 << 40, Mode: 0o644}); err != nil {
				t.Fatal(err)
			}
			tw.Flush()
			return append(buf.Bytes(), make([]byte, 1024)...)
		}},
		// Names that are odd but harmless stay inside the package.
		{name: "odd-unicode-names", want: wantCompleted, tar: func(t *testing.T) []byte {
			return tarOf(t, reg("rtl-\u202egnp.exe", "1"), reg("zero\u200bwidth", "2"), reg("caf\u00e9", "nfc"),
				reg("cafe\u0301", "nfd"), reg("%2e%2e/%2e%2e/inside", "3"), reg("...", "4"), reg(`a\..\..\b`, "5"))
		}, check: func(t *testing.T, dir string) {
			for name, want := range map[string]string{"rtl-\u202egnp.exe": "1", "zero\u200bwidth": "2", "caf\u00e9": "nfc",
				"cafe\u0301": "nfd", "%2e%2e/%2e%2e/inside": "3", "...": "4", `a\..\..\b`: "5"} {
				b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
				if err != nil || string(b) != want {
					t.Errorf("%q: %q, %v; want %q", name, b, err, want)
				}
			}
		}},
		{name: "dot-slash-prefix", want: wantCompleted, tar: func(t *testing.T) []byte {
			return tarOf(t, rawEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755}}, reg("./a.txt", "a"))
		}, check: func(t *testing.T, dir string) {
			if b, err := os.ReadFile(filepath.Join(dir, "a.txt")); err != nil || string(b) != "a" {
				t.Errorf("a.txt: %q %v", b, err)
			}
		}},
		{name: "setuid-bit-dropped", want: wantCompleted, tar: func(t *testing.T) []byte {
			e := reg("tool", "#!/bin/sh\n")
			e.hdr.Mode = 0o6777
			return tarOf(t, e)
		}, check: func(t *testing.T, dir string) {
			st, err := os.Stat(filepath.Join(dir, "tool"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 || st.Mode().Perm()&0o022 != 0 {
				t.Errorf("staged file mode %v: setuid/setgid or group/world-writable kept", st.Mode())
			}
		}},
		// What the archive says about the bytes is wrong.
		{name: "wrong-checksum", want: event.ReasonChecksumMismatch, tar: okTar, announce: func(a *event.PackageArchived) {
			a.Checksum = "sha256:" + strings.Repeat("ab", 32)
		}},
		{name: "size-larger-than-file", want: event.ReasonSizeMismatch, tar: okTar, announce: func(a *event.PackageArchived) {
			a.SizeBytes += 512
		}},
		{name: "size-smaller-than-file", want: event.ReasonSizeMismatch, tar: okTar, announce: func(a *event.PackageArchived) {
			a.SizeBytes -= 512
		}},
		{name: "manifest-wrong-sha", want: event.ReasonChecksumMismatch, tar: okTar, announce: func(a *event.PackageArchived) {
			a.Files = []event.File{{Path: "data/a.fits", SizeBytes: 6, SHA256: strings.Repeat("0", 64)}}
		}},
		{name: "manifest-names-missing-file", want: event.ReasonChecksumMismatch, tar: okTar, announce: func(a *event.PackageArchived) {
			a.Files = []event.File{{Path: "data/ghost.fits", SizeBytes: 0, SHA256: hex.EncodeToString(sha256.New().Sum(nil))}}
		}},
		// Keys.
		{name: "key-missing", want: event.ReasonSourceMissing, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string { return "raw/never-written-" + id + ".tar" }},
		{name: "key-url-encoded-traversal", want: event.ReasonSourceMissing, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string {
				// Just a strange file name: it must be looked up as it is,
				// inside the root, never decoded into "../..".
				return "%2e%2e%2f%2e%2e%2f" + id + ".tar"
			}},
		{name: "key-url-encoded-dir", want: wantCompleted, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string {
				key := "raw/%2e%2e/" + id + ".tar"
				s.writeLTA(id, "cologne-lta", key, b)
				return key
			}},
		{name: "key-odd-unicode", want: wantCompleted, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string {
				key := "raw/\u202e" + id + "\u200b.tar"
				s.writeLTA(id, "cologne-lta", key, b)
				return key
			}},
		{name: "key-nfd-file-nfc", want: event.ReasonSourceMissing, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string {
				// File systems compare bytes: the NFD key does not find the
				// NFC file, and nothing guesses.
				s.writeLTA(id, "cologne-lta", "raw/caf\u00e9-"+id+".tar", b)
				return "raw/cafe\u0301-" + id + ".tar"
			}},
		{name: "key-symlink-leaves-root", want: event.ReasonBadRequest, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string {
				outside := filepath.Join(t.TempDir(), "outside.tar")
				if err := os.WriteFile(outside, b, 0o644); err != nil {
					t.Fatal(err)
				}
				key := "raw/" + id + "-link.tar"
				p := s.ltaPath("cologne-lta", key)
				os.MkdirAll(filepath.Dir(p), 0o755)
				if err := os.Symlink(outside, p); err != nil {
					t.Fatal(err)
				}
				s.wrote(p)
				return key
			}},
		{name: "key-is-directory", want: event.ReasonSourceMissing, tar: okTar,
			place: func(t *testing.T, s *system, id string, b []byte) string {
				key := "raw/dir-" + id
				if err := os.MkdirAll(s.ltaPath("cologne-lta", key), 0o755); err != nil {
					t.Fatal(err)
				}
				return key
			}},
		// Announcements the schema refuses: the catalog never records them.
		{name: "key-dotdot", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.Key = "raw/../../../etc/passwd" }},
		{name: "key-absolute", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.Key = "/etc/passwd" }},
		{name: "key-nul", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.Key += "\x00.evil" }},
		{name: "key-dot-element", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.Key = "./" + a.Key }},
		{name: "size-negative", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.SizeBytes = -1 }},
		{name: "size-overflows-int64", want: wantUnknown, tar: okTar, raw: map[string]any{"size_bytes": jsonNumber("92233720368547758070")}},
		{name: "size-beyond-2-53", want: wantUnknown, tar: okTar, raw: map[string]any{"size_bytes": jsonNumber("9007199254740993")}},
		{name: "size-fractional", want: wantUnknown, tar: okTar, raw: map[string]any{"size_bytes": jsonNumber("1.5")}},
		// An integer by the schema, not by Go's decoder: the ledger once
		// failed its batch on it at every delivery.
		{name: "size-integral-float", want: wantUnknown, tar: okTar, raw: map[string]any{"size_bytes": jsonNumber("10240.0")}},
		{name: "checksum-md5", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.Checksum = "md5:d41d8cd98f00b204e9800998ecf8427e" }},
		{name: "format-zip", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) { a.Format = "zip" }},
		{name: "manifest-path-traversal", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) {
			a.Files = []event.File{{Path: "../../etc/passwd", SizeBytes: 1, SHA256: strings.Repeat("0", 64)}}
		}},
		// Manifests by reference: never both forms; a reference whose object
		// is not in MANIFESTS fails the package permanently, archive unread.
		{name: "manifest-both-forms", want: wantUnknown, tar: okTar, announce: func(a *event.PackageArchived) {
			a.Files = []event.File{{Path: "a.fits", SizeBytes: 1, SHA256: strings.Repeat("0", 64)}}
			a.Manifest = &event.ManifestRef{SHA256: strings.Repeat("0", 64), SizeBytes: 100, Files: 1}
		}},
		{name: "manifest-reference-missing", want: event.ReasonBadManifest, tar: okTar, announce: func(a *event.PackageArchived) {
			a.Manifest = &event.ManifestRef{SHA256: strings.Repeat("0", 64), SizeBytes: 100, Files: 1}
		}},
		// Locations.
		{name: "location-unknown", want: event.ReasonNoSource, tar: okTar, announce: func(a *event.PackageArchived) { a.Location = "atlantis-lta" }},
		{name: "location-is-processing", want: event.ReasonNoSource, tar: okTar, announce: func(a *event.PackageArchived) { a.Location = "cologne-processing" }},
	}
}

// paxHeader returns a hand-made PAX extended header block carrying one
// record: archive/tar's writer refuses to write TypeXHeader itself.
func paxHeader(t *testing.T, key, value string) []byte {
	t.Helper()
	rec := " " + key + "=" + value + "\n"
	n := len(rec)
	for len(strconv.Itoa(n))+len(rec) != n {
		n = len(strconv.Itoa(n)) + len(rec)
	}
	rec = strconv.Itoa(n) + rec
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "PaxHeaders/x", Size: int64(len(rec)), Mode: 0o644, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(rec))
	tw.Flush()
	b := buf.Bytes()
	b[156] = tar.TypeXHeader
	// The header checksum: the sum of its bytes with the field as spaces.
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

type jsonNumber string

func (n jsonNumber) MarshalJSON() ([]byte, error) { return []byte(n), nil }

// testArchives runs every archive case as its own job to site cologne.
func testArchives(t *testing.T, s *system) {
	cases := archiveCases()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			id := "a-" + c.name
			b := c.tar(t)
			key := "raw/" + id + ".tar"
			if c.place != nil {
				key = c.place(t, s, id, b)
			} else {
				s.writeLTA(id, "cologne-lta", key, b)
			}
			sum := sha256.Sum256(b)
			a := event.PackageArchived{PackageID: id, Location: "cologne-lta", Key: key, SizeBytes: int64(len(b)),
				Checksum: "sha256:" + hex.EncodeToString(sum[:]), Format: "tar"}
			if c.announce != nil {
				c.announce(&a)
			}
			if c.want == wantCompleted {
				s.expectStaged("cologne", id)
			}
			s.announce(t, a, c.raw, c.want != wantUnknown)
			job := "ja-" + c.name
			s.publish(subject.Submit, "ev-"+job, event.Submit{JobID: job, Packages: []string{id},
				Destination: event.Destination{Site: "cologne"}, RequestedBy: "hostile"})
			if c.want == wantUnknown {
				s.expectRejected(t, "ev-"+job, job, event.ReasonUnknownPackage)
				return
			}
			j := s.waitJob(t, job, 60*time.Second)
			if len(j.Packages) != 1 {
				t.Fatalf("job %s has %d packages", job, len(j.Packages))
			}
			p := j.Packages[0]
			if c.want == wantCompleted {
				if j.Status != event.StatusCompleted || p.Status != event.StatusCompleted {
					t.Fatalf("job %s: %s, package %s %s: %s", job, j.Status, p.Status, p.Reason, p.Message)
				}
				root := filepath.Join(s.base, "cologne", "processing")
				if p.Path != filepath.Join(root, id) {
					t.Errorf("staged at %q, want %q", p.Path, filepath.Join(root, id))
				}
				if c.check != nil {
					c.check(t, p.Path)
				}
				return
			}
			if j.Status != event.StatusFailed || p.Status != event.StatusFailed || p.Reason != c.want {
				t.Fatalf("job %s: %s, package %s reason %q (%s), want failed %q", job, j.Status, p.Status, p.Reason, p.Message, c.want)
			}
			if c.want == event.ReasonNoSource {
				return // decided by the planner; no stager event
			}
			failed := s.events.matching(func(e event.Envelope) bool {
				return e.Type == event.TypeFailed && strings.HasPrefix(e.ID, "failed:request:"+job+":")
			})
			if len(failed) == 0 {
				t.Fatalf("no staging.failed for %s", job)
			}
			last, err := event.DataAs[event.Failed](failed[len(failed)-1])
			if err != nil {
				t.Fatal(err)
			}
			if !last.Permanent || last.Reason != c.want {
				t.Errorf("last staging.failed of %s: permanent %v reason %q, want permanent %q", job, last.Permanent, last.Reason, c.want)
			}
		})
	}
}

// announce publishes an announcement (with raw field overrides) and waits
// until the planner's catalog has judged it, so the submit that follows
// meets a catalog that is up to date.
func (s *system) announce(t *testing.T, a event.PackageArchived, raw map[string]any, valid bool) {
	t.Helper()
	var d event.Data = a
	if raw != nil {
		d = rawArchived{a, raw}
	}
	s.publish(subject.Archived, "archived:"+a.Location+":"+a.PackageID, d)
	if valid {
		kv, err := s.js.KeyValue(t.Context(), subject.CatalogBucket)
		if err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 30*time.Second, "the catalog to record "+a.PackageID, func() error {
			_, err := kv.Get(t.Context(), a.PackageID)
			return err
		})
		return
	}
	s.waitConsumerIdle(t, subject.ArchiveStream, subject.PlannerCatalog)
}

// waitConsumerIdle waits until a durable has nothing pending or unacked.
func (s *system) waitConsumerIdle(t *testing.T, stream, durable string) {
	t.Helper()
	poll.Until(t, 30*time.Second, "consumer "+durable+" on "+stream+" idle", func() error {
		c, err := s.js.Consumer(t.Context(), stream, durable)
		if err != nil {
			return err
		}
		ci, err := c.Info(t.Context())
		if err == nil && (ci.NumPending != 0 || ci.NumAckPending != 0) {
			err = fmt.Errorf("%d pending, %d unacked", ci.NumPending, ci.NumAckPending)
		}
		return err
	})
}

// rawArchived is an announcement whose JSON has some fields replaced as
// they are.
type rawArchived struct {
	event.PackageArchived
	over map[string]any
}

func (r rawArchived) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(r.PackageArchived)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range r.over {
		m[k] = v
	}
	return json.Marshal(m)
}
