package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/services/ledger/consume"
	"github.com/ccatobs/ccat-staging/services/ledger/httpapi"
	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/rs/zerolog"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// fakeLive stands in for NATS: one live stager at cologne and a backlog.
type fakeLive struct{}

func (fakeLive) Backlog(_ context.Context, site string) ([]ledgerapi.Backlog, error) {
	return []ledgerapi.Backlog{{Durable: "stager-" + site + "-normal", Priority: "normal", Pending: 7, AckPending: 2}}, nil
}

func (fakeLive) Stagers(context.Context) ([]heartbeat.Beat, error) {
	now := time.Now().UTC()
	return []heartbeat.Beat{{Site: "cologne", Instance: "h1", Workers: 2, StartedAt: now, At: now}}, nil
}

func newServer(t *testing.T, tokens ...string) (*httptest.Server, *store.Store) {
	t.Helper()
	bdb, err := db.Open(t.Context(), dbtest.New(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close() })
	st := store.New(bdb)
	if _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	var evs []store.Event
	for _, j := range []scenario.Job{{ID: "done", Packages: 2, Progress: 1, NoSource: true, Release: true}, {ID: "stopped", Packages: 2, Cancel: true}} {
		msgs, err := scenario.Events(j)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			raw, _ := json.Marshal(m.Env)
			ev, _, ok := consume.Classify("STAGING_EVENTS", m.Subject, uint64(i+1), time.Now(), raw)
			if !ok {
				t.Fatalf("invalid scenario event %s", m.Env.ID)
			}
			evs = append(evs, ev)
		}
	}
	// A job half-way: started and progressing.
	msgs, _ := scenario.Events(scenario.Job{ID: "running", Packages: 1, Progress: 2})
	for i, m := range msgs[:len(msgs)-1] {
		raw, _ := json.Marshal(m.Env)
		ev, _, _ := consume.Classify("STAGING_EVENTS", m.Subject, uint64(100+i), time.Now(), raw)
		evs = append(evs, ev)
	}
	poison := store.Poison{Stream: "STAGING_EVENTS", StreamSeq: 999, Subject: "staging.done", Reason: "invalid_envelope", Message: "x", Raw: []byte("x")}
	if _, err := st.Apply(t.Context(), evs, []store.Poison{poison}); err != nil {
		t.Fatal(err)
	}
	h := httpapi.NewServer(httpapi.Deps{Store: st, Live: fakeLive{}, Log: zerolog.New(io.Discard), Registry: obs.NewRegistry(),
		Checks:  map[string]obs.Check{"database": func(ctx context.Context) error { return bdb.PingContext(ctx) }},
		Version: "test", Tokens: tokens, CORSOrigins: []string{"https://dash.example"}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, st
}

type openAPIDoc struct {
	Paths map[string]map[string]struct {
		Responses map[string]struct {
			Ref     string `json:"$ref"`
			Content map[string]struct {
				Schema map[string]any `json:"schema"`
			} `json:"content"`
		} `json:"responses"`
	} `json:"paths"`
}

func TestEveryRouteIsDocumented(t *testing.T) {
	var doc openAPIDoc
	if err := json.Unmarshal(httpapi.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	routes := map[string]bool{}
	for _, r := range httpapi.Routes {
		routes[r.Method+" "+r.Pattern] = true
		if _, ok := doc.Paths[r.Pattern][strings.ToLower(r.Method)]; !ok {
			t.Errorf("route %s %s is not in openapi.json", r.Method, r.Pattern)
		}
	}
	for path, ops := range doc.Paths {
		for m := range ops {
			if !routes[strings.ToUpper(m)+" "+path] {
				t.Errorf("openapi.json documents %s %s, which is not a route", m, path)
			}
		}
	}
}

// TestResponsesMatchTheirSchemas calls every JSON endpoint and validates the
// answer against the schema openapi.json declares for its status code.
func TestResponsesMatchTheirSchemas(t *testing.T) {
	srv, _ := newServer(t)
	c := jsonschema.NewCompiler()
	root, err := jsonschema.UnmarshalJSON(bytes.NewReader(httpapi.OpenAPI))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("mem://openapi.json", root); err != nil {
		t.Fatal(err)
	}
	var doc openAPIDoc
	if err := json.Unmarshal(httpapi.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pattern, path string
		code          int
	}{
		{"/v1/jobs", "/v1/jobs", 200},
		{"/v1/jobs", "/v1/jobs?limit=1&sort=updated", 200},
		{"/v1/jobs", "/v1/jobs?limit=0", 400},
		{"/v1/jobs/{job_id}", "/v1/jobs/done", 200},
		{"/v1/jobs/{job_id}", "/v1/jobs/running", 200},
		{"/v1/jobs/{job_id}", "/v1/jobs/stopped", 200},
		{"/v1/jobs/{job_id}", "/v1/jobs/nope", 404},
		{"/v1/jobs/{job_id}/events", "/v1/jobs/done/events", 200},
		{"/v1/jobs/{job_id}/explain", "/v1/jobs/running/explain", 200},
		{"/v1/packages/{package_id}", "/v1/packages/" + scenario.PackageID("done", 0), 200},
		{"/v1/packages/{package_id}", "/v1/packages/nope", 404},
		{"/v1/sites", "/v1/sites", 200},
		{"/v1/sites/{site}", "/v1/sites/cologne", 200},
		{"/v1/sites/{site}", "/v1/sites/Bad!", 400},
		{"/v1/jobs", "/v1/jobs?cursor=eyJ0IjoiMjAzMC0wMS0wMVQwMDowMDowMFoiLCJpZCI6ImFcdTAwMDBiIn0", 400}, // id "a\u0000b"
		{"/v1/poison", "/v1/poison", 200},
		{"/readyz", "/readyz", 200},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code {
				t.Fatalf("GET %s = %d %s, want %d", tt.path, resp.StatusCode, body, tt.code)
			}
			r, ok := doc.Paths[tt.pattern]["get"].Responses[fmt.Sprint(tt.code)]
			if !ok {
				t.Fatalf("openapi.json has no %d response for %s", tt.code, tt.pattern)
			}
			ct := strings.Split(resp.Header.Get("Content-Type"), ";")[0]
			var ptr string
			if r.Ref != "" {
				ptr = strings.TrimPrefix(r.Ref, "#") + "/content/" + strings.ReplaceAll(ct, "/", "~1") + "/schema"
			} else {
				if _, ok := r.Content[ct]; !ok {
					t.Fatalf("openapi.json declares no %s content for %d of %s", ct, tt.code, tt.pattern)
				}
				ptr = "/paths/" + strings.ReplaceAll(strings.ReplaceAll(tt.pattern, "~", "~0"), "/", "~1") + "/get/responses/" +
					fmt.Sprint(tt.code) + "/content/" + strings.ReplaceAll(ct, "/", "~1") + "/schema"
			}
			sch, err := c.Compile("mem://openapi.json#" + ptr)
			if err != nil {
				t.Fatalf("compile %s: %v", ptr, err)
			}
			inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("answer is not JSON: %v", err)
			}
			if err := sch.Validate(inst); err != nil {
				t.Errorf("GET %s does not match its schema: %v\n%s", tt.path, err, body)
			}
		})
	}
}

