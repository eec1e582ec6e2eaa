// Package check is shared/event's hot-path validator: every event type's
// JSON Schema compiled for one pass over the data's tokens. It lives behind
// internal/ so that shared/event's surface is the contract (types, envelope,
// validation) and not this machinery; event.ValidateData is its only caller.
package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/ccatobs/ccat-staging/schemas"
	"github.com/go-json-experiment/json/jsontext"
)

// A check is one event type's JSON Schema compiled for the hot path: it
// validates data in one pass over its tokens, without building a tree of
// values first. The general validator (santhosh-tekuri/jsonschema) spent
// most of its time building that tree and comparing every number as a
// big.Rat parsed from a formatted string; for a ledger catching up, that was
// more CPU per event than PostgreSQL's.
//
// A check understands the keywords this repository's schemas use and nothing
// more: a schema with any other keyword gets no check, and ValidateData then
// uses the general validator alone (TestEverySchemaHasACheck keeps that from
// happening unnoticed). The general validator stays the reference: it
// explains every refusal, and a differential test and fuzz target hold the two
// to the same verdict.
type check struct {
	never bool  // the false schema
	types uint8 // kind* bits; 0 means any type

	props    map[string]prop
	required []string
	reqBit   map[string]uint64 // required name → its bit (at most 64)
	addl     *check            // schema for other properties; nil: any
	minProps int
	maxProps int // -1: none

	items    *check
	minItems int
	maxItems int // -1: none

	minLen, maxLen int // code points; maxLen -1: none
	pattern        matcher

	min, max *bound

	enum []string // string values only
	not  *check
}

// prop is a property's schema, with its name for the path of a refusal.
type prop struct {
	name string
	c    *check
}

const (
	kindNull uint8 = 1 << iota
	kindBool
	kindInteger
	kindNumber // any number, integers included
	kindString
	kindArray
	kindObject
)

var kindNames = map[string]uint8{"null": kindNull, "boolean": kindBool, "integer": kindInteger, "number": kindNumber,
	"string": kindString, "array": kindArray, "object": kindObject}

// bound is a numeric limit, kept exactly and, when it is an int64, as one.
type bound struct {
	r     *big.Rat
	i     int64
	isInt bool
}

// annotations are keywords that assert nothing (format included: the
// general validator is not told to assert formats either).
var annotations = map[string]bool{"$schema": true, "$id": true, "$defs": true, "$comment": true, "title": true,
	"description": true, "examples": true, "default": true, "format": true, "deprecated": true, "readOnly": true, "writeOnly": true}

// errUnsupported marks a schema the check compiler does not understand.
var errUnsupported = errors.New("unsupported schema keyword")

var checks = sync.OnceValue(compileChecks)

// Data validates raw as the data of event type typ with typ's compiled
// check. has is false when typ has no check (a schema with a keyword the
// compiler does not understand): the caller then relies on the general
// validator alone.
func Data(typ string, raw []byte) (has bool, err error) {
	c := checks()[typ]
	if c == nil {
		return false, nil
	}
	return true, c.validate(raw)
}

// Compile compiles one schema document, for tests that a schema is (or is
// not) understood.
func Compile(doc []byte) error {
	_, err := compileCheck(doc)
	return err
}

// compileChecks compiles a check for every schema it can; a schema it cannot
// compile simply has none.
func compileChecks() map[string]*check {
	out := map[string]*check{}
	names, _ := fs.Glob(schemas.FS, "*.json")
	for _, name := range names {
		b, err := fs.ReadFile(schemas.FS, name)
		if err != nil {
			continue
		}
		c, err := compileCheck(b)
		if err != nil {
			continue
		}
		out["ccat."+strings.TrimSuffix(name, ".json")] = c
	}
	return out
}

// compileCheck compiles one schema document.
func compileCheck(doc []byte) (*check, error) {
	var root map[string]any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&root); err != nil {
		return nil, err
	}
	cc := checkCompiler{root: root, defs: map[string]*check{}}
	return cc.compile(root)
}

type checkCompiler struct {
	root map[string]any
	defs map[string]*check // by $ref, so recursive definitions terminate
}

func (cc *checkCompiler) compile(v any) (*check, error) {
	switch s := v.(type) {
	case bool:
		return &check{never: !s, maxProps: -1, maxItems: -1, maxLen: -1}, nil
	case map[string]any:
		return cc.compileObject(s)
	}
	return nil, fmt.Errorf("%w: schema is %T", errUnsupported, v)
}

