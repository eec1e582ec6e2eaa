package harness

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Result is the outcome of one scenario.
type Result struct {
	Scenario Scenario
	Tables   []Table
	Err      error
	Took     time.Duration
}

// Report renders the whole RESULTS.md.
func Report(m Machine, short bool, repeat int, results []Result) string {
	var b strings.Builder
	mode := "full"
	if short {
		mode = "short (BENCH_SHORT=1 / -short)"
	}
	fmt.Fprintf(&b, "# Benchmark results\n\nWritten by `go run ./bench` (bench/README.md). Every figure is a median over runs with min – max; "+
		"each section says when, in which mode and at which commit it was measured (running one scenario replaces only its section). "+
		"Latest run: %s, mode %s, %d runs per variant, on:\n\n",
		m.Started.Format("2006-01-02 15:04 MST"), mode, repeat)
	b.WriteString("| machine | |\n|---|---|\n")
	fmt.Fprintf(&b, "| CPU | %s |\n| cores | %d |\n| memory | %.1f GiB |\n| kernel | %s |\n| Go | %s |\n| commit | %s |\n| load average at start (1/5/15 min) | %s |\n",
		m.CPU, m.Cores, m.MemGiB, m.Kernel, m.Go, m.Commit, m.Load)
	for _, k := range slices.Sorted(maps.Keys(m.Tools)) {
		if v := m.Tools[k]; v != "" {
			fmt.Fprintf(&b, "| %s | %s |\n", k, v)
		}
	}
	for _, r := range results {
		fmt.Fprintf(&b, "\n## %s (issue scenario %d)\n\n%s\n\n", r.Scenario.Name, r.Scenario.Issue, r.Scenario.Doc)
		fmt.Fprintf(&b, "_Measured %s, mode %s, commit %s, load average at start %s._\n\n", m.Started.Format("2006-01-02 15:04 MST"), mode, m.Commit, m.Load)
		for _, t := range r.Tables {
			b.WriteString(t.Markdown())
			b.WriteString("\n")
		}
		if r.Err != nil {
			fmt.Fprintf(&b, "**Scenario failed:** %v\n\n", r.Err)
		}
		fmt.Fprintf(&b, "_Scenario wall time: %s._\n", r.Took.Round(time.Second))
	}
	return b.String()
}

// Merge keeps the sections of old (an earlier RESULTS.md) for scenarios that
// fresh does not contain, so `task bench -- <scenario>` updates one section
// and leaves the others as they were measured. Sections follow order; the
// header (machine facts) is fresh's, and every section carries its own
// "Measured …" line.
func Merge(old, fresh string, order []string) string {
	_, prev := sections(old)
	fh, fs := sections(fresh)
	var b strings.Builder
	b.WriteString(fh)
	for _, name := range order {
		if s, ok := fs[name]; ok {
			b.WriteString(s)
		} else if s, ok := prev[name]; ok {
			b.WriteString(s)
		}
	}
	return b.String()
}

// sections splits a report into its header and its "## <scenario> …"
// sections, keyed by scenario name.
func sections(doc string) (string, map[string]string) {
	out := map[string]string{}
	parts := strings.Split(doc, "\n## ")
	head := parts[0]
	for _, p := range parts[1:] {
		name, _, _ := strings.Cut(p, " ")
		out[name] = "\n## " + p
	}
	return head, out
}
