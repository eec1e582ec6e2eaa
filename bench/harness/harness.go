// Package harness runs benchmark scenarios repeatedly, keeps every sample,
// and renders each scenario as a table of medians with min–max and the ratio
// of our figure to each baseline measured in the same run.
package harness

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Env is what a scenario gets from the harness.
type Env struct {
	Short   bool   // the short mode: smaller workloads, same number of repeats
	Repeat  int    // runs per variant; medians are over these
	WorkDir string // scratch space for this scenario, removed afterwards
	Log     zerolog.Logger
	// ProfileDir is where -pprof writes CPU profiles ("" = off). A scenario
	// marked Windowed profiles only its measured windows with Profile.
	ProfileDir string
	// Trash is where Discard moves scratch, removed when the bench exits
	// ("" = Discard removes at once).
	Trash string
}

// Discard gets rid of scratch holding many small files without deleting
// it now: it is moved to Trash, which the bench removes when it exits. On
// this machine kind's scratch file system (ext4 without a journal) the
// inode allocator skips inodes freed in the last 60 s (360 s while their
// inode-table block is dirty), reading the inode table for each: creating
// files right after a mass deletion cost the next run 2–3× (profile:
// recently_deleted and find_get_block_common in openat and mkdirat), so
// deleting one run's thousands of packages measured the file system's
// bookkeeping in the next run instead of the code.
func (e Env) Discard(dir string) {
	if e.Trash != "" {
		if err := os.MkdirAll(e.Trash, 0o755); err == nil {
			if t, err := os.MkdirTemp(e.Trash, "d-"); err == nil {
				if os.Rename(dir, filepath.Join(t, "x")) == nil {
					return
				}
				_ = os.Remove(t)
			}
		}
	}
	_ = os.RemoveAll(dir)
}

// Profile starts a CPU profile of one measured window into
// ProfileDir/<label>.cpu.pprof and returns the function that stops it: a
// profile of the whole scenario would be mostly its set-up (generating and
// publishing the input), which hides the service being measured. It does
// nothing when profiling is off or cannot start.
func (e Env) Profile(label string) (stop func()) {
	if e.ProfileDir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(e.ProfileDir, label+".cpu.pprof"))
	if err != nil {
		e.Log.Warn().Err(err).Msg("cpu profile")
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		e.Log.Warn().Err(err).Msg("cpu profile")
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// Scenario is one named benchmark. Run returns one or more tables; an error
// aborts only this scenario.
type Scenario struct {
	Name  string
	Issue int // number of the scenario in the benchmarks issue
	Doc   string
	Run   func(ctx context.Context, env Env) ([]Table, error)
	// Windowed scenarios profile their measured windows themselves
	// (Env.Profile) instead of being profiled whole.
	Windowed bool
	// SmallFiles scenarios leave many small files: their scratch goes to
	// Env.Trash rather than being deleted between scenarios (Env.Discard).
	SmallFiles bool
}

// Row is one measured variant. Samples hold one figure per run.
type Row struct {
	Name    string
	Samples []float64
	// Ours marks the row whose median is divided by every other row's
	// median in the ratio column.
	Ours bool
	// Missing explains why a row has no samples (a feature not there yet),
	// so the table says so instead of showing a made-up number.
	Missing string
}

// Table is one scenario result: a unit, rows, and free-form notes.
type Table struct {
	Title string
	Unit  string // e.g. "MB/s", "packages/s", "ms"
	// LowerIsBetter flips the ratio (baseline ÷ ours) so that a ratio above 1
	// always means we are better.
	LowerIsBetter bool
	Rows          []Row
	Notes         []string
}

// ours returns the median of the row marked Ours, or NaN.
func (t Table) ours() float64 {
	for _, r := range t.Rows {
		if r.Ours && len(r.Samples) > 0 {
			return Median(r.Samples)
		}
	}
	return math.NaN()
}

// Ratio is our median relative to row r's median, oriented so that > 1
// means ours is better; NaN when either side is missing.
func (t Table) Ratio(r Row) float64 {
	o := t.ours()
	if len(r.Samples) == 0 || math.IsNaN(o) {
		return math.NaN()
	}
	m := Median(r.Samples)
	if t.LowerIsBetter {
		return m / o
	}
	return o / m
}

// Markdown renders the table.
func (t Table) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", t.Title)
	ratioHead := "ours ÷ this"
	if t.LowerIsBetter {
		ratioHead = "this ÷ ours"
	}
	fmt.Fprintf(&b, "| variant | median %s | min – max | runs | %s |\n|---|---:|---:|---:|---:|\n", t.Unit, ratioHead)
	for _, r := range t.Rows {
		name := strings.ReplaceAll(r.Name, "|", `\|`)
		if r.Ours {
			name = "**" + name + "**"
		}
		if len(r.Samples) == 0 {
			why := r.Missing
			if why == "" {
				why = "not measured"
			}
			fmt.Fprintf(&b, "| %s | — | — | 0 | %s |\n", name, why)
			continue
		}
		lo, hi := MinMax(r.Samples)
		ratio := "—"
		if !r.Ours {
			if x := t.Ratio(r); !math.IsNaN(x) {
				ratio = fmt.Sprintf("%.3g×", x)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s – %s | %d | %s |\n", name, Num(Median(r.Samples)), Num(lo), Num(hi), len(r.Samples), ratio)
	}
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "\n- %s", n)
	}
	if len(t.Notes) > 0 {
		b.WriteString("\n")
	}
	return b.String()
}

// Num formats a figure with a sensible number of digits.
func Num(x float64) string {
	switch a := math.Abs(x); {
	case math.IsNaN(x):
		return "—"
	case a >= 1000:
		return groupThousands(fmt.Sprintf("%.0f", x))
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// Timed runs f and returns its wall time.
func Timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}
