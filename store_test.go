package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"
)

func newTestStore(t testing.TB) *store {
	t.Helper()
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.lockWait = time.Minute
	return s
}

func mustLock(t testing.TB, s *store, op string) *storeLock {
	t.Helper()
	l, err := s.lock(op)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustPut(t testing.TB, s *store, data string) string {
	t.Helper()
	h, n, err := s.putObject(strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) {
		t.Fatalf("putObject size %d, want %d", n, len(data))
	}
	return h
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	names, err := gcListNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestDefaultStoreRoot(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"KARAPACE_STORE": "/s", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/s"},
		{map[string]string{"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/karapace"},
		{map[string]string{"XDG_DATA_HOME": "relative", "HOME": "/h"}, "/h/.local/share/karapace"},
		{map[string]string{"HOME": "/h"}, "/h/.local/share/karapace"},
	}
	for _, c := range cases {
		got, err := defaultStoreRoot(env(c.env))
		if err != nil || got != c.want {
			t.Errorf("defaultStoreRoot(%v) = %q, %v; want %q", c.env, got, err, c.want)
		}
	}
	if _, err := defaultStoreRoot(env(nil)); err == nil || !strings.Contains(err.Error(), "KARAPACE_STORE") {
		t.Errorf("no HOME: got %v", err)
	}
	c := &cli{getenv: env(map[string]string{"KARAPACE_STORE": "/s"}), storeFlag: "/flag"}
	if got, _ := c.storeRoot(); got != "/flag" {
		t.Errorf("--store not preferred: %q", got)
	}
}

func TestOpenStoreCreatesLayout(t *testing.T) {
	root := filepath.Join(t.TempDir(), "new")
	s, err := openStore(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append(storeDirs, "../env", "../images") {
		fi, err := os.Stat(s.path(d))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v", d, fi.Mode(), err)
		}
	}
	b, _ := os.ReadFile(s.path("version"))
	if string(b) != "{\"format_version\": 2}\n" {
		t.Errorf("version file %q", b)
	}
	// Opening again keeps everything.
	mustPut(t, s, "x")
	if _, err := openStore(root); err != nil {
		t.Fatal(err)
	}
	// A skeleton a crashed create left behind (no version, no data) is completed.
	root2 := t.TempDir()
	os.MkdirAll(filepath.Join(root2, "store", "objects"), 0o700)
	if _, err := openStore(root2); err != nil {
		t.Fatalf("skeleton: %v", err)
	}
}

// Only the commands that put something into the store create it. The
// others, on a missing store (no directory, or an empty one), say there
// is none and leave the disk as it was.
func TestCommandsOnMissingStore(t *testing.T) {
	empty := t.TempDir()
	for _, root := range []string{filepath.Join(t.TempDir(), "nonexistent"), empty} {
		for _, c := range []struct {
			args []string
			code int
			out  string // on stdout, or with a failure on stderr
		}{
			{[]string{"list"}, 0, "SHORT_ID"},
			{[]string{"--json", "list"}, 0, "[]"},
			{[]string{"list", "--quiet"}, 0, ""},
			{[]string{"inspect", "dev"}, 1, `no environment "dev": there is no store at ` + root},
			{[]string{"snapshots", "dev"}, 1, `no environment "dev": there is no store at`},
			{[]string{"exec", "dev", "--", "true"}, 1, "there is no store at " + root},
			{[]string{"destroy", "dev"}, 1, "there is no store at"},
			{[]string{"freeze", "dev"}, 1, "there is no store at"},
			{[]string{"rename", "dev", "x"}, 1, "there is no store at"},
			{[]string{"commit", "dev"}, 1, "there is no store at"},
			{[]string{"verify-store"}, 3, "nothing to verify: there is no store at " + root},
			{[]string{"gc", "--dry-run"}, 0, "nothing to collect: there is no store at " + root},
			{[]string{"gc"}, 0, "nothing to collect"},
			{[]string{"--json", "gc"}, 0, `"objects": 0`},
			{[]string{"migrate"}, 1, "there is no store at"},
		} {
			code, out, errOut := runCLI(t, nil, append([]string{"--store", root}, c.args...)...)
			got := out
			if c.code != 0 {
				got = errOut
			}
			if code != c.code || !strings.Contains(got, c.out) {
				t.Errorf("%v on %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant %q", c.args, root, code, c.code, out, errOut, c.out)
			}
		}
		if root == empty {
			if names := dirNames(t, root); len(names) != 0 {
				t.Errorf("commands wrote %v into the empty directory", names)
			}
		} else if _, err := os.Lstat(root); err == nil {
			t.Errorf("commands created %s", root)
		}
	}
}

func TestStoreVersionChecks(t *testing.T) {
	cases := []struct {
		version string
		want    string
	}{
		{`{"format_version": 3}`, "upgrade karapace"},
		{`{"format_version": 1}`, "run 'karapace migrate'"},
		{`{"format_version": "two"}`, "unreadable"},
		{`garbage`, "unreadable"},
		{`{}`, "unreadable"},
		{"", "unreadable"},
	}
	for _, c := range cases {
		root := t.TempDir()
		s, err := openStore(root)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(s.path("version"), []byte(c.version), 0o600)
		_, err = openStore(root)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCodeOf(err) != exitStore {
			t.Errorf("version %q: got %v (exit %d), want %q, exit 3", c.version, err, exitCodeOf(err), c.want)
		}
		code, _, errOut := runCLI(t, nil, "--store", root, "verify-store")
		if code != exitStore || !strings.Contains(errOut, c.want) {
			t.Errorf("verify-store with version %q: exit %d, %s", c.version, code, errOut)
		}
	}
	// Missing version in a store that holds data.
	s := newTestStore(t)
	mustPut(t, s, "data")
	os.Remove(s.path("version"))
	if _, err := openStore(s.root); err == nil || !strings.Contains(err.Error(), "no version file") || exitCodeOf(err) != exitStore {
		t.Errorf("missing version: %v", err)
	}
}

func TestObjects(t *testing.T) {
	s := newTestStore(t)
	data := strings.Repeat("karapace object ", 100000)
	h := mustPut(t, s, data)
	sum := blake3.Sum256([]byte(data))
	if want := fmt.Sprintf("%x", sum); h != want {
		t.Fatalf("hash %s, want %s", h, want)
	}
	if h2 := mustPut(t, s, data); h2 != h {
		t.Fatal("second put gave another hash")
	}
	if !s.hasObject(h) || s.hasObject(strings.Repeat("0", 64)) || s.hasObject("../x") {
		t.Fatal("hasObject")
	}
	if n, err := s.objectSize(h); err != nil || n != int64(len(data)) {
		t.Fatalf("objectSize %d %v", n, err)
	}
	rc, err := s.openObject(h)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(iotestOneByteReader{rc})
	rc.Close()
	if err != nil || string(got) != data {
		t.Fatalf("read back: %v", err)
	}
	if names := dirNames(t, s.path("staging")); len(names) != 0 {
		t.Fatalf("staging leftovers %v", names)
	}
	for _, bad := range []string{"", "ABC", strings.Repeat("A", 64), "../../etc/passwd"} {
		if _, err := s.openObject(bad); err == nil {
			t.Errorf("openObject(%q) accepted", bad)
		}
	}
	if _, err := s.openObject(strings.Repeat("0", 64)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing object: %v", err)
	}

	// Corrupt the object in place: the reader fails at the end, not before.
	p := s.path("objects", h)
	os.Chmod(p, 0o600)
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	f.WriteAt([]byte("X"), int64(len(data)-1))
	f.Close()
	rc, _ = s.openObject(h)
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err == nil || !strings.Contains(err.Error(), "corrupt") || exitCodeOf(err) != exitStore || n != int64(len(data)) {
		t.Fatalf("corrupt object: n=%d err=%v", n, err)
	}
	if err := s.deleteObject(h); err != nil || s.hasObject(h) {
		t.Fatal("delete", err)
	}
	if err := s.deleteObject(h); err != nil {
		t.Fatal("delete of a missing object", err)
	}
}

// iotestOneByteReader reads one byte at a time, the worst case for the
// verifying reader's buffering.
type iotestOneByteReader struct{ r io.Reader }

func (o iotestOneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	for i := range p[:k] {
		p[i] = 'a'
	}
	f.n -= k
	return k, nil
}

func TestWriteAtomicLeavesNothingHalfWritten(t *testing.T) {
	s := newTestStore(t)
	boom := errors.New("boom")
	if _, err := s.writeAtomic(s.path("metadata"), "x", &failingReader{1 << 20, boom}); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(s.path("metadata", "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("half-written file visible")
	}
	if _, _, err := s.putObject(&failingReader{1 << 20, boom}); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if n := dirNames(t, s.path("objects")); len(n) != 0 {
		t.Fatalf("objects: %v", n)
	}
	if n := dirNames(t, s.path("staging")); len(n) != 0 {
		t.Fatalf("staging: %v", n)
	}
}

// TestPutObjectStreams puts 256 MiB and reads it back in a child process,
// whose peak RSS must stay well below the object's size (the race
// detector's shadow memory included): the heap of this process would also
// count whatever other tests left running.
func TestPutObjectStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	s := newTestStore(t)
	_, _, out := startHelper(t, "store-put-stream", "KP_STORE="+s.root)
	line, _ := out.ReadString('\n')
	var n, rssKiB int64
	if _, err := fmt.Sscan(line, &n, &rssKiB); err != nil || n != 256<<20 {
		t.Fatalf("helper: %q", line)
	}
	if rssKiB > 128<<10 {
		t.Fatalf("peak RSS %d KiB while streaming 256 MiB", rssKiB)
	}
}

func init() {
	// Puts 256 MiB of random bytes into KP_STORE, reads the object back and
	// prints its size and the process's peak RSS in KiB.
	testHelpers["store-put-stream"] = func() {
		s := helperStore()
		h, n, err := s.putObject(io.LimitReader(rand.Reader, 256<<20))
		helperCheck(err)
		rc, err := s.openObject(h)
		helperCheck(err)
		_, err = io.Copy(io.Discard, rc)
		helperCheck(err)
		rc.Close()
		fmt.Println(n, helperPeakRSS())
	}
}

// helperStore opens the store KP_STORE in a helper process.
func helperStore() *store {
	s, err := openStore(os.Getenv("KP_STORE"))
	helperCheck(err)
	return s
}

// helperCheck ends a helper process that failed, saying why on its stdout.
func helperCheck(err error) {
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
}

// helperPeakRSS is the helper process's peak resident size in KiB. Not
// getrusage's ru_maxrss: a child started by os/exec shares its parent's
// memory until exec, and Linux carries that high-water mark over.
func helperPeakRSS() int64 {
	n, err := peakRSS(os.Getpid())
	helperCheck(err)
	return n >> 10
}

// peakRSS is a process's peak resident size in bytes (VmHWM).
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

func init() {
	// Holds the store lock of KP_STORE until killed or stdin closes:
	// exclusive for build, or shared for push with KP_LOCK_SHARED=1.
	testHelpers["store-hold-lock"] = func() {
		s, err := openStore(os.Getenv("KP_STORE"))
		if err != nil {
			fmt.Println("error", err)
			return
		}
		var l *storeLock
		if os.Getenv("KP_LOCK_SHARED") == "1" {
			l, err = s.lockShared("push")
		} else {
			l, err = s.lock("build")
		}
		if err != nil {
			fmt.Println("error", err)
			return
		}
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin)
		l.unlock()
	}
}

// startHelper starts this test binary as the named helper and returns it
// once it printed its first line.
func startHelper(t *testing.T, name string, env ...string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "KARAPACE_TEST_HELPER="+name), env...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, stdin, bufio.NewReader(stdout)
}

