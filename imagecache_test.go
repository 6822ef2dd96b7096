package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// testRootfsTarXZ is the test root filesystem compressed by the real xz:
// $KARAPACE_TEST_ROOTFS_TAR.xz when the test script made it, else made
// once in the user's cache.
func testRootfsTarXZ(t *testing.T) string {
	t.Helper()
	tarPath := testRootfsTar(t)
	if _, err := os.Stat(tarPath + ".xz"); err == nil {
		return tarPath + ".xz"
	}
	xz := needTool(t, "xz")
	cache, _ := os.UserCacheDir()
	p := filepath.Join(cache, "karapace-test", "bookworm-minbase.tar.xz")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	os.MkdirAll(filepath.Dir(p), 0o755)
	out, err := os.Create(p + ".tmp")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(xz, "-T0", "-3", "-c", tarPath)
	cmd.Stdout = out
	if err := cmd.Run(); err != nil {
		t.Fatalf("xz: %v", err)
	}
	out.Close()
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
	return p
}

// imageServer is a simplestreams image server on loopback, serving one
// image for debian/bookworm, and able to misbehave on request.
type imageServer struct {
	*httptest.Server
	mu       sync.Mutex
	image    string // path of the root tarball
	sha      string // what the index claims
	mode     string // "", "500", "truncate", "hang-body", "hang-headers"
	requests []string
	release  chan struct{}
}

func newImageServer(t *testing.T, image, claimedSHA string) *imageServer {
	s := &imageServer{image: image, sha: claimedSHA, release: make(chan struct{})}
	if s.sha == "" {
		s.sha = fileSHA256(t, image)
	}
	const rootPath = "images/debian/bookworm/amd64/default/20261120_05:24/rootfs.tar.xz"
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.URL.Path)
		mode, sha := s.mode, s.sha
		s.mu.Unlock()
		switch r.URL.Path {
		case "/streams/v1/index.json":
			fmt.Fprint(w, `{"format":"index:1.0","index":{"images":{"datatype":"image-downloads","path":"streams/v1/images.json","products":["debian:bookworm:amd64:default"]}}}`)
		case "/streams/v1/images.json":
			fmt.Fprintf(w, `{"format":"products:1.0","products":{
"debian:bookworm:amd64:default":{"aliases":"debian/bookworm/default,debian/bookworm","arch":"amd64","os":"Debian","release":"bookworm","variant":"default","versions":{
  "20261101_05:24":{"items":{"root.tar.xz":{"ftype":"root.tar.xz","path":"images/old/rootfs.tar.xz","sha256":"%s","size":1}}},
  "20261120_05:24":{"items":{"root.tar.xz":{"ftype":"root.tar.xz","path":"%s","sha256":"%s","size":1},"lxd.tar.xz":{"ftype":"lxd.tar.xz","path":"x","sha256":"%s","size":1}}}}},
"debian:bookworm:arm64:default":{"aliases":"debian/bookworm","arch":"arm64","variant":"default","versions":{"20261130_05:24":{"items":{"root.tar.xz":{"ftype":"root.tar.xz","path":"images/arm/rootfs.tar.xz","sha256":"%s","size":1}}}}},
"debian:bookworm:amd64:cloud":{"aliases":"debian/bookworm/cloud","arch":"amd64","variant":"cloud","versions":{"20261130_05:24":{"items":{"root.tar.xz":{"ftype":"root.tar.xz","path":"images/cloud/rootfs.tar.xz","sha256":"%s","size":1}}}}}}}`,
				strings.Repeat("1", 64), rootPath, sha, strings.Repeat("2", 64), strings.Repeat("3", 64), strings.Repeat("4", 64))
		case "/" + rootPath:
			switch mode {
			case "500":
				http.Error(w, "broken", http.StatusInternalServerError)
			case "hang-headers":
				<-s.release
			case "hang-body", "truncate":
				st, _ := os.Stat(s.image)
				w.Header().Set("Content-Length", fmt.Sprint(st.Size()))
				data, _ := os.ReadFile(s.image)
				w.Write(data[:len(data)/2])
				w.(http.Flusher).Flush()
				if mode == "hang-body" {
					<-s.release
				}
				// truncate: the handler returns, the connection closes short
			default:
				http.ServeFile(w, r, s.image)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(func() { close(s.release); s.Close() })
	return s
}

func (s *imageServer) set(mode string) {
	s.mu.Lock()
	s.mode = mode
	s.mu.Unlock()
}

func fileSHA256(t *testing.T, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// assertNothingHalfMade checks a store after a failed build: no objects,
// layers, metadata or WAL entries, no working directories, no partial
// downloads, and a clean verify-store.
func assertNothingHalfMade(t *testing.T, k *kpRun) {
	t.Helper()
	for _, sub := range []string{"store/objects", "store/layers", "store/metadata", "store/wal", "store/staging", "images/.partial"} {
		entries, _ := os.ReadDir(filepath.Join(k.store, sub))
		if len(entries) > 0 {
			t.Errorf("%s is not empty after a failed build: %v", sub, entries[0].Name())
		}
	}
	entries, _ := os.ReadDir(filepath.Join(k.store, "env"))
	for _, e := range entries {
		if e.Name() != ".layers" {
			t.Errorf("env/%s left behind", e.Name())
		}
	}
	layers, _ := os.ReadDir(filepath.Join(k.store, "env", ".layers"))
	if len(layers) > 0 {
		t.Errorf("layer tree %s left behind", layers[0].Name())
	}
	images, _ := os.ReadDir(filepath.Join(k.store, "images"))
	for _, e := range images {
		if e.Name() == ".partial" {
			continue
		}
		// Only a complete, verified download may stay, and without a layer.
		if _, err := os.Stat(filepath.Join(k.store, "images", e.Name(), "base-layer")); err == nil {
			t.Errorf("images/%s has a base layer after a failed build", e.Name())
		}
	}
	k.ok("verify-store")
}

// smallImage writes a tar (from entries) compressed by the real xz.
// imageServerKP serves a small image (an os-release of size bytes) as
// images:debian/bookworm, to a project that builds it on the mock backend.
func imageServerKP(t *testing.T, size int64) (string, *imageServer, *kpRun) {
	t.Helper()
	image := filepath.Join(t.TempDir(), "rootfs.tar.xz")
	smallImage(t, image, []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, Size: size},
	})
	srv := newImageServer(t, image, "")
	k := newKP(t)
	k.env = append(k.env, "KARAPACE_IMAGE_SERVER="+srv.URL)
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"images:debian/bookworm\"\n[runtime]\nbackend = \"mock\"\n")
	return image, srv, k
}

