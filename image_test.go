package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseImageRef(t *testing.T) {
	d := strings.Repeat("0f", 32)
	for _, tc := range []struct {
		in, kind, name, algo string
	}{
		{"debian/bookworm", imageAlias, "debian/bookworm", ""},
		{"rolling", imageAlias, "rolling", ""},
		{"images:fedora/41", imageLXC, "fedora/41", ""},
		{"https://h/x.tar.xz", imageURL, "https://h/x.tar.xz", ""},
		{"https://h/x.tar.xz#sha256=" + d, imageURL, "https://h/x.tar.xz", "sha256"},
		{"file:///srv/x.tar#blake3=" + d, imageFile, "/srv/x.tar", "blake3"},
		{"./rootfs.tar.gz", imageFile, "./rootfs.tar.gz", ""},
		{"/abs/rootfs.tar", imageFile, "/abs/rootfs.tar", ""},
	} {
		r, err := parseImageRef(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if r.Kind != tc.kind || r.Name != tc.name || r.DigestAlgo != tc.algo || r.pinned() != (tc.algo != "") {
			t.Errorf("%s: got %+v", tc.in, r)
		}
	}
	for _, bad := range []string{"", "Debian", "ftp://x/y", "a b", "https://", "file://host/x", "x#sha256=" + d,
		"https://h/x#sha1=" + d, "https://h/x#sha256=" + strings.ToUpper(d), "images:", "../..", "/"} {
		if _, err := parseImageRef(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

const pinManifest = `# my project
manifest_version = 1

[base]
# where the image comes from
image = "%s"   # keep this comment

[system]
packages = ["git"]
`

func TestPinFileAndURL(t *testing.T) {
	dir := t.TempDir()
	tarball := writeFile(t, dir, "rootfs.tar", "pretend this is a tarball")
	sum := sha256.Sum256([]byte("pretend this is a tarball"))
	digest := hex.EncodeToString(sum[:])

	env := map[string]string{"KARAPACE_STORE": filepath.Join(dir, "store")}
	mp := writeFile(t, dir, "karapace.toml", strings.Replace(pinManifest, "%s", "./rootfs.tar", 1))
	code, _, errOut := runCLI(t, env, "pin", "--check", mp)
	if code != exitFailure {
		t.Fatalf("--check on unpinned: exit %d", code)
	}
	mustContain(t, "stderr", errOut, `base.image "./rootfs.tar" is not pinned`)

	code, out, errOut := runCLI(t, env, "pin", mp)
	if code != exitOK {
		t.Fatalf("pin: exit %d: %s", code, errOut)
	}
	mustContain(t, "stdout", out, "#sha256="+digest)
	got, _ := os.ReadFile(mp)
	want := strings.Replace(pinManifest, "%s", "./rootfs.tar#sha256="+digest, 1)
	if string(got) != want {
		t.Fatalf("rewritten manifest:\n%s\nwant:\n%s", got, want)
	}
	code, out, _ = runCLI(t, env, "--json", "pin", mp, "--check")
	if code != exitOK {
		t.Fatalf("--check on pinned: exit %d", code)
	}
	mustContain(t, "json", out, `"pinned": true`)

	// A pinned digest that no longer matches the file is refused, and the
	// manifest stays as it was.
	os.WriteFile(tarball, []byte("changed"), 0o644)
	code, _, errOut = runCLI(t, env, "pin", mp)
	if code != exitFailure {
		t.Fatalf("changed file: exit %d", code)
	}
	mustContain(t, "stderr", errOut, "but "+digest+" was expected")
	if again, _ := os.ReadFile(mp); string(again) != want {
		t.Fatal("manifest changed on failure")
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/img.tar" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("pretend this is a tarball"))
	}))
	defer srv.Close()
	mp2 := writeFile(t, dir, "url/karapace.toml", strings.Replace(pinManifest, "%s", srv.URL+"/img.tar", 1))
	// Plain http pins only what the download gave: on request.
	code, _, errOut = runCLI(t, env, "pin", mp2)
	if code != exitManifest {
		t.Fatalf("pin of a plain http URL: exit %d: %s", code, errOut)
	}
	mustContain(t, "stderr", errOut, mp2+`: base.image "`+srv.URL+`/img.tar" is downloaded over plain http and pinned to no digest`, "--allow-insecure")
	if code, _, errOut := runCLI(t, env, "pin", "--allow-insecure", mp2); code != exitOK {
		t.Fatalf("pin URL: %d %s", code, errOut)
	}
	m, err := loadManifest(mp2)
	if err != nil || m.BaseImage != srv.URL+"/img.tar#sha256="+digest {
		t.Fatalf("pinned URL manifest: %v %+v", err, m)
	}
	mp3 := writeFile(t, dir, "404/karapace.toml", strings.Replace(pinManifest, "%s", srv.URL+"/missing.tar", 1))
	code, _, errOut = runCLI(t, env, "pin", "--allow-insecure", mp3)
	if code != exitFailure {
		t.Fatalf("404: exit %d", code)
	}
	mustContain(t, "stderr", errOut, "server answered 404 Not Found")
	// The URL's bytes went into the image cache, by digest.
	if _, err := os.Stat(filepath.Join(dir, "store", "images", "sha256-"+digest, "image")); err != nil {
		t.Fatalf("pinned URL not cached: %v", err)
	}
}

// fakeSimplestreams serves an index on loopback with one amd64 (here:
// this machine's architecture) default image for each of the server's
// aliases named, filed at images/ALIAS/rootfs.tar.xz.
func fakeSimplestreams(t *testing.T, serverAliases ...string) *httptest.Server {
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64", "386": "i386", "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}[runtime.GOARCH]
	var products []string
	for _, a := range serverAliases {
		sum := sha256.Sum256([]byte(a))
		products = append(products, fmt.Sprintf(`%q:{"aliases":"%s/default,%s","arch":%q,"variant":"default","versions":{"20250101_00:00":{"items":{"root.tar.xz":{"ftype":"root.tar.xz","path":"images/%s/rootfs.tar.xz","sha256":"%x","size":1}}}}}`,
			strings.ReplaceAll(a, "/", ":")+":"+arch+":default", a, a, arch, a, sum))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/streams/v1/index.json":
			fmt.Fprint(w, `{"format":"index:1.0","index":{"images":{"datatype":"image-downloads","path":"streams/v1/images.json"}}}`)
		case "/streams/v1/images.json":
			fmt.Fprintf(w, `{"format":"products:1.0","products":{%s}}`, strings.Join(products, ","))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Every alias of the SPEC resolves, bare and after images:, to the image
// server's name for it; an unknown one is an error listing the known ones.
func TestImageAliasTable(t *testing.T) {
	want := map[string]string{
		"rolling": "opensuse/tumbleweed", "opensuse": "opensuse/tumbleweed", "opensuse/tumbleweed": "opensuse/tumbleweed",
		"tumbleweed": "opensuse/tumbleweed", "opensuse/leap": "opensuse/15.6", "leap": "opensuse/15.6",
		"ubuntu": "ubuntu/noble", "ubuntu/24.04": "ubuntu/noble", "ubuntu/noble": "ubuntu/noble",
		"ubuntu/22.04": "ubuntu/jammy", "ubuntu/jammy": "ubuntu/jammy",
		"ubuntu/20.04": "ubuntu/focal", "ubuntu/focal": "ubuntu/focal",
		"ubuntu/24.10": "ubuntu/oracular", "ubuntu/oracular": "ubuntu/oracular",
		"debian": "debian/bookworm", "debian/bookworm": "debian/bookworm", "debian/12": "debian/bookworm",
		"debian/trixie": "debian/trixie", "debian/13": "debian/trixie", "debian/sid": "debian/sid",
		"fedora": "fedora/42", "fedora/40": "fedora/40", "fedora/41": "fedora/41", "fedora/42": "fedora/42",
		"arch": "archlinux", "archlinux": "archlinux",
	}
	seen := map[string]bool{}
	var serverAliases []string
	for _, a := range want {
		if !seen[a] {
			seen[a] = true
			serverAliases = append(serverAliases, a)
		}
	}
	// An alias of the server's own that is not one of ours.
	serverAliases = append(serverAliases, "alpine/3.20")
	srv := fakeSimplestreams(t, serverAliases...)
	images, err := newImageEnv(func(k string) string {
		return map[string]string{"KARAPACE_IMAGE_SERVER": srv.URL, "XDG_CONFIG_HOME": t.TempDir()}[k]
	}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(image string) (imageSource, error) {
		ref, err := parseImageRef(image)
		if err != nil {
			t.Fatalf("%s: %v", image, err)
		}
		return images.resolve(ref, t.TempDir())
	}
	for ours, theirs := range want {
		for _, image := range []string{ours, "images:" + ours} {
			src, err := resolve(image)
			sum := sha256.Sum256([]byte(theirs))
			if err != nil || src.Location != srv.URL+"/images/"+theirs+"/rootfs.tar.xz" || src.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("%s: got %+v, %v; want the image of %s", image, src, err, theirs)
			}
		}
	}
	if src, err := resolve("images:alpine/3.20"); err != nil || !strings.HasSuffix(src.Location, "/images/alpine/3.20/rootfs.tar.xz") {
		t.Errorf("images:alpine/3.20: %+v %v", src, err)
	}
	for _, image := range []string{"nonsense", "images:nonsense", "ubuntu/25.04"} {
		_, err := resolve(image)
		if exitCodeOf(err) != exitManifest {
			t.Fatalf("%s: exit %d: %v", image, exitCodeOf(err), err)
		}
		mustContain(t, image, err.Error(), strconv.Quote(strings.TrimPrefix(image, "images:")), "known aliases: arch, archlinux, debian, debian/12,", "ubuntu/noble")
	}
	if len(lxcAliases) != len(want) {
		t.Errorf("the alias table has %d entries, the test knows %d", len(lxcAliases), len(want))
	}
}

// KARAPACE_IMAGE_SERVER and the mirror variables are held to what the
// config's values are: http(s) URLs.
func TestImageServerFromEnvironment(t *testing.T) {
	env := map[string]string{"XDG_CONFIG_HOME": t.TempDir()}
	getenv := func(k string) string { return env[k] }
	for _, bad := range []string{"ftp://mirror.example/lxc", "mirror.example", "file:///srv/lxc"} {
		env["KARAPACE_IMAGE_SERVER"] = bad
		_, err := newImageEnv(getenv, false, nil)
		if err == nil || exitCodeOf(err) != exitFailure || !strings.Contains(err.Error(), "KARAPACE_IMAGE_SERVER="+strconv.Quote(bad)+" is not an http(s) URL") {
			t.Errorf("%s: %v", bad, err)
		}
	}
	delete(env, "KARAPACE_IMAGE_SERVER")
	env["KARAPACE_DEBIAN_MIRROR"] = "file:///srv/debian"
	if _, err := newImageEnv(getenv, false, nil); err == nil || !strings.Contains(err.Error(), `KARAPACE_DEBIAN_MIRROR="file:///srv/debian" is not an http(s) URL`) {
		t.Errorf("a file mirror: %v", err)
	}
	delete(env, "KARAPACE_DEBIAN_MIRROR")
	env["KARAPACE_IMAGE_SERVER"] = "https://mirror.example/lxc/"
	if e, err := newImageEnv(getenv, false, nil); err != nil || e.server != "https://mirror.example/lxc" {
		t.Fatalf("%+v %v", e, err)
	}
}

// A relative image is locked as given: the project moves, or is checked
// out elsewhere with an empty store, and its lock still builds, to the
// same environment.
func TestImageRelativePathLock(t *testing.T) {
	k := newKP(t)
	os.Mkdir(filepath.Join(k.dir, "images"), 0o755)
	tinyImage(t, filepath.Join(k.dir, "images", "rootfs.tar.gz"))
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"./images/rootfs.tar.gz\"\n[runtime]\nbackend = \"mock\"\n")
	id := strings.TrimSpace(k.ok("build"))
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil || l.BaseImageURL != "./images/rootfs.tar.gz" {
		t.Fatalf("lock: %v %+v", err, l)
	}
	moved := filepath.Join(k.base, "elsewhere", "checkout")
	os.MkdirAll(filepath.Dir(moved), 0o755)
	if err := os.Rename(k.dir, moved); err != nil {
		t.Fatal(err)
	}
	k.dir = moved
	k.env = append(k.env, "KARAPACE_STORE="+filepath.Join(k.base, "other-store"))
	lock, _ := os.ReadFile(filepath.Join(moved, "karapace.lock"))
	for _, args := range [][]string{{"build", "--locked"}, {"build"}} {
		if got := strings.TrimSpace(k.ok(args...)); got != id {
			t.Fatalf("%v in the moved checkout: %s, want %s", args, got, id)
		}
	}
	if again, _ := os.ReadFile(filepath.Join(moved, "karapace.lock")); string(again) != string(lock) {
		t.Fatalf("the lock changed:\n%s\nwas:\n%s", again, lock)
	}
}

// pin respects the source: a bare Debian alias is bootstrapped from the
// archive, so pin refuses it with the alternatives instead of pinning the
// image server's image of the same name; after images: (or with the LXC
// source configured) it pins the server's image.
func TestPinArchiveAlias(t *testing.T) {
	var requests []string
	var mu sync.Mutex
	ss := fakeSimplestreams(t, "debian/bookworm")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, r.URL.Path)
		mu.Unlock()
		http.Redirect(w, r, ss.URL+r.URL.Path, http.StatusFound)
	}))
	defer srv.Close()
	dir := t.TempDir()
	env := map[string]string{"KARAPACE_STORE": filepath.Join(dir, "store"), "XDG_CONFIG_HOME": dir, "KARAPACE_IMAGE_SERVER": srv.URL}
	body := strings.Replace(pinManifest, "%s", "debian/bookworm", 1)
	mp := writeFile(t, dir, "karapace.toml", body)
	code, _, errOut := runCLI(t, env, "pin", mp)
	if code != exitManifest {
		t.Fatalf("pin debian/bookworm: exit %d\n%s", code, errOut)
	}
	mustContain(t, "pin", errOut, `base.image "debian/bookworm" is bootstrapped from the debian archive (http://deb.debian.org/debian, suite bookworm)`,
		`image = "images:debian/bookworm"`, "build --locked", `debian_mirror = "https://snapshot.debian.org/archive/debian/`)
	if got, _ := os.ReadFile(mp); string(got) != body {
		t.Fatalf("the manifest changed:\n%s", got)
	}
	if len(requests) != 0 {
		t.Fatalf("pin asked the image server: %v", requests)
	}
	code, _, errOut = runCLI(t, env, "pin", "--check", mp)
	if code != exitFailure {
		t.Fatalf("pin --check: exit %d", code)
	}
	mustContain(t, "pin --check", errOut, "bootstrapped from the debian archive, which 'karapace pin' cannot pin")

	sum := sha256.Sum256([]byte("debian/bookworm"))
	want := srv.URL + "/images/debian/bookworm/rootfs.tar.xz#sha256=" + hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		image  string
		source string
	}{{"images:debian/bookworm", ""}, {"debian/bookworm", "lxc"}} {
		env["KARAPACE_IMAGE_SOURCE"] = tc.source
		writeFile(t, dir, "karapace.toml", strings.Replace(pinManifest, "%s", tc.image, 1))
		if code, _, errOut := runCLI(t, env, "pin", mp); code != exitOK {
			t.Fatalf("pin %s (source %q): exit %d\n%s", tc.image, tc.source, code, errOut)
		}
		if m, err := loadManifest(mp); err != nil || m.BaseImage != want {
			t.Fatalf("pin %s (source %q): %v %q, want %q", tc.image, tc.source, err, m.BaseImage, want)
		}
	}
}

