package main

// A TOML 1.0.0 decoder (https://toml.io/en/v1.0.0) and a small deterministic
// encoder, for the manifest, the lock file and configuration.
//
// The decoder is a single-pass recursive-descent parser over the document as
// one string: keys and strings without escapes are substrings of it, so a
// typical document costs one allocation per map, slice and boxed value. The
// recursion is bounded by tomlMaxDepth. Tables are built directly as
// map[string]any; a small side structure (tomlTable) remembers how each table
// came to be, which is what the table-redefinition rules are about.

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// tomlMaxDepth bounds the path length (keys and array indexes) of any value,
// which bounds the decoder's and the encoder's recursion on hostile input.
const tomlMaxDepth = 128

// tomlPos is a place in a document. Line and Col are 1-based; Col counts
// Unicode code points (not bytes) from the start of the line, which is what
// editors show.
type tomlPos struct{ Line, Col int }

// tomlError is a syntax or structure error at a place in a document. Callers
// prefix the file name.
type tomlError struct {
	Line, Col int
	Msg       string
}

func (e *tomlError) Error() string { return fmt.Sprintf("%d:%d: %s", e.Line, e.Col, e.Msg) }

// tomlPath names a value for decodeTOMLPos's position map: its key parts and
// array indexes (decimal), joined with NUL, which no TOML key can make
// ambiguous in practice and which callers never display.
func tomlPath(segments ...string) string { return strings.Join(segments, "\x00") }

// localDate is a TOML local date (no time, no offset).
type localDate struct{ Year, Month, Day int }

// localTime is a TOML local time; fractions beyond nanoseconds are truncated.
type localTime struct{ Hour, Minute, Second, Nanosecond int }

// localDateTime is a TOML local date-time (no offset).
type localDateTime struct {
	Date localDate
	Time localTime
}

func (d localDate) String() string {
	return fmt.Sprintf("%04d-%02d-%02d", d.Year, d.Month, d.Day)
}

func (t localTime) String() string {
	s := fmt.Sprintf("%02d:%02d:%02d", t.Hour, t.Minute, t.Second)
	if t.Nanosecond != 0 {
		s += strings.TrimRight(fmt.Sprintf(".%09d", t.Nanosecond), "0")
	}
	return s
}

func (dt localDateTime) String() string { return dt.Date.String() + "T" + dt.Time.String() }

func (d localDate) valid() bool {
	return d.Year >= 0 && d.Year <= 9999 && d.Month >= 1 && d.Month <= 12 &&
		d.Day >= 1 && d.Day <= tomlDaysIn(d.Year, d.Month)
}

func (t localTime) valid() bool {
	return t.Hour >= 0 && t.Hour < 24 && t.Minute >= 0 && t.Minute < 60 &&
		t.Second >= 0 && t.Second < 60 && t.Nanosecond >= 0 && t.Nanosecond < 1e9
}

func tomlDaysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// decodeTOML parses a TOML 1.0.0 document. Values are string, int64,
// float64, bool, time.Time (offset date-time), localDateTime, localDate,
// localTime, []any and map[string]any. Errors are *tomlError.
func decodeTOML(data []byte) (map[string]any, error) {
	m, _, err := tomlDecode(data, false)
	return m, err
}

// decodeTOMLPos is decodeTOML plus the position of every key, table and
// array element, keyed by tomlPath: a table defined by a [header] or
// [[header]] is at the header, a key at its first character (for a dotted
// key, the first character of the whole key, which is also where the tables
// it creates are), an array element at its first character.
func decodeTOMLPos(data []byte) (map[string]any, map[string]tomlPos, error) {
	return tomlDecode(data, true)
}

func tomlDecode(data []byte, withPos bool) (map[string]any, map[string]tomlPos, error) {
	p := tomlParser{s: string(data)}
	if withPos {
		p.pos = map[string]tomlPos{}
	}
	if err := p.parse(); err != nil {
		if p.wantPos {
			// Only positions can say where a conflicting key or table was
			// first defined; such errors are rare, so parse again to say it.
			if _, _, err2 := tomlDecode(data, true); err2 != nil {
				err = err2
			}
		}
		return nil, nil, err
	}
	return p.root.m, p.pos, nil
}

// How a table came to be; the redefinition rules depend on it.
const (
	tomlImplicit = iota // created as a parent by a [a.b] header: may be defined once later
	tomlHeader          // defined by a [header] or a [[header]] element
	tomlDotted          // created by a dotted key (or inside an inline table)
)

// tomlTable is the parser's bookkeeping for a table that may still grow.
// Tables reached only through m (inline tables and their contents, tables in
// static arrays) have none, which is what makes them immutable.
type tomlTable struct {
	m     map[string]any
	kind  uint8
	aot   bool // this is the last element of an array of tables
	depth int  // path length from the root, array indexes included
}

// tomlKidKey names the sub-table k of a table, for tomlParser.kids.
type tomlKidKey struct {
	t *tomlTable
	k string
}

type tomlParser struct {
	s    string
	i    int
	root tomlTable
	cur  *tomlTable // table that key/value lines go to
	// kids holds the open sub-tables of every table (for an array of
	// tables, its last element): one map for the document is cheaper than
	// one per table.
	kids map[tomlKidKey]*tomlTable
	slab []tomlTable // tomlTables are allocated in chunks

	keys  []string  // parts of the key just parsed (reused)
	path  []tomlSeg // path of the value being parsed
	stack []any     // elements of the arrays being parsed (reused)
	buf   []byte    // unescaped string being built (reused)
	zones map[int]*time.Location

	// inValue counts the key/value pairs whose value is being parsed
	// (more than one inside inline tables); errors then name the key.
	// The outermost one's key is p.path[:valueKey].
	inValue, valueKey int

	pos     map[string]tomlPos // nil unless positions are wanted
	wantPos bool               // an error message needed positions that were not kept
	// Offset lnOff has lnNum newlines before it and is lnCol code points
	// into its line; posScanned counts the bytes posOf looked at, so that
	// a test can hold it to the document's length.
	lnOff, lnNum, lnCol int
	posScanned          int
}

// posOf turns a byte offset into a line and a column in code points. It
// goes on from the offset it was last asked for, so that recording every
// position of a document in order looks at each byte a bounded number of
// times, however long the lines; going back, which only error messages do,
// starts again from the top.
func (p *tomlParser) posOf(off int) tomlPos {
	off = min(off, len(p.s))
	if off < p.lnOff {
		p.lnOff, p.lnNum, p.lnCol = 0, 0, 0
	}
	seg := p.s[p.lnOff:off]
	p.posScanned += len(seg)
	if nl := strings.LastIndexByte(seg, '\n'); nl >= 0 {
		p.lnNum += strings.Count(seg[:nl], "\n") + 1
		p.lnCol = utf8.RuneCountInString(seg[nl+1:])
	} else {
		p.lnCol += utf8.RuneCountInString(seg)
	}
	p.lnOff = off
	return tomlPos{p.lnNum + 1, p.lnCol + 1}
}

