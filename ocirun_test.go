package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
		code, out, errOut = ociRun(t, r, env, "", "/bin/sh", "-c", "id -u; id -g; hostname; cat /etc/debian_version; echo $HOME $USER $KARAPACE_ENV; pwd")
		want := fmt.Sprintf("0\n0\nkarapace-%s\n12.", r.ShortID)
		if code != 0 || !strings.HasPrefix(out, want) || !strings.Contains(out, "/root root 1\n/root\n") {
			t.Fatalf("status %d, output:\n%s\nstderr: %s", code, out, errOut)
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
		// The config.json the runtime ran is valid, and maps the IDs as
		// the namespace backend does.
		data, err := os.ReadFile(ociDirOf(r).bundle() + "/config.json")
		if err != nil {
			t.Fatal(err)
		}
		if errs := validateOCI(t, "config-schema.json#", data); len(errs) > 0 {
			t.Fatalf("the config.json that ran breaks the schema:\n%s", strings.Join(errs, "\n"))
		}
		var spec ociSpec
		json.Unmarshal(data, &spec)
		m := planIDMapping()
		if fmt.Sprint(spec.Linux.UIDMappings) != fmt.Sprint(ociIDMaps(m.uids)) || fmt.Sprint(spec.Linux.GIDMappings) != fmt.Sprint(ociIDMaps(m.gids)) {
			t.Fatalf("mappings %v %v, want the namespace backend's %v %v", spec.Linux.UIDMappings, spec.Linux.GIDMappings, m.uids, m.gids)
		}
	})
}

// oci-exec runs the oci backend's exec in a child process of the test
// binary, for tests that signal it or drive it through a terminal.
func init() {
	testHelpers["oci-exec"] = func() {
		var r runSpec
		if err := jsonUnmarshalString(os.Getenv("KARAPACE_TEST_SPEC"), &r); err != nil {
			panic(err)
		}
		var argv []string
		jsonUnmarshalString(os.Getenv("KARAPACE_TEST_ARGV"), &argv)
		e := &execSpec{Argv: argv, Login: len(argv) == 0, TTY: os.Getenv("KARAPACE_TEST_TTY") != "", Stdio: [3]*os.File{os.Stdin, os.Stdout, os.Stderr}, Env: os.Environ()}
		code, err := ociBackend{getenv: os.Getenv, out: testOutput}.exec(&r, e)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(125)
		}
		os.Exit(code)
	}
}

func ociHelperCmd(t *testing.T, r *runSpec, env []string, argv ...string) *exec.Cmd {
	t.Helper()
	spec, _ := jsonMarshalString(r)
	args, _ := jsonMarshalString(argv)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), env...), "KARAPACE_TEST_HELPER=oci-exec", "KARAPACE_TEST_SPEC="+spec, "KARAPACE_TEST_ARGV="+args)
	return cmd
}

// ociStart starts a session in a child process and returns once it has
// printed "ready"; the channel brings how it ended.
func ociStart(t *testing.T, r *runSpec, env []string, argv ...string) (<-chan error, *exec.Cmd) {
	t.Helper()
	cmd := ociHelperCmd(t, r, env, argv...)
	out, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the session did not start: %q %v: %s", buf, err, errb.String())
	}
	done := make(chan error, 1)
	go func() {
		io.Copy(io.Discard, out)
		err := cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			err = &codedError{code, "session", fmt.Errorf("%v: %s", err, errb.String())}
		}
		done <- err
	}()
	return done, cmd
}

