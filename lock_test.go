package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleLock(t testing.TB) (*manifest, *lockFile) {
	t.Helper()
	m, err := parseManifest("k.toml", "/w/k.toml", []byte(fullManifest))
	if err != nil {
		t.Fatal(err)
	}
	pkgs := []lockedPackage{{"git", "1:2.39.5-0+deb12u2"}, {"clang", "1:14.0-55.7~deb12u1"}, {"curl", "7.88.1-10+deb12u12"}, {"libc6", "2.36-9+deb12u10"}}
	return m, newLock(m, "sha256:"+strings.Repeat("ab", 32), "https://images.example/debian.tar.xz", pkgs)
}

// reread is l written and read back as karapace.lock, the way build
// reads a lock before checking it.
func reread(t testing.TB, l *lockFile) *lockFile {
	t.Helper()
	data, err := l.encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseLock("karapace.lock", data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	return got
}

func TestLockRoundTripDeterministic(t *testing.T) {
	_, l := sampleLock(t)
	a, err := l.encode()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "karapace.lock")
	if err := writeLock(p, l); err != nil {
		t.Fatal(err)
	}
	got, err := loadLock(p)
	if err != nil {
		t.Fatalf("%v\n%s", err, a)
	}
	b, err := got.encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("re-encoding differs:\n%s\n---\n%s", a, b)
	}
	if got.Packages[0].Name != "clang" || got.Packages[3].Name != "libc6" {
		t.Fatalf("packages not sorted: %+v", got.Packages)
	}
	if err := got.verifyIntegrity(); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(a, []byte("# Written by karapace")) || !bytes.Contains(a, []byte("\nlock_version = 2\nenv_id = ")) {
		t.Fatalf("layout:\n%s", a)
	}
	// no temp files left behind
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory has %d entries", len(entries))
	}
}

func TestLockIntegrityDetectsTampering(t *testing.T) {
	_, l := sampleLock(t)
	data, _ := l.encode()
	for _, tc := range []struct{ from, to string }{
		{`version = "1:2.39.5-0+deb12u2"`, `version = "1:2.39.5-0+deb12u3"`},
		{`hardware_gpu = true`, `hardware_gpu = false`},
		{`base_image_digest = "sha256:ab`, `base_image_digest = "sha256:cd`},
		{`container_path = "/workspace"`, `container_path = "/work"`},
		{`requested_packages = ["clang", "curl", "git"]`, `requested_packages = ["clang", "git"]`},
	} {
		if !bytes.Contains(data, []byte(tc.from)) {
			t.Fatalf("sample lock lacks %q:\n%s", tc.from, data)
		}
		tampered := bytes.Replace(data, []byte(tc.from), []byte(tc.to), 1)
		got, err := parseLock("karapace.lock", tampered)
		if err != nil {
			t.Fatal(err)
		}
		err = got.verifyIntegrity()
		if err == nil || exitCodeOf(err) != exitManifest || !strings.HasPrefix(err.Error(), "karapace.lock:3:1: env_id: does not match the locked contents") {
			t.Errorf("tamper %q not detected: %v", tc.to, err)
		}
	}
	// The base image's name and URL do not count; its digest does.
	other := *l
	other.BaseImage, other.BaseImageURL = "images:debian/12", "file:///x.tar"
	if id, _ := other.computeID(); id != l.EnvID {
		t.Error("image name changed the identity")
	}
}

