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
	if err := got.verifyIntegrity(p); err != nil {
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
	} {
		if !bytes.Contains(data, []byte(tc.from)) {
			t.Fatalf("sample lock lacks %q:\n%s", tc.from, data)
		}
		tampered := bytes.Replace(data, []byte(tc.from), []byte(tc.to), 1)
		got, err := parseLock("karapace.lock", tampered)
		if err != nil {
			t.Fatal(err)
		}
		err = got.verifyIntegrity("karapace.lock")
		if err == nil || exitCodeOf(err) != exitManifest || !strings.Contains(err.Error(), "env_id does not match") {
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
	if err := l.verifyIntent("karapace.lock", m); err != nil {
		t.Fatal(err)
	}
	m2 := *m
	m2.Packages = append([]string{"vim"}, m.Packages...)
	m2.BaseImage = "ubuntu/24.04"
	m2.GPU = false
	err := l.verifyIntent("karapace.lock", &m2)
	if err == nil || exitCodeOf(err) != exitManifest {
		t.Fatalf("drift not detected: %v", err)
	}
	mustContain(t, "drift", err.Error(), `system.packages: "vim" is not in the lock`, `base.image: locked "debian/bookworm", manifest "ubuntu/24.04"`, "hardware.gpu")
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

func TestWriteFileAtomicKeepsOldOnFailure(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "karapace.lock", "old")
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	err := writeFileAtomic(p, []byte("new"), 0o644)
	if os.Geteuid() == 0 {
		// root ignores directory permissions; the write must then succeed whole.
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		if string(got) != "new" {
			t.Fatalf("got %q", got)
		}
		return
	}
	if err == nil {
		t.Fatal("write into a read-only directory succeeded")
	}
	got, _ := os.ReadFile(p)
	if string(got) != "old" {
		t.Fatalf("old content lost: %q", got)
	}
}
