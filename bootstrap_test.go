package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// debSnapshot is a caching proxy of Debian's archive, served under a
// snapshot.debian.org-style timestamped path. The first InRelease it gets
// is kept, and files are fetched by hash, so the archive holds still for
// the whole test run, as a snapshot does. It can misbehave on request.
type debSnapshot struct {
	*httptest.Server
	cache  string
	mu     sync.Mutex
	tamper map[string]bool // parts of paths whose body is spoiled
	fetch  []string
}

const debSnapshotPath = "/archive/debian/20261122T000000Z"

func newDebSnapshot(t *testing.T) *debSnapshot {
	t.Helper()
	base, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	d := &debSnapshot{cache: filepath.Join(base, "karapace-test", "debian-archive"), tamper: map[string]bool{}}
	// A day-old copy of the archive's state is refreshed, whole.
	if st, err := os.Stat(filepath.Join(d.cache, "dists", "bookworm", "InRelease")); err == nil && time.Since(st.ModTime()) > 20*time.Hour {
		os.RemoveAll(d.cache)
	}
	d.Server = httptest.NewServer(http.HandlerFunc(d.serve))
	t.Cleanup(d.Close)
	return d
}

func (d *debSnapshot) mirror() string { return d.URL + debSnapshotPath }

func (d *debSnapshot) serve(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, debSnapshotPath+"/")
	if !ok || strings.Contains(rest, "..") {
		http.NotFound(w, r)
		return
	}
	p := filepath.Join(d.cache, filepath.FromSlash(rest))
	d.mu.Lock()
	d.fetch = append(d.fetch, rest)
	spoil := false
	for part := range d.tamper {
		spoil = spoil || strings.Contains(rest, part)
	}
	d.mu.Unlock()
	if _, err := os.Stat(p); err != nil {
		resp, err := http.Get("http://deb.debian.org/debian/" + rest)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			http.Error(w, resp.Status, resp.StatusCode)
			return
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		f, err := os.CreateTemp(filepath.Dir(p), ".part")
		if err == nil {
			_, err = io.Copy(f, resp.Body)
			f.Close()
		}
		if err == nil {
			err = os.Rename(f.Name(), p)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
	}
	data, err := os.ReadFile(p)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if spoil {
		data = append([]byte{}, data...)
		i := len(data) / 2
		if strings.HasSuffix(rest, "InRelease") {
			i = strings.Index(string(data), "Date:") + 7 // inside the signed text
		}
		data[i] ^= 0x01
	}
	w.Write(data)
}

// Debian's own archive, through the snapshot proxy: the bootstrap verifies
// the signature and every hash, installs the minimal base with dpkg inside
// the sandbox, and the base takes packages like any other. A second
// bootstrap of the same archive state, in another store, from the lock,
// gives the very same Base layer.
func TestBootstrapDebianArchive(t *testing.T) {
	needTool(t, "dpkg")
	snap := newDebSnapshot(t)
	k := newKP(t)
	k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+snap.mirror())
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n[system]\npackages = [\"hello\"]\n")
	id := strings.TrimSpace(k.ok("build", "--name", "deb"))
	if out := k.ok("exec", "deb", "--", "hello"); out != "Hello, world!\n" {
		t.Fatalf("hello: %q", out)
	}
	if out := k.ok("exec", "deb", "--", "cat", "/etc/debian_version"); !strings.HasPrefix(out, "12.") {
		t.Fatalf("debian_version: %q", out)
	}
	status := k.ok("exec", "deb", "--", "dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package}\n")
	lines := strings.Split(strings.TrimSpace(status), "\n")
	for _, l := range lines {
		if !strings.HasPrefix(l, "ii ") {
			t.Fatalf("a package is not installed and configured: %q", l)
		}
	}
	for _, want := range []string{"ii apt", "ii dpkg", "ii base-files", "ii libc6", "ii hello", "ii debian-archive-keyring"} {
		if !strings.Contains(status, want+"\n") {
			t.Fatalf("%s missing from:\n%s", want, status)
		}
	}
	if n := len(lines); n < 80 || n > 110 {
		t.Fatalf("%d packages installed; a bookworm minbase has about 90", n)
	}
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if l.BaseImageURL != snap.mirror()+"/dists/bookworm" || !strings.HasPrefix(l.BaseImageDigest, "sha256:") {
		t.Fatalf("lock: %s %s", l.BaseImageURL, l.BaseImageDigest)
	}
	var first struct {
		Environment envInfo `json:"environment"`
	}
	k.jsonOut(&first, "inspect", "deb")

	// Another store, the same lock: the same bytes, the same identity.
	k2 := newKP(t)
	for _, f := range []string{"karapace.toml", "karapace.lock"} {
		data, _ := os.ReadFile(filepath.Join(k.dir, f))
		os.WriteFile(filepath.Join(k2.dir, f), data, 0o644)
	}
	if out := strings.TrimSpace(k2.ok("build", "--locked")); out != id {
		t.Fatalf("the locked rebuild gave %s, not %s", out, id)
	}
	var second struct {
		Environment envInfo `json:"environment"`
	}
	k2.jsonOut(&second, "inspect", id)
	if second.Environment.BaseLayer != first.Environment.BaseLayer {
		t.Fatalf("two bootstraps of one archive state: base layers %s and %s", first.Environment.BaseLayer, second.Environment.BaseLayer)
	}
	k.ok("verify-store")
}

