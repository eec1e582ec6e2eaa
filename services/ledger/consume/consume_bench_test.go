package consume_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/consume"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// BenchmarkClassify measures the ledger's per-message CPU before the
// database: envelope decode, schema validation and the checks Classify adds.
// Most of a catching-up projection's messages are a stager's started and done.
func BenchmarkClassify(b *testing.B) {
	o := event.Outcome{JobID: "proj-00001", PackageID: "proj-00001-p042", Site: "cologne", Location: "cologne-processing",
		Attempt: 1, RequestID: "request:proj-00001:proj-00001-p042:1", Instance: "bench-1"}
	for _, c := range []struct {
		name, subj, id string
		data           event.Data
	}{
		{"started", subject.Started, "started:request:proj-00001:proj-00001-p042:1:1", event.Started{Outcome: o}},
		{"done", subject.Done, "done:request:proj-00001:proj-00001-p042:1", event.Done{Outcome: o,
			Path: "/processing/proj-00001-p042", SizeBytes: 2560, Files: 1, DurationSeconds: 0.01}},
	} {
		var env event.Envelope
		var err error
		switch d := c.data.(type) {
		case event.Started:
			env, err = event.New("ccat-staging/stager/cologne", c.id, "", d)
		case event.Done:
			env, err = event.New("ccat-staging/stager/cologne", c.id, "", d)
		}
		if err != nil {
			b.Fatal(err)
		}
		raw, err := json.Marshal(env)
		if err != nil {
			b.Fatal(err)
		}
		ts := time.Now()
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, p, ok := consume.Classify("STAGING_EVENTS", c.subj, 1, ts, raw); !ok {
					b.Fatal(p.Message)
				}
			}
		})
	}
}
