package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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
