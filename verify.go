package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"lukechampine.com/blake3/guts"
)

// verifyProblem is one bad item found by verify.
type verifyProblem struct {
	Kind    string `json:"kind"` // object, layer, metadata, environment, layer tree, image
	Name    string `json:"name"`
	Problem string `json:"problem"`
}

// verifyReport counts what verify checked and lists what is wrong.
type verifyReport struct {
	Objects  int             `json:"objects"`
	Layers   int             `json:"layers"`
	Metadata int             `json:"metadata"`
	EnvDirs  int             `json:"env_dirs"`
	Images   int             `json:"images"`
	Bytes    int64           `json:"bytes"`
	Bad      []verifyProblem `json:"bad"`
}

// verify takes the lock and checks the whole store; see verifyLocked.
func (s *store) verify(ctx context.Context) (verifyReport, error) {
	l, err := s.lock("verify-store")
	if err != nil {
		return verifyReport{Bad: []verifyProblem{}}, err
	}
	defer l.unlock()
	return s.verifyLocked(ctx)
}

// verifyLocked re-hashes every object (on all cores), checks every layer
// (canonical, named by its hash, its objects and parent present), every
// metadata file (checksum, its layers and objects present, unique name)
// and the environment directories (see verifyEnvDirs). The caller holds
// the lock.
func (s *store) verifyLocked(ctx context.Context) (verifyReport, error) {
	rep := verifyReport{Bad: []verifyProblem{}}
	bad := func(kind, name, format string, a ...any) {
		rep.Bad = append(rep.Bad, verifyProblem{kind, name, fmt.Sprintf(format, a...)})
	}

	objects, err := s.listObjects()
	if err != nil {
		return rep, err
	}
	rep.Objects = len(objects)
	prog := s.out.progress("verifying objects", int64(len(objects)), false)
	checks := s.hashObjects(ctx, objects, prog)
	prog.finish()
	for _, r := range checks {
		rep.Bytes += r.size
		if r.problem != "" {
			bad("object", r.name, "%s", r.problem)
		}
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("verify-store interrupted: %w", err)
	}

	layers, err := s.listLayers()
	if err != nil {
		return rep, err
	}
	rep.Layers = len(layers)
	for _, h := range layers {
		l, err := s.getLayer(h)
		if err != nil {
			bad("layer", h, "%v", err)
			continue
		}
		for _, o := range l.ObjectRefs {
			if !s.hasObject(o) {
				bad("layer", h, "refers to object %s, which is missing", o)
			}
		}
		if l.Parent != "" && !s.hasLayer(l.Parent) {
			bad("layer", h, "refers to parent layer %s, which is missing", l.Parent)
		}
	}

	names, err := s.listDir("metadata")
	if err != nil {
		return rep, err
	}
	rep.Metadata = len(names)
	byName := map[string]string{}
	for _, id := range names {
		if !validStoreHash(id) {
			bad("metadata", id, "not a valid environment id")
			continue
		}
		m, err := s.getMeta(id)
		if err != nil {
			bad("metadata", id, "%v", err)
			continue
		}
		for _, h := range m.layerRefs() {
			if !s.hasLayer(h) {
				bad("metadata", id, "refers to layer %s, which is missing", h)
			}
		}
		for _, h := range m.objectRefs() {
			if !s.hasObject(h) {
				bad("metadata", id, "refers to object %s, which is missing", h)
			}
		}
		if m.Name != "" {
			if other, ok := byName[m.Name]; ok {
				bad("metadata", id, "name %q is also used by environment %s", m.Name, other)
			}
			byName[m.Name] = id
		}
	}
	if rep.EnvDirs, err = s.verifyEnvDirs(names, bad); err != nil {
		return rep, err
	}
	rep.Images, err = s.verifyImageCache(ctx, func(name, problem string) { bad("image", name, "%s", problem) })
	return rep, err
}

