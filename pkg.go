package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// pkgManager is how one family of distributions installs and lists
// packages. Everything runs inside the environment's sandbox.
type pkgManager struct {
	name    string
	marker  string     // a file in the root filesystem that identifies it
	env     []string   // set for every command
	refresh [][]string // before installing: update the package lists
	install []string   // followed by the packages
	exact   []string   // extra options when installing locked versions
	// pin spells "this package at exactly this version"; nil when the
	// package manager cannot install a given version from its repositories.
	pin   func(lockedPackage) string
	query []string                       // lists installed packages
	parse func(string) map[string]string // query output → name: version
	// download: extra options that make install only download, into
	// downloads (.deb files), whose build times give the layer's time (see
	// repro.go); nil where karapace does not read the packages' times.
	download  []string
	downloads string
	// auto lists the packages marked as installed automatically, and
	// markAuto (followed by packages) marks them so: a locked install
	// names every package, which would mark them all as asked for.
	auto, markAuto []string
}

var pkgManagers = []pkgManager{
	{
		name: "apt", marker: "usr/bin/apt-get",
		env:     []string{"DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"},
		refresh: [][]string{{"apt-get", "-q", "update"}},
		install: []string{"apt-get", "-q", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "install"},
		exact:   []string{"--allow-downgrades"},
		pin:     func(p lockedPackage) string { return p.Name + "=" + p.Version },
		query:   []string{"dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"},
		parse: func(out string) map[string]string {
			m := map[string]string{}
			for _, line := range strings.Split(out, "\n") {
				f := strings.Split(line, "\t")
				if len(f) == 3 && strings.HasPrefix(f[0], "ii") {
					m[f[1]] = f[2]
				}
			}
			return m
		},
		download: []string{"--download-only"}, downloads: "var/cache/apt/archives",
		auto: []string{"apt-mark", "showauto"}, markAuto: []string{"apt-mark", "auto"},
	},
	{
		name: "dnf", marker: "usr/bin/dnf",
		install: []string{"dnf", "-y", "--setopt=install_weak_deps=False", "install"},
		pin:     func(p lockedPackage) string { return p.Name + "-" + p.Version },
		query:   []string{"rpm", "-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"},
		parse:   parseTabPairs,
	},
	{
		name: "zypper", marker: "usr/bin/zypper",
		refresh: [][]string{{"zypper", "--non-interactive", "refresh"}},
		install: []string{"zypper", "--non-interactive", "install", "--no-recommends"},
		exact:   []string{"--oldpackage"},
		pin:     func(p lockedPackage) string { return p.Name + "=" + p.Version },
		query:   []string{"rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n"},
		parse:   parseTabPairs,
	},
	{
		name: "pacman", marker: "usr/bin/pacman",
		// -Sy without -u would install new packages against libraries
		// older than they were built for: a partial upgrade.
		install: []string{"pacman", "-Syu", "--needed", "--noconfirm"},
		query:   []string{"pacman", "-Q"},
		parse: func(out string) map[string]string {
			m := map[string]string{}
			for _, line := range strings.Split(out, "\n") {
				if name, ver, ok := strings.Cut(line, " "); ok {
					m[name] = ver
				}
			}
			return m
		},
	},
}

func parseTabPairs(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, ver, ok := strings.Cut(line, "\t"); ok {
			m[name] = strings.TrimPrefix(ver, "0:")
		}
	}
	return m
}

// detectPackageManager finds the package manager of a root filesystem,
// looking through its layer trees (top first).
func detectPackageManager(trees []string) (*pkgManager, error) {
	for i := range pkgManagers {
		for _, t := range trees {
			if st, err := os.Lstat(filepath.Join(t, pkgManagers[i].marker)); err == nil && !st.IsDir() {
				return &pkgManagers[i], nil
			}
		}
	}
	return nil, errors.New("the base image has no package manager karapace knows (apt, dnf, zypper or pacman); system.packages cannot be installed")
}

// installCommands are the commands that install the request, or exactly
// the locked closure.
func (pm *pkgManager) installCommands(requested []string, locked []lockedPackage) ([][]string, error) {
	cmds := append([][]string{}, pm.refresh...)
	cmd := append([]string{}, pm.install...)
	if locked == nil {
		return append(cmds, append(cmd, requested...)), nil
	}
	if pm.pin == nil {
		return nil, fmt.Errorf("--locked: %s cannot install exact versions from its repositories, so the locked packages cannot be installed here; build without --locked to resolve them again", pm.name)
	}
	cmd = append(cmd, pm.exact...)
	for _, p := range locked {
		cmd = append(cmd, pm.pin(p))
	}
	return append(cmds, cmd), nil
}