// What a command inside may not do to the host, even as root: the same
// confinement as the namespace backend's.
func TestOCIConfinement(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		code, out, errOut := ociRun(t, r, env, "", "/bin/sh", "-c", `
stat -f -c %T /dev/pts /dev/shm /proc /sys
touch /sys/kernel/x 2>/dev/null && echo sys-writable || echo sys-refused
(echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo sysctl-written || echo sysctl-refused
(echo h > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-written || echo sysrq-refused
perl -e 'syscall(250, 0, 0) == -1 and print "keyctl: ", ($!{EPERM} ? "EPERM" : $!+0), "\n"'
perl -e 'syscall(169, 0, 0, 0, 0) == -1 and print "reboot: ", ($!{EPERM} ? "EPERM" : $!+0), "\n"'
perl -e 'for $r (0x5412, 0x100005412) { my $b = "x"; ioctl(STDIN, $r, $b) or print "TIOCSTI: ", ($!{EPERM} ? "EPERM" : $!+0), "\n" }'
(echo x >> /dev/.karapace-init) 2>/dev/null && echo init-binary-written || echo init-binary-refused
cat /proc/1/environ >/dev/null 2>&1 && echo init-env-readable || echo init-env-hidden
readlink /proc/1/exe >/dev/null 2>&1 && echo init-exe-reachable || echo init-exe-hidden
grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t'
cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'
grep -E '^CapBnd' /proc/self/status
cat /etc/resolv.conf /etc/hosts | md5sum`)
		host, _ := exec.Command("sh", "-c", "cat /etc/resolv.conf /etc/hosts | md5sum").Output()
		want := "devpts\ntmpfs\nproc\nsysfs\nsys-refused\nsysctl-refused\nsysrq-refused\nkeyctl: EPERM\nreboot: EPERM\nTIOCSTI: EPERM\nTIOCSTI: EPERM\ninit-binary-refused\ninit-env-hidden\ninit-exe-hidden\nNoNewPrivs:1\nSeccomp:2\n"
		if code != 0 || !strings.HasPrefix(out, want) || !strings.HasSuffix(out, string(host)) {
			t.Fatalf("status %d\n%s\nwant it to begin with:\n%s\nand end with %s(stderr %s)", code, out, want, host, errOut)
		}
		// The IDs inside are the namespace backend's: never the host's root.
		m := planIDMapping()
		for _, u := range m.uids {
			line := fmt.Sprintf("%d %d %d\n", u.inside, u.outside, u.count)
			if !strings.Contains(out, line) {
				t.Fatalf("uid_map lacks %q:\n%s", line, out)
			}
			if os.Geteuid() == 0 && u.outside == 0 {
				t.Fatal("the host's root is mapped inside")
			}
		}
		var bnd uint64
		if _, err := fmt.Sscanf(out[strings.Index(out, "CapBnd:"):], "CapBnd: %x", &bnd); err != nil || bnd&(1<<19) != 0 || bnd&(1<<21) != 0 {
			t.Fatalf("bounding set holds CAP_SYS_PTRACE (19) or CAP_SYS_ADMIN (21): %v\n%s", err, out)
		}
		// The host's variables go through the policy's filter.
		env2 := append(append([]string{}, env...), "SSH_AUTH_SOCK=/tmp/agent", "AWS_SECRET_ACCESS_KEY=s3cret", "LANG=C.UTF-8", "DOCKER_HOST=tcp://x")
		_, out, _ = ociRun(t, r, env2, "", "/bin/sh", "-c", "env | sort")
		if strings.Contains(out, "SSH_AUTH_SOCK") || strings.Contains(out, "s3cret") || strings.Contains(out, "DOCKER_HOST") ||
			!strings.Contains(out, "LANG=C.UTF-8\n") || !strings.Contains(out, "KARAPACE_ENV=1\n") || !strings.Contains(out, "KARAPACE_ENV_ID="+r.ID+"\n") {
			t.Fatalf("environment inside:\n%s", out)
		}
	})
}

func TestOCISignalsForwarded(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
			done, cmd := ociStart(t, r, env, "/bin/sh", "-c", "echo ready; exec sleep 100")
			cmd.Process.Signal(sig)
			if code := exitCodeOf(<-done); code != 128+int(sig) {
				t.Fatalf("%v: exit %d, want %d", sig, code, 128+int(sig))
			}
		}
	})
}

