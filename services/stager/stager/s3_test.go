package stager_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/s3test"
	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/shared/event"
)

func s3request(job, id, key string, tb []byte) event.Request {
	r := request(job, pkg{id: id, key: key, checksum: "sha256:" + tartest.SHA256(tb), size: int64(len(tb))})
	r.Source = event.Source{Location: "s3lta", Site: "s3site", Storage: "s3", Key: key}
	return r
}

// TestStageS3 stages from a real S3 server process (versitygw): a package,
// a missing object, and an outage that heals.
func TestStageS3(t *testing.T) {
	s3 := s3test.Start(t)
	w := newWorldS3(t, s3.Endpoint)
	tb := samplePackage(t)
	s3.Put("lta", "2026/11/pkg-s3.tar", tb)
	w.start(w.config())

	ok := w.submit(s3request("job-s3", "pkg-s3", "2026/11/pkg-s3.tar", tb))
	d := waitID[event.Done](t, w.rec, "done:"+ok)
	if d.Files != 3 || d.AlreadyPresent {
		t.Errorf("done = %+v", d)
	}
	b, err := os.ReadFile(filepath.Join(w.proc, "pkg-s3", "raw", "scan-002.fits"))
	if err != nil || string(b) != strings.Repeat("B", 3<<20) {
		t.Errorf("staged file wrong: %v", err)
	}

	missing := w.submit(s3request("job-s3m", "pkg-none", "2026/11/none.tar", tb))
	f := waitID[event.Failed](t, w.rec, "failed:"+missing+":1")
	if f.Reason != event.ReasonSourceMissing || !f.Permanent {
		t.Errorf("failed = %+v, want permanent source_missing", f)
	}

	// The server goes away: the attempt fails transiently and is retried
	// until the server is back.
	s3.Stop()
	outage := w.submit(s3request("job-s3o", "pkg-out", "2026/11/pkg-s3.tar", tb))
	f = waitID[event.Failed](t, w.rec, "failed:"+outage+":1")
	if f.Permanent || f.Reason != event.ReasonIOError {
		t.Errorf("failed during outage = %+v, want transient io_error", f)
	}
	s3.Restart()
	d = waitID[event.Done](t, w.rec, "done:"+outage)
	if d.Attempt < 2 || d.AlreadyPresent {
		t.Errorf("done after outage = %+v, want a later attempt", d)
	}
}
