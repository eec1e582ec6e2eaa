package event_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

const sum = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

var outcome = event.Outcome{JobID: "job-1", PackageID: "pkg-1", Site: "cologne", Location: "cologne-proc", Attempt: 1, RequestID: "request:job-1:pkg-1:1", Instance: "h1"}

// samples holds one valid value of every event type.
var samples = []event.Data{
	event.PackageArchived{PackageID: "pkg-1", Location: "cologne-lta", Key: "obs/1/pkg-1.tar", SizeBytes: 10240, Checksum: sum, Format: "tar",
		Files: []event.File{{Path: "a/b.fits", SizeBytes: 5, SHA256: strings.TrimPrefix(sum, "sha256:")}}},
	event.Submit{JobID: "job-1", Packages: []string{"pkg-1", "pkg-2"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "alice", Priority: "high", Note: "n"},
	event.Planned{JobID: "job-1", RequestedBy: "alice", Priority: "normal", Destination: event.Target{Site: "cologne", Location: "cologne-proc"},
		Packages: []event.PlannedPackage{
			{PackageID: "pkg-1", Status: "scheduled", RequestID: "r1", Source: &event.Source{Location: "cologne-lta", Site: "cologne", Storage: "disk", Key: "k.tar"}, SizeBytes: 1, Checksum: sum},
			{PackageID: "pkg-2", Status: "failed", Reason: event.ReasonNoSource, Message: "no active copy"},
		}},
	event.Rejected{JobID: "job-1", SubmitID: "s1", Reason: event.ReasonUnknownSite, Message: "no site \"x\""},
	event.Request{JobID: "job-1", PackageID: "pkg-1", Generation: 1, Priority: "normal",
		Source: event.Source{Location: "cologne-lta", Site: "cologne", Storage: "disk", Key: "k.tar"}, Destination: event.Target{Site: "cologne", Location: "cologne-proc"},
		SizeBytes: 10240, Checksum: sum, Format: "tar"},
	event.Started{Outcome: outcome},
	event.Done{Outcome: outcome, Path: "/data/proc/pkg-1", SizeBytes: 10240, Files: 3, DurationSeconds: 1.5},
	event.Failed{Outcome: outcome, Reason: event.ReasonChecksumMismatch, Message: "x", Permanent: true},
	event.Progress{Outcome: outcome, BytesDone: 10, BytesTotal: 100, RateBytesPerSecond: 5.5},
	event.Cancel{JobID: "job-1", Reason: "wrong packages", RequestedBy: "alice"},
	event.Release{JobID: "job-1", RequestedBy: "alice"},
	event.PackageRemoved{PackageID: "pkg-1", Location: "cologne-lta", Key: "obs/1/pkg-1.tar", Reason: "tape retired"},
	event.Planned{JobID: "job-2", RequestedBy: "bob", Priority: "low", Destination: event.Target{Site: "us", Location: "us-proc"}, Part: 2, Parts: 3,
		Packages: []event.PlannedPackage{{PackageID: "pkg-9", Status: "scheduled", RequestID: "request:job-2:pkg-9:1"}}},
	event.Stalled{JobID: "job-1", PackageID: "pkg-1", Site: "cologne", Location: "cologne-proc", RequestID: "request:job-1:pkg-1:4",
		Reason: event.ReasonStalled, Message: "gave up after 3 re-issues", Reissues: 3},
	event.Cleanup{PackageID: "pkg-1", Site: "cologne", Location: "cologne-proc", RefsKey: "cologne.cologne-proc.pkg-1", RefsRevision: 7,
		Jobs: []string{"job-1"}, EmptiedAt: time.Date(2026, 11, 26, 21, 0, 0, 0, time.UTC)},
	event.Released{PackageID: "pkg-1", Site: "cologne", Location: "cologne-proc", Path: "/scratch/pkg-1", BytesFreed: 10240,
		Jobs: []string{"job-1"}, RefsRevision: 7},
	event.Released{PackageID: "pkg-1", Site: "cologne", Location: "cologne-proc", Path: "/scratch/pkg-1", RefsRevision: 7,
		Reason: event.ReasonIOError, Message: "permission denied", Permanent: true},
}

func TestEveryTypeRoundTripsAndValidates(t *testing.T) {
	for _, d := range samples {
		t.Run(d.EventType(), func(t *testing.T) {
			env, err := event.New("test", "id-1", "subj", d)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := json.Marshal(env)
			if err != nil {
				t.Fatal(err)
			}
			got, err := event.Validate(raw)
			if err != nil {
				t.Fatalf("Validate(%s) = %v", raw, err)
			}
			if !event.Known(got.Type) {
				t.Errorf("Known(%q) = false", got.Type)
			}
			// Decode back into the concrete type and compare.
			back := reflect.New(reflect.TypeOf(d)).Interface()
			if err := json.Unmarshal(got.Data, back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(reflect.ValueOf(back).Elem().Interface(), d) {
				t.Errorf("round trip changed data:\ngot  %+v\nwant %+v", back, d)
			}
			if got.DataSchema != event.SchemaURI(d.EventType()) || got.DataContentType != "application/json" {
				t.Errorf("dataschema/datacontenttype = %q/%q", got.DataSchema, got.DataContentType)
			}
		})
	}
}

func TestDataAs(t *testing.T) {
	env, _ := event.New("test", "id", "", event.Submit{JobID: "j", Packages: []string{"p"}, Destination: event.Destination{Site: "s"}, RequestedBy: "me"})
	s, err := event.DataAs[event.Submit](env)
	if err != nil || s.JobID != "j" {
		t.Fatalf("DataAs = %+v, %v", s, err)
	}
	if _, err := event.DataAs[event.Done](env); reasonOf(err) != event.ReasonUnknownType {
		t.Errorf("DataAs with the wrong type: %v, want unknown_type", err)
	}
}

func reasonOf(err error) string {
	if ie, ok := errors.AsType[*event.InvalidError](err); ok {
		return ie.Reason
	}
	return ""
}

func TestDecodeEnvelope(t *testing.T) {
	data := `"data":{"job_id":"j","packages":["p"],"destination":{"site":"s"},"requested_by":"me"}`
	tests := []struct {
		name   string
		raw    string
		reason string // "" = accepted
	}{
		{"minimal", `{"specversion":"1.0","id":"1","source":"/x","type":"ccat.staging.submit.v1",` + data + `}`, ""},
		{"extensions and all optional", `{"specversion":"1.0","id":"1","source":"urn:x","type":"ccat.staging.submit.v1","subject":"s","time":"2026-01-02T03:04:05.123+01:00","datacontenttype":"application/json; charset=utf-8","dataschema":"https://x/y","traceparent":"00-abc","partitionkey":7,` + data + `}`, ""},
		{"cloudevents+json content type", `{"specversion":"1.0","id":"1","source":"x","type":"t","datacontenttype":"application/cloudevents+json",` + data + `}`, ""},
		{"not json", `{"specversion":`, event.ReasonInvalidEnvelope},
		{"array", `[1,2]`, event.ReasonInvalidEnvelope},
		{"null", `null`, event.ReasonInvalidEnvelope},
		{"trailing garbage", `{"specversion":"1.0","id":"1","source":"x","type":"t",` + data + `} {}`, event.ReasonInvalidEnvelope},
		{"wrong spec version", `{"specversion":"0.3","id":"1","source":"x","type":"t",` + data + `}`, event.ReasonInvalidEnvelope},
		{"missing id", `{"specversion":"1.0","source":"x","type":"t",` + data + `}`, event.ReasonInvalidEnvelope},
		{"empty source", `{"specversion":"1.0","id":"1","source":"","type":"t",` + data + `}`, event.ReasonInvalidEnvelope},
		{"numeric type", `{"specversion":"1.0","id":"1","source":"x","type":5,` + data + `}`, event.ReasonInvalidEnvelope},
		{"bad time", `{"specversion":"1.0","id":"1","source":"x","type":"t","time":"yesterday",` + data + `}`, event.ReasonInvalidEnvelope},
		{"xml content", `{"specversion":"1.0","id":"1","source":"x","type":"t","datacontenttype":"application/xml",` + data + `}`, event.ReasonInvalidEnvelope},
		{"base64 data", `{"specversion":"1.0","id":"1","source":"x","type":"t","data_base64":"AAAA"}`, event.ReasonInvalidEnvelope},
		{"no data", `{"specversion":"1.0","id":"1","source":"x","type":"t"}`, event.ReasonInvalidEnvelope},
		{"bad extension name", `{"specversion":"1.0","id":"1","source":"x","type":"t","Bad-Name":1,` + data + `}`, event.ReasonInvalidEnvelope},
		{"NUL in id", `{"specversion":"1.0","id":"a\u0000b","source":"x","type":"t",` + data + `}`, event.ReasonInvalidEnvelope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := event.Decode([]byte(tt.raw))
			if got := reasonOf(err); got != tt.reason {
				t.Fatalf("Decode = %v (reason %q), want reason %q", err, got, tt.reason)
			}
			if err != nil && !errors.Is(err, event.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if tt.name == "extensions and all optional" && (env.Extensions["traceparent"] != "00-abc" || env.Extensions["partitionkey"] != float64(7)) {
				t.Errorf("extensions lost: %v", env.Extensions)
			}
			if tt.name == "extensions and all optional" {
				// Extensions survive a re-encode.
				raw, _ := json.Marshal(env)
				if !strings.Contains(string(raw), `"traceparent":"00-abc"`) {
					t.Errorf("re-encoded event lost extension: %s", raw)
				}
			}
		})
	}
}

const doneData = `{"job_id":"j","package_id":"p","site":"s","location":"l","attempt":1,"request_id":"r","path":"/p","size_bytes":1,"files":1,"duration_seconds":0.5,"already_present":false}`

func TestValidateDataRefuses(t *testing.T) {
	tests := []struct {
		name, typ, data, reason string
	}{
		{"unknown type", "ccat.staging.submit.v9", `{}`, event.ReasonUnknownType},
		{"missing field", event.TypeSubmit, `{"job_id":"j","packages":["p"],"requested_by":"me"}`, event.ReasonInvalidData},
		{"both site and location", event.TypeSubmit, `{"job_id":"j","packages":["p"],"destination":{"site":"a","location":"b"},"requested_by":"me"}`, event.ReasonInvalidData},
		{"empty packages", event.TypeSubmit, `{"job_id":"j","packages":[],"destination":{"site":"a"},"requested_by":"me"}`, event.ReasonInvalidData},
		{"job id with slash", event.TypeSubmit, `{"job_id":"../j","packages":["p"],"destination":{"site":"a"},"requested_by":"me"}`, event.ReasonInvalidData},
		{"site with dot", event.TypeSubmit, `{"job_id":"j","packages":["p"],"destination":{"site":"a.b"},"requested_by":"me"}`, event.ReasonInvalidData},
		{"bad priority", event.TypeSubmit, `{"job_id":"j","packages":["p"],"destination":{"site":"a"},"requested_by":"me","priority":"urgent"}`, event.ReasonInvalidData},
		{"negative size", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"k","size_bytes":-1,"checksum":"` + sum + `","format":"tar"}`, event.ReasonInvalidData},
		{"huge size", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"k","size_bytes":1e300,"checksum":"` + sum + `","format":"tar"}`, event.ReasonInvalidData},
		{"key with dotdot", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"a/../../etc","size_bytes":1,"checksum":"` + sum + `","format":"tar"}`, event.ReasonInvalidData},
		{"absolute key", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"/etc/passwd","size_bytes":1,"checksum":"` + sum + `","format":"tar"}`, event.ReasonInvalidData},
		{"NUL in key", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"a\u0000b","size_bytes":1,"checksum":"` + sum + `","format":"tar"}`, event.ReasonInvalidData},
		{"md5 checksum", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"k","size_bytes":1,"checksum":"md5:abc","format":"tar"}`, event.ReasonInvalidData},
		{"zip format", event.TypePackageArchived, `{"package_id":"p","location":"l","key":"k","size_bytes":1,"checksum":"` + sum + `","format":"zip"}`, event.ReasonInvalidData},
		{"unknown field", event.TypeDone, `{"surprise":1}`, event.ReasonInvalidData},
		{"quarantine outside the sidecar", event.TypeDone, strings.Replace(doneData, `"already_present":false`, `"already_present":false,"quarantined":"../x"`, 1), event.ReasonInvalidData},
		{"quarantine empty", event.TypeDone, strings.Replace(doneData, `"already_present":false`, `"already_present":false,"quarantined":""`, 1), event.ReasonInvalidData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := event.ValidateData(tt.typ, []byte(tt.data))
			if got := reasonOf(err); got != tt.reason {
				t.Errorf("ValidateData = %v, want reason %q", err, tt.reason)
			}
		})
	}
	// A done event may say where the staging moved what stood at the final path.
	q := strings.Replace(doneData, `"already_present":false`, `"already_present":false,"quarantined":".ccat-staging/quarantine/p-20261206T010000.000000000Z"`, 1)
	for _, d := range []string{doneData, q} {
		if err := event.ValidateData(event.TypeDone, []byte(d)); err != nil {
			t.Errorf("ValidateData(%s) = %v", d, err)
		}
	}
	// Valid keys with dots inside names are fine.
	ok := `{"package_id":"p","location":"l","key":"a/b..c/.hidden/x.tar","size_bytes":1,"checksum":"` + sum + `","format":"tar"}`
	if err := event.ValidateData(event.TypePackageArchived, []byte(ok)); err != nil {
		t.Errorf("ValidateData(%s) = %v", ok, err)
	}
}
