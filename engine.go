package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// engine builds and runs environments: the store, the image cache, the
// package managers and a runtime backend, tied together.
type engine struct {
	s      *store
	getenv func(string) string
	out    *output // messages and progress: the command line's, or a front end's
}

// newEngine opens the store for the command line's engine.
func (c *cli) engine() (*engine, error) {
	s, err := c.openStore()
	if err != nil {
		return nil, err
	}
	return newEngine(s, c.getenv, c.out), nil
}

// envArg opens the engine and finds the environment that the command's
// first argument names.
func (c *cli) envArg() (*engine, *envMeta, error) {
	e, err := c.engine()
	if errors.Is(err, errNoStore) {
		return nil, nil, fmt.Errorf("no environment %q: %w", c.args[0], err)
	}
	if err != nil {
		return nil, nil, err
	}
	m, err := e.findEnv(c.args[0])
	return e, m, err
}

// envArgShared is envArg under the store's shared lock, for a command
// that only reads the environment: nothing can remove what it reads until
// it calls unlock.
func (c *cli) envArgShared(op string) (*engine, *envMeta, *storeLock, error) {
	e, err := c.engine()
	if err != nil {
		return nil, nil, nil, err
	}
	sl, err := e.s.lockShared(op)
	if err != nil {
		return nil, nil, nil, err
	}
	m, err := e.findEnv(c.args[0])
	if err != nil {
		sl.unlock()
		return nil, nil, nil, err
	}
	return e, m, sl, nil
}

// newEngine is an engine over s that reports to out.
func newEngine(s *store, getenv func(string) string, out *output) *engine {
	s.out = out
	return &engine{s: s, getenv: getenv, out: out}
}

// buildOptions are the flags of build and rebuild.
type buildOptions struct {
	name          string
	locked        bool
	offline       bool
	requirePinned bool
	allowInsecure bool // an http:// base.image no digest pins
	rebuild       bool // replace the environment the lock named, in the same operation
	// archive is where the base was bootstrapped from, whose mirror the
	// package manager fetches from; nil for an image.
	archive *archiveSpec
}

// buildResult is what build reports (its --json, with stable names).
type buildResult struct {
	EnvID            string   `json:"env_id"`
	ShortID          string   `json:"short_id"`
	Name             string   `json:"name,omitempty"`
	Replaced         string   `json:"replaced,omitempty"` // rebuild: the env_id destroyed
	Manifest         string   `json:"manifest"`
	Lock             string   `json:"lock"`
	Created          bool     `json:"created"`
	BaseLayer        string   `json:"base_layer"`
	DependencyLayers []string `json:"dependency_layers"`
	Packages         int      `json:"packages"`                // the closure of system.packages
	Requested        []string `json:"requested_packages"`      // system.packages
	BasePackages     int      `json:"base_packages,omitempty"` // in the base, where its package database says
	BaseImage        string   `json:"base_image"`
	ImageDigest      string   `json:"image_digest"`
	// Where the time went, for anyone measuring karapace's own overhead.
	Seconds               float64 `json:"seconds"`
	ImportSeconds         float64 `json:"import_seconds"`
	PackageManagerSeconds float64 `json:"package_manager_seconds"`

	lockBytes []byte // the lock, written once the environment is in the store
}