func TestLockIntent(t *testing.T) {
	m, l := sampleLock(t)
	l = reread(t, l)
	if err := l.verifyIntent(m); err != nil {
		t.Fatal(err)
	}
	// Each drift is a line at the manifest's key; the first names the
	// manifest, its key and what is wrong.
	edited := strings.NewReplacer(`"  debian/bookworm "`, `"ubuntu/24.04"`, `"git", "curl", "git", " clang "`, `"git", "vim", " clang "`,
		"gpu = true\n", "").Replace(fullManifest)
	m2, err := parseManifest("k.toml", "/w/k.toml", []byte(edited))
	if err != nil {
		t.Fatal(err)
	}
	err = l.verifyIntent(m2)
	if err == nil || exitCodeOf(err) != exitManifest {
		t.Fatalf("drift not detected: %v", err)
	}
	want := `k.toml:4:1: base.image: locked "debian/bookworm", manifest "ubuntu/24.04"
k.toml:7:20: system.packages[1]: "vim" is not in karapace.lock
k.toml:7:1: system.packages: "curl" was removed, but karapace.lock installs it
k.toml:12:1: hardware.gpu: locked "true", manifest "false"
karapace.lock no longer matches k.toml: build without --locked to resolve and lock again`
	if err.Error() != want {
		t.Fatalf("drift report:\n%s\nwant:\n%s", err, want)
	}
	// Removing every package is drift too, with no [system] left to point at.
	m3, err := parseManifest("k.toml", "/w/k.toml", []byte(strings.Replace(fullManifest, "[system]\npackages = [\"git\", \"curl\", \"git\", \" clang \"]\n", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	err = l.verifyIntent(m3)
	if err == nil || !strings.HasPrefix(err.Error(), `k.toml:1:1: system.packages: "clang" was removed, but karapace.lock installs it`+"\n") {
		t.Fatalf("removed packages: %v", err)
	}
}

// A lock from before requested_packages keeps its identity, but cannot
// say what was asked for: intent fails, asking for a new lock.
func TestLockWithoutRequested(t *testing.T) {
	m, l := sampleLock(t)
	l.Requested = nil
	l.EnvID, l.ShortID = l.computeID()
	old := reread(t, l)
	if old.Requested != nil {
		t.Fatalf("requested %q from a lock without them", old.Requested)
	}
	if err := old.verifyIntegrity(); err != nil {
		t.Fatal(err)
	}
	err := old.verifyIntent(m)
	if err == nil || exitCodeOf(err) != exitManifest || !strings.HasPrefix(err.Error(), "karapace.lock:1:1: requested_packages: missing: ") || !strings.Contains(err.Error(), "build without --locked to lock again") {
		t.Fatalf("old lock: %v", err)
	}
	if _, l2 := sampleLock(t); l2.EnvID == l.EnvID {
		t.Fatal("recording the requested packages did not change the identity")
	}
}

func TestLockIdentityIndependentOfOrder(t *testing.T) {
	m, l := sampleLock(t)
	rev := make([]lockedPackage, len(l.Packages))
	for i, p := range l.Packages {
		rev[len(rev)-1-i] = p
	}
	l2 := newLock(m, l.BaseImageDigest, "", rev)
	if l2.EnvID != l.EnvID {
		t.Fatal("package order changed the identity")
	}
	l3 := newLock(m, l.BaseImageDigest, "", append(rev, lockedPackage{"zlib1g", "1:1.2.13"}))
	if l3.EnvID == l.EnvID {
		t.Fatal("an extra package did not change the identity")
	}
}

const goodLock = `lock_version = 2
env_id = "0000000000000000000000000000000000000000000000000000000000000000"
short_id = "000000000000"
base_image = "debian/bookworm"
base_image_digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
runtime_backend = "namespace"
hardware_gpu = false
hardware_audio = false
network_isolation = false
`

var badLocks = []struct{ name, src, want string }{
	{"empty", "", "karapace.lock:1:1: lock_version: missing"},
	{"version 1", strings.Replace(goodLock, "lock_version = 2", "lock_version = 1", 1), "karapace.lock:1:1: lock_version: unsupported lock version 1"},
	{"env_id short", strings.Replace(goodLock, `env_id = "00000000`, `env_id = "`, 1), "karapace.lock:2:1: env_id: expected 64 lowercase hex digits"},
	{"env_id upper", strings.Replace(goodLock, `env_id = "0`, `env_id = "A`, 1), "env_id: expected 64 lowercase hex"},
	{"short_id int", strings.Replace(goodLock, `short_id = "000000000000"`, `short_id = 0`, 1), "karapace.lock:3:1: short_id: expected a string"},
	{"digest algo", strings.Replace(goodLock, `"sha256:`, `"md5:`, 1), "karapace.lock:5:1: base_image_digest: digest"},
	{"missing backend", strings.Replace(goodLock, "runtime_backend = \"namespace\"\n", "", 1), "runtime_backend: missing"},
	{"unknown key", goodLock + "extra = 1\n", "karapace.lock:10:1: extra: unknown key"},
	{"gpu string", strings.Replace(goodLock, "hardware_gpu = false", `hardware_gpu = "no"`, 1), "karapace.lock:7:1: hardware_gpu: expected true or false"},
	{"packages not tables", goodLock + "resolved_packages = [\"git\"]\n", "karapace.lock:10:22: resolved_packages[0]: expected a table, got a string"},
	{"package no version", goodLock + "[[resolved_packages]]\nname = \"git\"\n", "karapace.lock:10:1: resolved_packages[0].version: missing"},
	{"package empty version", goodLock + "[[resolved_packages]]\nname = \"git\"\nversion = \"\"\n", "karapace.lock:12:1: resolved_packages[0].version: must not be empty"},
	{"package twice", goodLock + "[[resolved_packages]]\nname = \"git\"\nversion = \"1\"\n[[resolved_packages]]\nname = \"git\"\nversion = \"2\"\n", "karapace.lock:14:1: resolved_packages[1].name: package \"git\" is listed twice"},
	{"package pattern version", goodLock + "[[resolved_packages]]\nname = \"git\"\nversion = \"1.*\"\n", "resolved_packages[0].version: version \"1.*\""},
	{"requested not strings", goodLock + "requested_packages = [1]\n", "karapace.lock:10:23: requested_packages[0]: expected a string, got an integer"},
	{"requested bad name", goodLock + "requested_packages = [\"-x\"]\n", "karapace.lock:10:23: requested_packages[0]: package name \"-x\": must start"},
	{"requested twice", goodLock + "requested_packages = [\"a\", \"a\"]\n", "karapace.lock:10:28: requested_packages[1]: package \"a\" is listed twice"},
	{"package unknown key", goodLock + "[[resolved_packages]]\nname = \"git\"\nversion = \"1\"\narch = \"amd64\"\n", "resolved_packages[0].arch: unknown key"},
	{"mount missing path", goodLock + "[[mounts]]\nlabel = \"w\"\nhost_path = \".\"\n", "mounts[0].container_path: missing"},
	{"cpu out of range", goodLock + "cpu_shares = 0\n", "karapace.lock:10:1: cpu_shares: 0 is out of range"},
	{"junk", "\x89PNG\r\n\x1a\n", "karapace.lock:1:"},
	{"truncated", goodLock[:60], "karapace.lock:2:"},
}

func TestLockBadInput(t *testing.T) {
	if _, err := parseLock("karapace.lock", []byte(goodLock)); err != nil {
		t.Fatalf("good lock rejected: %v", err)
	}
	for _, tc := range badLocks {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseLock("karapace.lock", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.src)
			}
			if exitCodeOf(err) != exitManifest {
				t.Errorf("exit code %d (%v)", exitCodeOf(err), err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// The lock holds what was asked for: removing a package from the manifest
// is drift, so --locked does not install it from the old lock.
func TestCLILockFollowsRequested(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	lockFile := filepath.Join(k.dir, "karapace.lock")
	k.writeManifest(mockManifest(`"alpha", "curl"`))
	k.ok("build")
	before := readFile(t, lockFile)
	mustContain(t, "lock", before, `requested_packages = ["alpha", "curl"]`)

	manifest := k.writeManifest(mockManifest(`"alpha"`))
	msg := k.fails(exitManifest, `karapace: error: karapace.toml:5:1: system.packages: "curl" was removed, but karapace.lock installs it`+"\n", "build", "--locked")
	mustContain(t, "drift", msg, "karapace.lock no longer matches karapace.toml: build without --locked")
	if readFile(t, lockFile) != before {
		t.Fatal("build --locked changed the lock")
	}
	k.fails(exitManifest, manifest+`:5:1: system.packages: "curl" was removed`, "build", "--locked", manifest)
	k.ok("build")
	l, err := loadLock(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(l.Requested, ",") != "alpha" || len(l.Packages) != 1 || l.Packages[0].Name != "alpha" {
		t.Fatalf("rebuilt lock asks for %q and installs %+v", l.Requested, l.Packages)
	}

	// A lock from before requested_packages: --locked asks for a new one;
	// a build without it writes one.
	if err := writeLock(lockFile, withoutRequested(l)); err != nil {
		t.Fatal(err)
	}
	before = readFile(t, lockFile)
	k.fails(exitManifest, "karapace: error: karapace.lock:1:1: requested_packages: missing: this lock was written by an older karapace", "build", "--locked")
	if readFile(t, lockFile) != before {
		t.Fatal("build --locked changed the old lock")
	}
	k.ok("build")
	mustContain(t, "new lock", readFile(t, lockFile), `requested_packages = ["alpha"]`)
}

// Neither build nor build --locked changes a malformed manifest or lock.
func TestCLIBadFilesUntouched(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	good := mockManifest(`"alpha"`)
	k.writeManifest(good)
	k.ok("build")
	lockFile := filepath.Join(k.dir, "karapace.lock")
	goodLock := readFile(t, lockFile)
	tampered := strings.Replace(goodLock, `version = "0-mock"`, `version = "1-mock"`, 1)
	// Sound, but a lock this image source cannot use.
	l, err := loadLock(lockFile)
	if err != nil {
		t.Fatal(err)
	}
	l.BaseImageDigest = "blake3:" + strings.Repeat("7f", 32)
	l.EnvID, l.ShortID = l.computeID()
	blake3Lock, err := l.encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, manifest, lock, want string }{
		{"manifest wrong type", strings.Replace(good, `image = "./image.tar.gz"`, "image = 7", 1), goodLock, "karapace.toml:3:1: base.image: expected a string"},
		{"manifest bad escape", strings.Replace(good, `"alpha"`, `"al\pha"`, 1), goodLock, `karapace.toml:5:16: system.packages[0]: invalid escape sequence "\p"`},
		{"manifest truncated", good[:30], goodLock, `karapace.toml:3:3: expected "=" after key "im", found end of file`},
		{"manifest junk", "\x00\x89PNG\r\n", goodLock, "karapace.toml:1:2: invalid UTF-8"},
		{"manifest unknown key", good + "extra = 1\n", goodLock, "karapace.toml:10:1: runtime.extra: unknown key"},
		{"manifest duplicate", good + "[base]\n", goodLock, "karapace.toml:10:1: table [base] defined twice (first defined at 2:1)"},
		{"lock truncated", good, goodLock[:len(goodLock)/2], "karapace.lock:"},
		{"lock junk", good, "\xff\xfe\x00", "karapace.lock:1:1: invalid UTF-8"},
		{"lock tampered", good, tampered, "karapace.lock:3:1: env_id: does not match the locked contents"},
		{"lock unknown key", good, "extra = 1\n" + goodLock, "karapace.lock:1:1: extra: unknown key"},
		{"lock version", good, strings.Replace(goodLock, "lock_version = 2", "lock_version = 3", 1), "karapace.lock:2:1: lock_version: unsupported lock version 3"},
		{"lock blake3 digest", good, string(blake3Lock), `karapace.lock:6:1: base_image_digest: "blake3:7f7f`},
		{"lock CRLF junk", good, strings.ReplaceAll(goodLock, "\n", "\r\n") + "\r", "karapace.lock:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			manifest := k.writeManifest(tc.manifest)
			writeFile(t, k.dir, "karapace.lock", tc.lock)
			for _, args := range [][]string{{"build"}, {"build", "--locked"}, {"--json", "build", "--locked", manifest}} {
				code, _, errOut := k.run(args...)
				if code != exitManifest || !strings.Contains(errOut, tc.want) && args[0] != "--json" {
					t.Errorf("%v: exit %d, stderr %q, want exit 2 and %q", args, code, errOut, tc.want)
				}
				if readFile(t, manifest) != tc.manifest || readFile(t, lockFile) != tc.lock {
					t.Fatalf("%v changed the files", args)
				}
			}
		})
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// The sandbox's manifest fields (session_bus, host_sockets, pids_limit)
// go through the lock into the identity when set, and a lock without
// them keeps the bytes and identity it had.
func TestLockSandboxFields(t *testing.T) {
	m, plain := sampleLock(t)
	before, _ := plain.encode()
	m2 := *m
	m2.SessionBus, m2.HostSockets, m2.PidsLimit = true, []string{"pipewire", "wayland"}, 256
	l := newLock(&m2, plain.BaseImageDigest, plain.BaseImageURL, plain.Packages)
	got := reread(t, l)
	if !got.SessionBus || strings.Join(got.HostSockets, ",") != "pipewire,wayland" || got.PidsLimit != 256 || got.verifyIntegrity() != nil {
		t.Fatalf("read back: %+v", got)
	}
	if l.EnvID == plain.EnvID {
		t.Fatal("the sandbox fields do not count in the identity")
	}
	for _, change := range []func(*manifest){
		func(m *manifest) { m.SessionBus = false },
		func(m *manifest) { m.HostSockets = []string{"wayland"} },
		func(m *manifest) { m.PidsLimit = 512 },
	} {
		m3 := m2
		change(&m3)
		if err := got.verifyIntent(&m3); err == nil {
			t.Errorf("a changed sandbox field is not drift: %+v", m3)
		}
	}
	if after, _ := reread(t, plain).encode(); !bytes.Equal(before, after) {
		t.Fatalf("a lock without the fields changed:\n%s\n%s", before, after)
	}
	bad := strings.Replace(fullManifest, "[runtime]", "[runtime]\nhost_sockets = [\"wayland\", \"ssh-agent\"]", 1)
	if _, err := parseManifest("k.toml", "/w/k.toml", []byte(bad)); err == nil || !strings.Contains(err.Error(), `runtime.host_sockets[1]: unknown host socket "ssh-agent"`) {
		t.Fatalf("an unknown host socket: %v", err)
	}
}