// verifyEnvDirs checks that every environment with a metadata file has
// its directory with the writable layer and the overlay's work directory
// and nothing an interrupted restore or unpack leaves, and that every
// environment directory, layer tree and working directory under env/
// belongs to something in the store. The caller holds the lock and has
// recovered: what a crashed operation left is gone by now. It returns how
// many environment directories there are.
func (s *store) verifyEnvDirs(metaNames []string, bad func(kind, name, format string, a ...any)) (int, error) {
	envRoot := filepath.Join(s.root, "env")
	hasMeta := map[string]bool{}
	served := s.served()
	for _, id := range metaNames {
		if !validStoreHash(id) {
			continue
		}
		hasMeta[id] = true
		dir := s.envs().env(id)
		if served {
			continue // a server keeps environments, it does not run them
		}
		for _, p := range append([]string{string(dir)}, dir.kept()...) {
			if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
				bad("environment", id, "%s is missing or not a directory", p)
				if p == string(dir) {
					break
				}
			}
		}
		names, err := gcListNames(string(dir))
		if err != nil {
			return 0, err
		}
		for _, n := range names {
			if n == restoreNewUpper || n == restoreOldUpper || n == restoreOldWork || strings.HasSuffix(n, unpackPartialSuffix) {
				bad("environment", id, "%s is left over from an interrupted operation", filepath.Join(string(dir), n))
			}
		}
	}
	names, err := gcListNames(envRoot)
	if err != nil {
		return 0, err
	}
	sort.Strings(names)
	dirs := 0
	for _, n := range names {
		p := filepath.Join(envRoot, n)
		switch {
		case validStoreHash(n):
			dirs++
			if !hasMeta[n] {
				bad("environment", n, "directory %s has no metadata ('karapace gc' removes it)", p)
			}
		case n == ".layers":
			trees, err := gcListNames(p)
			if err != nil {
				return dirs, err
			}
			sort.Strings(trees)
			for _, h := range trees {
				if validStoreHash(h) && !s.hasLayer(h) {
					bad("layer tree", h, "%s is the tree of a layer that is not in the store ('karapace gc' removes it)", filepath.Join(p, h))
				}
			}
		case strings.HasPrefix(n, "."):
			bad("environment", n, "%s is the working directory of an interrupted operation ('karapace gc' removes it)", p)
		}
	}
	return dirs, nil
}

type objectCheck struct {
	name    string
	size    int64
	problem string
}

// hashObjects re-hashes the named objects on every core and returns the
// results in the order of names. Objects larger than one segment are
// hashed one at a time, their segments spread over the workers; smaller
// ones go one per worker. No object is read whole into memory.
func (s *store) hashObjects(ctx context.Context, names []string, prog *progress) []objectCheck {
	workers := max(1, runtime.NumCPU())
	res := make([]objectCheck, len(names))
	var small, big []int
	for i, n := range names {
		res[i].name = n
		if !validStoreHash(n) {
			res[i].problem = "not a valid object name (expected 64 lowercase hex digits)"
			continue
		}
		fi, err := os.Lstat(s.path("objects", n))
		switch {
		case err != nil:
			res[i].problem = err.Error()
		case !fi.Mode().IsRegular():
			res[i].problem = "not a regular file"
		case fi.Size() > b3Segment:
			big = append(big, i)
		default:
			small = append(small, i)
		}
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, b3Segment+guts.ChunkSize)
			for i := range jobs {
				res[i] = s.checkObject(names[i], 1, buf)
				prog.add(1)
			}
		}()
	}
	for _, i := range small {
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	for _, i := range big {
		if ctx.Err() != nil {
			break
		}
		res[i] = s.checkObject(names[i], workers, nil)
		prog.add(1)
	}
	return res
}

func (s *store) checkObject(name string, workers int, buf []byte) objectCheck {
	c := objectCheck{name: name}
	f, err := os.Open(s.path("objects", name))
	if err != nil {
		c.problem = err.Error()
		return c
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.problem = err.Error()
		return c
	}
	c.size = fi.Size()
	got, err := blake3File(f, c.size, workers, buf)
	if err != nil {
		c.problem = fmt.Sprintf("reading: %v", err)
	} else if got != name {
		c.problem = fmt.Sprintf("corrupt: content hashes to %s", got)
	}
	return c
}

// BLAKE3 is a tree hash: with its chunk and tree layout (from the guts
// package) a file splits into segments whose subtrees hash independently.
const (
	b3Block   = guts.MaxSIMD * guts.ChunkSize // one SIMD pass: 16 chunks
	b3Segment = 256 * b3Block                 // 4 MiB: 4096 chunks, a subtree of height 12
)

// b3Stack merges subtree chaining values in order, as BLAKE3's
// incremental hasher does: one slot per height, counter counts chunks.
type b3Stack struct {
	cvs     [64][8]uint32
	counter uint64
}

func (st *b3Stack) push(cv [8]uint32, height int) {
	i := height
	for st.counter&(1<<i) != 0 {
		cv = guts.ChainingValue(guts.ParentNode(st.cvs[i], cv, &guts.IV, 0))
		i++
	}
	st.cvs[i] = cv
	st.counter += 1 << height
}

