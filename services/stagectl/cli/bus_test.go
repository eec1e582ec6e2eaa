package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// provisioned starts a JetStream server with the system's streams.
func provisioned(t *testing.T) *bustest.Server {
	t.Helper()
	srv := bustest.New(t)
	if err := bus.Provision(t.Context(), srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	return srv
}

// lastEvent returns the last event on subj, checked against its schema and
// its Nats-Msg-Id.
func lastEvent(t *testing.T, srv *bustest.Server, stream, subj string) event.Envelope {
	t.Helper()
	st, err := srv.JS.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(t.Context(), subj)
	if err != nil {
		t.Fatalf("last message on %s: %v", subj, err)
	}
	env, err := event.Validate(m.Data)
	if err != nil {
		t.Fatalf("%s: %v\n%s", subj, err, m.Data)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != env.ID {
		t.Errorf("Nats-Msg-Id %q, CloudEvent id %q", got, env.ID)
	}
	if env.Source != Source {
		t.Errorf("source %q", env.Source)
	}
	return env
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestSubmitPublishes(t *testing.T) {
	srv := provisioned(t)
	env := map[string]string{"NATS_URL": srv.URL, "USER": "alice"}
	r := stagectl(t, env, "p2\n# comment\np3\n", "submit", "--site", "cologne", "--package", "p1", "--from-file", "-",
		"--priority", "high", "--note", "for the pipeline", "--job-id", "job-1")
	if r.code != 0 || r.stdout != "job-1\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	ev := lastEvent(t, srv, subject.EventsStream, subject.Submit)
	if !uuidRE.MatchString(ev.ID) {
		t.Errorf("event id %q is not a UUID", ev.ID)
	}
	d, err := event.DataAs[event.Submit](ev)
	if err != nil {
		t.Fatal(err)
	}
	want := event.Submit{JobID: "job-1", Packages: []string{"p1", "p2", "p3"}, Destination: event.Destination{Site: "cologne"},
		RequestedBy: "alice", Priority: "high", Note: "for the pipeline"}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("submit =\n%+v, want\n%+v", d, want)
	}

	// A generated job id, bare package ids and --json.
	r = stagectl(t, env, "", "submit", "--location", "us-processing", "p9", "--json", "--requested-by", "bob")
	var out struct {
		JobID   string `json:"job_id"`
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); r.code != 0 || err != nil {
		t.Fatalf("exit %d, %v, stdout %q stderr %q", r.code, err, r.stdout, r.stderr)
	}
	ev = lastEvent(t, srv, subject.EventsStream, subject.Submit)
	d, _ = event.DataAs[event.Submit](ev)
	if ev.ID != out.EventID || d.JobID != out.JobID || !strings.HasPrefix(d.JobID, "job-") || d.RequestedBy != "bob" || d.Destination.Location != "us-processing" {
		t.Errorf("printed %+v, published %s %+v", out, ev.ID, d)
	}
}

func TestPublishWithoutStreams(t *testing.T) {
	srv := bustest.New(t) // not provisioned: nothing takes staging.submit
	r := stagectl(t, map[string]string{"NATS_URL": srv.URL}, "", "submit", "--site", "cologne", "p1")
	if r.code != ExitError || !strings.Contains(r.stderr, "are the services provisioned") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = stagectl(t, map[string]string{"NATS_URL": "nats://127.0.0.1:1"}, "", "cancel", "job-1")
	if r.code != ExitError || !strings.Contains(r.stderr, "connect to nats") {
		t.Errorf("no server: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestCancelRelease(t *testing.T) {
	srv := provisioned(t)
	env := map[string]string{"NATS_URL": srv.URL, "USER": "carol"}
	tests := []struct {
		args    []string
		subj    string
		wantID  string
		want    event.Data
		wantOut string
	}{
		{[]string{"cancel", "job-7", "--reason", "wrong packages"}, subject.Cancel, "cancel:job-7",
			event.Cancel{JobID: "job-7", Reason: "wrong packages", RequestedBy: "carol"}, "cancel requested for job job-7 (event cancel:job-7)\n"},
		{[]string{"release", "job-7", "--requested-by", "dave"}, subject.Release, "release:job-7",
			event.Release{JobID: "job-7", RequestedBy: "dave"}, "release requested for job job-7 (event release:job-7)\n"},
	}
	for _, tc := range tests {
		t.Run(tc.args[0], func(t *testing.T) {
			r := stagectl(t, env, "", tc.args...)
			if r.code != 0 || r.stdout != tc.wantOut {
				t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			ev := lastEvent(t, srv, subject.EventsStream, tc.subj)
			if ev.ID != tc.wantID || ev.Type != tc.want.EventType() {
				t.Errorf("event %s %s", ev.ID, ev.Type)
			}
			got := reflect.New(reflect.TypeOf(tc.want))
			if err := json.Unmarshal(ev.Data, got.Interface()); err != nil || !reflect.DeepEqual(got.Elem().Interface(), tc.want) {
				t.Errorf("data %s, want %+v", ev.Data, tc.want)
			}
		})
	}
}

func TestArchiveAnnounce(t *testing.T) {
	srv := provisioned(t)
	dir := t.TempDir()
	tarFile := filepath.Join(dir, "pkg-42.tar")
	info, err := tarpkg.Write(tarFile, tarpkg.Tree(42, 5, 20000))
	if err != nil {
		t.Fatal(err)
	}
	topo := filepath.Join(dir, "topology.yaml")
	if err := os.WriteFile(topo, fmt.Appendf(nil, "sites:\n  - name: cologne\n    locations:\n      - name: cologne-lta\n        type: long_term_archive\n        storage: disk\n        path: %s/lta\n", dir), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NATS_URL": srv.URL, "TOPOLOGY_FILE": topo}

	r := stagectl(t, env, "", "archive", "announce", "--location", "cologne-lta", "--key", "raw/pkg-42.tar", "--file", tarFile, "--json")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var a Announcement
	if err := json.Unmarshal([]byte(r.stdout), &a); err != nil {
		t.Fatal(err)
	}
	wantID := "archived:cologne-lta:pkg-42:" + strings.TrimPrefix(info.Checksum, "sha256:")[:16]
	want := Announcement{EventID: wantID, PackageID: "pkg-42", Location: "cologne-lta", Key: "raw/pkg-42.tar",
		SizeBytes: info.SizeBytes, Checksum: info.Checksum, Files: 5, Manifest: "inline"}
	if a != want {
		t.Errorf("printed %+v, want %+v", a, want)
	}
	ev := lastEvent(t, srv, subject.ArchiveStream, subject.Archived)
	d, err := event.DataAs[event.PackageArchived](ev)
	if err != nil {
		t.Fatal(err)
	}
	if ev.ID != wantID || d.SizeBytes != info.SizeBytes || d.Checksum != info.Checksum || d.Format != "tar" || !reflect.DeepEqual(d.Files, info.Files) {
		t.Errorf("event %s: %+v", ev.ID, d)
	}

	// The table form, with an explicit package id.
	r = stagectl(t, env, "", "archive", "announce", "--location", "cologne-lta", "--key", "k.tar", "--file", tarFile, "--package-id", "other")
	if r.code != 0 || !strings.Contains(r.stdout, "PACKAGE") || !strings.Contains(r.stdout, "archived:cologne-lta:other:") {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	bad := []struct {
		name string
		args []string
		code int
	}{
		{"location not in topology", []string{"--location", "nowhere", "--key", "k", "--file", tarFile}, ExitUsage},
		{"not a tar", []string{"--location", "cologne-lta", "--key", "k", "--file", topo}, ExitError},
		{"no such file", []string{"--location", "cologne-lta", "--key", "k", "--file", filepath.Join(dir, "none.tar")}, ExitError},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := stagectl(t, env, "", append([]string{"archive", "announce"}, tc.args...)...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
		})
	}
}