// depKey names the Dependency layer of a locked closure on a base layer,
// so the same lock finds it again without running the package manager.
func depKey(base, pm string, closure []lockedPackage) string {
	var b strings.Builder
	b.WriteString(base + "\n" + pm + "\n")
	for _, p := range closure {
		b.WriteString(p.Name + "=" + p.Version + "\n")
	}
	// v2: the layers of reproducible builds (repro.go), not those before.
	return hashHex([]byte("karapace dependency layer v2\n"), []byte(b.String()))
}

func (e *engine) depIndex(key string) string {
	return filepath.Join(imagesDir(e.s), "deps", key)
}

func (e *engine) indexedDep(key string) (string, bool) {
	return e.indexedLayer(e.depIndex(key))
}

// dependencyLayer returns the layer holding the requested packages on top
// of base and the closure that was installed: from the store when the
// locked closure was built before, else by running the package manager
// in a build environment and keeping its writable layer.
// The duration returned is the package manager's own time. A package
// manager that cannot pin resolves again, unless o.locked insists.
func (e *engine) dependencyLayer(op *walOp, base string, requested []string, locked []lockedPackage, o buildOptions) (string, []lockedPackage, time.Duration, error) {
	baseTree := e.s.envs().tree(base)
	pm, err := detectPackageManager([]string{baseTree})
	if err != nil {
		return "", nil, 0, err
	}
	layer, locked, err := e.storedDependency(base, pm, locked, o)
	if err != nil || layer != "" {
		return layer, locked, 0, err
	}
	cmds, err := pm.installCommands(requested, locked)
	if err != nil {
		return "", nil, 0, err
	}
	b, err := e.newPkgBuild(op, pm, baseTree, o.archive)
	if err != nil {
		return "", nil, 0, err
	}
	defer b.log.Close()
	defer b.status.finish()
	closure, when, pmTime, err := b.install(cmds, requested, locked)
	if err != nil {
		return "", nil, 0, err
	}
	layer, err = b.keep(op, base, closure, when)
	return layer, closure, pmTime, err
}

// storedDependency finds the layer of a locked closure in the store, and
// says whether an install pins the lock's versions (locked) or resolves
// again (nil); --offline refuses what would need the network.
func (e *engine) storedDependency(base string, pm *pkgManager, locked []lockedPackage, o buildOptions) (string, []lockedPackage, error) {
	if locked != nil {
		if l, ok := e.indexedDep(depKey(base, pm.name, locked)); ok {
			e.out.debugf("dependency layer %s from the store, no %s run", l, pm.name)
			return l, locked, nil
		}
		if pm.pin == nil && !o.locked {
			e.out.warnf("%s cannot install the locked versions: resolving the packages again (build --locked refuses to)", pm.name)
			locked = nil
		} else if o.offline {
			return "", nil, errors.New("the locked packages are not in this store (never built here, or removed by 'karapace gc' since the environment was destroyed), and --offline forbids downloading them; build once online, or import the environment ('karapace import')")
		}
	}
	if locked == nil && o.offline {
		return "", nil, errors.New("installing system.packages needs the network, and --offline forbids it; build online once (the lock and the store then hold them)")
	}
	return "", locked, nil
}

// pkgBuild is one package manager's work in a build environment: a
// staging directory whose writable layer becomes the layer, the log of
// every command, and the variables the commands get.
type pkgBuild struct {
	e       *engine
	pm      *pkgManager
	r       *runSpec
	dir     string
	logPath string
	log     *os.File
	status  *progress // on a terminal, the latest line of the output
	env     []string
}

// newPkgBuild makes the staging directory and the build environment over
// baseTree. With an archive base, apt fetches from the configured mirror
// through a sources list bound over the base's, which names the
// canonical archive: no layer records the mirror.
func (e *engine) newPkgBuild(op *walOp, pm *pkgManager, baseTree string, archive *archiveSpec) (*pkgBuild, error) {
	dir, err := e.s.envs().staging(op, "build")
	if err != nil {
		return nil, err
	}
	b := &pkgBuild{e: e, pm: pm, dir: dir, logPath: filepath.Join(dir, "install.log"), env: pm.env}
	id := hashHex([]byte(dir))
	b.r = &runSpec{ID: id, ShortID: id[:12], Dir: envDir(dir), Lower: []string{baseTree}, Build: true}
	if archive != nil && pm.name == "apt" {
		src := filepath.Join(dir, "sources")
		if err := os.WriteFile(src, []byte(archiveSources(archive, archive.Mirror)), 0o644); err != nil {
			return nil, err
		}
		b.r.Binds = append(b.r.Binds, bindMount{Source: src, Target: "/" + archiveSourcesPath(archive), ReadOnly: true, Why: "the configured mirror"})
	}
	if b.log, err = os.Create(b.logPath); err != nil {
		return nil, err
	}
	b.status = e.out.status(pm.name)
	return b, nil
}

