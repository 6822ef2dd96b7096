package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestTOMLOfficialSuite runs every TOML 1.0.0 case of the official
// toml-test corpus: valid documents must decode to exactly the expected
// tagged JSON (types and values), invalid ones must be rejected. The corpus
// is not copied here; bench/go.mod pins the module that holds it:
//
//	export TOML_TEST_DIR="$(cd bench && go mod download github.com/toml-lang/toml-test/v2 && go list -m -f '{{.Dir}}' github.com/toml-lang/toml-test/v2)/tests"
func TestTOMLOfficialSuite(t *testing.T) {
	dir := os.Getenv("TOML_TEST_DIR")
	need(t, dir != "", "TOML_TEST_DIR, the tests directory of github.com/toml-lang/toml-test/v2 (see the comment on TestTOMLOfficialSuite for the one-liner)")
	list, err := os.Open(filepath.Join(dir, "files-toml-1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	defer list.Close()
	var valid, invalid int
	sc := bufio.NewScanner(list)
	for sc.Scan() {
		name := sc.Text()
		if !strings.HasSuffix(name, ".toml") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasPrefix(name, "valid/"):
			valid++
			want, err := os.ReadFile(filepath.Join(dir, strings.TrimSuffix(name, ".toml")+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var w any
			if err := json.Unmarshal(want, &w); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got, err := decodeTOML(data)
			if err != nil {
				t.Errorf("%s: valid document rejected: %v", name, err)
				continue
			}
			if err := tomlCmpTagged("", w, got); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case strings.HasPrefix(name, "invalid/"):
			invalid++
			if _, err := decodeTOML(data); err == nil {
				t.Errorf("%s: invalid document accepted:\n%s", name, data)
			} else if _, ok := err.(*tomlError); !ok {
				t.Errorf("%s: error is %T, not *tomlError", name, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if valid < 100 || invalid < 100 {
		t.Fatalf("only %d valid and %d invalid cases found under %s", valid, invalid, dir)
	}
	t.Logf("TOML 1.0.0 corpus: %d valid and %d invalid cases", valid, invalid)
}

// tomlCmpTagged compares a decoded value with toml-test's tagged JSON.
func tomlCmpTagged(path string, want, have any) error {
	switch w := want.(type) {
	case []any:
		h, ok := have.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, have %T", path, have)
		}
		if len(h) != len(w) {
			return fmt.Errorf("%s: want %d elements, have %d", path, len(w), len(h))
		}
		for i := range w {
			if err := tomlCmpTagged(path+"."+strconv.Itoa(i), w[i], h[i]); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		typ, isStr := w["type"].(string)
		val, isStr2 := w["value"].(string)
		if len(w) == 2 && isStr && isStr2 {
			return tomlCmpScalar(path, typ, val, have)
		}
		h, ok := have.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want a table, have %T", path, have)
		}
		if len(h) != len(w) {
			return fmt.Errorf("%s: want %d keys, have %d (%v)", path, len(w), len(h), h)
		}
		for k, wv := range w {
			hv, ok := h[k]
			if !ok {
				return fmt.Errorf("%s: key %q missing", path, k)
			}
			if err := tomlCmpTagged(path+"."+k, wv, hv); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%s: unexpected JSON %T", path, want)
}

func tomlCmpScalar(path, typ, val string, have any) error {
	mismatch := fmt.Errorf("%s: want %s %q, have %T %v", path, typ, val, have, have)
	fixDT := strings.NewReplacer(" ", "T", "t", "T", "z", "Z")
	switch typ {
	case "string":
		if h, ok := have.(string); !ok || h != val {
			return mismatch
		}
	case "integer":
		n, err := strconv.ParseInt(val, 10, 64)
		if h, ok := have.(int64); err != nil || !ok || h != n {
			return mismatch
		}
	case "float":
		f, err := strconv.ParseFloat(val, 64)
		h, ok := have.(float64)
		if err != nil || !ok {
			return mismatch
		}
		if math.IsNaN(f) != math.IsNaN(h) || !math.IsNaN(f) && (f != h || math.Signbit(f) != math.Signbit(h)) {
			return mismatch
		}
	case "bool":
		if h, ok := have.(bool); !ok || strconv.FormatBool(h) != val {
			return mismatch
		}
	case "datetime":
		w, err := time.Parse(time.RFC3339Nano, fixDT.Replace(val))
		h, ok := have.(time.Time)
		if err != nil || !ok || !w.Equal(h) {
			return mismatch
		}
		_, wo := w.Zone()
		if _, ho := h.Zone(); ho != wo {
			return mismatch
		}
	case "datetime-local":
		w, err := time.Parse("2006-01-02T15:04:05.999999999", fixDT.Replace(val))
		h, ok := have.(localDateTime)
		if err != nil || !ok || h != (localDateTime{tomlDateOf(w), tomlTimeOf(w)}) {
			return mismatch
		}
	case "date-local":
		w, err := time.Parse("2006-01-02", val)
		if h, ok := have.(localDate); err != nil || !ok || h != tomlDateOf(w) {
			return mismatch
		}
	case "time-local":
		w, err := time.Parse("15:04:05.999999999", val)
		if h, ok := have.(localTime); err != nil || !ok || h != tomlTimeOf(w) {
			return mismatch
		}
	default:
		return fmt.Errorf("%s: unknown type %q", path, typ)
	}
	return nil
}

func tomlDateOf(t time.Time) localDate { return localDate{t.Year(), int(t.Month()), t.Day()} }
func tomlTimeOf(t time.Time) localTime {
	return localTime{t.Hour(), t.Minute(), t.Second(), t.Nanosecond()}
}

func tomlMustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestTOMLDecodeValid(t *testing.T) {
	cases := []struct {
		name, in string
		want     map[string]any
	}{
		{"empty", "", map[string]any{}},
		{"comments and blank lines", "# c\n\n  # c2\t\na = 1 # end\n", map[string]any{"a": int64(1)}},
		{"crlf", "a = 1\r\n[t]\r\nb = \"x\"\r\n", map[string]any{"a": int64(1), "t": map[string]any{"b": "x"}}},
		{"bom", "\uFEFFa = \"\uFEFF\" # \uFEFF", map[string]any{"a": "\uFEFF"}},
		{"keys", "bare-Key_1 = 1\n\"quoted key\" = 2\n'lit\\key' = 3\n\"\" = 4\n1234 = 5\n\"ʎǝʞ\" = 6\n",
			map[string]any{"bare-Key_1": int64(1), "quoted key": int64(2), `lit\key`: int64(3), "": int64(4), "1234": int64(5), "ʎǝʞ": int64(6)}},
		{"dotted keys with whitespace", "a . b\t.\"c.d\" = 1\na.x = 2\n",
			map[string]any{"a": map[string]any{"b": map[string]any{"c.d": int64(1)}, "x": int64(2)}}},
		{"escapes", `s = "\b\t\n\f\r\"\\\u00E9\U0001F600/"`, map[string]any{"s": "\b\t\n\f\r\"\\é😀/"}},
		{"literal", `s = 'C:\n\x "q"'`, map[string]any{"s": `C:\n\x "q"`}},
		{"multi-line basic", "s = \"\"\"\nline1\r\nline2 \\\n\n   still line2\\\n\"\"\"", map[string]any{"s": "line1\r\nline2 still line2"}},
		{"multi-line quotes at end", "a = \"\"\"x\"\"\"\"\"\nb = '''y'''''\nc = \"\"\"\"\"\"\"\"\n", map[string]any{"a": `x""`, "b": "y''", "c": `""`}},
		{"multi-line literal", "s = '''\n\\no escape \"\"\" here\n'''", map[string]any{"s": "\\no escape \"\"\" here\n"}},
		{"line-ending backslash with trailing space", "s = \"\"\"a\\  \t\n  b\"\"\"", map[string]any{"s": "ab"}},
		{"integers", "a = +99\nb = -17\nc = 0\nd = 1_000\ne = 0xDEAD_beef\nf = 0o755\ng = 0b1101\nh = 9223372036854775807\ni = -9223372036854775808\nj = 0x00ff\nk = -0\n",
			map[string]any{"a": int64(99), "b": int64(-17), "c": int64(0), "d": int64(1000), "e": int64(0xdeadbeef), "f": int64(0o755), "g": int64(13),
				"h": int64(math.MaxInt64), "i": int64(math.MinInt64), "j": int64(255), "k": int64(0)}},
		{"floats", "a = 1.0\nb = -3.1415\nc = 5e+22\nd = 1e06\ne = -2E-2\nf = 6.626e-34\ng = 224_617.445_991\nh = -0.0\ni = +inf\nj = -inf\n",
			map[string]any{"a": 1.0, "b": -3.1415, "c": 5e22, "d": 1e6, "e": -0.02, "f": 6.626e-34, "g": 224617.445991, "h": math.Copysign(0, -1), "i": math.Inf(1), "j": math.Inf(-1)}},
		{"booleans", "t = true\nf = false", map[string]any{"t": true, "f": false}},
		{"date-times", "a = 1979-05-27T07:32:00Z\nb = 1979-05-27T00:32:00.999999-07:00\nc = 1979-05-27 07:32:00+05:30\nd = 1979-05-27t07:32:00z\ne = 1979-05-27T07:32:00.123456789123\nf = 1979-05-27\ng = 00:32:00.5\nh = 2000-02-29",
			map[string]any{
				"a": tomlMustTime("1979-05-27T07:32:00Z"), "b": tomlMustTime("1979-05-27T00:32:00.999999-07:00"), "c": tomlMustTime("1979-05-27T07:32:00+05:30"),
				"d": tomlMustTime("1979-05-27T07:32:00Z"),
				"e": localDateTime{localDate{1979, 5, 27}, localTime{7, 32, 0, 123456789}}, "f": localDate{1979, 5, 27}, "g": localTime{0, 32, 0, 500000000},
				"h": localDate{2000, 2, 29}}},
		{"arrays", "a = [ 1, 'two', [3.0], {x = 4}, ]\nb = [\n  1, # one\n\n  2\n]\nc = []\n",
			map[string]any{"a": []any{int64(1), "two", []any{3.0}, map[string]any{"x": int64(4)}}, "b": []any{int64(1), int64(2)}, "c": []any{}}},
		{"inline tables", "p = { name = { first = \"Tom\" }, a.b = 1, a.c = 2 }\ne = {}",
			map[string]any{"p": map[string]any{"name": map[string]any{"first": "Tom"}, "a": map[string]any{"b": int64(1), "c": int64(2)}}, "e": map[string]any{}}},
		{"tables", "[a.b.c]\nx = 1\n[a]\ny = 2\n[a.b]\nz = 3\n[ d . 'e' ]\n",
			map[string]any{"a": map[string]any{"y": int64(2), "b": map[string]any{"z": int64(3), "c": map[string]any{"x": int64(1)}}}, "d": map[string]any{"e": map[string]any{}}}},
		{"sub-table of a dotted table", "[fruit]\napple.color = \"red\"\n[fruit.apple.texture]\nsmooth = true\n",
			map[string]any{"fruit": map[string]any{"apple": map[string]any{"color": "red", "texture": map[string]any{"smooth": true}}}}},
		{"arrays of tables", "[[p]]\nn = 1\n[p.d]\nx = 1\n[[p.v]]\nk = 'a'\n[[p]]\nn = 2\n[p.d]\nx = 2\n",
			map[string]any{"p": []any{
				map[string]any{"n": int64(1), "d": map[string]any{"x": int64(1)}, "v": []any{map[string]any{"k": "a"}}},
				map[string]any{"n": int64(2), "d": map[string]any{"x": int64(2)}}}}},
		{"table inside array of tables then parent", "[[a.b]]\nx = 1\n[a]\ny = 2\n",
			map[string]any{"a": map[string]any{"b": []any{map[string]any{"x": int64(1)}}, "y": int64(2)}}},
		{"no newline at end", "a = 'x' # c", map[string]any{"a": "x"}},
	}
	for _, c := range cases {
		got, err := decodeTOML([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !tomlEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.name, got, c.want)
		}
	}
}

func TestTOMLDecodeInvalid(t *testing.T) {
	deep := "a = " + strings.Repeat("[", 200) + strings.Repeat("]", 200)
	cases := []struct{ in, want string }{
		{"[base]\nimage = \"x\"\n    image = \"y\"", `3:5: duplicate key "image" (first defined at 2:1)`},
		{"[base]\nimage = 'x'\n\n\n\n[other]\n[base]", `7:1: table [base] defined twice (first defined at 1:1)`},
		{`a = "1234\q"`, `1:10: a: invalid escape sequence "\q"`},
		{"\xff = 1", `1:1: invalid UTF-8`},
		{"a = 'é\xe9'", `1:7: invalid UTF-8`},
		{"a = 1\nb = 2\n\nc = \"abcd\a\"", `4:10: c: control character U+0007 in string`},
		{"\"ключ\" = \"\x01\"", `1:11: "ключ": control character U+0001 in string`},
		{"a = 1 # bell\a", `1:13: control character U+0007 in comment`},
		{"a = 1\rb = 2", `1:6: expected end of line after key/value pair, found control character U+000D`},
		{"a = 1\n\rb = 2", `2:1: control character U+000D in document (a carriage return must be followed by a line feed)`},
		{"\uFEFF\uFEFFa = 1", `1:1: expected a key, found "\ufeff"`},
		{deep, `1:133: a: nesting deeper than 128 levels`},
		{"[" + strings.Repeat("a.", 128) + "a]", `1:258: nesting deeper than 128 levels`},
		{strings.Repeat("a.", 129) + "a = 1", `1:257: nesting deeper than 128 levels`},
		{"a = \"\\uD800\"", `1:6: a: escape sequence "\uD800" is not a Unicode scalar value`},
		{"a = \"\\U00110000\"", `1:6: a: escape sequence "\U00110000" is not a Unicode scalar value`},
		{"a = \"\\u12\"", `1:6: a: invalid escape sequence "\u12": \u needs 4 hex digits`},
		{"a =\n1", `1:4: a: expected a value, found end of line`},
		{"a\n= 1", `1:2: expected "=" after key "a", found end of line`},
		{"a = 1 b = 2", `1:7: expected end of line after key/value pair, found "b"`},
		{"[t] x = 1", `1:5: expected end of line after table header, found "x"`},
		{"a = 9223372036854775808", `1:5: a: integer 9223372036854775808 out of range (64-bit signed)`},
		{"a = 0x8000000000000000", `1:5: a: integer 0x8000000000000000 out of range (64-bit signed)`},
		{"a = 012", `1:5: a: invalid integer "012": leading zeros are not allowed`},
		{"a = 1__0", `1:5: a: invalid integer "1__0": an underscore must be between two digits`},
		{"a = -0x1", `1:5: a: invalid integer "-0x1": hexadecimal, octal and binary integers take no sign`},
		{"a = .5", `1:5: a: expected a value, found "."`},
		{"a = 5.", `1:5: a: invalid float "5.": a digit must follow the decimal point`},
		{"a = 1e400", `1:5: a: float 1e400 out of range (64-bit)`},
		{"a = 2023-02-29", `1:5: a: invalid date 2023-02-29: no such day`},
		{"a = 12:00:60", `1:5: a: invalid time 12:00:60: hour, minute or second out of range`},
		{"a = 2023-01-01T12:00", `1:16: a: invalid time: expected HH:MM:SS`},
		{"a = 2023-01-01T12:00:00+1:00", `1:24: a: invalid offset: expected +HH:MM`},
		{"a = {x = 1,}", `1:12: a: trailing comma in inline table (not allowed in TOML 1.0)`},
		{"a = {x = 1,\ny = 2}", `1:12: a: expected a key, found end of line`},
		{"a = {x = 1\n}", `1:11: a: newline in inline table opened at 1:5 (inline tables must be on one line)`},
		{"a = {x = 1}\na.y = 2", `2:1: cannot define key "a.y": "a" is already an inline table (defined at 1:1)`},
		{"a = {x = {y = 1}}\n[a.x]", `2:1: cannot define table [a.x]: "a" is already an inline table (defined at 1:1)`},
		{"a = [1]\n[[a]]", `2:1: cannot append to array "a" with [[a]]: it was defined as a value (at 1:1)`},
		{"[[a]]\n[a]", `2:1: cannot define table [a]: it is already an array of tables (defined at 1:1)`},
		{"[a.b]\n[[a]]", `2:1: cannot define array of tables [[a]]: [a] is already a table (defined at 1:1)`},
		{"[a]\nb.c = 1\n[a.b]", `3:1: cannot define table [a.b]: it was already defined with dotted keys (at 2:1)`},
		{"[a.b.c]\n[a]\nb.d = 1", `3:1: cannot define key "b.d": table "b" was created by a [header] (at 1:1) and cannot be extended with dotted keys`},
		{"[[a]]\n[a.b]\n[a.b]", `3:1: table [a.b] defined twice (first defined at 2:1)`},
		{"a.b = 1\na.b.c = 2", `2:1: cannot define key "a.b.c": "a.b" is already an integer (defined at 1:1)`},
		{"a = 1\n[a]", `2:1: cannot define table [a]: the key is already an integer (defined at 1:1)`},
		{"a = \"\"\"x\"\"\"\"\"\"", `1:14: a: too many quotes: at most two may end a multi-line string before its closing delimiter`},
		{"\"\"\"k\"\"\" = 1", `1:1: a multi-line string cannot be a key`},
		{"a = 'x\nb = 1", `1:5: a: unterminated string (a literal string ends on its line)`},
		{"a = '''x", `1:5: a: unterminated multi-line string`},
		{"a = [1 2]", `1:8: a: expected "," or "]" after an array element, found "2"`},
		{"a = [1,", `1:8: a: expected "]" to close the array opened at 1:5, found end of file`},
		{"a = True", `1:5: a: expected a value, found "T"`},
		{"a = truest", `1:5: a: invalid value "truest" (booleans are lowercase true and false; strings need quotes)`},
		{"[a", `1:3: expected "]" to close the header, found end of file`},
		{"[[a]", `1:5: expected "]]" to close the header, found end of file`},
		// Errors inside a value name its key; errors in a header do not.
		{"[base]\nimage = \"\\e\"", `2:10: base.image: invalid escape sequence "\e"`},
		{"[[p]]\n[[p]]\nv = [1, \"\\e\"]", `3:10: p[1].v[1]: invalid escape sequence "\e"`},
		{"a = {b = {c = 01}}", `1:15: a.b.c: invalid integer "01": leading zeros are not allowed`},
		{"x.y = [" + strings.Repeat("{a = [", 70), `1:386: x.y: nesting deeper than 128 levels`},
		{"\"\\u0000\" = \"\\e\"", `1:13: "\u0000": invalid escape sequence "\e"`},
		{"\"\\u0000\" = 1\n\"\\u0000\" = 2", `2:1: duplicate key "\u0000" (first defined at 1:1)`},
		{"[a.\"b\\e\"]", `1:6: invalid escape sequence "\e"`},
	}
	for _, c := range cases {
		_, err := decodeTOML([]byte(c.in))
		if err == nil {
			t.Errorf("%q: accepted, want error %s", c.in, c.want)
			continue
		}
		if _, ok := err.(*tomlError); !ok {
			t.Errorf("%q: error type %T", c.in, err)
		}
		if err.Error() != c.want {
			t.Errorf("%q:\n got %s\nwant %s", c.in, err, c.want)
		}
		// decodeTOMLPos must report the very same error.
		if _, _, err2 := decodeTOMLPos([]byte(c.in)); err2 == nil || err2.Error() != c.want {
			t.Errorf("%q: decodeTOMLPos: %v", c.in, err2)
		}
	}
}

func TestTOMLPositions(t *testing.T) {
	doc := "manifest_version = 1\n" + // 1
		"[base]\n" + // 2
		"  image = \"debian\"\n" + // 3
		"[system]\n" + // 4
		"packages = [\"git\",\n" + // 5
		"  \"ünï\", 'curl']\n" + // 6
		"[runtime.resource_limits]\n" + // 7
		"cpu_shares = 1024\n" + // 8
		"[[resolved_packages]]\n" + // 9
		"name = \"git\"\n" + // 10
		"[[resolved_packages]]\n" + // 11
		"name = \"curl\"\n" + // 12
		"[x]\n" + // 13
		"\"é\".f = { g = [1, {h = 2}] }\n" // 14
	_, pos, err := decodeTOMLPos([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]tomlPos{
		tomlPath("manifest_version"):                         {1, 1},
		tomlPath("base"):                                     {2, 1},
		tomlPath("base", "image"):                            {3, 3},
		tomlPath("system", "packages"):                       {5, 1},
		tomlPath("system", "packages", "0"):                  {5, 13},
		tomlPath("system", "packages", "1"):                  {6, 3},
		tomlPath("system", "packages", "2"):                  {6, 10},
		tomlPath("runtime"):                                  {7, 1},
		tomlPath("runtime", "resource_limits"):               {7, 1},
		tomlPath("runtime", "resource_limits", "cpu_shares"): {8, 1},
		tomlPath("resolved_packages"):                        {9, 1},
		tomlPath("resolved_packages", "0"):                   {9, 1},
		tomlPath("resolved_packages", "0", "name"):           {10, 1},
		tomlPath("resolved_packages", "1"):                   {11, 1},
		tomlPath("resolved_packages", "1", "name"):           {12, 1},
		tomlPath("x", "é"):                                   {14, 1},
		tomlPath("x", "é", "f"):                              {14, 1},
		tomlPath("x", "é", "f", "g"):                         {14, 11},
		tomlPath("x", "é", "f", "g", "1"):                    {14, 19},
		tomlPath("x", "é", "f", "g", "1", "h"):               {14, 20},
	}
	for k, w := range want {
		if got, ok := pos[k]; !ok || got != w {
			t.Errorf("%q: got %v (present %v), want %v", strings.ReplaceAll(k, "\x00", "/"), got, ok, w)
		}
	}
	if len(pos) != len(want)+3 { // + system, x, and g's element 0
		t.Errorf("%d positions recorded, want %d", len(pos), len(want)+3)
	}
	// A table first made implicitly takes the position of its own header.
	_, pos, err = decodeTOMLPos([]byte("[a.b]\n[a]\n"))
	if err != nil || pos[tomlPath("a")] != (tomlPos{2, 1}) || pos[tomlPath("a", "b")] != (tomlPos{1, 1}) {
		t.Errorf("implicit then explicit: %v %v", pos, err)
	}
}

// tomlEqual compares decoded values: NaNs by sign, times by instant and
// offset, everything else exactly.
func tomlEqual(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !tomlEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for i := range x {
			if !tomlEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case float64:
		y, ok := b.(float64)
		if !ok || math.Signbit(x) != math.Signbit(y) {
			return false
		}
		return x == y || math.IsNaN(x) && math.IsNaN(y)
	case time.Time:
		y, ok := b.(time.Time)
		if !ok || !x.Equal(y) {
			return false
		}
		_, xo := x.Zone()
		_, yo := y.Zone()
		return xo == yo
	}
	return a == b
}

func TestTOMLEncodeLayout(t *testing.T) {
	doc := []tomlKV{
		{"lock_version", 2},
		{"env_id", "abc"},
		{"base", map[string]any{"image": "debian/bookworm", "digest": "sha256:00"}},
		{"resolved_packages", []map[string]any{{"name": "git", "version": "1:2.39"}, {"name": "curl", "version": "7.88"}}},
		{"flags", []string{"a", "b"}},
		{"runtime", []tomlKV{{"backend", "namespace"}, {"limits", map[string]any{"cpu": int64(1024)}}}},
		{"only_tables", map[string]any{"inner": map[string]any{}}},
	}
	got, err := encodeTOML(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := `lock_version = 2
env_id = "abc"
flags = ["a", "b"]

[base]
digest = "sha256:00"
image = "debian/bookworm"

[runtime]
backend = "namespace"

[runtime.limits]
cpu = 1024

[only_tables.inner]

[[resolved_packages]]
name = "git"
version = "1:2.39"

[[resolved_packages]]
name = "curl"
version = "7.88"
`
	if string(got) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	back, err := decodeTOML(got)
	if err != nil {
		t.Fatal(err)
	}
	if back["lock_version"] != int64(2) || back["only_tables"].(map[string]any)["inner"] == nil ||
		len(back["resolved_packages"].([]any)) != 2 {
		t.Fatalf("decoded back: %v", back)
	}
}

func TestTOMLEncodeRoundTrip(t *testing.T) {
	doc := map[string]any{
		"str":   "plain",
		"esc":   "quote\" backslash\\ bs\b tab\t nl\n ff\f cr\r nul\x00 us\x1f del\x7f é 😀 \u2028",
		"int":   int64(-42),
		"min":   int64(math.MinInt64),
		"max":   int64(math.MaxInt64),
		"bool":  true,
		"odt":   tomlMustTime("1979-05-27T00:32:00.999999-07:00"),
		"utc":   tomlMustTime("2024-02-29T23:59:59Z"),
		"ldt":   localDateTime{localDate{1, 2, 3}, localTime{4, 5, 6, 7}},
		"ld":    localDate{9999, 12, 31},
		"lt":    localTime{23, 59, 59, 999999999},
		"mixed": []any{int64(1), "a", 2.5, []any{}, map[string]any{"k": []any{map[string]any{}}}},
		"empty": map[string]any{},
		"aot":   []any{map[string]any{"sub": map[string]any{"x": int64(1)}, "arr": []any{map[string]any{"y": int64(2)}}}, map[string]any{}},
		"":      "empty key",
		"a.b":   map[string]any{"with space": map[string]any{"ключ": int64(1), "quo\"te": int64(2), "1234": int64(3), "-_": int64(4)}},
	}
	floats := []float64{0, math.Copysign(0, -1), 1, -1.5, 0.1, 100, 1e21, 1e-7, 123456789012345678, 5e-324,
		math.MaxFloat64, math.SmallestNonzeroFloat64, math.Inf(1), math.Inf(-1), math.NaN(), math.Copysign(math.NaN(), -1)}
	for i, f := range floats {
		doc["f"+strconv.Itoa(i)] = f
	}
	enc, err := encodeTOML(doc)
	if err != nil {
		t.Fatal(err)
	}
	back, err := decodeTOML(enc)
	if err != nil {
		t.Fatalf("%v\n%s", err, enc)
	}
	if !tomlEqual(back, doc) {
		t.Fatalf("round trip differs:\n%s\n got %#v", enc, back)
	}
	// Same value, same bytes; and encoding the decoded copy (fresh maps,
	// other iteration order) gives the same bytes too.
	for range 3 {
		again, err := encodeTOML(back)
		if err != nil || string(again) != string(enc) {
			t.Fatalf("not deterministic: %v\n%s\n---\n%s", err, enc, again)
		}
	}
	mustContain(t, "encoded", string(enc), `"" = "empty key"`, `["a.b"."with space"]`, `"quo\"te" = 2`, "1234 = 3", "-_ = 4",
		`esc = "quote\" backslash\\ bs\b tab\t nl\n ff\f cr\r nul\u0000 us\u001F del\u007F é 😀 `+"\u2028\"",
		"f1 = -0.0", "f2 = 1.0", "f5 = 100.0", "f6 = 1e+21", "f14 = nan", "f15 = -nan", "f12 = inf", "f13 = -inf",
		"ldt = 0001-02-03T04:05:06.000000007", "lt = 23:59:59.999999999", "odt = 1979-05-27T00:32:00.999999-07:00", "utc = 2024-02-29T23:59:59Z")
}

func TestTOMLEncodeGoTypes(t *testing.T) {
	doc := map[string]any{"i": 1, "i8": int8(-8), "i16": int16(16), "i32": int32(32), "u8": uint8(8), "u16": uint16(16),
		"u32": uint32(32), "u": uint(7), "u64": uint64(math.MaxInt64), "f32": float32(0.5), "ints": []int64{1, 2}}
	enc, err := encodeTOML(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := "f32 = 0.5\ni = 1\ni16 = 16\ni32 = 32\ni8 = -8\nints = [1, 2]\nu = 7\nu16 = 16\nu32 = 32\nu64 = 9223372036854775807\nu8 = 8\n"
	if string(enc) != want {
		t.Fatalf("got:\n%s", enc)
	}
}

func TestTOMLEncodeErrors(t *testing.T) {
	deep := map[string]any{}
	for range 130 {
		deep = map[string]any{"a": deep}
	}
	deepArr := any(int64(1))
	for range 130 {
		deepArr = []any{deepArr}
	}
	cyclic := map[string]any{}
	cyclic["self"] = cyclic
	cyclicArr := []any{nil}
	cyclicArr[0] = cyclicArr
	cases := []struct {
		doc  any
		want string
	}{
		{[]string{"x"}, "encode TOML: the document must be a table, not []string"},
		{cyclic, "nesting deeper than 128 levels"},
		{map[string]any{"a": cyclicArr}, "nesting deeper than 128 levels"},
		{map[string]any{"c": make(chan int)}, `encode TOML at "c": unsupported value type chan int`},
		{map[string]any{"n": nil}, `encode TOML at "n": unsupported value type <nil>`},
		{map[string]any{"t": map[string]any{"s": []any{"ok", "\xff"}}}, `encode TOML at "t.s.1": string is not valid UTF-8`},
		{map[string]any{"u": uint64(math.MaxUint64)}, `encode TOML at "u": integer 18446744073709551615 does not fit TOML's 64-bit signed integers`},
		{map[string]any{"y": time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, `encode TOML at "y": year 10000 is outside TOML's 0000-9999`},
		{map[string]any{"z": time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("", 30))}, `encode TOML at "z": offset 30s has seconds, which TOML cannot express`},
		{map[string]any{"d": localDate{2023, 2, 29}}, `encode TOML at "d": invalid local date 2023-02-29`},
		{map[string]any{"t": localTime{24, 0, 0, 0}}, `encode TOML at "t": invalid local time 24:00:00`},
		{[]tomlKV{{"a", 1}, {"a", 2}}, `encode TOML: duplicate key "a"`},
		{map[string]any{"nan": math.Float64frombits(0xfff8000000000000)}, `encode TOML at "nan": NaN with payload 0xfff8000000000000 has no TOML spelling`},
		{deep, "nesting deeper than 128 levels"},
		{map[string]any{"a": deepArr}, "nesting deeper than 128 levels"},
	}
	for _, c := range cases {
		_, err := encodeTOML(c.doc)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%T: got %v, want %s", c.doc, err, c.want)
		}
	}
	// The deepest the decoder accepts, the encoder writes.
	ok := any(int64(1))
	for range 127 {
		ok = []any{ok}
	}
	enc, err := encodeTOML(map[string]any{"a": ok})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeTOML(enc); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeTOML: no input panics; positions change no verdict or message;
// whatever decodes encodes, and the encoding decodes back to an equal value.
func FuzzDecodeTOML(f *testing.F) {
	f.Add([]byte(tomlBenchManifest))
	f.Add([]byte("a.b = [1, 2.5, 'x', {c = 1979-05-27T07:32:00Z}]\n[[t]]\n[t.u]\nv = \"\"\"\\\n  w\"\"\"\n"))
	f.Add([]byte("[a.b.c]\n[a]\nd = 00:00:00.1\n[[e]]\nf = -inf\ng = 0x7f\n"))
	// With the official corpus at hand, every document of it is a seed.
	if dir := os.Getenv("TOML_TEST_DIR"); dir != "" {
		files, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*.toml"))
		for _, name := range files {
			if data, err := os.ReadFile(name); err == nil {
				f.Add(data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeTOML(data)
		// With positions or without, the same verdict and message.
		if _, _, err2 := decodeTOMLPos(data); fmt.Sprint(err) != fmt.Sprint(err2) {
			t.Fatalf("decodeTOML: %v\ndecodeTOMLPos: %v", err, err2)
		}
		if err != nil {
			if _, ok := err.(*tomlError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		enc, err := encodeTOML(v)
		if err != nil {
			t.Fatalf("decoded value does not encode: %v", err)
		}
		back, err := decodeTOML(enc)
		if err != nil {
			t.Fatalf("encoding does not decode: %v\n%s", err, enc)
		}
		if !tomlEqual(v, back) {
			t.Fatalf("round trip differs:\n%#v\n%#v\n%s", v, back, enc)
		}
	})
}

// tomlBenchManifest is a typical karapace.toml with every section.
const tomlBenchManifest = `# karapace.toml for a Rust + GUI development environment
manifest_version = 1

[base]
image = "debian/bookworm"   # resolved and pinned in karapace.lock

[system]
packages = [
  "build-essential",
  "curl",
  "git",
  "libssl-dev",
  "pkg-config",
  "ripgrep",
  "zsh",
]

[gui]
apps = ["firefox-esr", "code"]

[hardware]
gpu = true
audio = false

[mounts]
workspace = "./:/workspace"
cargo = "~/.cargo/registry:/root/.cargo/registry"
ssh = '~/.ssh:/root/.ssh:ro'

[runtime]
backend = "namespace"
network_isolation = false

[runtime.resource_limits]
cpu_shares = 1024
memory_limit_mb = 4096

# Comments and other spellings work too.
[runtime.env]
EDITOR = "vim"
RUSTFLAGS = "-C target-cpu=native"
`

// tomlBenchDoc generates a deterministic document of at least size bytes
// mixing tables, arrays of tables, strings, numbers and dates.
func tomlBenchDoc(size int) []byte {
	var b strings.Builder
	b.WriteString("title = \"generated benchmark document\"\nversion = 3\n\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "[[package]]\nname = \"pkg-%d\"\nversion = \"%d.%d.%d-r%d\"\n", i, i%7, i%13, i%101, i%3)
		fmt.Fprintf(&b, "size = %d\nratio = %d.%03d\nenabled = %t\n", i*7919%1000003, i%1000, i*37%1000, i%2 == 0)
		fmt.Fprintf(&b, "published = 2024-%02d-%02dT%02d:%02d:%02dZ\n", i%12+1, i%28+1, i%24, i%60, i*7%60)
		fmt.Fprintf(&b, "description = \"Package %d: \\\"quoted\\\" text, tab\\there, unicode \\u00e9 and ü\"\n", i)
		fmt.Fprintf(&b, "depends = [\"pkg-%d\", \"pkg-%d\", 'lit-%d']\n", i/2, i/3, i/5)
		fmt.Fprintf(&b, "checksum = { algo = \"sha256\", hex = \"%064x\" }\n", uint64(i)*0x9e3779b97f4a7c15)
		fmt.Fprintf(&b, "\n[package.meta]\nmaintainer = 'dev%d@example.org'\nhomepage = \"https://example.org/p/%d\"\nlines.code = %d\nlines.comments = %d\n", i%50, i, i*3, i)
		if i%4 == 0 {
			fmt.Fprintf(&b, "\n[[package.files]]\npath = \"/usr/bin/p%d\"\nmode = 0o755\nflags = 0x%x\n", i, i)
			fmt.Fprintf(&b, "notes = \"\"\"\nLine one of package %d,\nline two with a \\\n  continuation.\"\"\"\n", i)
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}

// TestTOMLBenchDocs checks the benchmark documents and, with
// TOML_BENCH_OUT set, writes them for bench/toml.sh to feed to the other
// decoders.
func TestTOMLBenchDocs(t *testing.T) {
	big := tomlBenchDoc(1 << 20)
	if len(big) < 1<<20 || len(big) > 1<<20+4096 {
		t.Fatalf("generated document has %d bytes", len(big))
	}
	if string(tomlBenchDoc(1<<20)) != string(big) {
		t.Fatal("generator is not deterministic")
	}
	for _, doc := range [][]byte{[]byte(tomlBenchManifest), big} {
		v, err := decodeTOML(doc)
		if err != nil {
			t.Fatal(err)
		}
		if len(v) < 3 {
			t.Fatalf("decoded %d top-level keys", len(v))
		}
	}
	if dir := os.Getenv("TOML_BENCH_OUT"); dir != "" {
		writeFile(t, dir, "manifest.toml", tomlBenchManifest)
		writeFile(t, dir, "1mib.toml", string(big))
	}
}

func BenchmarkDecodeTOMLManifest(b *testing.B) {
	benchmarkDecodeTOML(b, []byte(tomlBenchManifest))
}

func BenchmarkDecodeTOML1MiB(b *testing.B) {
	benchmarkDecodeTOML(b, tomlBenchDoc(1<<20))
}

func benchmarkDecodeTOML(b *testing.B, doc []byte) {
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeTOML(doc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeTOMLPosManifest(b *testing.B) {
	doc := []byte(tomlBenchManifest)
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := decodeTOMLPos(doc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeTOML1MiB(b *testing.B) {
	v, err := decodeTOML(tomlBenchDoc(1 << 20))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodeTOML(v); err != nil {
			b.Fatal(err)
		}
	}
}

// tomlLongLine is the start of a document: one array on one line, of at
// least size bytes, still open for another element.
func tomlLongLine(size int) string {
	var b strings.Builder
	b.WriteString("x = [")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%d, \"é%d\", ", i, i)
	}
	return b.String()
}

// Positions cost work in proportion to the document, however long its
// lines: the parser never rescans a line for each key or element.
func TestTOMLPositionsLinear(t *testing.T) {
	long := tomlLongLine(1 << 20)
	for _, tc := range []struct{ name, doc, err string }{
		{"long line", long + "0]\ny = 1\n", ""},
		{"long line then error", long + "0]\ny = 1\ny = 2\n", `3:1: duplicate key "y" (first defined at 2:1)`},
		{"error at the end of the line", long + `"\q"]`, `1:%d: x[%d]: invalid escape sequence "\q"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tomlParser{s: tc.doc, pos: map[string]tomlPos{}}
			err := p.parse()
			if strings.Contains(tc.err, "%d") {
				tc.err = fmt.Sprintf(tc.err, utf8.RuneCountInString(long)+2, len(p.stack))
			}
			if fmt.Sprint(err) != cmp.Or(tc.err, "<nil>") {
				t.Fatalf("error %v, want %s", err, cmp.Or(tc.err, "none"))
			}
			if len(p.pos) < 100000 {
				t.Fatalf("only %d positions recorded", len(p.pos))
			}
			// Each byte once, and once more for an error message that
			// looks back.
			if limit := 2 * len(tc.doc); p.posScanned > limit {
				t.Errorf("position tracking scanned %d bytes of a %d-byte document", p.posScanned, len(tc.doc))
			}
		})
	}
}

// A 1 MiB array on one line, with positions.
func BenchmarkDecodeTOMLPosLongLine(b *testing.B) {
	doc := []byte(tomlLongLine(1<<20) + "0]\n")
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := decodeTOMLPos(doc); err != nil {
			b.Fatal(err)
		}
	}
}

// The same line, then an error whose message needs positions, which
// decodeTOML parses again to find.
func BenchmarkDecodeTOMLLongLineError(b *testing.B) {
	doc := []byte(tomlLongLine(1<<20) + "0]\nx = 1\n")
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeTOML(doc); err == nil || !strings.Contains(err.Error(), "first defined at 1:1") {
			b.Fatal(err)
		}
	}
}