// Sessions join the running container (one /dev/shm, one init); stop
// ends them, SIGTERM first, SIGKILL after the timeout; a container a
// crash left behind is found and replaced.
func TestOCISessionsStopAndCrash(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		b := ociTestBackend(env)
		done, _ := ociStart(t, r, env, "/bin/sh", "-c", "echo first > /dev/shm/mark; trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done")
		pid, ok := b.status(r)
		if !ok {
			t.Fatal("not running while a session runs")
		}
		_, out, _ := ociRun(t, r, env, "", "/bin/sh", "-c", "cat /dev/shm/mark; tr '\\0' ' ' < /proc/1/cmdline")
		if out != "first\n"+ociInitPath+" " {
			t.Fatalf("the second session is not in the first one's container: %q", out)
		}
		if p, ok := b.status(r); !ok || p != pid {
			t.Fatalf("the container changed: %d %v, was %d", p, ok, pid)
		}
		if res, err := b.stop(r, 5*time.Second); err != nil || res != (stopResult{WasRunning: true}) {
			t.Fatal(res, err)
		}
		if code := exitCodeOf(<-done); code != 42 {
			t.Fatalf("the session ended with %d, want 42 from its TERM trap", code)
		}
		if _, ok := b.status(r); ok {
			t.Fatal("still running after stop")
		}
		if _, err := os.Stat(ociDirOf(r).state() + "/" + containerID(r)); !os.IsNotExist(err) {
			t.Fatalf("the runtime's state of the container is left: %v", err)
		}
		done, _ = ociStart(t, r, env, "/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done")
		if res, err := b.stop(r, 300*time.Millisecond); err != nil || res != (stopResult{WasRunning: true, Killed: true}) {
			t.Fatal(res, err)
		}
		if code := exitCodeOf(<-done); code != 128+9 {
			t.Fatalf("the killed session ended with %d, want 137", code)
		}
		// A crash: the container's init dies, its state stays.
		done, _ = ociStart(t, r, env, "/bin/sh", "-c", "echo ready; exec sleep 100")
		pid, _ = b.status(r)
		syscall.Kill(pid, syscall.SIGKILL)
		<-done
		if _, ok := b.status(r); ok {
			t.Fatal("a dead container counted as running")
		}
		if code, out, errOut := ociRun(t, r, env, "", "/bin/sh", "-c", "echo again"); code != 0 || out != "again\n" {
			t.Fatalf("after a crash: %d %q %q", code, out, errOut)
		}
	})
}

func TestOCINetwork(t *testing.T) {
	probe := hostGreeting(t)
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		shared := ociTestSpec(t, env)
		if code, out, errOut := ociRun(t, shared, env, "", "/bin/bash", "-c", probe); code != 0 || out != "hello from the host\n" {
			t.Fatalf("shared network: status %d %q %q", code, out, errOut)
		}
		isolated := ociTestSpec(t, env)
		isolated.Isolated = true
		code, _, errOut := ociRun(t, isolated, env, "", "/bin/bash", "-c", probe)
		if code == 0 || !strings.Contains(errOut, "Connection refused") {
			t.Fatalf("isolated: the host's loopback was reachable: %d %q", code, errOut)
		}
		code, out, errOut := ociRun(t, isolated, env, "", "/bin/bash", "-c",
			"cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/flags; grep -c -e ' /etc/resolv.conf ' -e ' /etc/hosts ' /proc/self/mountinfo; exec 3<>/dev/tcp/192.0.2.1/80")
		if !strings.HasPrefix(out, "lo\n0x9\n0\n") || !strings.Contains(errOut, "Network is unreachable") {
			t.Fatalf("isolated network: status %d\nstdout %q\nstderr %q", code, out, errOut)
		}
	})
}

// Manifest mounts go through the policy as with the namespace backend:
// ":ro" is read-only inside, and a path outside the allowed prefixes is
// refused as a manifest error before anything starts.
func TestOCIMounts(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		src, err := os.MkdirTemp("/tmp", "karapace-oci-mount-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(src) })
		os.WriteFile(src+"/host-file", []byte("from the host\n"), 0o644)
		r.Mounts = []lockMount{{Label: "data", Source: src, Container: "/data", ReadOnly: true}}
		code, out, errOut := ociRun(t, r, env, "", "/bin/sh", "-c", "cat /data/host-file; touch /data/new 2>&1 || echo refused")
		if code != 0 || !strings.HasPrefix(out, "from the host\n") || !strings.Contains(out, "Read-only file system") || !strings.HasSuffix(out, "refused\n") {
			t.Fatalf("a :ro mount: %d %q %q", code, out, errOut)
		}
		if _, err := os.Stat(src + "/new"); err == nil {
			t.Fatal("a file was written through the :ro mount")
		}
		// The mount point came from a layer of its own, not the
		// environment's writable one.
		if _, err := os.Stat(r.Dir.upper() + "/data"); err == nil {
			t.Fatal("the mount point was written into the writable layer")
		}
		b := ociTestBackend(env)
		b.stop(r, time.Second)
		r.Mounts = []lockMount{{Label: "etc", Source: "/etc", Container: "/hostetc"}}
		code, err = b.exec(r, &execSpec{Argv: []string{"true"}, Stdio: [3]*os.File{os.Stdin, os.Stdout, os.Stderr}, Env: env})
		if err == nil || exitCodeOf(err) != 2 {
			t.Fatalf("a mount of /etc: %d %v (exit code %d), want a manifest error", code, err, exitCodeOf(err))
		}
		if _, ok := b.status(r); ok {
			t.Fatal("a refused mount started the container")
		}
	})
}

