package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/services/ledger/httpapi"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/rs/zerolog"
)

// FuzzQuery: any query string or path parameter gives 200 or a 4xx RFC
// 9457 problem, never a 5xx or a panic. It runs against a real (empty,
// migrated) database so that what reaches PostgreSQL is checked too: a value
// PostgreSQL refuses (a NUL byte) must be refused by the API first.
// Seeds: the f.Add calls below and testdata/fuzz/FuzzQuery.
func FuzzQuery(f *testing.F) {
	bdb, err := db.Open(context.Background(), dbtest.New(f), 4)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { bdb.Close() })
	st := store.New(bdb)
	if _, err := st.Migrate(context.Background()); err != nil {
		f.Fatal(err)
	}
	h := httpapi.NewServer(httpapi.Deps{Store: st, Log: zerolog.New(io.Discard), Registry: obs.NewRegistry(), Version: "fuzz"})

	for _, s := range []struct {
		route uint8
		q     string
	}{
		{0, "status=completed&site=cologne&limit=10"},
		{0, "status=completed'%20OR%20'1'='1"},
		{0, "site=x'%20OR%20'1'='1&sort=updated"},
		{0, "limit=99999999999999999999"},
		{0, "limit=-1&cursor=!!"},
		{0, "cursor=eyJ0IjoiMjAyNi0wMS0wMVQwMDowMDowMFoiLCJpZCI6IngifQ"},
		{0, "since=2026-01-01T00:00:00Z&until=2025-01-01T00:00:00Z&q=%25_%5C"},
		{0, "q=%ff%fe&requested_by=%C0%AF"},
		{0, "site=a%00b"},
		{1, "../../etc/passwd"},
		{1, "x';--"},
		{2, "pkg%00"},
		{3, "cologne"},
		{4, "job-1"},
		{5, "job-1"},
		{6, "limit=1&cursor=x"},
	} {
		f.Add(s.route, s.q)
	}
	f.Fuzz(func(t *testing.T, route uint8, q string) {
		u := &url.URL{}
		switch route % 7 {
		case 0:
			u.Path, u.RawQuery = "/v1/jobs", q
		case 1:
			u.Path = "/v1/jobs/" + q
		case 2:
			u.Path = "/v1/packages/" + q
		case 3:
			u.Path = "/v1/sites/" + q
		case 4:
			u.Path = "/v1/jobs/" + q + "/events"
		case 5:
			u.Path = "/v1/jobs/" + q + "/explain"
		case 6:
			u.Path, u.RawQuery = "/v1/poison", q
		}
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
		req.URL = u
		req.RequestURI = u.RequestURI()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		code := rec.Code
		switch {
		case code == http.StatusOK || (code >= 300 && code < 400):
		case code >= 400 && code < 500:
			var p struct {
				Status int    `json:"status"`
				Title  string `json:"title"`
			}
			if !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/problem+json") ||
				json.Unmarshal(rec.Body.Bytes(), &p) != nil || p.Status != code || p.Title == "" {
				t.Fatalf("GET %s: %d without a problem+json body: %.300s", u, code, rec.Body.String())
			}
		default:
			t.Fatalf("GET %s: %d: %.300s", u, code, rec.Body.String())
		}
	})
}
