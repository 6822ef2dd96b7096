package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// backend runs environments: every way the engine starts, stops or asks
// about an environment's processes goes through one. The namespace
// backend is the real one; the mock one stands in for it in tests of the
// engine and the command line.
type backend interface {
	name() string
	// exec runs one command (or, with e.Login, the login shell) in the
	// environment, joining its running instance or starting one; it
	// forwards signals and returns the command's exit status (128+N when
	// signal N ended it). An error means the command did not run: a
	// refused mount or limit (a manifest error), a command that could not
	// start (status 126 or 127, see commandErr), an instance that failed.
	exec(r *runSpec, e *execSpec) (int, error)
	// stop ends the running instance, if any: SIGTERM to every session,
	// SIGKILL after timeout. It returns once the instance is gone.
	stop(r *runSpec, timeout time.Duration) (stopResult, error)
	// status reports the running instance's pid. list asks it of every
	// environment: it is cheap and starts nothing.
	status(r *runSpec) (pid int, running bool)
	// packages makes (or finds in the store) the layer of the requested
	// packages on top of base, and returns it with the installed closure
	// and the package manager's own time; locked, when set, is the closure
	// to install exactly.
	packages(e *engine, op *walOp, base string, requested []string, locked []lockedPackage, o buildOptions) (string, []lockedPackage, time.Duration, error)
}

// stopResult is what stop did.
type stopResult struct {
	WasRunning bool // an instance ran
	Killed     bool // it outlived the timeout and was killed
}

// backendFor is the backend of a lock's runtime.backend, in the caller's
// environment (getenv: its config, HOME, session).
func backendFor(name string, getenv func(string) string, out *output) (backend, error) {
	switch name {
	case "namespace":
		return nsBackend{getenv: getenv, out: out}, nil
	case "oci":
		return ociBackend{getenv: getenv, out: out}, nil
	case "mock":
		return mockBackend{}, nil
	}
	return nil, fmt.Errorf("runtime backend %q is not available", name)
}

type nsBackend struct {
	getenv func(string) string
	out    *output
}

func (nsBackend) name() string { return "namespace" }

func (r *runSpec) runDir() instanceDir { return r.Dir.run() }

func (nsBackend) status(r *runSpec) (int, bool) { return r.runDir().running() }

// packages runs the image's package manager in a build environment (see
// engine.dependencyLayer).
func (nsBackend) packages(e *engine, op *walOp, base string, requested []string, locked []lockedPackage, o buildOptions) (string, []lockedPackage, time.Duration, error) {
	return e.dependencyLayer(op, base, requested, locked, o)
}

// exec runs a command in the environment's instance, starting the
// instance first when none is running.
func (b nsBackend) exec(r *runSpec, e *execSpec) (int, error) {
	if err := r.Dir.prepare(); err != nil {
		return 0, fmt.Errorf("preparing %s: %w", r.Dir, err)
	}
	req := spawnRequest{Argv: e.Argv, Env: commandEnv(r, e, b.getenv), Dir: commandDir(r, e, b.getenv), TTY: e.TTY, Login: e.Login}
	sigs := e.Signals
	if sigs == nil {
		sigs = catchSignals(e.TTY)
		defer sigs.stop()
	}
	for attempt := 0; ; attempt++ {
		// A running instance is joined: its socket answers. Only when
		// none does is one started.
		conn, err := r.runDir().join(&req, e.Stdio)
		if errors.Is(err, errInstanceGone) {
			if conn, err = b.start(r, &req, e.Stdio); err != nil {
				return 0, err
			}
			if conn < 0 { // another exec started one meanwhile
				conn, err = r.runDir().join(&req, e.Stdio)
			}
		}
		code := 0
		if err == nil {
			code, err = r.runDir().spawnIn(conn, req.TTY, e.Stdio, sigs.c)
		}
		// An instance that was just ending sends us to start a new one,
		// once it is gone.
		if errors.Is(err, errInstanceGone) && attempt < 3 {
			r.runDir().waitGone(2 * time.Second)
			continue
		}
		b.cleanUp(r)
		return code, err
	}
}

