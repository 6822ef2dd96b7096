package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if code, _, errOut := runCLI(t, env, "pin", mp2); code != exitOK {
		t.Fatalf("pin URL: %d %s", code, errOut)
	}
	m, err := loadManifest(mp2)
	if err != nil || m.BaseImage != srv.URL+"/img.tar#sha256="+digest {
		t.Fatalf("pinned URL manifest: %v %+v", err, m)
	}
	mp3 := writeFile(t, dir, "404/karapace.toml", strings.Replace(pinManifest, "%s", srv.URL+"/missing.tar", 1))
	code, _, errOut = runCLI(t, env, "pin", mp3)
	if code != exitFailure {
		t.Fatalf("404: exit %d", code)
	}
	mustContain(t, "stderr", errOut, "server answered 404 Not Found")
	// The URL's bytes went into the image cache, by digest.
	if _, err := os.Stat(filepath.Join(dir, "store", "images", "sha256-"+digest, "image")); err != nil {
		t.Fatalf("pinned URL not cached: %v", err)
	}
}
