package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"lukechampine.com/blake3"
)

func TestVerifyFindsEveryProblem(t *testing.T) {
	s := newTestStore(t)
	a := testEnv(t, s, "a", "a")
	b := testEnv(t, s, "b", "b")
	c := testEnv(t, s, "c", "c")
	for i := range 50 {
		mustPut(t, s, strings.Repeat("filler ", i*1000))
	}
	code, out, errOut := runCLI(t, nil, "--store", s.root, "verify-store")
	if code != 0 || !strings.Contains(out, "all good") {
		t.Fatalf("clean store: %d %s %s", code, out, errOut)
	}

	// 1. an object whose content changed
	p := s.path("objects", a.ManifestHash)
	os.WriteFile(p, []byte("tampered"), 0o600)
	// 2. a file that is not an object
	os.WriteFile(s.path("objects", "README"), []byte("x"), 0o600)
	// 3. a layer whose object is gone
	bl, _ := s.getLayer(b.BaseLayer)
	os.Remove(s.path("objects", bl.TarHash))
	// 4. a layer file edited
	lf := s.path("layers", c.DependencyLayers[0])
	lb, _ := os.ReadFile(lf)
	os.WriteFile(lf, []byte(strings.Replace(string(lb), "true", "false", 1)), 0o600)
	// 5. metadata edited without its checksum
	mf := s.path("metadata", b.EnvID)
	mb, _ := os.ReadFile(mf)
	os.WriteFile(mf, []byte(strings.Replace(string(mb), `"ref_count": 1`, `"ref_count": 7`, 1)), 0o600)
	// 6. metadata pointing at a missing layer, 7. a duplicate name
	os.Remove(s.path("layers", a.BaseLayer))
	c.Name = "a"
	must(t, s.writeMeta(c))

	code, out, errOut = runCLI(t, nil, "--store", s.root, "verify-store")
	if code != exitStore {
		t.Fatalf("exit %d, want 3: %s %s", code, out, errOut)
	}
	mustContain(t, "verify-store", out,
		"bad object "+a.ManifestHash+": corrupt: content hashes to",
		"bad object README: not a valid object name",
		"bad layer "+b.BaseLayer+": refers to object "+bl.TarHash+", which is missing",
		"bad layer "+c.DependencyLayers[0]+":",
		"bad metadata "+b.EnvID+": metadata file "+mf+" is corrupt: checksum mismatch",
		"bad metadata "+a.EnvID+": refers to layer "+a.BaseLayer+", which is missing",
		"is also used by environment",
		"bad layer "+a.DependencyLayers[0]+": refers to parent layer "+a.BaseLayer+", which is missing",
		"problems")
	mustContain(t, "stderr", errOut, "verify-store found 8 problems")

	code, out, _ = runCLI(t, nil, "--store", s.root, "--json", "verify-store")
	var rep verifyReport
	if code != exitStore || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("--json: %d %s", code, out)
	}
	if len(rep.Bad) != 8 || rep.Objects != 62 || rep.Layers != 5 || rep.Metadata != 3 {
		t.Errorf("report %+v", rep)
	}
}