func (cc *checkCompiler) compileObject(s map[string]any) (*check, error) {
	if ref, ok := s["$ref"]; ok {
		// A $ref next to assertions would need both applied to one
		// value; the schemas do not do that.
		for k := range s {
			if k != "$ref" && !annotations[k] {
				return nil, fmt.Errorf("%w: $ref next to %s", errUnsupported, k)
			}
		}
		return cc.ref(ref)
	}
	c := &check{maxProps: -1, maxItems: -1, maxLen: -1}
	var err error
	for k, v := range s {
		switch k {
		case "type":
			switch t := v.(type) {
			case string:
				c.types, err = kindOf(t)
			case []any:
				for _, x := range t {
					name, _ := x.(string)
					var b uint8
					if b, err = kindOf(name); err != nil {
						break
					}
					c.types |= b
				}
			default:
				err = fmt.Errorf("%w: type %v", errUnsupported, v)
			}
		case "properties":
			props, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%w: properties", errUnsupported)
			}
			c.props = make(map[string]prop, len(props))
			for name, ps := range props {
				pc, err := cc.compile(ps)
				if err != nil {
					return nil, err
				}
				c.props[name] = prop{name: name, c: pc}
			}
		case "required":
			list, ok := v.([]any)
			if !ok || len(list) > 64 {
				return nil, fmt.Errorf("%w: required", errUnsupported)
			}
			c.reqBit = make(map[string]uint64, len(list))
			for _, x := range list {
				name, ok := x.(string)
				if !ok {
					return nil, fmt.Errorf("%w: required", errUnsupported)
				}
				if _, dup := c.reqBit[name]; !dup {
					c.reqBit[name] = 1 << len(c.required)
					c.required = append(c.required, name)
				}
			}
		case "additionalProperties":
			c.addl, err = cc.compile(v)
		case "items":
			c.items, err = cc.compile(v)
		case "not":
			c.not, err = cc.compile(v)
		case "minProperties":
			c.minProps, err = count(v)
		case "maxProperties":
			c.maxProps, err = count(v)
		case "minItems":
			c.minItems, err = count(v)
		case "maxItems":
			c.maxItems, err = count(v)
		case "minLength":
			c.minLen, err = count(v)
		case "maxLength":
			c.maxLen, err = count(v)
		case "pattern":
			p, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("%w: pattern", errUnsupported)
			}
			c.pattern, err = compilePattern(p)
		case "minimum":
			c.min, err = boundOf(v)
		case "maximum":
			c.max, err = boundOf(v)
		case "enum":
			list, ok := v.([]any)
			if !ok || len(list) == 0 {
				return nil, fmt.Errorf("%w: enum", errUnsupported)
			}
			for _, x := range list {
				s, ok := x.(string)
				if !ok {
					return nil, fmt.Errorf("%w: enum of %T", errUnsupported, x)
				}
				c.enum = append(c.enum, s)
			}
		default:
			if !annotations[k] {
				return nil, fmt.Errorf("%w: %s", errUnsupported, k)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ref resolves a reference into the document's own $defs.
func (cc *checkCompiler) ref(v any) (*check, error) {
	ref, _ := v.(string)
	name, ok := strings.CutPrefix(ref, "#/$defs/")
	if !ok || strings.ContainsAny(name, "/~%") {
		return nil, fmt.Errorf("%w: $ref %q", errUnsupported, ref)
	}
	if c, ok := cc.defs[ref]; ok {
		return c, nil
	}
	defs, _ := cc.root["$defs"].(map[string]any)
	target, ok := defs[name]
	if !ok {
		return nil, fmt.Errorf("%w: $ref %q not found", errUnsupported, ref)
	}
	c := &check{}
	cc.defs[ref] = c
	compiled, err := cc.compile(target)
	if err != nil {
		return nil, err
	}
	*c = *compiled
	return c, nil
}

func kindOf(name string) (uint8, error) {
	if b, ok := kindNames[name]; ok {
		return b, nil
	}
	return 0, fmt.Errorf("%w: type %q", errUnsupported, name)
}

func count(v any) (int, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%w: count %v", errUnsupported, v)
	}
	i, err := strconv.Atoi(n.String())
	if err != nil || i < 0 {
		return 0, fmt.Errorf("%w: count %v", errUnsupported, v)
	}
	return i, nil
}

func boundOf(v any) (*bound, error) {
	n, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%w: bound %v", errUnsupported, v)
	}
	r, ok := new(big.Rat).SetString(n.String())
	if !ok {
		return nil, fmt.Errorf("%w: bound %v", errUnsupported, v)
	}
	b := &bound{r: r}
	if r.IsInt() && r.Num().IsInt64() {
		b.i, b.isInt = r.Num().Int64(), true
	}
	return b, nil
}

