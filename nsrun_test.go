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
	// A command that cannot start ends as a shell's would: 127 when it
	// is not found, 126 when it is not executable.
	code, _, errOut, err := nsRunErr(r, baseEnv(), "", "no-such-command")
	if err == nil || !strings.Contains(err.Error(), "no-such-command: command not found in the environment") || exitCodeOf(err) != 127 {
		t.Fatalf("missing command: %d %q %v (exit code %d)", code, errOut, err, exitCodeOf(err))
	}
	code, _, errOut, err = nsRunErr(r, baseEnv(), "", "/etc/passwd")
	if err == nil || !strings.Contains(err.Error(), "starting /etc/passwd") || exitCodeOf(err) != 126 {
		t.Fatalf("not executable: %d %q %v (exit code %d)", code, errOut, err, exitCodeOf(err))
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

// The root filesystem as the SPEC describes it, and what a process
// inside may not do to the host, even as root.
func TestNSFilesystemAndConfinement(t *testing.T) {
	r := testEnvSpec(t)
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", `
ls -A /dev | tr '\n' ' '; echo
tr '\0' ' ' < /proc/1/cmdline; echo
stat -f -c %T /dev/pts /dev/shm /proc /sys
grep -c " /sys .* ro," /proc/self/mountinfo
touch /sys/kernel/x 2>/dev/null && echo sys-writable || echo sys-refused
mknod /tmp/null c 1 3 2>/dev/null && echo mknod-done || echo mknod-refused
(echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo sysctl-written || echo sysctl-refused
(echo h > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-written || echo sysrq-refused
readlink /proc/1/exe >/dev/null 2>&1 && echo init-exe-reachable || echo init-exe-hidden
cat /proc/1/environ >/dev/null 2>&1 && echo init-env-readable || echo init-env-hidden
grep ^CapBnd /proc/self/status
cat /etc/resolv.conf /etc/hosts | md5sum`)
	host, _ := exec.Command("sh", "-c", "cat /etc/resolv.conf /etc/hosts | md5sum").Output()
	want := "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \nkarapace-init \n" +
		"devpts\ntmpfs\nproc\nsysfs\n1\nsys-refused\nmknod-refused\nsysctl-refused\nsysrq-refused\ninit-exe-hidden\ninit-env-hidden\n"
	if code != 0 || !strings.HasPrefix(out, want) || !strings.HasSuffix(out, string(host)) {
		t.Fatalf("status %d\n%s\nwant it to begin with:\n%s\nand end with %s(stderr %s)", code, out, want, host, errOut)
	}
	var bnd uint64
	if _, err := fmt.Sscanf(out[strings.Index(out, "CapBnd:"):], "CapBnd: %x", &bnd); err != nil || bnd&(1<<19) != 0 {
		t.Fatalf("CAP_SYS_PTRACE (19) is in the commands' bounding set: %v\n%s", err, out)
	}
	// Isolated, the environment has neither of the host's files.
	r.Isolated = true
	nsBackend{getenv: os.Getenv}.stop(r, time.Second)
	code, out, _ = nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "grep -c -e ' /etc/resolv.conf ' -e ' /etc/hosts ' /proc/self/mountinfo")
	if out != "0\n" {
		t.Fatalf("isolated: host files bound (%d): %q", code, out)
	}
	// As an ordinary user, the user's name is known inside, as root.
	if u := hostUserName(); u != "root" {
		code, out, _ = nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "getent passwd "+u+"; id -un")
		if code != 0 || out != u+":x:0:0:"+u+" (host user):/root:/bin/sh\nroot\n" {
			t.Fatalf("the host user inside: %d %q", code, out)
		}
	}
}

// Without newuidmap, only root is mapped: a clear warning, and the
// environment still runs, with the image's other owners unmapped.
func TestNSReducedMapping(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root's mapping is never reduced; the rootless pass of the suite runs this test")
	}
	need(t, planIDMapping().reduced == "", "a full mapping to start from")
	r := testEnvSpec(t)
	logs := captureLog(t)
	t.Setenv("PATH", t.TempDir()) // no newuidmap, no fuse-overlayfs
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "id -u; stat -c %u /etc/shadow /var/cache/apt/archives/partial")
	if code != 0 || out != "0\n0\n65534\n" {
		t.Fatalf("status %d: %q %s", code, out, errOut)
	}
	mustContain(t, "warnings", logs.String(), "newuidmap/newgidmap are not installed; only root is mapped inside", "sudo apt install uidmap")
}

// fuse-overlayfs, forced, gives the same environment, renames of
// directories included (what dpkg needs).
func TestNSFuseOverlay(t *testing.T) {
	needTool(t, "fuse-overlayfs")
	r := testEnvSpec(t)
	code, out, errOut := nsRun(t, r, append(baseEnv(), "KARAPACE_OVERLAY=fuse"), "", "/bin/sh", "-c",
		"grep -c ' / / .* - fuse.fuse-overlayfs ' /proc/self/mountinfo; mkdir -p /var/lib/x/d && mv /var/lib/x/d /var/lib/x/e && echo renamed; stat -c '%U:%G' /etc/shadow")
	if code != 0 || out != "1\nrenamed\nroot:shadow\n" {
		t.Fatalf("status %d: %q %s", code, out, errOut)
	}
	if _, err := os.Lstat(filepath.Join(r.Dir, "upper", "var", "lib", "x", "e")); err != nil {
		t.Fatalf("not in the writable layer: %v", err)
	}
	nsBackend{getenv: os.Getenv}.stop(r, time.Second)
	b := nsBackend{getenv: func(k string) string { return map[string]string{"KARAPACE_OVERLAY": "floppy"}[k] }}
	if _, err := b.exec(r, &execSpec{Argv: []string{"true"}}); err == nil || !strings.Contains(err.Error(), `KARAPACE_OVERLAY="floppy": expected auto, kernel or fuse`) {
		t.Fatalf("bad KARAPACE_OVERLAY: %v", err)
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

// Concurrent commands join one instance: one pid namespace, one mount.
// Each waits until all have started, so none can end before the last has
// joined (or, were joining broken, started an instance of its own).
func TestNSConcurrentExecsShareOneInstance(t *testing.T) {
	r := testEnvSpec(t)
	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	script := fmt.Sprintf(`mkdir -p /tmp/barrier; touch /tmp/barrier/$$; i=0
while [ "$(ls /tmp/barrier | wc -l)" -lt %d ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "only $(ls /tmp/barrier | wc -l) sessions started" >&2; exit 1; }; sleep 0.05; done
readlink /proc/self/ns/pid; grep -c ' - overlay ' /proc/self/mountinfo`, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, out, errOut, err := nsRunErr(r, baseEnv(), "", "/bin/sh", "-c", script)
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

// nsStart starts argv in the environment and returns once it has printed
// its first line (its way of saying it is ready); the channel gives its
// status and error when it ends.
func nsStart(t *testing.T, r *runSpec, argv ...string) <-chan error {
	t.Helper()
	outR, outW, _ := os.Pipe()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		b := nsBackend{getenv: os.Getenv}
		code, err := b.exec(r, &execSpec{Argv: argv, Stdio: [3]*os.File{null, outW, os.Stderr}, Env: baseEnv()})
		outW.Close()
		null.Close()
		if err == nil {
			err = exitStatus(code)
		}
		done <- err
	}()
	line := make([]byte, 1)
	for {
		if _, err := outR.Read(line); err != nil {
			t.Fatalf("%v never said it was ready: %v", argv, <-done)
		}
		if line[0] == '\n' {
			break
		}
	}
	go io.Copy(io.Discard, outR)
	return done
}

func TestNSStopAndStaleMarker(t *testing.T) {
	r := testEnvSpec(t)
	b := nsBackend{getenv: os.Getenv}
	// SIGTERM first: the session's TERM trap runs.
	done := nsStart(t, r, "/bin/sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done")
	if _, ok := b.status(r); !ok {
		t.Fatal("not running while a session runs")
	}
	if err := b.stop(r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := exitCodeOf(<-done); code != 42 {
		t.Fatalf("the session ended with %d, want 42 from its TERM trap", code)
	}
	if _, ok := b.status(r); ok {
		t.Fatal("still running after stop")
	}
	// SIGKILL after the timeout, for a session that ignores SIGTERM.
	done = nsStart(t, r, "/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done")
	if err := b.stop(r, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || exitCodeOf(err) == 0 {
		t.Fatalf("the killed session ended with %v", err)
	}
	if _, ok := b.status(r); ok {
		t.Fatal("still running after stop's SIGKILL")
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

// An instance holds no stream of the caller that started it: with a
// second session still running, the first one's stderr ends with it.
func TestNSInstanceHoldsNoCallerStream(t *testing.T) {
	r := testEnvSpec(t)
	first := helperCmd(t, r, "/bin/sh", "-c", "echo ready; read x")
	stdin, _ := first.StdinPipe()
	stdout, _ := first.StdoutPipe()
	errR, errW, _ := os.Pipe()
	first.Stderr = errW
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	errW.Close()
	if _, err := io.ReadFull(stdout, make([]byte, 6)); err != nil {
		t.Fatalf("first session: %v", err)
	}
	second := nsStart(t, r, "/bin/sh", "-c", "echo ready; sleep 1000")
	stdin.Write([]byte("\n"))
	if err := first.Wait(); err != nil {
		t.Fatalf("first session: %v", err)
	}
	// Were the instance holding it, this read would wait for the second
	// session; the deadline only bounds such a hang.
	errR.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadAll(errR); err != nil {
		t.Fatalf("the first session's stderr is still open after it ended: %v", err)
	}
	if _, ok := r.runDir().running(); !ok {
		t.Fatal("the second session's instance is gone")
	}
	nsBackend{getenv: os.Getenv}.stop(r, time.Second)
	<-second
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
	waitPane("42 /dev/pts/0 -bash") // a login shell
	tmux("send-keys", "stty size", "Enter")
	waitPane("30 100")
	tmux("resize-window", "-x", "120", "-y", "40")
	tmux("send-keys", "clear; stty size", "Enter")
	waitPane("40 120")
	// Ctrl-C reaches the foreground job, which says so once it is ready
	// to take it.
	// (Arithmetic, so that the typed line itself never matches.)
	tmux("send-keys", `sh -c 'trap "echo INT-reached-$((40+2)); exit 5" INT; echo armed-$((1+1)); while :; do sleep 0.1; done'`, "Enter")
	waitPane("armed-2")
	tmux("send-keys", "C-c")
	waitPane("INT-reached-42")
	tmux("send-keys", "echo after-interrupt-$?", "Enter")
	waitPane("after-interrupt-5")
	tmux("send-keys", "sleep 1000 &", "Enter")
	tmux("send-keys", "jobs", "Enter")
	waitPane("Running")
	// A job left running still holds the terminal: the session ends
	// with the shell all the same.
	tmux("send-keys", "kill %1; (trap '' HUP; exec sleep 1000) & exit 3", "Enter")
	waitPane("karapace-exited-3")
}

func jsonMarshalString(v any) (string, error) {
	var b bytes.Buffer
	err := writeJSON(&b, v)
	return strings.TrimSpace(b.String()), err
}

func jsonUnmarshalString(s string, v any) error { return json.Unmarshal([]byte(s), v) }
