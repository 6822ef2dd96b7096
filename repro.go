package main

import (
	"archive/tar"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"
)

// A lock promises bytes: the layers built from it are the same wherever
// and whenever it is built (as root or rootless, in any store, on any day,
// from any mirror). Three things make them so:
//
//   - File times are clamped to the lock's time: the newest build time of
//     the packages a layer installs (the time dpkg-deb records in every
//     .deb, SOURCE_DATE_EPOCH by the reproducible-builds convention). The
//     lock pins the packages, so it fixes the time too, and old locks need
//     no new field. Files from packages keep their own (older) times;
//     what the run made gets the lock's time. (Where karapace does not
//     read the packages' times, dnf, zypper and pacman, every time is 0.)
//     The package manager runs with SOURCE_DATE_EPOCH set to it, so tools
//     that write a time into a file (py_compile, useradd) write that one.
//   - What a run leaves whose bytes depend on the run is dropped:
//     layerJunk below is the whole list.
//   - No mirror is written into a layer: the archive bootstrap's sources
//     list names the distribution's canonical archive, and a build fetches
//     from the configured mirror through a sources list bound over it.
//
// verify-store --rebuild checks the promise for one environment.

// junk is a path a build removes from a layer before packing it.
type junk struct {
	glob string // under the layer's root
	by   string // who leaves it: a package manager, or "bootstrap" (the archive bootstrap drops apt's too)
	why  string
}

// layerJunk is everything left out of layers, each with the reason.
// Removing a path from a writable layer shows the lower layer's copy
// again, which is what it was before the run.
var layerJunk = []junk{
	{"var/lib/apt/lists/*_*", "apt", "the archive's indexes as downloaded: newer every day, named after the mirror"},
	{"var/cache/apt/*.bin", "apt", "pkgcache.bin and srcpkgcache.bin, apt's binary cache of those indexes"},
	{"var/cache/apt/archives/*.deb", "apt", "the downloaded packages, installed by now"},
	{"var/log/apt/*", "apt", "the run's own log (history, terminal output, solver dumps), with its times"},
	{"var/log/dpkg.log", "apt", "dpkg's log, with the run's times"},
	{"var/log/alternatives.log", "apt", "update-alternatives' log, with the run's times"},
	{"var/cache/debconf/*-old", "apt", "debconf's copy of its database from before the run"},
	{"var/lib/dpkg/*-old", "apt", "dpkg's copy of its status from before the run"},
	{"var/cache/ldconfig/aux-cache", "apt", "ldconfig's record of the inode numbers and change times of the libraries it read"},
	{"var/cache/man/*", "apt", "man-db's index, a database whose layout depends on the run"},
	// Kept: Python's __pycache__. py_compile, under SOURCE_DATE_EPOCH,
	// writes hash-checked caches, the same bytes from every run.
	{"var/cache/karapace-debs", "bootstrap", "where the packages were bound in during the bootstrap"},
	{"var/log/*.log", "bootstrap", "the bootstrap's logs, with its times"},
	{"etc/hostname", "bootstrap", "the name of the machine that built it"},
	{"etc/resolv.conf", "bootstrap", "the resolver of the machine that built it"},
	{"root/.bash_history", "bootstrap", "a maintainer script's shell history"},
	{"var/cache/dnf/*", "dnf", "downloaded metadata and packages"},
	{"var/log/dnf*", "dnf", "the run's logs"},
	{"var/log/hawkey.log", "dnf", "the solver's log"},
	{"var/cache/zypp/*", "zypper", "downloaded metadata and packages"},
	{"var/log/zypper.log", "zypper", "the run's log"},
	{"var/log/zypp/*", "zypper", "the run's history"},
	{"var/cache/pacman/pkg/*", "pacman", "the downloaded packages"},
	{"var/lib/pacman/sync/*", "pacman", "the repositories' indexes as downloaded"},
	{"var/log/pacman.log", "pacman", "the run's log"},
}

