package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The namespace backend. An environment runs as one instance: this binary,
// started again as the "init" stage in new user, mount, pid, uts and ipc
// namespaces (and net when isolated). Its setup below is one ordered
// sequence of system calls; each failure says what it was doing. Once set
// up, init listens on a unix socket in the environment's directory and
// starts every command of every exec/enter inside itself, so an
// environment's overlay is mounted exactly once however many sessions it
// has.

// initConfig is what the init stage needs, all host paths resolved and
// checked against the policy by the parent.
type initConfig struct {
	Lower       []string    // layer trees, top first
	Dir         string      // the environment's directory: upper/, work/, merged/, run/
	Writable    bool        // upper/ is the writable layer (else the root is read-only)
	Hostname    string      //
	Binds       []bindMount // manifest mounts, devices, host sockets, resolv.conf...
	Isolated    bool        // own network namespace: bring up loopback only
	FuseOverlay string      // fuse-overlayfs to fall back on, if found
	OnlyFuse    bool        // use it without trying kernel overlayfs first
	FullIDMap   bool        // gid 5 (tty) exists inside: devpts may use it
	Direct      bool        // the root is Lower[0] itself, writable, no overlay (bootstrap)
	User        string      // the host user's name, made known inside as root's alias
	Cgroups     int         // fds 6, 7...: the cgroup v1 pairs every command is forked in (see cgroupLimits.open)
	Owner       int         // the uid the environment's owner connects as, seen from inside
	PidsLimit   int         // RLIMIT_NPROC of every command, where no cgroup holds a pids limit
	// BindsMade: the mounts of Binds (but tmpfs ones) come with the
	// configuration, in their order, made by the parent (see bindMounts).
	BindsMade bool
	// The fd after the cgroups' is the first session's connection, its
	// request already in it.
}

func (c *initConfig) upper() string  { return c.Dir + "/upper" }
func (c *initConfig) work() string   { return c.Dir + "/work" }
func (c *initConfig) merged() string { return c.Dir + "/merged" }
func (c *initConfig) run() string    { return c.Dir + "/run" }

// bindMount binds a host path at a path inside the environment.
type bindMount struct {
	Source   string
	Target   string // absolute, inside the environment
	ReadOnly bool
	Dir      bool   // the source is a directory (else a file or socket)
	Tmpfs    bool   // no source: a fresh tmpfs at Target
	Why      string // for error messages: "mount workspace", "gpu"...
	Resolved bool   // Source was checked with its symlinks resolved: one appearing since is refused
	// Idmap: as root, files of the host appear inside with the owners
	// they have (host root as the environment's root), and what root
	// inside writes belongs to the host's root, through an idmapped mount
	// (see bindMounts).
	Idmap bool
}

func init() {
	stages["init"] = stage{func() wireMsg { return &initConfig{} }, initStage}
}

// dirs: the environment's directory rather than merged/ itself, so that
// merged/ seen through it is the root mounted on it.
func (c *initConfig) dirs() []*string {
	d := []*string{&c.Dir}
	for i := range c.Lower {
		d = append(d, &c.Lower[i])
	}
	return d
}

// initStage is the environment's pid 1. It reports setup errors through
// the ready pipe (fd 4) so the user sees them; afterwards its stderr is
// the instance's log (fd 5), so that no caller's terminal or pipe stays
// open for as long as the instance runs.
func initStage(c wireMsg, mounts []int, out *output) int {
	ready := os.NewFile(4, "ready")
	cfg := c.(*initConfig)
	fail := func(err error) int {
		fmt.Fprintf(ready, "%s", stagePaths.Replace(err.Error()))
		return exitFailure
	}
	// Nothing we mount may propagate back to the host. The service's ID
	// maps are written through /proc/PID, with PID as our pid namespace
	// knows it: its own /proc comes first.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail(fmt.Errorf("making mounts private: %w", err))
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail(fmt.Errorf("mounting the pid namespace's /proc: %w", err))
	}
	// The socket lives on the host side; its fd outlives pivot_root. The
	// service starts now, its start beside the setup, and waits for it.
	ln, err := listenControl(filepath.Join(cfg.run(), "ctl.sock"))
	if err != nil {
		return fail(err)
	}
	svc, release, err := startService(cfg, ln, out)
	if err != nil {
		return fail(err)
	}
	// Nothing inside may reach init's memory, descriptors or executable
	// (this binary, on the host). (A process that is not dumpable may
	// not exec /proc/self/exe: this comes after the service's start.)
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		svc.cmd.Process.Kill()
		return fail(fmt.Errorf("making init undumpable: %w", err))
	}
	if err := setupEnvironment(cfg, mounts, out); err != nil {
		release.Close()
		svc.cmd.Process.Kill()
		svc.cmd.Wait()
		return fail(err)
	}
	if err := unix.Dup3(5, 2, 0); err != nil {
		svc.cmd.Process.Kill()
		return fail(fmt.Errorf("redirecting init's stderr to its log: %w", err))
	}
	unix.Close(5)
	release.Write([]byte{1})
	release.Close()
	ready.Write([]byte{0})
	ready.Close()
	return superviseService(svc)
}

