package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
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
	cache   string
	path    string // /archive/debian/TIMESTAMP
	mu      sync.Mutex
	tamper  map[string]bool // parts of paths whose body is spoiled
	missing map[string]bool // parts of paths answered 404
	fetch   []string
}

func newDebSnapshot(t *testing.T) *debSnapshot {
	t.Helper()
	base, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot's time is now: the cached InRelease is from before.
	d := &debSnapshot{cache: filepath.Join(base, "karapace-test", "debian-archive"), path: "/archive/debian/" + time.Now().UTC().Format("20060102T150405Z"),
		tamper: map[string]bool{}, missing: map[string]bool{}}
	// A day-old copy of the archive's state is refreshed, whole.
	if st, err := os.Stat(filepath.Join(d.cache, "dists", "bookworm", "InRelease")); err == nil && time.Since(st.ModTime()) > 20*time.Hour {
		os.RemoveAll(d.cache)
	}
	d.Server = httptest.NewServer(http.HandlerFunc(d.serve))
	t.Cleanup(d.Close)
	return d
}

func (d *debSnapshot) mirror() string { return d.URL + d.path }

// set makes paths containing part spoiled (tamper) or missing.
func (d *debSnapshot) set(tamper, missing string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tamper, d.missing = map[string]bool{tamper: tamper != ""}, map[string]bool{missing: missing != ""}
}

// fetched is how many requests the proxy has had.
func (d *debSnapshot) fetched() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.fetch)
}

func (d *debSnapshot) serve(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, d.path+"/")
	if !ok || strings.Contains(rest, "..") {
		http.NotFound(w, r)
		return
	}
	p := filepath.Join(d.cache, filepath.FromSlash(rest))
	d.mu.Lock()
	d.fetch = append(d.fetch, rest)
	spoil, missing := false, false
	for part, on := range d.tamper {
		spoil = spoil || on && strings.Contains(rest, part)
	}
	for part, on := range d.missing {
		missing = missing || on && strings.Contains(rest, part)
	}
	d.mu.Unlock()
	if missing {
		http.NotFound(w, r)
		return
	}
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
	needReal(t)
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

	// Another store, the same lock, moved to a site where the mirror it
	// names is gone: the configured mirror serves the locked archive
	// state, giving the same bytes, the same identity.
	k2 := newKP(t)
	data, _ := os.ReadFile(filepath.Join(k.dir, "karapace.toml"))
	os.WriteFile(filepath.Join(k2.dir, "karapace.toml"), data, 0o644)
	data, _ = os.ReadFile(filepath.Join(k.dir, "karapace.lock"))
	gone := "http://127.0.0.1:9/gone/debian"
	moved := strings.ReplaceAll(string(data), snap.mirror(), gone)
	if moved == string(data) {
		t.Fatalf("the lock does not name the mirror %s:\n%s", snap.mirror(), data)
	}
	os.WriteFile(filepath.Join(k2.dir, "karapace.lock"), []byte(moved), 0o644)
	k2.env = append(k2.env, "KARAPACE_DEBIAN_MIRROR="+snap.mirror())
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
	// With no mirror configured, the snapshot mirror the lock names is
	// where its archive state is fetched from.
	if _, ok := snapshotTime(snap.mirror()); !ok {
		t.Fatalf("the test mirror %s is not a snapshot URL", snap.mirror())
	}
	k3 := newKP(t)
	for _, f := range []string{"karapace.toml", "karapace.lock"} {
		data, _ := os.ReadFile(filepath.Join(k.dir, f))
		os.WriteFile(filepath.Join(k3.dir, f), data, 0o644)
	}
	if out := strings.TrimSpace(k3.ok("build", "--locked")); out != id {
		t.Fatalf("the locked rebuild from the lock's snapshot mirror gave %s, not %s", out, id)
	}
	k.ok("verify-store")
}

