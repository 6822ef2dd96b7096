package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// needReal runs a test of the real thing (a root filesystem, namespaces,
// the Debian archive, servers) where the README's test command runs the
// suite, or KARAPACE_TEST_ROOTFS_TAR or KARAPACE_TEST_STRICT is set; else
// 'go test .' is the fast tier of unit and mock tests, and it skips.
// KARAPACE_TEST_TIER=fast asks for the fast tier even in CI: test.sh's
// pass under the race detector, whose real tests run in its next passes.
func needReal(t testing.TB) {
	t.Helper()
	if os.Getenv("KARAPACE_TEST_TIER") == "fast" {
		t.Skip("a test of the real thing, skipped in the fast tier (KARAPACE_TEST_TIER=fast); test.sh runs it in its root and rootless passes")
	}
	if strictTests() || os.Getenv("KARAPACE_TEST_ROOTFS_TAR") != "" {
		return
	}
	t.Skip("a test of the real thing, skipped in the fast tier: ./test.sh runs it (or set KARAPACE_TEST_ROOTFS_TAR to a Debian root filesystem tarball)")
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

// openPTY opens a pseudo-terminal pair for tests of terminal behaviour.
func openPTY(t testing.TB) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening pty slave: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// needRoot requires root. In the rootless pass of the test suite
// (KARAPACE_TEST_ROOTLESS set) a root-only test skips: the root pass ran it.
func needRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("KARAPACE_TEST_ROOTLESS") != "" {
		t.Skipf("needs root (%s); the root pass of the suite runs it", why)
	}
	need(t, false, "root ("+why+")")
}

// The Debian root filesystem the real-thing tests share: made once per
// machine, unpacked once per test run.
var testRootfs struct {
	once     sync.Once
	tar, dir string
	err      error
}

// testRootfsTar is a Debian bookworm minbase root filesystem tarball:
// $KARAPACE_TEST_ROOTFS_TAR, else one made once with mmdebstrap in the
// user's cache directory.
func testRootfsTar(t testing.TB) string {
	t.Helper()
	needReal(t)
	if p := os.Getenv("KARAPACE_TEST_ROOTFS_TAR"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("KARAPACE_TEST_ROOTFS_TAR: %v", err)
		}
		return p
	}
	needTool(t, "mmdebstrap")
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(cache, "karapace-test", "bookworm-minbase.tar")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	os.MkdirAll(filepath.Dir(p), 0o755)
	t.Logf("making %s with mmdebstrap (about 30 s, once)", p)
	out, err := exec.Command("mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "bookworm", p+".tmp").CombinedOutput()
	if err != nil {
		t.Fatalf("mmdebstrap: %v\n%s", err, out)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLowerTree is the test root filesystem unpacked by our own unpacker
// inside a user namespace with the full mapping, so its owners are those
// of the image, rootless too. Tests must not change it.
func testLowerTree(t testing.TB) string {
	t.Helper()
	tarPath := testRootfsTar(t)
	testRootfs.once.Do(func() {
		dir, err := os.MkdirTemp("/var/tmp", "karapace-test-rootfs-")
		if err != nil {
			testRootfs.err = err
			return
		}
		os.Chmod(dir, 0o755)
		f, err := os.Open(tarPath)
		if err != nil {
			testRootfs.err = err
			return
		}
		defer f.Close()
		testRootfs.dir = dir
		testRootfs.err = treeInNS(treeJob{Op: "unpack", Dir: dir, Image: true}, f, nil)
	})
	if testRootfs.err != nil {
		t.Fatalf("unpacking the test root filesystem: %v", testRootfs.err)
	}
	return testRootfs.dir
}

// removeTestTrees removes what testLowerTree made; TestMain calls it.
func removeTestTrees() {
	if testRootfs.dir != "" {
		if err := treeInNS(treeJob{Op: "remove", Dir: testRootfs.dir}, nil, nil); err != nil {
			fmt.Fprintf(os.Stderr, "removing %s: %v\n", testRootfs.dir, err)
		}
	}
}

// logCapture is what karapace logged during a test: out reports
// warnings into it.
type logCapture struct {
	b   bytes.Buffer
	out *output
}

// String reads the log under the output's lock, which its writes hold.
func (l *logCapture) String() string {
	l.out.mu.Lock()
	defer l.out.mu.Unlock()
	return l.b.String()
}

// testOutput is where what tests run reports: stderr, or a capture.
var testOutput = newOutput("warn", false, false, os.Stderr)

// captureLog collects karapace's warnings for the rest of the test, from
// what reports to testOutput.
func captureLog(t testing.TB) *logCapture {
	l := &logCapture{}
	l.out = newOutput("warn", false, false, &l.b)
	was := testOutput
	testOutput = l.out
	t.Cleanup(func() { testOutput = was })
	return l
}

// tmuxSession runs script in a detached tmux session of the given size:
// a real terminal, driven by send-keys and read by capture-pane.
type tmuxSession struct {
	t    *testing.T
	sock string
}

func newTmuxSession(t *testing.T, script string, cols, rows int) *tmuxSession {
	t.Helper()
	needTool(t, "tmux")
	s := &tmuxSession{t: t, sock: filepath.Join(t.TempDir(), "tmux.sock")}
	s.do("new-session", "-d", "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows), script)
	t.Cleanup(func() { exec.Command("tmux", "-S", s.sock, "kill-server").Run() })
	return s
}

func (s *tmuxSession) do(args ...string) string {
	s.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", s.sock}, args...)...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// keys types keys into the terminal, as send-keys names them.
func (s *tmuxSession) keys(keys ...string) {
	s.t.Helper()
	s.do(append([]string{"send-keys"}, keys...)...)
}

// waitFor waits (15 s at most) until the terminal shows want.
func (s *tmuxSession) waitFor(want string) {
	s.t.Helper()
	var pane string
	for i := 0; i < 150; i++ {
		if pane = s.do("capture-pane", "-p"); strings.Contains(pane, want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("the terminal never showed %q:\n%s", want, pane)
}
