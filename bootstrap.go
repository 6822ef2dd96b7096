package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
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

var defaultMirrors = map[string]string{"debian": "http://deb.debian.org/debian", "ubuntu": "http://archive.ubuntu.com/ubuntu"}

// debArch is the Debian name of the architecture we run on.
func debArch() string {
	return map[string]string{"amd64": "amd64", "arm64": "arm64", "386": "i386", "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}[runtime.GOARCH]
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
	spec := &archiveSpec{Distro: ds[0], Suite: ds[1], Mirror: defaultMirrors[ds[0]], Components: []string{"main"}, Arch: debArch()}
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

// snapshotURL recognizes timestamped mirrors (snapshot.debian.org style):
// their Release files are old on purpose, so Valid-Until does not apply,
// and signatures are judged at the archive's date.
var snapshotURL = regexp.MustCompile(`/\d{8}T\d{6}Z/?`)

// archiveRelease is what a verified InRelease says.
type archiveRelease struct {
	rel    *debRelease
	signer string
}

// fetchRelease downloads InRelease and checks its signature and dates.
func (e *imageEnv) fetchRelease(spec *archiveSpec) (*archiveRelease, error) {
	dists := spec.Mirror + "/dists/" + spec.Suite + "/"
	url := dists + "InRelease"
	snapshot := snapshotURL.MatchString(spec.Mirror)
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
	if !snapshot && !rel.ValidUntil.IsZero() && now.After(rel.ValidUntil) {
		return nil, fmt.Errorf("%s expired at %s (Valid-Until): the mirror is stale or replaying an old archive", url, rel.ValidUntil.Format(time.RFC3339))
	}
	debugf("%s signed by %s, dated %s", url, signer, rel.Date.Format(time.RFC3339))
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

// fetchVerified downloads url into the cache file named by its sha256,
// checking size and hash as it streams; a cached file is used as it is.
func (e *imageEnv) fetchVerified(dir, url string, want debFileHash, prog *progress) (string, error) {
	p := filepath.Join(dir, want.SHA256)
	if st, err := os.Stat(p); err == nil && st.Size() == want.Size {
		prog.add(want.Size)
		return p, nil
	}
	if e.offline {
		return "", fmt.Errorf("%s is not in the cache, and --offline forbids downloading it", url)
	}
	resp, err := e.get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, ".partial-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(prog.reader(resp.Body), want.Size+1))
	if err != nil {
		return "", err
	}
	if n != want.Size {
		return "", fmt.Errorf("%s: got %d bytes, the archive index says %d", url, n, want.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return "", fmt.Errorf("%s has sha256 %s, but the archive index says %s: refusing it", url, got, want.SHA256)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return "", err
	}
	return p, nil
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
		url := spec.Mirror + "/dists/" + spec.Suite + "/" + rel
		if ar.rel.AcquireByHash {
			url = spec.Mirror + "/dists/" + spec.Suite + "/" + path.Dir(rel) + "/by-hash/SHA256/" + want.SHA256
		}
		p, err := e.fetchVerified(cache, url, want, nil)
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
			return nil, fmt.Errorf("reading %s: %w", url, err)
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
		if l, ok := e.indexedBase(locked); ok {
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
		return "", "", manifestErrorf("--locked: %s %s at %s now resolves to base sha256:%s, not the locked sha256:%s; the archive moved on (a snapshot mirror URL keeps it still)", spec.Distro, spec.Suite, spec.Mirror, digest, locked)
	}
	if l, ok := e.indexedBase(digest); ok {
		return l, digest, nil
	}
	debs, err := e.fetchDebs(images, spec, set)
	if err != nil {
		return "", "", err
	}
	tree, err := e.stagingDir(op, "bootstrap")
	if err != nil {
		return "", "", err
	}
	if err := e.installArchive(tree, spec, ar, ix, set, essential, debs); err != nil {
		return "", "", err
	}
	layer, err := e.storeTree(op, tree, layerBase, "")
	if err != nil {
		return "", "", err
	}
	dir := filepath.Join(imagesDir(e.s), "sha256-"+digest)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, "base-layer"), []byte(layer+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return layer, digest, nil
}

// fetchDebs downloads the packages, several at once, into the package
// cache (by sha256), each checked against the signed index.
func (e *engine) fetchDebs(images *imageEnv, spec *archiveSpec, set []*debPackage) (map[string]string, error) {
	var total int64
	for _, p := range set {
		total += p.Size
	}
	prog := newProgress(fmt.Sprintf("downloading %d packages", len(set)), total, true)
	defer prog.finish()
	cache := filepath.Join(imagesDir(e.s), "debs")
	paths := make(map[string]string, len(set))
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 6)
	var wg sync.WaitGroup
	for _, p := range set {
		if strings.Contains(p.Filename, "..") || strings.HasPrefix(p.Filename, "/") {
			return nil, fmt.Errorf("package %s: bad Filename %q in the archive index", p.Name, p.Filename)
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(p *debPackage) {
			defer wg.Done()
			defer func() { <-sem }()
			f, err := images.fetchVerified(cache, spec.Mirror+"/"+p.Filename, debFileHash{p.SHA256, p.Size}, prog)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("package %s %s: %w", p.Name, p.Version, err)
			}
			paths[p.Name] = f
		}(p)
	}
	wg.Wait()
	return paths, firstErr
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
func (e *engine) installArchive(tree string, spec *archiveSpec, ar *archiveRelease, ix *debIndex, set, essential []*debPackage, debs map[string]string) error {
	dirs := mergedUsrDirs(spec.Arch)
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
	// dpkg needs a shell, itself and its libraries before it can run:
	// unpack the Essential packages' files, as one stream.
	prog := newProgress("unpacking the essential packages", int64(len(essential)), false)
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
	r := &runSpec{ID: id, ShortID: id[:12], Dir: tree + ".run", Lower: []string{tree}, Direct: true, Build: true, Isolated: true,
		Binds: []bindMount{{Source: view, Target: "/var/cache/karapace-debs", Dir: true, ReadOnly: true, Why: "package cache"}}}
	defer os.RemoveAll(r.Dir)
	env := []string{"DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true", "LC_ALL=C.UTF-8",
		fmt.Sprintf("SOURCE_DATE_EPOCH=%d", ar.rel.Date.Unix())}
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
	e.infof("installing %d packages with dpkg", len(set))
	for _, argv := range steps {
		code, err := runCaptured(b, r, argv, env, logFile, logFile)
		if err == nil && code != 0 {
			err = fmt.Errorf("dpkg exited with status %d", code)
		}
		if err != nil {
			return fmt.Errorf("installing the %s base with dpkg: %w\nlast lines of the log:\n%s", spec.Distro, err, tailFile(logPath, 25))
		}
	}
	return finishArchiveTree(tree, spec)
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
	keyring := "/usr/share/keyrings/" + spec.Distro + "-archive-keyring.gpg"
	sources := fmt.Sprintf("Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: %s\n", spec.Mirror, spec.Suite, strings.Join(spec.Components, " "), keyring)
	if err := os.MkdirAll(filepath.Join(tree, "etc/apt/sources.list.d"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tree, "etc/apt/sources.list.d", spec.Distro+".sources"), []byte(sources), 0o644); err != nil {
		return err
	}
	junk := []string{"var/cache/karapace-debs", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*",
		"var/log/*.log", "var/log/apt/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/cache/ldconfig/aux-cache",
		"etc/hostname", "etc/resolv.conf", "root/.bash_history"}
	if err := treeInNS(treeJob{Op: "clean", Dir: tree, Paths: junk}, nil, nil); err != nil {
		return err
	}
	// systemd's convention: an empty machine-id is filled in on first boot.
	return os.WriteFile(filepath.Join(tree, "etc/machine-id"), nil, 0o444)
}
