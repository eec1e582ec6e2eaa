package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

var (
	idRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	statuses = []string{"pending", "scheduled", "in_progress", "completed", "failed", "rejected", "cancelled"}
)

func badRequest(w http.ResponseWriter, r *http.Request, detail string) {
	writeProblem(w, r, http.StatusBadRequest, "bad-request", "Bad request", detail)
}

// pageSize reads ?limit= within [1, max].
func pageSize(r *http.Request, def, max int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, fmt.Errorf("limit must be an integer from 1 to %d", max)
	}
	return n, nil
}

func parseTime(q, name string) (time.Time, error) {
	if q == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, q)
	if err != nil {
		return t, fmt.Errorf("%s must be an RFC 3339 time", name)
	}
	return t, nil
}

func handleJobList(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := store.JobFilter{Status: q.Get("status"), Site: q.Get("site"), Location: q.Get("location"),
			RequestedBy: q.Get("requested_by"), Query: q.Get("q"), Sort: q.Get("sort"), Cursor: q.Get("cursor")}
		var err error
		if f.Limit, err = pageSize(r, d.DefaultPage, d.MaxPage); err != nil {
			badRequest(w, r, err.Error())
			return
		}
		if f.Status != "" && !slices.Contains(statuses, f.Status) {
			badRequest(w, r, fmt.Sprintf("status must be one of %v", statuses))
			return
		}
		if f.Sort != "" && f.Sort != "created" && f.Sort != "updated" {
			badRequest(w, r, "sort must be created or updated")
			return
		}
		if f.Since, err = parseTime(q.Get("since"), "since"); err != nil {
			badRequest(w, r, err.Error())
			return
		}
		if f.Until, err = parseTime(q.Get("until"), "until"); err != nil {
			badRequest(w, r, err.Error())
			return
		}
		jobs, next, err := d.Store.ListJobs(r.Context(), f)
		switch {
		case errors.Is(err, store.ErrBadCursor):
			badRequest(w, r, "cursor is not one this API returned")
		case err != nil:
			internalError(w, r, d.Log, err)
		default:
			encode(w, http.StatusOK, ledgerapi.JobList{Jobs: jobs, NextCursor: next})
		}
	})
}

// jobID reads and checks the {job_id} path value.
func jobID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("job_id")
	if !idRE.MatchString(id) {
		badRequest(w, r, "job id must match "+idRE.String())
		return "", false
	}
	return id, true
}

func notFound(w http.ResponseWriter, r *http.Request, what, id string) {
	writeProblem(w, r, http.StatusNotFound, "not-found", "Not found", fmt.Sprintf("no %s %q", what, id))
}

// reply answers a lookup of one thing: 404 when the store does not know it,
// 500 (logged, not echoed) on any other error, else v as JSON.
func reply[T any](w http.ResponseWriter, r *http.Request, d Deps, what, id string, v T, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		notFound(w, r, what, id)
	case err != nil:
		internalError(w, r, d.Log, err)
	default:
		encode(w, http.StatusOK, v)
	}
}

func handleJobGet(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		job, err := d.Store.GetJob(r.Context(), id)
		reply(w, r, d, "job", id, job, err)
	})
}

func handleJobEvents(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		evs, err := d.Store.JobEvents(r.Context(), id)
		reply(w, r, d, "job", id, ledgerapi.JobEvents{JobID: id, Events: evs}, err)
	})
}

func handlePackageGet(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("package_id")
		if !idRE.MatchString(id) {
			badRequest(w, r, "package id must match "+idRE.String())
			return
		}
		p, err := d.Store.GetPackage(r.Context(), id)
		reply(w, r, d, "package", id, p, err)
	})
}

// siteCache holds the last site summary for ttl. Callers arriving while it
// is computed wait for that result instead of computing their own.
type siteCache struct {
	ttl time.Duration
	mu  sync.Mutex
	at  time.Time
	val []ledgerapi.Site
}

// sites returns the site summaries, from the cache when fresh enough. The
// slice is shared: callers must not modify it.
func sites(d Deps, r *http.Request) ([]ledgerapi.Site, error) {
	c := d.sites
	if c == nil || c.ttl < 0 {
		return computeSites(d, r)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.val != nil && time.Since(c.at) < c.ttl {
		return c.val, nil
	}
	v, err := computeSites(d, r)
	if err != nil {
		return nil, err
	}
	c.val, c.at = v, time.Now()
	return v, nil
}

func computeSites(d Deps, r *http.Request) ([]ledgerapi.Site, error) {
	st, err := d.Store.Sites(r.Context(), d.Now())
	if err != nil {
		return nil, err
	}
	out := make([]ledgerapi.Site, len(st))
	var beats []heartbeat.Beat
	var liveErr error
	if d.Live == nil {
		liveErr = errors.New("no NATS connection")
	} else {
		beats, liveErr = d.Live.Stagers(r.Context())
	}
	for i, s := range st {
		out[i] = s
		out[i].Backlog, out[i].Stagers = []ledgerapi.Backlog{}, []heartbeat.Beat{}
		for _, b := range beats {
			if b.Site == s.Name {
				out[i].Stagers = append(out[i].Stagers, b)
			}
		}
		err := liveErr
		if err == nil {
			var bl []ledgerapi.Backlog
			if bl, err = d.Live.Backlog(r.Context(), s.Name); err == nil {
				out[i].Backlog = append(out[i].Backlog, bl...)
			}
		}
		if err != nil {
			out[i].LiveError = err.Error()
		}
	}
	return out, nil
}

func handleSites(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := sites(d, r)
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		encode(w, http.StatusOK, ledgerapi.SiteList{Sites: s})
	})
}

func handleSite(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("site")
		if !nameRE.MatchString(name) {
			badRequest(w, r, "site must match "+nameRE.String())
			return
		}
		s, err := sites(d, r)
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		for _, x := range s {
			if x.Name == name {
				encode(w, http.StatusOK, x)
				return
			}
		}
		notFound(w, r, "site", name)
	})
}

func handlePoison(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := pageSize(r, d.DefaultPage, d.MaxPage)
		if err != nil {
			badRequest(w, r, err.Error())
			return
		}
		p, err := d.Store.PoisonList(r.Context(), n)
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		encode(w, http.StatusOK, ledgerapi.PoisonList{Poison: p})
	})
}