// tomlSeg is one step of a path: a key, or an array index when idx >= 0.
type tomlSeg struct {
	key string
	idx int
}

func tomlKeySeg(k string) tomlSeg { return tomlSeg{k, -1} }

// pathKey is p.path as a tomlPath.
func (p *tomlParser) pathKey() string {
	if len(p.path) == 1 {
		return p.path[0].key
	}
	b := p.buf[:0]
	for i, g := range p.path {
		if i > 0 {
			b = append(b, 0)
		}
		if g.idx >= 0 {
			b = strconv.AppendInt(b, int64(g.idx), 10)
		} else {
			b = append(b, g.key...)
		}
	}
	p.buf = b[:0]
	return string(b)
}

// tomlPathText spells a path for messages as a user would write it: keys
// as TOML spells them, joined with dots, array indexes in brackets.
func tomlPathText(path []tomlSeg) string {
	var b []byte
	for i, g := range path {
		switch {
		case g.idx >= 0:
			b = append(strconv.AppendInt(append(b, '['), int64(g.idx), 10), ']')
			continue
		case i > 0:
			b = append(b, '.')
		}
		b = tomlAppendKey(b, g.key)
	}
	return string(b)
}

// newTable makes a table of n expected entries and, unless parent is nil,
// registers it as parent's sub-table k.
func (p *tomlParser) newTable(parent *tomlTable, k string, kind uint8, depth, n int) *tomlTable {
	if len(p.slab) == cap(p.slab) {
		p.slab = make([]tomlTable, 0, min(2*cap(p.slab)+4, 64))
	}
	p.slab = p.slab[:len(p.slab)+1]
	t := &p.slab[len(p.slab)-1]
	*t = tomlTable{m: make(map[string]any, n), kind: kind, depth: depth}
	if parent != nil {
		p.kids[tomlKidKey{parent, k}] = t
	}
	return t
}

// errAt makes the error at offset off; inside a value it names the key
// (with array indexes) of the innermost value.
func (p *tomlParser) errAt(off int, format string, a ...any) error {
	return p.errKey(off, len(p.path), format, a...)
}

// errKey is errAt naming the key p.path[:n] when inside a value.
func (p *tomlParser) errKey(off, n int, format string, a ...any) error {
	pos := p.posOf(off)
	msg := fmt.Sprintf(format, a...)
	if p.inValue > 0 {
		msg = tomlPathText(p.path[:n]) + ": " + msg
	}
	return &tomlError{Line: pos.Line, Col: pos.Col, Msg: msg}
}

// record notes where the value at p.path starts, unless already known.
func (p *tomlParser) record(off int) {
	if p.pos == nil {
		return
	}
	k := p.pathKey()
	if _, ok := p.pos[k]; !ok {
		p.pos[k] = p.posOf(off)
	}
}

// definedAt says where the value at p.path was defined, as " (WORDS L:C)",
// when positions are known.
func (p *tomlParser) definedAt(words string) string {
	if p.pos == nil {
		p.wantPos = true
		return ""
	}
	if q, ok := p.pos[p.pathKey()]; ok {
		return fmt.Sprintf(" (%s %d:%d)", words, q.Line, q.Col)
	}
	return ""
}

// describe names what is at offset i for "expected X, found Y" messages.
func (p *tomlParser) describe(i int) string {
	if i >= len(p.s) {
		return "end of file"
	}
	switch c := p.s[i]; {
	case c == '\n' || c == '\r' && i+1 < len(p.s) && p.s[i+1] == '\n':
		return "end of line"
	case c < 0x20 || c == 0x7f:
		return fmt.Sprintf("control character U+%04X", c)
	}
	r, _ := utf8.DecodeRuneInString(p.s[i:])
	return strconv.Quote(string(r))
}

func (p *tomlParser) ctrlErr(i int, where string) error {
	return p.errAt(i, "control character U+%04X in %s", p.s[i], where)
}

// depthErr names only the outermost key: the path to where the limit is
// reached is as long as the limit.
func (p *tomlParser) depthErr(off int) error {
	return p.errKey(off, p.valueKey, "nesting deeper than %d levels", tomlMaxDepth)
}

func (p *tomlParser) parse() error {
	// "A TOML file must be a valid UTF-8 encoded Unicode document" was
	// worded to allow one leading byte order mark (toml-lang/toml#437): an
	// encoding signature, not content. Anywhere else U+FEFF is an ordinary
	// character: fine in strings and comments, an error elsewhere.
	p.s = strings.TrimPrefix(p.s, "\uFEFF")
	if !utf8.ValidString(p.s) {
		i := 0
		for i < len(p.s) {
			r, n := utf8.DecodeRuneInString(p.s[i:])
			if r == utf8.RuneError && n == 1 {
				break
			}
			i += n
		}
		return p.errAt(i, "invalid UTF-8")
	}
	p.root.m = map[string]any{}
	p.root.kind = tomlHeader
	p.kids = map[tomlKidKey]*tomlTable{}
	p.cur = &p.root
	s := p.s
	for {
		if err := p.skipBlank(); err != nil {
			return err
		}
		if p.i >= len(s) {
			return nil
		}
		what := "key/value pair"
		var err error
		if s[p.i] == '[' {
			what = "table header"
			err = p.header()
		} else {
			err = p.keyval(p.cur)
		}
		if err != nil {
			return err
		}
		if err := p.lineEnd(what); err != nil {
			return err
		}
	}
}

// skipWS skips spaces and tabs.
func (p *tomlParser) skipWS() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// skipBlank skips whitespace, newlines and comments.
func (p *tomlParser) skipBlank() error {
	s := p.s
	for p.i < len(s) {
		switch s[p.i] {
		case ' ', '\t', '\n':
			p.i++
		case '\r':
			if p.i+1 >= len(s) || s[p.i+1] != '\n' {
				return p.ctrlErr(p.i, "document (a carriage return must be followed by a line feed)")
			}
			p.i += 2
		case '#':
			if err := p.comment(); err != nil {
				return err
			}
		default:
			return nil
		}
	}
	return nil
}

// comment skips a comment up to (not including) the end of the line.
func (p *tomlParser) comment() error {
	s := p.s
	i := p.i + 1
	for ; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != 0x7f || c == '\t' {
			continue
		}
		if c == '\n' || c == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			break
		}
		return p.ctrlErr(i, "comment")
	}
	p.i = i
	return nil
}

