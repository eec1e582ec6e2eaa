package stager_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

func samplePackage(t *testing.T) []byte {
	return tartest.Build(t,
		tartest.Dir("./"),
		tartest.Dir("./raw/"),
		tartest.File("./raw/scan-001.fits", strings.Repeat("A", 100_000)),
		tartest.File("./raw/scan-002.fits", strings.Repeat("B", 3<<20)),
		tartest.File("./meta.json", `{"obs":"2026-11-26"}`),
		tartest.Symlink("./latest.fits", "raw/scan-002.fits"),
	)
}

func TestStageDiskEndToEnd(t *testing.T) {
	w := newWorld(t)
	tb := samplePackage(t)
	p := w.put(w.archive, "pkg-1", tb)
	r := request("job-1", p)
	r.Files = []event.File{{Path: "meta.json", SizeBytes: 20, SHA256: tartest.SHA256([]byte(`{"obs":"2026-11-26"}`))}}
	id := w.submit(r)
	w.start(w.config())

	done := waitID[event.Done](t, w.rec, "done:"+id)
	started := waitID[event.Started](t, w.rec, "started:"+id+":1")
	if started.Attempt != 1 || started.Instance != "t1" || started.Site != site {
		t.Errorf("started = %+v", started)
	}
	want := filepath.Join(w.proc, "pkg-1")
	if done.Path != want || done.Files != 3 || done.SizeBytes != p.size || done.AlreadyPresent || done.Attempt != 1 || done.JobID != "job-1" {
		t.Errorf("done = %+v", done)
	}
	for name, body := range map[string]string{
		"raw/scan-001.fits": strings.Repeat("A", 100_000),
		"raw/scan-002.fits": strings.Repeat("B", 3<<20),
		"latest.fits":       strings.Repeat("B", 3<<20),
		"meta.json":         `{"obs":"2026-11-26"}`,
	} {
		b, err := os.ReadFile(filepath.Join(want, name))
		if err != nil || tartest.SHA256(b) != tartest.SHA256([]byte(body)) {
			t.Errorf("%s: wrong contents (%v)", name, err)
		}
	}
	if got := w.procEntries(); !slices.Equal(got, []string{"pkg-1"}) {
		t.Errorf("processing root holds %v, want only the package", got)
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
	if f := w.rec.ofType(event.TypeFailed, ""); len(f) != 0 {
		t.Errorf("unexpected failures: %v", f)
	}
}

func TestAlreadyPresent(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-2", samplePackage(t))
	w.start(w.config())
	first := w.submit(request("job-a", p))
	waitID[event.Done](t, w.rec, "done:"+first)

	// Without the archive copy, only the verification record can answer.
	if err := os.Remove(filepath.Join(w.archive, filepath.FromSlash(p.key))); err != nil {
		t.Fatal(err)
	}
	second := w.submit(request("job-b", p))
	d := waitID[event.Done](t, w.rec, "done:"+second)
	if !d.AlreadyPresent || d.Files != 3 || d.JobID != "job-b" {
		t.Errorf("done = %+v, want already_present with 3 files", d)
	}

	// A file lost from the package makes it not present: it is staged again
	// (and here fails, since the archive copy is gone).
	if err := os.Remove(filepath.Join(w.proc, "pkg-2", "meta.json")); err != nil {
		t.Fatal(err)
	}
	third := w.submit(request("job-c", p))
	f := waitID[event.Failed](t, w.rec, "failed:"+third+":1")
	if f.Reason != event.ReasonSourceMissing || !f.Permanent {
		t.Errorf("failed = %+v, want permanent source_missing", f)
	}
}

func TestPermanentFailures(t *testing.T) {
	w := newWorld(t)
	good := samplePackage(t)
	corrupt := bytes(good)
	corrupt[2048] ^= 0xff
	slip := tartest.Build(t, tartest.File("ok", "fine"), tartest.File("../../escaped", "gotcha"))

	tests := []struct {
		name   string
		req    func() event.Request
		reason string
	}{
		{"checksum mismatch", func() event.Request {
			p := w.put(w.archive, "corrupt", corrupt)
			p.checksum = "sha256:" + tartest.SHA256(good)
			return request("job-cs", p)
		}, event.ReasonChecksumMismatch},
		{"size mismatch", func() event.Request {
			p := w.put(w.archive, "short", good[:len(good)-1024])
			p.size, p.checksum = int64(len(good)), "sha256:"+tartest.SHA256(good)
			return request("job-size", p)
		}, event.ReasonSizeMismatch},
		{"tar slip", func() event.Request { return request("job-slip", w.put(w.archive, "slip", slip)) }, event.ReasonUnsafeArchive},
		{"source missing", func() event.Request {
			p := w.put(w.archive, "gone", good)
			p.key = "packages/nothere.tar"
			return request("job-missing", p)
		}, event.ReasonSourceMissing},
		{"destination of another site", func() event.Request {
			r := request("job-dest", w.put(w.archive, "d1", good))
			r.Destination.Location = "other-proc"
			return r
		}, event.ReasonBadRequest},
		{"source is a processing location", func() event.Request {
			r := request("job-src", w.put(w.archive, "d2", good))
			r.Source.Location = "proc"
			return r
		}, event.ReasonBadRequest},
		{"unknown source location", func() event.Request {
			r := request("job-unk", w.put(w.archive, "d3", good))
			r.Source.Location = "nowhere"
			return r
		}, event.ReasonBadRequest},
	}
	ids := map[string]string{}
	for _, tt := range tests {
		ids[tt.name] = w.submit(tt.req())
	}
	w.start(w.config())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := waitID[event.Failed](t, w.rec, "failed:"+ids[tt.name]+":1")
			if f.Reason != tt.reason || !f.Permanent || f.Message == "" {
				t.Errorf("failed = %+v, want permanent %s", f, tt.reason)
			}
		})
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
	if got := w.procEntries(); len(got) != 0 {
		t.Errorf("processing root holds %v after failures, want nothing", got)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(w.proc), "escaped")); !os.IsNotExist(err) {
		t.Errorf("tar slip wrote outside the root: %v", err)
	}
	if got := w.rec.ofType(event.TypeDone, ""); len(got) != 0 {
		t.Errorf("done events for failed packages: %v", got)
	}
}

