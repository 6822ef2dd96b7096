package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gcFixture makes a store with two live environments (one archived, with
// snapshots) and known garbage; it returns the garbage counts.
func gcFixture(t *testing.T) (s *store, live []*envMeta, want gcReport) {
	s = newTestStore(t)
	mustLock(t, s, "x").unlock() // create the lock file: it is not gc's doing
	a := testEnv(t, s, "a", "a")
	b := testEnv(t, s, "b", "b")
	snap, err := s.putLayer(&layer{Kind: layerSnapshot, Parent: b.BaseLayer, TarHash: mustPut(t, s, "snapshot of b")})
	must(t, err)
	b.Snapshots = []string{snap}
	b.UpperLayer = snap
	b.State = stateArchived
	must(t, s.putMeta(b))

	// Garbage: an object alone, a layer with its own object, a layer whose
	// parent is live (the parent stays), an env dir without metadata,
	// staging leftovers and a half-unpacked tree.
	junk := []string{mustPut(t, s, "junk 1"), mustPut(t, s, "junk 2"), mustPut(t, s, "junk 3")}
	_, err = s.putLayer(&layer{Kind: layerBase, TarHash: junk[1]})
	must(t, err)
	_, err = s.putLayer(&layer{Kind: layerSnapshot, Parent: a.BaseLayer, TarHash: junk[2]})
	must(t, err)
	orphan := filepath.Join(s.root, "env", strings.Repeat("0", 64))
	writeFile(t, orphan, "upper/big", strings.Repeat("x", 10000))
	writeFile(t, filepath.Join(s.root, "env"), "not-an-env/file", "left alone")
	writeFile(t, s.path("staging"), "object.123.tmp", "half")
	writeFile(t, filepath.Join(s.root, "env", a.EnvID), "upper"+unpackPartialSuffix+"/f", "half")
	writeFile(t, filepath.Join(s.root, "images"), "key/rootfs/bin", "cached image")
	var bytes int64 = 10000 + 4 + 4
	for _, j := range junk {
		n, _ := s.objectSize(j)
		bytes += n
	}
	layers, _ := s.listLayers()
	for _, h := range layers {
		if h != snap && h != a.BaseLayer && h != b.BaseLayer && h != a.DependencyLayers[0] && h != b.DependencyLayers[0] {
			fi, _ := os.Stat(s.path("layers", h))
			bytes += fi.Size()
		}
	}
	return s, []*envMeta{a, b}, gcReport{Objects: 3, Layers: 2, EnvDirs: 1, Staging: 2, Bytes: bytes}
}

func TestGC(t *testing.T) {
	s, live, want := gcFixture(t)
	before := treeListing(t, s.root)
	want.DryRun = true
	rep, err := s.gc(context.Background(), gcOptions{DryRun: true})
	if err != nil || rep != want {
		t.Fatalf("dry run: %+v %v, want %+v", rep, err, want)
	}
	if after := treeListing(t, s.root); after != before {
		t.Fatal("dry run changed the store")
	}
	want.DryRun = false
	rep, err = s.gc(context.Background(), gcOptions{})
	if err != nil || rep != want {
		t.Fatalf("gc: %+v %v, want %+v", rep, err, want)
	}
	for _, m := range live {
		for _, h := range m.layerRefs() {
			if _, err := s.getLayer(h); err != nil {
				t.Errorf("live layer %s: %v", h, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(s.root, "env", "not-an-env", "file")); err != nil {
		t.Error("gc removed a directory that is not an environment's")
	}
	if _, err := os.Stat(filepath.Join(s.root, "images", "key")); err != nil {
		t.Error("gc touched the image cache")
	}
	if rep, err := s.verify(context.Background()); err != nil || len(rep.Bad) != 0 || rep.Metadata != 2 {
		t.Fatalf("verify after gc: %+v %v", rep, err)
	}
	if rep, _ := s.gc(context.Background(), gcOptions{}); rep != (gcReport{}) {
		t.Errorf("second gc: %+v", rep)
	}
	if n := dirNames(t, s.path("wal")); len(n) != 0 {
		t.Errorf("WAL left: %v", n)
	}
}

// The image cache keeps its downloads unless --images, and always loses
// the indices of layers that are gone; indices of live layers stay.
func TestGCImageCache(t *testing.T) {
	s, live, want := gcFixture(t)
	a := live[0]
	images := filepath.Join(s.root, "images")
	dead := strings.Repeat("f", 64) + "\n"
	writeFile(t, images, "sha256-aaa/image", "image bytes")
	writeFile(t, images, "sha256-aaa/info.json", "{}")
	writeFile(t, images, "sha256-aaa/base-layer", a.BaseLayer+"\n")
	writeFile(t, images, "sha256-bbb/base-layer", dead)
	writeFile(t, images, "deps/live", a.DependencyLayers[0]+"\n")
	writeFile(t, images, "deps/dead", dead)
	writeFile(t, images, "debs/"+strings.Repeat("1", 64), "a package")
	writeFile(t, images, "archive/dists/Packages", "an index")
	writeFile(t, images, ".partial/download", "half")

	want.ImageCache, want.Bytes = 2, want.Bytes+2*int64(len(dead))
	rep, err := s.gc(context.Background(), gcOptions{})
	if err != nil || rep != want {
		t.Fatalf("gc: %+v %v, want %+v", rep, err, want)
	}
	if got := treeListing(t, images); strings.Contains(got, "sha256-bbb") || strings.Contains(got, "deps/dead") ||
		!strings.Contains(got, "sha256-aaa/image") || !strings.Contains(got, "deps/live") || !strings.Contains(got, "debs/1111") {
		t.Fatalf("image cache after gc:\n%s", got)
	}

	before := treeListing(t, s.root)
	want = gcReport{DryRun: true, ImageCache: 6, Bytes: int64(len("image bytes{}a packagean indexhalfcached image"))}
	if rep, err := s.gc(context.Background(), gcOptions{DryRun: true, Images: true}); err != nil || rep != want {
		t.Fatalf("gc --images --dry-run: %+v %v, want %+v", rep, err, want)
	}
	if treeListing(t, s.root) != before {
		t.Fatal("dry run changed the store")
	}
	want.DryRun = false
	if rep, err := s.gc(context.Background(), gcOptions{Images: true}); err != nil || rep != want {
		t.Fatalf("gc --images: %+v %v, want %+v", rep, err, want)
	}
	var files []string
	filepath.WalkDir(images, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, images+"/"))
		}
		return nil
	})
	if strings.Join(files, " ") != "deps/live sha256-aaa/base-layer" {
		t.Fatalf("image cache after gc --images: %v", files)
	}
	if rep, err := s.verify(context.Background()); err != nil || len(rep.Bad) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// countdownCtx is cancelled after its Err has been asked n times: gc asks
// once per item.
type countdownCtx struct {
	context.Context
	n int
}

func (c *countdownCtx) Err() error {
	if c.n--; c.n < 0 {
		return context.Canceled
	}
	return nil
}

func TestGCInterruptedIsConsistent(t *testing.T) {
	for stop := 0; stop <= 8; stop++ {
		s, _, want := gcFixture(t)
		rep, err := s.gc(&countdownCtx{context.Background(), stop}, gcOptions{})
		if err != nil {
			t.Fatal(err)
		}
		removed := rep.Objects + rep.Layers + rep.EnvDirs + rep.Staging
		total := want.Objects + want.Layers + want.EnvDirs + want.Staging
		if removed != min(stop, total) || rep.Interrupted != (stop < total) {
			t.Fatalf("stop after %d: %+v", stop, rep)
		}
		// Nothing refers to anything missing; what is left is garbage
		// that verify-store reports and the next gc takes.
		v, err := s.verify(context.Background())
		if err != nil || len(v.Bad) != want.EnvDirs-rep.EnvDirs {
			t.Fatalf("stop after %d: verify %+v %v", stop, v, err)
		}
		for _, p := range v.Bad {
			if !strings.Contains(p.Problem, "has no metadata") {
				t.Fatalf("stop after %d: verify %+v", stop, p)
			}
		}
	}
}

// Garbage layers go children first: a gc stopped after any removal (or
// killed) leaves no layer whose parent is missing.
func TestGCRemovesChildLayersFirst(t *testing.T) {
	const chain = 6
	for stop := 0; stop <= chain; stop++ {
		s := newTestStore(t)
		live := testEnv(t, s, "", "live")
		parent := live.BaseLayer
		for i := range chain {
			h, err := s.putLayer(&layer{Kind: layerSnapshot, Parent: parent, TarHash: mustPut(t, s, fmt.Sprint("snapshot ", i))})
			must(t, err)
			parent = h
		}
		rep, err := s.gc(&countdownCtx{context.Background(), stop}, gcOptions{})
		if err != nil || rep.Layers != stop {
			t.Fatalf("stop after %d: %+v %v", stop, rep, err)
		}
		if v, err := s.verify(context.Background()); err != nil || len(v.Bad) != 0 {
			t.Fatalf("stop after %d: %+v %v", stop, v.Bad, err)
		}
	}
}

func TestGCRefusesUnknownReferences(t *testing.T) {
	s, live, _ := gcFixture(t)
	file := s.path("metadata", live[0].EnvID)
	b, _ := os.ReadFile(file)
	os.WriteFile(file, []byte(strings.Replace(string(b), `"built"`, `"frozen"`, 1)), 0o600)
	before := treeListing(t, s.path("objects"))
	_, err := s.gc(context.Background(), gcOptions{})
	if err == nil || exitCodeOf(err) != exitStore || !strings.Contains(err.Error(), "verify-store") {
		t.Fatalf("gc with corrupt metadata: %v", err)
	}
	if treeListing(t, s.path("objects")) != before {
		t.Fatal("gc removed objects while metadata was unreadable")
	}
	os.WriteFile(file, b, 0o600)
	os.WriteFile(s.path("layers", live[1].BaseLayer), []byte("{"), 0o600)
	if _, err := s.gc(context.Background(), gcOptions{}); err == nil {
		t.Fatal("gc with a corrupt live layer")
	}
}

func TestGCCommand(t *testing.T) {
	s, _, want := gcFixture(t)
	// Opening the store clears the staging leftovers before gc runs.
	want.Bytes -= 8
	code, out, errOut := runCLI(t, nil, "--store", s.root, "gc", "--dry-run")
	if code != 0 {
		t.Fatal(errOut)
	}
	wantLine := fmt.Sprintf("would remove 3 objects, 2 layers, 1 environment directory; would free %s\n", humanBytes(want.Bytes))
	if out != wantLine {
		t.Errorf("got %q\nwant %q", out, wantLine)
	}
	// The first open recovered (staging, half-unpacked trees); from then
	// on a dry run, with --images too, changes nothing at all.
	before := treeListing(t, s.root)
	for _, args := range [][]string{{"gc", "--dry-run"}, {"--json", "gc", "--dry-run", "--images"}} {
		if code, out, errOut := runCLI(t, nil, append([]string{"--store", s.root}, args...)...); code != 0 {
			t.Fatalf("%v: %s %s", args, out, errOut)
		}
		if after := treeListing(t, s.root); after != before {
			t.Fatalf("%v changed the store:\n%s\nbefore:\n%s", args, after, before)
		}
	}
	code, out, _ = runCLI(t, nil, "--store", s.root, "--json", "gc")
	var rep map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("--json gc: %d %s", code, out)
	}
	for k, v := range map[string]any{"dry_run": false, "objects": 3.0, "layers": 2.0, "env_dirs": 1.0, "staging": 0.0, "bytes": float64(want.Bytes), "interrupted": false} {
		if rep[k] != v {
			t.Errorf("json %s = %v, want %v", k, rep[k], v)
		}
	}
	code, out, _ = runCLI(t, nil, "--store", s.root, "gc")
	if code != 0 || out != "removed 0 objects, 0 layers, 0 environment directories; freed 0 B\n" {
		t.Errorf("%d %q", code, out)
	}
}