func smallImage(t *testing.T, path string, entries []*tar.Header) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	tw.Close()
	cmd := exec.Command(needTool(t, "xz"), "-c")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestImageServerHostile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.tar.xz")
	smallImage(t, good, []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10},
	})
	corrupt := filepath.Join(dir, "corrupt.tar.xz")
	data, _ := os.ReadFile(good)
	data[len(data)/2] ^= 0x55
	os.WriteFile(corrupt, data, 0o644)
	// Damage past the first chunk of a big file: the unpacker is inside
	// the entry when the decoder fails, and the decoder's error is the one
	// that counts.
	bigCorrupt := filepath.Join(dir, "big.tar.xz")
	smallImage(t, bigCorrupt, []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 16 << 20},
	})
	data, _ = os.ReadFile(bigCorrupt)
	data[len(data)*3/4] ^= 0x55
	os.WriteFile(bigCorrupt, data, 0o644)
	evil := filepath.Join(dir, "evil.tar.xz")
	smallImage(t, evil, []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
	})

	for _, tc := range []struct {
		name, image, claim, mode, want string
	}{
		{"wrong sha256 in the index", good, strings.Repeat("a", 64), "", "but " + strings.Repeat("a", 64) + " was expected: refusing it"},
		{"truncated download", good, "", "truncate", "downloading"},
		{"server error", good, "", "500", "server answered 500 Internal Server Error"},
		{"hanging body", good, "", "hang-body", "no data for 1s"},
		{"hanging headers", good, "", "hang-headers", "timeout awaiting response headers"},
		{"corrupt xz", corrupt, "", "", "xz: "},
		{"corrupt xz inside an entry", bigCorrupt, "", "", "unpacking image rootfs.tar.xz: xz: "},
		{"tar with ..", evil, "", "", `"../escaped"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newImageServer(t, tc.image, tc.claim)
			srv.set(tc.mode)
			k := newKP(t)
			k.env = append(k.env, "KARAPACE_IMAGE_SERVER="+srv.URL, "KARAPACE_HTTP_TIMEOUT=1s")
			k.writeManifest("manifest_version = 1\n[base]\nimage = \"images:debian/bookworm\"\n[runtime]\nbackend = \"mock\"\n")
			start := time.Now()
			k.fails(1, tc.want, "build")
			if time.Since(start) > 20*time.Second {
				t.Errorf("the failure took %s", time.Since(start))
			}
			if _, err := os.Stat(filepath.Join(k.base, "escaped")); err == nil {
				t.Fatal("the hostile tar wrote outside its target")
			}
			if _, err := os.Stat(filepath.Join(k.dir, "karapace.lock")); err == nil {
				t.Error("a failed build wrote the lock")
			}
			assertNothingHalfMade(t, k)
		})
	}
}

// The alias resolves on the image server (newest amd64 default build),
// the rootfs.tar.xz is checked against the index's sha256 as it streams,
// packages are installed and locked, and the lock rebuilds from the
// store with no network and no package manager run.
func TestImageAliasBuildWithPackages(t *testing.T) {
	image := testRootfsTarXZ(t)
	srv := newImageServer(t, image, "")
	k := newKP(t)
	k.env = append(k.env, "KARAPACE_IMAGE_SERVER="+srv.URL)
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"images:debian/bookworm\"\n[system]\npackages = [\"git\", \"curl\"]\n")
	// On a terminal: download, import and the install's status line
	// (apt's latest line of output).
	out, terminal := k.onTerminal("--trace", "build", "--name", "dev")
	mustContain(t, "build --trace", terminal, "karapace: trace: GET "+srv.URL+"/streams/v1/index.json: 200 OK", "karapace: debug: alias",
		"\r\x1b[Kdownloading rootfs.tar.xz  ", "\r\x1b[Kimporting rootfs.tar.xz  ", "installing curl git with apt", "\r\x1b[Kapt: ")
	id := strings.TrimSpace(out)
	if _, _, errOut := k.run("--trace", "exec", "dev", "--", "true"); !regexp.MustCompile(`karapace: trace: mount overlay on \S+: lowerdir=`).MatchString(errOut) {
		t.Fatalf("exec --trace shows no mounts:\n%s", errOut)
	}
	if v := k.ok("exec", "dev", "--", "git", "--version"); !strings.HasPrefix(v, "git version 2.39") {
		t.Fatalf("git --version: %q", v)
	}
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{}
	for _, p := range l.Packages {
		versions[p.Name] = p.Version
	}
	if !regexp.MustCompile(`^1:2\.39\.\d+-\S*deb12`).MatchString(versions["git"]) || !regexp.MustCompile(`^7\.88\.1-10\S*deb12`).MatchString(versions["curl"]) {
		t.Fatalf("lock versions: git %q curl %q", versions["git"], versions["curl"])
	}
	if len(l.Packages) < 5 || versions["libcurl4"] == "" {
		t.Fatalf("the lock does not hold the closure: %+v", l.Packages)
	}
	if l.BaseImageDigest != "sha256:"+srv.sha || !strings.HasPrefix(l.BaseImageURL, srv.URL+"/images/debian/bookworm/amd64/default/20261120_05:24/") {
		t.Fatalf("lock image: %s %s", l.BaseImageDigest, l.BaseImageURL)
	}

	// Pinning the alias gives the URL and the digest of the index.
	k.ok("pin")
	m, err := loadManifest(filepath.Join(k.dir, "karapace.toml"))
	if err != nil || m.BaseImage != l.BaseImageURL+"#sha256="+srv.sha {
		t.Fatalf("pinned: %v %q", err, m.BaseImage)
	}
	k.ok("pin", "--check")

	// No server, no network allowed, no cached download: the lock
	// rebuilds from the store.
	srv.Close()
	// The image and info.json, its record; the base-layer index stays.
	if out := k.ok("gc", "--images"); !regexp.MustCompile(`, 2 image cache files; freed \d+(\.\d)? MiB`).MatchString(out) {
		t.Fatalf("gc --images: %q", out)
	}
	if images, _ := filepath.Glob(filepath.Join(k.store, "images", "sha256-*", "image")); len(images) != 0 {
		t.Fatalf("gc --images left %v", images)
	}
	k.ok("destroy", "dev")
	code, out, errOut := k.run("-v", "build", "--locked", "--offline")
	if code != 0 || strings.TrimSpace(out) != id {
		t.Fatalf("offline locked build: %d %q\n%s", code, out, errOut)
	}
	mustContain(t, "offline build", errOut, "the layers of "+id[:12]+" from the store")
	if strings.Contains(errOut, "installing") {
		t.Fatalf("the package manager ran:\n%s", errOut)
	}
	if v := k.ok("exec", id[:12], "--", "curl", "--version"); !strings.HasPrefix(v, "curl 7.88.1") {
		t.Fatalf("curl --version: %q", v)
	}
	// A missing lock, or an unpinned alias, fails clearly offline.
	os.Remove(filepath.Join(k.dir, "karapace.lock"))
	k.fails(2, "--locked: karapace.lock does not exist", "build", "--locked")
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"images:debian/bookworm\"\n")
	k.fails(1, "--offline forbids the network", "build", "--offline")
	k.fails(2, "--require-pinned-image asks for one", "build", "--require-pinned-image")
	k.ok("verify-store")
}

// xzBlockCheckEnd is the offset of the last byte of the last block's
// check in a one-stream xz file: right before the index, whose size the
// stream footer gives.
func xzBlockCheckEnd(t *testing.T, data []byte) int {
	t.Helper()
	footer := data[len(data)-12:]
	if string(footer[10:]) != "YZ" {
		t.Fatal("not an xz stream footer")
	}
	backward := int(footer[4]) | int(footer[5])<<8 | int(footer[6])<<16 | int(footer[7])<<24
	return len(data) - 12 - (backward+1)*4 - 1
}

// The importer stops reading the tar at its end marker; the xz data
// after it (the zero records of a 4 MiB tar record, the last block's
// check, the index and the footer) must still be decoded and verified.
func TestImageXZCheckAfterTarEnd(t *testing.T) {
	tarTool, xz := needTool(t, "tar"), needTool(t, "xz")
	k := newKP(t)
	src := filepath.Join(k.base, "rootfs")
	writeFile(t, src, "etc/os-release", "ID=test\n")
	img := filepath.Join(k.dir, "rootfs.tar.xz")
	tarPath := filepath.Join(k.base, "rootfs.tar")
	if out, err := exec.Command(tarTool, "-b", "8192", "--owner=0", "--group=0", "--numeric-owner", "-C", src, "-cf", tarPath, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if st, _ := os.Stat(tarPath); st.Size() != 4<<20 {
		t.Fatalf("tar -b 8192 made %d bytes", st.Size())
	}
	if out, err := exec.Command(xz, "--check=crc64", "-k", tarPath).CombinedOutput(); err != nil {
		t.Fatalf("xz: %v\n%s", err, out)
	}
	data, err := os.ReadFile(tarPath + ".xz")
	if err != nil {
		t.Fatal(err)
	}
	data[xzBlockCheckEnd(t, data)] ^= 1
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(xz, "-t", img).Run(); err == nil {
		t.Fatal("xz -t accepts the damaged file")
	}
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"./rootfs.tar.xz\"\n[runtime]\nbackend = \"mock\"\n")
	k.fails(1, "block check (CRC64) mismatch", "build")
	if _, err := os.Stat(filepath.Join(k.dir, "karapace.lock")); err == nil {
		t.Error("a failed build wrote the lock")
	}
	assertNothingHalfMade(t, k)

	// The same file undamaged builds.
	data[xzBlockCheckEnd(t, data)] ^= 1
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	k.ok("build")
}

// A cached image is re-hashed as it is read: a damaged entry is an error
// that names it and both digests, not a decoder's complaint; it is
// removed and, online, downloaded again. verify-store finds it too.
func TestImageCacheTampered(t *testing.T) {
	_, srv, k := imageServerKP(t, 3000)
	entry := filepath.Join(k.store, "images", "sha256-"+srv.sha)
	downloads := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		n := 0
		for _, r := range srv.requests {
			if strings.HasSuffix(r, "/rootfs.tar.xz") {
				n++
			}
		}
		return n
	}
	tamper := func() {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(entry, "image"))
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0x10
		if err := os.WriteFile(filepath.Join(entry, "image"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		// Without its layer, the next build has to read the image.
		k.ok("destroy", "dev")
		k.ok("gc")
	}
	k.ok("build", "--name", "dev")
	tamper()
	code, out, errOut := k.run("verify-store")
	if code != exitStore {
		t.Fatalf("verify-store: exit %d\n%s", code, errOut)
	}
	mustContain(t, "verify-store", out, "bad image images/sha256-"+srv.sha+": corrupt: the image has sha256 ", "1 cached image")

	// Online: named, removed, downloaded again.
	if code, _, errOut = k.run("build", "--name", "dev"); code != 0 {
		t.Fatalf("build: exit %d\n%s", code, errOut)
	}
	mustContain(t, "build", errOut, "image cache entry "+entry+" is damaged", "downloading "+srv.URL)
	if n := downloads(); n != 2 {
		t.Fatalf("%d downloads, want 2 (the damaged entry fetched again)", n)
	}
	k.ok("verify-store")

	// Offline (from the lock): the error names the entry and both
	// digests; the entry is gone, so verify-store is clean again.
	tamper()
	errOut = k.fails(1, "image cache entry "+entry+" is damaged: its image has sha256 ", "build", "--offline", "--locked")
	mustContain(t, "build", errOut, "not the "+srv.sha+" it is filed under")
	if strings.Contains(errOut, "xz:") {
		t.Fatalf("the error is the decoder's:\n%s", errOut)
	}
	if _, err := os.Stat(filepath.Join(entry, "image")); err == nil {
		t.Fatal("the damaged image stayed in the cache")
	}
	k.ok("verify-store")
	k.fails(1, "is not in the cache, and --offline forbids downloading it", "build", "--offline", "--locked")
	k.ok("build")
	if n := downloads(); n != 3 {
		t.Fatalf("%d downloads, want 3", n)
	}
}

// onTerminal runs a command that must succeed with its stderr on a
// pseudo-terminal, and returns its stdout and what the terminal showed.
func (k *kpRun) onTerminal(args ...string) (string, string) {
	k.t.Helper()
	master, slave := openPTY(k.t)
	cmd := k.cmd("", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, slave
	seen := make(chan string)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, master) // ends with EIO once the slave is closed
		seen <- b.String()
	}()
	err := cmd.Run()
	slave.Close()
	terminal := <-seen
	if err != nil {
		k.t.Fatalf("karapace %s: %v\n%s", strings.Join(args, " "), err, terminal)
	}
	return out.String(), terminal
}

// Download and import show progress on a terminal, cleared at the end,
// and a line per phase when stderr is a pipe (a log).
func TestImageDownloadProgress(t *testing.T) {
	image, _, k := imageServerKP(t, 100)
	st, _ := os.Stat(image)
	_, terminal := k.onTerminal("build")
	mustContain(t, "terminal", terminal, "\r\x1b[Kdownloading rootfs.tar.xz  ", " / "+humanBytes(st.Size())+" ", "B/s",
		"\r\x1b[Kimporting rootfs.tar.xz  ", "\r\x1b[Kbuilt ")
	k.env = append(k.env, "KARAPACE_STORE="+filepath.Join(k.base, "piped"))
	_, _, errOut := k.run("build")
	if strings.ContainsAny(errOut, "\r\x1b") || !strings.HasPrefix(errOut, "karapace: downloading rootfs.tar.xz\nkarapace: importing rootfs.tar.xz\nbuilt ") {
		t.Fatalf("progress on a pipe: %q", errOut)
	}
}

// A file:// URL: imported (with progress on a terminal), run, pinned to
// its sha256, and built again pinned to the same environment.
func TestImageFileURL(t *testing.T) {
	image := testRootfsTarXZ(t)
	k := newKP(t)
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"file://" + image + "\"\n")
	stdout, terminal := k.onTerminal("build", "--name", "dev")
	mustContain(t, "terminal", terminal, "\r\x1b[Kimporting "+filepath.Base(image)+"  ", "%")
	id := strings.TrimSpace(stdout)
	if v := k.ok("exec", "dev", "--", "cat", "/etc/debian_version"); !strings.HasPrefix(v, "12.") {
		t.Fatalf("debian_version: %q", v)
	}
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	sha := fileSHA256(t, image)
	if err != nil || l.BaseImageURL != image || l.BaseImageDigest != "sha256:"+sha {
		t.Fatalf("lock: %v %+v", err, l)
	}
	k.ok("pin")
	if m, err := loadManifest(filepath.Join(k.dir, "karapace.toml")); err != nil || m.BaseImage != "file://"+image+"#sha256="+sha {
		t.Fatalf("pinned: %v %+v", err, m)
	}
	if got := strings.TrimSpace(k.ok("build", "--require-pinned-image", "--locked")); got != id {
		t.Fatalf("pinned build: %s, want %s", got, id)
	}
}

// An image may not make karapace write without bound: what it
// decompresses to, the bytes and the entries of the tree it unpacks to
// all have limits, set in [limits] of the configuration and named by the
// refusal, which leaves nothing behind.
func TestImageInputBounds(t *testing.T) {
	k := newKP(t)
	config := filepath.Join(k.home, ".config/karapace/config.toml")
	build := func(limits string, entries []*tar.Header) string {
		t.Helper()
		smallImage(t, filepath.Join(k.dir, "image.tar.xz"), entries)
		writeFile(t, k.home, ".config/karapace/config.toml", "[limits]\n"+limits)
		k.writeManifest("manifest_version = 1\n[base]\nimage = \"./image.tar.xz\"\n[runtime]\nbackend = \"mock\"\n")
		return k.fails(1, "the most", "build")
	}
	dir := &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}
	// 8 MiB of one byte: some kilobytes of xz.
	bomb := []*tar.Header{dir, {Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 8 << 20}}
	mustContain(t, "image size", build(`image_max_size = "1M"`+"\n", bomb),
		"image image.tar.xz decompresses to more than 1.0 MiB, the most an image may ([limits] image_max_size in "+config+")")
	assertNothingHalfMade(t, k)
	mustContain(t, "tree size", build(`tree_max_size = "1M"`+"\n", bomb),
		`entry "zeros": more than 1.0 MiB of files, the most one unpack may write ([limits] tree_max_size in `+config+")")
	assertNothingHalfMade(t, k)
	many := []*tar.Header{dir}
	for i := range 20 {
		many = append(many, &tar.Header{Name: fmt.Sprintf("f%02d", i), Typeflag: tar.TypeReg, Mode: 0o644})
	}
	mustContain(t, "entries", build("tree_max_entries = 10\n", many),
		`entry "f09": more than 10 entries, the most one unpack may create ([limits] tree_max_entries in `+config+")")
	assertNothingHalfMade(t, k)
	// Within the limits, the same image builds.
	writeFile(t, k.home, ".config/karapace/config.toml", "[limits]\nimage_max_size = 16777216\ntree_max_entries = 21\n")
	k.ok("build")

	// The limits are checked like any key of the file.
	for _, c := range []struct{ body, want string }{
		{`image_max_size = "lots"`, `limits.image_max_size`},
		{`tree_max_size = -1`, `limits.tree_max_size`},
		{`tree_max_entries = 0`, `out of range`},
		{`tree_max_entries = "10"`, `expected an integer`},
		{`max_layers = 3`, `max_layers`},
	} {
		writeFile(t, k.home, ".config/karapace/config.toml", "[limits]\n"+c.body+"\n")
		k.fails(exitManifest, c.want, "build")
	}
}