// lineEnd requires the end of the line (or file) after a key/value pair or
// a header, allowing whitespace and a comment.
func (p *tomlParser) lineEnd(what string) error {
	p.skipWS()
	s := p.s
	if p.i < len(s) && s[p.i] == '#' {
		if err := p.comment(); err != nil {
			return err
		}
	}
	if p.i >= len(s) || s[p.i] == '\n' || s[p.i] == '\r' && p.i+1 < len(s) && s[p.i+1] == '\n' {
		return nil
	}
	return p.errAt(p.i, "expected end of line after %s, found %s", what, p.describe(p.i))
}

var tomlBareChar = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
	}
	return t
}()

// key parses a simple or dotted key into p.keys.
func (p *tomlParser) key() error {
	s := p.s
	p.keys = p.keys[:0]
	for {
		if p.i >= len(s) {
			return p.errAt(p.i, "expected a key, found end of file")
		}
		start := p.i
		var k string
		var err error
		switch c := s[p.i]; {
		case tomlBareChar[c]:
			j := p.i + 1
			for j < len(s) && tomlBareChar[s[j]] {
				j++
			}
			k, p.i = s[p.i:j], j
		case c == '"':
			if strings.HasPrefix(s[p.i:], `"""`) {
				return p.errAt(p.i, "a multi-line string cannot be a key")
			}
			k, err = p.basicString()
		case c == '\'':
			if strings.HasPrefix(s[p.i:], `'''`) {
				return p.errAt(p.i, "a multi-line string cannot be a key")
			}
			k, err = p.literalString()
		default:
			return p.errAt(p.i, "expected a key, found %s", p.describe(p.i))
		}
		if err != nil {
			return err
		}
		p.keys = append(p.keys, k)
		if len(p.keys) > tomlMaxDepth {
			return p.depthErr(start)
		}
		j := p.i
		for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
			j++
		}
		if j >= len(s) || s[j] != '.' {
			return nil
		}
		p.i = j + 1
		p.skipWS()
	}
}

// tomlKeyText writes key parts as TOML would: bare where possible, quoted
// otherwise, joined with dots.
func tomlKeyText(parts []string) string {
	var b []byte
	for i, k := range parts {
		if i > 0 {
			b = append(b, '.')
		}
		b = tomlAppendKey(b, k)
	}
	return string(b)
}

// tomlKeyQuoted is a key for messages: a bare key in double quotes, any
// other as TOML spells it, which quotes it already.
func tomlKeyQuoted(parts []string) string {
	s := tomlKeyText(parts)
	if strings.IndexByte(s, '"') < 0 {
		return `"` + s + `"`
	}
	return s
}

// keyval parses `key = value` and adds it to t.
func (p *tomlParser) keyval(t *tomlTable) error {
	s := p.s
	keyOff := p.i
	if err := p.key(); err != nil {
		return err
	}
	p.skipWS()
	if p.i >= len(s) || s[p.i] != '=' {
		return p.errAt(p.i, "expected \"=\" after key %s, found %s", tomlKeyQuoted(p.keys), p.describe(p.i))
	}
	p.i++
	p.skipWS()
	pathLen := len(p.path)
	n := len(p.keys)
	for j, k := range p.keys[:n-1] {
		p.path = append(p.path, tomlKeySeg(k))
		kid := p.kids[tomlKidKey{t, k}]
		if kid != nil && kid.kind == tomlDotted && !kid.aot {
			t = kid
			continue
		}
		switch {
		case kid != nil && kid.aot:
			return p.errAt(keyOff, "cannot define key %s: %s is an array of tables%s", tomlKeyQuoted(p.keys), tomlKeyQuoted(p.keys[:j+1]), p.definedAt("defined at"))
		case kid != nil:
			return p.errAt(keyOff, "cannot define key %s: table %s was created by a [header]%s and cannot be extended with dotted keys", tomlKeyQuoted(p.keys), tomlKeyQuoted(p.keys[:j+1]), p.definedAt("at"))
		}
		if v, ok := t.m[k]; ok {
			return p.errAt(keyOff, "cannot define key %s: %s is already %s%s", tomlKeyQuoted(p.keys), tomlKeyQuoted(p.keys[:j+1]), tomlKind(v), p.definedAt("defined at"))
		}
		if t.depth+1 > tomlMaxDepth {
			return p.depthErr(keyOff)
		}
		nt := p.newTable(t, k, tomlDotted, t.depth+1, 0)
		t.m[k] = nt.m
		p.record(keyOff)
		t = nt
	}
	last := p.keys[n-1]
	p.path = append(p.path, tomlKeySeg(last))
	if _, dup := t.m[last]; dup {
		return p.errAt(keyOff, "duplicate key %s%s", tomlKeyQuoted(p.keys), p.definedAt("first defined at"))
	}
	p.record(keyOff)
	if p.inValue == 0 {
		p.valueKey = len(p.path)
	}
	p.inValue++
	v, err := p.value(t.depth + 1)
	if err != nil {
		return err
	}
	p.inValue--
	t.m[last] = v
	p.path = p.path[:pathLen]
	return nil
}

// tomlKind names a value's kind for messages, with an article.
func tomlKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time, localDateTime, localDate, localTime:
		return "a date/time"
	case []any:
		return "an array"
	case map[string]any:
		return "an inline table"
	}
	return fmt.Sprintf("a %T", v)
}

