package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the oci backend for real, with crun and with runc, on
// the test root filesystem, as root and (in the rootless pass) as a user.

// ociRuntimesUnderTest are the runtimes each real test runs with.
var ociRuntimesUnderTest = []string{"crun", "runc"}

// forEachOCIRuntime runs f once per runtime, in a subtest of its name.
func forEachOCIRuntime(t *testing.T, f func(t *testing.T, env []string)) {
	for _, name := range ociRuntimesUnderTest {
		t.Run(name, func(t *testing.T) {
			needTool(t, name)
			f(t, append(baseEnv(), "KARAPACE_OCI_RUNTIME="+name))
		})
	}
}

// ociTestSpec is testEnvSpec, its container removed at the end.
func ociTestSpec(t *testing.T, env []string) *runSpec {
	t.Helper()
	r := testEnvSpec(t)
	t.Cleanup(func() { ociTestBackend(env).stop(r, time.Second) })
	return r
}

func ociTestBackend(env []string) ociBackend {
	return ociBackend{getenv: func(k string) string { return envLookup(env, k) }, out: testOutput}
}

func ociRunErr(r *runSpec, env []string, stdin string, argv ...string) (int, string, string, error) {
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	go func() { io.WriteString(inW, stdin); inW.Close() }()
	var out, errb bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { io.Copy(&out, outR); wg.Done() }()
	go func() { io.Copy(&errb, errR); wg.Done() }()
	code, err := ociTestBackend(env).exec(r, &execSpec{Argv: argv, Stdio: [3]*os.File{inR, outW, errW}, Env: env})
	inR.Close()
	outW.Close()
	errW.Close()
	wg.Wait()
	return code, out.String(), errb.String(), err
}

func ociRun(t *testing.T, r *runSpec, env []string, stdin string, argv ...string) (int, string, string) {
	t.Helper()
	code, out, errOut, err := ociRunErr(r, env, stdin, argv...)
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return code, out, errOut
}

func TestOCIExecBasics(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		code, out, errOut := ociRun(t, r, env, "from stdin\n", "/bin/sh", "-c", "cat; echo to-stdout; echo to-stderr >&2; exit 7")
		if code != 7 || out != "from stdin\nto-stdout\n" || errOut != "to-stderr\n" {
			t.Fatalf("status %d, stdout %q, stderr %q", code, out, errOut)
		}
		code, out, _ = ociRun(t, r, env, "", "/bin/sh", "-c", "id -u; id -g; hostname; cat /etc/debian_version; echo $HOME $USER $KARAPACE_ENV; pwd")
		want := fmt.Sprintf("0\n0\nkarapace-%s\n12.", r.ShortID)
		if code != 0 || !strings.HasPrefix(out, want) || !strings.Contains(out, "/root root 1\n/root\n") {
			t.Fatalf("status %d, output:\n%s", code, out)
		}
		code, _, _ = ociRun(t, r, env, "", "/bin/sh", "-c", "kill -TERM $$")
		if code != 128+int(syscall.SIGTERM) {
			t.Fatalf("killed by SIGTERM: status %d", code)
		}
		code, _, errOut, err := ociRunErr(r, env, "", "no-such-command")
		if err == nil || !strings.Contains(err.Error(), "no-such-command: command not found in the environment") || exitCodeOf(err) != 127 {
			t.Fatalf("missing command: %d %q %v (exit code %d)", code, errOut, err, exitCodeOf(err))
		}
		code, _, errOut, err = ociRunErr(r, env, "", "/etc/passwd")
		if err == nil || exitCodeOf(err) != 126 {
			t.Fatalf("not executable: %d %q %v (exit code %d)", code, errOut, err, exitCodeOf(err))
		}
		ociRun(t, r, env, "", "/bin/sh", "-c", "echo kept > /root/note")
		if _, out, _ := ociRun(t, r, env, "", "cat", "/root/note"); out != "kept\n" {
			t.Fatalf("note: %q", out)
		}
		if _, err := os.Stat(r.Dir.upper() + "/root/note"); err != nil {
			t.Fatalf("not in the writable layer: %v", err)
		}
		// After the last session, nothing runs.
		if _, ok := r.runDir().running(); ok {
			t.Fatal("the container still runs after the last session")
		}
	})
}
