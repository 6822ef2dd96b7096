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
)

// gcReport says what gc removed (or, dry, would remove).
type gcReport struct {
	DryRun      bool  `json:"dry_run"`
	Objects     int   `json:"objects"`
	Layers      int   `json:"layers"`
	EnvDirs     int   `json:"env_dirs"`
	Staging     int   `json:"staging"`
	ImageCache  int   `json:"image_cache_files"`
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
	dryRun := o.DryRun
	rep := gcReport{DryRun: dryRun}
	metas, errs := s.listMeta()
	if len(errs) > 0 {
		return rep, storeErrorf("gc: %v; not collecting while an environment's references are unknown (run 'karapace verify-store')", errs[0])
	}
	liveEnv := map[string]bool{}
	liveLayer := map[string]bool{}
	liveObject := map[string]bool{}
	var pending []string
	for _, m := range metas {
		liveEnv[m.EnvID] = true
		pending = append(pending, m.layerRefs()...)
		for _, h := range m.objectRefs() {
			liveObject[h] = true
		}
	}
	for len(pending) > 0 {
		h := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		if liveLayer[h] {
			continue
		}
		liveLayer[h] = true
		l, err := s.getLayer(h)
		if errors.Is(err, fs.ErrNotExist) {
			continue // a dangling reference is verify-store's to report
		}
		if err != nil {
			return rep, storeErrorf("gc: %v; not collecting while a live layer's references are unknown", err)
		}
		for _, o := range l.ObjectRefs {
			liveObject[o] = true
		}
		liveObject[l.TarHash] = true
		if l.Parent != "" {
			pending = append(pending, l.Parent)
		}
	}

	// The entry only records that a gc ran (removals are not undone); a
	// full disk, which gc is there to relieve, must not stop it.
	var op *walOp
	if !dryRun {
		var err error
		if op, err = s.beginOp("gc", ""); err != nil {
			warnf("gc: running without a WAL entry: %v", err)
			op = nil
		}
	}
	prog := newProgress("collecting garbage", 0, false)
	defer prog.finish()
	sweepNames := func(dir string, names []string, live map[string]bool, only func(string) bool, count *int) error {
		if names == nil {
			return nil
		}
		for _, n := range names {
			if live[n] || (only != nil && !only(n)) {
				continue
			}
			if ctx.Err() != nil {
				rep.Interrupted = true
				return nil
			}
			p := filepath.Join(dir, n)
			size := gcTreeSize(p)
			if !dryRun {
				if err := s.removeTree(p); err != nil {
					return storeErrorf("gc: removing %s: %v", p, err)
				}
			}
			*count++
			rep.Bytes += size
			prog.add(1)
		}
		if !dryRun {
			return syncDir(dir)
		}
		return nil
	}
	sweep := func(dir string, live map[string]bool, only func(string) bool, count *int) error {
		names, err := gcListNames(dir)
		if err != nil {
			return err
		}
		return sweepNames(dir, names, live, only, count)
	}
	steps := []func() error{
		func() error {
			return sweep(string(s.envs()), liveEnv, validStoreHash, &rep.EnvDirs)
		},
		func() error {
			// Layer trees (the runtime's unpacked layers) go with their
			// layers; their bytes count, the layers are counted once below.
			var trees int
			return sweep(s.envs().trees(), liveLayer, validStoreHash, &trees)
		},
		func() error {
			// Working directories of imports and builds that did not finish.
			return sweep(string(s.envs()), nil, s.envs().isStaging, &rep.Staging)
		},
		func() error {
			names, err := gcListNames(s.path("layers"))
			if err != nil {
				return err
			}
			return sweepNames(s.path("layers"), s.childrenFirst(names), liveLayer, nil, &rep.Layers)
		},
		func() error { return sweep(s.path("objects"), liveObject, nil, &rep.Objects) },
		func() error { return sweep(s.path("staging"), nil, nil, &rep.Staging) },
		func() error {
			// The image cache: an index naming a layer that is gone is
			// garbage; the downloads are too with --images, since a build
			// whose layers are in the store needs none of them.
			dir := imagesDir(s)
			names, err := gcListNames(dir)
			if err != nil {
				return err
			}
			dangling := func(index string) bool {
				data, _ := os.ReadFile(index)
				return !liveLayer[strings.TrimSpace(string(data))]
			}
			for _, n := range names {
				sub := filepath.Join(dir, n)
				switch {
				case strings.HasPrefix(n, "sha256-"):
					err = sweep(sub, nil, func(f string) bool {
						if strings.HasPrefix(f, "base-layer") { // an index (base-layer-v2: see archiveBaseIndex)
							return dangling(filepath.Join(sub, f))
						}
						return o.Images
					}, &rep.ImageCache)
					if !dryRun {
						os.Remove(sub) // only once empty
					}
				case n == "deps":
					err = sweep(sub, nil, func(f string) bool { return dangling(filepath.Join(sub, f)) }, &rep.ImageCache)
				case o.Images:
					err = sweep(sub, nil, nil, &rep.ImageCache)
				}
				if err != nil || rep.Interrupted {
					return err
				}
			}
			return nil
		},
		func() error {
			// Half-unpacked trees beside an environment's directories.
			partials, _ := filepath.Glob(filepath.Join(s.root, "env", "*", "*"+unpackPartialSuffix))
			for _, p := range partials {
				if err := sweep(filepath.Dir(p), nil, func(n string) bool { return n == filepath.Base(p) }, &rep.Staging); err != nil || rep.Interrupted {
					return err
				}
			}
			return nil
		},
	}
	for _, step := range steps {
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
		fmt.Fprintf(c.stdout, "%s; %s %s\n", msg, freed, humanBytes(rep.Bytes))
	}
	if rep.Interrupted {
		fmt.Fprintf(c.stderr, "karapace: gc interrupted; the store is consistent (run 'karapace gc' again to finish)\n")
		return exitStatus(130)
	}
	return nil
}