func bytes(b []byte) []byte { return append([]byte(nil), b...) }

// TestTransientThenSuccess: a recall that fails once is retried after a
// delay; both attempts are visible and the package is staged once.
func TestTransientThenSuccess(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.tape, "taped", samplePackage(t))
	if err := os.WriteFile(filepath.Join(w.tape, ".fail-1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := request("job-t", p)
	r.Source.Location, r.Source.Storage = "tape", "tape"
	id := w.submit(r)
	w.start(w.config())
	d := waitID[event.Done](t, w.rec, "done:"+id)
	f := waitID[event.Failed](t, w.rec, "failed:"+id+":1")
	if f.Permanent || f.Reason != event.ReasonIOError || !strings.Contains(f.Message, "drive busy") {
		t.Errorf("first attempt failed = %+v, want transient io_error with the command's stderr", f)
	}
	waitID[event.Started](t, w.rec, "started:"+id+":2")
	if d.Attempt != 2 || d.AlreadyPresent {
		t.Errorf("done = %+v, want attempt 2", d)
	}
}

// TestRetriesExhausted: when every delivery fails, the MAX_DELIVERIES
// advisory ends the request as retries_exhausted, moves it to the
// dead-letter stream and empties the work queue.
func TestRetriesExhausted(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.tape, "never", samplePackage(t))
	for _, n := range []string{"1", "2", "3", "4", "5", "6"} {
		if err := os.WriteFile(filepath.Join(w.tape, ".fail-"+n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := request("job-x", p)
	r.Source.Location, r.Source.Storage = "tape", "tape"
	id := w.submit(r)
	cfg := w.config()
	cfg.MaxDeliver = 3
	w.start(cfg)

	f := waitID[event.Failed](t, w.rec, "failed:"+id+":exhausted")
	if f.Reason != event.ReasonRetriesExhausted || !f.Permanent || f.Attempt != 3 {
		t.Errorf("failed = %+v, want permanent retries_exhausted after 3", f)
	}
	if got := len(w.rec.ofType(event.TypeFailed, "failed:"+id+":")); got != 4 {
		t.Errorf("%d failed events, want 3 attempts + exhausted", got)
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
	ds, err := w.srv.JS.Stream(t.Context(), subject.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ds.GetLastMsgForSubject(t.Context(), subject.Dead(site))
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if env, err := event.Validate(m.Data); err != nil || env.ID != id {
		t.Errorf("dead letter is not the request: %v %s", err, m.Data)
	}
	if m.Header.Get("Ccat-Reason") != event.ReasonRetriesExhausted {
		t.Errorf("dead letter headers = %v", m.Header)
	}
}

// TestPriorities: with one worker and a backlog, high goes before normal
// before low, whatever the order they were queued in.
func TestPriorities(t *testing.T) {
	w := newWorld(t)
	var ids []string
	for _, prio := range []string{event.PriorityLow, event.PriorityNormal, event.PriorityHigh} {
		r := request("job-"+prio, w.put(w.archive, "p-"+prio, samplePackage(t)))
		r.Priority = prio
		ids = append(ids, w.submit(r))
	}
	cfg := w.config()
	cfg.Workers = 1
	w.start(cfg)
	for _, id := range ids {
		waitID[event.Done](t, w.rec, "done:"+id)
	}
	var order []string
	for _, e := range w.rec.ofType(event.TypeStarted, "") {
		d, _ := event.DataAs[event.Started](e)
		order = append(order, d.JobID)
	}
	if want := []string{"job-high", "job-normal", "job-low"}; !slices.Equal(order, want) {
		t.Errorf("started order %v, want %v", order, want)
	}
}

// TestInvalidRequests: garbage and schema-violating requests are terminated
// (never redelivered), with a bad_request failure when the package is known.
func TestInvalidRequests(t *testing.T) {
	w := newWorld(t)
	pub := func(data string) {
		if _, err := w.srv.JS.Publish(t.Context(), subject.Request(site, "normal"), []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	pub(`not json at all`)
	pub(`{"specversion":"1.0","id":"x1","source":"s","type":"ccat.staging.submit.v1","data":{}}`)
	pub(`{"specversion":"1.0","id":"request:j9:p9:1","source":"s","type":"ccat.staging.request.v1","traceparent":"00-abc",
	      "data":{"job_id":"j9","package_id":"p9","destination":{"site":"testsite","location":"proc"},"generation":0}}`)
	w.start(w.config())
	f := waitID[event.Failed](t, w.rec, "failed:request:j9:p9:1:1")
	if f.Reason != event.ReasonBadRequest || !f.Permanent {
		t.Errorf("failed = %+v", f)
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
}

func TestHeartbeat(t *testing.T) {
	w := newWorld(t)
	stop := w.start(w.config())
	kv, err := heartbeat.Bucket(t.Context(), w.srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	var b heartbeat.Beat
	poll.Until(t, 5*time.Second, "heartbeat", poll.True(func() bool {
		e, err := kv.Get(t.Context(), heartbeat.Key(site, "t1"))
		return err == nil && json.Unmarshal(e.Value(), &b) == nil
	}))
	if b.Site != site || b.Instance != "t1" || b.Workers != 2 || b.Version != "test" || b.FreeBytes <= 0 {
		t.Errorf("beat = %+v", b)
	}
	stop()
	if _, err := kv.Get(t.Context(), heartbeat.Key(site, "t1")); err == nil {
		t.Errorf("heartbeat key still there after shutdown")
	}
}

// TestMinimalCloudEvent: a request from another SDK, with an extension
// attribute and none of the optional ones, is staged like any other.
func TestMinimalCloudEvent(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-min", samplePackage(t))
	data, err := json.Marshal(request("job-min", p))
	if err != nil {
		t.Fatal(err)
	}
	raw := `{"specversion":"1.0","id":"request:job-min:pkg-min:1","source":"other-sdk","type":"ccat.staging.request.v1",` +
		`"comexampleext":"x","data":` + string(data) + `}`
	if _, err := w.srv.JS.Publish(t.Context(), subject.Request(site, "normal"), []byte(raw)); err != nil {
		t.Fatal(err)
	}
	w.start(w.config())
	d := waitID[event.Done](t, w.rec, "done:request:job-min:pkg-min:1")
	if d.Files != 3 {
		t.Errorf("done = %+v", d)
	}
}

// TestChecksumReread: a mismatch may be a bad read, so it is retried
// (permanent: false) until STAGER_CHECKSUM_ATTEMPTS deliveries agree.
func TestChecksumReread(t *testing.T) {
	w := newWorld(t)
	good := samplePackage(t)
	bad := bytes(good)
	bad[4096] ^= 1
	p := w.put(w.archive, "flaky", bad)
	p.checksum = "sha256:" + tartest.SHA256(good)
	cfg := w.config()
	cfg.ChecksumAttempts = 2
	id := w.submit(request("job-cr", p))
	w.start(cfg)
	first := waitID[event.Failed](t, w.rec, "failed:"+id+":1")
	second := waitID[event.Failed](t, w.rec, "failed:"+id+":2")
	if first.Permanent || first.Reason != event.ReasonChecksumMismatch {
		t.Errorf("first = %+v, want transient checksum_mismatch", first)
	}
	if !second.Permanent || second.Reason != event.ReasonChecksumMismatch {
		t.Errorf("second = %+v, want permanent checksum_mismatch", second)
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
	if got := w.procEntries(); len(got) != 0 {
		t.Errorf("left behind: %v", got)
	}
}

// A request of a job the planner recorded as cancelled is withdrawn before
// it starts: a permanent failed/cancelled, nothing read or written; other
// jobs' requests are staged as usual.
func TestCancelledJobIsWithdrawn(t *testing.T) {
	w := newWorld(t)
	kv, err := w.srv.JS.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: subject.CancelledBucket})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "job-gone", []byte("cancel:job-gone")); err != nil {
		t.Fatal(err)
	}
	tb := samplePackage(t)
	gone := w.submit(request("job-gone", w.put(w.archive, "pkg-gone", tb)))
	kept := w.submit(request("job-kept", w.put(w.archive, "pkg-kept", bytes(tb))))
	w.start(w.config())

	f := waitID[event.Failed](t, w.rec, "failed:"+gone+":1")
	if f.Reason != event.ReasonCancelled || !f.Permanent || f.JobID != "job-gone" || f.PackageID != "pkg-gone" || f.Site != site {
		t.Errorf("failed = %+v, want a permanent cancelled", f)
	}
	waitID[event.Done](t, w.rec, "done:"+kept)
	if got := w.rec.ofType(event.TypeStarted, "started:"+gone); len(got) != 0 {
		t.Errorf("withdrawn request started: %v", got)
	}
	if got := w.procEntries(); !slices.Equal(got, []string{"pkg-kept"}) {
		t.Errorf("processing root holds %v, want only the other job's package", got)
	}
	poll.Until(t, 5*time.Second, "work queue empty", poll.True(func() bool { return w.queued() == 0 }))
	for _, e := range w.rec.snapshot() {
		raw, _ := json.Marshal(e)
		if _, err := event.Validate(raw); err != nil {
			t.Errorf("%s does not validate: %v", e.ID, err)
		}
	}
}

// A cancel recorded while the stager runs reaches its watched view: the
// job's next request is withdrawn without a KV get per request (every
// check after the view loaded is answered by the view). On the code that
// asked the bucket for every request there was no view to answer.
func TestCancelledJobIsWithdrawnFromTheWatchedView(t *testing.T) {
	w := newWorld(t)
	kv, err := w.srv.JS.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: subject.CancelledBucket})
	if err != nil {
		t.Fatal(err)
	}
	cfg := w.config()
	addr := freeAddr(t)
	cfg.HTTPAddr = addr
	w.start(cfg)
	tb := samplePackage(t)
	first := w.submit(request("job-live", w.put(w.archive, "pkg-live", tb)))
	waitID[event.Done](t, w.rec, "done:"+first)

	if _, err := kv.Put(t.Context(), "job-live", []byte("cancel:job-live")); err != nil {
		t.Fatal(err)
	}
	// The view follows the bucket within the watch's delay; until then a
	// request may still be staged, which is what a cancel right after the
	// check always allowed.
	var f event.Failed
	poll.Until(t, 10*time.Second, "a request of the cancelled job withdrawn", poll.True(func() bool {
		id := w.submit(request("job-live", w.put(w.archive, "pkg-live-"+strconv.Itoa(int(time.Now().UnixNano())), bytes(tb))))
		for {
			if e, ok := w.rec.byID("failed:" + id + ":1"); ok {
				_ = json.Unmarshal(e.Data, &f)
				return true
			}
			if _, ok := w.rec.byID("done:" + id); ok {
				return false
			}
			time.Sleep(10 * time.Millisecond)
		}
	}))
	if f.Reason != event.ReasonCancelled || !f.Permanent {
		t.Errorf("failed = %+v, want a permanent cancelled", f)
	}
	if n := metric(addr, `stager_cancel_lookups_total{source="view"}`); n < 1 {
		t.Errorf("no withdrawn check answered by the watched view (%v)", n)
	}
	if n := metric(addr, `stager_cancel_lookups_total{source="bucket"}`); n > 1 {
		t.Errorf("%v withdrawn checks went to the bucket; want at most the first, before the view loaded", n)
	}
}
