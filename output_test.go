package main

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// Columns line up by characters, not bytes; no line ends in spaces.
func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	writeTable(&b, []string{"SHORT_ID", "NAME", "STATE"}, [][]string{
		{"0123456789ab", "web", "running"},
		{"ba98", "crème-brûlée", ""},
		{"c0ffee", "", "built"},
	})
	want := "SHORT_ID      NAME          STATE\n" +
		"0123456789ab  web           running\n" +
		"ba98          crème-brûlée\n" +
		"c0ffee                      built\n"
	if b.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writeTable(&b, nil, [][]string{{"a", "1"}, {"long", "2"}})
	if want := "a     1\nlong  2\n"; b.String() != want {
		t.Fatalf("table without headers: %q, want %q", b.String(), want)
	}
}

// Colour only on a terminal, and not there with NO_COLOR or TERM=dumb.
func TestUseColor(t *testing.T) {
	_, slave := openPTY(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	for _, tc := range []struct {
		name string
		out  io.Writer
		env  map[string]string
		want bool
	}{
		{"terminal", slave, nil, true},
		{"terminal, TERM=xterm", slave, map[string]string{"TERM": "xterm-256color"}, true},
		{"terminal, NO_COLOR", slave, map[string]string{"NO_COLOR": "1"}, false},
		{"terminal, TERM=dumb", slave, map[string]string{"TERM": "dumb"}, false},
		{"pipe", w, nil, false},
		{"character device, not a terminal", null, nil, false},
		{"buffer", &bytes.Buffer{}, nil, false},
	} {
		c := &cli{stdout: tc.out, getenv: func(k string) string { return tc.env[k] }}
		if got := c.useColor(); got != tc.want {
			t.Errorf("%s: useColor = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// KARAPACE_LOG picks the level (warn by default), -v raises it to at
// least debug, --trace to trace; each level logs what is at or above it.
func TestLogLevels(t *testing.T) {
	const (
		w = "karapace: warning: w\n"
		i = "karapace: i\n"
		d = "karapace: debug: d\n"
		r = "karapace: trace: t\n"
	)
	for _, tc := range []struct {
		env            string
		verbose, trace bool
		name, want     string
	}{
		{"", false, false, "warn", w},
		{"loud", false, false, "warn", w},
		{"error", false, false, "error", ""},
		{"warn", false, false, "warn", w},
		{"info", false, false, "info", w + i},
		{" DEBUG ", false, false, "debug", w + i + d},
		{"trace", false, false, "trace", w + i + d + r},
		{"", true, false, "debug", w + i + d},
		{"error", true, false, "debug", w + i + d},
		{"trace", true, false, "trace", w + i + d + r},
		{"error", false, true, "trace", w + i + d + r},
	} {
		var b bytes.Buffer
		o := newOutput(tc.env, tc.verbose, tc.trace, &b)
		o.warnf("w")
		o.infof("i")
		o.debugf("d")
		o.tracef("t")
		if b.String() != tc.want || o.levelName() != tc.name {
			t.Errorf("KARAPACE_LOG=%q -v=%v --trace=%v: level %q, logged %q; want %q, %q",
				tc.env, tc.verbose, tc.trace, o.levelName(), b.String(), tc.name, tc.want)
		}
	}
}
