package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// Debian and Ubuntu base images are built from the distribution's own
// archive, like mmdebstrap --variant=minbase: the signed InRelease is
// checked against the archive keyring, Packages against InRelease, every
// .deb against Packages; the Essential packages are unpacked, then dpkg
// installs and configures the whole set inside the sandbox. Every file of
// the result traces back to the distribution's signature, from any
// mirror, including an air-gapped one.

// archiveSpec is one distribution archive to bootstrap from.
type archiveSpec struct {
	Distro     string // "debian" or "ubuntu"
	Suite      string
	Mirror     string // URL of the archive root, no trailing slash
	Components []string
	Arch       string
	Keyring    *pgpKeyring
}

var archiveSuites = map[string][2]string{
	"debian": {"debian", "bookworm"}, "debian/bookworm": {"debian", "bookworm"}, "debian/12": {"debian", "bookworm"},
	"debian/trixie": {"debian", "trixie"}, "debian/13": {"debian", "trixie"}, "debian/sid": {"debian", "sid"},
	"ubuntu": {"ubuntu", "noble"}, "ubuntu/24.04": {"ubuntu", "noble"}, "ubuntu/noble": {"ubuntu", "noble"},
	"ubuntu/24.10": {"ubuntu", "oracular"}, "ubuntu/oracular": {"ubuntu", "oracular"},
	"ubuntu/22.04": {"ubuntu", "jammy"}, "ubuntu/jammy": {"ubuntu", "jammy"},
	"ubuntu/20.04": {"ubuntu", "focal"}, "ubuntu/focal": {"ubuntu", "focal"},
}

// debArches are the Debian names of the architectures Go builds for.
var debArches = map[string]string{"amd64": "amd64", "arm64": "arm64", "386": "i386", "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}

// debArch is the Debian name of a Go architecture (runtime.GOARCH).
func debArch(goarch string) (string, error) {
	if a, ok := debArches[goarch]; ok {
		return a, nil
	}
	return "", fmt.Errorf("bootstrapping from the distribution archive: no Debian architecture is known for %s (known: amd64, arm64, 386, riscv64, ppc64le, s390x); use [images] source = \"lxc\" or an image URL", goarch)
}

// defaultMirror is where a distribution's archive is when no mirror is
// configured: Ubuntu keeps all but amd64 and i386 on its ports server.
func defaultMirror(distro, arch string) string {
	switch {
	case distro == "debian":
		return "http://deb.debian.org/debian"
	case arch == "amd64" || arch == "i386":
		return "http://archive.ubuntu.com/ubuntu"
	}
	return "http://ports.ubuntu.com/ubuntu-ports"
}

// archiveFor decides whether a base image comes from a distribution
// archive: a bare Debian or Ubuntu alias does, unless the configuration
// says the LXC image server ([images] source = "lxc").
func archiveFor(ref imageRef, cfg imagesConfig) (*archiveSpec, error) {
	if ref.Kind != imageAlias || cfg.Source == "lxc" {
		return nil, nil
	}
	ds, ok := archiveSuites[ref.Name]
	if !ok {
		return nil, nil
	}
	arch, err := debArch(runtime.GOARCH)
	if err != nil {
		return nil, err
	}
	spec := &archiveSpec{Distro: ds[0], Suite: ds[1], Mirror: defaultMirror(ds[0], arch), Components: []string{"main"}, Arch: arch}
	if m := cfg.Mirrors[ds[0]]; m != "" {
		spec.Mirror = strings.TrimRight(m, "/")
	}
	kr, err := defaultArchiveKeyring(ds[0])
	if err != nil {
		return nil, err
	}
	if cfg.Keyring != "" {
		f, err := os.Open(cfg.Keyring)
		if err != nil {
			return nil, fmt.Errorf("archive keyring: %w", err)
		}
		defer f.Close()
		if kr, err = readPGPKeyring(f); err != nil {
			return nil, fmt.Errorf("archive keyring %s: %w", cfg.Keyring, err)
		}
	}
	spec.Keyring = kr
	return spec, nil
}

// archiveSourceDrift tells, for a Debian or Ubuntu alias, when its lock
// came from the other source than the configured one: the archive (whose
// base_image_url is MIRROR/dists/SUITE) or the LXC image server. Their
// digests pin different things, so one cannot be built as the other.
func archiveSourceDrift(ref imageRef, spec *archiveSpec, lock *lockFile) string {
	if _, ok := archiveSuites[ref.Name]; !ok || ref.Kind != imageAlias || lock == nil || lock.BaseImageURL == "" {
		return ""
	}
	fromArchive := path.Base(path.Dir(lock.BaseImageURL)) == "dists"
	switch {
	case spec != nil && !fromArchive:
		return fmt.Sprintf("its base came from the LXC image server (%s), but [images] source (or KARAPACE_IMAGE_SOURCE) now says the %s archive", lock.BaseImageURL, spec.Distro)
	case spec == nil && fromArchive:
		return fmt.Sprintf("its base was bootstrapped from the distribution archive (%s), but [images] source (or KARAPACE_IMAGE_SOURCE) now says lxc", lock.BaseImageURL)
	}
	return ""
}

// snapshotURL recognizes timestamped mirrors (snapshot.debian.org style):
// their Release files are old on purpose, so they are judged at the
// URL's time rather than now, signatures at the archive's date.
var snapshotURL = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`/(\d{8}T\d{6}Z)(/|$)`) })