// pin --write-lock pins the image, then builds, writing the lock.
func TestPinWriteLock(t *testing.T) {
	k := newMockKP(t, `"alpha"`)
	k.ok("pin", "--write-lock")
	m, err := loadManifest(filepath.Join(k.dir, "karapace.toml"))
	if err != nil || !strings.HasPrefix(m.BaseImage, "./image.tar.gz#sha256=") {
		t.Fatalf("pinned manifest: %v %q", err, m.BaseImage)
	}
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil || "sha256:"+strings.TrimPrefix(m.BaseImage, "./image.tar.gz#sha256=") != l.BaseImageDigest {
		t.Fatalf("lock: %v %+v", err, l)
	}
	k.ok("pin", "--check")
	k.ok("inspect", l.EnvID)
	k.ok("build", "--locked", "--require-pinned-image")
}

// A base.image that is not a regular file (a device, a FIFO, a
// directory) would hang a build or read forever: build and pin refuse it
// at once, naming base.image, and the store keeps nothing.
func TestImageNotRegularFile(t *testing.T) {
	k := newKP(t)
	fifo := filepath.Join(k.dir, "fifo.tar")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(k.dir, "dir.tar"), 0o755)
	for _, c := range []struct{ image, what string }{
		{"/dev/zero", "/dev/zero is a character device"},
		{"./fifo.tar", fifo + " is a FIFO"},
		{"./dir.tar", filepath.Join(k.dir, "dir.tar") + " is a directory"},
	} {
		mp := k.writeManifest("manifest_version = 1\n[base]\nimage = \"" + c.image + "\"\n[runtime]\nbackend = \"mock\"\n")
		want := `base.image "` + c.image + `": ` + c.what + ", not an image file"
		k.fails(exitManifest, want, "build")
		k.fails(exitManifest, want, "pin")
		if got, _ := os.ReadFile(mp); !strings.Contains(string(got), c.image+`"`) {
			t.Fatalf("the manifest changed:\n%s", got)
		}
		assertNothingHalfMade(t, k)
	}
	// What an open finds is checked, not what the path named before: a
	// FIFO is refused without waiting for a writer.
	if _, err := openImageFile(fifo); err == nil || !strings.Contains(err.Error(), "is a FIFO, not an image file") {
		t.Fatalf("open of a FIFO: %v", err)
	}
	if _, _, err := fileDigests("/dev/zero"); err == nil || !strings.Contains(err.Error(), "is a character device") {
		t.Fatalf("digests of /dev/zero: %v", err)
	}
}