func TestBootstrapFailures(t *testing.T) {
	snap := newDebSnapshot(t)
	for _, tc := range []struct{ name, spoil, missing, want string }{
		{"tampered InRelease", "dists/bookworm/InRelease", "", "signature does not verify"},
		{"tampered Packages", "/by-hash/SHA256/", "", "main/binary-amd64/Packages.xz: "},
		{"tampered package", "/libc6_", "", "package libc6 "},
		{"missing package", "", "/libc6_", "package libc6 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap.set(tc.spoil, tc.missing)
			defer snap.set("", "")
			k := newKP(t)
			k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+snap.mirror())
			k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n")
			out := k.fails(1, tc.want, "build")
			if tc.missing != "" && !strings.Contains(out, "404") {
				t.Fatalf("the error does not say the mirror answered 404:\n%s", out)
			}
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
	key := newTestArchiveKey(t, "ed25519")
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
	key.sign(relPath)
	srv := httptest.NewServer(http.StripPrefix("/debian", http.FileServer(http.Dir(root))))
	defer srv.Close()

	k := newKP(t)
	k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+srv.URL+"/debian", "KARAPACE_ARCHIVE_KEYRING="+key.keyring)
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n")
	k.fails(1, `libmissing (>= 2)`, "build")
	assertNothingHalfMade(t, k)
	// A mirror with only Release and a detached Release.gpg works alike.
	os.Remove(filepath.Join(root, "dists/bookworm/InRelease"))
	key.run("--detach-sign", "--output", relPath+".gpg", relPath)
	k.fails(1, `libmissing (>= 2)`, "build")
	// With Debian's own keyring the test archive is not trusted.
	k.env = k.env[:len(k.env)-1]
	k.fails(1, "signature does not verify", "build")
}

// testArchiveKey is a set of archive signing keys made by gpg for a test.
type testArchiveKey struct {
	t         *testing.T
	gpg, home string
	users     []string
	keyring   string // the public keys, for KARAPACE_ARCHIVE_KEYRING
}

