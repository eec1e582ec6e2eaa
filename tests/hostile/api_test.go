package hostile

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

// apiToken is the one bearer token the ledger accepts in this suite.
const apiToken = "hostile-suite-token-0123456789"

type apiCase struct {
	name   string
	method string // GET when empty
	path   string
	auth   string // Authorization header; "" sends none; "token" sends the valid one
	status int
	// jobs, when >= 0 on a 200 list answer, is the exact number of jobs
	// returned: an injection that matched anything would show here.
	jobs int
}

func cursorOf(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }

func apiCases() []apiCase {
	const bearer = "token"
	n := -1
	return []apiCase{
		// Authentication.
		{name: "no-token", path: "/v1/jobs", status: 401, jobs: n},
		{name: "wrong-token", path: "/v1/jobs", auth: "Bearer not-the-token", status: 401, jobs: n},
		{name: "token-prefix-only", path: "/v1/jobs", auth: "Bearer " + apiToken[:10], status: 401, jobs: n},
		{name: "token-with-suffix", path: "/v1/jobs", auth: "Bearer " + apiToken + "x", status: 401, jobs: n},
		{name: "basic-scheme", path: "/v1/jobs", auth: "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+apiToken)), status: 401, jobs: n},
		{name: "empty-bearer", path: "/v1/jobs", auth: "Bearer ", status: 401, jobs: n},
		{name: "no-token-job", path: "/v1/jobs/h-conflict", status: 401, jobs: n},
		{name: "no-token-status-page", path: "/", status: 401, jobs: n},
		{name: "no-token-stream", path: "/v1/stream", status: 401, jobs: n},
		{name: "token-in-query", path: "/v1/jobs?access_token=" + apiToken + "&limit=1", status: 200, jobs: 1},
		{name: "healthz-open", path: "/healthz", status: 200, jobs: n},
		// SQL-injection-shaped filters: refused when the parameter has a
		// closed vocabulary, otherwise bound as a value that matches nothing.
		{name: "status-injection", path: "/v1/jobs?status=completed'%20OR%20'1'='1", auth: bearer, status: 400, jobs: n},
		{name: "sort-injection", path: "/v1/jobs?sort=created_at%3BDROP%20TABLE%20jobs", auth: bearer, status: 400, jobs: n},
		// A raw ';' makes Go's query parser drop the pair: the filter is
		// simply absent.
		{name: "raw-semicolon-dropped", path: "/v1/jobs?site=x;DROP%20TABLE%20jobs&limit=1", auth: bearer, status: 200, jobs: 1},
		{name: "site-injection", path: "/v1/jobs?site=x'%20OR%20'1'='1", auth: bearer, status: 200, jobs: 0},
		{name: "site-comment", path: "/v1/jobs?site=cologne'--", auth: bearer, status: 200, jobs: 0},
		{name: "location-union", path: "/v1/jobs?location=x'%20UNION%20SELECT%20*%20FROM%20pg_user--", auth: bearer, status: 200, jobs: 0},
		{name: "requested-by-drop", path: "/v1/jobs?requested_by='%3BDROP%20TABLE%20jobs%3B--", auth: bearer, status: 200, jobs: 0},
		{name: "q-injection", path: "/v1/jobs?q=%25'%20OR%201=1--", auth: bearer, status: 200, jobs: 0},
		{name: "q-like-wildcard", path: "/v1/jobs?q=%25%25", auth: bearer, status: 200, jobs: 0},
		{name: "site-nul", path: "/v1/jobs?site=%00", auth: bearer, status: 400, jobs: n},
		{name: "q-nul", path: "/v1/jobs?q=a%00b", auth: bearer, status: 400, jobs: n},
		{name: "site-invalid-utf8", path: "/v1/jobs?site=%ff%fe", auth: bearer, status: 400, jobs: n},
		// Page sizes.
		{name: "limit-huge", path: "/v1/jobs?limit=1000000000", auth: bearer, status: 400, jobs: n},
		{name: "limit-overflow", path: "/v1/jobs?limit=99999999999999999999999", auth: bearer, status: 400, jobs: n},
		{name: "limit-zero", path: "/v1/jobs?limit=0", auth: bearer, status: 400, jobs: n},
		{name: "limit-negative", path: "/v1/jobs?limit=-1", auth: bearer, status: 400, jobs: n},
		{name: "limit-not-a-number", path: "/v1/jobs?limit=ten", auth: bearer, status: 400, jobs: n},
		{name: "limit-max", path: "/v1/jobs?limit=500", auth: bearer, status: 200, jobs: n},
		// Cursors.
		{name: "cursor-garbage", path: "/v1/jobs?cursor=!!!!", auth: bearer, status: 400, jobs: n},
		{name: "cursor-not-json", path: "/v1/jobs?cursor=" + cursorOf("hello"), auth: bearer, status: 400, jobs: n},
		{name: "cursor-empty-id", path: "/v1/jobs?cursor=" + cursorOf(`{"t":"2026-01-01T00:00:00Z","id":""}`), auth: bearer, status: 400, jobs: n},
		{name: "cursor-bad-time", path: "/v1/jobs?cursor=" + cursorOf(`{"t":"soon","id":"x"}`), auth: bearer, status: 400, jobs: n},
		{name: "cursor-injection", path: "/v1/jobs?cursor=" + cursorOf(`{"t":"2000-01-01T00:00:00Z","id":"x' OR '1'='1"}`), auth: bearer, status: 200, jobs: 0},
		{name: "cursor-nul-id", path: "/v1/jobs?cursor=" + cursorOf(`{"t":"2030-01-01T00:00:00Z","id":"a\u0000b"}`), auth: bearer, status: 400, jobs: n},
		{name: "cursor-huge", path: "/v1/jobs?cursor=" + strings.Repeat("A", 64<<10), auth: bearer, status: 400, jobs: n},
		{name: "since-not-a-time", path: "/v1/jobs?since=yesterday", auth: bearer, status: 400, jobs: n},
		// Path parameters.
		{name: "job-id-traversal", path: "/v1/jobs/..%2f..%2fetc%2fpasswd", auth: bearer, status: 400, jobs: n},
		{name: "job-id-injection", path: "/v1/jobs/x'%20OR%20'1'='1", auth: bearer, status: 400, jobs: n},
		{name: "job-id-nul", path: "/v1/jobs/a%00b", auth: bearer, status: 400, jobs: n},
		{name: "job-id-too-long", path: "/v1/jobs/" + strings.Repeat("j", 4096), auth: bearer, status: 400, jobs: n},
		{name: "job-unknown", path: "/v1/jobs/never-submitted", auth: bearer, status: 404, jobs: n},
		{name: "job-events-injection", path: "/v1/jobs/x';--/events", auth: bearer, status: 400, jobs: n},
		{name: "package-traversal", path: "/v1/packages/..%2f..%2fetc", auth: bearer, status: 400, jobs: n},
		{name: "site-injection-path", path: "/v1/sites/x'%20OR%20'1'='1", auth: bearer, status: 400, jobs: n},
		{name: "unknown-endpoint", path: "/v1/admin", auth: bearer, status: 404, jobs: n},
		{name: "post-is-not-allowed", method: http.MethodPost, path: "/v1/jobs", auth: bearer, status: 405, jobs: n},
		{name: "delete-is-not-allowed", method: http.MethodDelete, path: "/v1/jobs/h-conflict", auth: bearer, status: 405, jobs: n},
	}
}

// apiClient bounds every request: a handler that hangs is a failure of
// its case, not of the suite.
var apiClient = &http.Client{Timeout: 20 * time.Second}

// testAPI sends every API case and checks the exact status, that errors
// are RFC 9457 problems, and that list answers hold exactly what they may.
func testAPI(t *testing.T, s *system) {
	for _, c := range apiCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := c.method
			if m == "" {
				m = http.MethodGet
			}
			req, err := http.NewRequestWithContext(t.Context(), m, s.api.BaseURL+c.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			switch c.auth {
			case "":
			case "token":
				req.Header.Set("Authorization", "Bearer "+apiToken)
			default:
				req.Header.Set("Authorization", c.auth)
			}
			resp, err := apiClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if resp.StatusCode != c.status {
				t.Fatalf("%s %.120s: %d, want %d: %.300s", m, c.path, resp.StatusCode, c.status, body)
			}
			ct := resp.Header.Get("Content-Type")
			if c.status >= 400 && c.status != http.StatusMethodNotAllowed {
				var p ledgerapi.Problem
				if !strings.HasPrefix(ct, "application/problem+json") || json.Unmarshal(body, &p) != nil || p.Status != c.status || p.Title == "" {
					t.Errorf("error answer is not a problem+json with status %d: %s %.300s", c.status, ct, body)
				}
				if c.status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
			if c.status == 200 && c.jobs >= 0 {
				var l ledgerapi.JobList
				if err := json.Unmarshal(body, &l); err != nil {
					t.Fatalf("list answer: %v: %.300s", err, body)
				}
				if len(l.Jobs) != c.jobs {
					t.Errorf("%d jobs, want %d", len(l.Jobs), c.jobs)
				}
			}
		})
	}
}