// header parses a [table] or [[array of tables]] header and makes its table
// the current one.
func (p *tomlParser) header() error {
	s := p.s
	off := p.i
	aot := p.i+1 < len(s) && s[p.i+1] == '['
	p.i++
	if aot {
		p.i++
	}
	p.skipWS()
	if err := p.key(); err != nil {
		return err
	}
	p.skipWS()
	closing := "]"
	if aot {
		closing = "]]"
	}
	if !strings.HasPrefix(s[p.i:], closing) {
		at := p.i
		if aot && at < len(s) && s[at] == ']' {
			at++
		}
		return p.errAt(at, "expected %q to close the header, found %s", closing, p.describe(at))
	}
	p.i += len(closing)

	p.path = p.path[:0]
	t := &p.root
	n := len(p.keys)
	for j, k := range p.keys[:n-1] {
		p.path = append(p.path, tomlKeySeg(k))
		if kid := p.kids[tomlKidKey{t, k}]; kid != nil {
			if kid.aot {
				p.path = append(p.path, tomlSeg{idx: len(t.m[k].([]any)) - 1})
			}
			t = kid
			continue
		}
		if v, ok := t.m[k]; ok {
			return p.errAt(off, "cannot define table %s: %s is already %s%s", tomlHeaderText(p.keys, aot), tomlKeyQuoted(p.keys[:j+1]), tomlKind(v), p.definedAt("defined at"))
		}
		if t.depth+1 > tomlMaxDepth {
			return p.depthErr(off)
		}
		nt := p.newTable(t, k, tomlImplicit, t.depth+1, 0)
		t.m[k] = nt.m
		p.record(off)
		t = nt
	}
	k := p.keys[n-1]
	p.path = append(p.path, tomlKeySeg(k))
	kid := p.kids[tomlKidKey{t, k}]
	v, exists := t.m[k]
	if aot {
		arr, isArr := v.([]any)
		switch {
		case kid != nil && kid.aot:
		case kid != nil:
			return p.errAt(off, "cannot define array of tables %s: [%s] is already a table%s", tomlHeaderText(p.keys, aot), tomlKeyText(p.keys), p.definedAt("defined at"))
		case isArr:
			return p.errAt(off, "cannot append to array %s with %s: it was defined as a value%s", tomlKeyQuoted(p.keys), tomlHeaderText(p.keys, aot), p.definedAt("at"))
		case exists:
			return p.errAt(off, "cannot define array of tables %s: the key is already %s%s", tomlHeaderText(p.keys, aot), tomlKind(v), p.definedAt("defined at"))
		}
		if t.depth+2 > tomlMaxDepth {
			return p.depthErr(off)
		}
		n := 0
		if kid != nil {
			n = len(kid.m) // elements tend to look alike
		}
		nt := p.newTable(t, k, tomlHeader, t.depth+2, n)
		nt.aot = true
		p.record(off)
		p.path = append(p.path, tomlSeg{idx: len(arr)})
		p.record(off)
		t.m[k] = append(arr, nt.m)
		p.cur = nt
		return nil
	}
	switch {
	case kid != nil && kid.aot:
		return p.errAt(off, "cannot define table %s: it is already an array of tables%s", tomlHeaderText(p.keys, aot), p.definedAt("defined at"))
	case kid != nil && kid.kind == tomlImplicit:
		kid.kind = tomlHeader
		if p.pos != nil {
			p.pos[p.pathKey()] = p.posOf(off)
		}
		p.cur = kid
		return nil
	case kid != nil && kid.kind == tomlHeader:
		return p.errAt(off, "table %s defined twice%s", tomlHeaderText(p.keys, aot), p.definedAt("first defined at"))
	case kid != nil:
		return p.errAt(off, "cannot define table %s: it was already defined with dotted keys%s", tomlHeaderText(p.keys, aot), p.definedAt("at"))
	case exists:
		return p.errAt(off, "cannot define table %s: the key is already %s%s", tomlHeaderText(p.keys, aot), tomlKind(v), p.definedAt("defined at"))
	}
	if t.depth+1 > tomlMaxDepth {
		return p.depthErr(off)
	}
	nt := p.newTable(t, k, tomlHeader, t.depth+1, 0)
	t.m[k] = nt.m
	p.record(off)
	p.cur = nt
	return nil
}

func tomlHeaderText(keys []string, aot bool) string {
	if aot {
		return "[[" + tomlKeyText(keys) + "]]"
	}
	return "[" + tomlKeyText(keys) + "]"
}

// value parses any value; depth is its path length.
func (p *tomlParser) value(depth int) (any, error) {
	s := p.s
	if depth > tomlMaxDepth {
		return nil, p.depthErr(p.i)
	}
	if p.i >= len(s) {
		return nil, p.errAt(p.i, "expected a value, found end of file")
	}
	switch c := s[p.i]; c {
	case '"':
		if strings.HasPrefix(s[p.i:], `"""`) {
			return p.mlString('"')
		}
		return p.basicString()
	case '\'':
		if strings.HasPrefix(s[p.i:], `'''`) {
			return p.mlString('\'')
		}
		return p.literalString()
	case 't', 'f':
		j := p.i
		for j < len(s) && tomlBareChar[s[j]] {
			j++
		}
		switch s[p.i:j] {
		case "true":
			p.i = j
			return true, nil
		case "false":
			p.i = j
			return false, nil
		}
		return nil, p.errAt(p.i, "invalid value %q (booleans are lowercase true and false; strings need quotes)", s[p.i:j])
	case '[':
		return p.array(depth)
	case '{':
		return p.inlineTable(depth)
	default:
		if c >= '0' && c <= '9' || c == '+' || c == '-' || c == 'i' || c == 'n' {
			return p.numberOrDate()
		}
	}
	return nil, p.errAt(p.i, "expected a value, found %s", p.describe(p.i))
}

func (p *tomlParser) array(depth int) (any, error) {
	s := p.s
	open := p.i
	p.i++
	base := len(p.stack)
	for {
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.i >= len(s) {
			return nil, p.errAt(p.i, "expected \"]\" to close the array opened at %s, found end of file", p.at(open))
		}
		if s[p.i] == ']' {
			break
		}
		p.path = append(p.path, tomlSeg{idx: len(p.stack) - base})
		p.record(p.i)
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		p.path = p.path[:len(p.path)-1]
		p.stack = append(p.stack, v)
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.i < len(s) && s[p.i] == ',' {
			p.i++
			continue
		}
		if p.i < len(s) && s[p.i] == ']' {
			break
		}
		return nil, p.errAt(p.i, "expected \",\" or \"]\" after an array element, found %s", p.describe(p.i))
	}
	p.i++
	arr := make([]any, len(p.stack)-base)
	copy(arr, p.stack[base:])
	clear(p.stack[base:])
	p.stack = p.stack[:base]
	return arr, nil
}

// at formats the position of an offset as L:C.
func (p *tomlParser) at(off int) string {
	q := p.posOf(off)
	return fmt.Sprintf("%d:%d", q.Line, q.Col)
}

func (p *tomlParser) inlineTable(depth int) (any, error) {
	s := p.s
	open := p.i
	p.i++
	// The table gets bookkeeping only while it is parsed: dotted keys inside
	// may extend each other; afterwards nothing can reach it.
	t := p.newTable(nil, "", tomlDotted, depth, 0)
	p.skipWS()
	if p.i < len(s) && s[p.i] == '}' {
		p.i++
		return t.m, nil
	}
	for {
		if err := p.keyval(t); err != nil {
			return nil, err
		}
		p.skipWS()
		if p.i >= len(s) {
			return nil, p.errAt(p.i, "expected \"}\" to close the inline table opened at %s, found end of file", p.at(open))
		}
		switch s[p.i] {
		case ',':
			p.i++
			p.skipWS()
			if p.i < len(s) && s[p.i] == '}' {
				return nil, p.errAt(p.i, "trailing comma in inline table (not allowed in TOML 1.0)")
			}
			continue
		case '}':
			p.i++
			return t.m, nil
		case '\n', '\r':
			return nil, p.errAt(p.i, "newline in inline table opened at %s (inline tables must be on one line)", p.at(open))
		}
		return nil, p.errAt(p.i, "expected \",\" or \"}\" in inline table, found %s", p.describe(p.i))
	}
}