func TestLockContention(t *testing.T) {
	s := newTestStore(t)
	cmd, stdin, out := startHelper(t, "store-hold-lock", "KP_STORE="+s.root)
	if line, _ := out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper: %q", line)
	}
	s.lockWait = 300 * time.Millisecond
	start := time.Now()
	_, err := s.lock("gc")
	if err == nil {
		t.Fatal("second writer got the lock")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("gave up after %v, before the wait", d)
	}
	want := fmt.Sprintf("store %s is locked by pid %d (build); try again when it finishes", s.dir, cmd.Process.Pid)
	if !strings.Contains(err.Error(), want) || exitCodeOf(err) != exitStore {
		t.Fatalf("got %q, want %q", err, want)
	}
	code, _, errOut := runCLI(t, map[string]string{"KARAPACE_LOCK_WAIT": "100ms"}, "--store", s.root, "gc")
	if code != exitStore || !strings.Contains(errOut, fmt.Sprintf("locked by pid %d (build)", cmd.Process.Pid)) {
		t.Fatalf("gc while locked: exit %d: %s", code, errOut)
	}
	// A waiting writer gets the lock once the holder finishes.
	s.lockWait = 10 * time.Second
	go func() { time.Sleep(200 * time.Millisecond); stdin.Close() }()
	l, err := s.lock("gc")
	if err != nil {
		t.Fatal(err)
	}
	l.unlock()
	l.unlock() // twice is harmless
}