// b3Subtree returns the chaining value of buf, 2^h whole chunks starting
// at chunk counter, without the goroutines the blake3 package starts.
func b3Subtree(buf []byte, counter uint64) [8]uint32 {
	if len(buf) <= b3Block {
		var block [b3Block]byte
		copy(block[:], buf)
		return guts.ChainingValue(guts.CompressBuffer(&block, len(buf), &guts.IV, counter, 0))
	}
	var st b3Stack
	for off := 0; off < len(buf); off += b3Block {
		n := guts.CompressBuffer((*[b3Block]byte)(buf[off:off+b3Block]), b3Block, &guts.IV, counter+uint64(off/guts.ChunkSize), 0)
		st.push(guts.ChainingValue(n), 4)
	}
	return st.cvs[bits.TrailingZeros64(st.counter)]
}

// blake3File hashes size bytes of f with the given number of goroutines,
// each reading and hashing whole segments (buf, if given, holds a segment
// and a chunk). It gives the same digest as blake3.Sum256.
func blake3File(f *os.File, size int64, workers int, buf []byte) (string, error) {
	chunks := max(1, (size+guts.ChunkSize-1)/guts.ChunkSize)
	// The last chunk is hashed last, as the root may be that chunk.
	segments := (chunks - 1) * guts.ChunkSize / b3Segment
	cvs := make([][8]uint32, segments)
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(int64(workers), segments) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seg := make([]byte, b3Segment)
			for {
				i := next.Add(1) - 1
				if i >= segments || firstErr.Load() != nil {
					return
				}
				if _, err := f.ReadAt(seg, i*b3Segment); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				cvs[i] = b3Subtree(seg, uint64(i*b3Segment/guts.ChunkSize))
			}
		}()
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return "", *err
	}
	var st b3Stack
	for _, cv := range cvs {
		st.push(cv, 12)
	}
	// The rest (less than a segment and a chunk) in one read.
	off := segments * b3Segment
	if len(buf) < b3Segment+guts.ChunkSize {
		buf = make([]byte, b3Segment+guts.ChunkSize)
	}
	tail := buf[:size-off]
	if n, err := f.ReadAt(tail, off); n != len(tail) {
		return "", fmt.Errorf("read %d of %d bytes at offset %d: %v", n, len(tail), off, err)
	}
	counter := st.counter
	lastChunk := (len(tail) - 1) / guts.ChunkSize * guts.ChunkSize
	if len(tail) == 0 {
		lastChunk = 0
	}
	for _, h := range guts.Eigentrees(counter, uint64(lastChunk/guts.ChunkSize)) {
		n := (1 << h) * guts.ChunkSize
		st.push(b3Subtree(tail[:n], counter), h)
		tail, counter = tail[n:], counter+uint64(1<<h)
	}
	node := guts.CompressChunk(tail, &guts.IV, counter, 0)
	for i := bits.TrailingZeros64(st.counter); i < bits.Len64(st.counter); i++ {
		if st.counter&(1<<i) != 0 {
			node = guts.ParentNode(st.cvs[i], guts.ChainingValue(node), &guts.IV, 0)
		}
	}
	node.Flags |= guts.FlagRoot
	out := guts.WordsToBytes(guts.CompressNode(node))
	return hex.EncodeToString(out[:32]), nil
}

func runVerifyStore(c *cli) error {
	if c.has("rebuild") {
		return runRebuildCheck(c)
	}
	s, err := c.openStore()
	if errors.Is(err, errNoStore) {
		return storeErrorf("nothing to verify: %v", err)
	}
	if err != nil {
		return err
	}
	rep, err := s.verify(context.Background())
	if err != nil {
		return err
	}
	sort.SliceStable(rep.Bad, func(i, j int) bool { return rep.Bad[i].Kind < rep.Bad[j].Kind })
	if c.json {
		writeJSON(c.stdout, rep)
	} else {
		for _, p := range rep.Bad {
			fmt.Fprintf(c.stdout, "bad %s %s: %s\n", p.Kind, p.Name, p.Problem)
		}
		fmt.Fprintf(c.stdout, "checked %s (%s), %s, %s, %s, %s: %s\n",
			gcPlural(rep.Objects, "object", "objects"), humanBytes(rep.Bytes),
			gcPlural(rep.Layers, "layer", "layers"), gcPlural(rep.Metadata, "metadata file", "metadata files"),
			gcPlural(rep.EnvDirs, "environment directory", "environment directories"),
			gcPlural(rep.Images, "cached image", "cached images"),
			map[bool]string{true: "all good", false: gcPlural(len(rep.Bad), "problem", "problems")}[len(rep.Bad) == 0])
	}
	if len(rep.Bad) > 0 {
		return storeErrorf("verify-store found %s in %s", gcPlural(len(rep.Bad), "problem", "problems"), s.dir)
	}
	return nil
}