// basicString parses a "basic string".
func (p *tomlParser) basicString() (string, error) {
	s := p.s
	open := p.i
	for i := p.i + 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			p.i = i + 1
			return s[open+1 : i], nil
		case c == '\\':
			return p.basicEscaped(open, i)
		case c == '\n' || c == '\r':
			return "", p.errAt(open, "unterminated string (a basic string ends on its line)")
		case c < 0x20 && c != '\t' || c == 0x7f:
			return "", p.ctrlErr(i, "string")
		}
	}
	return "", p.errAt(open, "unterminated string")
}

// basicEscaped continues basicString from the first backslash at i.
func (p *tomlParser) basicEscaped(open, i int) (string, error) {
	s := p.s
	b := append(p.buf[:0], s[open+1:i]...)
	defer func() { p.buf = b[:0] }()
	var err error
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"':
			p.i = i + 1
			return string(b), nil
		case c == '\\':
			if b, i, err = p.escape(b, i); err != nil {
				return "", err
			}
			continue
		case c == '\n' || c == '\r':
			return "", p.errAt(open, "unterminated string (a basic string ends on its line)")
		case c < 0x20 && c != '\t' || c == 0x7f:
			return "", p.ctrlErr(i, "string")
		}
		b = append(b, c)
		i++
	}
	return "", p.errAt(open, "unterminated string")
}

// escape decodes the escape sequence at s[i] == '\\', appends it to b and
// returns the offset after it.
func (p *tomlParser) escape(b []byte, i int) ([]byte, int, error) {
	s := p.s
	if i+1 >= len(s) {
		return b, i, p.errAt(i, "unterminated string")
	}
	var c byte
	switch s[i+1] {
	case 'b':
		c = '\b'
	case 't':
		c = '\t'
	case 'n':
		c = '\n'
	case 'f':
		c = '\f'
	case 'r':
		c = '\r'
	case '"':
		c = '"'
	case '\\':
		c = '\\'
	case 'u', 'U':
		n := 4
		if s[i+1] == 'U' {
			n = 8
		}
		var r uint32
		for k := i + 2; k < i+2+n; k++ {
			d := -1
			if k < len(s) {
				d = tomlHexVal(s[k])
			}
			if d < 0 {
				return b, i, p.errAt(i, "invalid escape sequence \"%s\": \\%c needs %d hex digits", s[i:k], s[i+1], n)
			}
			r = r<<4 | uint32(d)
		}
		if r > utf8.MaxRune || r >= 0xD800 && r <= 0xDFFF {
			return b, i, p.errAt(i, "escape sequence \"%s\" is not a Unicode scalar value", s[i:i+2+n])
		}
		return utf8.AppendRune(b, rune(r)), i + 2 + n, nil
	default:
		if s[i+1] == '\n' || s[i+1] == '\r' {
			return b, i, p.errAt(i, "invalid escape sequence: a backslash at the end of a line is only allowed in multi-line basic strings")
		}
		if s[i+1] < 0x20 && s[i+1] != '\t' || s[i+1] == 0x7f {
			return b, i, p.ctrlErr(i+1, "string")
		}
		r, _ := utf8.DecodeRuneInString(s[i+1:])
		return b, i, p.errAt(i, "invalid escape sequence \"\\%c\"", r)
	}
	return append(b, c), i + 2, nil
}

func tomlHexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// literalString parses a 'literal string'.
func (p *tomlParser) literalString() (string, error) {
	s := p.s
	open := p.i
	for i := p.i + 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'':
			p.i = i + 1
			return s[open+1 : i], nil
		case c == '\n' || c == '\r':
			return "", p.errAt(open, "unterminated string (a literal string ends on its line)")
		case c < 0x20 && c != '\t' || c == 0x7f:
			return "", p.ctrlErr(i, "string")
		}
	}
	return "", p.errAt(open, "unterminated string")
}

// mlString parses a multi-line string: basic if q is a double quote,
// literal if it is a single quote.
func (p *tomlParser) mlString(q byte) (string, error) {
	s := p.s
	open := p.i
	i := p.i + 3
	// A newline right after the opening delimiter is not content.
	if strings.HasPrefix(s[i:], "\n") {
		i++
	} else if strings.HasPrefix(s[i:], "\r\n") {
		i += 2
	}
	var b []byte // nil until an escape makes a copy necessary
	seg := i     // start of content not yet copied to b
	var err error
	for i < len(s) {
		c := s[i]
		switch {
		case c == q:
			n := 1
			for i+n < len(s) && s[i+n] == q {
				n++
			}
			if n < 3 {
				i += n
				continue
			}
			if n > 5 {
				return "", p.errAt(i+5, "too many quotes: at most two may end a multi-line string before its closing delimiter")
			}
			end := i + n - 3 // up to two quotes before the delimiter are content
			p.i = i + n
			if b == nil {
				return s[seg:end], nil
			}
			b = append(b, s[seg:end]...)
			str := string(b)
			p.buf = b[:0]
			return str, nil
		case c == '\\' && q == '"':
			if b == nil {
				b = p.buf[:0]
			}
			b = append(b, s[seg:i]...)
			j := i + 1
			for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
				j++
			}
			if j < len(s) && (s[j] == '\n' || s[j] == '\r' && j+1 < len(s) && s[j+1] == '\n') {
				// Line-ending backslash: drop whitespace and newlines up to
				// the next other character.
				for j < len(s) {
					if s[j] == ' ' || s[j] == '\t' || s[j] == '\n' {
						j++
					} else if s[j] == '\r' && j+1 < len(s) && s[j+1] == '\n' {
						j += 2
					} else {
						break
					}
				}
				i, seg = j, j
				continue
			}
			if b, i, err = p.escape(b, i); err != nil {
				return "", err
			}
			seg = i
		case c == '\n' || c == '\t' || c >= 0x20 && c != 0x7f:
			i++
		case c == '\r' && i+1 < len(s) && s[i+1] == '\n':
			i += 2
		default:
			return "", p.ctrlErr(i, "string")
		}
	}
	return "", p.errAt(open, "unterminated multi-line string")
}

func tomlIsDigit(c byte) bool { return c >= '0' && c <= '9' }

// tomlNumChar are the bytes a number token may contain.
var tomlNumChar = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = tomlBareChar[c] || c == '+' || c == '.'
	}
	return t
}()