// Readers share the lock with each other, never with a writer; a writer
// kept out is told which reader holds it.
func TestLockShared(t *testing.T) {
	s := newTestStore(t)
	cmd, stdin, out := startHelper(t, "store-hold-lock", "KP_STORE="+s.root, "KP_LOCK_SHARED=1")
	if line, _ := out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper: %q", line)
	}
	r, err := s.lockShared("export")
	if err != nil {
		t.Fatalf("a second reader: %v", err)
	}
	if _, err := s.beginOp("pull", ""); err == nil || !strings.Contains(err.Error(), "the store lock is not held") {
		t.Fatalf("an operation began under a shared lock: %v", err)
	}
	r.unlock()
	s.lockWait = 0
	want := fmt.Sprintf("store %s is locked by pid %d (push); try again when it finishes", s.dir, cmd.Process.Pid)
	if _, err := s.lock("gc"); err == nil || !strings.Contains(err.Error(), want) || exitCodeOf(err) != exitStore {
		t.Fatalf("a writer while a reader holds the lock: %v, want %q", err, want)
	}
	stdin.Close()
	cmd.Wait()

	cmd, _, out = startHelper(t, "store-hold-lock", "KP_STORE="+s.root)
	if line, _ := out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper: %q", line)
	}
	want = fmt.Sprintf("store %s is locked by pid %d (build)", s.dir, cmd.Process.Pid)
	if _, err := s.lockShared("push"); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("a reader while a writer holds the lock: %v, want %q", err, want)
	}
}

