package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// packTimes packs dir with a clamp and returns each entry's time.
func packTimes(t *testing.T, dir string, clamp int64) (map[string]int64, []byte) {
	t.Helper()
	var buf bytes.Buffer
	if _, err := packLayerClamped(dir, &buf, clamp); err != nil {
		t.Fatal(err)
	}
	times := map[string]int64{}
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := hdr.PAXRecords["mtime"]; ok {
			t.Fatalf("%s: a sub-second time in the stream: %v", hdr.Name, hdr.PAXRecords)
		}
		times[strings.TrimSuffix(hdr.Name, "/")] = hdr.ModTime.Unix()
	}
	return times, buf.Bytes()
}

// What a package gave keeps its time; what the run made gets the clamp,
// whenever the run was: two runs at other times give the same bytes.
func TestPackLayerClamped(t *testing.T) {
	const pkgTime, clamp = 1000000000, 1500000000
	tree := func(runTime int64) string {
		dir := t.TempDir()
		os.Chmod(dir, 0o755)
		writeFile(t, dir, "usr/bin/tool", "from a package")
		writeFile(t, dir, "etc/made-by-the-run", "generated")
		writeFile(t, dir, "old", "before 1970")
		os.Symlink("tool", filepath.Join(dir, "usr/bin/alias"))
		set := func(p string, sec, nsec int64) {
			ts := []unix.Timespec{{Sec: sec, Nsec: nsec}, {Sec: sec, Nsec: nsec}}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, p), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}
		set("usr/bin/tool", pkgTime, 700000000) // the fraction is dropped
		set("usr/bin/alias", pkgTime-5, 0)
		set("old", -86400, 0)
		set("etc/made-by-the-run", runTime, 123)
		for _, d := range []string{"usr/bin", "usr", "etc", "."} {
			set(d, runTime, 0)
		}
		return dir
	}
	times, first := packTimes(t, tree(clamp+1), clamp)
	want := map[string]int64{".": clamp, "usr": clamp, "usr/bin": clamp, "usr/bin/tool": pkgTime, "usr/bin/alias": pkgTime - 5,
		"etc": clamp, "etc/made-by-the-run": clamp, "old": 0}
	for p, w := range want {
		if times[p] != w {
			t.Errorf("%s: time %d, want %d", p, times[p], w)
		}
	}
	if _, again := packTimes(t, tree(clamp+86400*30), clamp); !bytes.Equal(first, again) {
		t.Fatal("two runs a month apart packed to other bytes")
	}
	// No clamp: every time is 0, as layers always had.
	zero, _ := packTimes(t, tree(clamp+1), 0)
	for p, got := range zero {
		if got != 0 {
			t.Errorf("clamp 0: %s has time %d", p, got)
		}
	}
}

// fakeDeb is the start of a .deb: the ar magic and its debian-binary
// member, dated sec.
func fakeDeb(name string, sec int64) string {
	return fmt.Sprintf("!<arch>\n%-16s%-12d%-6d%-6d%-8s%-10d`\n2.0\n", name, sec, 0, 0, "100644", 4)
}

func TestDebBuildTime(t *testing.T) {
	for _, c := range []struct {
		name, data string
		want       int64
		err        string
	}{
		{"dated", fakeDeb("debian-binary", 1777403070), 1777403070, ""},
		{"GNU ar name", fakeDeb("debian-binary/", 42), 42, ""},
		{"not ar", "PK\x03\x04" + strings.Repeat("x", 80), 0, "no ar magic"},
		{"short", "!<arch>\n", 0, "not a .deb"},
		{"other first member", fakeDeb("control.tar.xz", 42), 0, "not debian-binary"},
		{"negative", fakeDeb("debian-binary", -5), 0, "not a time"},
		{"not a number", strings.Replace(fakeDeb("debian-binary", 12345), "12345", "12x45", 1), 0, "not a time"},
		{"bad terminator", strings.Replace(fakeDeb("debian-binary", 1), "`\n", "!\n", 1), 0, "terminator"},
	} {
		got, err := debBuildTime(strings.NewReader(c.data))
		if c.err == "" && (err != nil || got != c.want) {
			t.Errorf("%s: %d, %v; want %d", c.name, got, err, c.want)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %d, %v; want an error with %q", c.name, got, err, c.err)
		}
	}
}