// newTestArchiveKey makes one key of each algorithm ("ed25519", "rsa2048").
func newTestArchiveKey(t *testing.T, algos ...string) *testArchiveKey {
	t.Helper()
	k := &testArchiveKey{t: t, gpg: needTool(t, "gpg"), home: t.TempDir()}
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", k.home, "--kill", "all").Run() })
	for i, algo := range algos {
		user := fmt.Sprintf("test%d@karapace.invalid", i)
		k.run("--quick-gen-key", "Test Archive <"+user+">", algo, "sign", "1y")
		k.users = append(k.users, user)
	}
	k.keyring = filepath.Join(t.TempDir(), "test.gpg")
	if err := os.WriteFile(k.keyring, k.run("--export"), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *testArchiveKey) run(args ...string) []byte {
	k.t.Helper()
	cmd := exec.Command(k.gpg, append([]string{"--homedir", k.home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		k.t.Fatalf("gpg %v: %v\n%s", args, err, errb.String())
	}
	return out
}

// sign writes the clear-signed InRelease beside a Release file, signed by
// every key.
func (k *testArchiveKey) sign(release string) {
	k.t.Helper()
	args := []string{"--yes", "--clearsign", "--output", filepath.Join(filepath.Dir(release), "InRelease")}
	for _, u := range k.users {
		args = append(args, "--local-user", u)
	}
	k.run(append(args, release)...)
}

func (k *testArchiveKey) parsed() *pgpKeyring {
	k.t.Helper()
	f, err := os.Open(k.keyring)
	if err != nil {
		k.t.Fatal(err)
	}
	defer f.Close()
	kr, err := readPGPKeyring(f)
	if err != nil {
		k.t.Fatal(err)
	}
	return kr
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func testImageEnv(t *testing.T) *imageEnv {
	t.Helper()
	e, err := newImageEnv(func(string) string { return "" }, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// countingServer serves files from a map by path and records what was asked.
type countingServer struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string]string
	asked []string
}

func newCountingServer(t *testing.T, files map[string]string) *countingServer {
	c := &countingServer{files: files}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.asked = append(c.asked, r.URL.Path)
		body, ok := c.files[r.URL.Path]
		c.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *countingServer) requests() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string{}, c.asked...)
}

// A cached download is hashed again before every use: a file planted or
// damaged under the expected name is removed, named in a warning, and
// downloaded again; a good one is used without asking the mirror.
func TestBootstrapCacheRehashed(t *testing.T) {
	good := "good!"
	want := debFileHash{sha256Hex([]byte(good)), int64(len(good))}
	srv := newCountingServer(t, map[string]string{"/pool/x.deb": good})
	env := testImageEnv(t)
	dir := t.TempDir()
	cached := filepath.Join(dir, want.SHA256)
	logs := captureLog(t)
	env.out = logs.out
	fetch := func() (string, error) {
		return env.fetchVerified(context.Background(), dir, "package x 1", []string{srv.URL + "/pool/x.deb"}, want, nil)
	}
	for _, planted := range []string{"EVIL!", "EVIL", "good!!"} {
		os.WriteFile(cached, []byte(planted), 0o644)
		logs.out.mu.Lock()
		logs.b.Reset()
		logs.out.mu.Unlock()
		n := len(srv.requests())
		p, err := fetch()
		if err != nil {
			t.Fatalf("planted %q: %v", planted, err)
		}
		if data, _ := os.ReadFile(p); string(data) != good || len(srv.requests()) != n+1 {
			t.Fatalf("planted %q: got %q after %d downloads", planted, data, len(srv.requests())-n)
		}
		if !strings.Contains(logs.String(), "package x 1: the cached copy "+cached) {
			t.Fatalf("planted %q: the warning does not name the file: %q", planted, logs.String())
		}
	}
	n := len(srv.requests())
	if p, err := fetch(); err != nil || p != cached || len(srv.requests()) != n {
		t.Fatalf("a good cached copy: %s, %v, %d downloads", p, err, len(srv.requests())-n)
	}

	// The mirror serving the planted bytes too: refused, nothing kept.
	srv.mu.Lock()
	srv.files["/pool/x.deb"] = "EVIL!"
	srv.mu.Unlock()
	os.WriteFile(cached, []byte("EVIL!"), 0o644)
	_, err := fetch()
	if err == nil || !strings.Contains(err.Error(), "package x 1: ") || !strings.Contains(err.Error(), "refusing it") {
		t.Fatalf("a bad download: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left in the cache: %s", entries[0].Name())
	}
}

// With Acquire-By-Hash, the by-hash path comes first and the plain path
// serves mirrors that do not copy by-hash/; a wrong index names its plain
// path either way.
func TestBootstrapByHashFallback(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	io.WriteString(zw, "Package: base\nVersion: 1.0\nArchitecture: amd64\nFilename: pool/b/base_1.0_amd64.deb\nSize: 10\nSHA256: "+strings.Repeat("0", 64)+"\n")
	zw.Close()
	index := gz.String()
	const rel = "main/binary-amd64/Packages.gz"
	want := debFileHash{sha256Hex(gz.Bytes()), int64(gz.Len())}
	byHash := "/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/" + want.SHA256
	plain := "/debian/dists/bookworm/" + rel
	for _, tc := range []struct {
		name  string
		files map[string]string
		asked []string
		err   string
	}{
		{"by-hash", map[string]string{byHash: index, plain: "stale"}, []string{byHash}, ""},
		{"no by-hash", map[string]string{plain: index}, []string{byHash, plain}, ""},
		{"bad by-hash", map[string]string{byHash: "stale", plain: index}, []string{byHash}, rel + ": "},
		{"bad plain", map[string]string{plain: "stale"}, []string{byHash, plain}, rel + ": "},
		{"neither", map[string]string{}, []string{byHash, plain}, rel + ": downloading "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newCountingServer(t, tc.files)
			spec := &archiveSpec{Distro: "debian", Suite: "bookworm", Mirror: srv.URL + "/debian", Components: []string{"main"}, Arch: "amd64"}
			ar := &archiveRelease{rel: &debRelease{AcquireByHash: true, SHA256: map[string]debFileHash{rel: want}}}
			ix, err := testImageEnv(t).packagesIndex(newTestStore(t), spec, ar)
			if got := srv.requests(); !slices.Equal(got, tc.asked) {
				t.Fatalf("asked for %v, want %v", got, tc.asked)
			}
			if tc.err == "" {
				if err != nil || ix.lookup("base") == nil {
					t.Fatalf("index: %v", err)
				}
			} else if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Fatalf("got error %v, want one starting %q", err, tc.err)
			}
		})
	}
}