// junkOf is the globs that those who leave them (layerJunk's by) leave.
func junkOf(by ...string) []string {
	var out []string
	for _, j := range layerJunk {
		if contains(by, j.by) {
			out = append(out, j.glob)
		}
	}
	return out
}

// debBuildTime is the time dpkg-deb wrote into a .deb: the date of its
// first ar member (debian-binary), which is the package's
// SOURCE_DATE_EPOCH when it was built reproducibly.
func debBuildTime(r io.Reader) (int64, error) {
	var b [len(debArMagic) + debArHeaderLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("not a .deb: %w", err)
	}
	if string(b[:len(debArMagic)]) != debArMagic {
		return 0, errors.New("not a .deb: no ar magic")
	}
	h := b[len(debArMagic):]
	name, _, err := debArHeader(h)
	if err != nil {
		return 0, err
	}
	if name != "debian-binary" {
		return 0, fmt.Errorf("the first member is %q, not debian-binary", name)
	}
	field := strings.TrimRight(string(h[16:28]), " ")
	t, err := strconv.ParseInt(field, 10, 64)
	if err != nil || t < 0 {
		return 0, fmt.Errorf("member date %q is not a time", field)
	}
	return t, nil
}

// debsTime is the newest build time of the packages in files.
func debsTime(files []string) (int64, error) {
	var newest int64
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return 0, err
		}
		t, err := debBuildTime(f)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		newest = max(newest, t)
	}
	return newest, nil
}

// downloadedDebsTime is the newest build time of the packages a build
// downloaded into dir (under root, a writable layer the build wrote: no
// path it planted leads out of it, and a FIFO does not block).
func downloadedDebsTime(root, dir string) (int64, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", root, err)
	}
	defer unix.Close(rfd)
	dfd, err := unix.Openat2(rfd, dir, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unpackResolve})
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", dir, err)
	}
	d := os.NewFile(uintptr(dfd), filepath.Join(root, dir))
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", dir, err)
	}
	var newest int64
	for _, n := range names {
		if !strings.HasSuffix(n, ".deb") {
			continue
		}
		fd, err := unix.Openat2(dfd, n, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC, Resolve: unpackResolve})
		if err != nil {
			return 0, fmt.Errorf("opening %s/%s: %w", dir, n, err)
		}
		f := os.NewFile(uintptr(fd), n)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			f.Close()
			return 0, fmt.Errorf("%s/%s is not a regular file", dir, n)
		}
		t, err := debBuildTime(f)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("%s/%s: %w", dir, n, err)
		}
		newest = max(newest, t)
	}
	return newest, nil
}

// layerEntry is what a layer records of one path, as packLayer writes it.
type layerEntry struct {
	typ        byte
	mode       int64
	uid, gid   int
	mtime      int64
	size       int64
	link       string
	xattrs     string // the PAX records, sorted
	contentSum string // blake3 of a file's bytes
}

// layerDifference is one path where two layers differ, and how.
type layerDifference struct {
	Path    string `json:"path"`
	Problem string `json:"problem"`
}

// readLayerEntries reads a layer's tar stream into what it records of
// each path: the files' bytes only as hashes, so a layer is never held in
// memory.
func readLayerEntries(r io.Reader) (map[string]layerEntry, error) {
	out := map[string]layerEntry{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		var recs []string
		for k, v := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				recs = append(recs, k[len("SCHILY.xattr."):]+"="+v)
			}
		}
		sort.Strings(recs)
		e := layerEntry{typ: hdr.Typeflag, mode: hdr.Mode, uid: hdr.Uid, gid: hdr.Gid, mtime: hdr.ModTime.Unix(),
			size: hdr.Size, link: hdr.Linkname, xattrs: strings.Join(recs, ", ")}
		if hdr.Typeflag == tar.TypeReg {
			h := blake3.New(32, nil)
			if _, err := io.Copy(h, tr); err != nil {
				return nil, err
			}
			e.contentSum = hex.EncodeToString(h.Sum(nil))
		}
		out[strings.TrimSuffix(hdr.Name, "/")] = e
	}
}