func TestOCIAptInstall(t *testing.T) {
	need(t, planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		code, out, errOut := ociRun(t, r, env, "", "/bin/sh", "-c",
			"apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends hello >/dev/null && hello && dpkg-query -W -f '${Status}' hello")
		if code != 0 || out != "Hello, world!\ninstall ok installed" {
			t.Fatalf("status %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
	})
}

// enter through a real terminal (tmux): a login shell with job control,
// the window size followed, Ctrl-C to the shell's job.
func TestOCITerminalWithTmux(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		spec, _ := jsonMarshalString(r)
		script := filepath.Join(t.TempDir(), "enter.sh")
		os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nexport %s KARAPACE_TEST_HELPER=oci-exec KARAPACE_TEST_TTY=1 KARAPACE_TEST_SPEC='%s' KARAPACE_TEST_ARGV=null\n%s\necho karapace-exited-$?\nsleep 30\n", env[len(env)-1], spec, os.Args[0])), 0o755)
		term := newTmuxSession(t, script, 100, 30)
		term.keys("echo $((6*7)) $(tty) $0", "Enter")
		term.waitFor("42 /dev/pts/0 /bin/bash") // a login shell (bash -l)
		term.keys("shopt -q login_shell && echo login-$((1+1))", "Enter")
		term.waitFor("login-2")
		term.jobControl()
		term.keys("kill %1; exit 3", "Enter")
		term.waitFor("karapace-exited-3")
	})
}

// jsonSchemas validates JSON documents against the runtime-spec's JSON
// schema (testdata/oci-schema), with what of draft-04 those files use.
type jsonSchemas struct {
	dir  string
	docs map[string]any
}

func (s *jsonSchemas) doc(t *testing.T, file string) any {
	t.Helper()
	if d, ok := s.docs[file]; ok {
		return d
	}
	data, err := os.ReadFile(filepath.Join(s.dir, file))
	if err != nil {
		t.Fatalf("schema %s: %v", file, err)
	}
	var d any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("schema %s: %v", file, err)
	}
	s.docs[file] = d
	return d
}

// resolve follows a reference ("file.json#/a/b" or "#/a/b") from file.
func (s *jsonSchemas) resolve(t *testing.T, file, ref string) (string, any) {
	t.Helper()
	target, pointer, _ := strings.Cut(ref, "#")
	if target != "" {
		file = target
	}
	node := s.doc(t, file)
	for _, part := range strings.Split(strings.Trim(pointer, "/"), "/") {
		if part == "" {
			continue
		}
		m, ok := node.(map[string]any)
		if !ok || m[part] == nil {
			t.Fatalf("schema %s: reference %q does not resolve", file, ref)
		}
		node = m[part]
	}
	return file, node
}

// The keywords the validator knows; any other in a schema it meets fails
// the test, so that none is silently ignored.
var jsonSchemaKeywords = map[string]bool{
	"$ref": true, "type": true, "properties": true, "patternProperties": true, "additionalProperties": true,
	"required": true, "items": true, "minItems": true, "maxItems": true, "enum": true, "pattern": true,
	"minimum": true, "maximum": true, "allOf": true, "anyOf": true, "oneOf": true, "not": true,
	"minLength": true, "maxLength": true, "uniqueItems": true,
	"description": true, "id": true, "$schema": true, "definitions": true, "title": true, "default": true,
}