// violation is a check's refusal; ValidateData asks the general validator for
// the full explanation.
type violation struct {
	at, msg string
}

func (v *violation) Error() string {
	if v.at == "" {
		return v.msg
	}
	return fmt.Sprintf("at %s: %s", v.at, v.msg)
}

// path is where a value is, built into a JSON Pointer only for a refusal.
type path struct {
	up   *path
	name string
	idx  int // when name is ""
}

func (p *path) String() string {
	if p == nil {
		return ""
	}
	if p.name == "" {
		return p.up.String() + "/" + strconv.Itoa(p.idx)
	}
	return p.up.String() + "/" + pointerEscape(p.name)
}

func fail(at *path, format string, args ...any) error {
	return &violation{at: at.String(), msg: fmt.Sprintf(format, args...)}
}

// validate checks one complete JSON document. It is strict where the general
// validator is lenient, as Decode is: invalid UTF-8 and lone surrogates are
// refused. A name given twice must be valid both times (the last one counts,
// as in every decoder of this repository and in jsonb).
func (c *check) validate(raw []byte) error {
	dec := jsontext.NewDecoder(bytes.NewBuffer(raw), jsontext.AllowDuplicateNames(true))
	if err := c.value(dec, nil); err != nil {
		return err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		if err == nil {
			return fail(nil, "trailing data")
		}
		return fail(nil, "not JSON: %v", err)
	}
	return nil
}

// value checks the next value in dec. Scalars are read as raw values and
// looked at in place: a string is unquoted only when it has escapes.
func (c *check) value(dec *jsontext.Decoder, at *path) error {
	switch k := dec.PeekKind(); k {
	case '{', '[':
		if c.never || c.not != nil || len(c.enum) > 0 {
			// Rare: read the value once and check it twice.
			raw, err := dec.ReadValue()
			if err != nil {
				return fail(at, "not JSON: %v", err)
			}
			return c.whole(bytes.Clone(raw), at)
		}
		if k == '{' {
			return c.object(dec, at)
		}
		return c.array(dec, at)
	case 0:
		_, err := dec.ReadToken()
		return fail(at, "not JSON: %v", err)
	default:
		raw, err := dec.ReadValue()
		if err != nil {
			return fail(at, "not JSON: %v", err)
		}
		return c.scalar(k, raw, at)
	}
}

// whole checks an already read object or array against c, not included.
func (c *check) whole(raw []byte, at *path) error {
	if c.never {
		return fail(at, "no value is allowed here")
	}
	if len(c.enum) > 0 {
		// Enums are of strings (compileObject), and raw is not one.
		return fail(at, "not one of the allowed values")
	}
	core := *c
	core.not = nil
	if err := core.validate(raw); err != nil {
		return err
	}
	if c.not != nil && c.not.validate(raw) == nil {
		return fail(at, "matches a schema it must not match")
	}
	return nil
}

func (c *check) allows(kind uint8) bool {
	return c.types == 0 || c.types&kind != 0
}

// unquote returns a JSON string's value; without escapes, in place.
func unquote(raw []byte) ([]byte, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], nil
	}
	return jsontext.AppendUnquote(nil, raw)
}

// scalar checks a null, boolean, string or number; raw is its JSON text.
func (c *check) scalar(kind jsontext.Kind, raw []byte, at *path) error {
	if c.never {
		return fail(at, "no value is allowed here")
	}
	switch kind {
	case 'n':
		if !c.allows(kindNull) {
			return fail(at, "null is not allowed")
		}
	case 't', 'f':
		if !c.allows(kindBool) {
			return fail(at, "a boolean is not allowed")
		}
	case '"':
		if !c.allows(kindString) {
			return fail(at, "a string is not allowed")
		}
		s, err := unquote(raw)
		if err != nil {
			return fail(at, "not JSON: %v", err)
		}
		if err := c.str(s, at); err != nil {
			return err
		}
	case '0':
		if err := c.number(raw, at); err != nil {
			return err
		}
	}
	if len(c.enum) > 0 && kind != '"' {
		return fail(at, "not one of %q", c.enum)
	}
	if c.not != nil && c.not.scalar(kind, raw, at) == nil {
		return fail(at, "matches a schema it must not match")
	}
	return nil
}

