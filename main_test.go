package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testHelpers are entry points a test can start in a child process of the
// test binary: crash-injection workers, concurrent store users and the like.
// A _test.go file registers its own in init.
var testHelpers = map[string]func(){}

// TestMain runs a stage (see userns.go) when the runtime starts the test
// binary as one, and a registered helper instead of the tests when it is
// started with KARAPACE_TEST_HELPER=name.
func TestMain(m *testing.M) {
	runStageIfChild()
	// The integration tests run this binary as karapace itself.
	if os.Getenv("KARAPACE_TEST_CLI") != "" {
		os.Unsetenv("KARAPACE_TEST_CLI")
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
	}
	if name := os.Getenv("KARAPACE_TEST_HELPER"); name != "" {
		h, ok := testHelpers[name]
		if !ok {
			os.Stderr.WriteString("unknown test helper " + name + "\n")
			os.Exit(100)
		}
		h()
		os.Exit(0)
	}
	code := m.Run()
	removeTestTrees()
	os.Exit(code)
}

func TestHelpFlagsAndExitCodes(t *testing.T) {
	code, out, _ := runCLI(t, nil, "--help")
	if code != exitOK {
		t.Fatalf("--help exit %d", code)
	}
	mustContain(t, "--help", out, "Usage: karapace", "--store PATH", "Exit codes")

	code, out, _ = runCLI(t, nil, "--version")
	if code != exitOK || !strings.HasPrefix(out, "karapace "+version) {
		t.Fatalf("--version: %d %q", code, out)
	}

	code, _, errOut := runCLI(t, nil, "no-such-command")
	if code != exitFailure {
		t.Fatalf("unknown command exit %d", code)
	}
	mustContain(t, "stderr", errOut, `unknown command "no-such-command"`)

	code, _, errOut = runCLI(t, nil, "--bogus")
	if code != exitFailure {
		t.Fatalf("unknown flag exit %d", code)
	}
	mustContain(t, "stderr", errOut, "unknown flag --bogus")

	code, _, errOut = runCLI(t, nil, "--json", "--bogus")
	if code != exitFailure {
		t.Fatalf("unknown flag exit %d", code)
	}
	mustContain(t, "json stderr", errOut, `"kind": "usage"`, `"exit_code": 1`)

	// No command: usage to stderr, a usage error's exit code; nothing on
	// stdout, where a script reads answers. A mistyped one gets a guess.
	code, out, errOut = runCLI(t, nil)
	if code != exitManifest || out != "" {
		t.Fatalf("no command: exit %d, stdout %q", code, out)
	}
	mustContain(t, "no command", errOut, "Usage: karapace")
	code, _, errOut = runCLI(t, nil, "biuld")
	if code != exitFailure {
		t.Fatalf("mistyped command: exit %d", code)
	}
	mustContain(t, "mistyped command", errOut, `unknown command "biuld"; did you mean "build"?`)
	code, _, errOut = runCLI(t, nil, "frobnicate")
	if code != exitFailure || strings.Contains(errOut, "did you mean") {
		t.Fatalf("unknown command: exit %d, %q", code, errOut)
	}
}

// Global flags work after the command too, in both spellings of a value;
// --version is one of them.
func TestGlobalFlagsAfterCommand(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"KARAPACE_STORE": filepath.Join(dir, "default"), "KARAPACE_LOCK_WAIT": "10s"}
	// Each store holds one environment, named after the store.
	tinyImage(t, filepath.Join(dir, "image.tar.gz"))
	manifest := writeFile(t, dir, "karapace.toml", strings.ReplaceAll(mockManifest(""), "[gui]\napps = [\"editor\"]\n", ""))
	for _, s := range []string{"default", "s0", "s1", "s2"} {
		if code, _, errOut := runCLI(t, env, "build", "--store", filepath.Join(dir, s), "--name", s, manifest); code != exitOK {
			t.Fatalf("build in %s: %s", s, errOut)
		}
		os.Remove(filepath.Join(dir, "karapace.lock"))
	}
	code, out, errOut := runCLI(t, env, "list", "--json")
	if code != exitOK || !strings.Contains(out, `"name": "default"`) {
		t.Fatalf("list --json did not use $KARAPACE_STORE: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for i, args := range [][]string{
		{"list", "--store=" + filepath.Join(dir, "s0")},
		{"list", "--store", filepath.Join(dir, "s1")},
		{"list", "-v", "--store", filepath.Join(dir, "s2"), "--json"},
	} {
		code, out, errOut := runCLI(t, env, args...)
		if code != exitOK {
			t.Fatalf("%v: exit %d (%s)", args, code, errOut)
		}
		if want := fmt.Sprintf("s%d", i); !strings.Contains(out, want) || strings.Contains(out, "default") {
			t.Errorf("%v did not list the store it names:\n%s", args, out)
		}
	}

	code, out, _ = runCLI(t, env, "pin", "--version")
	if code != exitOK || !strings.HasPrefix(out, "karapace "+version+" (") {
		t.Fatalf("pin --version: exit %d, %q", code, out)
	}
	for _, bad := range []string{"---store", "---json", "-store", "--=x"} {
		code, _, errOut := runCLI(t, env, "list", bad, filepath.Join(dir, "s9"))
		if code != exitFailure || !strings.Contains(errOut, "list: unknown flag "+bad+" ") {
			t.Errorf("list %s: exit %d, stderr %q", bad, code, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "s9")); err == nil {
		t.Error("a misspelled --store was used")
	}
}