// validate returns the ways v breaks schema (found in file), each with
// its path in the document.
func (s *jsonSchemas) validate(t *testing.T, file string, schema any, v any, path string) []string {
	t.Helper()
	sch, ok := schema.(map[string]any)
	if !ok {
		t.Fatalf("schema %s at %s: not an object", file, path)
	}
	for k := range sch {
		if !jsonSchemaKeywords[k] {
			t.Fatalf("schema %s: keyword %q is not supported by the test's validator", file, k)
		}
	}
	if ref, ok := sch["$ref"].(string); ok {
		f, target := s.resolve(t, file, ref)
		return s.validate(t, f, target, v, path)
	}
	var errs []string
	fail := func(format string, a ...any) { errs = append(errs, path+": "+fmt.Sprintf(format, a...)) }
	if ty, ok := sch["type"]; ok {
		var types []string
		switch ty := ty.(type) {
		case string:
			types = []string{ty}
		case []any:
			for _, x := range ty {
				types = append(types, x.(string))
			}
		}
		match := false
		for _, ty := range types {
			match = match || jsonTypeIs(v, ty)
		}
		if !match {
			fail("%s is not of type %v", jsonShort(v), types)
			return errs
		}
	}
	if en, ok := sch["enum"].([]any); ok {
		found := false
		for _, x := range en {
			found = found || reflect.DeepEqual(x, v)
		}
		if !found {
			fail("%s is not one of %v", jsonShort(v), en)
		}
	}
	switch v := v.(type) {
	case string:
		if p, ok := sch["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(v) {
			fail("%q does not match %s", v, p)
		}
		if n, ok := sch["minLength"].(float64); ok && float64(len([]rune(v))) < n {
			fail("shorter than %v", n)
		}
		if n, ok := sch["maxLength"].(float64); ok && float64(len([]rune(v))) > n {
			fail("longer than %v", n)
		}
	case float64:
		if n, ok := sch["minimum"].(float64); ok && v < n {
			fail("%v is below the minimum %v", v, n)
		}
		if n, ok := sch["maximum"].(float64); ok && v > n {
			fail("%v is above the maximum %v", v, n)
		}
	case []any:
		if n, ok := sch["minItems"].(float64); ok && float64(len(v)) < n {
			fail("fewer than %v items", n)
		}
		if n, ok := sch["maxItems"].(float64); ok && float64(len(v)) > n {
			fail("more than %v items", n)
		}
		if u, _ := sch["uniqueItems"].(bool); u {
			for i := range v {
				for j := i + 1; j < len(v); j++ {
					if reflect.DeepEqual(v[i], v[j]) {
						fail("items %d and %d are the same", i, j)
					}
				}
			}
		}
		switch items := sch["items"].(type) {
		case map[string]any:
			for i, x := range v {
				errs = append(errs, s.validate(t, file, items, x, fmt.Sprintf("%s[%d]", path, i))...)
			}
		case []any:
			for i, x := range v {
				if i < len(items) {
					errs = append(errs, s.validate(t, file, items[i], x, fmt.Sprintf("%s[%d]", path, i))...)
				}
			}
		}
	case map[string]any:
		if req, ok := sch["required"].([]any); ok {
			for _, k := range req {
				if _, ok := v[k.(string)]; !ok {
					fail("required %q is missing", k)
				}
			}
		}
		props, _ := sch["properties"].(map[string]any)
		patterns, _ := sch["patternProperties"].(map[string]any)
		for k, x := range v {
			matched := false
			if p, ok := props[k]; ok {
				matched = true
				errs = append(errs, s.validate(t, file, p, x, path+"."+k)...)
			}
			for pat, p := range patterns {
				if regexp.MustCompile(pat).MatchString(k) {
					matched = true
					errs = append(errs, s.validate(t, file, p, x, path+"."+k)...)
				}
			}
			switch add := sch["additionalProperties"].(type) {
			case bool:
				if !add && !matched {
					fail("property %q is not allowed", k)
				}
			case map[string]any:
				if !matched {
					errs = append(errs, s.validate(t, file, add, x, path+"."+k)...)
				}
			}
		}
	}
	if all, ok := sch["allOf"].([]any); ok {
		for _, sub := range all {
			errs = append(errs, s.validate(t, file, sub, v, path)...)
		}
	}
	if anyOf, ok := sch["anyOf"].([]any); ok {
		n := 0
		for _, sub := range anyOf {
			if len(s.validate(t, file, sub, v, path)) == 0 {
				n++
			}
		}
		if n == 0 {
			fail("matches none of anyOf")
		}
	}
	if oneOf, ok := sch["oneOf"].([]any); ok {
		n := 0
		for _, sub := range oneOf {
			if len(s.validate(t, file, sub, v, path)) == 0 {
				n++
			}
		}
		if n != 1 {
			fail("matches %d of oneOf, not exactly one", n)
		}
	}
	if not, ok := sch["not"]; ok && len(s.validate(t, file, not, v, path)) == 0 {
		fail("matches what \"not\" excludes")
	}
	return errs
}

