package httpapi

import (
	"html/template"
	"net/http"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/store"
)

// The status page is server-rendered and reloads itself every two seconds:
// no build step, no external assets, and it works without JavaScript.
var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"pct": func(done, total int64) int {
		if total <= 0 {
			return 0
		}
		return int(100 * done / total)
	},
	"when": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<title>ccat-staging ledger</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
.bar{width:12em;height:.9em;background:#eee;border-radius:3px;overflow:hidden}.bar>div{height:100%;background:#3a7}
.failed,.rejected{color:#b22}.completed{color:#282}.in_progress{color:#26a}small{color:#777}
</style></head><body>
<h1>ccat-staging ledger</h1>
<p><small>version {{.Version}} · {{.Now}} · JSON: <a href="v1/jobs">jobs</a> · <a href="v1/sites">sites</a> · <a href="v1/poison">poison</a> · <a href="v1/openapi.json">OpenAPI</a></small></p>
<h2>Sites</h2>
<table id="sites"><tr><th>site</th><th>live stagers</th><th>backlog</th><th>in progress</th><th>completed</th><th>failed</th><th>staged last hour</th></tr>
{{range .Sites}}<tr data-site="{{.Name}}"><td>{{.Name}}</td><td>{{len .Stagers}}{{range .Stagers}} <small>{{.Instance}}</small>{{end}}</td>
<td>{{range .Backlog}}{{.Priority}}: {{.Pending}}+{{.AckPending}} {{end}}{{if .LiveError}}<small>{{.LiveError}}</small>{{end}}</td>
<td>{{index .Packages "in_progress"}}</td><td>{{index .Packages "completed"}}</td><td>{{index .Packages "failed"}}</td><td>{{.BytesStagedHour}} B</td></tr>
{{end}}</table>
<h2>Jobs</h2>
<table id="jobs"><tr><th>job</th><th>status</th><th>progress</th><th>packages</th><th>destination</th><th>updated</th></tr>
{{range .Jobs}}<tr data-job="{{.JobID}}" data-status="{{.Status}}"><td><a href="v1/jobs/{{.JobID}}">{{.JobID}}</a> <small><a href="v1/jobs/{{.JobID}}/explain">why?</a></small></td>
<td class="{{.Status}}">{{.Status}}</td>
<td><div class="bar" title="{{.BytesDone}} of {{.BytesTotal}} bytes"><div data-pct="{{pct .BytesDone .BytesTotal}}" style="width:{{pct .BytesDone .BytesTotal}}%"></div></div></td>
<td>{{.Counts.Completed}}/{{.Counts.Total}}{{if .Counts.Failed}} <span class="failed">{{.Counts.Failed}} failed</span>{{end}}</td>
<td>{{.Destination.Site}} {{.Destination.Location}}</td><td><small>{{.UpdatedAt.Format "15:04:05"}}</small></td></tr>
{{else}}<tr><td colspan="6"><small>no jobs yet</small></td></tr>{{end}}</table>
<h2>Recent failures</h2>
<table id="failures"><tr><th>job</th><th>package</th><th>reason</th><th>message</th><th>when</th></tr>
{{range .Failures}}<tr><td><a href="v1/jobs/{{.JobID}}">{{.JobID}}</a></td><td>{{.PackageID}}</td><td class="failed">{{.Reason}}</td><td>{{.Message}}</td><td><small>{{when .CompletedAt}}</small></td></tr>
{{else}}<tr><td colspan="5"><small>none</small></td></tr>{{end}}</table>
</body></html>`))

func handleStatusPage(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := sites(d, r)
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		jobs, _, err := d.Store.ListJobs(r.Context(), store.JobFilter{Sort: "updated", Limit: 50})
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		fails, err := d.Store.RecentFailures(r.Context(), 20)
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_ = pageTmpl.Execute(w, map[string]any{
			"Version": d.Version, "Now": d.Now().UTC().Format(time.RFC3339),
			"Sites": s, "Jobs": jobs, "Failures": fails,
		})
	})
}
