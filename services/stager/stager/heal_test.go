package stager_test

import (
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// A site's work durable deleted while the stager runs is provisioned again
// and the request waiting behind it is staged: the stager used to retry
// its fetch against the missing durable forever.
func TestStagerHealsADeletedWorkDurable(t *testing.T) {
	w := newWorld(t)
	cfg := w.config()
	cfg.PollInterval = 100 * time.Millisecond
	w.start(cfg)
	first := w.submit(request("job-1", w.put(w.archive, "pkg-1", samplePackage(t))))
	waitID[event.Done](t, w.rec, "done:"+first)

	if err := w.srv.JS.DeleteConsumer(t.Context(), subject.RequestsStream, subject.StagerDurable(site, event.PriorityNormal)); err != nil {
		t.Fatal(err)
	}
	second := w.submit(request("job-2", w.put(w.archive, "pkg-2", samplePackage(t))))
	waitID[event.Done](t, w.rec, "done:"+second)
}
