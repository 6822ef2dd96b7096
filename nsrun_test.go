package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the namespace backend for real, on a Debian root
// filesystem, as root and (in the suite's rootless pass) as an ordinary
// user with a subordinate ID range.

// testEnvSpec makes an environment over the test root filesystem. Its
// directory is removed inside a user namespace, where its files belong.
func testEnvSpec(t *testing.T) *runSpec {
	t.Helper()
	lower := testLowerTree(t)
	dir, err := os.MkdirTemp("/var/tmp", "karapace-test-env-")
	if err != nil {
		t.Fatal(err)
	}
	id := hashHex([]byte(dir))
	r := &runSpec{ID: id, ShortID: id[:12], Dir: dir, Lower: []string{lower}, ManifestDir: t.TempDir()}
	t.Cleanup(func() {
		nsBackend{getenv: os.Getenv}.stop(r, 5*time.Second)
		if err := treeInNS(treeJob{Op: "remove", Dir: dir}, nil, nil); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	return r
}

// nsRun runs argv in the environment with the given host environment and
// stdin, and returns its status and output.
func nsRun(t *testing.T, r *runSpec, env []string, stdin string, argv ...string) (int, string, string) {
	t.Helper()
	code, out, errOut, err := nsRunErr(r, env, stdin, argv...)
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return code, out, errOut
}

func nsRunErr(r *runSpec, env []string, stdin string, argv ...string) (int, string, string, error) {
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	go func() { io.WriteString(inW, stdin); inW.Close() }()
	var out, errb bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { io.Copy(&out, outR); wg.Done() }()
	go func() { io.Copy(&errb, errR); wg.Done() }()
	b := nsBackend{getenv: func(k string) string { return envLookup(env, k) }}
	code, err := b.exec(r, &execSpec{Argv: argv, Stdio: [3]*os.File{inR, outW, errW}, Env: env})
	inR.Close()
	outW.Close()
	errW.Close()
	wg.Wait()
	return code, out.String(), errb.String(), err
}

func envLookup(env []string, k string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, k+"="); ok {
			return v
		}
	}
	return ""
}

// baseEnv is a host environment for tests: HOME and PATH only.
func baseEnv() []string {
	return []string{"HOME=" + os.Getenv("HOME"), "PATH=" + os.Getenv("PATH")}
}

func TestNSExecBasics(t *testing.T) {
	r := testEnvSpec(t)
	code, out, errOut := nsRun(t, r, baseEnv(), "from stdin\n", "/bin/sh", "-c", "cat; echo to-stdout; echo to-stderr >&2; exit 7")
	if code != 7 || out != "from stdin\nto-stdout\n" || errOut != "to-stderr\n" {
		t.Fatalf("status %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "id -u; id -g; hostname; cat /etc/debian_version; echo $HOME $USER $KARAPACE_ENV; pwd")
	want := fmt.Sprintf("0\n0\nkarapace-%s\n12.", r.ShortID)
	if code != 0 || !strings.HasPrefix(out, want) || !strings.Contains(out, "/root root 1\n/root\n") {
		t.Fatalf("status %d, output:\n%s", code, out)
	}
	// A command killed by a signal reports 128+N.
	code, _, _ = nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "kill -TERM $$")
	if code != 128+int(syscall.SIGTERM) {
		t.Fatalf("killed by SIGTERM: status %d", code)
	}
	code, _, errOut, err := nsRunErr(r, baseEnv(), "", "no-such-command")
	if err == nil || !strings.Contains(err.Error(), "no-such-command: command not found in the environment") {
		t.Fatalf("missing command: %d %q %v", code, errOut, err)
	}
	// Writes persist in the environment's writable layer.
	nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "echo kept > /root/note")
	if _, out, _ := nsRun(t, r, baseEnv(), "", "cat", "/root/note"); out != "kept\n" {
		t.Fatalf("note: %q", out)
	}
	if _, err := os.Stat(filepath.Join(r.Dir, "upper", "root", "note")); err != nil {
		t.Fatalf("not in the writable layer: %v", err)
	}
}

