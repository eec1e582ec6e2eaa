// Package manifest moves a package's file manifest by reference when it is
// too large to travel inline in an event: the manifest (the JSON array of
// event.File, exactly as an inline "files" is encoded) is stored in the
// JetStream Object Store bucket MANIFESTS under the package checksum, and the
// events carry an event.ManifestRef (digest, size, entry count) instead.
//
// Writers (stagectl archive announce, the planner) Store; readers (the
// stager, stagectl verify) Fetch, which verifies size and digest before it
// parses a byte, and parses in a stream so that a 1,000,000-entry manifest
// is held once, as the decoded list, and never also as its text.
package manifest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Limits of a manifest in either form: the schemas' maxItems and the
// reference's maximum size_bytes.
const (
	MaxEntries = 1_000_000
	MaxBytes   = 1 << 30
)

// ErrTooLarge is wrapped when a manifest exceeds MaxEntries or MaxBytes: it
// fits neither inline nor by reference.
var ErrTooLarge = errors.New("manifest too large")

// InlineLimit is the largest encoded file list that travels inline on a
// server whose max payload is maxPayload. An eighth leaves room for what
// the same list is copied into: the planner's catalog value holds it once
// per archive location, and every request carries it with its own fields.
// At the default 1 MiB that is 128 KiB, about a thousand files.
func InlineLimit(maxPayload int64) int64 { return maxPayload / 8 }

// EncodedSize is the length of files' encoding (the inline "files" value).
func EncodedSize(files []event.File) int64 {
	var n int64 = 2 // [ ]
	var buf []byte
	for i, f := range files {
		if i > 0 {
			n++
		}
		buf = appendFile(buf[:0], f)
		n += int64(len(buf))
	}
	return n
}

// Encode writes files as a compact JSON array and returns its sha256 and
// length, the fields of the reference.
func Encode(w io.Writer, files []event.File) (event.ManifestRef, error) {
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)
	var n int64
	var buf []byte
	buf = append(buf, '[')
	for i, f := range files {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendFile(buf, f)
		if len(buf) >= 64<<10 {
			k, err := bw.Write(buf)
			n += int64(k)
			if err != nil {
				return event.ManifestRef{}, fmt.Errorf("encode manifest: %w", err)
			}
			buf = buf[:0]
		}
	}
	buf = append(buf, ']')
	k, err := bw.Write(buf)
	n += int64(k)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return event.ManifestRef{}, fmt.Errorf("encode manifest: %w", err)
	}
	return event.ManifestRef{SHA256: hex.EncodeToString(h.Sum(nil)), SizeBytes: n, Files: len(files)}, nil
}

// appendFile appends one entry as encoding/json would, without reflection:
// a million entries are encoded in a fraction of the time.
func appendFile(b []byte, f event.File) []byte {
	b = append(b, `{"path":`...)
	b = appendString(b, f.Path)
	b = append(b, `,"size_bytes":`...)
	b = strconv.AppendInt(b, f.SizeBytes, 10)
	b = append(b, `,"sha256":`...)
	b = appendString(b, f.SHA256)
	return append(b, '}')
}

// appendString quotes s as JSON; anything but plain printable ASCII goes
// through encoding/json so that escaping is never hand-rolled wrong.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Open returns the MANIFESTS bucket (provisioned by bus.Provision).
func Open(ctx context.Context, js jetstream.ObjectStoreManager) (jetstream.ObjectStore, error) {
	obs, err := js.ObjectStore(ctx, subject.ManifestsBucket)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", subject.ManifestsBucket, err)
	}
	return obs, nil
}

// Store encodes files into a temporary file in tmpDir ("" is the system's),
// then stores it under checksum, and returns the reference. A manifest
// already stored with the same bytes is not sent again, so announcing a
// package twice costs one lookup. A different manifest under the same
// checksum is replaced: references to the old one then fail their digest
// check rather than silently reading the new list.
func Store(ctx context.Context, obs jetstream.ObjectStore, checksum string, files []event.File, tmpDir string) (event.ManifestRef, error) {
	if len(files) > MaxEntries {
		return event.ManifestRef{}, fmt.Errorf("%w: %d files, at most %d fit a manifest (inline or by reference)", ErrTooLarge, len(files), MaxEntries)
	}
	f, err := os.CreateTemp(tmpDir, ".ccat-manifest-*")
	if err != nil {
		return event.ManifestRef{}, fmt.Errorf("store manifest: %w", err)
	}
	defer func() { f.Close(); os.Remove(f.Name()) }()
	ref, err := Encode(f, files)
	if err != nil {
		return ref, err
	}
	if ref.SizeBytes > MaxBytes {
		return event.ManifestRef{}, fmt.Errorf("%w: %d files encode to %d bytes, at most %d fit a manifest by reference", ErrTooLarge, len(files), ref.SizeBytes, MaxBytes)
	}
	sum, _ := hex.DecodeString(ref.SHA256)
	if info, err := obs.GetInfo(ctx, checksum); err == nil && !info.Deleted &&
		info.Size == uint64(ref.SizeBytes) && info.Digest == "SHA-256="+base64.URLEncoding.EncodeToString(sum) {
		return ref, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return event.ManifestRef{}, fmt.Errorf("store manifest: %w", err)
	}
	meta := jetstream.ObjectMeta{Name: checksum, Description: "file manifest of the package with this checksum",
		Metadata: map[string]string{"files": strconv.Itoa(ref.Files), "sha256": ref.SHA256}}
	if _, err := obs.Put(ctx, meta, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return event.ManifestRef{}, fmt.Errorf("store manifest of %s in %s: %w", checksum, subject.ManifestsBucket, err)
	}
	return ref, nil
}