// The packages a build downloaded are read where the build left them,
// which the build controls: nothing there leads out of the layer or hangs.
func TestDownloadedDebsTime(t *testing.T) {
	root := t.TempDir()
	const dir = "var/cache/apt/archives"
	if got, err := downloadedDebsTime(root, dir); err != nil || got != 0 {
		t.Fatalf("no downloads: %d, %v", got, err)
	}
	writeFile(t, root, dir+"/a_1_amd64.deb", fakeDeb("debian-binary", 1600000000))
	writeFile(t, root, dir+"/b_2_all.deb", fakeDeb("debian-binary", 1700000000))
	writeFile(t, root, dir+"/lock", "")
	os.MkdirAll(filepath.Join(root, dir, "partial"), 0o700)
	if got, err := downloadedDebsTime(root, dir); err != nil || got != 1700000000 {
		t.Fatalf("two packages: %d, %v", got, err)
	}
	outside := writeFile(t, t.TempDir(), "c.deb", fakeDeb("debian-binary", 1900000000))
	for name, plant := range map[string]func(p string) error{
		"symlink out": func(p string) error { return os.Symlink(outside, p) },
		"fifo":        func(p string) error { return unix.Mkfifo(p, 0o644) },
		"directory":   func(p string) error { return os.Mkdir(p, 0o755) },
		"not a deb":   func(p string) error { return os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644) },
	} {
		p := filepath.Join(root, dir, "z.deb")
		if err := plant(p); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := downloadedDebsTime(root, dir); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "z.deb") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: reading the downloads hangs", name)
		}
		os.RemoveAll(p)
	}
	// The directory itself planted as a link out of the layer.
	other := t.TempDir()
	writeFile(t, other, "x.deb", fakeDeb("debian-binary", 1900000000))
	os.RemoveAll(filepath.Join(root, dir))
	os.Symlink(other, filepath.Join(root, dir))
	if got, err := downloadedDebsTime(root, dir); err == nil {
		t.Fatalf("followed a symlinked directory: %d", got)
	}
}

// tarOf is a layer stream of the given entries.
func tarOf(t *testing.T, entries ...*tar.Header) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := *e
		body := h.Linkname
		if h.Typeflag == tar.TypeReg {
			body, h.Linkname = h.Linkname, ""
			h.Size = int64(len(body))
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return &buf
}

func TestDiffLayers(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	// For regular files Linkname carries the content (see tarOf).
	file := func(name, body string, mode int64, uid int, mt time.Time, xattrs map[string]string) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Linkname: body, Mode: mode, Uid: uid, Gid: uid, ModTime: mt, PAXRecords: xattrs}
	}
	common := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: t0},
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: t0},
		file("etc/same", "same", 0o644, 0, t0, nil),
	}
	a := tarOf(t, append(slices.Clone(common),
		file("etc/content", "one", 0o644, 0, t0, nil),
		file("etc/mode", "x", 0o644, 0, t0, nil),
		file("etc/owner", "x", 0o644, 0, t0, nil),
		file("etc/time", "x", 0o644, 0, t0, nil),
		file("etc/xattr", "x", 0o755, 0, t0, map[string]string{"SCHILY.xattr.security.capability": "a"}),
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "one", ModTime: t0},
		file("etc/kind", "x", 0o644, 0, t0, nil),
		file("etc/only-a", "x", 0o644, 0, t0, nil))...)
	b := tarOf(t, append(slices.Clone(common),
		file("etc/content", "two", 0o644, 0, t0, nil),
		file("etc/mode", "x", 0o600, 0, t0, nil),
		file("etc/owner", "x", 0o644, 100, t0, nil),
		file("etc/time", "x", 0o644, 0, t0.Add(time.Hour), nil),
		file("etc/xattr", "x", 0o755, 0, t0, map[string]string{"SCHILY.xattr.security.capability": "b"}),
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "two", ModTime: t0},
		&tar.Header{Typeflag: tar.TypeDir, Name: "etc/kind/", Mode: 0o755, ModTime: t0},
		file("etc/only-b", "x", 0o644, 0, t0, nil))...)
	diffs, err := diffLayers(a, b, "A", "B")
	if err != nil {
		t.Fatal(err)
	}
	want := []layerDifference{
		{"etc/content", "content differs (3 vs 3 bytes) (A vs B)"},
		{"etc/kind", "a regular file vs a directory; content differs (1 vs 0 bytes); mode 0644 vs 0755 (A vs B)"},
		{"etc/link", `link target "one" vs "two" (A vs B)`},
		{"etc/mode", "mode 0644 vs 0600 (A vs B)"},
		{"etc/only-a", "only in A"},
		{"etc/only-b", "only in B"},
		{"etc/owner", "owner 0:0 vs 100:100 (A vs B)"},
		{"etc/time", "time 2023-11-14T22:13:20Z vs 2023-11-14T23:13:20Z (A vs B)"},
		{"etc/xattr", "xattrs [security.capability=a] vs [security.capability=b] (A vs B)"},
	}
	if !slices.Equal(diffs, want) {
		t.Fatalf("differences:\n%v\nwant\n%v", diffs, want)
	}
	same, err := diffLayers(tarOf(t, common...), tarOf(t, common...), "A", "B")
	if err != nil || len(same) != 0 {
		t.Fatalf("the same layer twice: %v, %v", same, err)
	}
	if _, err := diffLayers(strings.NewReader("not a tar, but long enough to be read as a header block"+strings.Repeat("x", 600)), tarOf(t, common...), "A", "B"); err == nil {
		t.Fatal("a damaged stream compared without an error")
	}
}