// The full ID mapping keeps the image's owners: apt's sandbox user and
// the shadow group exist as themselves inside.
func TestNSOwnership(t *testing.T) {
	need(t, planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	r := testEnvSpec(t)
	code, out, errOut := nsRun(t, r, baseEnv(), "", "stat", "-c", "%n %U:%G %a", "/", "/etc/shadow", "/var/cache/apt/archives/partial", "/tmp")
	want := "/ root:root 755\n/etc/shadow root:shadow 640\n/var/cache/apt/archives/partial _apt:root 700\n/tmp root:root 1777\n"
	if code != 0 || out != want {
		t.Fatalf("status %d\n%s%s\nwant:\n%s", code, out, errOut, want)
	}
}

// apt-get installs a package: it needs the ID mapping (it drops to _apt)
// and overlayfs with userxattr (dpkg renames directories).
func TestNSAptInstall(t *testing.T) {
	need(t, planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	r := testEnvSpec(t)
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c",
		"apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends hello >/dev/null && hello && dpkg-query -W -f '${Status}' hello")
	if code != 0 || out != "Hello, world!\ninstall ok installed" {
		t.Fatalf("status %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestNSNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello from the host\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	probe := fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d && cat <&3", port)

	shared := testEnvSpec(t)
	if code, out, errOut := nsRun(t, shared, baseEnv(), "", "/bin/bash", "-c", probe); code != 0 || out != "hello from the host\n" {
		t.Fatalf("shared network: status %d %q %q", code, out, errOut)
	}

	isolated := testEnvSpec(t)
	isolated.Isolated = true
	code, _, errOut := nsRun(t, isolated, baseEnv(), "", "/bin/bash", "-c", probe)
	if code == 0 || !strings.Contains(errOut, "Connection refused") {
		t.Fatalf("isolated: the host's loopback was reachable: %d %q", code, errOut)
	}
	// Only loopback, and it is up: a server and a client inside talk.
	code, out, errOut := nsRun(t, isolated, baseEnv(), "", "/bin/bash", "-c",
		"cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/flags; "+
			"perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalAddr=>\"127.0.0.1:7777\",Listen=>1,ReuseAddr=>1) or die $!; "+
			"if(!fork){$c=IO::Socket::INET->new(\"127.0.0.1:7777\") or die $!; print $c \"ping\\n\"; exit} $a=$s->accept; print scalar <$a>'; "+
			"exec 3<>/dev/tcp/192.0.2.1/80")
	if !strings.HasPrefix(out, "lo\n0x9\nping\n") || !strings.Contains(errOut, "Network is unreachable") {
		t.Fatalf("isolated network: status %d\nstdout %q\nstderr %q", code, out, errOut)
	}
}

func TestNSMountPolicy(t *testing.T) {
	shared, err := os.MkdirTemp("/tmp", "karapace-mount-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(shared)
	os.Chmod(shared, 0o777)
	os.WriteFile(filepath.Join(shared, "in.txt"), []byte("host data\n"), 0o644)
	os.Symlink("/etc", filepath.Join(shared, "to-etc"))

	r := testEnvSpec(t)
	os.MkdirAll(filepath.Join(r.ManifestDir, "src"), 0o755)
	os.WriteFile(filepath.Join(r.ManifestDir, "src", "main.c"), []byte("int main;\n"), 0o644)
	r.Mounts = []lockMount{
		{Label: "data", Source: shared, Container: "/data", ReadOnly: true},
		{Label: "work", Source: "src", Container: "/workspace"},
	}
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c",
		"cat /data/in.txt /workspace/main.c; echo new > /workspace/out.txt; echo x > /data/x 2>&1 || echo read-only")
	if code != 0 || out != "host data\nint main;\nread-only\n" {
		t.Fatalf("status %d\n%s%s", code, out, errOut)
	}
	if got, _ := os.ReadFile(filepath.Join(r.ManifestDir, "src", "out.txt")); string(got) != "new\n" {
		t.Fatalf("write through the mount: %q", got)
	}

	for _, tc := range []struct {
		m    lockMount
		want string
	}{
		{lockMount{Label: "etc", Source: "/etc", Container: "/x"}, "mounts.etc: host path /etc"},
		{lockMount{Label: "dots", Source: shared + "/../../etc", Container: "/x"}, "mounts.dots: host path /etc"},
		{lockMount{Label: "link", Source: shared + "/to-etc", Container: "/x"}, "mounts.link: host path /etc (from"},
		{lockMount{Label: "up", Source: "../../../../../../etc", Container: "/x"}, "mounts.up: host path /etc"},
		{lockMount{Label: "gone", Source: "/tmp/does-not-exist-karapace", Container: "/x"}, "mounts.gone: host path /tmp/does-not-exist-karapace: no such file"},
	} {
		bad := testEnvSpec(t)
		bad.Mounts = []lockMount{tc.m}
		_, _, _, err := nsRunErr(bad, baseEnv(), "", "true")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.m.Label, err, tc.want)
		}
		if exitCodeOf(err) != exitManifest {
			t.Errorf("%s: exit code %d", tc.m.Label, exitCodeOf(err))
		}
		if _, ok := bad.runDir().running(); ok {
			t.Errorf("%s: an instance was started", tc.m.Label)
		}
	}
}

