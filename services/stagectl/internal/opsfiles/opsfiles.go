// Package opsfiles checks the operations files in deploy/prometheus and
// deploy/grafana against the code: the alert rules parse as Prometheus
// would parse them, and every metric a rule or a dashboard panel uses is one
// a service actually exports, so a renamed metric breaks a test rather than
// silently emptying a dashboard.
package opsfiles

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// Rules parses an alert/recording rule file with Prometheus' own loader and
// returns every rule's expression.
func Rules(path string) ([]string, error) {
	// Strict (not ignoring unknown fields) and legacy names: what promtool
	// check rules does, so a file that passes here loads in Prometheus.
	groups, errs := rulefmt.ParseFile(path, false, model.LegacyValidation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %v", path, errs)
	}
	var out []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			out = append(out, r.Expr)
		}
	}
	return out, nil
}

// grafanaVars are replaced before a dashboard query is parsed, with values
// that keep the query valid PromQL.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"${site:regex}", "cologne", "$site", "cologne", "${site}", "cologne",
)

// DashboardExprs returns every Prometheus query of a Grafana dashboard,
// wherever it is nested (rows hold panels), with Grafana's variables filled.
func DashboardExprs(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if e, ok := x["expr"].(string); ok {
				out = append(out, grafanaVars.Replace(e))
			}
			if q, ok := x["query"].(string); ok && strings.Contains(q, "(") {
				// A templating query such as label_values(up, site).
				out = append(out, grafanaVars.Replace(q))
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(doc)
	return out, nil
}

var labelValues = regexp.MustCompile(`^label_values\((?:(.+),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// MetricNames parses a PromQL expression and returns the metric names its
// selectors name. Grafana's label_values(selector, label) is unwrapped.
func MetricNames(expr string) ([]string, error) {
	if m := labelValues.FindStringSubmatch(strings.TrimSpace(expr)); m != nil {
		if m[1] == "" {
			return nil, nil
		}
		expr = m[1]
	}
	p := parser.NewParser(parser.Options{})
	e, err := p.ParseExpr(expr)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			return fmt.Errorf("selector %s names no metric", vs)
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
		return nil
	})
	return out, nil
}

var (
	metricName = regexp.MustCompile(`Name:\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
	descName   = regexp.MustCompile(`NewDesc\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
	// shared/bus.NewBacklog(pendingName, ackPendingName, labels...)
	backlogName = regexp.MustCompile(`NewBacklog\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)",\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
)

// Exported returns the metric names the Go code under the given directories
// defines (in files that use client_golang), with the series names
// Prometheus derives from histograms and summaries.
func Exported(dirs ...string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			src := string(b)
			for _, m := range backlogName.FindAllStringSubmatch(src, -1) {
				out[m[1]], out[m[2]] = true, true
			}
			if !strings.Contains(src, "prometheus.") {
				return nil
			}
			if strings.Contains(src, "Namespace:") || strings.Contains(src, "Subsystem:") || strings.Contains(src, "BuildFQName") {
				return fmt.Errorf("%s composes metric names from parts; teach opsfiles.Exported to join them", p)
			}
			for _, re := range []*regexp.Regexp{metricName, descName} {
				for _, m := range re.FindAllStringSubmatch(src, -1) {
					out[m[1]] = true
					for _, s := range []string{"_bucket", "_sum", "_count"} {
						out[m[1]+s] = true
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Standard reports names every scrape has without the services defining
// them: Prometheus' own per-target series and client_golang's Go and process
// collectors, which shared/obs registers on every service's registry.
func Standard(name string) bool {
	switch name {
	case "up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE":
		return true
	}
	return strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
}