// start starts the environment's instance with req as its first session
// and returns the connection of that session, or -1 when an instance is
// running after all.
func (b nsBackend) start(r *runSpec, req *spawnRequest, stdio [3]*os.File) (int, error) {
	acc, err := resolveAccess(r, b.getenv, b.out)
	if err != nil {
		return -1, err
	}
	cfg, mapping, flags, err := b.initConfig(r, acc)
	if err != nil {
		return -1, err
	}
	// As root, the environment's root owns its directory, writable layer
	// and run directory (see stageDirs).
	if err := mapping.own(cfg.Dir, cfg.run(), cfg.merged(), cfg.upper(), cfg.work()); err != nil {
		return -1, err
	}
	cgroups, intoDir := acc.Limits.open(r.cgroupName(), b.out)
	defer func() {
		for _, f := range cgroups {
			f.Close()
		}
	}()
	if len(cgroups) == 0 {
		cfg.PidsLimit = int(acc.Limits.Pids)
	}
	var made func(int) ([]int, error)
	if cfg.BindsMade {
		made = bindMounts(cfg.Binds, b.out)
	}
	o := stageOptions{cloneFlags: flags, made: made, out: b.out}
	return r.runDir().ensureInstance(cfg, mapping, o, cgroups, intoDir, req, stdio)
}

// bindMounts makes, as root, in the mount namespace of a starting init,
// the mount of every bind: init, which runs as an ID of the range, may not
// reach every source (one under /root, say), and only a process with
// privilege over the source's filesystem may make an idmapped mount (see
// bindMount.Idmap), through init's user namespace. Only a mount of init's
// own mount namespace may be attached there, so they are made from inside.
func bindMounts(binds []bindMount, out *output) func(pid int) ([]int, error) {
	return func(pid int) ([]int, error) {
		userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("opening the environment's user namespace: %w", err)
		}
		defer unix.Close(userns)
		return openBindMounts(binds, userns, out, false)
	}
}

// openBindMounts makes the mount of every bind but tmpfs ones, idmapped
// through userns where asked; tmpfsSlots keeps a -1 in their places, so
// the result lines up with binds.
func openBindMounts(binds []bindMount, userns int, out *output, tmpfsSlots bool) ([]int, error) {
	var fds []int
	for _, b := range binds {
		if b.Tmpfs {
			if tmpfsSlots {
				fds = append(fds, -1)
			}
			continue
		}
		fd, idmapped, err := bindMountOf(b, userns)
		if err != nil {
			closeAll(fds)
			return nil, err
		}
		if b.Idmap && !idmapped && !b.ReadOnly {
			out.warnf("%s: %s is on a filesystem that cannot be idmapped: inside, its files belong to nobody, and root there cannot change them", b.Why, b.Source)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// bindMountOf is one bind's mount, detached, read-only and idmapped as
// asked. On a filesystem that cannot be idmapped it is a plain bind, and
// idmapped says so.
func bindMountOf(b bindMount, userns int) (fd int, idmapped bool, err error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}
	if b.Resolved {
		how.Resolve = unix.RESOLVE_NO_SYMLINKS
	}
	src, err := unix.Openat2(unix.AT_FDCWD, b.Source, how)
	if err != nil {
		return -1, false, fmt.Errorf("%s: opening %s: %w", b.Why, b.Source, err)
	}
	defer unix.Close(src)
	mnt, err := unix.OpenTree(src, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return -1, false, fmt.Errorf("%s: copying the mount of %s: %w", b.Why, b.Source, err)
	}
	var ro uint64
	if b.ReadOnly {
		ro = unix.MOUNT_ATTR_RDONLY
	}
	attr := &unix.MountAttr{Attr_set: ro}
	if b.Idmap {
		attr = &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | ro, Userns_fd: uint64(userns)}
	}
	err = unix.MountSetattr(mnt, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr)
	idmapped = b.Idmap && err == nil
	if b.Idmap && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM)) {
		attr = &unix.MountAttr{Attr_set: ro}
		err = unix.MountSetattr(mnt, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr)
	}
	if err != nil {
		unix.Close(mnt)
		return -1, false, fmt.Errorf("%s: setting the attributes of the mount of %s: %w", b.Why, b.Source, err)
	}
	return mnt, idmapped, nil
}

// cleanUp removes what an instance leaves behind on the host once it has
// ended: its cgroups.
func (b nsBackend) cleanUp(r *runSpec) {
	if _, ok := r.runDir().running(); !ok {
		removeCgroups(r.cgroupName(), b.out)
	}
}