// numberOrDate parses an integer, float or date/time value.
func (p *tomlParser) numberOrDate() (any, error) {
	s := p.s
	i := p.i
	if len(s)-i >= 5 && tomlIsDigit(s[i]) && tomlIsDigit(s[i+1]) && tomlIsDigit(s[i+2]) && tomlIsDigit(s[i+3]) && s[i+4] == '-' {
		return p.dateTime()
	}
	if len(s)-i >= 3 && tomlIsDigit(s[i]) && tomlIsDigit(s[i+1]) && s[i+2] == ':' {
		t, end, err := p.timeOfDay(i)
		if err != nil {
			return nil, err
		}
		p.i = end
		return t, nil
	}
	j := i
	for j < len(s) && tomlNumChar[s[j]] {
		j++
	}
	tok := s[i:j]
	p.i = j
	switch tok {
	case "inf", "+inf":
		return math.Inf(1), nil
	case "-inf":
		return math.Inf(-1), nil
	case "nan", "+nan":
		return math.NaN(), nil
	case "-nan":
		return math.Copysign(math.NaN(), -1), nil
	}
	body := tok
	neg := false
	if body != "" && (body[0] == '+' || body[0] == '-') {
		neg = body[0] == '-'
		body = body[1:]
	}
	if len(body) >= 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'o' || body[1] == 'b') {
		if len(body) != len(tok) {
			return nil, p.errAt(i, "invalid integer %q: hexadecimal, octal and binary integers take no sign", tok)
		}
		return p.prefixedInt(tok, i)
	}
	if strings.ContainsAny(body, ".eE") {
		return p.float(tok, body, i)
	}
	if body == "" || !tomlIsDigit(body[0]) {
		return nil, p.errAt(i, "invalid value %q", tok)
	}
	if body[0] == '0' && len(body) > 1 {
		switch body[1] {
		case 'X', 'O', 'B':
			return nil, p.errAt(i, "invalid integer %q: the prefixes are lowercase 0x, 0o and 0b", tok)
		case '_', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			return nil, p.errAt(i, "invalid integer %q: leading zeros are not allowed", tok)
		}
		return nil, p.errAt(i, "invalid value %q", tok)
	}
	limit := uint64(math.MaxInt64)
	if neg {
		limit++
	}
	var u uint64
	for k := 0; k < len(body); k++ {
		c := body[k]
		if c == '_' {
			if !tomlUnderscoreOK(body, k) {
				return nil, p.errAt(i, "invalid integer %q: an underscore must be between two digits", tok)
			}
			continue
		}
		if !tomlIsDigit(c) {
			return nil, p.errAt(i, "invalid integer %q", tok)
		}
		d := uint64(c - '0')
		if u > (limit-d)/10 {
			return nil, p.errAt(i, "integer %s out of range (64-bit signed)", tok)
		}
		u = u*10 + d
	}
	if neg {
		return int64(-u), nil
	}
	return int64(u), nil
}

// tomlUnderscoreOK: the underscore at s[k] sits between two digits (of any
// base: callers check the digits themselves).
func tomlUnderscoreOK(s string, k int) bool {
	return k > 0 && k+1 < len(s) && tomlHexVal(s[k-1]) >= 0 && tomlHexVal(s[k+1]) >= 0
}

func (p *tomlParser) prefixedInt(tok string, off int) (any, error) {
	base := uint64(16)
	switch tok[1] {
	case 'o':
		base = 8
	case 'b':
		base = 2
	}
	digits := tok[2:]
	if digits == "" {
		return nil, p.errAt(off, "invalid integer %q: no digits after the prefix", tok)
	}
	var u uint64
	for k := 0; k < len(digits); k++ {
		c := digits[k]
		if c == '_' {
			if !tomlUnderscoreOK(digits, k) {
				return nil, p.errAt(off, "invalid integer %q: an underscore must be between two digits", tok)
			}
			continue
		}
		d := tomlHexVal(c)
		if d < 0 || uint64(d) >= base {
			return nil, p.errAt(off, "invalid integer %q: %q is not a base-%d digit", tok, c, base)
		}
		if u > (math.MaxInt64-uint64(d))/base {
			return nil, p.errAt(off, "integer %s out of range (64-bit signed)", tok)
		}
		u = u*base + uint64(d)
	}
	return int64(u), nil
}

// tomlDigits returns the end of a run of decimal digits with single
// underscores between them starting at s[k], or -1 if there is none.
func tomlDigits(s string, k int) int {
	if k >= len(s) || !tomlIsDigit(s[k]) {
		return -1
	}
	for k++; k < len(s); k++ {
		if s[k] == '_' {
			if k+1 >= len(s) || !tomlIsDigit(s[k+1]) {
				return -1
			}
			k++
		} else if !tomlIsDigit(s[k]) {
			break
		}
	}
	return k
}

func (p *tomlParser) float(tok, body string, off int) (any, error) {
	bad := func(why string) (any, error) {
		return nil, p.errAt(off, "invalid float %q: %s", tok, why)
	}
	k := tomlDigits(body, 0)
	if k < 0 {
		return bad("it must start with a digit and underscores must be between digits")
	}
	if body[0] == '0' && k > 1 {
		return bad("leading zeros are not allowed")
	}
	if k < len(body) && body[k] == '.' {
		if k = tomlDigits(body, k+1); k < 0 {
			return bad("a digit must follow the decimal point")
		}
	}
	if k < len(body) && (body[k] == 'e' || body[k] == 'E') {
		k++
		if k < len(body) && (body[k] == '+' || body[k] == '-') {
			k++
		}
		if k = tomlDigits(body, k); k < 0 {
			return bad("the exponent needs digits")
		}
	}
	if k != len(body) {
		return bad("unexpected " + strconv.Quote(body[k:k+1]))
	}
	clean := tok
	if strings.IndexByte(tok, '_') >= 0 {
		clean = strings.ReplaceAll(tok, "_", "")
	}
	f, err := strconv.ParseFloat(clean, 64)
	if err != nil {
		return nil, p.errAt(off, "float %s out of range (64-bit)", tok)
	}
	return f, nil
}

// tomlNum reads n decimal digits at s[i:], or -1.
func tomlNum(s string, i, n int) int {
	if i+n > len(s) {
		return -1
	}
	v := 0
	for k := i; k < i+n; k++ {
		if !tomlIsDigit(s[k]) {
			return -1
		}
		v = v*10 + int(s[k]-'0')
	}
	return v
}

// dateTime parses an offset date-time, local date-time or local date.
func (p *tomlParser) dateTime() (any, error) {
	s := p.s
	off := p.i
	y, mo, d := tomlNum(s, off, 4), tomlNum(s, off+5, 2), tomlNum(s, off+8, 2)
	if y < 0 || mo < 0 || d < 0 || s[off+7] != '-' {
		return nil, p.errAt(off, "invalid date: expected YYYY-MM-DD")
	}
	date := localDate{y, mo, d}
	if mo < 1 || mo > 12 {
		return nil, p.errAt(off, "invalid date %s: month out of range", s[off:off+10])
	}
	if !date.valid() {
		return nil, p.errAt(off, "invalid date %s: no such day", s[off:off+10])
	}
	j := off + 10
	if j+1 >= len(s) || !(s[j] == 'T' || s[j] == 't' || s[j] == ' ' && tomlIsDigit(s[j+1])) {
		if j < len(s) && (s[j] == 'T' || s[j] == 't') {
			return nil, p.errAt(j, "invalid date-time: expected a time after %q", s[j:j+1])
		}
		p.i = j
		return date, nil
	}
	t, k, err := p.timeOfDay(j + 1)
	if err != nil {
		return nil, err
	}
	var loc *time.Location
	switch {
	case k < len(s) && (s[k] == 'Z' || s[k] == 'z'):
		loc = time.UTC
		k++
	case k < len(s) && (s[k] == '+' || s[k] == '-'):
		oh, om := tomlNum(s, k+1, 2), tomlNum(s, k+4, 2)
		if oh < 0 || om < 0 || s[k+3] != ':' {
			return nil, p.errAt(k, "invalid offset: expected %cHH:MM", s[k])
		}
		if oh > 23 || om > 59 {
			return nil, p.errAt(k, "invalid offset %s", s[k:k+6])
		}
		secs := (oh*60 + om) * 60
		if s[k] == '-' {
			secs = -secs
		}
		loc = p.zone(secs)
		k += 6
	default:
		p.i = k
		return localDateTime{date, t}, nil
	}
	p.i = k
	return time.Date(y, time.Month(mo), d, t.Hour, t.Minute, t.Second, t.Nanosecond, loc), nil
}

