// Package httpapi is the ledger's read-only HTTP API: JSON under /v1, RFC 9457
// problems for every error, the status page at /, and the operational
// endpoints from shared/obs. It never writes to the projection.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Live answers what only NATS knows: stager backlogs and live instances.
type Live interface {
	// Backlog returns a site's stager consumers, highest priority first;
	// consumers that do not exist yet are left out.
	Backlog(ctx context.Context, site string) ([]ledgerapi.Backlog, error)
	// Stagers returns the live stager instances of every site.
	Stagers(ctx context.Context) ([]heartbeat.Beat, error)
}

// Deps is everything the API needs.
type Deps struct {
	Store    *store.Store
	Live     Live // nil: backlog and stagers are reported as unknown
	Log      zerolog.Logger
	Registry *prometheus.Registry
	Checks   map[string]obs.Check
	Version  string
	// Tokens, when not empty, are the bearer tokens accepted on /v1 and /.
	Tokens []string
	// CORSOrigins lists origins allowed to read the API from a browser;
	// "*" allows any.
	CORSOrigins []string
	// Timeout bounds each request's work (not SSE streams).
	Timeout time.Duration
	// MaxPage is the largest page size; DefaultPage the size when unset.
	MaxPage, DefaultPage int
	Broker               *Broker
	Now                  func() time.Time
	// SiteCache is how long a computed site summary is served again (0
	// means 1 s, negative never): a dashboard polling it at hundreds of
	// requests per second then costs one database aggregate and one round
	// of JetStream consumer lookups per interval, not per request.
	SiteCache time.Duration
	// Retry is the stagers' redelivery policy (bus.RetryFromEnv, from the
	// same STAGER_RETRY_* variables the stagers read): explain's "retry at
	// about" is computed with it. Zero: bus.DefaultRetry.
	Retry bus.Retry

	sites *siteCache
}

// NewServer returns the whole API as one handler.
func NewServer(d Deps) http.Handler {
	if d.Timeout <= 0 {
		d.Timeout = 10 * time.Second
	}
	if d.MaxPage <= 0 {
		d.MaxPage = 500
	}
	if d.DefaultPage <= 0 {
		d.DefaultPage = 50
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Broker == nil {
		d.Broker = NewBroker()
	}
	if d.SiteCache == 0 {
		d.SiteCache = time.Second
	}
	d.sites = &siteCache{ttl: d.SiteCache}
	mux := http.NewServeMux()
	addRoutes(mux, d)
	return logRequests(d.Log, cors(d.CORSOrigins, saneInput(mux)))
}

// saneInput refuses paths and query values PostgreSQL could not take as
// text (NUL, invalid UTF-8), so they get a 400 instead of a database error.
func saneInput(h http.Handler) http.Handler {
	bad := func(s string) bool { return strings.ContainsRune(s, 0) || !utf8.ValidString(s) }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if bad(r.URL.Path) {
			writeProblem(w, r, http.StatusBadRequest, "bad-request", "Bad request", "the path contains NUL or invalid UTF-8")
			return
		}
		for k, vs := range r.URL.Query() {
			for _, v := range vs {
				if bad(k) || bad(v) {
					writeProblem(w, r, http.StatusBadRequest, "bad-request", "Bad request",
						"query parameters must be UTF-8 text without NUL")
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// encode is the only code that writes JSON on the wire.
func encode[T any](w http.ResponseWriter, status int, v T) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the status is sent; nothing useful to do on error
}

const problemBase = "https://github.com/ccatobs/ccat-staging/blob/main/services/ledger/README.md#"

func writeProblem(w http.ResponseWriter, r *http.Request, status int, slug, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ledgerapi.Problem{Type: problemBase + slug, Title: title, Status: status, Detail: detail,
		Instance: r.URL.Path})
}

func internalError(w http.ResponseWriter, r *http.Request, log zerolog.Logger, err error) {
	if r.Context().Err() != nil {
		writeProblem(w, r, http.StatusServiceUnavailable, "timeout", "Request timed out", "the request took too long")
		return
	}
	log.Error().Err(err).Str("path", r.URL.Path).Msg("request failed")
	writeProblem(w, r, http.StatusInternalServerError, "internal", "Internal error", "see the ledger's log")
}

// withTimeout bounds a handler's work; the database calls honour the context.
func withTimeout(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// requireToken enforces bearer-token auth when tokens are configured.
func requireToken(tokens []string, h http.Handler) http.Handler {
	if len(tokens) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if ok {
			for _, t := range tokens {
				if subtle.ConstantTimeCompare([]byte(got), []byte(t)) == 1 {
					h.ServeHTTP(w, r)
					return
				}
			}
		}
		// EventSource cannot send headers: the status page's stream passes
		// the token as a query parameter instead.
		if q := r.URL.Query().Get("access_token"); q != "" {
			for _, t := range tokens {
				if subtle.ConstantTimeCompare([]byte(q), []byte(t)) == 1 {
					h.ServeHTTP(w, r)
					return
				}
			}
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="ledger"`)
		writeProblem(w, r, http.StatusUnauthorized, "unauthorized", "Unauthorized", "a valid bearer token is required")
	})
}

func cors(origins []string, h http.Handler) http.Handler {
	if len(origins) == 0 {
		return h
	}
	any := slices.Contains(origins, "*")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := r.Header.Get("Origin")
		if o != "" && (any || slices.Contains(origins, o)) {
			if any {
				w.Header().Set("Access-Control-Allow-Origin", "*")
			} else {
				w.Header().Set("Access-Control-Allow-Origin", o)
				w.Header().Add("Vary", "Origin")
			}
			w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
			w.Header().Set("Access-Control-Allow-Methods", "GET, OPTIONS")
			w.Header().Set("Access-Control-Max-Age", "600")
		}
		if r.Method == http.MethodOptions && o != "" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Flush lets SSE through the recorder.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func logRequests(log zerolog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).
			Dur("took", time.Since(start)).Msg("http request")
	})
}