func jsonTypeIs(v any, ty string) bool {
	switch ty {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "null":
		return v == nil
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f)
	}
	return false
}

func jsonShort(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 60 {
		b = append(b[:60], "..."...)
	}
	return string(b)
}

// validateOCI checks a document (JSON) against the schema at ref.
func validateOCI(t *testing.T, ref string, data []byte) []string {
	t.Helper()
	s := &jsonSchemas{dir: "testdata/oci-schema", docs: map[string]any{}}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	file, schema := s.resolve(t, "", ref)
	return s.validate(t, file, schema, v, "$")
}

// The validator finds what breaks the schema: a test of it that could not
// fail would prove nothing of the configurations below.
func TestOCISchemaValidatorRejects(t *testing.T) {
	good := `{"ociVersion": "1.0.2", "root": {"path": "/r"}, "linux": {"namespaces": [{"type": "pid"}], "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}}`
	if errs := validateOCI(t, "config-schema.json#", []byte(good)); len(errs) != 0 {
		t.Fatalf("a valid configuration: %v", errs)
	}
	for _, c := range []struct{ doc, want string }{
		{`{"root": {"path": "/r"}}`, `required "ociVersion" is missing`},
		{`{"ociVersion": "1.0.2", "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "rlimits": [{"type": "NPROC", "hard": 1, "soft": 1}]}}`, `"NPROC" does not match ^RLIMIT_[A-Z]+$`},
		{`{"ociVersion": "1.0.2", "root": {"path": 5}}`, `$.root.path: 5 is not of type [string]`},
		{`{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "bogus"}]}}`, `matches none of anyOf`},
		{`{"ociVersion": "1.0.2", "linux": {"uidMappings": [{"containerID": -1, "hostID": 0, "size": 1}]}}`, `below the minimum`},
		{`{"ociVersion": "1.0.2", "linux": {"uidMappings": [{"containerID": 1.5, "hostID": 0, "size": 1}]}}`, `is not of type [integer]`},
		{`{"ociVersion": "1.0.2", "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}}}`, `fewer than 1 items`},
		{`{"ociVersion": "1.0.2", "linux": {"seccomp": {"defaultAction": "SCMP_ACT_MAYBE"}}}`, `is not one of`},
		{`{"ociVersion": "1.0.2", "annotations": {"a": 1}}`, `$.annotations.a: 1 is not of type [string]`},
		{`{"ociVersion": "1.0.2", "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "rlimits": [{"type": "RLIMIT_NPROC", "hard": 1}]}}`, `required "soft" is missing`},
	} {
		errs := validateOCI(t, "config-schema.json#", []byte(c.doc))
		if !strings.Contains(strings.Join(errs, "\n"), c.want) {
			t.Errorf("%s: want an error with %q, got %v", c.doc, c.want, errs)
		}
	}
}