// zone returns one fixed zone per offset, so equal offsets share it.
func (p *tomlParser) zone(secs int) *time.Location {
	if z, ok := p.zones[secs]; ok {
		return z
	}
	if p.zones == nil {
		p.zones = map[int]*time.Location{}
	}
	z := time.FixedZone("", secs)
	p.zones[secs] = z
	return z
}

// timeOfDay parses HH:MM:SS[.fraction] at s[i:].
func (p *tomlParser) timeOfDay(i int) (localTime, int, error) {
	s := p.s
	h, m, sec := tomlNum(s, i, 2), tomlNum(s, i+3, 2), tomlNum(s, i+6, 2)
	if h < 0 || m < 0 || sec < 0 || s[i+2] != ':' || s[i+5] != ':' {
		return localTime{}, 0, p.errAt(i, "invalid time: expected HH:MM:SS")
	}
	t := localTime{Hour: h, Minute: m, Second: sec}
	if !t.valid() {
		return t, 0, p.errAt(i, "invalid time %s: hour, minute or second out of range", s[i:i+8])
	}
	k := i + 8
	if k < len(s) && s[k] == '.' {
		k++
		if k >= len(s) || !tomlIsDigit(s[k]) {
			return t, 0, p.errAt(k, "invalid time: a digit must follow the decimal point")
		}
		scale := int(1e8)
		for ; k < len(s) && tomlIsDigit(s[k]); k++ {
			t.Nanosecond += int(s[k]-'0') * scale // digits past nanoseconds are truncated
			scale /= 10
		}
	}
	return t, k, nil
}

// tomlKV is one key/value pair of a table whose key order matters to the
// encoder (the lock file puts lock_version first).
type tomlKV struct {
	Key   string
	Value any
}

// encodeTOML writes a deterministic TOML document: same value, same bytes.
// Tables are map[string]any (keys sorted) or []tomlKV (keys in the given
// order). In each table scalars and inline arrays come first, then
// sub-tables, then arrays of tables (non-empty arrays whose elements are all
// tables). Values are the decoder's types, plus the other Go integer types,
// float32, []string and slices of tables. What TOML cannot say exactly is
// an error, so that decoding the output always gives the value back:
// unsupported types, invalid UTF-8, dates outside years 0-9999, offsets with
// seconds, NaNs other than the two the decoder makes (nan and -nan, which
// have no payload to keep) and nesting deeper than tomlMaxDepth.
func encodeTOML(doc any) ([]byte, error) {
	e := tomlEncoder{}
	kvs, ok, err := tomlEntries(doc)
	if !ok {
		return nil, fmt.Errorf("encode TOML: the document must be a table, not %T", doc)
	}
	if err == nil {
		err = e.table(nil, kvs, false, 0)
	}
	if err != nil {
		return nil, err
	}
	return e.buf, nil
}

type tomlEncoder struct {
	buf  []byte
	path []string // for messages: where the value being written is
}

func (e *tomlEncoder) errorf(format string, a ...any) error {
	where := ""
	if len(e.path) > 0 {
		where = " at " + strconv.Quote(strings.Join(e.path, "."))
	}
	return fmt.Errorf("encode TOML%s: %s", where, fmt.Sprintf(format, a...))
}

// tomlEntries returns a table's entries in output order; ok is false if v is
// not a table.
func tomlEntries(v any) (kvs []tomlKV, ok bool, err error) {
	switch t := v.(type) {
	case map[string]any:
		kvs = make([]tomlKV, 0, len(t))
		for k, v := range t {
			kvs = append(kvs, tomlKV{k, v})
		}
		slices.SortFunc(kvs, func(a, b tomlKV) int { return strings.Compare(a.Key, b.Key) })
		return kvs, true, nil
	case []tomlKV:
		seen := make(map[string]bool, len(t))
		for _, kv := range t {
			if seen[kv.Key] {
				return nil, true, fmt.Errorf("encode TOML: duplicate key %q", kv.Key)
			}
			seen[kv.Key] = true
		}
		return t, true, nil
	}
	return nil, false, nil
}

// tomlTables returns the elements of an array of tables, or nil.
func tomlTables(v any) []any {
	var out []any
	switch a := v.(type) {
	case []map[string]any:
		for _, t := range a {
			out = append(out, t)
		}
	case [][]tomlKV:
		for _, t := range a {
			out = append(out, t)
		}
	case []any:
		for _, t := range a {
			if !tomlIsTable(t) {
				return nil
			}
		}
		out = a
	}
	return out
}

func tomlIsTable(v any) bool {
	switch v.(type) {
	case map[string]any, []tomlKV:
		return true
	}
	return false
}

// table writes the table at path (header names, without array indexes);
// depth counts array indexes too, as the decoder does.
func (e *tomlEncoder) table(path []string, kvs []tomlKV, aotElem bool, depth int) error {
	var inline, tables, aots []tomlKV
	for _, kv := range kvs {
		if tomlIsTable(kv.Value) {
			tables = append(tables, kv)
		} else if len(tomlTables(kv.Value)) > 0 {
			aots = append(aots, kv)
		} else {
			inline = append(inline, kv)
		}
	}
	if aotElem || len(path) > 0 && (len(inline) > 0 || len(kvs) == 0) {
		if len(e.buf) > 0 {
			e.buf = append(e.buf, '\n')
		}
		if aotElem {
			e.buf = append(e.buf, "[["...)
		} else {
			e.buf = append(e.buf, '[')
		}
		for i, k := range path {
			if i > 0 {
				e.buf = append(e.buf, '.')
			}
			e.buf = tomlAppendKey(e.buf, k)
		}
		if aotElem {
			e.buf = append(e.buf, "]]"...)
		} else {
			e.buf = append(e.buf, ']')
		}
		e.buf = append(e.buf, '\n')
	}
	saved := e.path
	for _, kv := range inline {
		e.path = append(saved, kv.Key)
		e.buf = tomlAppendKey(e.buf, kv.Key)
		e.buf = append(e.buf, " = "...)
		if err := e.value(kv.Value, depth+1); err != nil {
			return err
		}
		e.buf = append(e.buf, '\n')
	}
	sub := func(kv tomlKV, v any, aot bool, depth int) error {
		if depth > tomlMaxDepth {
			return e.errorf("nesting deeper than %d levels", tomlMaxDepth)
		}
		kvs, _, err := tomlEntries(v)
		if err != nil {
			return err
		}
		return e.table(append(path[:len(path):len(path)], kv.Key), kvs, aot, depth)
	}
	for _, kv := range tables {
		e.path = append(saved, kv.Key)
		if err := sub(kv, kv.Value, false, depth+1); err != nil {
			return err
		}
	}
	for _, kv := range aots {
		for i, t := range tomlTables(kv.Value) {
			e.path = append(saved, kv.Key, strconv.Itoa(i))
			if err := sub(kv, t, true, depth+2); err != nil {
				return err
			}
		}
	}
	e.path = saved
	return nil
}

