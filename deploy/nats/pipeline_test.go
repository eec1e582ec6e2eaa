package natscluster

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/deploy/provision"
	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/devkit/inproc"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// logBuffer collects the services' warnings, where a refused permission
// shows up ("nats async error … Permissions Violation").
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pipeline is the real planner, ledger and one stager per site, each with
// its own least-privilege user, on a three-node cluster provisioned by
// ccat-provision.
type pipeline struct {
	c     *cluster
	base  string
	api   ledgerapi.Client
	logs  *logBuffer
	sites []string
	ujs   jetstream.JetStream // the upstream user
}

type pipelineJob struct {
	id, site string
	pkgs     []string
}

func startPipeline(t *testing.T) *pipeline {
	t.Helper()
	p := &pipeline{sites: []string{"cologne", "us"}, logs: &logBuffer{}}
	c := startCluster(t)
	p.c = c
	p.base = t.TempDir()
	base, sites := p.base, p.sites
	topo, err := inproc.WriteTopology(base, inproc.TestTopology)
	if err != nil {
		t.Fatal(err)
	}
	for _, site := range sites {
		for _, d := range []string{"lta/raw", "processing"} {
			if err := os.MkdirAll(filepath.Join(base, site, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, ajs := connect(t, c, "admin")
	poll.Until(t, 20*time.Second, "the streams provisioned", func() error {
		return provision.Provision(t.Context(), ajs, sites, streams, zerolog.Nop())
	})
	_, p.ujs = connect(t, c, "upstream")

	dbURL := dbtest.New(t)
	log := zerolog.New(p.logs).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	env := map[string]string{
		"DATABASE_URL": dbURL, "TOPOLOGY_FILE": topo, "STREAM_REPLICAS": "3",
		"LEDGER_HTTP_ADDR": "127.0.0.1:0", "PLANNER_HTTP_ADDR": "off", "STAGER_HTTP_ADDR": "",
		"STAGER_WORKERS": "2", "STAGER_ACK_WAIT": "5s", "PLANNER_UNKNOWN_PACKAGE_DELAY": "200ms",
		// Cross-job dedup on, so its bucket and durable are exercised too.
		"PLANNER_DEDUP": "true",
	}
	// Each service connects as its own least-privilege user.
	// Registered after the cluster's and the database's cleanups, so the
	// services stop before those go away.
	pl := inproc.StartTest(t, inproc.Options{Sites: sites, Log: log,
		Env: func(service string) map[string]string {
			e := maps.Clone(env)
			e["NATS_URL"] = c.urls(service) // the users are named after the services
			e["STAGER_INSTANCE"] = "i1"
			return e
		}})
	p.api.BaseURL = pl.LedgerURL
	return p
}

// publish publishes as the upstream user, retrying through a leader
// election with the same event id.
func (p *pipeline) publish(t *testing.T, subj, id string, d event.Data) {
	t.Helper()
	for {
		pctx, pcancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := bus.Publish(pctx, p.ujs, subj, ev(t, id, d))
		pcancel()
		if err == nil {
			return
		}
		if t.Context().Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// archive writes perSite jobs' packages into each site's archive and
// announces them.
func (p *pipeline) archive(t *testing.T, perSite, pkgsPerJob int) []pipelineJob {
	t.Helper()
	var jobs []pipelineJob
	for _, site := range p.sites {
		for j := range perSite {
			jb := pipelineJob{id: fmt.Sprintf("job-%s-%d", site, j), site: site}
			for k := range pkgsPerJob {
				pkg := fmt.Sprintf("pkg-%s-%d-%d", site, j, k)
				key := "raw/" + pkg + ".tar"
				info, err := tarpkg.Write(filepath.Join(p.base, site, "lta", key), []tarpkg.Entry{
					{Path: "data/" + pkg + ".fits", Data: bytes.Repeat([]byte(pkg), 512)},
					{Path: "meta/manifest.txt", Data: []byte(pkg)},
				})
				if err != nil {
					t.Fatal(err)
				}
				p.publish(t, subject.Archived, "archived:"+pkg, event.PackageArchived{PackageID: pkg, Location: site + "-lta", Key: key,
					SizeBytes: info.SizeBytes, Checksum: info.Checksum, Format: "tar", Files: info.Files})
				jb.pkgs = append(jb.pkgs, pkg)
			}
			jobs = append(jobs, jb)
		}
	}
	return jobs
}

func (p *pipeline) submit(t *testing.T, jb pipelineJob) {
	t.Helper()
	p.publish(t, subject.Submit, "submit:"+jb.id, event.Submit{JobID: jb.id, Packages: jb.pkgs, Destination: event.Destination{Site: jb.site}, RequestedBy: "deploy-test"})
}

// check waits until every job is terminal and completed with its files in
// place, and that no service stopped or was refused anything.
func (p *pipeline) check(t *testing.T, jobs []pipelineJob, within time.Duration) {
	t.Helper()
	wctx, wcancel := context.WithTimeout(t.Context(), within)
	defer wcancel()
	for _, jb := range jobs {
		j, err := p.api.Wait(wctx, jb.id, 100*time.Millisecond, ledgerapi.Job.Terminal)
		if err != nil {
			t.Errorf("job %s: %v", jb.id, err)
			continue
		}
		if j.Status != "completed" {
			t.Errorf("job %s is %s (%s: %s), want completed", jb.id, j.Status, j.Reason, j.Message)
		}
		for _, pk := range j.Packages {
			if _, err := os.Stat(filepath.Join(pk.Path, "data", pk.PackageID+".fits")); pk.Status != "completed" || err != nil {
				t.Errorf("job %s package %s: %s at %q (%v)", jb.id, pk.PackageID, pk.Status, pk.Path, err)
			}
		}
	}
	logs := p.logs.String()
	if t.Failed() || testing.Verbose() {
		t.Logf("service warnings:\n%s", logs)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "Permissions Violation") {
			t.Errorf("refused: %s", l)
		}
	}
}

// TestPipelineOnCluster: the services as deployed, each with its own user,
// run jobs of both sites to completion without one refused call. (The same
// with a node killed mid-flight is TestPipelineFailover, -tags long: the
// planner's recovery takes up to a minute, see its comment.)
func TestPipelineOnCluster(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	jobs := p.archive(t, 2, 2)
	for _, jb := range jobs {
		p.submit(t, jb)
	}
	p.check(t, jobs, 40*time.Second)
	// The same packages again under new jobs: answered already_present
	// from the stager's leader read of each copy's lease, which the
	// stager users must be allowed too.
	var again []pipelineJob
	for _, jb := range jobs {
		jb.id += "-again"
		p.submit(t, jb)
		again = append(again, jb)
	}
	p.check(t, again, 40*time.Second)
}
