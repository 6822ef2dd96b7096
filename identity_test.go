package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files: identity vectors (testdata/identity), terminal UI screens (testdata/tui)")

// goldenLocks are the inputs of the golden vectors: if any env_id they
// give changes, identity changed, and every existing lock with it.
func goldenLocks(t *testing.T) map[string]*lockFile {
	t.Helper()
	parse := func(src string) *manifest {
		m, err := parseManifest("golden.toml", "/project/karapace.toml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	zero := "sha256:" + strings.Repeat("0", 64)
	b3 := "blake3:" + strings.Repeat("7f", 32)
	return map[string]*lockFile{
		"minimal": newLock(parse("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n"), zero, "", nil),
		"packages": newLock(parse("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n[system]\npackages = [\"git\", \"curl\"]\n"), b3,
			"http://deb.debian.org/debian", []lockedPackage{{"git", "1:2.39.5-0+deb12u2"}, {"curl", "7.88.1-10+deb12u12"}, {"libcurl4", "7.88.1-10+deb12u12"}}),
		"full":   newLock(parse(fullManifest), zero, "https://images.example/rootfs.tar.xz", []lockedPackage{{"clang", "1:14.0-55.7~deb12u1"}, {"curl", "7.88.1"}, {"git", "2.39"}}),
		"mounts": newLock(parse("manifest_version = 1\n[base]\nimage = \"./rootfs.tar\"\n[mounts]\nsrc = \"./src:/src:ro\"\nhome = \"~/.cache:/cache\"\n[runtime]\nnetwork_isolation = true\n"), b3, "", nil),
		"no-requested": withoutRequested(newLock(parse("manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n[system]\npackages = [\"git\", \"curl\"]\n"), b3,
			"http://deb.debian.org/debian", []lockedPackage{{"git", "1:2.39.5-0+deb12u2"}, {"curl", "7.88.1-10+deb12u12"}, {"libcurl4", "7.88.1-10+deb12u12"}})),
	}
}

// withoutRequested is l as karapace wrote it before locks recorded the
// requested packages: such a lock must keep its identity.
func withoutRequested(l *lockFile) *lockFile {
	l.Requested = nil
	l.EnvID, l.ShortID = l.computeID()
	return l
}

func TestIdentityGoldenVectors(t *testing.T) {
	dir := filepath.Join("testdata", "identity")
	locks := goldenLocks(t)
	names := make([]string, 0, len(locks))
	for n := range locks {
		names = append(names, n)
	}
	sort.Strings(names)
	if *updateGolden {
		var list bytes.Buffer
		for _, n := range names {
			if err := writeLock(filepath.Join(dir, n+".lock"), locks[n]); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&list, "%s %s\n", n, locks[n].EnvID)
		}
		if err := os.WriteFile(filepath.Join(dir, "env_ids.txt"), list.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(filepath.Join(dir, "env_ids.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n, id, _ := strings.Cut(sc.Text(), " ")
		want[n] = id
	}
	if len(want) != len(locks) {
		t.Fatalf("env_ids.txt has %d vectors, want %d", len(want), len(locks))
	}
	for _, n := range names {
		l := locks[n]
		if l.EnvID != want[n] {
			t.Errorf("%s: env_id %s, golden %s: the identity algorithm changed", n, l.EnvID, want[n])
		}
		path := filepath.Join(dir, n+".lock")
		onDisk, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := parseLock(path, onDisk)
		if err != nil {
			t.Fatal(err)
		}
		if err := parsed.verifyIntegrity(); err != nil {
			t.Error(err)
		}
		if parsed.EnvID != want[n] || parsed.ShortID != want[n][:12] {
			t.Errorf("%s: lock file says %s", n, parsed.EnvID)
		}
		again, _ := parsed.encode()
		if !bytes.Equal(again, onDisk) {
			t.Errorf("%s: the lock file format changed:\n%s", n, again)
		}
	}
}

func TestPreviewIDFollowsMeaning(t *testing.T) {
	a, _ := parseManifest("a", "/p/karapace.toml", []byte("manifest_version = 1\n[base]\nimage = \"debian\"\n[system]\npackages = [\"b\", \"a\"]\n"))
	b, _ := parseManifest("b", "/p/karapace.toml", []byte("manifest_version=1\nbase.image='debian'\nsystem.packages=['a','b','a']\n"))
	c, _ := parseManifest("c", "/p/karapace.toml", []byte("manifest_version = 1\n[base]\nimage = \"debian\"\n[system]\npackages = [\"a\"]\n"))
	if a.previewID() != b.previewID() {
		t.Error("same meaning, different preliminary id")
	}
	if a.previewID() == c.previewID() {
		t.Error("different packages, same preliminary id")
	}
}

func BenchmarkIdentity(b *testing.B) {
	m, _ := parseManifest("k.toml", "/w/k.toml", []byte(fullManifest))
	l := newLock(m, "sha256:"+strings.Repeat("0", 64), "", []lockedPackage{{"git", "1"}, {"curl", "2"}})
	for b.Loop() {
		l.computeID()
	}
}