func TestBootstrapFailures(t *testing.T) {
	snap := newDebSnapshot(t)
	for _, tc := range []struct{ name, spoil, want string }{
		{"tampered InRelease", "dists/bookworm/InRelease", "signature does not verify"},
		{"tampered Packages", "/by-hash/SHA256/", "the archive index says"},
		{"tampered package", "/libc6_", "package libc6 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap.mu.Lock()
			snap.tamper = map[string]bool{tc.spoil: true}
			snap.mu.Unlock()
			defer func() { snap.mu.Lock(); snap.tamper = map[string]bool{}; snap.mu.Unlock() }()
			k := newKP(t)
			k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+snap.mirror())
			k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n")
			k.fails(1, tc.want, "build")
			assertNothingHalfMade(t, k)
		})
	}
	t.Run("mirror down", func(t *testing.T) {
		k := newKP(t)
		down := httptest.NewServer(http.NotFoundHandler())
		url := down.URL
		down.Close()
		k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+url+"/debian")
		k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n")
		k.fails(1, url+"/debian/dists/bookworm/InRelease", "build")
		assertNothingHalfMade(t, k)
	})
}

// A small archive of our own, signed by a key made for the test: a
// dependency that nothing satisfies is named in the error.
func TestBootstrapUnresolvable(t *testing.T) {
	gpg := needTool(t, "gpg")
	home := t.TempDir()
	run := func(args ...string) []byte {
		cmd := exec.Command(gpg, append([]string{"--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		var errb strings.Builder
		cmd.Stderr = &errb
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("gpg %v: %v\n%s", args, err, errb.String())
		}
		return out
	}
	run("--quick-gen-key", "Test Archive <test@karapace.invalid>", "ed25519", "sign", "1y")
	pub := filepath.Join(t.TempDir(), "test.gpg")
	os.WriteFile(pub, run("--export"), 0o644)

	root := t.TempDir()
	packages := "Package: base\nVersion: 1.0\nArchitecture: amd64\nEssential: yes\nPriority: required\nDepends: libmissing (>= 2)\nFilename: pool/b/base_1.0_amd64.deb\nSize: 10\nSHA256: " + strings.Repeat("0", 64) + "\n\n" +
		"Package: apt\nVersion: 2.0\nArchitecture: amd64\nPriority: required\nFilename: pool/a/apt_2.0_amd64.deb\nSize: 10\nSHA256: " + strings.Repeat("1", 64) + "\n"
	pkgPath := filepath.Join(root, "dists/bookworm/main/binary-amd64/Packages")
	os.MkdirAll(filepath.Dir(pkgPath), 0o755)
	os.WriteFile(pkgPath, []byte(packages), 0o644)
	release := "Origin: Test\nSuite: bookworm\nCodename: bookworm\nDate: " + time.Now().UTC().Format(time.RFC1123) + "\nArchitectures: amd64\nComponents: main\nSHA256:\n " +
		fileSHA256(t, pkgPath) + " " + strconv.Itoa(len(packages)) + " main/binary-amd64/Packages\n"
	relPath := filepath.Join(root, "dists/bookworm/Release")
	os.WriteFile(relPath, []byte(release), 0o644)
	run("--clearsign", "--output", filepath.Join(root, "dists/bookworm/InRelease"), relPath)
	srv := httptest.NewServer(http.StripPrefix("/debian", http.FileServer(http.Dir(root))))
	defer srv.Close()

	k := newKP(t)
	k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+srv.URL+"/debian", "KARAPACE_ARCHIVE_KEYRING="+pub)
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n")
	k.fails(1, `libmissing (>= 2)`, "build")
	assertNothingHalfMade(t, k)
	// A mirror with only Release and a detached Release.gpg works alike.
	os.Remove(filepath.Join(root, "dists/bookworm/InRelease"))
	run("--detach-sign", "--output", relPath+".gpg", relPath)
	k.fails(1, `libmissing (>= 2)`, "build")
	// With Debian's own keyring the test archive is not trusted.
	k.env = k.env[:len(k.env)-1]
	k.fails(1, "signature does not verify", "build")
}
