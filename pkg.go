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
	if locked != nil {
		if l, ok := e.indexedDep(depKey(base, pm.name, locked)); ok {
			e.out.debugf("dependency layer %s from the store, no %s run", l, pm.name)
			return l, locked, 0, nil
		}
		if pm.pin == nil && !o.locked {
			e.out.warnf("%s cannot install the locked versions: resolving the packages again (build --locked refuses to)", pm.name)
			locked = nil
		} else if o.offline {
			return "", nil, 0, errors.New("the locked packages are not in this store (never built here, or removed by 'karapace gc' since the environment was destroyed), and --offline forbids downloading them; build once online, or import the environment ('karapace import')")
		}
	}
	if locked == nil && o.offline {
		return "", nil, 0, errors.New("installing system.packages needs the network, and --offline forbids it; build online once (the lock and the store then hold them)")
	}
	cmds, err := pm.installCommands(requested, locked)
	if err != nil {
		return "", nil, 0, err
	}
	dir, err := e.s.envs().staging(op, "build")
	if err != nil {
		return "", nil, 0, err
	}
	logPath := filepath.Join(dir, "install.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", nil, 0, err
	}
	defer logFile.Close()
	id := hashHex([]byte(dir))
	r := &runSpec{ID: id, ShortID: id[:12], Dir: envDir(dir), Lower: []string{baseTree}, Build: true}
	if o.archive != nil && pm.name == "apt" {
		// The base's sources list names the canonical archive; this
		// build fetches from the configured mirror, which no layer records.
		src := filepath.Join(dir, "sources")
		if err := os.WriteFile(src, []byte(archiveSources(o.archive, o.archive.Mirror)), 0o644); err != nil {
			return "", nil, 0, err
		}
		r.Binds = append(r.Binds, bindMount{Source: src, Target: "/" + archiveSourcesPath(o.archive), ReadOnly: true, Why: "the configured mirror"})
	}
	b := nsBackend{getenv: e.getenv}
	// On a terminal, the latest line of the install's output shows.
	status := e.out.status(pm.name)
	defer status.finish()
	env := pm.env
	run := func(argv []string, stdout io.Writer) error {
		fmt.Fprintf(logFile, "+ %s\n", strings.Join(argv, " "))
		var stderr io.Writer = logFile
		if stdout == nil {
			stdout = io.MultiWriter(logFile, status)
			stderr = stdout
		}
		code, err := runCaptured(b, r, argv, env, stdout, stderr)
		if err == nil && code != 0 {
			err = fmt.Errorf("%s exited with status %d", argv[0], code)
		}
		if err != nil {
			return fmt.Errorf("installing packages with %s: %w\nlast lines of %s:\n%s", pm.name, err, e.s.keepLog(logPath, pm.name+"-install"), tailFile(logPath, 25))
		}
		return nil
	}
	output := func(argv []string) (string, error) {
		var out bytes.Buffer
		err := run(argv, &out)
		return out.String(), err
	}
	out, err := output(pm.query)
	if err != nil {
		return "", nil, 0, err
	}
	before := pm.parse(out)
	var autoBefore map[string]bool
	if locked != nil && pm.auto != nil {
		if out, err = output(pm.auto); err != nil {
			return "", nil, 0, err
		}
		autoBefore = setOf(strings.Fields(out))
	}
	e.out.notef("installing %s with %s", strings.Join(requested, " "), pm.name)
	start := time.Now()
	install := cmds[len(cmds)-1]
	for _, cmd := range cmds[:len(cmds)-1] {
		if err := run(cmd, nil); err != nil {
			return "", nil, 0, err
		}
	}
	// The layer's time is that of the packages (see repro.go): they are
	// downloaded first to read it, then installed with it.
	var when int64
	if pm.download != nil {
		n := len(pm.install)
		if err := run(slices.Concat(install[:n], pm.download, install[n:]), nil); err != nil {
			return "", nil, 0, err
		}
		if when, err = downloadedDebsTime(r.Dir.upper(), pm.downloads); err != nil {
			return "", nil, 0, fmt.Errorf("reading the build times of the downloaded packages: %w", err)
		}
		if when > 0 {
			env = append(slices.Clone(pm.env), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", when))
		}
		if when > time.Now().Unix() {
			e.out.warnf("the packages were built at %s, after this machine's clock says it is: what the install writes keeps its own times, and another build of the lock may differ", time.Unix(when, 0).UTC().Format(time.RFC3339))
		}
	}
	if err := run(install, nil); err != nil {
		return "", nil, 0, err
	}
	pmTime := time.Since(start)
	status.finish()
	e.out.debugf("%s took %s", pm.name, pmTime.Round(time.Millisecond))
	if out, err = output(pm.query); err != nil {
		return "", nil, 0, err
	}
	closure := installedClosure(before, pm.parse(out), requested)
	if locked != nil && !sameClosure(closure, locked) {
		return "", nil, 0, fmt.Errorf("installing the locked packages gave a different set of packages (%s) than the lock lists; the archive no longer has the locked versions", describeClosureDiff(closure, locked))
	}
	if autos := lockedAutos(closure, requested, before, autoBefore); len(autos) > 0 {
		if err := run(append(slices.Clone(pm.markAuto), autos...), &bytes.Buffer{}); err != nil {
			return "", nil, 0, err
		}
	}
	if err := treeInNS(treeJob{Op: "clean", Dir: r.Dir.upper(), Paths: junkOf(pm.name)}, nil, nil); err != nil {
		return "", nil, 0, fmt.Errorf("removing package caches: %w", err)
	}
	layer, err := e.storeTree(op, r.Dir.upper(), layerDependency, base, when)
	if err != nil {
		return "", nil, 0, err
	}
	if err := os.MkdirAll(filepath.Dir(e.depIndex("x")), 0o700); err != nil {
		return "", nil, 0, err
	}
	if err := writeFileAtomic(e.depIndex(depKey(base, pm.name, closure)), []byte(layer+"\n"), 0o600); err != nil {
		return "", nil, 0, err
	}
	logFile.Close()
	if err := e.s.removeTree(dir); err != nil {
		return "", nil, 0, err
	}
	return layer, closure, pmTime, nil
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