// An http:// base.image that no digest pins is built or pinned only with
// --allow-insecure; pinned by the manifest or by the lock, it needs none.
func TestImageHTTPNeedsPin(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	img, err := os.ReadFile(filepath.Join(k.dir, "image.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(img) }))
	t.Cleanup(srv.Close)
	url := srv.URL + "/image.tar.gz"
	manifest := "manifest_version = 1\n[base]\nimage = %q\n[runtime]\nbackend = \"mock\"\n"
	k.writeManifest(fmt.Sprintf(manifest, url))
	for _, cmd := range []string{"build", "rebuild"} {
		k.fails(exitManifest, `base.image "`+url+`" is downloaded over plain http and pinned to no digest, so anyone on the way could swap it`, cmd)
		assertNothingHalfMade(t, k)
	}
	id := strings.TrimSpace(k.ok("build", "--allow-insecure"))
	if out := k.ok("build"); out != id+"\n" { // the lock pins the digest now
		t.Fatalf("build from the lock: %q, want %s", out, id)
	}
	sum := sha256.Sum256(img)
	os.Remove(filepath.Join(k.dir, "karapace.lock"))
	k.writeManifest(fmt.Sprintf(manifest, url+"#sha256="+hex.EncodeToString(sum[:])))
	if out := k.ok("build"); out != id+"\n" {
		t.Fatalf("build of the pinned URL: %q, want %s", out, id)
	}
}