// initConfig is what init needs to set up the environment r describes,
// with what of the host it reaches (resolveAccess), the ID mapping and the
// namespaces.
func (b nsBackend) initConfig(r *runSpec, acc *hostAccess) (*initConfig, idMapping, uintptr, error) {
	fail := func(err error) (*initConfig, idMapping, uintptr, error) { return nil, idMapping{}, 0, err }
	cfg := &initConfig{
		Lower:    r.Lower,
		Dir:      string(r.Dir),
		Hostname: "karapace-" + r.ShortID,
		Isolated: r.Isolated,
		Binds:    acc.Binds,
	}
	switch {
	case r.Direct:
		cfg.Direct = true
	case r.ReadOnly:
		// A frozen environment's writable layer becomes one more lower layer.
		cfg.Lower = append([]string{r.Dir.upper()}, r.Lower...)
	default:
		cfg.Writable = true
	}
	switch overlay := b.getenv("KARAPACE_OVERLAY"); overlay {
	case "", "auto", "fuse":
		if p, err := exec.LookPath("fuse-overlayfs"); err == nil {
			cfg.FuseOverlay = p
		} else if overlay == "fuse" {
			return fail(fmt.Errorf("KARAPACE_OVERLAY=fuse: fuse-overlayfs is not installed (sudo apt install fuse-overlayfs)"))
		}
		cfg.OnlyFuse = overlay == "fuse"
	case "kernel":
	default:
		return fail(fmt.Errorf("KARAPACE_OVERLAY=%q: expected auto, kernel or fuse", overlay))
	}
	if os.Geteuid() == 0 {
		// The host's files keep their owners inside (see bindMount.Idmap).
		for i := range cfg.Binds {
			cfg.Binds[i].Idmap = true
		}
		cfg.BindsMade = true
	}
	mapping := planIDMapping()
	if mapping.reduced != "" {
		b.out.warnf("%s", mapping.reduced)
	}
	cfg.FullIDMap = mapping.reduced == ""
	if os.Geteuid() == 0 {
		// The host's root is not mapped inside: it connects as the
		// kernel's overflow uid there.
		var err error
		if cfg.Owner, err = readIntFile("/proc/sys/kernel/overflowuid"); err != nil {
			return fail(fmt.Errorf("reading the kernel's overflow uid: %w", err))
		}
	}
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC)
	if r.Isolated {
		flags |= unix.CLONE_NEWNET
	}
	if !r.Build {
		cfg.User = hostUserName()
	}
	return cfg, mapping, flags, nil
}

// stop asks init to end the environment (SIGTERM to every session), then
// kills it after timeout.
func (b nsBackend) stop(r *runSpec, timeout time.Duration) (stopResult, error) {
	pid, ok := r.runDir().running()
	if !ok {
		return stopResult{}, nil
	}
	res := stopResult{WasRunning: true}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return res, fmt.Errorf("stopping pid %d: %w", pid, err)
	}
	defer b.cleanUp(r)
	if r.runDir().waitGone(timeout) {
		return res, nil
	}
	res.Killed = true
	unix.Kill(pid, syscall.SIGKILL)
	if r.runDir().waitGone(5 * time.Second) {
		return res, nil
	}
	return res, fmt.Errorf("the environment's init (pid %d) did not exit after SIGKILL", pid)
}

// mockBackend runs nothing. It answers deterministically so the engine
// and the command line can be tested without namespaces: a command prints
// its argv, and "exit N" ends with status N.
type mockBackend struct{}

func (mockBackend) name() string { return "mock" }

func (mockBackend) exec(r *runSpec, e *execSpec) (int, error) {
	argv := e.Argv
	if e.Login {
		argv = []string{"-sh"}
	}
	if len(argv) == 2 && argv[0] == "exit" {
		var n int
		if _, err := fmt.Sscan(argv[1], &n); err == nil {
			return n, nil
		}
	}
	fmt.Fprintf(e.Stdio[1], "mock[%s]: %s\n", r.ShortID, strings.Join(argv, " "))
	return 0, nil
}

func (mockBackend) stop(*runSpec, time.Duration) (stopResult, error) { return stopResult{}, nil }
func (mockBackend) status(*runSpec) (int, bool)                      { return 0, false }

// packages stands in for a package manager: see engine.mockDependencyLayer.
func (mockBackend) packages(e *engine, op *walOp, base string, requested []string, _ []lockedPackage, _ buildOptions) (string, []lockedPackage, time.Duration, error) {
	l, closure, err := e.mockDependencyLayer(op, base, requested)
	return l, closure, 0, err
}
