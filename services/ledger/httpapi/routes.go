package httpapi

import (
	"net/http"

	"github.com/ccatobs/ccat-staging/shared/obs"
)

// Route is one entry of the API surface; Routes lists them all so the
// OpenAPI test can check that every one is documented.
type Route struct {
	Method, Pattern string
}

// Routes is the whole API surface (besides /healthz, /readyz and /metrics,
// which shared/obs mounts and which are documented too).
var Routes = []Route{
	{"GET", "/"},
	{"GET", "/v1/openapi.json"},
	{"GET", "/v1/jobs"},
	{"GET", "/v1/jobs/{job_id}"},
	{"GET", "/v1/jobs/{job_id}/events"},
	{"GET", "/v1/jobs/{job_id}/explain"},
	{"GET", "/v1/packages/{package_id}"},
	{"GET", "/v1/sites"},
	{"GET", "/v1/sites/{site}"},
	{"GET", "/v1/poison"},
	{"GET", "/v1/stream"},
	{"GET", "/healthz"},
	{"GET", "/readyz"},
	{"GET", "/metrics"},
}

// addRoutes wires every route; keep it on one screen.
func addRoutes(mux *http.ServeMux, d Deps) {
	api := func(h http.Handler) http.Handler { return requireToken(d.Tokens, withTimeout(d.Timeout, h)) }
	mux.Handle("GET /{$}", requireToken(d.Tokens, withTimeout(d.Timeout, handleStatusPage(d))))
	mux.Handle("GET /v1/openapi.json", handleOpenAPI())
	mux.Handle("GET /v1/jobs", api(handleJobList(d)))
	mux.Handle("GET /v1/jobs/{job_id}", api(handleJobGet(d)))
	mux.Handle("GET /v1/jobs/{job_id}/events", api(handleJobEvents(d)))
	mux.Handle("GET /v1/jobs/{job_id}/explain", api(handleJobExplain(d)))
	mux.Handle("GET /v1/packages/{package_id}", api(handlePackageGet(d)))
	mux.Handle("GET /v1/sites", api(handleSites(d)))
	mux.Handle("GET /v1/sites/{site}", api(handleSite(d)))
	mux.Handle("GET /v1/poison", api(handlePoison(d)))
	mux.Handle("GET /v1/stream", requireToken(d.Tokens, handleStream(d))) // long-lived: no timeout
	// GET only: another method on a known path must stay a 405 from the
	// mux, not become this 404.
	mux.Handle("GET /v1/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, http.StatusNotFound, "not-found", "Not found", "no such endpoint")
	}))
	obs.Mount(mux, d.Registry, d.Checks)
}