// value writes an inline value whose path length is depth.
func (e *tomlEncoder) value(v any, depth int) error {
	if depth > tomlMaxDepth {
		return e.errorf("nesting deeper than %d levels", tomlMaxDepth)
	}
	b := e.buf
	switch x := v.(type) {
	case string:
		if !utf8.ValidString(x) {
			return e.errorf("string is not valid UTF-8")
		}
		e.buf = tomlAppendString(b, x)
	case bool:
		e.buf = strconv.AppendBool(b, x)
	case int:
		e.buf = strconv.AppendInt(b, int64(x), 10)
	case int8:
		e.buf = strconv.AppendInt(b, int64(x), 10)
	case int16:
		e.buf = strconv.AppendInt(b, int64(x), 10)
	case int32:
		e.buf = strconv.AppendInt(b, int64(x), 10)
	case int64:
		e.buf = strconv.AppendInt(b, x, 10)
	case uint8:
		e.buf = strconv.AppendUint(b, uint64(x), 10)
	case uint16:
		e.buf = strconv.AppendUint(b, uint64(x), 10)
	case uint32:
		e.buf = strconv.AppendUint(b, uint64(x), 10)
	case uint:
		return e.value(uint64(x), depth)
	case uint64:
		if x > math.MaxInt64 {
			return e.errorf("integer %d does not fit TOML's 64-bit signed integers", x)
		}
		e.buf = strconv.AppendUint(b, x, 10)
	case float32:
		return e.value(float64(x), depth)
	case float64:
		if math.IsNaN(x) && math.Float64bits(math.Abs(x)) != math.Float64bits(math.NaN()) {
			// TOML has only nan and -nan: writing this one would make two
			// different values the same text.
			return e.errorf("NaN with payload %#x has no TOML spelling", math.Float64bits(x))
		}
		e.buf = tomlAppendFloat(b, x)
	case time.Time:
		_, off := x.Zone()
		if x.Year() < 0 || x.Year() > 9999 {
			return e.errorf("year %d is outside TOML's 0000-9999", x.Year())
		}
		if off%60 != 0 {
			return e.errorf("offset %ds has seconds, which TOML cannot express", off)
		}
		e.buf = x.AppendFormat(b, "2006-01-02T15:04:05.999999999Z07:00")
	case localDate:
		if !x.valid() {
			return e.errorf("invalid local date %v", x)
		}
		e.buf = append(b, x.String()...)
	case localTime:
		if !x.valid() {
			return e.errorf("invalid local time %v", x)
		}
		e.buf = append(b, x.String()...)
	case localDateTime:
		if !x.Date.valid() || !x.Time.valid() {
			return e.errorf("invalid local date-time %v", x)
		}
		e.buf = append(b, x.String()...)
	case map[string]any, []tomlKV:
		kvs, _, err := tomlEntries(x)
		if err != nil {
			return err
		}
		e.buf = append(b, '{')
		saved := e.path
		for i, kv := range kvs {
			if i > 0 {
				e.buf = append(e.buf, ", "...)
			}
			e.path = append(saved, kv.Key)
			e.buf = tomlAppendKey(e.buf, kv.Key)
			e.buf = append(e.buf, " = "...)
			if err := e.value(kv.Value, depth+1); err != nil {
				return err
			}
		}
		e.path = saved
		e.buf = append(e.buf, '}')
	default:
		elems, ok := tomlArrayElems(v)
		if !ok {
			return e.errorf("unsupported value type %T", v)
		}
		e.buf = append(b, '[')
		saved := e.path
		for i, el := range elems {
			if i > 0 {
				e.buf = append(e.buf, ", "...)
			}
			e.path = append(saved, strconv.Itoa(i))
			if err := e.value(el, depth+1); err != nil {
				return err
			}
		}
		e.path = saved
		e.buf = append(e.buf, ']')
	}
	return nil
}

// tomlArrayElems returns the elements of the slice types the encoder takes.
func tomlArrayElems(v any) ([]any, bool) {
	switch a := v.(type) {
	case []any:
		return a, true
	case []string:
		out := make([]any, len(a))
		for i, s := range a {
			out[i] = s
		}
		return out, true
	case []int64:
		out := make([]any, len(a))
		for i, n := range a {
			out[i] = n
		}
		return out, true
	case []map[string]any, [][]tomlKV:
		return tomlTables(a), true
	}
	return nil, false
}

func tomlAppendFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		if math.Signbit(f) {
			return append(b, "-nan"...)
		}
		return append(b, "nan"...)
	case math.IsInf(f, 1):
		return append(b, "inf"...)
	case math.IsInf(f, -1):
		return append(b, "-inf"...)
	}
	n := len(b)
	b = strconv.AppendFloat(b, f, 'g', -1, 64)
	if !strings.ContainsAny(string(b[n:]), ".e") {
		b = append(b, ".0"...) // otherwise it would read back as an integer
	}
	return b
}

// tomlAppendKey writes a key bare if it can be, quoted otherwise.
func tomlAppendKey(b []byte, k string) []byte {
	bare := k != ""
	for i := 0; i < len(k) && bare; i++ {
		bare = tomlBareChar[k[i]]
	}
	if bare {
		return append(b, k...)
	}
	return tomlAppendString(b, k)
}

// tomlAppendString writes s as a basic string; s must be valid UTF-8.
func tomlAppendString(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"':
			b = append(b, `\"`...)
		case '\\':
			b = append(b, `\\`...)
		case '\b':
			b = append(b, `\b`...)
		case '\t':
			b = append(b, `\t`...)
		case '\n':
			b = append(b, `\n`...)
		case '\f':
			b = append(b, `\f`...)
		case '\r':
			b = append(b, `\r`...)
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