// The table of what layers leave out is the one place: each entry says
// who leaves it and why, and is a pattern that stays in the layer.
func TestLayerJunkTable(t *testing.T) {
	who := map[string]bool{"bootstrap": true}
	for _, pm := range pkgManagers {
		who[pm.name] = true
	}
	seen := map[string]bool{}
	for _, j := range layerJunk {
		if !who[j.by] || len(j.why) < 10 || seen[j.glob] {
			t.Errorf("%+v: unknown owner, no reason, or listed twice", j)
		}
		seen[j.glob] = true
		if _, err := path.Match(j.glob, "x"); err != nil || path.IsAbs(j.glob) || strings.Contains(j.glob, "..") || path.Clean(j.glob) != j.glob {
			t.Errorf("%q is not a clean relative pattern", j.glob)
		}
	}
	for name := range who {
		if len(junkOf(name)) == 0 {
			t.Errorf("nothing is left out for %s", name)
		}
	}
	// Found differing between two builds of one lock (issue #13).
	for _, p := range []string{"var/cache/ldconfig/aux-cache", "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "var/log/apt/history.log", "var/log/dpkg.log", "var/cache/man/index.db", "var/cache/debconf/config.dat-old"} {
		if !slices.ContainsFunc(junkOf("apt"), func(g string) bool { ok, _ := path.Match(g, p); return ok }) {
			t.Errorf("%s is kept in apt's layers", p)
		}
	}
	// cleanTree applies them to a tree: the junk goes, the rest stays.
	dir := t.TempDir()
	for _, p := range []string{"var/cache/ldconfig/aux-cache", "var/cache/apt/pkgcache.bin", "var/log/apt/term.log", "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "var/lib/apt/lists/lock", "var/lib/apt/extended_states", "usr/bin/git"} {
		writeFile(t, dir, p, "x")
	}
	if err := cleanTree(dir, junkOf("apt")); err != nil {
		t.Fatal(err)
	}
	var left []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			left = append(left, rel)
		}
		return nil
	})
	if want := []string{"usr/bin/git", "var/lib/apt/extended_states", "var/lib/apt/lists/lock"}; !slices.Equal(left, want) {
		t.Fatalf("left %v, want %v", left, want)
	}
}

// A locked install names every package; the marks are then set as
// resolving would have left them.
func TestLockedAutos(t *testing.T) {
	closure := []lockedPackage{{"curl", "8"}, {"git", "2"}, {"libc6", "2.36-9"}, {"libcurl4", "8"}, {"perl-base", "5.36"}, {"zlib1g", "1.3"}}
	before := map[string]string{"libc6": "2.36-8", "perl-base": "5.34", "zlib1g": "1.2", "git": "2"}
	autoBefore := map[string]bool{"perl-base": true}
	got := lockedAutos(closure, []string{"curl", "git"}, before, autoBefore)
	// New and not asked for: libcurl4; upgraded and automatic before:
	// perl-base; upgraded but asked for by hand before: libc6, zlib1g.
	if want := []string{"libcurl4", "perl-base"}; !slices.Equal(got, want) {
		t.Fatalf("marked %v, want %v", got, want)
	}
	if got := lockedAutos(closure, nil, before, nil); got != nil {
		t.Fatalf("not a locked install: %v", got)
	}
}

