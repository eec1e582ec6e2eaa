package check

import (
	"encoding/json"
	"io/fs"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/schemas"
)

// The table-driven matcher agrees with regexp on every pattern it accepts:
// the schemas' own and some built to trip a greedy matcher, over strings
// made of the patterns' own characters and their neighbours.
func TestSimplePatternIsRegexp(t *testing.T) {
	patterns := []string{
		`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, `^[a-z0-9][a-z0-9_-]{0,62}$`, `^sha256:[0-9a-f]{64}$`, `^[0-9a-f]{64}$`,
		`^a+b$`, `^[ab]*c?$`, `^x{2,}$`, `^[a-c]{1,3}[d-f]{2}$`, `^.$`, `^[a-z]*[a-z]$`, `^(?i)abc$`, `^ab{2}$`, `^$`, `abc`,
	}
	// Every pattern in the schemas too.
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && k == "pattern" {
					patterns = append(patterns, s)
				}
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	names, _ := fs.Glob(schemas.FS, "*.json")
	for _, n := range names {
		b, _ := fs.ReadFile(schemas.FS, n)
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		walk(doc)
	}
	alphabet := []byte("aAbcdefxyz09._-:/\\ \x00\x7f\xc3\xa9sha256")
	rng := rand.New(rand.NewPCG(1, 2))
	simple := 0
	for _, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		m := simplePattern(p)
		if m == nil {
			continue
		}
		simple++
		inputs := []string{"", "a", "sha256:" + strings.Repeat("0", 64), strings.Repeat("a", 128), strings.Repeat("a", 129), "a-b", "-a"}
		for range 3000 {
			b := make([]byte, rng.IntN(140))
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			inputs = append(inputs, string(b))
		}
		for _, in := range inputs {
			if got, want := m.Match([]byte(in)), re.MatchString(in); got != want {
				t.Errorf("pattern %s on %q: matcher %v, regexp %v", p, in, got, want)
			}
		}
	}
	if simple < 6 {
		t.Errorf("only %d patterns got the table-driven matcher", simple)
	}
	for _, p := range []string{`^[a-z]*[a-z]$`, `^(?i)abc$`, `^.$`, `abc`, `^$`} {
		if simplePattern(p) != nil {
			t.Errorf("%s got the table-driven matcher", p)
		}
	}
}