// snapshotTime is the time a snapshot mirror URL shows the archive at.
func snapshotTime(mirror string) (time.Time, bool) {
	m := snapshotURL().FindStringSubmatch(mirror)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.Parse("20060102T150405Z", m[1])
	return t, err == nil
}

// archiveRelease is what a verified InRelease says.
type archiveRelease struct {
	rel    *debRelease
	signer string
}

// fetchRelease downloads InRelease and checks its signature and dates.
func (e *imageEnv) fetchRelease(spec *archiveSpec) (*archiveRelease, error) {
	dists := spec.Mirror + "/dists/" + spec.Suite + "/"
	url := dists + "InRelease"
	at, snapshot := snapshotTime(spec.Mirror)
	// verify checks the signature at a time: now, or for an old snapshot
	// (signed by keys that may have expired since) the archive's own date.
	var verify func(time.Time) ([]byte, string, error)
	var date time.Time
	data, err := e.getSmall(url, 16<<20)
	if isNotFound(err) {
		// Mirrors without InRelease have Release and a detached Release.gpg.
		url = dists + "Release"
		text, err := e.getSmall(url, 16<<20)
		if err != nil {
			return nil, err
		}
		sig, err := e.getSmall(url+".gpg", 1<<20)
		if err != nil {
			return nil, err
		}
		verify = func(at time.Time) ([]byte, string, error) {
			signer, err := spec.Keyring.verifyDetached(bytes.NewReader(text), sig, at)
			return text, signer, err
		}
		date = releaseDate(text)
	} else if err != nil {
		return nil, err
	} else {
		verify = func(at time.Time) ([]byte, string, error) { return spec.Keyring.verifyClearsigned(data, at) }
		date = releaseDate(data)
	}
	now := time.Now()
	text, signer, err := verify(now)
	if err != nil && snapshot && !date.IsZero() {
		text, signer, err = verify(date)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: the signature does not verify with the %s archive keyring: %w", url, spec.Distro, err)
	}
	rel, err := parseDebRelease(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if rel.Suite != spec.Suite && rel.Codename != spec.Suite {
		return nil, fmt.Errorf("%s is for suite %q (codename %q), not %q", url, rel.Suite, rel.Codename, spec.Suite)
	}
	// A mirror could serve any older validly signed Release and so roll
	// the archive back to versions with known holes: Valid-Until bounds
	// how old, at the snapshot's time or now.
	if snapshot {
		if rel.Date.After(at) {
			return nil, fmt.Errorf("%s is dated %s, after the time of the snapshot URL (%s): it cannot be the archive as it was then", url, rel.Date.UTC().Format(time.RFC3339), at.Format(time.RFC3339))
		}
		if !rel.ValidUntil.IsZero() && at.After(rel.ValidUntil) {
			return nil, fmt.Errorf("%s expired at %s (Valid-Until), before the time of the snapshot URL (%s): the mirror is replaying an older archive", url, rel.ValidUntil.UTC().Format(time.RFC3339), at.Format(time.RFC3339))
		}
	} else if !rel.ValidUntil.IsZero() && now.After(rel.ValidUntil) {
		return nil, fmt.Errorf("%s expired at %s (Valid-Until): the mirror is stale or replaying an old archive", url, rel.ValidUntil.UTC().Format(time.RFC3339))
	}
	e.out.debugf("%s signed by %s, dated %s", url, signer, rel.Date.Format(time.RFC3339))
	return &archiveRelease{rel: rel, signer: signer}, nil
}

// releaseDate reads the Date field of a signed message without trusting
// it for anything but choosing the time to verify the signature at.
func releaseDate(msg []byte) time.Time {
	for _, line := range strings.Split(string(msg), "\n") {
		if v, ok := strings.CutPrefix(line, "Date:"); ok {
			t, err := time.Parse(time.RFC1123Z, strings.TrimSpace(v))
			if err == nil {
				return t
			}
			t, _ = time.Parse("Mon, 2 Jan 2006 15:04:05 MST", strings.TrimSpace(v))
			return t
		}
	}
	return time.Time{}
}

// getSmall downloads a small file whole.
func (e *imageEnv) getSmall(url string, limit int64) ([]byte, error) {
	resp, err := e.get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", url, limit)
	}
	return data, nil
}

