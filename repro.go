package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A lock promises bytes: the layers built from it are the same wherever
// and whenever it is built (as root or rootless, in any store, on any day,
// from any mirror). Three things make them so:
//
//   - File times are clamped to the lock's time: the newest build time of
//     the packages a layer installs (the time dpkg-deb records in every
//     .deb, SOURCE_DATE_EPOCH by the reproducible-builds convention). The
//     lock pins the packages, so it fixes the time too, and old locks need
//     no new field. Files from packages keep their own (older) times, so
//     Python's caches stay valid; what the run made gets the lock's time.
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
	var t int64
	if _, err := fmt.Sscan(string(h[16:28]), &t); err != nil || t < 0 {
		return 0, fmt.Errorf("member date %q is not a time", strings.TrimSpace(string(h[16:28])))
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