func TestAuthAndCORS(t *testing.T) {
	tests := []struct {
		name   string
		tokens []string
		hdr    map[string]string
		path   string
		code   int
	}{
		{"open API", nil, nil, "/v1/jobs", 200},
		{"token required", []string{"t1", "t2"}, nil, "/v1/jobs", 401},
		{"second token", []string{"t1", "t2"}, map[string]string{"Authorization": "Bearer t2"}, "/v1/jobs", 200},
		{"basic auth is not a token", []string{"t1"}, map[string]string{"Authorization": "Basic dDE6"}, "/v1/jobs", 401},
		{"query token for SSE clients", []string{"t1"}, nil, "/v1/jobs/done?access_token=t1", 200},
		{"status page needs the token", []string{"t1"}, nil, "/", 401},
		{"health stays open", []string{"t1"}, nil, "/healthz", 200},
		{"openapi stays open", []string{"t1"}, nil, "/v1/openapi.json", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, tt.tokens...)
			req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+tt.path, nil)
			for k, v := range tt.hdr {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.code {
				t.Errorf("GET %s = %d, want %d", tt.path, resp.StatusCode, tt.code)
			}
		})
	}
	srv, _ := newServer(t)
	for _, m := range []string{"POST", "DELETE", "PUT"} {
		req, _ := http.NewRequestWithContext(t.Context(), m, srv.URL+"/v1/jobs/done", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /v1/jobs/done = %d, want 405 (the API is read-only)", m, resp.StatusCode)
		}
	}
	req, _ := http.NewRequestWithContext(t.Context(), "OPTIONS", srv.URL+"/v1/jobs", nil)
	req.Header.Set("Origin", "https://dash.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://dash.example" {
		t.Errorf("preflight = %d %v", resp.StatusCode, resp.Header)
	}
	req.Header.Set("Origin", "https://evil.example")
	req.Method = "GET"
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("CORS allowed an unlisted origin")
	}
}