// Every configuration the backend writes is valid: as root (staged
// sources, cgroups) and as a user, plain, isolated with mounts and
// limits, frozen; and every session's process.
func TestOCIConfigMatchesSchema(t *testing.T) {
	dir := t.TempDir()
	home := t.TempDir()
	getenv := func(k string) string { return map[string]string{"HOME": home}[k] }
	for _, variant := range []struct {
		name string
		r    runSpec
	}{
		{"plain", runSpec{}},
		{"isolated-mounts-limits", runSpec{Isolated: true, Mounts: []lockMount{{Label: "w", Source: dir, Container: "/w", ReadOnly: true}}, MemoryMB: 512, CPUShares: 512, PidsLimit: 300}},
		{"frozen", runSpec{ReadOnly: true}},
	} {
		r := variant.r
		r.ID, r.ShortID, r.Dir, r.Lower = strings.Repeat("ab", 32), "abababababab", envDir(t.TempDir()), []string{t.TempDir()}
		acc, err := resolveAccess(&r, getenv, testOutput)
		if err != nil {
			t.Fatal(err)
		}
		cfg, m, _, err := nsBackend{getenv: getenv, out: testOutput}.initConfig(&r, acc)
		if err != nil {
			t.Fatal(err)
		}
		for _, staging := range []string{"", ociStaging} {
			for _, rt := range []string{"crun", "runc"} {
				j := &ociCreateJob{Init: *cfg, Self: "/usr/bin/karapace", Staging: staging}
				spec := ociSpecFor(&r, cfg, acc, m, j, rt, staging != "")
				data, _ := json.Marshal(spec)
				if errs := validateOCI(t, "config-schema.json#", data); len(errs) > 0 {
					t.Errorf("%s, %s, staging %q: config.json breaks the schema:\n%s\n%s", variant.name, rt, staging, strings.Join(errs, "\n"), data)
				}
				if staging != "" && (spec.Linux.Resources == nil || spec.Linux.Resources.Pids == nil) {
					t.Errorf("%s: as root, no pids limit in the cgroup", variant.name)
				}
				for _, rl := range spec.Process.Rlimits {
					var cur unix.Rlimit
					unix.Getrlimit(unix.RLIMIT_NPROC, &cur)
					if rl.Hard > cur.Max || rl.Soft > rl.Hard {
						t.Errorf("%s: %s above the caller's hard limit %d: %+v", variant.name, rl.Type, cur.Max, rl)
					}
				}
			}
		}
	}
	for _, tty := range []bool{false, true} {
		p := newOCIProcess([]string{"/bin/sh", "-c", "true"}, tty, []string{"PATH=/bin"}, "/root")
		p.Rlimits = ociRlimits(100, false)
		p.ConsoleSize = &ociBox{Height: 24, Width: 80}
		data, _ := json.Marshal(p)
		if errs := validateOCI(t, "config-schema.json#/properties/process", data); len(errs) > 0 {
			t.Errorf("process.json breaks the schema:\n%s\n%s", strings.Join(errs, "\n"), data)
		}
	}
}

// The runtime is the one named, else the first found; a named one that
// is missing is an error that says so.
func TestOCIRuntimeChoice(t *testing.T) {
	home := t.TempDir()
	env := map[string]string{"HOME": home, "PATH": os.Getenv("PATH"), "KARAPACE_OCI_RUNTIME": "no-such-runtime"}
	getenv := func(k string) string { return env[k] }
	if _, err := findOCIRuntime(getenv); err == nil || !strings.Contains(err.Error(), `KARAPACE_OCI_RUNTIME names the OCI runtime "no-such-runtime"`) {
		t.Fatalf("a missing runtime: %v", err)
	}
	delete(env, "KARAPACE_OCI_RUNTIME")
	writeFile(t, home, ".config/karapace/config.toml", "[runtime]\noci_runtime = \"no-such-runtime\"\n")
	if _, err := findOCIRuntime(getenv); err == nil || !strings.Contains(err.Error(), "runtime.oci_runtime") {
		t.Fatalf("a missing runtime in the configuration: %v", err)
	}
	writeFile(t, home, ".config/karapace/config.toml", "[runtime]\noci_runtime = 3\n")
	if _, err := findOCIRuntime(getenv); err == nil || exitCodeOf(err) != 2 {
		t.Fatalf("a bad runtime.oci_runtime: %v (exit code %d)", err, exitCodeOf(err))
	}
	writeFile(t, home, ".config/karapace/config.toml", "")
	t.Setenv("PATH", t.TempDir())
	if _, err := findOCIRuntime(getenv); err == nil || !strings.Contains(err.Error(), "no OCI runtime found") {
		t.Fatalf("no runtime at all: %v", err)
	}
}

// doctor names each runtime on PATH with its version.
func TestOCIDoctorListsRuntimes(t *testing.T) {
	needTool(t, "crun")
	var line string
	for _, c := range ociRuntimeChecks() {
		if c.Name == "OCI runtime crun" {
			line = c.Status + " " + c.Detail
		}
	}
	if !strings.HasPrefix(line, "ok ") || !strings.Contains(line, "crun version") {
		t.Fatalf("doctor's line for crun: %q", line)
	}
}

