package check

import (
	"regexp"
	"regexp/syntax"
)

// A matcher decides whether a string matches a schema's pattern.
type matcher interface {
	Match(b []byte) bool
	String() string
}

// compilePattern compiles a schema pattern. Anchored sequences of ASCII
// character classes (^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, ^sha256:[0-9a-f]{64}$:
// the ids and checksums in every event) get a table-driven matcher, since
// regexp was the largest part of a check; anything else gets regexp.
func compilePattern(p string) (matcher, error) {
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, err
	}
	if m := simplePattern(p); m != nil {
		return m, nil
	}
	return re, nil
}

// classSeq matches a whole string against a sequence of ASCII classes, each
// repeated min to max times (max -1: no limit).
type classSeq struct {
	src  string
	segs []seg
}

type seg struct {
	in       [128]bool
	min, max int
}

func (c *classSeq) String() string { return c.src }

// Match is greedy, which is exact because simplePattern only accepts
// sequences where a segment of variable length shares no byte with the next.
func (c *classSeq) Match(b []byte) bool {
	i := 0
	for _, s := range c.segs {
		n := 0
		for i < len(b) && (s.max < 0 || n < s.max) && b[i] < 128 && s.in[b[i]] {
			i++
			n++
		}
		if n < s.min {
			return false
		}
	}
	return i == len(b)
}

// simplePattern returns a classSeq for p, or nil when p is not an anchored
// sequence of ASCII literals and classes with counts.
func simplePattern(p string) *classSeq {
	re, err := syntax.Parse(p, syntax.Perl)
	if err != nil || re.Op != syntax.OpConcat || len(re.Sub) < 2 {
		return nil
	}
	subs := re.Sub
	if subs[0].Op != syntax.OpBeginText || subs[len(subs)-1].Op != syntax.OpEndText {
		return nil
	}
	out := &classSeq{src: p}
	for _, s := range subs[1 : len(subs)-1] {
		min, max := 1, 1
		switch s.Op {
		case syntax.OpRepeat:
			min, max = s.Min, s.Max
			s = s.Sub[0]
		case syntax.OpStar:
			min, max = 0, -1
			s = s.Sub[0]
		case syntax.OpPlus:
			min, max = 1, -1
			s = s.Sub[0]
		case syntax.OpQuest:
			min, max = 0, 1
			s = s.Sub[0]
		}
		if s.Flags&syntax.FoldCase != 0 {
			return nil
		}
		switch s.Op {
		case syntax.OpLiteral:
			if min != 1 || max != 1 {
				if len(s.Rune) != 1 {
					return nil
				}
			}
			for _, r := range s.Rune {
				if r >= 128 {
					return nil
				}
				var g seg
				g.in[r] = true
				g.min, g.max = min, max
				out.segs = append(out.segs, g)
			}
		case syntax.OpCharClass:
			var g seg
			for i := 0; i+1 < len(s.Rune); i += 2 {
				lo, hi := s.Rune[i], s.Rune[i+1]
				if hi >= 128 {
					return nil
				}
				for r := lo; r <= hi; r++ {
					g.in[r] = true
				}
			}
			g.min, g.max = min, max
			out.segs = append(out.segs, g)
		default:
			return nil
		}
	}
	if len(out.segs) == 0 {
		return nil
	}
	// Greedy matching is exact only if no variable-length segment could
	// give up a byte to the one after it.
	for i, g := range out.segs[:len(out.segs)-1] {
		if g.min == g.max {
			continue
		}
		next := out.segs[i+1]
		for b := range 128 {
			if g.in[b] && next.in[b] {
				return nil
			}
		}
	}
	return out
}
