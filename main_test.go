package main

import (
	"os"
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

	code, out, _ = runCLI(t, nil)
	if code != exitFailure {
		t.Fatalf("no command: exit %d", code)
	}
	mustContain(t, "no command", out, "Usage: karapace")
}
