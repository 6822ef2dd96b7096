package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runSpec is an environment as a backend sees it: assembled by the engine
// from the store and the lock.
type runSpec struct {
	ID, ShortID string
	Dir         envDir   // where it lives: upper/, work/, merged/, run/
	Lower       []string // layer trees, top first
	ReadOnly    bool     // frozen: the root is mounted read-only
	Mounts      []lockMount
	ManifestDir string // relative mounts resolve here
	GPU, Audio  bool
	Isolated    bool
	CPUShares   int64
	MemoryMB    int64
	PidsLimit   int64       // 0: the policy's default
	Direct      bool        // Lower[0] is the root itself, written in place (archive bootstrap)
	Build       bool        // a build step: nothing of the host's session or user goes in
	Sockets     []string    // the host's session sockets it gets (see hostSocketsOf)
	Binds       []bindMount // more binds, already checked (the bootstrap's package cache)
}

// execSpec is one command to run in an environment.
type execSpec struct {
	Argv  []string // nil with Login: the login shell
	Login bool
	TTY   bool // on a new pseudo-terminal relayed to Stdio (enter)
	Stdio [3]*os.File
	Env   []string // host environment, filtered by the policy
	Set   []string // variables karapace itself sets for this command
	Cwd   string   // host working directory, mapped through the mounts
	// Signals to forward to the command, caught since before the
	// environment was looked up; nil: the backend starts catching them.
	Signals *signalCatch
}

// backend runs environments. The namespace backend is the real one; the
// mock one stands in for it in tests of the engine and the command line.
type backend interface {
	name() string
	prepare(r *runSpec) error
	exec(r *runSpec, e *execSpec) (int, error)
	stop(r *runSpec, timeout time.Duration) error
	status(r *runSpec) (pid int, running bool)
}

func backendFor(name string) (backend, error) {
	switch name {
	case "namespace":
		return nsBackend{getenv: os.Getenv}, nil
	case "mock":
		return mockBackend{}, nil
	}
	return nil, fmt.Errorf("runtime backend %q is not available", name)
}

type nsBackend struct {
	getenv func(string) string
}

func (nsBackend) name() string { return "namespace" }

func (r *runSpec) runDir() instanceDir { return r.Dir.run() }

func (nsBackend) prepare(r *runSpec) error {
	if err := r.Dir.prepare(); err != nil {
		return fmt.Errorf("preparing %s: %w", r.Dir, err)
	}
	return nil
}

func (nsBackend) status(r *runSpec) (int, bool) { return r.runDir().running() }

// exec runs a command in the environment's instance, starting the
// instance first when none is running.
func (b nsBackend) exec(r *runSpec, e *execSpec) (int, error) {
	if err := b.prepare(r); err != nil {
		return 0, err
	}
	req := spawnRequest{Argv: e.Argv, Env: b.commandEnv(r, e), Dir: b.commandDir(r, e), TTY: e.TTY, Login: e.Login}
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
		r.cleanUp()
		return code, err
	}
}

// start starts the environment's instance with req as its first session
// and returns the connection of that session, or -1 when an instance is
// running after all.
func (b nsBackend) start(r *runSpec, req *spawnRequest, stdio [3]*os.File) (int, error) {
	cfg, mapping, flags, pids, err := b.initConfig(r)
	if err != nil {
		return -1, err
	}
	// As root, the environment's root owns its directory, writable layer
	// and run directory (see stageDirs).
	if err := mapping.own(cfg.Dir, cfg.run(), cfg.merged(), cfg.upper(), cfg.work()); err != nil {
		return -1, err
	}
	cgroups, intoDir := cgroupLimits{CPUShares: r.CPUShares, MemoryMB: r.MemoryMB, Pids: pids}.open(r.ShortID)
	defer func() {
		for _, f := range cgroups {
			f.Close()
		}
	}()
	if len(cgroups) == 0 {
		cfg.PidsLimit = int(pids)
	}
	var made func(int) ([]int, error)
	if cfg.BindsMade {
		made = bindMounts(cfg.Binds)
	}
	return r.runDir().ensureInstance(cfg, mapping, flags, cgroups, intoDir, made, req, stdio)
}

// bindMounts makes, as root, in the mount namespace of a starting init,
// the mount of every bind: init, which runs as an ID of the range, may not
// reach every source (one under /root, say), and only a process with
// privilege over the source's filesystem may make an idmapped mount (see
// bindMount.Idmap), through init's user namespace. Only a mount of init's
// own mount namespace may be attached there, so they are made from inside.
func bindMounts(binds []bindMount) func(pid int) ([]int, error) {
	return func(pid int) ([]int, error) {
		userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("opening the environment's user namespace: %w", err)
		}
		defer unix.Close(userns)
		var fds []int
		for _, b := range binds {
			if b.Tmpfs {
				continue
			}
			fd, idmapped, err := bindMountOf(b, userns)
			if err != nil {
				closeAll(fds)
				return nil, err
			}
			if b.Idmap && !idmapped && !b.ReadOnly {
				warnf("%s: %s is on a filesystem that cannot be idmapped: inside, its files belong to nobody, and root there cannot change them", b.Why, b.Source)
			}
			fds = append(fds, fd)
		}
		return fds, nil
	}
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
func (r *runSpec) cleanUp() {
	if _, ok := r.runDir().running(); !ok {
		removeCgroups(r.ShortID)
	}
}