// run runs argv in the build environment: its output to stdout, or with
// none to the log and the status line. A failure keeps the log and
// quotes its end.
func (b *pkgBuild) run(argv []string, stdout io.Writer) error {
	fmt.Fprintf(b.log, "+ %s\n", strings.Join(argv, " "))
	var stderr io.Writer = b.log
	if stdout == nil {
		stdout = io.MultiWriter(b.log, b.status)
		stderr = stdout
	}
	code, err := runCaptured(nsBackend{getenv: b.e.getenv}, b.r, argv, b.env, stdout, stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("%s exited with status %d", argv[0], code)
	}
	if err != nil {
		return fmt.Errorf("installing packages with %s: %w\nlast lines of %s:\n%s", b.pm.name, err, b.e.s.keepLog(b.logPath, b.pm.name+"-install"), tailFile(b.logPath, 25))
	}
	return nil
}

func (b *pkgBuild) output(argv []string) (string, error) {
	var out bytes.Buffer
	err := b.run(argv, &out)
	return out.String(), err
}

// install runs the install commands and returns the closure installed,
// the layer's time (see repro.go) and the package manager's own time.
// A locked install must give the locked closure, with apt's automatic
// marks as resolving would have left them.
func (b *pkgBuild) install(cmds [][]string, requested []string, locked []lockedPackage) ([]lockedPackage, int64, time.Duration, error) {
	pm := b.pm
	out, err := b.output(pm.query)
	if err != nil {
		return nil, 0, 0, err
	}
	before := pm.parse(out)
	var autoBefore map[string]bool
	if locked != nil && pm.auto != nil {
		if out, err = b.output(pm.auto); err != nil {
			return nil, 0, 0, err
		}
		autoBefore = setOf(strings.Fields(out))
	}
	b.e.out.notef("installing %s with %s", strings.Join(requested, " "), pm.name)
	start := time.Now()
	for _, cmd := range cmds[:len(cmds)-1] {
		if err := b.run(cmd, nil); err != nil {
			return nil, 0, 0, err
		}
	}
	install := cmds[len(cmds)-1]
	when, err := b.packagesTime(install)
	if err != nil {
		return nil, 0, 0, err
	}
	if err := b.run(install, nil); err != nil {
		return nil, 0, 0, err
	}
	pmTime := time.Since(start)
	b.status.finish()
	b.e.out.debugf("%s took %s", pm.name, pmTime.Round(time.Millisecond))
	if out, err = b.output(pm.query); err != nil {
		return nil, 0, 0, err
	}
	closure := installedClosure(before, pm.parse(out), requested)
	if locked != nil && !sameClosure(closure, locked) {
		return nil, 0, 0, fmt.Errorf("installing the locked packages gave a different set of packages (%s) than the lock lists; the archive no longer has the locked versions", describeClosureDiff(closure, locked))
	}
	if autos := lockedAutos(closure, requested, before, autoBefore); len(autos) > 0 {
		if err := b.run(append(slices.Clone(pm.markAuto), autos...), &bytes.Buffer{}); err != nil {
			return nil, 0, 0, err
		}
	}
	return closure, when, pmTime, nil
}

// packagesTime is the layer's time, that of the packages (see repro.go):
// they are downloaded first to read it, and the install then runs with
// it as SOURCE_DATE_EPOCH. 0 for package managers that cannot tell.
func (b *pkgBuild) packagesTime(install []string) (int64, error) {
	pm := b.pm
	if pm.download == nil {
		return 0, nil
	}
	n := len(pm.install)
	if err := b.run(slices.Concat(install[:n], pm.download, install[n:]), nil); err != nil {
		return 0, err
	}
	when, err := downloadedDebsTime(b.r.Dir.upper(), pm.downloads)
	if err != nil {
		return 0, fmt.Errorf("reading the build times of the downloaded packages: %w", err)
	}
	if when > 0 {
		b.env = append(slices.Clone(pm.env), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", when))
	}
	if when > time.Now().Unix() {
		b.e.out.warnf("the packages were built at %s, after this machine's clock says it is: what the install writes keeps its own times, and another build of the lock may differ", time.Unix(when, 0).UTC().Format(time.RFC3339))
	}
	return when, nil
}

// keep stores the writable layer, without what layers leave out, as the
// dependency layer of base, indexed by its closure, and removes the
// staging directory.
func (b *pkgBuild) keep(op *walOp, base string, closure []lockedPackage, when int64) (string, error) {
	e := b.e
	if err := treeInNS(treeJob{Op: "clean", Dir: b.r.Dir.upper(), Paths: junkOf(b.pm.name)}, nil, nil); err != nil {
		return "", fmt.Errorf("removing package caches: %w", err)
	}
	layer, err := e.storeTree(op, b.r.Dir.upper(), layerDependency, base, when)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(e.depIndex("x")), 0o700); err != nil {
		return "", err
	}
	if err := writeFileAtomic(e.depIndex(depKey(base, b.pm.name, closure)), []byte(layer+"\n"), 0o600); err != nil {
		return "", err
	}
	b.log.Close()
	return layer, e.s.removeTree(b.dir)
}