// build is parse → normalize → resolve → lock → build. With a lock that
// matches the manifest it builds exactly what the lock says; --locked
// insists on that. The store is locked throughout.
func (e *engine) build(manifestPath string, o buildOptions) (*buildResult, error) {
	start := time.Now()
	p, err := e.planBuild(manifestPath, o)
	if err != nil {
		return nil, err
	}
	sl, err := e.s.lock(p.kind)
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	if err := e.checkReplacing(p); err != nil {
		return nil, err
	}
	if err := e.resolveBase(p); err != nil {
		return nil, err
	}
	res, err := e.buildInOp(p)
	if err != nil {
		return nil, err
	}
	if err := e.finishBuild(p, res); err != nil {
		return nil, err
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// buildPlan is what a build learns, step by step, before it changes the
// store.
type buildPlan struct {
	o      buildOptions
	kind   string // "build" or "rebuild", the WAL's and the lock's name for it
	m      *manifest
	lp     string    // the lock's path, as the user spelled the manifest's
	lock   *lockFile // the lock to build, when it matches the manifest
	ref    imageRef
	old    *envMeta // what a rebuild replaces
	images *imageEnv
	src    imageSource  // the base image, unless...
	spec   *archiveSpec // ...an archive bootstrap makes it
}

// planBuild reads the manifest and its lock and refuses, before any
// work, what the options, the policy or the lock refuse.
func (e *engine) planBuild(manifestPath string, o buildOptions) (*buildPlan, error) {
	m, err := loadManifest(manifestPath)
	if err != nil {
		return nil, err
	}
	if o.name == "" {
		o.name = m.Name
	}
	p := &buildPlan{o: o, kind: "build", m: m, lp: lockPath(manifestPath)}
	if o.rebuild {
		p.kind = "rebuild"
	}
	p.ref, _ = parseImageRef(m.BaseImage)
	if o.requirePinned && !p.ref.pinned() {
		return nil, manifestErrorf("%s: base.image %q is not pinned to a digest, and --require-pinned-image asks for one; run 'karapace pin %s'", manifestPath, m.BaseImage, manifestPath)
	}
	if o.name != "" {
		if err := validEnvName(o.name); err != nil {
			return nil, usageErrorf("--name: %v", err)
		}
	}
	// What exec would refuse, build refuses, pointing at the manifest.
	pol, err := loadPolicy(e.getenv)
	if err != nil {
		return nil, err
	}
	if err := pol.checkMounts(m, e.getenv("HOME")); err != nil {
		return nil, err
	}
	if key, msg := pol.limitOver(m.CPUShares, m.MemoryLimitMB, m.PidsLimit); key != "" {
		return nil, m.src.errorf([]string{"runtime", "resource_limits", key}, "%s (the policy in %s)", msg, configPath(e.getenv))
	}
	if _, err := os.Stat(p.lp); err != nil {
		if o.locked {
			return nil, manifestErrorf("--locked: %s does not exist; build once without --locked to create it", p.lp)
		}
		return p, nil
	}
	l, err := loadLock(p.lp)
	if err != nil {
		return nil, err
	}
	if err := l.verifyIntegrity(); err != nil {
		return nil, err
	}
	if err := l.verifyIntent(m); err != nil {
		if o.locked {
			return nil, err
		}
		e.out.notef("the manifest changed since %s was written: resolving again", p.lp)
		return p, nil
	}
	p.lock = l
	return p, nil
}

// checkReplacing finds what a rebuild replaces, and refuses a name
// another environment has.
func (e *engine) checkReplacing(p *buildPlan) error {
	if p.o.rebuild {
		if l, err := loadLock(p.lp); err == nil {
			if p.old, err = e.s.getMeta(l.EnvID); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		if p.old != nil && e.state(p.old) == stateRunning {
			return fmt.Errorf("environment %s, which %s names, is running; stop it before rebuilding", p.old.ShortID, p.lp)
		}
		if p.old != nil && p.o.name == "" {
			p.o.name = p.old.Name
		}
	}
	if p.o.name != "" {
		return e.nameAvailable(p.o.name, p.m.Path, p.old)
	}
	return nil
}

// resolveBase decides where the base comes from: an archive bootstrap,
// the image the lock pins, or the manifest's image resolved now.
func (e *engine) resolveBase(p *buildPlan) error {
	if err := checkStoreIDs(e.s.root); err != nil {
		return err
	}
	var err error
	if p.images, err = newImageEnv(e.getenv, p.o.offline, e.out); err != nil {
		return err
	}
	if _, err := loadLimits(e.getenv); err != nil { // checked before any work, needed or not
		return err
	}
	if p.spec, err = archiveFor(p.ref, p.images.cfg); err != nil {
		return err
	}
	// The configured mirror serves an archive base; the lock pins what it
	// must resolve to, not where from.
	if drift := archiveSourceDrift(p.ref, p.spec, p.lock); drift != "" {
		if p.o.locked {
			return manifestErrorf("--locked: %s: %s; build without --locked to resolve it again from the configured source", p.lp, drift)
		}
		e.out.notef("%s: %s: resolving again", p.lp, drift)
		p.lock = nil
	}
	var fromLock bool
	if p.src, fromLock, err = p.images.lockedSource(p.spec, p.lock, filepath.Dir(p.lp)); err != nil {
		return err
	}
	if p.spec != nil { // resolved by the bootstrap
		return nil
	}
	if !fromLock {
		if p.src, err = p.images.resolve(p.ref, p.m.Dir); err != nil {
			return err
		}
	}
	if err := checkImageSource(p.src, p.m.BaseImage, p.o.allowInsecure); err != nil {
		return manifestErrorf("%s: %v", p.m.Path, err)
	}
	return nil
}

// lockedSource is where the base a lock pins comes from. For an archive
// (spec), that is the configured mirror, or with none the snapshot mirror
// the lock names, since that serves the archive state it pins (spec.Mirror
// is set). For an image, the URL or file the lock names (relative to
// lockDir), pinned to its digest; fromLock is false when there is none.
func (images *imageEnv) lockedSource(spec *archiveSpec, lock *lockFile, lockDir string) (src imageSource, fromLock bool, err error) {
	switch {
	case lock == nil:
	case spec != nil:
		if images.cfg.Mirrors[spec.Distro] == "" {
			if mirror, ok := strings.CutSuffix(lock.BaseImageURL, "/dists/"+spec.Suite); ok {
				if _, snap := snapshotTime(mirror); snap {
					spec.Mirror = mirror
				}
			}
		}
	case lock.BaseImageURL != "":
		if !strings.HasPrefix(lock.BaseImageDigest, "sha256:") {
			return src, false, lock.src.errorf([]string{"base_image_digest"}, "%q: this lock needs a sha256 digest", lock.BaseImageDigest)
		}
		src = imageSource{Location: lock.BaseImageURL, SHA256: strings.TrimPrefix(lock.BaseImageDigest, "sha256:")}
		if !strings.Contains(src.Location, "://") && !filepath.IsAbs(src.Location) {
			src.Location = filepath.Join(lockDir, src.Location)
		}
		return src, true, nil
	}
	return src, false, nil
}

// buildInOp builds in one WAL operation: everything it puts in the store
// goes again if it fails.
func (e *engine) buildInOp(p *buildPlan) (*buildResult, error) {
	op, err := e.s.beginOp(p.kind, "")
	if err != nil {
		return nil, err
	}
	res, err := e.buildLocked(op, p)
	if err != nil {
		return nil, op.abandon(err)
	}
	if res.Replaced != "" {
		err = op.finish(string(e.s.envs().env(res.Replaced)))
	} else {
		err = op.done()
	}
	return res, err
}

// finishBuild does what follows a build outside the store: the replaced
// environment's launchers go, the built one's are written, and the lock
// changes only once the environment it names is in the store (--locked
// never rewrites it: it was checked to be exactly what got built).
func (e *engine) finishBuild(p *buildPlan, res *buildResult) error {
	if res.Replaced != "" {
		removeLaunchers(e.getenv, p.old.ShortID, e.out)
	}
	if len(p.m.Apps) > 0 {
		if err := writeLaunchers(e.getenv, e.s.root, res, p.m.Apps); err != nil {
			e.out.warnf("desktop launchers: %v", err)
		}
	}
	if prev, err := os.ReadFile(p.lp); !p.o.locked && (err != nil || !bytes.Equal(prev, res.lockBytes)) {
		if err := writeFileAtomic(p.lp, res.lockBytes, 0o644); err != nil {
			return fmt.Errorf("environment %s is built, but its lock was not written: %w", res.ShortID, err)
		}
	}
	res.Manifest, res.Lock = p.m.Path, lockPath(p.m.Path)
	return nil
}

// nameAvailable fails when another environment has the name: one built
// from another manifest, and not the one a rebuild replaces.
func (e *engine) nameAvailable(name, manifestPath string, replacing *envMeta) error {
	metas, errs := e.s.listMeta()
	if len(errs) > 0 {
		return errs[0]
	}
	for _, m := range metas {
		if m.Name == name && m.ManifestPath != manifestPath && (replacing == nil || m.EnvID != replacing.EnvID) {
			return usageErrorf("the name %q is taken by environment %s; rename or destroy that one first", name, m.ShortID)
		}
	}
	return nil
}

// buildLocked builds within op: the base layer, the packages' layer, the
// lock, the environment's metadata.
func (e *engine) buildLocked(op *walOp, p *buildPlan) (*buildResult, error) {
	bl, err := e.storedLayers(p.lock)
	if err == nil && bl == nil {
		bl, err = e.makeLayers(op, p)
	}
	if err != nil {
		return nil, err
	}
	pkgs := bl.pkgs
	res := &buildResult{BaseLayer: bl.base, DependencyLayers: append([]string{}, bl.deps...), ImageDigest: bl.digest, ImportSeconds: bl.importSeconds, PackageManagerSeconds: bl.pmSeconds,
		BaseImage: p.m.BaseImage, Requested: append([]string{}, p.m.Packages...), BasePackages: installedPackages(e.s.envs().tree(bl.base))}
	l := newLock(p.m, bl.digest, baseLocation(p), pkgs)
	if p.lock != nil && l.EnvID != p.lock.EnvID && p.o.locked {
		return nil, manifestErrorf("--locked: building %s gave environment %s, not the locked %s; the lock cannot be reproduced here", p.m.Path, l.ShortID, p.lock.ShortID)
	}
	if res.lockBytes, err = l.encode(); err != nil {
		return nil, err
	}
	res.EnvID, res.ShortID, res.Packages = l.EnvID, l.ShortID, len(pkgs)
	if p.old != nil && p.old.EnvID != l.EnvID {
		// The old environment goes in this operation: its metadata now
		// (its name is then free), its directory once the op commits.
		if err := op.saveMeta(p.old.EnvID); err != nil {
			return nil, err
		}
		if err := e.s.deleteMeta(p.old.EnvID); err != nil {
			return nil, err
		}
		res.Replaced = p.old.EnvID
	}
	return res, e.putBuiltMeta(op, p, res)
}

// builtLayers are what a build makes of a lock: the Base layer and the
// digest of what it was made from (sha256:HEX), the Dependency layers and
// the closure they install, and where the time went.
type builtLayers struct {
	base, digest             string
	deps                     []string
	pkgs                     []lockedPackage
	importSeconds, pmSeconds float64
}

// storedLayers finds the layers of a lock whose environment the store
// holds (built here, imported or pulled): those its env_id is bound to,
// found by the lock alone, with no image, archive or package manager,
// so a lock builds offline wherever its environment was carried. nil
// when the store lacks them.
func (e *engine) storedLayers(lock *lockFile) (*builtLayers, error) {
	if lock == nil {
		return nil, nil
	}
	known, err := e.s.knownLayers(lock.EnvID)
	if err != nil || known == nil || known.BaseLayer == "" {
		return nil, err
	}
	for _, l := range append([]string{known.BaseLayer}, known.DependencyLayers...) {
		if !e.hasTree(l) {
			return nil, nil
		}
	}
	e.out.debugf("the layers of %s from the store, as its env_id is bound to them", lock.ShortID)
	return &builtLayers{base: known.BaseLayer, digest: lock.BaseImageDigest, deps: known.DependencyLayers, pkgs: lock.Packages}, nil
}

// makeLayers makes the Base layer (or finds it in the store by its
// digest) and, for packages, the Dependency layer on it (or finds it by
// the locked closure). The plan's lock, when set, pins both.
func (e *engine) makeLayers(op *walOp, p *buildPlan) (*builtLayers, error) {
	start := time.Now()
	bl := &builtLayers{}
	var err error
	o := p.o
	if p.spec != nil {
		bl.base, bl.digest, err = e.archiveBase(op, p.spec, p.images, p.lock, p.o.locked)
		o.archive = p.spec
	} else {
		bl.base, bl.digest, err = e.baseLayer(op, p.src, p.images)
	}
	if err != nil {
		return nil, err
	}
	bl.digest = "sha256:" + bl.digest
	bl.importSeconds = time.Since(start).Seconds()
	if len(p.m.Packages) == 0 {
		return bl, nil
	}
	var want []lockedPackage
	if p.lock != nil {
		want = p.lock.Packages
	}
	b, err := e.backend(p.m.Backend)
	if err != nil {
		return nil, err
	}
	dep, closure, pmTime, err := b.packages(e, op, bl.base, p.m.Packages, want, o)
	bl.pmSeconds = pmTime.Seconds()
	if err != nil {
		return nil, err
	}
	bl.deps, bl.pkgs = []string{dep}, closure
	return bl, nil
}

// baseLocation is where the lock says the base came from.
func baseLocation(p *buildPlan) string {
	switch {
	case p.spec != nil:
		return p.spec.Mirror + "/dists/" + p.spec.Suite
	case p.ref.Kind == imageFile && !filepath.IsAbs(p.ref.Name):
		// As given, relative to the manifest and the lock beside it, so
		// the lock holds in every checkout.
		return p.ref.Name
	}
	return p.src.Location
}

// putBuiltMeta records the built environment: a new one with its
// manifest, lock and directory, or the one already built from the same
// lock; the name and the manifest that built it.
func (e *engine) putBuiltMeta(op *walOp, p *buildPlan, res *buildResult) error {
	now := time.Now().UTC().Format(time.RFC3339)
	meta, err := e.s.getMeta(res.EnvID)
	switch {
	case err == nil:
		meta.UpdatedAt = now
	case errors.Is(err, fs.ErrNotExist):
		manifestObj, _, err := op.putObject(bytes.NewReader(p.m.canonicalJSON()))
		if err != nil {
			return err
		}
		lockObj, _, err := op.putObject(bytes.NewReader(res.lockBytes))
		if err != nil {
			return err
		}
		if err := e.s.envs().env(res.EnvID).create(op); err != nil {
			return err
		}
		var deps []string // metadata says "null" for none, as it always did
		if len(res.DependencyLayers) > 0 {
			deps = res.DependencyLayers
		}
		meta = &envMeta{
			EnvID: res.EnvID, ShortID: res.ShortID, State: stateBuilt, ManifestHash: manifestObj, LockHash: lockObj,
			BaseLayer: res.BaseLayer, DependencyLayers: deps, Snapshots: []string{}, CreatedAt: now, UpdatedAt: now,
		}
		res.Created = true
	default:
		return err
	}
	if p.o.name != "" && meta.Name != p.o.name {
		if err := e.nameFree(p.o.name, meta.EnvID); err != nil {
			return err
		}
		meta.Name = p.o.name
	}
	res.Name = meta.Name
	meta.addManifest(p.m.Path)
	return op.putMeta(meta)
}

// nameFree fails when another environment has the name, or the name
// would read as the beginning of another's env_id.
func (e *engine) nameFree(name, envID string) error {
	metas, _ := e.s.listMeta()
	for _, m := range metas {
		if m.Name == name && m.EnvID != envID {
			return usageErrorf("the name %q is taken by environment %s; rename or destroy that one first", name, m.ShortID)
		}
		if m.EnvID != envID && isHexPrefix(name) && strings.HasPrefix(m.EnvID, name) {
			return usageErrorf("the name %q would be mistaken for environment %s, whose env_id begins with it; choose another", name, m.ShortID)
		}
	}
	return nil
}

// baseLayer returns the Base layer of an image, importing the image when
// no layer of its digest is in the store yet, and the image's sha256.
func (e *engine) baseLayer(op *walOp, src imageSource, images *imageEnv) (string, string, error) {
	if src.SHA256 == "" && !strings.Contains(src.Location, "://") {
		// Hashing a local image is cheap next to unpacking it again.
		sha, b3, err := fileDigests(src.Location)
		if err != nil {
			return "", "", fmt.Errorf("reading image %s: %w", src.Location, err)
		}
		if src.BLAKE3 != "" && b3 != src.BLAKE3 {
			return "", "", fmt.Errorf("image %s has blake3 %s, but %s was expected: refusing it", src.Location, b3, src.BLAKE3)
		}
		src.SHA256 = sha
	}
	if src.SHA256 != "" {
		if l, ok := e.indexedBase(src.SHA256); ok {
			e.out.debugf("base layer %s of image sha256:%s from the store", l, src.SHA256)
			return l, src.SHA256, nil
		}
	}
	name := filepath.Base(src.Location)
	lim, err := loadLimits(e.getenv)
	if err != nil {
		return "", "", err
	}
	var tree, sha string
	err = images.readImage(e.s, src, func(img *imageReader) error {
		prog := e.out.progress("importing "+name, img.size, true)
		defer prog.finish()
		if tree != "" { // what a damaged cached copy unpacked to
			if err := e.s.removeTree(tree); err != nil {
				return err
			}
		}
		var err error
		if tree, err = e.s.envs().staging(op, "import"); err != nil {
			return err
		}
		dec, err := decompress(prog.reader(img), name)
		if err != nil {
			return err
		}
		dec = &limitReader{r: dec, max: lim.ImageSize, over: func() error {
			return fmt.Errorf("image %s decompresses to more than %s, the most an image may (%s); refusing it", name, humanBytes(lim.ImageSize), lim.setting("image_max_size"))
		}}
		in := &errRecorder{r: dec}
		job := treeJob{Op: "unpack", Dir: tree, Image: true, MaxSize: int(lim.TreeSize), MaxEntries: int(lim.TreeEntries), Config: lim.file}
		if err := treeInNS(job, in, nil); err != nil {
			if in.err != nil {
				err = in.err
			}
			return fmt.Errorf("unpacking image %s: %w", name, err)
		}
		// The unpacker stops at the tar's end: the rest is decompressed
		// too, so that every check of the compression is verified, and
		// the digest covers every byte.
		if _, err := io.Copy(io.Discard, dec); err != nil {
			return fmt.Errorf("unpacking image %s: %w", name, err)
		}
		if err := img.drain(); err != nil {
			return err
		}
		sha = img.sha256
		return nil
	})
	if err != nil {
		return "", "", err
	}
	if l, ok := e.indexedBase(sha); ok {
		return l, sha, nil
	}
	layer, err := e.storeTree(op, tree, layerBase, "", 0)
	if err != nil {
		return "", "", err
	}
	dir := filepath.Join(imagesDir(e.s), "sha256-"+sha)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, "base-layer"), []byte(layer+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return layer, sha, nil
}

// indexedBase finds the Base layer already made from an image digest.
func (e *engine) indexedBase(sha string) (string, bool) {
	return e.indexedLayer(filepath.Join(imagesDir(e.s), "sha256-"+sha, "base-layer"))
}

// indexedLayer reads an index file naming a layer, and makes sure the
// layer and its tree are there.
func (e *engine) indexedLayer(index string) (string, bool) {
	data, err := os.ReadFile(index)
	if err != nil {
		return "", false
	}
	l := strings.TrimSpace(string(data))
	return l, e.hasTree(l)
}

// hasTree makes sure a layer is in the store with its tree, re-creating
// the tree when it was removed.
func (e *engine) hasTree(l string) bool {
	if !validStoreHash(l) || !e.s.hasLayer(l) {
		return false
	}
	if _, err := os.Stat(e.s.envs().tree(l)); err != nil {
		if err := e.unpackTree(l); err != nil {
			e.out.warnf("re-creating the tree of layer %s: %v", l, err)
			return false
		}
	}
	return true
}

// storeTree packs a tree into a layer of the given kind, its file times
// clamped to clamp (seconds since 1970; 0: all 0), and makes the tree
// that layer's lower directory.
func (e *engine) storeTree(op *walOp, tree string, kind layerKind, parent string, clamp int64) (string, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(treeInNS(treeJob{Op: "pack", Dir: tree, Clamp: int(clamp)}, nil, pw)) }()
	obj, _, err := op.putObject(pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return "", fmt.Errorf("packing %s: %w", tree, err)
	}
	lh, err := op.putLayer(&layer{Kind: kind, Parent: parent, ObjectRefs: []string{obj}, ReadOnly: true, TarHash: obj})
	if err != nil {
		return "", err
	}
	final := e.s.envs().tree(lh)
	if _, err := os.Stat(final); err == nil {
		return lh, e.s.removeTree(tree)
	}
	if err := os.MkdirAll(e.s.envs().trees(), 0o700); err != nil {
		return "", err
	}
	if err := op.rename(tree, final); err != nil {
		return "", err
	}
	return lh, nil
}

// unpackTree re-creates a layer's tree from its object (after a pull, or
// when the tree was removed), verified against the object's hash.
func (e *engine) unpackTree(layerHash string) error {
	l, err := e.s.getLayer(layerHash)
	if err != nil {
		return err
	}
	rc, err := e.s.openObject(l.TarHash)
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp := e.s.envs().tree(layerHash) + unpackPartialSuffix
	if err := e.s.removeTree(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	job, err := e.unpackJob(tmp)
	if err == nil {
		err = treeInNS(job, rc, nil)
	}
	if err == nil {
		_, err = io.Copy(io.Discard, rc) // the hash is checked at the end
	}
	if err == nil {
		err = os.Rename(tmp, e.s.envs().tree(layerHash))
	}
	if err != nil {
		e.s.removeTree(tmp)
		return fmt.Errorf("unpacking layer %s: %w", layerHash, err)
	}
	return nil
}

// unpackJob is the tree job that unpacks a layer into dir as an overlay
// layer, within the [limits] of the configuration.
func (e *engine) unpackJob(dir string) (treeJob, error) {
	l, err := loadLimits(e.getenv)
	return treeJob{Op: "unpack", Dir: dir, Overlay: true, MaxSize: int(l.TreeSize), MaxEntries: int(l.TreeEntries), Config: l.file}, err
}

// layerTrees lists the lower directories of an environment, top first,
// re-creating any tree that is missing.
func (e *engine) layerTrees(m *envMeta) ([]string, error) {
	if err := checkStoreIDs(e.s.root); err != nil {
		return nil, err
	}
	layers := append([]string{}, m.DependencyLayers...)
	for i, j := 0, len(layers)-1; i < j; i, j = i+1, j-1 {
		layers[i], layers[j] = layers[j], layers[i]
	}
	layers = append(layers, m.BaseLayer)
	var out []string
	for _, l := range layers {
		if _, err := os.Stat(e.s.envs().tree(l)); err != nil {
			if err := e.unpackTree(l); err != nil {
				return nil, err
			}
		}
		out = append(out, e.s.envs().tree(l))
	}
	return out, nil
}

// fileDigests hashes a file with sha256 and blake3 in one streaming pass.
func fileDigests(path string) (string, string, error) {
	f, err := openImageFile(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	r := newImageReader(f, imageSource{Location: path}, 0)
	if err := r.drain(); err != nil {
		return "", "", err
	}
	return r.sha256, r.blake3, nil
}

// archiveBase is the Base layer of a Debian or Ubuntu alias: the one the
// lock names when it is still in the store, else a bootstrap, which must
// give exactly the locked base under --locked.
func (e *engine) archiveBase(op *walOp, spec *archiveSpec, images *imageEnv, lock *lockFile, locked bool) (string, string, error) {
	required := ""
	if lock != nil {
		digest := strings.TrimPrefix(lock.BaseImageDigest, "sha256:")
		if l, ok := e.indexedArchiveBase(digest); ok {
			return l, digest, nil
		}
		if locked {
			required = digest
		}
	}
	return e.bootstrapBase(op, spec, images, required)
}