// verify-store holds the environment directories to what the engine
// keeps true: a live environment has its writable layer and work
// directory and no leftovers of a restore; nothing under env/ is without
// an owner. gc removes what has no owner.
func TestVerifyEnvironmentDirs(t *testing.T) {
	s := newTestStore(t)
	noWork := testEnv(t, s, "a", "a")
	noDir := testEnv(t, s, "b", "b")
	leftovers := testEnv(t, s, "c", "c")
	testEnv(t, s, "d", "d")
	env := filepath.Join(s.root, "env")
	must(t, os.Remove(filepath.Join(env, noWork.EnvID, "work")))
	must(t, os.RemoveAll(filepath.Join(env, noDir.EnvID)))
	for _, n := range []string{restoreOldUpper, restoreNewUpper, restoreOldWork} {
		writeFile(t, filepath.Join(env, leftovers.EnvID), n+"/f", "x")
	}
	orphan := strings.Repeat("0", 64)
	writeFile(t, filepath.Join(env, orphan), "upper/f", "x")
	writeFile(t, env, ".import-1234/f", "x")
	goneLayer := strings.Repeat("1", 64)
	writeFile(t, filepath.Join(env, ".layers", goneLayer), "f", "x")
	writeFile(t, filepath.Join(env, ".layers", noWork.BaseLayer), "f", "x") // a live layer's tree
	writeFile(t, env, "not-ours/f", "x")                                    // nothing of karapace's: left alone

	wantBad := []string{
		"bad environment " + noWork.EnvID + ": " + filepath.Join(env, noWork.EnvID, "work") + " is missing or not a directory",
		"bad environment " + noDir.EnvID + ": " + filepath.Join(env, noDir.EnvID) + " is missing or not a directory",
		"bad environment " + leftovers.EnvID + ": " + filepath.Join(env, leftovers.EnvID, restoreOldUpper) + " is left over from an interrupted operation",
		"bad environment " + leftovers.EnvID + ": " + filepath.Join(env, leftovers.EnvID, restoreNewUpper) + " is left over",
		"bad environment " + leftovers.EnvID + ": " + filepath.Join(env, leftovers.EnvID, restoreOldWork) + " is left over",
	}
	wantGarbage := []string{
		"bad environment " + orphan + ": directory " + filepath.Join(env, orphan) + " has no metadata ('karapace gc' removes it)",
		"bad environment .import-1234: " + filepath.Join(env, ".import-1234") + " is the working directory of an interrupted operation",
		"bad layer tree " + goneLayer + ": " + filepath.Join(env, ".layers", goneLayer) + " is the tree of a layer that is not in the store",
	}
	code, out, errOut := runCLI(t, nil, "--store", s.root, "verify-store")
	if code != exitStore {
		t.Fatalf("exit %d, want 3:\n%s%s", code, out, errOut)
	}
	mustContain(t, "verify-store", out, append(wantBad, wantGarbage...)...)
	mustContain(t, "verify-store", out, "4 environment directories", "8 problems")
	if strings.Contains(out, "not-ours") || strings.Contains(out, noWork.BaseLayer+":") {
		t.Errorf("verify-store reports what is fine:\n%s", out)
	}

	// gc takes the garbage, and only that.
	rep, err := s.gc(context.Background(), gcOptions{})
	if err != nil || rep.EnvDirs != 1 || rep.Staging != 1 {
		t.Fatalf("gc: %+v %v", rep, err)
	}
	code, out, _ = runCLI(t, nil, "--store", s.root, "verify-store")
	mustContain(t, "verify-store after gc", out, append(wantBad, "5 problems")...)
	if code != exitStore || strings.Contains(out, orphan) || strings.Contains(out, goneLayer) || strings.Contains(out, ".import") {
		t.Fatalf("after gc (exit %d):\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(env, ".layers", noWork.BaseLayer)); err != nil {
		t.Error("gc removed a live layer's tree")
	}

	// A server's store keeps environments without directories.
	must(t, os.RemoveAll(env))
	must(t, s.markServed())
	if rep, err := s.verify(context.Background()); err != nil || len(rep.Bad) != 0 {
		t.Fatalf("served store: %+v %v", rep, err)
	}
}

func TestVerifyEmptyJSON(t *testing.T) {
	s := newTestStore(t)
	code, out, _ := runCLI(t, nil, "--store", s.root, "--json", "verify-store")
	if code != 0 || !strings.Contains(out, `"bad": []`) {
		t.Fatalf("%d %s", code, out)
	}
	rep, err := s.verify(context.Background())
	if err != nil || rep.Objects != 0 || rep.Bad == nil {
		t.Fatal(rep, err)
	}
}

// BenchmarkVerifyVsSingleThread fills a store with the benchmark tree
// packed whole and per top-level directory, then times verify against
// hashing the same object files in one thread (GOMAXPROCS=1: the blake3
// package would otherwise spread one big write over all cores).
func BenchmarkVerifyVsSingleThread(b *testing.B) {
	dir := benchDir(b)
	s, err := openStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	put := func(d string) {
		w, _ := s.newObjectWriter()
		if _, err := packLayer(d, w); err != nil {
			b.Fatal(err)
		}
		if _, _, err := w.commit(); err != nil {
			b.Fatal(err)
		}
	}
	put(dir)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			put(filepath.Join(dir, e.Name()))
		}
	}
	names, _ := s.listObjects()
	single := func() int64 {
		old := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(old)
		h := blake3.New(32, nil)
		buf := make([]byte, 1<<20)
		var total int64
		for _, n := range names {
			f, _ := os.Open(s.path("objects", n))
			h.Reset()
			for {
				k, err := f.Read(buf)
				h.Write(buf[:k])
				total += int64(k)
				if err != nil {
					break
				}
			}
			f.Close()
			if hex.EncodeToString(h.Sum(nil)) != n {
				b.Fatal("baseline hash mismatch")
			}
		}
		return total
	}
	single() // warm the page cache
	var singleT, verifyT fastest
	var bytes int64
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		bytes = single()
		singleT.add(time.Since(start))
		start = time.Now()
		rep, err := s.verify(context.Background())
		verifyT.add(time.Since(start))
		if err != nil || len(rep.Bad) != 0 || rep.Bytes != bytes {
			b.Fatal(rep, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(bytes)/1e6, "MB")
	b.ReportMetric(float64(bytes)/1e6/singleT.s(), "single-MB/s")
	b.ReportMetric(float64(bytes)/1e6/verifyT.s(), "verify-MB/s")
	b.ReportMetric(singleT.s()/verifyT.s(), "speedup")
	b.ReportMetric(float64(runtime.NumCPU()), "cpus")
}