// lockedAutos are the packages of a locked install to mark as installed
// automatically, as resolving would have: those not asked for that the
// install added, or changed while they were marked so.
func lockedAutos(closure []lockedPackage, requested []string, before map[string]string, autoBefore map[string]bool) []string {
	if autoBefore == nil {
		return nil // not a locked install, or no marks to keep
	}
	var out []string
	for _, p := range closure {
		_, had := before[p.Name]
		if !contains(requested, p.Name) && (!had || autoBefore[p.Name]) {
			out = append(out, p.Name)
		}
	}
	return out
}

// installedClosure is what the install added or changed, plus every
// requested package, so the lock accounts for all of them.
func installedClosure(before, after map[string]string, requested []string) []lockedPackage {
	var out []lockedPackage
	for name, ver := range after {
		if before[name] != ver || contains(requested, name) {
			out = append(out, lockedPackage{name, ver})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func sameClosure(a, b []lockedPackage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func describeClosureDiff(got, want []lockedPackage) string {
	g, w := map[string]string{}, map[string]string{}
	for _, p := range got {
		g[p.Name] = p.Version
	}
	for _, p := range want {
		w[p.Name] = p.Version
	}
	var diffs []string
	for n, v := range w {
		if g[n] != v {
			diffs = append(diffs, fmt.Sprintf("%s: locked %s, installed %q", n, v, g[n]))
		}
	}
	for n, v := range g {
		if _, ok := w[n]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s %s: not in the lock", n, v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("and %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}

// runCaptured runs a command in an environment with its output going to
// writers rather than our terminal.
func runCaptured(b backend, r *runSpec, argv, set []string, stdout, stderr io.Writer) (int, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return 0, err
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(stdout, outR); outR.Close(); done <- struct{}{} }()
	go func() { io.Copy(stderr, errR); errR.Close(); done <- struct{}{} }()
	code, err := b.exec(r, &execSpec{Argv: argv, Set: set, Stdio: [3]*os.File{devnull, outW, errW}})
	outW.Close()
	errW.Close()
	<-done
	<-done
	return code, err
}

// keepLog copies the log of a failed build step to the store's logs/,
// where it outlives the step's working directory (gc prunes old ones),
// and returns where it is now; the original's path if it could not.
func (s *store) keepLog(path, what string) string {
	dir := filepath.Join(s.root, "logs")
	data, err := os.ReadFile(path)
	if err == nil {
		err = os.MkdirAll(dir, 0o700)
	}
	kept := filepath.Join(dir, time.Now().UTC().Format("20060102T150405Z")+"-"+what+".log")
	if err == nil {
		err = writeFileAtomic(kept, data, 0o600)
	}
	if err != nil {
		s.out.warnf("keeping the log %s: %v", path, err)
		return path
	}
	return kept
}

// installedPackages counts the packages a tree's dpkg database says are
// installed; 0 where it has none (not Debian-based, or unreadable).
func installedPackages(tree string) int {
	data, err := os.ReadFile(filepath.Join(tree, "var/lib/dpkg/status"))
	if err != nil {
		return 0
	}
	return strings.Count(string(data), "\nStatus: install ok installed\n")
}

// tailFile is the end of a log, for an error message.
func tailFile(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return "  " + strings.Join(all, "\n  ")
}

// mockDependencyLayer stands in for a package manager under the mock
// backend: every requested package "installs" as one file, at version
// 0-mock, deterministically and without namespaces or network.
func (e *engine) mockDependencyLayer(op *walOp, base string, requested []string) (string, []lockedPackage, error) {
	dir, err := e.s.envs().staging(op, "mock")
	if err != nil {
		return "", nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the layer's root is "/"
		return "", nil, err
	}
	pkgDir := filepath.Join(dir, "usr", "share", "karapace-mock")
	if err := os.MkdirAll(pkgDir, 0o755); err != nil {
		return "", nil, err
	}
	var closure []lockedPackage
	for _, p := range requested {
		if err := os.WriteFile(filepath.Join(pkgDir, p), []byte(p+" 0-mock\n"), 0o644); err != nil {
			return "", nil, err
		}
		closure = append(closure, lockedPackage{p, "0-mock"})
	}
	layer, err := e.storeTree(op, dir, layerDependency, base, 0)
	return layer, closure, err
}