func TestNSEnvFiltering(t *testing.T) {
	r := testEnvSpec(t)
	env := append(baseEnv(), "TERM=xterm-test", "LANG=C.UTF-8", "LC_TIME=C", "SSH_AUTH_SOCK=/tmp/agent.sock",
		"AWS_SECRET_ACCESS_KEY=hunter2", "GITHUB_TOKEN=ghp_x", "DOCKER_HOST=unix:///x", "MY_VAR=1")
	code, out, _ := nsRun(t, r, env, "", "env")
	if code != 0 {
		t.Fatal(code)
	}
	for _, want := range []string{"TERM=xterm-test", "LANG=C.UTF-8", "LC_TIME=C", "KARAPACE_ENV=1", "KARAPACE_ENV_ID=" + r.ID, "PATH=" + containerPath, "HOME=/root"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
	for _, bad := range []string{"SSH_AUTH_SOCK", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DOCKER_HOST", "MY_VAR", "hunter2"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s leaked into the environment:\n%s", bad, out)
		}
	}
}

// Concurrent commands join one instance: one pid namespace, one mount.
func TestNSConcurrentExecsShareOneInstance(t *testing.T) {
	r := testEnvSpec(t)
	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, out, errOut, err := nsRunErr(r, baseEnv(), "", "/bin/sh", "-c", "readlink /proc/self/ns/pid; grep -c ' - overlay ' /proc/self/mountinfo; sleep 1")
			if err == nil && code != 0 {
				err = fmt.Errorf("status %d: %s", code, errOut)
			}
			results[i], errs[i] = out, err
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("exec %d: %v", i, errs[i])
		}
		if results[i] != results[0] || !strings.HasSuffix(results[i], "\n1\n") {
			t.Fatalf("exec %d saw %q, exec 0 saw %q", i, results[i], results[0])
		}
	}
	// The client of the last session waits for init to exit.
	if _, ok := r.runDir().running(); ok {
		t.Fatal("the instance is still running after its last session")
	}
}

func TestNSStopAndStaleMarker(t *testing.T) {
	r := testEnvSpec(t)
	b := nsBackend{getenv: os.Getenv}
	done := make(chan int)
	go func() {
		code, _, _, _ := nsRunErr(r, baseEnv(), "", "/bin/sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
		done <- code
	}()
	var pid int
	for i := 0; i < 200; i++ {
		var ok bool
		if pid, ok = b.status(r); ok {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pid == 0 {
		t.Fatal("the environment never ran")
	}
	time.Sleep(300 * time.Millisecond) // let the trap be installed
	if err := b.stop(r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 42 {
		t.Fatalf("the session ended with %d, want 42 from its TERM trap", code)
	}
	if _, ok := b.status(r); ok {
		t.Fatal("still running after stop")
	}
	// A marker left by an instance that died is detected and cleared.
	os.WriteFile(r.runDir().marker(), []byte(`{"pid": 999999, "start_time": 1}`), 0o600)
	if _, ok := b.status(r); ok {
		t.Fatal("a dead pid counted as running")
	}
	if _, err := os.Stat(r.runDir().marker()); !os.IsNotExist(err) {
		t.Fatal("the stale marker was not removed")
	}
}

func TestNSFrozenIsReadOnly(t *testing.T) {
	r := testEnvSpec(t)
	nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "echo before > /root/f")
	r.ReadOnly = true
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "cat /root/f; echo x > /root/g")
	if code == 0 || out != "before\n" || !strings.Contains(errOut, "Read-only file system") {
		t.Fatalf("frozen: status %d %q %q", code, out, errOut)
	}
}

// Signals sent to karapace reach the command: the test runs exec in a
// child process and interrupts it.
func init() {
	testHelpers["ns-exec"] = func() {
		var r runSpec
		if err := jsonUnmarshalString(os.Getenv("KARAPACE_TEST_SPEC"), &r); err != nil {
			panic(err)
		}
		var argv []string
		jsonUnmarshalString(os.Getenv("KARAPACE_TEST_ARGV"), &argv)
		e := &execSpec{Argv: argv, Login: len(argv) == 0, TTY: os.Getenv("KARAPACE_TEST_TTY") != "", Stdio: [3]*os.File{os.Stdin, os.Stdout, os.Stderr}, Env: os.Environ()}
		code, err := nsBackend{getenv: os.Getenv}.exec(&r, e)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(125)
		}
		os.Exit(code)
	}
}

func helperCmd(t *testing.T, r *runSpec, argv ...string) *exec.Cmd {
	t.Helper()
	spec, _ := jsonMarshalString(r)
	args, _ := jsonMarshalString(argv)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KARAPACE_TEST_HELPER=ns-exec", "KARAPACE_TEST_SPEC="+spec, "KARAPACE_TEST_ARGV="+args)
	return cmd
}

func TestNSSignalsForwarded(t *testing.T) {
	r := testEnvSpec(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		cmd := helperCmd(t, r, "/bin/sh", "-c", "echo ready; exec sleep 100")
		out, _ := cmd.StdoutPipe()
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
			t.Fatalf("%v: %q %v %s", sig, buf, err, errb.String())
		}
		cmd.Process.Signal(sig)
		err := cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 128+int(sig) {
			t.Fatalf("%v: exit %d (%v), want %d; stderr %s", sig, code, err, 128+int(sig), errb.String())
		}
	}
}