// superviseService waits for the service to end, passing on a request
// to stop (from 'karapace stop'), and takes what is left with it. As pid
// 1, init is the one process inside that no command can kill.
func superviseService(p *stageProc) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	done := make(chan struct{})
	go func() {
		p.cmd.Wait()
		close(done)
	}()
	for {
		select {
		case <-sigs:
			p.cmd.Process.Signal(unix.SIGTERM)
			time.AfterFunc(instanceStopGrace+time.Second, func() {
				unix.Kill(-1, unix.SIGKILL)
				os.Exit(exitOK)
			})
		case <-done:
			unix.Kill(-1, unix.SIGKILL)
			return exitOK
		}
	}
}

// setupEnvironment assembles the root filesystem and enters it. It runs
// as root of the new user namespace, in its own mount namespace. mounts
// are the idmapped binds' mounts, made by the parent.
func setupEnvironment(cfg *initConfig, mounts []int, out *output) error {
	// The directories init was given as descriptors (see stageDirs) are
	// needed only while it sets up.
	defer closeAll(stageFDs(append([]string{cfg.Dir}, cfg.Lower...)...))
	if cfg.User != "" && cfg.User != "root" {
		layer, err := writeUserLayer(filepath.Join(cfg.run(), "user-layer"), cfg, cfg.User)
		if err != nil {
			return err
		}
		if layer != "" {
			cfg.Lower = append([]string{layer}, cfg.Lower...)
		}
	}
	if cfg.Direct {
		// The root is written directly: no layer to add anything to.
	} else if layer, err := writeMountpointLayer(filepath.Join(cfg.run(), "mountpoints"), cfg); err != nil {
		return err
	} else if layer != "" {
		cfg.Lower = append(cfg.Lower, layer)
	}
	if err := mountRoot(cfg, out); err != nil {
		return err
	}
	root, err := unix.Open(cfg.merged(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the root %s: %w", cfg.merged(), err)
	}
	defer unix.Close(root)
	if err := mountDev(root, cfg.FullIDMap, out); err != nil {
		return err
	}
	if err := mountProc(root, out); err != nil {
		return err
	}
	if err := mountSys(root, cfg.Isolated, out); err != nil {
		return err
	}
	for _, b := range cfg.Binds {
		var err error
		if cfg.BindsMade && !b.Tmpfs {
			if len(mounts) == 0 {
				return fmt.Errorf("%s: the mount of %s did not come", b.Why, b.Source)
			}
			err = attachInto(root, b, mounts[0], out)
			mounts = mounts[1:]
		} else {
			err = bindInto(root, b, out)
		}
		if err != nil {
			return err
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fmt.Errorf("setting hostname %s: %w", cfg.Hostname, err)
	}
	if cfg.Isolated {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	return enterRoot(root)
}

// layers are the environment's layer trees, top first: what a file seen
// inside is looked up in before the root is mounted.
func (c *initConfig) layers() []string {
	if !c.Writable {
		return c.Lower
	}
	return append([]string{c.upper()}, c.Lower...)
}

// writeUserLayer makes a small layer, above the environment's layers and
// below its writable one, whose /etc/passwd and /etc/group also name the
// host user, as an alias of root: inside, the user is root. The layers
// themselves stay free of anything user-specific. It returns "" when the
// names are there already.
func writeUserLayer(dir string, cfg *initConfig, name string) (string, error) {
	if strings.ContainsAny(name, ":\n") {
		return "", nil
	}
	layers := cfg.layers()
	var entries []genEntry
	for _, f := range []struct{ file, line string }{
		{"etc/passwd", name + ":x:0:0:" + name + " (host user):/root:/bin/sh\n"},
		{"etc/group", name + ":x:0:\n"},
	} {
		var data []byte
		for _, l := range layers {
			b, err := os.ReadFile(filepath.Join(l, f.file))
			if err == nil {
				data = b
				break
			}
		}
		if data == nil || strings.Contains("\n"+string(data), "\n"+name+":") {
			continue
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		entries = append(entries, genEntry{path: f.file, data: append(data, f.line...)})
	}
	return writeGenLayer(dir, entries)
}

// writeMountpointLayer makes the mount points the environment lacks in a
// layer of their own, below all others: the binds find their targets, yet
// the writable layer (and so diff and commit) never sees them, and a
// frozen environment needs no writes. Being lowest, it never changes the
// attributes of a directory a real layer has. It returns "" when nothing
// is missing.
func writeMountpointLayer(dir string, cfg *initConfig) (string, error) {
	layers := cfg.layers()
	exists := func(target string) bool {
		for _, l := range layers {
			if _, err := os.Lstat(filepath.Join(l, target)); err == nil {
				return true
			}
		}
		return false
	}
	targets := []bindMount{{Target: "/dev", Dir: true}, {Target: "/proc", Dir: true}, {Target: "/sys", Dir: true}}
	var entries []genEntry
	for _, b := range append(targets, cfg.Binds...) {
		if !exists(b.Target) {
			entries = append(entries, genEntry{path: b.Target, dir: b.Dir})
		}
	}
	return writeGenLayer(dir, entries)
}

// genEntry is a directory or file of a layer init makes for itself.
type genEntry struct {
	path string // inside the layer
	dir  bool
	data []byte
}

// writeGenLayer makes dir a layer of exactly entries, or removes it and
// returns "" when there are none. The layer the last start made is kept
// when its description (dir + ".layer", written last) is the same:
// removing and remaking it cost more than the rest of the setup.
func writeGenLayer(dir string, entries []genEntry) (string, error) {
	var desc strings.Builder
	for _, e := range entries {
		if e.dir {
			fmt.Fprintf(&desc, "dir %q\n", e.path)
		} else {
			fmt.Fprintf(&desc, "file %q %d\n%s", e.path, len(e.data), e.data)
		}
	}
	descPath := dir + ".layer"
	if len(entries) > 0 {
		if old, err := os.ReadFile(descPath); err == nil && string(old) == desc.String() {
			if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
				return dir, nil
			}
		}
	}
	if err := os.Remove(descPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("clearing %s: %w", descPath, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("clearing %s: %w", dir, err)
	}
	if len(entries) == 0 {
		return "", nil
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", fmt.Errorf("creating %s: %w", p, err)
		}
		var err error
		if e.dir {
			err = os.Mkdir(p, 0o755)
		} else {
			err = os.WriteFile(p, e.data, 0o644)
		}
		if err != nil && !os.IsExist(err) {
			return "", fmt.Errorf("creating %s: %w", p, err)
		}
	}
	if err := os.WriteFile(descPath, []byte(desc.String()), 0o600); err != nil {
		return "", fmt.Errorf("writing %s: %w", descPath, err)
	}
	return dir, nil
}

// mountRoot mounts the overlay of the layers at cfg.Merged: kernel
// overlayfs with userxattr (its whiteouts and opaque markers are user.*
// xattrs, which a user namespace may write; without it dpkg fails with
// EXDEV when it renames directories), else fuse-overlayfs.
func mountRoot(cfg *initConfig, out *output) error {
	merged := cfg.merged()
	if cfg.Direct {
		out.tracef("bind %s on %s", cfg.Lower[0], merged)
		if err := unix.Mount(cfg.Lower[0], merged, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("binding the root %s at %s: %w", cfg.Lower[0], merged, err)
		}
		return nil
	}
	lower := strings.Join(escapeOverlayPaths(cfg.Lower), ":")
	var opts string
	var flags uintptr
	if !cfg.Writable {
		opts = "lowerdir=" + lower + ",userxattr"
		flags = unix.MS_RDONLY
	} else {
		opts = fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,userxattr", lower, escapeOverlayPath(cfg.upper()), escapeOverlayPath(cfg.work()))
	}
	err := errors.New("not tried (KARAPACE_OVERLAY=fuse)")
	if !cfg.OnlyFuse {
		out.tracef("mount overlay on %s: %s", merged, opts)
		if err = unix.Mount("overlay", merged, "overlay", flags, opts); err == nil {
			return nil
		}
		if cfg.FuseOverlay == "" {
			return fmt.Errorf("mounting the overlay root at %s: %w (kernel overlayfs in a user namespace needs Linux 5.11; fuse-overlayfs is not installed as a fallback)", merged, err)
		}
		out.debugf("kernel overlayfs failed (%v); trying %s", err, cfg.FuseOverlay)
	}
	fuseOpts := strings.Replace(opts, ",userxattr", "", 1)
	if !cfg.Writable {
		fuseOpts += ",ro"
	}
	// fuse-overlayfs reaches directories init was given as descriptors
	// through init's own, by the pid the host's /proc knows init by.
	target := merged
	if self, err := os.Readlink("/proc/self"); err == nil {
		r := strings.NewReplacer("/proc/self/fd/", "/proc/"+self+"/fd/")
		fuseOpts, target = r.Replace(fuseOpts), r.Replace(target)
	}
	said, ferr := exec.Command(cfg.FuseOverlay, "-o", fuseOpts, target).CombinedOutput()
	if ferr != nil {
		return fmt.Errorf("mounting the overlay root at %s: kernel overlayfs: %v; fuse-overlayfs: %v: %s", merged, err, ferr, strings.TrimSpace(string(said)))
	}
	return nil
}

// Overlay options separate with ',' and ':'; a path containing them must
// escape them with a backslash.
func escapeOverlayPath(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`)
	return r.Replace(p)
}

func escapeOverlayPaths(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = escapeOverlayPath(p)
	}
	return out
}

// openInRoot opens path inside the environment's root, resolving every
// symlink as the environment would see it, so nothing planted in an image
// can send a mount to a host path. Missing directories are created when
// mkdir is set (the last component as a directory or an empty file).
func openInRoot(root int, path string, mkdir, dir bool) (int, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(root, path, how)
	if err == nil || !mkdir || !errors.Is(err, unix.ENOENT) {
		if err != nil {
			return -1, fmt.Errorf("opening %s inside the environment: %w", path, err)
		}
		return fd, nil
	}
	parent, err := openInRoot(root, filepath.Dir(path), true, true)
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	// O_PATH fds cannot create entries; reopen the parent as a directory.
	pfd, err := unix.Openat(parent, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening %s inside the environment: %w", filepath.Dir(path), err)
	}
	defer unix.Close(pfd)
	name := filepath.Base(path)
	if dir {
		err = unix.Mkdirat(pfd, name, 0o755)
	} else {
		var f int
		f, err = unix.Openat(pfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(f)
		}
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("creating mount point %s inside the environment: %w", path, err)
	}
	return openInRoot(root, path, false, dir)
}

// fdPath names an open file for mount(2) without resolving any path again.
func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// mountAt mounts a filesystem at target inside the root.
func mountAt(root int, target, source, fstype string, flags uintptr, data string, out *output) error {
	fd, err := openInRoot(root, target, true, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	out.tracef("mount %s (%s) on %s, flags %#x", source, fstype, target, flags)
	if err := unix.Mount(source, fdPath(fd), fstype, flags, data); err != nil {
		return fmt.Errorf("mounting %s on %s: %w", fstype, target, err)
	}
	return nil
}

// bindInto binds a host path into the root, read-only when asked. The
// source was resolved and checked by the parent; it is opened once here
// and mounted by its fd.
func bindInto(root int, b bindMount, out *output) error {
	if b.Tmpfs {
		return mountAt(root, b.Target, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700", out)
	}
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}
	if b.Resolved {
		how.Resolve = unix.RESOLVE_NO_SYMLINKS
	}
	src, err := unix.Openat2(unix.AT_FDCWD, b.Source, how)
	if err != nil {
		return fmt.Errorf("%s: opening %s: %w", b.Why, b.Source, err)
	}
	defer unix.Close(src)
	dst, err := openInRoot(root, b.Target, true, b.Dir)
	if err != nil {
		return fmt.Errorf("%s: %w", b.Why, err)
	}
	defer unix.Close(dst)
	out.tracef("bind %s on %s (%s, read-only %v)", b.Source, b.Target, b.Why, b.ReadOnly)
	if err := unix.Mount(fdPath(src), fdPath(dst), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("%s: binding %s to %s: %w", b.Why, b.Source, b.Target, err)
	}
	if b.ReadOnly {
		// mount_setattr changes only the read-only bit, keeping the
		// flags a user namespace may not clear (nosuid, nodev...).
		mnt, err := openInRoot(root, b.Target, false, b.Dir)
		if err != nil {
			return fmt.Errorf("%s: %w", b.Why, err)
		}
		defer unix.Close(mnt)
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(mnt, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
			return fmt.Errorf("%s: making %s read-only: %w", b.Why, b.Target, err)
		}
	}
	return nil
}

// attachInto puts a mount the parent made (see bindMounts) at the bind's
// target inside the root.
func attachInto(root int, b bindMount, mnt int, out *output) error {
	dst, err := openInRoot(root, b.Target, true, b.Dir)
	if err != nil {
		return fmt.Errorf("%s: %w", b.Why, err)
	}
	defer unix.Close(dst)
	out.tracef("attach the mount of %s on %s (%s, read-only %v, idmapped %v)", b.Source, b.Target, b.Why, b.ReadOnly, b.Idmap)
	if err := unix.MoveMount(mnt, "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("%s: attaching the mount of %s at %s: %w", b.Why, b.Source, b.Target, err)
	}
	return nil
}

// stageFDs are the descriptors behind paths a stage was given (see
// stageDirs).
func stageFDs(paths ...string) []int {
	var fds []int
	for _, p := range paths {
		rest, ok := strings.CutPrefix(p, "/proc/self/fd/")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, "/")
		if fd, err := strconv.Atoi(n); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

// mountDev gives the environment a minimal /dev: a few host device nodes
// bound onto files of a tmpfs (a user namespace cannot mknod), a private
// devpts instance and a shared-memory tmpfs.
func mountDev(root int, fullIDMap bool, out *output) error {
	if err := mountAt(root, "/dev", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k", out); err != nil {
		return err
	}
	for _, name := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := bindInto(root, bindMount{Source: "/dev/" + name, Target: "/dev/" + name, Why: "/dev"}, out); err != nil {
			return err
		}
	}
	ptsOpts := "newinstance,ptmxmode=0666,mode=0620"
	if fullIDMap {
		ptsOpts += ",gid=5"
	}
	if err := mountAt(root, "/dev/pts", "devpts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, ptsOpts, out); err != nil {
		return err
	}
	if err := mountAt(root, "/dev/shm", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777", out); err != nil {
		return err
	}
	dev, err := openInRoot(root, "/dev", false, true)
	if err != nil {
		return err
	}
	defer unix.Close(dev)
	d, err := unix.Openat(dev, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev inside the environment: %w", err)
	}
	defer unix.Close(d)
	for _, l := range [][2]string{{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}} {
		if err := unix.Symlinkat(l[0], d, l[1]); err != nil {
			return fmt.Errorf("creating /dev/%s: %w", l[1], err)
		}
	}
	return nil
}

// mountProc mounts the pid namespace's own /proc, with the parts that
// act on the whole machine (sysctls, sysrq, interrupts, buses) read-only,
// as bubblewrap does: as root, a user namespace that maps the host's root
// would otherwise write them.
func mountProc(root int, out *output) error {
	if err := mountAt(root, "/proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "", out); err != nil {
		return err
	}
	for _, p := range []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"} {
		fd, err := openInRoot(root, p, false, false)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return err
		}
		err = unix.Mount(fdPath(fd), fdPath(fd), "", unix.MS_BIND|unix.MS_REC, "")
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("binding %s read-only: %w", p, err)
		}
		// The bind is a new mount at p: make that one read-only.
		if fd, err = openInRoot(root, p, false, false); err != nil {
			return err
		}
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("making %s read-only: %w", p, err)
		}
	}
	return nil
}

// mountSys gives a read-only /sys: a fresh sysfs when the environment owns
// its network namespace (required to mount one), else the host's, bound.
func mountSys(root int, isolated bool, out *output) error {
	if isolated {
		return mountAt(root, "/sys", "sysfs", "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "", out)
	}
	return bindInto(root, bindMount{Source: "/sys", Target: "/sys", ReadOnly: true, Dir: true, Why: "/sys"}, out)
}

// loopbackUp brings up lo, the only interface of an isolated environment.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bringing up loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bringing up loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up loopback: reading flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up loopback: %w", err)
	}
	return nil
}

// enterRoot makes the assembled tree the root and detaches the host's.
func enterRoot(root int) error {
	if err := unix.Fchdir(root); err != nil {
		return fmt.Errorf("entering the assembled root: %w", err)
	}
	// pivot_root(".", ".") stacks the old root under the new one; the
	// detach then removes it without needing a directory for it.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into the assembled root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("entering the new root: %w", err)
	}
	return nil
}