// fetchVerified returns the cache file, named by its sha256, of what
// name says (an index path, a package), downloading it from the first of
// urls that the mirror has. Every byte is checked against want: as a
// download streams, and a cached copy's again before each use, since a
// file under the right name is not yet the right file.
func (e *imageEnv) fetchVerified(ctx context.Context, dir, name string, urls []string, want debFileHash, prog *progress) (string, error) {
	p := filepath.Join(dir, want.SHA256)
	err := verifyCached(p, want)
	if err == nil {
		prog.add(want.Size)
		return p, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		if rmErr := os.Remove(p); rmErr != nil {
			return "", fmt.Errorf("%s: the cached copy %s %v, and removing it failed: %w", name, p, err, rmErr)
		}
		e.out.warnf("%s: the cached copy %s %v: removed it, downloading it again", name, p, err)
	}
	for _, url := range urls {
		if err = e.downloadVerified(ctx, url, p, want, prog); !isNotFound(err) {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

// verifyCached hashes a cached file, which must be exactly want.
func verifyCached(p string, want debFileHash) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, want.Size+1))
	if err != nil {
		return fmt.Errorf("cannot be read (%v)", err)
	}
	if n != want.Size {
		return fmt.Errorf("is not the %d bytes the archive index says", want.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("has sha256 %s, not the %s the archive index says", got, want.SHA256)
	}
	return nil
}

// downloadVerified streams url into the file p, checking size and hash
// on the way; nothing is at p unless all of it is right.
func (e *imageEnv) downloadVerified(ctx context.Context, url, p string, want debFileHash, prog *progress) error {
	resp, err := e.getContext(ctx, url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".partial-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(prog.reader(resp.Body), want.Size+1))
	if err != nil {
		return err
	}
	if n != want.Size {
		return fmt.Errorf("%s: got %d bytes, the archive index says %d", url, n, want.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("%s has sha256 %s, but the archive index says %s: refusing it", url, got, want.SHA256)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

// packagesIndex downloads and parses the Packages files of the archive.
func (e *imageEnv) packagesIndex(s *store, spec *archiveSpec, ar *archiveRelease) (*debIndex, error) {
	ix := newDebIndex(spec.Arch)
	cache := filepath.Join(imagesDir(s), "archive")
	for _, comp := range spec.Components {
		var rel string
		var want debFileHash
		for _, ext := range []string{".xz", ".gz", ""} {
			p := comp + "/binary-" + spec.Arch + "/Packages" + ext
			if h, ok := ar.rel.SHA256[p]; ok {
				rel, want = p, h
				break
			}
		}
		if rel == "" {
			return nil, fmt.Errorf("the %s Release file lists no Packages index for %s/binary-%s", spec.Suite, comp, spec.Arch)
		}
		// By-hash paths cannot change under a download; mirrors that do
		// not copy them still have the plain path, checked the same.
		dists := spec.Mirror + "/dists/" + spec.Suite + "/"
		urls := []string{dists + rel}
		if ar.rel.AcquireByHash {
			urls = append([]string{dists + path.Dir(rel) + "/by-hash/SHA256/" + want.SHA256}, urls...)
		}
		p, err := e.fetchVerified(context.Background(), cache, rel, urls, want, nil)
		if err != nil {
			return nil, err
		}
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		br := bufio.NewReaderSize(f, 256<<10)
		var r io.Reader = br
		compressed, err := uncompress(br, rel)
		if compressed != nil {
			r = compressed
		}
		if err == nil {
			err = ix.readPackages(r)
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading %s of %s: %w", rel, dists, err)
		}
	}
	return ix, nil
}

// bootstrapDigest identifies what a bootstrap installs: every package with
// the sha256 of its .deb, so it covers every byte that goes into the base,
// whichever mirror served it.
func bootstrapDigest(spec *archiveSpec, set []*debPackage) string {
	var b strings.Builder
	fmt.Fprintf(&b, "karapace archive bootstrap v1\n%s %s %s\n", spec.Distro, spec.Suite, spec.Arch)
	for _, p := range set {
		fmt.Fprintf(&b, "%s %s %s\n", p.Name, p.Version, p.SHA256)
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:])
}

// bootstrapBase returns the Base layer of an archive bootstrap and its
// digest. With a locked digest, the archive must still resolve to it
// (a snapshot mirror does), and a base already made from it is reused
// without a download.
func (e *engine) bootstrapBase(op *walOp, spec *archiveSpec, images *imageEnv, locked string) (string, string, error) {
	if locked != "" {
		if l, ok := e.indexedArchiveBase(locked); ok {
			return l, locked, nil
		}
	}
	if images.offline {
		return "", "", fmt.Errorf("bootstrapping %s/%s needs the archive, and --offline forbids the network (a base made before from the same lock would be used)", spec.Distro, spec.Suite)
	}
	ar, err := images.fetchRelease(spec)
	if err != nil {
		return "", "", err
	}
	ix, err := images.packagesIndex(e.s, spec, ar)
	if err != nil {
		return "", "", err
	}
	set, err := ix.minbase()
	if err != nil {
		return "", "", fmt.Errorf("resolving the %s %s base: %w", spec.Distro, spec.Suite, err)
	}
	essential, err := ix.essential()
	if err != nil {
		return "", "", fmt.Errorf("resolving the %s %s essential packages: %w", spec.Distro, spec.Suite, err)
	}
	digest := bootstrapDigest(spec, set)
	if locked != "" && digest != locked {
		return "", "", manifestErrorf("--locked: %s %s at %s (Release dated %s) resolves to base sha256:%s, not the locked sha256:%s: this mirror does not serve the locked archive state (a snapshot mirror URL of the lock's time would)", spec.Distro, spec.Suite, spec.Mirror, ar.rel.Date.UTC().Format(time.RFC3339), digest, locked)
	}
	if l, ok := e.indexedArchiveBase(digest); ok {
		return l, digest, nil
	}
	debs, err := e.fetchDebs(images, spec, set)
	if err != nil {
		return "", "", err
	}
	// The base's time is its packages' (see repro.go): the digest pins
	// them, so the same digest gives the same bytes.
	var files []string
	for _, p := range set {
		files = append(files, debs[p.Name])
	}
	when, err := debsTime(files)
	if err != nil {
		return "", "", err
	}
	tree, err := e.s.envs().staging(op, "bootstrap")
	if err != nil {
		return "", "", err
	}
	if err := e.installArchive(tree, spec, ix, set, essential, debs, when); err != nil {
		return "", "", err
	}
	layer, err := e.storeTree(op, tree, layerBase, "", when)
	if err != nil {
		return "", "", err
	}
	index := e.archiveBaseIndex(digest)
	if err := os.MkdirAll(filepath.Dir(index), 0o700); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(index, []byte(layer+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return layer, digest, nil
}

// archiveBaseIndex names the Base layer bootstrapped from a digest. Bases
// bootstrapped before they were reproducible (under base-layer) are not
// reused for new environments.
func (e *engine) archiveBaseIndex(digest string) string {
	return filepath.Join(imagesDir(e.s), "sha256-"+digest, "base-layer-v2")
}

func (e *engine) indexedArchiveBase(digest string) (string, bool) {
	return e.indexedLayer(e.archiveBaseIndex(digest))
}

// debFetchers is how many packages are downloaded at once.
const debFetchers = 6

// fetchDebs downloads the packages, several at once, into the package
// cache (by sha256), each checked against the signed index. The first
// failure stops the rest: the bootstrap cannot go on without any of them.
func (e *engine) fetchDebs(images *imageEnv, spec *archiveSpec, set []*debPackage) (map[string]string, error) {
	var total int64
	for _, p := range set {
		if strings.Contains(p.Filename, "..") || strings.HasPrefix(p.Filename, "/") {
			return nil, fmt.Errorf("package %s: bad Filename %q in the archive index", p.Name, p.Filename)
		}
		total += p.Size
	}
	prog := e.out.progress(fmt.Sprintf("downloading %d packages", len(set)), total, true)
	defer prog.finish()
	cache := filepath.Join(imagesDir(e.s), "debs")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	paths := make(map[string]string, len(set))
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, debFetchers)
	var wg sync.WaitGroup
	for _, p := range set {
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(p *debPackage) {
			defer wg.Done()
			defer func() { <-sem }() // after the cancel, so no download starts past a failure
			f, err := images.fetchVerified(ctx, cache, "package "+p.Name+" "+p.Version, []string{spec.Mirror + "/" + p.Filename}, debFileHash{p.SHA256, p.Size}, prog)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				return
			}
			paths[p.Name] = f
		}(p)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return paths, nil
}

// mergedUsrDirs are the top directories that are links into /usr.
func mergedUsrDirs(arch string) []string {
	dirs := []string{"bin", "sbin", "lib"}
	switch arch {
	case "amd64":
		dirs = append(dirs, "lib64")
	}
	return dirs
}

// installArchive makes the root filesystem in tree: the merged-/usr
// skeleton, the Essential packages' files, then dpkg installing the
// Essential packages and the rest, inside the sandbox, offline.
func (e *engine) installArchive(tree string, spec *archiveSpec, ix *debIndex, set, essential []*debPackage, debs map[string]string, when int64) error {
	dirs := mergedUsrDirs(spec.Arch)
	if err := archiveSkeleton(tree, dirs); err != nil {
		return err
	}
	if err := e.unpackEssential(tree, essential, debs, dirs); err != nil {
		return err
	}
	if err := e.dpkgInstall(tree, spec, ix, set, essential, debs, when); err != nil {
		return err
	}
	return finishArchiveTree(tree, spec)
}

// archiveSkeleton makes the merged-/usr links and what dpkg expects to
// find, owned by the environment's root.
func archiveSkeleton(tree string, dirs []string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(tree, "usr", d), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("usr/"+d, filepath.Join(tree, d)); err != nil {
			return err
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "etc", "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/cache/karapace-debs"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(tree, "tmp"), 0o1777)
	os.Chmod(tree, 0o755)
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(tree, f), nil, 0o644); err != nil {
			return err
		}
	}
	// The skeleton is the environment's root's, as what dpkg makes is.
	return planIDMapping().ownTree(tree)
}

// unpackEssential puts the Essential packages' files in place, as one
// stream: dpkg needs a shell, itself and its libraries before it can run.
func (e *engine) unpackEssential(tree string, essential []*debPackage, debs map[string]string, dirs []string) error {
	prog := e.out.progress("unpacking the essential packages", int64(len(essential)), false)
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		var err error
		for _, p := range essential {
			if err = appendDebData(tw, debs[p.Name], dirs); err != nil {
				err = fmt.Errorf("package %s: %w", p.Name, err)
				break
			}
			prog.add(1)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	err := treeInNS(treeJob{Op: "unpack", Dir: tree, Image: true}, pr, nil)
	pr.CloseWithError(io.ErrClosedPipe)
	prog.finish()
	if err != nil {
		return fmt.Errorf("unpacking the essential packages: %w", err)
	}
	return nil
}

// dpkgInstall installs the packages with dpkg inside the sandbox, with no
// network: the Essential ones first, then the rest in rounds.
func (e *engine) dpkgInstall(tree string, spec *archiveSpec, ix *debIndex, set, essential []*debPackage, debs map[string]string, when int64) error {
	// The packages, under names dpkg's messages can be read by.
	view := tree + ".debs"
	if err := os.Mkdir(view, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(view)
	for _, p := range set {
		name := p.Name + "_" + strings.ReplaceAll(p.Version, ":", "%3a") + "_" + p.Arch + ".deb"
		if err := linkOrCopy(debs[p.Name], filepath.Join(view, name)); err != nil {
			return err
		}
	}
	id := hashHex([]byte(tree))
	r := &runSpec{ID: id, ShortID: id[:12], Dir: envDir(tree + ".run"), Lower: []string{tree}, Direct: true, Build: true, Isolated: true,
		Binds: []bindMount{{Source: view, Target: "/var/cache/karapace-debs", Dir: true, ReadOnly: true, Why: "package cache"}}}
	defer e.s.removeTree(string(r.Dir))
	env := []string{"DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true", "LC_ALL=C.UTF-8",
		fmt.Sprintf("SOURCE_DATE_EPOCH=%d", when)}
	logPath := tree + ".log"
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer os.Remove(logPath)
	defer logFile.Close()
	b := nsBackend{getenv: e.getenv}
	inside := func(ps []*debPackage) []string {
		var out []string
		for _, p := range ps {
			out = append(out, "/var/cache/karapace-debs/"+p.Name+"_"+strings.ReplaceAll(p.Version, ":", "%3a")+"_"+p.Arch+".deb")
		}
		return out
	}
	// The Essential packages first, as one dpkg call (their files are in
	// place, so their pre-dependencies hold); then the rest, in rounds
	// that each need only what earlier rounds configured.
	steps := [][]string{append([]string{"dpkg", "--force-depends", "--install"}, inside(essential)...)}
	isEssential := map[string]bool{}
	for _, p := range essential {
		isEssential[p.Name] = true
	}
	var rest []*debPackage
	for _, p := range set {
		if !isEssential[p.Name] {
			rest = append(rest, p)
		}
	}
	for _, round := range dpkgRounds(ix, essential, rest) {
		steps = append(steps, append([]string{"dpkg", "--install"}, inside(round)...))
	}
	e.out.notef("installing %d packages with dpkg", len(set))
	for _, argv := range steps {
		code, err := runCaptured(b, r, argv, env, logFile, logFile)
		if err == nil && code != 0 {
			err = fmt.Errorf("dpkg exited with status %d", code)
		}
		if err != nil {
			return fmt.Errorf("installing the %s base with dpkg: %w\nlast lines of %s:\n%s", spec.Distro, err, e.s.keepLog(logPath, spec.Distro+"-bootstrap"), tailFile(logPath, 25))
		}
	}
	return nil
}

// dpkgRounds orders packages for dpkg, which does not reorder unpacking
// for Pre-Depends: each round holds the packages whose pre-dependencies
// the installed ones (and earlier rounds) satisfy.
func dpkgRounds(ix *debIndex, installed, rest []*debPackage) [][]*debPackage {
	done := append([]*debPackage{}, installed...)
	var rounds [][]*debPackage
	for len(rest) > 0 {
		var ready, later []*debPackage
		for _, p := range rest {
			ok := true
			for _, g := range p.PreDepends {
				ok = ok && slices.ContainsFunc(done, func(q *debPackage) bool {
					return slices.ContainsFunc(g, func(d debDep) bool { return ix.satisfies(q, d) })
				})
			}
			if ok {
				ready = append(ready, p)
			} else {
				later = append(later, p)
			}
		}
		if len(ready) == 0 {
			// A cycle or something missing: dpkg will say which.
			ready, later = later, nil
		}
		rounds = append(rounds, ready)
		done = append(done, ready...)
		rest = later
	}
	return rounds
}

// linkOrCopy makes dst a hard link to src, or a copy across filesystems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// appendDebData copies a package's data.tar into tw, paths moved under
// /usr where the root has merged directories.
func appendDebData(tw *tar.Writer, debPath string, dirs []string) error {
	f, err := os.Open(debPath)
	if err != nil {
		return err
	}
	defer f.Close()
	return debDataTar(f, func(data io.Reader) error {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(debMergedUsr(data, pw, dirs)) }()
		defer pr.CloseWithError(io.ErrClosedPipe)
		tr := tar.NewReader(pr)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := io.Copy(tw, tr); err != nil {
				return err
			}
		}
	})
}

// finishArchiveTree writes the sources list and removes what differs
// from one bootstrap to the next: caches, logs, machine identity.
func finishArchiveTree(tree string, spec *archiveSpec) error {
	sources := filepath.Join(tree, archiveSourcesPath(spec))
	if err := os.MkdirAll(filepath.Dir(sources), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(sources, []byte(archiveSources(spec, defaultMirror(spec.Distro, spec.Arch))), 0o644); err != nil {
		return err
	}
	if err := treeInNS(treeJob{Op: "clean", Dir: tree, Paths: junkOf("apt", "bootstrap")}, nil, nil); err != nil {
		return err
	}
	// systemd's convention: an empty machine-id is filled in on first boot.
	if err := os.WriteFile(filepath.Join(tree, "etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	return planIDMapping().own(filepath.Dir(sources), sources, filepath.Join(tree, "etc/machine-id"))
}

// archiveSourcesPath is where a bootstrapped base has its sources list.
func archiveSourcesPath(spec *archiveSpec) string {
	return "etc/apt/sources.list.d/" + spec.Distro + ".sources"
}

// archiveSources is the sources list of the archive at uri. A base names
// the distribution's canonical archive, whichever mirror it came from,
// so that its bytes do not depend on the mirror; a build binds one naming
// the configured mirror over it. A snapshot's Release files have expired
// on purpose (the bootstrap judged them at the snapshot's time).
func archiveSources(spec *archiveSpec, uri string) string {
	s := fmt.Sprintf("Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: /usr/share/keyrings/%s-archive-keyring.gpg\n",
		uri, spec.Suite, strings.Join(spec.Components, " "), spec.Distro)
	if _, snap := snapshotTime(uri); snap {
		s += "Check-Valid-Until: no\n"
	}
	return s
}
