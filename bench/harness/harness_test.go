package harness

import (
	"math"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"empty", nil, 50, math.NaN()},
		{"one", []float64{7}, 99, 7},
		{"odd median", []float64{3, 1, 2}, 50, 2},
		{"even median", []float64{4, 1, 2, 3}, 50, 2.5},
		{"p99 interpolates", []float64{0, 100}, 99, 99},
		{"max", []float64{5, 9, 1}, 100, 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Percentile(tt.xs, tt.p)
			if got != tt.want && !(math.IsNaN(got) && math.IsNaN(tt.want)) {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
			}
		})
	}
}

func TestTableMarkdown(t *testing.T) {
	tests := []struct {
		name  string
		table Table
		want  []string
	}{
		{"throughput ratio", Table{Title: "t", Unit: "MB/s", Rows: []Row{
			{Name: "ours", Ours: true, Samples: []float64{300, 200, 400}},
			{Name: "tar -x", Samples: []float64{150, 150, 150}},
		}}, []string{"| **ours** | 300 | 200 – 400 | 3 | — |", "| tar -x | 150 | 150 – 150 | 3 | 2× |"}},
		{"latency ratio flips", Table{Title: "t", Unit: "ms", LowerIsBetter: true, Rows: []Row{
			{Name: "ours", Ours: true, Samples: []float64{10}},
			{Name: "base", Samples: []float64{5}},
		}}, []string{"this ÷ ours", "| base | 5.00 | 5.00 – 5.00 | 1 | 0.5× |"}},
		{"missing row says why", Table{Title: "t", Unit: "x", Rows: []Row{
			{Name: "ours", Ours: true, Missing: "S3 backend not there yet"},
			{Name: "base", Samples: []float64{1234567}},
		}}, []string{"| **ours** | — | — | 0 | S3 backend not there yet |", "| base | 1,234,567 |"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.table.Markdown()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("Markdown() lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

func TestMerge(t *testing.T) {
	old := "# R\nold head\n\n## a (issue scenario 1)\nA-old\n\n## b (issue scenario 2)\nB-old\n"
	fresh := "# R\nnew head\n\n## b (issue scenario 2)\nB-new\n"
	got := Merge(old, fresh, []string{"a", "b", "c"})
	want := "# R\nnew head\n\n## a (issue scenario 1)\nA-old\n\n## b (issue scenario 2)\nB-new\n"
	if got != want {
		t.Errorf("Merge = %q, want %q", got, want)
	}
	if got := Merge("", fresh, []string{"b"}); got != fresh {
		t.Errorf("Merge with no old report = %q, want %q", got, fresh)
	}
}
