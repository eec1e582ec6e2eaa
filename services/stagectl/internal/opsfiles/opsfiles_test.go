package opsfiles

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// repo is the repository root, seen from this package's directory.
const repo = "../../../.."

func exported(t *testing.T) map[string]bool {
	t.Helper()
	names, err := Exported(filepath.Join(repo, "services", "planner"), filepath.Join(repo, "services", "stager"),
		filepath.Join(repo, "services", "ledger"), filepath.Join(repo, "shared"))
	if err != nil {
		t.Fatal(err)
	}
	// The services' own metrics must be found, or the check below is empty.
	for _, prefix := range []string{"planner_", "stager_", "ledger_"} {
		if !slices.ContainsFunc(slices.Collect(mapKeys(names)), func(n string) bool { return strings.HasPrefix(n, prefix) }) {
			t.Fatalf("no %s* metric found in the services' code", prefix)
		}
	}
	return names
}

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestOpsFilesUseExportedMetrics(t *testing.T) {
	names := exported(t)
	rules, err := Rules(filepath.Join(repo, "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	panels, err := DashboardExprs(filepath.Join(repo, "deploy", "grafana", "ccat-staging.json"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		file  string
		exprs []string
		min   int
	}{
		{"deploy/prometheus/alerts.yml", rules, 4},
		{"deploy/grafana/ccat-staging.json", panels, 10},
	}
	for _, tc := range tests {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			if len(tc.exprs) < tc.min {
				t.Fatalf("%d queries in %s, want at least %d", len(tc.exprs), tc.file, tc.min)
			}
			used := 0
			for _, e := range tc.exprs {
				ms, err := MetricNames(e)
				if err != nil {
					t.Errorf("%s: %v", tc.file, err)
					continue
				}
				for _, m := range ms {
					if !names[m] && !Standard(m) {
						t.Errorf("%s uses %s, which no service exports (query %q)", tc.file, m, e)
					}
					used++
				}
			}
			if used == 0 {
				t.Errorf("%s names no metric at all", tc.file)
			}
		})
	}
}

// TestAlertsCoverTheIssue pins the alerts operations asked for, so that
// trimming the file cannot silently drop one.
func TestAlertsCoverTheIssue(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repo, "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"CcatStagingBacklogStuck", "CcatStagingFailureRate", "CcatStagingNoStagerAtSite", "CcatStagingLedgerLag"} {
		if !strings.Contains(string(b), "alert: "+a+"\n") {
			t.Errorf("alerts.yml has no alert %s", a)
		}
	}
}

func TestScrapeConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repo, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string          `yaml:"targets"`
				Labels  map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, f := range cfg.RuleFiles {
		if _, err := os.Stat(filepath.Join(repo, "deploy", "prometheus", f)); err != nil {
			t.Errorf("rule file %s: %v", f, err)
		}
	}
	ports := map[string]string{"ccat-planner": ":9101", "ccat-stager": ":9102", "ccat-ledger": ":8080"}
	for _, sc := range cfg.ScrapeConfigs {
		port, ok := ports[sc.JobName]
		if !ok {
			continue
		}
		delete(ports, sc.JobName)
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				if !strings.HasSuffix(tg, port) {
					t.Errorf("%s target %s: want port %s", sc.JobName, tg, port)
				}
			}
			// The alerts and the dashboard group stagers by site.
			if sc.JobName == "ccat-stager" && st.Labels["site"] == "" {
				t.Errorf("stager targets %v have no site label", st.Targets)
			}
		}
	}
	for job := range ports {
		t.Errorf("prometheus.yml does not scrape %s", job)
	}
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`sum by (site) (rate(a_total{x="y"}[5m])) / sum(rate(b_total[5m]))`, []string{"a_total", "b_total"}},
		{`histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))`, []string{"h_bucket"}},
		{`{__name__="c"}`, []string{"c"}},
		{`label_values(up{job="ccat-stager"}, site)`, []string{"up"}},
		{`label_values(site)`, nil},
	}
	for _, tc := range tests {
		got, err := MetricNames(tc.expr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("MetricNames(%q) = %v, %v; want %v", tc.expr, got, err, tc.want)
		}
	}
	if _, err := MetricNames(`sum(`); err == nil {
		t.Error("a broken query parsed")
	}
}