func (c *check) str(s []byte, at *path) error {
	if c.minLen > 0 || c.maxLen >= 0 {
		n := utf8.RuneCount(s)
		if n < c.minLen {
			return fail(at, "shorter than %d", c.minLen)
		}
		if c.maxLen >= 0 && n > c.maxLen {
			return fail(at, "longer than %d", c.maxLen)
		}
	}
	if c.pattern != nil && !c.pattern.Match(s) {
		return fail(at, "does not match %s", c.pattern)
	}
	if len(c.enum) > 0 {
		for _, e := range c.enum {
			if string(s) == e {
				return nil
			}
		}
		return fail(at, "not one of %q", c.enum)
	}
	return nil
}

// number checks a number's literal text: exactly, as the general validator
// does, but without big.Rat for the plain integers most numbers are.
func (c *check) number(raw []byte, at *path) error {
	plain := bytes.IndexAny(raw, ".eE") < 0
	var i int64
	var iok bool
	if plain {
		v, err := strconv.ParseInt(string(raw), 10, 64)
		i, iok = v, err == nil
	}
	var r *big.Rat
	exact := func() *big.Rat {
		if r == nil {
			r, _ = new(big.Rat).SetString(string(raw))
		}
		return r
	}
	if c.types != 0 && c.types&kindNumber == 0 {
		if c.types&kindInteger == 0 {
			return fail(at, "a number is not allowed")
		}
		if !plain && !exact().IsInt() {
			return fail(at, "%s is not an integer", raw)
		}
	}
	cmp := func(b *bound) int { // sign of value - bound
		if iok && b.isInt {
			switch {
			case i < b.i:
				return -1
			case i > b.i:
				return 1
			}
			return 0
		}
		return exact().Cmp(b.r)
	}
	if c.min != nil && cmp(c.min) < 0 {
		return fail(at, "%s is less than %s", raw, c.min.r.RatString())
	}
	if c.max != nil && cmp(c.max) > 0 {
		return fail(at, "%s is more than %s", raw, c.max.r.RatString())
	}
	return nil
}

func (c *check) object(dec *jsontext.Decoder, at *path) error {
	if _, err := dec.ReadToken(); err != nil { // '{'
		return fail(at, "not JSON: %v", err)
	}
	if !c.allows(kindObject) {
		return fail(at, "an object is not allowed")
	}
	var seen uint64
	n := 0
	for dec.PeekKind() != '}' {
		raw, err := dec.ReadValue()
		if err != nil {
			return fail(at, "not JSON: %v", err)
		}
		name, err := unquote(raw)
		if err != nil {
			return fail(at, "not JSON: %v", err)
		}
		n++
		seen |= c.reqBit[string(name)]
		p, ok := c.props[string(name)]
		if !ok {
			if c.addl == nil {
				if err := dec.SkipValue(); err != nil {
					return fail(at, "not JSON: %v", err)
				}
				continue
			}
			p = prop{name: string(name), c: c.addl}
		}
		if err := p.c.value(dec, &path{up: at, name: p.name}); err != nil {
			return err
		}
	}
	if _, err := dec.ReadToken(); err != nil { // '}'
		return fail(at, "not JSON: %v", err)
	}
	if want := uint64(1)<<len(c.required) - 1; seen != want {
		for _, r := range c.required {
			if seen&c.reqBit[r] == 0 {
				return fail(at, "missing property %q", r)
			}
		}
	}
	if n < c.minProps || (c.maxProps >= 0 && n > c.maxProps) {
		return fail(at, "%d properties, allowed %d to %d", n, c.minProps, c.maxProps)
	}
	return nil
}

func (c *check) array(dec *jsontext.Decoder, at *path) error {
	if _, err := dec.ReadToken(); err != nil { // '['
		return fail(at, "not JSON: %v", err)
	}
	if !c.allows(kindArray) {
		return fail(at, "an array is not allowed")
	}
	n := 0
	for dec.PeekKind() != ']' {
		if c.items == nil {
			if err := dec.SkipValue(); err != nil {
				return fail(at, "not JSON: %v", err)
			}
		} else if err := c.items.value(dec, &path{up: at, idx: n}); err != nil {
			return err
		}
		n++
	}
	if _, err := dec.ReadToken(); err != nil { // ']'
		return fail(at, "not JSON: %v", err)
	}
	if n < c.minItems || (c.maxItems >= 0 && n > c.maxItems) {
		return fail(at, "%d items, allowed %d to %d", n, c.minItems, c.maxItems)
	}
	return nil
}

func pointerEscape(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