func TestStreamSendsChangedJobs(t *testing.T) {
	bdb, err := db.Open(t.Context(), dbtest.New(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	st := store.New(bdb)
	if _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	broker := httpapi.NewBroker()
	srv := httptest.NewServer(httpapi.NewServer(httpapi.Deps{Store: st, Log: zerolog.New(io.Discard), Registry: obs.NewRegistry(), Broker: broker}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q", ct)
	}
	msgs, _ := scenario.Events(scenario.Job{ID: "live", Packages: 1})
	var evs []store.Event
	for i, m := range msgs {
		raw, _ := json.Marshal(m.Env)
		ev, _, _ := consume.Classify("STAGING_EVENTS", m.Subject, uint64(i+1), time.Now(), raw)
		evs = append(evs, ev)
	}
	res, err := st.Apply(t.Context(), evs, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The subscriber may not be registered yet when the first notice goes
	// out; keep notifying until the event arrives.
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 1<<16)
		var acc string
		for {
			n, err := resp.Body.Read(b)
			acc += string(b[:n])
			if m := regexp.MustCompile(`event: job\ndata: (.*)\n`).FindStringSubmatch(acc); m != nil {
				got <- m[1]
				return
			}
			if err != nil {
				return
			}
		}
	}()
	deadline := time.After(10 * time.Second)
	for {
		broker.Publish(res.Jobs)
		select {
		case data := <-got:
			var j ledgerapi.Job
			if err := json.Unmarshal([]byte(data), &j); err != nil || j.JobID != "live" || j.Status != "completed" {
				t.Errorf("stream event = %s (%v)", data, err)
			}
			return
		case <-deadline:
			t.Fatal("no job event on the stream")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// countingLive counts the rounds of JetStream lookups a site summary makes.
type countingLive struct {
	fakeLive
	mu    sync.Mutex
	calls int
}

func (c *countingLive) Stagers(ctx context.Context) ([]heartbeat.Beat, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	return c.fakeLive.Stagers(ctx)
}

// A polled site summary is computed once per SiteCache, however many
// requests arrive at once; a negative SiteCache computes every request.
func TestSiteSummaryCache(t *testing.T) {
	_, st := newServer(t)
	tests := []struct {
		name      string
		cache     time.Duration
		wantCalls int
	}{
		{"cached", time.Hour, 1},
		{"not cached", -1, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			live := &countingLive{}
			srv := httptest.NewServer(httpapi.NewServer(httpapi.Deps{Store: st, Live: live, Log: zerolog.New(io.Discard),
				Registry: obs.NewRegistry(), SiteCache: tt.cache}))
			defer srv.Close()
			var wg sync.WaitGroup
			for range 20 {
				wg.Go(func() {
					resp, err := http.Get(srv.URL + "/v1/sites/cologne")
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("status %d", resp.StatusCode)
					}
				})
			}
			wg.Wait()
			if live.calls != tt.wantCalls {
				t.Errorf("computed %d times, want %d", live.calls, tt.wantCalls)
			}
		})
	}
}
