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
// user with a subordinate ID range. The helpers below serve the runtime
// tests beside instance.go, policy.go, cgroup.go, pty.go and userns.go too.

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
	r := &runSpec{ID: id, ShortID: id[:12], Dir: envDir(dir), Lower: []string{lower}, ManifestDir: t.TempDir()}
	t.Cleanup(func() {
		nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, 5*time.Second)
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
	b := nsBackend{getenv: func(k string) string { return envLookup(env, k) }, out: testOutput}
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
	if _, err := os.Stat(filepath.Join(r.Dir.upper(), "root", "note")); err != nil {
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
grep -E '^Cap(Inh|Prm|Bnd|Amb)' /proc/self/status
cat /etc/resolv.conf /etc/hosts | md5sum`)
	host, _ := exec.Command("sh", "-c", "cat /etc/resolv.conf /etc/hosts | md5sum").Output()
	want := "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \nkarapace-init \n" +
		"devpts\ntmpfs\nproc\nsysfs\n1\nsys-refused\nmknod-refused\nsysctl-refused\nsysrq-refused\ninit-exe-hidden\ninit-env-hidden\n"
	if code != 0 || !strings.HasPrefix(out, want) || !strings.HasSuffix(out, string(host)) {
		t.Fatalf("status %d\n%s\nwant it to begin with:\n%s\nand end with %s(stderr %s)", code, out, want, host, errOut)
	}
	// No command holds CAP_SYS_PTRACE (19), nor a way to it: the
	// inheritable and ambient sets are empty (rootless init is given
	// ambient capabilities to survive its exec; commands must not be).
	var inh, prm, bnd, amb uint64
	if _, err := fmt.Sscanf(out[strings.Index(out, "CapInh:"):], "CapInh: %x\nCapPrm: %x\nCapBnd: %x\nCapAmb: %x", &inh, &prm, &bnd, &amb); err != nil ||
		bnd&(1<<19) != 0 || prm&(1<<19) != 0 || inh != 0 || amb != 0 {
		t.Fatalf("the commands' capabilities (CAP_SYS_PTRACE is 19): %v\n%s", err, out)
	}
	// Isolated, the environment has neither of the host's files.
	r.Isolated = true
	nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
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
	if _, err := os.Lstat(filepath.Join(r.Dir.upper(), "var", "lib", "x", "e")); err != nil {
		t.Fatalf("not in the writable layer: %v", err)
	}
	nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
	b := nsBackend{getenv: func(k string) string { return map[string]string{"KARAPACE_OVERLAY": "floppy"}[k] }}
	if _, err := b.exec(r, &execSpec{Argv: []string{"true"}}); err == nil || !strings.Contains(err.Error(), `KARAPACE_OVERLAY="floppy": expected auto, kernel or fuse`) {
		t.Fatalf("bad KARAPACE_OVERLAY: %v", err)
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

// hostGreeting serves "hello from the host" on the host's loopback until
// the test ends, and returns the bash line that reads it from inside.
func hostGreeting(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
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
	return fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d && cat <&3", ln.Addr().(*net.TCPAddr).Port)
}

func TestNSNetwork(t *testing.T) {
	probe := hostGreeting(t)

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

func TestNSFrozenIsReadOnly(t *testing.T) {
	r := testEnvSpec(t)
	nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "echo before > /root/f")
	r.ReadOnly = true
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "cat /root/f; echo x > /root/g")
	if code == 0 || out != "before\n" || !strings.Contains(errOut, "Read-only file system") {
		t.Fatalf("frozen: status %d %q %q", code, out, errOut)
	}
}

// ns-exec runs exec in a child process of the test binary, for tests that
// signal it or drive it through a terminal (instance_test.go, pty_test.go).
func init() {
	testHelpers["ns-exec"] = func() {
		var r runSpec
		if err := jsonUnmarshalString(os.Getenv("KARAPACE_TEST_SPEC"), &r); err != nil {
			panic(err)
		}
		var argv []string
		jsonUnmarshalString(os.Getenv("KARAPACE_TEST_ARGV"), &argv)
		e := &execSpec{Argv: argv, Login: len(argv) == 0, TTY: os.Getenv("KARAPACE_TEST_TTY") != "", Stdio: [3]*os.File{os.Stdin, os.Stdout, os.Stderr}, Env: os.Environ()}
		code, err := nsBackend{getenv: os.Getenv, out: testOutput}.exec(&r, e)
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

func jsonMarshalString(v any) (string, error) {
	var b bytes.Buffer
	err := writeJSON(&b, v)
	return strings.TrimSpace(b.String()), err
}

func jsonUnmarshalString(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// The layers init makes for itself are kept from one start to the next
// while they would come out the same, and remade when not.
func TestGeneratedLayerReuse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mountpoints")
	entries := []genEntry{{path: "/srv/data", dir: true}, {path: "/etc/hosts"}, {path: "etc/passwd", data: []byte("root:x:0:0::/root:/bin/sh\n")}}
	got, err := writeGenLayer(dir, entries)
	if err != nil || got != dir {
		t.Fatalf("writeGenLayer = %q, %v; want %q", got, err, dir)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "etc/passwd")); err != nil || string(data) != "root:x:0:0::/root:/bin/sh\n" {
		t.Fatalf("etc/passwd = %q, %v", data, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "srv/data")); err != nil || !fi.IsDir() {
		t.Fatalf("srv/data: %v", err)
	}
	before, err := os.Stat(filepath.Join(dir, "etc/hosts"))
	if err != nil {
		t.Fatal(err)
	}
	// The same entries: the layer is kept, file for file.
	if got, err := writeGenLayer(dir, entries); err != nil || got != dir {
		t.Fatalf("second writeGenLayer = %q, %v", got, err)
	}
	after, err := os.Stat(filepath.Join(dir, "etc/hosts"))
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("an unchanged layer was remade (%v)", err)
	}
	// Other contents, or a damaged layer: made again, exactly.
	entries[2].data = []byte("root:x:0:0::/root:/bin/bash\n")
	if _, err := writeGenLayer(dir, entries[1:]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "srv")); !os.IsNotExist(err) {
		t.Fatalf("srv survived a layer without it: %v", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "etc/passwd")); string(data) != "root:x:0:0::/root:/bin/bash\n" {
		t.Fatalf("etc/passwd = %q after a change", data)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := writeGenLayer(dir, entries[1:]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/hosts")); err != nil {
		t.Fatalf("a removed layer was not made again: %v", err)
	}
	// No entries: no layer, and no description left behind.
	if got, err := writeGenLayer(dir, nil); err != nil || got != "" {
		t.Fatalf("writeGenLayer(nil) = %q, %v", got, err)
	}
	for _, p := range []string{dir, dir + ".layer"} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left behind: %v", p, err)
		}
	}
}