// diffLayers lists, path by path, how layer b differs from layer a (two
// tar streams as packLayer writes them): entries only in one, and for
// the others type, content, mode, owner, time, link target and xattrs.
// aName and bName say which is which.
func diffLayers(a, b io.Reader, aName, bName string) ([]layerDifference, error) {
	ea, err := readLayerEntries(a)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", aName, err)
	}
	eb, err := readLayerEntries(b)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", bName, err)
	}
	var out []layerDifference
	for p, x := range ea {
		y, ok := eb[p]
		if !ok {
			out = append(out, layerDifference{p, "only in " + aName})
			continue
		}
		var what []string
		add := func(differ bool, format string, a ...any) {
			if differ {
				what = append(what, fmt.Sprintf(format, a...))
			}
		}
		add(x.typ != y.typ, "a %s vs a %s", entryKind(x.typ), entryKind(y.typ))
		add(x.contentSum != y.contentSum || x.size != y.size, "content differs (%d vs %d bytes)", x.size, y.size)
		add(x.mode != y.mode, "mode %04o vs %04o", x.mode, y.mode)
		add(x.uid != y.uid || x.gid != y.gid, "owner %d:%d vs %d:%d", x.uid, x.gid, y.uid, y.gid)
		add(x.mtime != y.mtime, "time %s vs %s", time.Unix(x.mtime, 0).UTC().Format(time.RFC3339), time.Unix(y.mtime, 0).UTC().Format(time.RFC3339))
		add(x.link != y.link, "link target %q vs %q", x.link, y.link)
		add(x.xattrs != y.xattrs, "xattrs [%s] vs [%s]", x.xattrs, y.xattrs)
		if len(what) > 0 {
			out = append(out, layerDifference{p, strings.Join(what, "; ") + " (" + aName + " vs " + bName + ")"})
		}
	}
	for p := range eb {
		if _, ok := ea[p]; !ok {
			out = append(out, layerDifference{p, "only in " + bName})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func entryKind(t byte) string {
	switch t {
	case tar.TypeDir:
		return "directory"
	case tar.TypeSymlink:
		return "symlink"
	}
	return debTarType(t)
}

// rebuildReport is what verify-store --rebuild found.
type rebuildReport struct {
	EnvID   string         `json:"env_id"`
	ShortID string         `json:"short_id"`
	Same    bool           `json:"same"`
	Layers  []rebuiltLayer `json:"layers"`
	Seconds float64        `json:"seconds"`
}

// rebuiltLayer compares one layer of an environment with its rebuild.
type rebuiltLayer struct {
	Role        string            `json:"role"` // base, dependency
	Stored      string            `json:"stored"`
	Rebuilt     string            `json:"rebuilt"`
	Same        bool              `json:"same"`
	Note        string            `json:"note,omitempty"`
	Differences []layerDifference `json:"differences"`
}

// rebuildCheck is the auditor's check of an environment: build it again
// from its lock, as --locked would, in a scratch store beside this one
// (its own image cache, downloads and package manager runs; removed
// afterwards), and compare every layer with the environment's, naming
// each path that differs. Snapshots and the writable layer are the
// user's, not the lock's: they are not compared.
func (e *engine) rebuildCheck(ref string) (*rebuildReport, error) {
	start := time.Now()
	sl, err := e.s.lockShared("verify-store --rebuild")
	if err != nil {
		return nil, err
	}
	m, err := e.findEnv(ref)
	var lock *lockFile
	if err == nil {
		lock, err = e.lockOf(m)
	}
	sl.unlock()
	if err != nil {
		return nil, err
	}
	src, spec, images, err := e.rebuildSource(m, lock)
	if err != nil {
		return nil, err
	}
	scratch, err := os.MkdirTemp(filepath.Dir(e.s.root), filepath.Base(e.s.root)+"-rebuild-")
	if err != nil {
		return nil, fmt.Errorf("making the scratch store: %w", err)
	}
	defer func() {
		if err := removeOwnedTree(scratch); err != nil {
			e.out.warnf("removing the scratch store %s: %v", scratch, err)
		}
	}()
	s2, err := openStore(scratch)
	if err != nil {
		return nil, err
	}
	e.out.notef("building %s again from its lock in %s", m.ShortID, scratch)
	e2 := newEngine(s2, e.getenv, e.out)
	bl, err := e2.rebuildLayers(lock, src, spec, images)
	if err != nil {
		return nil, fmt.Errorf("building %s again from its lock: %w", m.ShortID, err)
	}
	rep := &rebuildReport{EnvID: m.EnvID, ShortID: m.ShortID, Same: true}
	if sl, err = e.s.lockShared("verify-store --rebuild"); err != nil {
		return nil, err
	}
	defer sl.unlock()
	compare := func(role, stored, rebuilt string) error {
		rl := rebuiltLayer{Role: role, Stored: stored, Rebuilt: rebuilt, Same: stored == rebuilt, Differences: []layerDifference{}}
		rep.Same = rep.Same && rl.Same
		if !rl.Same && stored != "" && rebuilt != "" {
			if err := e.compareLayers(e2, &rl); err != nil {
				return err
			}
		}
		rep.Layers = append(rep.Layers, rl)
		return nil
	}
	if err := compare("base", m.BaseLayer, bl.base); err != nil {
		return nil, err
	}
	for i := range max(len(m.DependencyLayers), len(bl.deps)) {
		var stored, rebuilt string
		if i < len(m.DependencyLayers) {
			stored = m.DependencyLayers[i]
		}
		if i < len(bl.deps) {
			rebuilt = bl.deps[i]
		}
		if err := compare("dependency", stored, rebuilt); err != nil {
			return nil, err
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// rebuildSource checks that an environment's lock can be built again
// here, and says from what: an archive (spec) or the image it pins.
func (e *engine) rebuildSource(m *envMeta, lock *lockFile) (src imageSource, spec *archiveSpec, images *imageEnv, err error) {
	if err := lock.verifyIntegrity(); err != nil {
		return imageSource{}, nil, nil, err
	}
	if lock.EnvID != m.EnvID {
		return imageSource{}, nil, nil, storeErrorf("the lock kept with environment %s is the lock of %s", m.ShortID, lock.ShortID)
	}
	if lock.Requested == nil && len(lock.Packages) > 0 {
		return imageSource{}, nil, nil, manifestErrorf("the lock of %s was written by an older karapace and does not say which packages were asked for: it cannot be built again as it is", m.ShortID)
	}
	images, err = newImageEnv(e.getenv, false, e.out)
	if err != nil {
		return imageSource{}, nil, nil, err
	}
	imgRef, _ := parseImageRef(lock.BaseImage)
	spec, err = archiveFor(imgRef, images.cfg)
	if err != nil {
		return imageSource{}, nil, nil, err
	}
	if drift := archiveSourceDrift(imgRef, spec, lock); drift != "" {
		return imageSource{}, nil, nil, manifestErrorf("the lock of %s: %s; it cannot be built again from the configured source", m.ShortID, drift)
	}
	lockDir := ""
	if m.ManifestPath != "" {
		lockDir = filepath.Dir(m.ManifestPath)
	}
	src, fromLock, err := images.lockedSource(spec, lock, lockDir)
	if err != nil {
		return imageSource{}, nil, nil, err
	}
	if spec == nil {
		switch {
		case !fromLock:
			return imageSource{}, nil, nil, manifestErrorf("the lock of %s names no image to build it from", m.ShortID)
		case !filepath.IsAbs(src.Location) && !strings.Contains(src.Location, "://"):
			return imageSource{}, nil, nil, fmt.Errorf("the lock of %s names its image %s relative to its manifest, and no manifest of it is known here; build it from its project with 'build --locked' instead", m.ShortID, lock.BaseImageURL)
		}
		if err := checkImageSource(src, lock.BaseImage, false); err != nil {
			return imageSource{}, nil, nil, err
		}
	}
	return src, spec, images, nil
}

// rebuildLayers makes the layers of a lock in a store of their own.
func (e *engine) rebuildLayers(lock *lockFile, src imageSource, spec *archiveSpec, images *imageEnv) (*builtLayers, error) {
	sl, err := e.s.lock("rebuild")
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	op, err := e.s.beginOp("rebuild", "")
	if err != nil {
		return nil, err
	}
	// The plan of 'build --locked' for a manifest asking what the lock asked.
	p := &buildPlan{o: buildOptions{locked: true}, kind: "rebuild", m: &manifest{Packages: lock.Requested, Backend: lock.Backend}, lock: lock, images: images, src: src, spec: spec}
	bl, err := e.makeLayers(op, p)
	if err == nil && bl.digest != lock.BaseImageDigest {
		err = fmt.Errorf("the base was made from %s, not the locked %s", bl.digest, lock.BaseImageDigest)
	}
	if err == nil && !sameClosure(bl.pkgs, lock.Packages) {
		err = fmt.Errorf("the packages installed were %s", describeClosureDiff(bl.pkgs, lock.Packages))
	}
	if err != nil {
		return nil, op.abandon(err)
	}
	return bl, op.done()
}

// compareLayers says how a stored layer and its rebuild (in e2's store)
// differ: path by path when their files do, else that only their parent
// layers do.
func (e *engine) compareLayers(e2 *engine, rl *rebuiltLayer) error {
	a, err := e.s.getLayer(rl.Stored)
	if err != nil {
		return err
	}
	b, err := e2.s.getLayer(rl.Rebuilt)
	if err != nil {
		return err
	}
	if a.TarHash == b.TarHash {
		rl.Note = "the same files, on another parent layer"
		return nil
	}
	ra, err := e.s.openObject(a.TarHash)
	if err != nil {
		return err
	}
	defer ra.Close()
	rb, err := e2.s.openObject(b.TarHash)
	if err != nil {
		return err
	}
	defer rb.Close()
	rl.Differences, err = diffLayers(ra, rb, "the store", "the rebuild")
	for _, r := range []io.Reader{ra, rb} {
		if err == nil { // to the end, where an object's hash is checked
			_, err = io.Copy(io.Discard, r)
		}
	}
	if err == nil && len(rl.Differences) == 0 {
		rl.Note = "the same files, in other tar bytes"
	}
	return err
}

// runRebuildCheck is verify-store --rebuild ENV.
func runRebuildCheck(c *cli) error {
	e, err := c.engine()
	if errors.Is(err, errNoStore) {
		return storeErrorf("nothing to rebuild: %v", err)
	}
	if err != nil {
		return err
	}
	rep, err := e.rebuildCheck(c.flag("rebuild"))
	if err != nil {
		return err
	}
	if c.json {
		writeJSON(c.stdout, rep)
	} else {
		const shown = 50
		for _, l := range rep.Layers {
			switch {
			case l.Same:
				fmt.Fprintf(c.stdout, "%s layer %s: the same\n", l.Role, l.Stored)
			case l.Stored == "" || l.Rebuilt == "":
				fmt.Fprintf(c.stdout, "%s layer: stored %q, rebuilt %q\n", l.Role, l.Stored, l.Rebuilt)
			default:
				fmt.Fprintf(c.stdout, "%s layer %s: differs, rebuilt as %s\n", l.Role, l.Stored, l.Rebuilt)
			}
			if l.Note != "" {
				fmt.Fprintf(c.stdout, "  %s\n", l.Note)
			}
			for i, d := range l.Differences {
				if i == shown {
					fmt.Fprintf(c.stdout, "  and %d more paths (--json lists them all)\n", len(l.Differences)-shown)
					break
				}
				fmt.Fprintf(c.stdout, "  %s: %s\n", d.Path, d.Problem)
			}
		}
	}
	if !rep.Same {
		return storeErrorf("building %s again from its lock gave other bytes than the store holds", rep.ShortID)
	}
	if !c.json {
		fmt.Fprintf(c.stdout, "%s: its lock gives the same bytes (%s)\n", rep.ShortID, gcPlural(len(rep.Layers), "layer", "layers"))
	}
	return nil
}