func TestLockReleasedWhenHolderDies(t *testing.T) {
	s := newTestStore(t)
	cmd, _, out := startHelper(t, "store-hold-lock", "KP_STORE="+s.root)
	if line, _ := out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper: %q", line)
	}
	cmd.Process.Kill()
	cmd.Wait()
	s.lockWait = time.Second
	l, err := s.lock("gc")
	if err != nil {
		t.Fatalf("lock of a dead holder not released: %v", err)
	}
	l.unlock()
}

func TestLockInProcess(t *testing.T) {
	s := newTestStore(t)
	l := mustLock(t, s, "build")
	s.lockWait = 100 * time.Millisecond
	if _, err := s.lock("gc"); err == nil || !strings.Contains(err.Error(), "locked by this process (build)") {
		t.Fatalf("got %v", err)
	}
	s.lockWait = 5 * time.Second
	got := make(chan error)
	go func() {
		l2, err := s.lock("gc")
		if err == nil {
			l2.unlock()
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	l.unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestStoreJSONAndBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 13002342: "12.4 MiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	if !bytes.Equal([]byte(storeBlake3Hex(nil)), []byte("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")) {
		t.Error("blake3 of empty input")
	}
}

// TestDiskFull fills a 2 MiB tmpfs store during each kind of write.
func TestDiskFull(t *testing.T) {
	needRoot(t, "mount tmpfs")
	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=2m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(root, unix.MNT_DETACH)
	s, err := openStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := testEnv(t, s, "a", "a")
	isENOSPC := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "no space left") || exitCodeOf(err) != exitFailure {
			t.Fatalf("%s on a full disk: %v (exit %d)", what, err, exitCodeOf(err))
		}
		if n := dirNames(t, s.path("staging")); len(n) != 0 {
			t.Fatalf("%s left %v in staging", what, n)
		}
	}
	objectsBefore := dirNames(t, s.path("objects"))

	// putObject of more than fits.
	_, _, err = s.putObject(io.LimitReader(rand.Reader, 4<<20))
	isENOSPC("putObject", err)

	// packLayer into an object.
	tree := t.TempDir()
	for i := range 3 {
		f, _ := os.Create(filepath.Join(tree, fmt.Sprint(i)))
		io.Copy(f, io.LimitReader(rand.Reader, 1<<20))
		f.Close()
	}
	w, err := s.newObjectWriter()
	must(t, err)
	_, err = packLayer(tree, w)
	if err == nil {
		_, _, err = w.commit()
	}
	w.abort()
	isENOSPC("packLayer → object", err)
	if got := dirNames(t, s.path("objects")); len(got) != len(objectsBefore) {
		t.Fatalf("objects changed: %v", got)
	}

	// Fill the rest, then write metadata, a layer, a WAL entry.
	filler, _ := os.Create(filepath.Join(root, "filler"))
	_, err = io.Copy(filler, io.LimitReader(rand.Reader, 4<<20))
	filler.Close()
	if err == nil {
		t.Fatal("filler fitted")
	}
	m2 := *m
	m2.State = stateArchived
	m2.Snapshots = []string{m.BaseLayer}
	isENOSPC("putMeta", s.putMeta(&m2))
	if got, err := s.getMeta(m.EnvID); err != nil || got.State != stateBuilt {
		t.Fatalf("metadata after a failed write: %+v %v", got, err)
	}
	_, err = s.putLayer(&layer{Kind: layerPolicy, TarHash: m.ManifestHash})
	isENOSPC("putLayer", err)
	l := mustLock(t, s, "build")
	_, err = s.beginOp("build", m.EnvID)
	isENOSPC("beginOp", err)
	l.unlock()

	// gc still runs on a full disk and frees space; the CLI reports it.
	garbage := dirNames(t, s.path("objects"))
	os.Remove(filepath.Join(root, "filler"))
	h, _, err := s.putObject(io.LimitReader(rand.Reader, 1<<20))
	must(t, err)
	filler, _ = os.Create(filepath.Join(root, "filler"))
	io.Copy(filler, io.LimitReader(rand.Reader, 4<<20))
	filler.Close()
	code, out, errOut := runCLI(t, nil, "--store", root, "gc")
	if code != 0 || !strings.Contains(out, "removed 1 object") {
		t.Fatalf("gc on a full disk: %d %s %s", code, out, errOut)
	}
	if s.hasObject(h) || len(dirNames(t, s.path("objects"))) != len(garbage) {
		t.Fatal("gc did not collect")
	}
	isENOSPC("putObject", func() error { _, _, err := s.putObject(io.LimitReader(rand.Reader, 2<<20)); return err }())
	os.Remove(filepath.Join(root, "filler"))
	if code, out, errOut := runCLI(t, nil, "--store", root, "verify-store"); code != 0 {
		t.Fatalf("verify after disk full: %s %s", out, errOut)
	}
	must(t, s.putMeta(&m2))
}