// TestBlake3File checks the segment-parallel hash against the blake3
// package at every boundary of the tree layout.
func TestBlake3File(t *testing.T) {
	data := make([]byte, 3*b3Segment+5*b3Block+3000)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	f, err := os.CreateTemp(t.TempDir(), "b3")
	must(t, err)
	f.Write(data)
	sizes := []int{0, 1, 1023, 1024, 1025, 2048, 3000, b3Block - 1, b3Block, b3Block + 1, b3Block + 1024, 5 * b3Block,
		b3Segment - 1, b3Segment, b3Segment + 1, b3Segment + 1024, b3Segment + 1025, 2*b3Segment + 17,
		3 * b3Segment, 3*b3Segment + 1024, len(data)}
	for k := 0; k < 20; k++ {
		sizes = append(sizes, (k*7919*131)%len(data))
	}
	for _, n := range sizes {
		want := blake3.Sum256(data[:n])
		for _, w := range []int{1, 2, 3} {
			got, err := blake3File(f, int64(n), w, nil)
			if err != nil || got != hex.EncodeToString(want[:]) {
				t.Fatalf("size %d, %d workers: %s %v, want %x", n, w, got, err, want)
			}
		}
	}
	// A file shorter than it is said to be is an error, not a hash.
	for _, n := range []int{len(data) + b3Segment, len(data) + 1} {
		if _, err := blake3File(f, int64(n), 2, nil); err == nil {
			t.Fatalf("short read (%d of %d bytes) not reported", len(data), n)
		}
	}
}

// BenchmarkBlake3File compares, on one 256 MiB file, the blake3 package
// in one thread with blake3File on 1 and on all cores.
func BenchmarkBlake3File(b *testing.B) {
	f, err := os.CreateTemp(b.TempDir(), "b3")
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 256<<20)
	for i := range data {
		data[i] = byte(i ^ i>>9)
	}
	f.Write(data)
	b.Run("package-1-thread", func(b *testing.B) {
		old := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(old)
		b.SetBytes(int64(len(data)))
		buf := make([]byte, 1<<20)
		for range b.N {
			h := blake3.New(32, nil)
			for off := int64(0); off < int64(len(data)); off += int64(len(buf)) {
				n, _ := f.ReadAt(buf, off)
				h.Write(buf[:n])
			}
			h.Sum(nil)
		}
	})
	for _, w := range []int{1, runtime.NumCPU()} {
		b.Run(fmt.Sprintf("segments-%d-workers", w), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for range b.N {
				if _, err := blake3File(f, int64(len(data)), w, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