// The first package that fails stops the download of the others: nothing
// new starts and what is under way is cancelled. The mirror answers the
// first package 404 and holds the others until their requests are
// cancelled; a download started after the failure would be one more
// than can be under way at once, and lets them all go.
func TestBootstrapFetchStopsAtFirstFailure(t *testing.T) {
	var mu sync.Mutex
	asked, overflow := 0, false
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked++
		if asked > debFetchers && !overflow {
			overflow = true
			close(release)
		}
		mu.Unlock()
		if r.URL.Path == "/debian/pool/p0.deb" {
			http.NotFound(w, r)
			return
		}
		select {
		case <-r.Context().Done():
		case <-release:
			http.Error(w, "released", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	var set []*debPackage
	for i := range 3 * debFetchers {
		body := fmt.Sprintf("package %d", i)
		set = append(set, &debPackage{Name: fmt.Sprintf("p%d", i), Version: "1.0", Arch: "amd64", Filename: fmt.Sprintf("pool/p%d.deb", i),
			SHA256: sha256Hex([]byte(body)), Size: int64(len(body))})
	}
	e := &engine{s: newTestStore(t)}
	spec := &archiveSpec{Distro: "debian", Suite: "bookworm", Mirror: srv.URL + "/debian", Arch: "amd64"}
	_, err := e.fetchDebs(testImageEnv(t), spec, set)
	if err == nil || !strings.HasPrefix(err.Error(), "package p0 1.0: ") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("got %v, want the 404 of package p0", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if overflow {
		t.Fatalf("downloads went on after the first failure: %d requests", asked)
	}
}

// Valid-Until bounds how old a Release a mirror may serve: now on a
// normal mirror, at the URL's time on a snapshot mirror, where a Release
// dated after that time cannot be genuine.
func TestBootstrapReleaseDates(t *testing.T) {
	key := newTestArchiveKey(t, "ed25519")
	root := t.TempDir()
	srv := httptest.NewServer(http.FileServer(http.Dir(root)))
	defer srv.Close()
	now := time.Now().UTC()
	snap := time.Date(2025, 1, 10, 12, 0, 0, 0, time.UTC)
	const snapPath = "/archive/debian/20250110T120000Z"
	for i, tc := range []struct {
		name, mirror     string
		date, validUntil time.Time
		want             string
	}{
		{"mirror, valid", "/debian", now.Add(-time.Hour), now.Add(24 * time.Hour), ""},
		{"mirror, no Valid-Until", "/debian", now.Add(-time.Hour), time.Time{}, ""},
		{"mirror, expired", "/debian", now.Add(-48 * time.Hour), now.Add(-24 * time.Hour), "expired at"},
		{"snapshot, valid then", snapPath, snap.Add(-time.Hour), snap.Add(7 * 24 * time.Hour), ""},
		{"snapshot, dated at its time", snapPath, snap, time.Time{}, ""},
		{"snapshot, dated after", snapPath, snap.Add(time.Second), time.Time{}, "after the time of the snapshot URL (2025-01-10T12:00:00Z)"},
		{"snapshot, expired before", snapPath, snap.Add(-10 * 24 * time.Hour), snap.Add(-3 * 24 * time.Hour), "before the time of the snapshot URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mirror := fmt.Sprintf("/%d%s", i, tc.mirror)
			dir := filepath.Join(root, mirror, "dists", "bookworm")
			os.MkdirAll(dir, 0o755)
			text := "Origin: Test\nSuite: bookworm\nCodename: bookworm\nDate: " + tc.date.Format(time.RFC1123) + "\n"
			if !tc.validUntil.IsZero() {
				text += "Valid-Until: " + tc.validUntil.Format(time.RFC1123) + "\n"
			}
			text += "SHA256:\n " + strings.Repeat("0", 64) + " 0 main/binary-amd64/Packages\n"
			os.WriteFile(filepath.Join(dir, "Release"), []byte(text), 0o644)
			key.sign(filepath.Join(dir, "Release"))
			spec := &archiveSpec{Distro: "debian", Suite: "bookworm", Mirror: srv.URL + mirror, Keyring: key.parsed()}
			ar, err := testImageEnv(t).fetchRelease(spec)
			if tc.want == "" {
				if err != nil || !ar.rel.Date.Equal(tc.date.Truncate(time.Second)) {
					t.Fatalf("refused: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), spec.Mirror+"/dists/bookworm/InRelease") {
				t.Fatalf("got %v, want an error naming the InRelease and saying %q", err, tc.want)
			}
		})
	}
}

func TestDebArch(t *testing.T) {
	for goarch, want := range map[string]string{"amd64": "amd64", "386": "i386", "ppc64le": "ppc64el", "arm64": "arm64"} {
		if got, err := debArch(goarch); got != want || err != nil {
			t.Errorf("debArch(%s) = %q, %v; want %q", goarch, got, err, want)
		}
	}
	if got, err := debArch("mips"); got != "" || err == nil || !strings.Contains(err.Error(), "mips") {
		t.Errorf("debArch(mips) = %q, %v; want an error naming it", got, err)
	}
	for _, tc := range []struct{ distro, arch, want string }{
		{"debian", "arm64", "http://deb.debian.org/debian"},
		{"ubuntu", "amd64", "http://archive.ubuntu.com/ubuntu"},
		{"ubuntu", "i386", "http://archive.ubuntu.com/ubuntu"},
		{"ubuntu", "arm64", "http://ports.ubuntu.com/ubuntu-ports"},
		{"ubuntu", "riscv64", "http://ports.ubuntu.com/ubuntu-ports"},
	} {
		if got := defaultMirror(tc.distro, tc.arch); got != tc.want {
			t.Errorf("defaultMirror(%s, %s) = %s, want %s", tc.distro, tc.arch, got, tc.want)
		}
	}
}

// The lock names the mirror its base came from only for information: the
// configured mirror is the one asked, and what the lock pins is what it
// must serve. A lock from the other source (the archive, or the LXC image
// server) is a clear drift, not a download of the wrong thing.
func TestBootstrapLockSource(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	dead := down.URL
	down.Close()
	const archiveLock = "http://127.0.0.1:9/old/debian/dists/bookworm"
	const lxcLock = "https://images.invalid/images/debian/bookworm/amd64/default/20250101_05:24/rootfs.tar.xz"
	for _, tc := range []struct {
		name, lockURL string
		env           []string
		locked        bool
		code          int
		want          string
	}{
		{"configured mirror", archiveLock, []string{"KARAPACE_DEBIAN_MIRROR=" + dead + "/new/debian"}, true, 1, dead + "/new/debian/dists/bookworm/InRelease"},
		{"archive lock, lxc source", archiveLock, []string{"KARAPACE_IMAGE_SOURCE=lxc", "KARAPACE_IMAGE_SERVER=" + dead}, true, 2, "now says lxc"},
		{"archive lock, lxc source, unlocked", archiveLock, []string{"KARAPACE_IMAGE_SOURCE=lxc", "KARAPACE_IMAGE_SERVER=" + dead}, false, 1, dead + "/streams/v1/index.json"},
		{"lxc lock, archive source", lxcLock, []string{"KARAPACE_DEBIAN_MIRROR=" + dead + "/debian"}, true, 2, "came from the LXC image server"},
		{"lxc lock, archive source, unlocked", lxcLock, []string{"KARAPACE_DEBIAN_MIRROR=" + dead + "/debian"}, false, 1, dead + "/debian/dists/bookworm/InRelease"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKP(t)
			k.env = append(append(k.env, "KARAPACE_LOG=info"), tc.env...)
			m, err := loadManifest(k.writeManifest("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n"))
			if err != nil {
				t.Fatal(err)
			}
			lp := lockPath(m.Path)
			if err := writeLock(lp, newLock(m, "sha256:"+strings.Repeat("0", 64), tc.lockURL, nil)); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(lp)
			args := []string{"build"}
			if tc.locked {
				args = append(args, "--locked")
			}
			out := k.fails(tc.code, tc.want, args...)
			if !tc.locked && !strings.Contains(out, "resolving again") {
				t.Fatalf("no word of the drift:\n%s", out)
			}
			if after, _ := os.ReadFile(lp); !bytes.Equal(before, after) {
				t.Fatalf("a failed build changed the lock")
			}
			assertNothingHalfMade(t, k)
		})
	}
}

// Ubuntu's archive is not reachable here, so the test makes one: the
// Debian bookworm base, as the Debian bootstrap resolves it, with every
// package's members recompressed by the real zstd as Ubuntu's are, in a
// mirror tree for ubuntu/noble signed by test keys (Ed25519 and RSA). It
// says Acquire-By-Hash but has no by-hash/ directories, as some mirrors.
// The bootstrap verifies it all, unpacks the essential packages through
// our zstd decoder, and dpkg configures the set inside the sandbox.
func TestBootstrapUbuntuArchive(t *testing.T) {
	needReal(t)
	needTool(t, "dpkg")
	xz := needTool(t, "xz")
	key := newTestArchiveKey(t, "ed25519", "rsa2048")
	root := t.TempDir()
	set, stanzas := ubuntuTestPool(t, filepath.Join(root, "pool", "main"))

	var packages strings.Builder
	for _, p := range set {
		deb := filepath.Join(root, "pool", "main", filepath.Base(p.Filename))
		data, err := os.ReadFile(deb)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimRight(stanzas[p.Name], "\n"), "\n") {
			field, _, _ := strings.Cut(line, ":")
			switch field {
			case "Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512":
			default:
				packages.WriteString(line + "\n")
			}
		}
		fmt.Fprintf(&packages, "Filename: pool/main/%s\nSize: %d\nSHA256: %s\n\n", filepath.Base(deb), len(data), sha256Hex(data))
	}
	dists := filepath.Join(root, "dists", "noble")
	pkgPath := filepath.Join(dists, "main", "binary-amd64", "Packages.xz")
	os.MkdirAll(filepath.Dir(pkgPath), 0o755)
	cmd := exec.Command(xz, "-c")
	cmd.Stdin = strings.NewReader(packages.String())
	index, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	os.WriteFile(pkgPath, index, 0o644)
	release := "Origin: Ubuntu\nLabel: Ubuntu\nSuite: noble\nVersion: 24.04\nCodename: noble\nDate: " + time.Now().UTC().Format(time.RFC1123) +
		"\nArchitectures: amd64\nComponents: main\nAcquire-By-Hash: yes\nSHA256:\n " + sha256Hex(index) + " " + strconv.Itoa(len(index)) + " main/binary-amd64/Packages.xz\n"
	os.WriteFile(filepath.Join(dists, "Release"), []byte(release), 0o644)
	key.sign(filepath.Join(dists, "Release"))
	srv := httptest.NewServer(http.StripPrefix("/ubuntu", http.FileServer(http.Dir(root))))
	defer srv.Close()

	k := newKP(t)
	k.env = append(k.env, "KARAPACE_UBUNTU_MIRROR="+srv.URL+"/ubuntu", "KARAPACE_ARCHIVE_KEYRING="+key.keyring)
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"ubuntu/noble\"\n")
	k.ok("build", "--name", "noble")
	status := k.ok("exec", "noble", "--", "dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package}\n")
	lines := strings.Split(strings.TrimSpace(status), "\n")
	if len(lines) != len(set) {
		t.Fatalf("%d packages installed, %d in the base set:\n%s", len(lines), len(set), status)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "ii ") {
			t.Fatalf("a package is not installed and configured: %q", l)
		}
	}
	// The base names Ubuntu's own archive, not the mirror it came from.
	if out := k.ok("exec", "noble", "--", "cat", "/etc/apt/sources.list.d/ubuntu.sources"); !strings.Contains(out, "URIs: "+defaultMirror("ubuntu", "amd64")+"\nSuites: noble\n") || strings.Contains(out, srv.URL) {
		t.Fatalf("ubuntu.sources:\n%s", out)
	}
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil || l.BaseImageURL != srv.URL+"/ubuntu/dists/noble" {
		t.Fatalf("lock: %+v, %v", l, err)
	}
}