func init() {
	// One of several processes sharing a store: KP_N random puts (object,
	// layer and referencing metadata under one lock hold), gets (read
	// everything an environment refers to, without the lock) and gcs.
	// Prints the ids of the environments it created.
	testHelpers["store-concurrent"] = func() {
		s := helperStore()
		var seed int64
		var n int
		fmt.Sscan(os.Getenv("KP_SEED"), &seed)
		fmt.Sscan(os.Getenv("KP_N"), &n)
		rng := mrand.New(mrand.NewSource(seed))
		for i := range n {
			switch r := rng.Intn(10); {
			case r < 5:
				l, err := s.lock("put")
				if err != nil {
					helperCheck(err)
				}
				data := make([]byte, 1+rng.Intn(200000))
				rng.Read(data)
				obj, _, err := s.putObject(bytes.NewReader(data))
				if err != nil {
					helperCheck(err)
				}
				base, err := s.putLayer(&layer{Kind: layerBase, TarHash: obj})
				if err != nil {
					helperCheck(err)
				}
				id := randHex(rng)
				m := &envMeta{EnvID: id, ShortID: id[:12], Name: fmt.Sprintf("p%d-%d", seed, i), State: stateBuilt, ManifestHash: obj, BaseLayer: base}
				for _, sub := range []string{"upper", "work"} {
					if err := os.MkdirAll(filepath.Join(s.root, "env", id, sub), 0o700); err != nil {
						helperCheck(err)
					}
				}
				if err := s.putMeta(m); err != nil {
					helperCheck(err)
				}
				// Garbage for gc to find.
				if _, _, err := s.putObject(strings.NewReader(randHex(rng))); err != nil {
					helperCheck(err)
				}
				l.unlock()
				fmt.Println("env", id)
			case r < 8:
				metas, errs := s.listMeta()
				if len(errs) > 0 {
					helperCheck(errs[0])
				}
				for _, m := range metas {
					lay, err := s.getLayer(m.BaseLayer)
					if err != nil {
						helperCheck(err)
					}
					for _, h := range []string{m.ManifestHash, lay.TarHash} {
						rc, err := s.openObject(h)
						if err != nil {
							helperCheck(err)
						}
						if _, err := io.Copy(io.Discard, rc); err != nil {
							helperCheck(err)
						}
						rc.Close()
					}
				}
			default:
				if _, err := s.gc(context.Background(), gcOptions{}); err != nil {
					helperCheck(err)
				}
			}
		}
	}
}