// Fetch reads the manifest ref names for the package with checksum,
// verifies its size and sha256 against ref, then decodes it. The bytes pass
// through a temporary file in tmpDir ("" is the system's) so that they are
// verified whole before a single entry is trusted, without being held in
// memory next to the decoded list. Errors are classified: a manifest that is
// missing or differs from ref is permanent (event.ReasonBadManifest, the same
// object fails the same way again); trouble reaching it is transient.
func Fetch(ctx context.Context, obs jetstream.ObjectStore, checksum string, ref event.ManifestRef, tmpDir string) ([]event.File, error) {
	bad := func(format string, args ...any) error {
		return fault.Permanent(event.ReasonBadManifest, fmt.Errorf("manifest of %s: "+format, append([]any{checksum}, args...)...))
	}
	if ref.SizeBytes > MaxBytes || ref.Files > MaxEntries {
		return nil, bad("reference names %d bytes and %d files, beyond the limits", ref.SizeBytes, ref.Files)
	}
	res, err := obs.Get(ctx, checksum)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return nil, bad("not found in %s", subject.ManifestsBucket)
	case err != nil:
		return nil, fault.Transient(event.ReasonIOError, fmt.Errorf("manifest of %s: %w", checksum, err))
	}
	defer res.Close()
	if info, err := res.Info(); err == nil && info.Size != uint64(ref.SizeBytes) {
		// Known before a byte is read: no need to download a wrong object.
		return nil, bad("stored object is %d bytes, the reference says %d", info.Size, ref.SizeBytes)
	}
	f, err := os.CreateTemp(tmpDir, ".ccat-manifest-*")
	if err != nil {
		return nil, fault.Transient(event.ReasonIOError, fmt.Errorf("manifest of %s: %w", checksum, err))
	}
	defer func() { f.Close(); os.Remove(f.Name()) }()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(res, ref.SizeBytes+1))
	switch {
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return nil, bad("the stored object is corrupt (its chunks do not match its own digest)")
	case err != nil:
		return nil, fault.Transient(event.ReasonIOError, fmt.Errorf("read manifest of %s: %w", checksum, err))
	case n != ref.SizeBytes:
		return nil, bad("stored object is %d bytes, the reference says %d", n, ref.SizeBytes)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ref.SHA256 {
		return nil, bad("sha256 %s, the reference says %s (replaced or tampered with after the event was published)", got, ref.SHA256)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fault.Transient(event.ReasonIOError, fmt.Errorf("manifest of %s: %w", checksum, err))
	}
	files, err := Decode(bufio.NewReaderSize(f, 1<<20), ref.Files)
	if err != nil {
		return nil, bad("%v", err)
	}
	return files, nil
}

// Decode parses a manifest in one streaming pass, checking every entry as
// the schemas' "file" does, and requires exactly want entries.
func Decode(r io.Reader, want int) ([]event.File, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, fmt.Errorf("not a JSON array (%v)", err)
	}
	files := make([]event.File, 0, min(want, MaxEntries))
	var in struct {
		Path      string `json:"path"`
		SizeBytes *int64 `json:"size_bytes"`
		SHA256    string `json:"sha256"`
	}
	for dec.More() {
		if len(files) >= want {
			return nil, fmt.Errorf("more than the %d entries the reference names", want)
		}
		in.Path, in.SizeBytes, in.SHA256 = "", nil, ""
		if err := dec.Decode(&in); err != nil {
			return nil, fmt.Errorf("entry %d: %w", len(files), err)
		}
		if in.SizeBytes == nil {
			return nil, fmt.Errorf("entry %d: no size_bytes", len(files))
		}
		f := event.File{Path: in.Path, SizeBytes: *in.SizeBytes, SHA256: in.SHA256}
		if err := CheckFile(f); err != nil {
			return nil, fmt.Errorf("entry %d: %w", len(files), err)
		}
		files = append(files, f)
	}
	if t, err := dec.Token(); err != nil || t != json.Delim(']') {
		return nil, fmt.Errorf("array not closed (%v)", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the array")
	}
	if len(files) != want {
		return nil, fmt.Errorf("%d entries, the reference names %d", len(files), want)
	}
	return files, nil
}

// CheckFile applies the schemas' rules for one manifest entry; an inline
// list is checked by the schema validator, a fetched one here.
func CheckFile(f event.File) error {
	switch {
	case f.Path == "" || len(f.Path) > 4*4096 || utf8.RuneCountInString(f.Path) > 4096:
		return fmt.Errorf("path of %d bytes", len(f.Path))
	case f.Path[0] == '/' || strings.IndexByte(f.Path, 0) >= 0:
		return fmt.Errorf("path %q is absolute or has a NUL", f.Path)
	case f.SizeBytes < 0 || f.SizeBytes > 9007199254740991:
		return fmt.Errorf("size_bytes %d of %q", f.SizeBytes, f.Path)
	case !isHex64(f.SHA256):
		return fmt.Errorf("sha256 %q of %q", f.SHA256, f.Path)
	}
	for e := range strings.SplitSeq(f.Path, "/") {
		if e == "." || e == ".." {
			return fmt.Errorf("path %q has a %q element", f.Path, e)
		}
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