func init() {
	testHelpers["store-cli"] = func() {
		var args []string
		json.Unmarshal([]byte(os.Getenv("KP_ARGS")), &args)
		os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr, os.Getenv))
	}
}

func TestGCSIGINT(t *testing.T) {
	s := newTestStore(t)
	testEnv(t, s, "", "live")
	for i := range 40 {
		d := filepath.Join(s.root, "env", storeBlake3Hex([]byte{byte(i)}), "upper")
		os.MkdirAll(d, 0o700)
		for j := range 200 {
			os.WriteFile(filepath.Join(d, fmt.Sprint(j)), nil, 0o600)
		}
	}
	args, _ := json.Marshal([]string{"--store", s.root, "gc"})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KARAPACE_TEST_HELPER=store-cli", "KP_ARGS="+string(args))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	must(t, cmd.Start())
	// Interrupt once gc has removed something.
	deadline := time.Now().Add(30 * time.Second)
	for len(dirNames(t, filepath.Join(s.root, "env"))) > 40 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("exit: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	mustContain(t, "stderr", stderr.String(), "gc interrupted; the store is consistent")
	left := len(dirNames(t, filepath.Join(s.root, "env")))
	if left <= 1 || left > 40 {
		t.Fatalf("%d env dirs left: not stopped between items", left)
	}
	// Nothing refers to anything missing; the env dirs gc did not reach
	// are reported as garbage.
	rep, err := s.verify(context.Background())
	if err != nil || len(rep.Bad) != left-1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	for _, p := range rep.Bad {
		if !strings.Contains(p.Problem, "has no metadata") {
			t.Fatalf("verify: %+v", p)
		}
	}
	t.Logf("stopped with %d of 40 garbage env dirs left", left-1)
}

// What an environment makes may belong to its subordinate IDs, in
// directories only they may enter (apt's partial/ is _apt's, mode 0700):
// destroy, gc and a crashed operation's rollback remove it all the same,
// rootless too, and the store verifies clean after.
func TestRemoveSubordinateTrees(t *testing.T) {
	need(t, os.Geteuid() == 0 || planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	k.ok("build", "--name", "sub")
	k.ok("exec", "sub", "--", "sh", "-c", "mkdir -p /var/lib/apt/lists/partial/x && touch /var/lib/apt/lists/partial/x/f && chown -R _apt /var/lib/apt/lists/partial && chmod -R 700 /var/lib/apt/lists/partial")
	k.ok("destroy", "sub")
	var rep gcReport
	k.jsonOut(&rep, "gc")
	if rep.Layers == 0 {
		t.Fatalf("gc: %+v", rep)
	}
	k.ok("verify-store")

	// A build that died with such a tree in its working directory: the
	// next opening of the store rolls it back.
	s, err := openStore(k.store)
	if err != nil {
		t.Fatal(err)
	}
	l := mustLock(t, s, "build")
	op, err := s.beginOp("build", "")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(k.store, "env", ".build-crashed")
	must(t, op.mkdir(dir))
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	for _, h := range []*tar.Header{
		{Name: "partial/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 42, Gid: 42},
		{Name: "partial/f", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 42, Gid: 42},
	} {
		must(t, tw.WriteHeader(h))
	}
	tw.Close()
	must(t, treeInNS(treeJob{Op: "unpack", Dir: dir}, &tarball, nil))
	l.unlock() // "crash": the entry stays
	k.ok("list")
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Fatalf("the crashed build's tree survived recovery: %v", err)
	}
	k.ok("verify-store")
}
