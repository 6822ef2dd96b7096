package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// strictTests is set in CI (and by the README's test command): a test that
// needs a missing tool or privilege fails instead of skipping.
func strictTests() bool {
	return os.Getenv("CI") != "" || os.Getenv("KARAPACE_TEST_STRICT") != ""
}

// need skips (on a developer machine) or fails (in CI) when a prerequisite
// of a test is missing, naming what is missing.
func need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if strictTests() {
		t.Fatalf("prerequisite missing: %s (tests run strict: CI or KARAPACE_TEST_STRICT is set)", what)
	}
	t.Skipf("skipped: prerequisite missing: %s (install it, or run the README's test command)", what)
}

// needTool requires an executable on PATH and returns its path.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	need(t, err == nil, "program "+name)
	return p
}

// runCLI runs the whole program in-process and returns its exit code and
// output streams.
func runCLI(t testing.TB, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string { return env[k] }
	code := run(args, nil, &out, &errb, getenv)
	return code, out.String(), errb.String()
}

// writeFile writes a file under dir and returns its path.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustContain fails unless s contains every one of subs.
func mustContain(t testing.TB, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Fatalf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}