// A bootstrapped base names the canonical archive, never the mirror.
func TestArchiveSources(t *testing.T) {
	spec := &archiveSpec{Distro: "debian", Suite: "bookworm", Components: []string{"main", "contrib"}, Arch: "amd64", Mirror: "http://mirror.example/debian"}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := finishArchiveTree(dir, spec); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, filepath.Join(dir, archiveSourcesPath(spec)))
	want := "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
	if got != want {
		t.Fatalf("sources:\n%s\nwant\n%s", got, want)
	}
	snap := archiveSources(spec, "https://snapshot.debian.org/archive/debian/20250101T000000Z")
	if !strings.HasSuffix(snap, "Check-Valid-Until: no\n") {
		t.Fatalf("a snapshot's sources:\n%s", snap)
	}
}

// The auditor's check on the mock backend: the same bytes pass; an
// environment whose layers are not its lock's fails with exit 3, naming
// the layer and the paths; the scratch store goes away either way.
func TestVerifyRebuildMock(t *testing.T) {
	k := newMockKP(t, `"alpha", "beta"`)
	id := strings.TrimSpace(k.ok("build"))
	out := k.ok("verify-store", "--rebuild", id[:8])
	mustContain(t, "rebuild", out, "base layer", "dependency layer", ": the same\n", "its lock gives the same bytes (2 layers)")
	var rep rebuildReport
	k.jsonOut(&rep, "verify-store", "--rebuild", id)
	if !rep.Same || rep.EnvID != id || len(rep.Layers) != 2 || rep.Layers[1].Role != "dependency" || rep.Layers[1].Stored != rep.Layers[1].Rebuilt {
		t.Fatalf("report: %+v", rep)
	}

	// Another environment's dependency layer, put in the first's metadata.
	k.writeManifest(mockManifest(`"alpha", "gamma"`))
	other := strings.TrimSpace(k.ok("build"))
	s, err := openStore(k.store)
	if err != nil {
		t.Fatal(err)
	}
	sl := mustLock(t, s, "test")
	m, err := s.getMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	o, err := s.getMeta(other)
	if err != nil {
		t.Fatal(err)
	}
	m.DependencyLayers = o.DependencyLayers
	if err := s.putMeta(m); err != nil {
		t.Fatal(err)
	}
	sl.unlock()
	code, out, errOut := k.run("verify-store", "--rebuild", id)
	if code != exitStore {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitStore, out, errOut)
	}
	mustContain(t, "rebuild", out, "dependency layer "+o.DependencyLayers[0]+": differs, rebuilt as ",
		"usr/share/karapace-mock/beta: only in the rebuild\n", "usr/share/karapace-mock/gamma: only in the store\n")
	mustContain(t, "rebuild", errOut, "gave other bytes than the store holds")
	code, out, _ = k.run("--json", "verify-store", "--rebuild", id)
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != exitStore || rep.Same || rep.Layers[0].Same != true || rep.Layers[1].Same {
		t.Fatalf("json: %d %v %+v", code, err, rep)
	}
	if d := rep.Layers[1].Differences; len(d) != 2 || d[0].Path != "usr/share/karapace-mock/beta" {
		t.Fatalf("differences: %+v", d)
	}
	if left, _ := filepath.Glob(k.store + "-rebuild-*"); len(left) != 0 {
		t.Fatalf("the scratch stores are left: %v", left)
	}
	k.fails(1, "no environment", "verify-store", "--rebuild", "nosuchenv")
}