func TestConcurrentProcesses(t *testing.T) {
	root := t.TempDir()
	if _, err := openStore(root); err != nil {
		t.Fatal(err)
	}
	const procs, iters = 8, 30
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for i := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "KARAPACE_TEST_HELPER=store-concurrent", "KP_STORE="+root,
			"KP_SEED="+fmt.Sprint(i+1), "KP_N="+fmt.Sprint(iters), "KARAPACE_LOCK_WAIT=5m")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		must(t, cmd.Start())
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	var created []string
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("process %d: %v\n%s", i, err, outs[i])
		}
		for _, line := range strings.Split(outs[i].String(), "\n") {
			if id, ok := strings.CutPrefix(line, "env "); ok {
				created = append(created, id)
			}
		}
	}
	s, err := openStore(root)
	must(t, err)
	for _, id := range created {
		m, err := s.getMeta(id)
		if err != nil {
			t.Fatalf("environment %s lost: %v", id, err)
		}
		rc, err := s.openObject(m.ManifestHash)
		if err != nil {
			t.Fatalf("object of %s lost: %v", id, err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
	rep, err := s.verify(context.Background())
	if err != nil || len(rep.Bad) != 0 || rep.Metadata != len(created) {
		t.Fatalf("verify: %+v %v (%d created)", rep, err, len(created))
	}
	t.Logf("%d processes: %d environments created, all present and verifying", procs, len(created))
}