// enter, driven through a real terminal by tmux: the shell has job
// control, the window size follows the terminal, Ctrl-C interrupts the
// shell's job and not karapace.
func TestNSTerminalSessionWithTmux(t *testing.T) {
	needTool(t, "tmux")
	r := testEnvSpec(t)
	spec, _ := jsonMarshalString(r)
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	script := filepath.Join(t.TempDir(), "enter.sh")
	os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nexport KARAPACE_TEST_HELPER=ns-exec KARAPACE_TEST_TTY=1 KARAPACE_TEST_SPEC='%s' KARAPACE_TEST_ARGV=null\n%s\necho karapace-exited-$?\nsleep 30\n", spec, os.Args[0])), 0o755)
	tmux("new-session", "-d", "-x", "100", "-y", "30", script)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()
	waitPane := func(want string) string {
		var pane string
		for i := 0; i < 150; i++ {
			pane = tmux("capture-pane", "-p")
			if strings.Contains(pane, want) {
				return pane
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("the terminal never showed %q:\n%s", want, pane)
		return ""
	}
	tmux("send-keys", "echo $((6*7)) $(tty) $0", "Enter")
	waitPane("42 /dev/pts/")
	tmux("send-keys", "stty size", "Enter")
	waitPane("30 100")
	tmux("resize-window", "-x", "120", "-y", "40")
	tmux("send-keys", "clear; stty size", "Enter")
	waitPane("40 120")
	tmux("send-keys", "sleep 1000", "Enter")
	time.Sleep(300 * time.Millisecond)
	tmux("send-keys", "C-c")
	tmux("send-keys", "echo after-interrupt-$?", "Enter")
	waitPane("after-interrupt-130")
	tmux("send-keys", "sleep 1000 &", "Enter")
	tmux("send-keys", "jobs", "Enter")
	waitPane("Running")
	tmux("send-keys", "kill %1; exit 3", "Enter")
	waitPane("karapace-exited-3")
}

func TestNSResourceLimits(t *testing.T) {
	r := testEnvSpec(t)
	r.MemoryMB = 64
	r.CPUShares = 512
	// tail keeps a line-less stream in memory; 300 MB of it cannot fit.
	code, out, errOut, err := nsRunErr(r, baseEnv(), "", "/bin/bash", "-c", "set -o pipefail; cat /proc/self/cgroup; head -c 300000000 /dev/zero | tail -n 1 | wc -c")
	if err != nil {
		t.Fatal(err)
	}
	if _, why := cgroup2Parent(); why != "" && os.Geteuid() != 0 {
		// No cgroup we may use: the environment runs, unlimited, after a clear warning.
		if code != 0 {
			t.Fatalf("status %d: %s", code, errOut)
		}
		t.Logf("limits not applicable here (%s): checked that the environment still runs", why)
		return
	}
	if !strings.Contains(out, "karapace-"+r.ShortID) {
		t.Fatalf("not in the environment's cgroup:\n%s", out)
	}
	if code != 128+int(syscall.SIGKILL) {
		t.Fatalf("300 MB under a 64 MB limit: status %d, want the OOM kill's %d: %q %q", code, 128+int(syscall.SIGKILL), out, errOut)
	}
}

func jsonMarshalString(v any) (string, error) {
	var b bytes.Buffer
	err := writeJSON(&b, v)
	return strings.TrimSpace(b.String()), err
}

func jsonUnmarshalString(s string, v any) error { return json.Unmarshal([]byte(s), v) }