// initConfig resolves everything init needs, checking the policy before
// anything is mounted. It returns the pids limit too, for a cgroup or
// init to hold.
func (b nsBackend) initConfig(r *runSpec) (*initConfig, idMapping, uintptr, int64, error) {
	fail := func(err error) (*initConfig, idMapping, uintptr, int64, error) { return nil, idMapping{}, 0, 0, err }
	pol, err := loadPolicy(b.getenv)
	if err != nil {
		return fail(err)
	}
	pids := r.PidsLimit
	if pids == 0 {
		pids = pol.DefaultPids
	}
	if err := pol.checkLimits(r.CPUShares, r.MemoryMB, r.PidsLimit); err != nil {
		return fail(err)
	}
	cfg := &initConfig{
		Lower:    r.Lower,
		Dir:      string(r.Dir),
		Hostname: "karapace-" + r.ShortID,
		Isolated: r.Isolated,
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
	home := b.getenv("HOME")
	for _, m := range r.Mounts {
		bm, err := pol.resolveMount(m.Label, m.Source, m.Container, m.ReadOnly, r.ManifestDir, home)
		if err != nil {
			return fail(manifestErrorf("%v", err))
		}
		cfg.Binds = append(cfg.Binds, bm)
	}
	cfg.Binds = append(cfg.Binds, r.Binds...)
	if !r.Build {
		cfg.Binds = append(cfg.Binds, deviceBinds(r.GPU, r.Audio)...)
	}
	if !r.Isolated {
		for _, f := range []string{"/etc/resolv.conf", "/etc/hosts"} {
			if _, err := os.Stat(f); err == nil {
				cfg.Binds = append(cfg.Binds, bindMount{Source: f, Target: f, ReadOnly: true, Why: "host " + f})
			}
		}
	}
	// What a build step writes goes into shared layers: nothing of the
	// host's session may go in.
	sockets, _ := hostSockets(b.getenv, r.Sockets)
	if len(sockets) > 0 && !r.Build {
		cfg.Binds = append(cfg.Binds, bindMount{Tmpfs: true, Target: hostSession, Dir: true, Why: "host session sockets"})
		cfg.Binds = append(cfg.Binds, sockets...)
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
		warnf("%s", mapping.reduced)
	}
	cfg.FullIDMap = mapping.reduced == ""
	if os.Geteuid() == 0 {
		// The host's root is not mapped inside: it connects as the
		// kernel's overflow uid there.
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
	return cfg, mapping, flags, pids, nil
}

func hostUserName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

// containerPath is the standard PATH inside; the host's PATH names host
// directories that mean nothing there.
const containerPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// commandEnv is the environment of a command inside: our own variables
// first, then what the policy lets through from the host.
func (b nsBackend) commandEnv(r *runSpec, e *execSpec) []string {
	env := []string{
		"PATH=" + containerPath, "HOME=/root", "USER=root", "LOGNAME=root",
		"HOSTNAME=karapace-" + r.ShortID, "container=karapace",
		"KARAPACE_ENV=1", "KARAPACE_ENV_ID=" + r.ID,
	}
	pol, err := loadPolicy(b.getenv)
	if err != nil {
		pol = defaultPolicy()
	}
	env = append(env, pol.filterEnv(e.Env)...)
	if !r.Build {
		_, sockEnv := hostSockets(b.getenv, r.Sockets)
		env = append(env, sockEnv...)
	}
	env = append(env, e.Set...)
	if e.TTY && !hasEnv(env, "TERM") {
		env = append(env, "TERM=xterm-256color")
	}
	return lastWins(env)
}

// lastWins keeps one value per variable, the last one given (the host's
// WAYLAND_DISPLAY, say, gives way to the socket's path inside), in the
// order the variables first appear.
func lastWins(env []string) []string {
	at := map[string]int{}
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if i, ok := at[name]; ok {
			out[i] = kv
			continue
		}
		at[name] = len(out)
		out = append(out, kv)
	}
	return out
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// commandDir maps the host working directory into the environment when a
// mount covers it, so "karapace exec" in a project runs in the project.
func (b nsBackend) commandDir(r *runSpec, e *execSpec) string {
	if e.Cwd != "" {
		cwd, err := filepath.EvalSymlinks(e.Cwd)
		if err == nil {
			for _, m := range r.Mounts {
				bm, err := policy{}.resolveMountPath(m.Source, r.ManifestDir, b.getenv("HOME"))
				if err == nil && pathWithin(cwd, bm) {
					return filepath.Join(m.Container, strings.TrimPrefix(cwd, bm))
				}
			}
		}
	}
	return "/root"
}

// stop asks init to end the environment (SIGTERM to every session), then
// kills it after timeout.
func (nsBackend) stop(r *runSpec, timeout time.Duration) error {
	pid, ok := r.runDir().running()
	if !ok {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stopping pid %d: %w", pid, err)
	}
	defer r.cleanUp()
	if r.runDir().waitGone(timeout) {
		return nil
	}
	unix.Kill(pid, syscall.SIGKILL)
	if r.runDir().waitGone(5 * time.Second) {
		return nil
	}
	return fmt.Errorf("the environment's init (pid %d) did not exit after SIGKILL", pid)
}

// mockBackend runs nothing. It answers deterministically so the engine
// and the command line can be tested without namespaces: a command prints
// its argv, and "exit N" ends with status N.
type mockBackend struct{}

func (mockBackend) name() string { return "mock" }

func (mockBackend) prepare(r *runSpec) error {
	return os.MkdirAll(r.Dir.upper(), 0o700)
}

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

func (mockBackend) stop(*runSpec, time.Duration) error { return nil }
func (mockBackend) status(*runSpec) (int, bool)        { return 0, false }
