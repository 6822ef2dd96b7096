package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// gcReport says what gc removed (or, dry, would remove).
type gcReport struct {
	DryRun      bool  `json:"dry_run"`
	Objects     int   `json:"objects"`
	Layers      int   `json:"layers"`
	EnvDirs     int   `json:"env_dirs"`
	Staging     int   `json:"staging"`
	ImageCache  int   `json:"image_cache_files"`
	Logs        int   `json:"logs"` // failed build steps' logs older than logsKept
	Bytes       int64 `json:"bytes"`
	Interrupted bool  `json:"interrupted"`
}

// gcOptions: DryRun removes nothing; Images also empties the image cache
// of its downloads (images, packages, archive indices).
type gcOptions struct {
	DryRun, Images bool
}

// gc takes the lock and collects garbage; see gcLocked.
func (s *store) gc(ctx context.Context, o gcOptions) (gcReport, error) {
	l, err := s.acquire("gc", s.lockWait)
	if err != nil {
		return gcReport{DryRun: o.DryRun}, err
	}
	defer l.unlock()
	if _, err := s.recoverWAL(); err != nil {
		return gcReport{DryRun: o.DryRun}, err
	}
	return s.gcLocked(ctx, o)
}

// gcLocked marks from every metadata entry, whatever its state, the
// layers (with their parents) and objects it needs, then removes the env
// directories that have no metadata, the unmarked layers, the unmarked
// objects and staging leftovers, in that order, so that at no instant does
// anything refer to something missing. A cancelled ctx stops it between
// two items, leaving a consistent store. The caller holds the lock.
func (s *store) gcLocked(ctx context.Context, o gcOptions) (gcReport, error) {
	rep := gcReport{DryRun: o.DryRun}
	live, err := s.gcMark()
	if err != nil {
		return rep, err
	}
	// The entry only records that a gc ran (removals are not undone); a
	// full disk, which gc is there to relieve, must not stop it.
	var op *walOp
	if !o.DryRun {
		if op, err = s.beginOp("gc", ""); err != nil {
			s.out.warnf("gc: running without a WAL entry: %v", err)
			op = nil
		}
	}
	sw := &gcSweeper{s: s, ctx: ctx, o: o, rep: &rep, live: live, prog: s.out.progress("collecting garbage", 0, false)}
	defer sw.prog.finish()
	for _, step := range []func() error{sw.envDirs, sw.layerTrees, sw.staging, sw.layers, sw.objects, sw.imageCache, sw.partialTrees, sw.logs} {
		if err := step(); err != nil {
			return rep, err
		}
		if rep.Interrupted {
			break
		}
	}
	if op != nil {
		if err := op.done(); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// gcLive is what gc keeps: every environment with metadata (archived
// ones too), the layers they name and their parents, and every object
// those and the metadata name.
type gcLive struct{ envs, layers, objects map[string]bool }

// gcMark finds what is live. A reference it cannot read stops gc: what
// it would keep is unknown.
func (s *store) gcMark() (*gcLive, error) {
	metas, errs := s.listMeta()
	if len(errs) > 0 {
		return nil, storeErrorf("gc: %v; not collecting while an environment's references are unknown (run 'karapace verify-store')", errs[0])
	}
	live := &gcLive{envs: map[string]bool{}, layers: map[string]bool{}, objects: map[string]bool{}}
	var pending []string
	for _, m := range metas {
		live.envs[m.EnvID] = true
		pending = append(pending, m.layerRefs()...)
		for _, h := range m.objectRefs() {
			live.objects[h] = true
		}
	}
	for len(pending) > 0 {
		h := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		if live.layers[h] {
			continue
		}
		live.layers[h] = true
		l, err := s.getLayer(h)
		if errors.Is(err, fs.ErrNotExist) {
			continue // a dangling reference is verify-store's to report
		}
		if err != nil {
			return nil, storeErrorf("gc: %v; not collecting while a live layer's references are unknown", err)
		}
		for _, o := range l.ObjectRefs {
			live.objects[o] = true
		}
		live.objects[l.TarHash] = true
		if l.Parent != "" {
			pending = append(pending, l.Parent)
		}
	}
	return live, nil
}

// gcSweeper removes (or, dry, counts) what is not live, place by place,
// and stops between two removals when ctx is done.
type gcSweeper struct {
	s    *store
	ctx  context.Context
	o    gcOptions
	rep  *gcReport
	live *gcLive
	prog *progress
}

// sweepNames removes the entries of dir among names that are neither in
// live nor refused by only.
func (sw *gcSweeper) sweepNames(dir string, names []string, live map[string]bool, only func(string) bool, count *int) error {
	if names == nil {
		return nil
	}
	for _, n := range names {
		if live[n] || (only != nil && !only(n)) {
			continue
		}
		if sw.ctx.Err() != nil {
			sw.rep.Interrupted = true
			return nil
		}
		p := filepath.Join(dir, n)
		size := gcTreeSize(p)
		if !sw.o.DryRun {
			if err := sw.s.removeTree(p); err != nil {
				return storeErrorf("gc: removing %s: %v", p, err)
			}
		}
		*count++
		sw.rep.Bytes += size
		sw.prog.add(1)
	}
	if !sw.o.DryRun {
		return syncDir(dir)
	}
	return nil
}

func (sw *gcSweeper) sweep(dir string, live map[string]bool, only func(string) bool, count *int) error {
	names, err := gcListNames(dir)
	if err != nil {
		return err
	}
	return sw.sweepNames(dir, names, live, only, count)
}

func (sw *gcSweeper) envDirs() error {
	return sw.sweep(string(sw.s.envs()), sw.live.envs, validStoreHash, &sw.rep.EnvDirs)
}

// layerTrees: the runtime's unpacked layers go with their layers; their
// bytes count, the layers are counted once (layers).
func (sw *gcSweeper) layerTrees() error {
	var trees int
	return sw.sweep(sw.s.envs().trees(), sw.live.layers, validStoreHash, &trees)
}

// staging: the working directories of operations that did not finish.
func (sw *gcSweeper) staging() error {
	if err := sw.sweep(string(sw.s.envs()), nil, sw.s.envs().isStaging, &sw.rep.Staging); err != nil {
		return err
	}
	return sw.sweep(sw.s.path("staging"), nil, nil, &sw.rep.Staging)
}

// layers go children first: a parent is never removed before a child
// that a crash would leave naming it.
func (sw *gcSweeper) layers() error {
	names, err := gcListNames(sw.s.path("layers"))
	if err != nil {
		return err
	}
	return sw.sweepNames(sw.s.path("layers"), sw.s.childrenFirst(names), sw.live.layers, nil, &sw.rep.Layers)
}

func (sw *gcSweeper) objects() error {
	return sw.sweep(sw.s.path("objects"), sw.live.objects, nil, &sw.rep.Objects)
}

// imageCache: an index naming a layer that is gone is garbage; the
// downloads are too with --images, since a build whose layers are in the
// store needs none of them.
func (sw *gcSweeper) imageCache() error {
	dir := imagesDir(sw.s)
	names, err := gcListNames(dir)
	if err != nil {
		return err
	}
	dangling := func(index string) bool {
		data, _ := os.ReadFile(index)
		return !sw.live.layers[strings.TrimSpace(string(data))]
	}
	for _, n := range names {
		sub := filepath.Join(dir, n)
		switch {
		case strings.HasPrefix(n, "sha256-"):
			err = sw.sweep(sub, nil, func(f string) bool {
				if strings.HasPrefix(f, "base-layer") { // an index (base-layer-v2: see archiveBaseIndex)
					return dangling(filepath.Join(sub, f))
				}
				return sw.o.Images
			}, &sw.rep.ImageCache)
			if !sw.o.DryRun {
				os.Remove(sub) // only once empty
			}
		case n == "deps":
			err = sw.sweep(sub, nil, func(f string) bool { return dangling(filepath.Join(sub, f)) }, &sw.rep.ImageCache)
		case sw.o.Images:
			err = sw.sweep(sub, nil, nil, &sw.rep.ImageCache)
		}
		if err != nil || sw.rep.Interrupted {
			return err
		}
	}
	return nil
}

// logsKept is how long gc keeps a failed build step's log.
const logsKept = 14 * 24 * time.Hour

// logs: the logs of failed build steps (see store.keepLog), once old.
func (sw *gcSweeper) logs() error {
	dir := filepath.Join(sw.s.root, "logs")
	return sw.sweep(dir, nil, func(n string) bool {
		st, err := os.Stat(filepath.Join(dir, n))
		return err == nil && time.Since(st.ModTime()) > logsKept
	}, &sw.rep.Logs)
}

// partialTrees: half-unpacked trees beside an environment's directories.
func (sw *gcSweeper) partialTrees() error {
	partials, _ := filepath.Glob(filepath.Join(string(sw.s.envs()), "*", "*"+unpackPartialSuffix))
	for _, p := range partials {
		if err := sw.sweep(filepath.Dir(p), nil, func(n string) bool { return n == filepath.Base(p) }, &sw.rep.Staging); err != nil || sw.rep.Interrupted {
			return err
		}
	}
	return nil
}

// childrenFirst orders layer hashes so that each comes before its
// parent: a gc stopped between two removals leaves no layer whose parent
// is gone. A parent's hash covers its own, so there are no cycles.
func (s *store) childrenFirst(names []string) []string {
	depth := map[string]int{}
	var depthOf func(h string) int
	depthOf = func(h string) int {
		if d, ok := depth[h]; ok {
			return d
		}
		d := 0
		if l, err := s.getLayer(h); err == nil && l.Parent != "" {
			d = 1 + depthOf(l.Parent)
		}
		depth[h] = d
		return d
	}
	for _, h := range names {
		depthOf(h)
	}
	sort.SliceStable(names, func(i, j int) bool { return depth[names[i]] > depth[names[j]] })
	return names
}

func gcListNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	return names, nil
}

// treeSize is the apparent size of a file or tree, for the report.
func gcTreeSize(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil {
			if fi, err := d.Info(); err == nil && !fi.IsDir() {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func gcPlural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// summary is the report in one line, as gc prints it.
func (rep gcReport) summary() string {
	verb, freed := "removed", "freed"
	if rep.DryRun {
		verb, freed = "would remove", "would free"
	}
	msg := fmt.Sprintf("%s %s, %s, %s", verb, gcPlural(rep.Objects, "object", "objects"), gcPlural(rep.Layers, "layer", "layers"),
		gcPlural(rep.EnvDirs, "environment directory", "environment directories"))
	if rep.Staging > 0 {
		msg += ", " + gcPlural(rep.Staging, "leftover temp file", "leftover temp files")
	}
	if rep.ImageCache > 0 {
		msg += ", " + gcPlural(rep.ImageCache, "image cache file", "image cache files")
	}
	return fmt.Sprintf("%s; %s %s", msg, freed, humanBytes(rep.Bytes))
}

func runGC(c *cli) error {
	s, err := c.openStore()
	if errors.Is(err, errNoStore) {
		if c.json {
			return writeJSON(c.stdout, gcReport{DryRun: c.has("dry-run")})
		}
		fmt.Fprintf(c.stdout, "nothing to collect: %v\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := s.gc(ctx, gcOptions{DryRun: c.has("dry-run"), Images: c.has("images")})
	if err != nil {
		return err
	}
	if c.json {
		writeJSON(c.stdout, rep)
	} else {
		fmt.Fprintln(c.stdout, rep.summary())
	}
	if rep.Interrupted {
		fmt.Fprintf(c.stderr, "karapace: gc interrupted; the store is consistent (run 'karapace gc' again to finish)\n")
		return exitStatus(130)
	}
	return nil
}