// The command line with runtime.backend = "oci": build, exec through the
// project's mount (read-write, and its files keep their owner), list
// and inspect while running, stop; the environment's files persist.
func TestOCICLIEndToEnd(t *testing.T) {
	rootfs := testRootfsTar(t)
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		k := newKP(t)
		k.env = append(k.env, env[len(env)-1])
		os.MkdirAll(filepath.Join(k.dir, "src"), 0o755)
		k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n[mounts]\nsrc = \"./src:/src\"\n[runtime]\nbackend = \"oci\"\n", rootfs))
		k.ok("build", "--name", "demo")
		k.ok("exec", "demo", "--", "sh", "-c", "echo made > /src/out.txt && echo kept > /root/kept")
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(k.dir, "src", "out.txt"), &st); err != nil || st.Uid != uint32(os.Getuid()) {
			t.Fatalf("a file written through the mount: %v, owner %d, want %d", err, st.Uid, os.Getuid())
		}
		if code, _, _ := k.run("exec", "demo", "--", "sh", "-c", "exit 9"); code != 9 {
			t.Fatalf("exit status %d, want 9", code)
		}
		cmd := k.cmd("", "exec", "demo", "--", "sh", "-c", "echo ready; exec sleep 100")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		io.ReadFull(out, buf)
		mustContain(t, "list", k.ok("list"), " demo ", "running")
		mustContain(t, "inspect", k.ok("inspect", "demo"), "backend", "oci")
		// The overlay is mounted in the container's own mount namespace,
		// never on the host.
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), k.store) {
			t.Fatalf("the host sees a mount of the store:\n%s", mi)
		}
		k.ok("stop", "demo")
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 128+15 {
			t.Fatalf("the session stopped with %d, want 143 (SIGTERM)", code)
		}
		if l := k.ok("list"); strings.Contains(l, "running") {
			t.Fatalf("running after stop:\n%s", l)
		}
		if got := k.ok("exec", "demo", "--", "cat", "/root/kept"); got != "kept\n" {
			t.Fatalf("the environment's file: %q", got)
		}
	})
}

// A frozen environment's root is read-only, its writable layer one more
// lower layer.
func TestOCIFrozenIsReadOnly(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		ociRun(t, r, env, "", "/bin/sh", "-c", "echo before > /root/f")
		r.ReadOnly = true
		code, out, errOut := ociRun(t, r, env, "", "/bin/sh", "-c", "cat /root/f; echo x > /root/g")
		if code == 0 || out != "before\n" || !strings.Contains(errOut, "Read-only file system") {
			t.Fatalf("frozen: status %d %q %q", code, out, errOut)
		}
	})
}

// Each exec that starts the container joins it at once: start returns
// before the container's process has become our init, and an exec in
// between was refused (crun, rootless: setns EPERM) about one time in 40.
func TestOCIColdStartsRepeatedly(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		for i := 0; i < 15; i++ {
			if code, out, errOut, err := ociRunErr(r, env, "", "/bin/echo", "up"); err != nil || code != 0 || out != "up\n" {
				t.Fatalf("cold start %d: %d %q %q %v", i, code, out, errOut, err)
			}
		}
	})
}

// Sessions started at once share one container: one init, started once.
func TestOCIConcurrentSessionsShareOneContainer(t *testing.T) {
	forEachOCIRuntime(t, func(t *testing.T, env []string) {
		r := ociTestSpec(t, env)
		outs := make([]string, 4)
		errs := make([]error, 4)
		var wg sync.WaitGroup
		for i := range outs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var code int
				code, outs[i], _, errs[i] = ociRunErr(r, env, "", "/bin/sh", "-c", "cut -d' ' -f22 /proc/1/stat; sleep 1")
				if errs[i] == nil && code != 0 {
					errs[i] = fmt.Errorf("status %d", code)
				}
			}()
		}
		wg.Wait()
		for i := range outs {
			if errs[i] != nil || outs[i] == "" || outs[i] != outs[0] {
				t.Fatalf("session %d: %q %v; the first saw init start at %q", i, outs[i], errs[i], outs[0])
			}
		}
		if _, ok := r.runDir().running(); ok {
			t.Fatal("the container still runs after its last session")
		}
	})
}