// ubuntuTestPool puts the Debian bookworm base set, repacked with zstd,
// in dir, and returns the set and each package's stanza of the Debian
// index. Repacked packages are kept in the test cache, by the sha256 of
// the Debian package, so a later run only links them.
func ubuntuTestPool(t *testing.T, dir string) ([]*debPackage, map[string]string) {
	t.Helper()
	zstd := needTool(t, "zstd")
	snap := newDebSnapshot(t)
	kr, err := defaultArchiveKeyring("debian")
	if err != nil {
		t.Fatal(err)
	}
	env := testImageEnv(t)
	spec := &archiveSpec{Distro: "debian", Suite: "bookworm", Mirror: snap.mirror(), Components: []string{"main"}, Arch: "amd64", Keyring: kr}
	ar, err := env.fetchRelease(spec)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestStore(t)
	ix, err := env.packagesIndex(s, spec, ar)
	if err != nil {
		t.Fatal(err)
	}
	set, err := ix.minbase()
	if err != nil {
		t.Fatal(err)
	}
	// The stanzas as the Debian index has them.
	index := filepath.Join(imagesDir(s), "archive", ar.rel.SHA256["main/binary-amd64/Packages.xz"].SHA256)
	f, err := os.Open(index)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	xr, err := newXZReader(f)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, p := range set {
		want[p.Name] = true
	}
	stanzas := map[string]string{}
	sc := bufio.NewScanner(xr)
	sc.Buffer(nil, 1<<20)
	var para strings.Builder
	flush := func() {
		text := para.String()
		para.Reset()
		name, _, _ := strings.Cut(strings.TrimPrefix(text, "Package: "), "\n")
		if strings.HasPrefix(text, "Package: ") && want[name] {
			stanzas[name] = text
		}
	}
	for sc.Scan() {
		if sc.Text() == "" {
			flush()
			continue
		}
		para.WriteString(sc.Text() + "\n")
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	flush()
	for _, p := range set {
		if stanzas[p.Name] == "" {
			t.Fatalf("package %s has no stanza in the index", p.Name)
		}
	}

	base, _ := os.UserCacheDir()
	cache := filepath.Join(base, "karapace-test", "ubuntu-zstd")
	os.MkdirAll(cache, 0o755)
	os.MkdirAll(dir, 0o755)
	keep := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, len(set))
	sem := make(chan struct{}, runtime.NumCPU())
	for _, p := range set {
		repacked := filepath.Join(cache, p.SHA256+".deb")
		keep[filepath.Base(repacked)] = true
		wg.Add(1)
		go func(p *debPackage) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := os.Stat(repacked); err != nil {
				deb, err := env.fetchVerified(context.Background(), filepath.Join(imagesDir(s), "debs"), p.Name, []string{snap.mirror() + "/" + p.Filename}, debFileHash{p.SHA256, p.Size}, nil)
				if err == nil {
					err = repackZstd(zstd, deb, repacked)
				}
				if err != nil {
					errs <- fmt.Errorf("repacking %s: %w", p.Name, err)
					return
				}
			}
			errs <- linkOrCopy(repacked, filepath.Join(dir, filepath.Base(p.Filename)))
		}(p)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Packages the archive has replaced since are of no more use.
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(cache, e.Name()))
		}
	}
	return set, stanzas
}

// repackZstd writes the package deb again with its control and data
// members decompressed and compressed by the zstd binary.
func repackZstd(zstd, deb, out string) error {
	in, err := os.Open(deb)
	if err != nil {
		return err
	}
	defer in.Close()
	members := []string{"debian-binary", "2.0\n"}
	err = readDeb(in, func(name string, size int64, r io.Reader) error {
		d, err := debDecompressor(name, r)
		if err != nil {
			return err
		}
		cmd := exec.Command(zstd, "-q", "-c", "-T1")
		cmd.Stdin = d
		var errb bytes.Buffer
		cmd.Stderr = &errb
		data, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("zstd: %v: %s", err, errb.String())
		}
		base, _, _ := strings.Cut(name, ".tar")
		members = append(members, base+".tar.zst", string(data))
		return nil
	})
	if err != nil {
		return err
	}
	if len(members) != 6 {
		return fmt.Errorf("%s has %d members", deb, len(members)/2)
	}
	tmp := out + ".part"
	if err := os.WriteFile(tmp, debTestAr(members...), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