// rootlessKP is newKP for the user name: its store, home and project are
// that user's, and karapace runs as it, from a copy of this binary.
func rootlessKP(t *testing.T, name string) *kpRun {
	t.Helper()
	u, err := user.Lookup(name)
	need(t, err == nil, "the user "+name+" with a subordinate ID range (test.sh makes it)")
	needTool(t, "runuser")
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	k := newKP(t)
	k.asUser = name
	k.userBinary = filepath.Join(k.base, "karapace")
	in, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(k.userBinary, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err == nil {
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{k.base, k.home, k.dir} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// closedMirror is a mirror URL where nothing listens: any fetch fails.
func closedMirror(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/debian"
}

// One lock with real packages (git, curl) on a Debian base bootstrapped
// from the archive, built twice: as root, here, and rootless, as the user
// karapace-test, by 'verify-store --rebuild' of the root-built environment
// imported into that user's store: another user, another store path,
// another mirror URL of the same archive, the lock given rather than
// resolved. Every layer must be the same bytes, and the rebuild names
// each path of a layer that is not.
//
// The root pass of the suite runs both builds: they then see one archive
// state (the snapshot proxies this test serves share one cache), and
// nothing has to be carried from one pass to the other, which the
// rootless pass of test.sh, half an hour later, could not trust to be
// the same archive. The rootless pass skips it: needRoot.
//
// On the way, the air-gapped case: the environment imported there builds
// --locked --offline from that store alone, with the mirror pointed at a
// closed port, reusing its layers; a store without it cannot.
func TestReproducibleRootAndRootless(t *testing.T) {
	needReal(t)
	needRoot(t, "it runs the rootless build itself, as karapace-test")
	rl := rootlessKP(t, "karapace-test")
	snap, other := newDebSnapshot(t), newDebSnapshot(t)
	if snap.mirror() == other.mirror() {
		t.Fatal("the two mirrors have one URL")
	}
	k := newKP(t)
	k.env = append(k.env, "KARAPACE_DEBIAN_MIRROR="+snap.mirror())
	manifest := "manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n[system]\npackages = [\"git\", \"curl\"]\n"
	k.writeManifest(manifest)
	id := strings.TrimSpace(k.ok("build"))
	var built struct {
		Environment envInfo `json:"environment"`
	}
	k.jsonOut(&built, "inspect", id)
	env := built.Environment
	if len(env.DependencyLayers) != 1 {
		t.Fatalf("layers: %+v", env)
	}
	if out := k.ok("exec", id, "--", "git", "--version"); !strings.HasPrefix(out, "git version 2.") {
		t.Fatalf("git: %q", out)
	}
	lock := readFile(t, filepath.Join(k.dir, "karapace.lock"))
	archive := filepath.Join(k.base, "env.tar")
	k.ok("export", id, archive)

	// Air-gapped: a store without the environment cannot build it.
	closed := closedMirror(t)
	k0 := newKP(t)
	k0.env = append(k0.env, "KARAPACE_DEBIAN_MIRROR="+closed)
	k0.writeManifest(manifest)
	writeFile(t, k0.dir, "karapace.lock", lock)
	k0.fails(exitFailure, "--offline", "build", "--locked", "--offline")

	// Rootless, with the environment imported: from the store alone.
	rl.env = append(rl.env, "KARAPACE_DEBIAN_MIRROR="+closed)
	rl.writeManifest(manifest)
	writeFile(t, rl.dir, "karapace.lock", lock)
	rl.ok("import", archive)
	layers := dirNames(t, filepath.Join(rl.store, "store", "layers"))
	if out := strings.TrimSpace(rl.ok("build", "--locked", "--offline")); out != id {
		t.Fatalf("the offline build gave %s, not %s", out, id)
	}
	var offline struct {
		Environment envInfo `json:"environment"`
	}
	rl.jsonOut(&offline, "inspect", id)
	if offline.Environment.BaseLayer != env.BaseLayer || !slices.Equal(offline.Environment.DependencyLayers, env.DependencyLayers) {
		t.Fatalf("the offline build has other layers: %+v, imported %+v", offline.Environment, env)
	}
	if now := dirNames(t, filepath.Join(rl.store, "store", "layers")); !slices.Equal(now, layers) {
		t.Fatalf("the offline build made layers: %v, imported %v", now, layers)
	}
	if _, err := os.Stat(filepath.Join(rl.store, "images", "debs")); err == nil {
		t.Fatal("the offline build downloaded packages")
	}
	if out := rl.ok("exec", id, "--", "curl", "--version"); !strings.HasPrefix(out, "curl 7.") && !strings.HasPrefix(out, "curl 8.") {
		t.Fatalf("curl, rootless, imported: %q", out)
	}

	// The rootless build, through the other mirror, compared layer by layer.
	rl.env[len(rl.env)-1] = "KARAPACE_DEBIAN_MIRROR=" + other.mirror()
	code, out, errOut := rl.run("--json", "verify-store", "--rebuild", id)
	var rep rebuildReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify-store --rebuild: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
	for _, l := range rep.Layers {
		if !l.Same {
			t.Errorf("%s layer: %s as root, %s rootless (%s)", l.Role, l.Stored, l.Rebuilt, l.Note)
			for _, d := range l.Differences {
				t.Errorf("  %s: %s", d.Path, d.Problem)
			}
		}
	}
	if t.Failed() || code != exitOK || !rep.Same {
		t.Fatalf("root and rootless builds of one lock differ (exit %d)\n%s", code, errOut)
	}
	if len(rep.Layers) != 2 || rep.Layers[0].Rebuilt != env.BaseLayer || rep.Layers[1].Rebuilt != env.DependencyLayers[0] {
		t.Fatalf("the rebuild compared %+v, not the layers %s %v", rep.Layers, env.BaseLayer, env.DependencyLayers)
	}
	t.Logf("root and rootless: base layer %s, dependency layer %s", env.BaseLayer, env.DependencyLayers[0])
	if left, _ := filepath.Glob(rl.store + "-rebuild-*"); len(left) != 0 {
		t.Fatalf("the scratch store is left: %v", left)
	}
	// The base names no mirror: neither the one it came from nor another.
	sources := k.ok("exec", id, "--", "cat", "/etc/apt/sources.list.d/debian.sources")
	if !strings.Contains(sources, "URIs: http://deb.debian.org/debian\n") || strings.Contains(sources, "127.0.0.1") {
		t.Fatalf("debian.sources:\n%s", sources)
	}
}

// An imported environment's layers serve builds of its own lock only, and
// are trusted as its env_id's on first use, as any import is: an import
// whose layers are not what its lock gives builds from the store all the
// same, and verify-store --rebuild is what finds it out.
func TestStoredLayersServeTheirLockOnly(t *testing.T) {
	a := newMockKP(t, `"alpha"`)
	id := strings.TrimSpace(a.ok("build"))
	lock := readFile(t, filepath.Join(a.dir, "karapace.lock"))
	a.writeManifest(mockManifest(`"beta"`))
	other := strings.TrimSpace(a.ok("build"))
	s, err := openStore(a.store)
	if err != nil {
		t.Fatal(err)
	}
	sl := mustLock(t, s, "test")
	m, _ := s.getMeta(id)
	o, _ := s.getMeta(other)
	m.DependencyLayers = o.DependencyLayers
	if err := s.putMeta(m); err != nil {
		t.Fatal(err)
	}
	sl.unlock()
	file := filepath.Join(a.base, "swapped.tar")
	a.ok("export", id, file)

	b := newMockKP(t, `"alpha"`)
	writeFile(t, b.dir, "karapace.lock", lock)
	b.ok("import", file)
	if out := strings.TrimSpace(b.ok("build", "--locked", "--offline")); out != id {
		t.Fatalf("build --locked of the imported lock: %s", out)
	}
	var got struct {
		Environment envInfo `json:"environment"`
	}
	b.jsonOut(&got, "inspect", id)
	if !slices.Equal(got.Environment.DependencyLayers, o.DependencyLayers) {
		t.Fatalf("the imported environment's layers were not used: %v", got.Environment.DependencyLayers)
	}
	b.fails(exitStore, "other bytes", "verify-store", "--rebuild", id)
	// Another lock on the same base gets layers of its own.
	b.writeManifest(mockManifest(`"alpha", "gamma"`))
	third := strings.TrimSpace(b.ok("build"))
	b.jsonOut(&got, "inspect", third)
	if third == id || slices.Equal(got.Environment.DependencyLayers, o.DependencyLayers) || slices.Equal(got.Environment.DependencyLayers, m.DependencyLayers) {
		t.Fatalf("another lock got the imported layers: %s %v", third, got.Environment.DependencyLayers)
	}
	b.ok("verify-store", "--rebuild", third)
}
