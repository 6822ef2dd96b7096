package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The oci backend: an environment runs as one container of an OCI runtime
// (crun, runc or youki), from a runtime-spec config.json we write. What
// of the host it reaches, its ID mapping and its root (the overlay of its
// layers) are those of the namespace backend (resolveAccess,
// nsBackend.initConfig, mountRoot); only the running is the runtime's.
//
// Its life: the first session creates and starts the container, whose
// process is a small init of ours that only reaps and waits; every session
// (the first one too) is a "runtime exec" into it, so the overlay is
// mounted once. Each session holds a shared lock on run/oci/sessions;
// the one that ends last, finding it free, kills and deletes the container.
//
// The overlay is mounted in a mount namespace of its own, which the
// container's is copied from, so the host never sees it: as root, on a
// thread of ours; as a user, in a stage whose user namespace maps the
// environment's host IDs to themselves (see ociCreateInStage). Either way
// the runtime maps the container's IDs as config.json says: those of the
// namespace backend (planIDMapping).

// ociRuntimes are the runtimes looked for on PATH, in this order.
var ociRuntimes = []string{"crun", "runc", "youki"}

// ociRuntime is the runtime that runs an environment.
type ociRuntime struct {
	name string // crun, runc, youki
	path string
}

// findOCIRuntime is the runtime KARAPACE_OCI_RUNTIME or the configuration
// ([runtime] oci_runtime) names, else the first of ociRuntimes on PATH.
func findOCIRuntime(getenv func(string) string) (ociRuntime, error) {
	want, from := getenv("KARAPACE_OCI_RUNTIME"), "KARAPACE_OCI_RUNTIME"
	if want == "" {
		var err error
		if want, err = configOCIRuntime(getenv); err != nil {
			return ociRuntime{}, err
		}
		from = configPath(getenv) + ": runtime.oci_runtime"
	}
	if want != "" {
		p, err := exec.LookPath(want)
		if err != nil {
			return ociRuntime{}, fmt.Errorf("%s names the OCI runtime %q, which is not installed or not executable: %v", from, want, err)
		}
		name := filepath.Base(p)
		for _, n := range ociRuntimes {
			if strings.HasPrefix(name, n) {
				name = n
			}
		}
		return ociRuntime{name, p}, nil
	}
	for _, n := range ociRuntimes {
		if p, err := exec.LookPath(n); err == nil {
			return ociRuntime{n, p}, nil
		}
	}
	return ociRuntime{}, errors.New("runtime.backend \"oci\": no OCI runtime found on PATH (crun, runc or youki); install one (sudo apt install crun) or name one in KARAPACE_OCI_RUNTIME")
}

// configOCIRuntime is [runtime] oci_runtime of the configuration, if set.
func configOCIRuntime(getenv func(string) string) (string, error) {
	doc, sc, err := loadConfig(getenv)
	if err != nil {
		return "", err
	}
	v, ok := doc["runtime"]
	if !ok {
		return "", nil
	}
	t, err := sc.table([]string{"runtime"}, v, "oci_runtime")
	if err != nil {
		return "", err
	}
	s, ok := t["oci_runtime"].(string)
	if _, set := t["oci_runtime"]; set && !ok {
		return "", sc.errorf([]string{"runtime", "oci_runtime"}, "expected a string (crun, runc, youki or a path)")
	}
	return s, nil
}

// version is the first line of the runtime's --version.
func (rt ociRuntime) version() (string, error) {
	out, err := exec.Command(rt.path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", rt.path, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line, nil
}

// ociRuntimeChecks are doctor's lines for the oci backend: each runtime
// found on PATH, with its version, and what this host does to them.
func ociRuntimeChecks() []check {
	var out []check
	for _, n := range ociRuntimes {
		p, err := exec.LookPath(n)
		if err != nil {
			continue
		}
		v, err := ociRuntime{n, p}.version()
		if err != nil {
			out = append(out, check{"OCI runtime " + n, "warn", p + ": " + err.Error(), "reinstall it (sudo apt install --reinstall " + n + ")"})
			continue
		}
		out = append(out, check{"OCI runtime " + n, "ok", p + ", " + v, ""})
	}
	if len(out) == 0 {
		return []check{{"OCI runtime", "warn", "none of crun, runc, youki on PATH: runtime.backend = \"oci\" cannot run", "sudo apt install crun (or runc)"}}
	}
	if c := hybridControllers(); c != "" {
		out = append(out, check{"OCI cgroups", "ok", fmt.Sprintf("hybrid cgroup host, the unified hierarchy holds %q: crun refuses such hosts, so the runtime is shown only cgroup v1", c), ""})
	}
	return out
}

// args are the runtime's global options for an environment whose state
// lives in state; cgroups says whether the runtime manages its cgroups.
func (rt ociRuntime) args(state string, cgroups bool, sub ...string) []string {
	a := []string{"--root", state}
	if !cgroups {
		switch rt.name {
		case "crun":
			a = append(a, "--cgroup-manager=disabled")
		case "runc":
			a = append(a, "--rootless=true")
		}
	}
	return append(a, sub...)
}

// ociBackend runs environments with an OCI runtime.
type ociBackend struct {
	getenv func(string) string
	out    *output
}

func (ociBackend) name() string { return "oci" }

// packages runs the package manager in a build environment of the
// namespace backend: a build step is no session of an environment, and
// its layer is the same whatever runs the environment later.
func (b ociBackend) packages(e *engine, op *walOp, base string, requested []string, locked []lockedPackage, o buildOptions) (string, []lockedPackage, time.Duration, error) {
	return e.dependencyLayer(op, base, requested, locked, o)
}

// ociDir is where an environment's container lives: run/oci.
type ociDir string

func ociDirOf(r *runSpec) ociDir           { return ociDir(string(r.runDir()) + "/oci") }
func (d ociDir) state() string             { return string(d) + "/state" }
func (d ociDir) bundle() string            { return string(d) + "/bundle" }
func (d ociDir) sessions() string          { return string(d) + "/sessions" }
func (d ociDir) runtimeFile() string       { return string(d) + "/runtime" }
func (d ociDir) pidFile() string           { return string(d) + "/init.pid" }
func (d ociDir) procFile(id string) string { return string(d) + "/process-" + id + ".json" }

// containerID names an environment's container in its state directory.
func containerID(r *runSpec) string { return "karapace-" + r.ShortID }

// status reports the container's init, when the marker names a live one
// and the runtime agrees it runs.
func (b ociBackend) status(r *runSpec) (int, bool) {
	pid, ok := r.runDir().running()
	if !ok {
		return 0, false
	}
	rt, err := b.runtimeOf(r)
	if err != nil {
		return pid, true
	}
	st, err := b.state(rt, r)
	if err != nil || st.Status != "running" {
		return 0, false
	}
	return st.Pid, true
}

// ociState is what "runtime state" says of a container.
type ociState struct {
	Status string `json:"status"`
	Pid    int    `json:"pid"`
}

var errNoContainer = errors.New("no container")

// state asks the runtime about the environment's container.
func (b ociBackend) state(rt ociRuntime, r *runSpec) (ociState, error) {
	d := ociDirOf(r)
	if _, err := os.Stat(d.state()); err != nil {
		return ociState{}, errNoContainer
	}
	var stderr bytes.Buffer
	cg := rt.cgroups()
	cmd := exec.Command(rt.path, rt.args(d.state(), cg, "state", containerID(r))...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := stderr.String()
		if strings.Contains(msg, "does not exist") || strings.Contains(msg, "not exist") || strings.Contains(msg, "No such file") {
			return ociState{}, errNoContainer
		}
		return ociState{}, fmt.Errorf("%s state %s: %v: %s", rt.name, containerID(r), err, strings.TrimSpace(msg))
	}
	var st ociState
	if err := json.Unmarshal(out, &st); err != nil {
		return ociState{}, fmt.Errorf("%s state %s: %w", rt.name, containerID(r), err)
	}
	return st, nil
}

// cgroups says whether the runtime manages the container's cgroups:
// only as the host's root; a user's runtime runs in a user namespace,
// where nothing is delegated to it on cgroup v1.
func (rt ociRuntime) cgroups() bool { return os.Geteuid() == 0 }

// hybridControllers are the controllers of the unified hierarchy of a
// hybrid cgroup host (v1 controllers, and cgroup2 at
// /sys/fs/cgroup/unified), which crun refuses to run beside ("cgroups in
// hybrid mode not supported, drop all controllers from cgroupv2"), even
// with no cgroup to manage.
func hybridControllers() string {
	var fs unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &fs) != nil || fs.Type != unix.TMPFS_MAGIC {
		return ""
	}
	c, _ := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	return strings.TrimSpace(string(c))
}

// runtimeCmd runs the runtime for r's container and returns its error
// with what it said.
func (b ociBackend) runtimeCmd(rt ociRuntime, r *runSpec, sub ...string) error {
	cg := rt.cgroups()
	args := rt.args(ociDirOf(r).state(), cg, sub...)
	b.out.tracef("%s %s", rt.path, strings.Join(args, " "))
	out, err := exec.Command(rt.path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", rt.name, strings.Join(sub, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// exec runs a command in the environment's container, creating it first
// when none runs.
func (b ociBackend) exec(r *runSpec, e *execSpec) (int, error) {
	if err := r.Dir.prepare(); err != nil {
		return 0, fmt.Errorf("preparing %s: %w", r.Dir, err)
	}
	acc, err := resolveAccess(r, b.getenv, b.out)
	if err != nil {
		return 0, err
	}
	rt, err := findOCIRuntime(b.getenv)
	if err != nil {
		return 0, err
	}
	sigs := e.Signals
	if sigs == nil {
		sigs = catchSignals(e.TTY)
		defer sigs.stop()
	}
	d := ociDirOf(r)
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return 0, fmt.Errorf("creating %s: %w", d, err)
	}
	// Under the start lock: find or start the container, and join its
	// sessions.
	start, err := flockFile(r.runDir().startLock(), unix.LOCK_EX)
	if err != nil {
		return 0, err
	}
	sess, err := flockFile(d.sessions(), unix.LOCK_SH)
	if err != nil {
		start.Close()
		return 0, err
	}
	rt, initPid, err := b.ensureContainer(rt, r, acc)
	start.Close()
	if err != nil {
		sess.Close()
		b.endIfLast(rt, r)
		return 0, err
	}
	code, err := b.session(rt, r, e, initPid, acc.Limits.Pids, sigs)
	sess.Close()
	b.endIfLast(rt, r)
	return code, err
}

// lockFile opens path and takes a flock on it; closing the file releases it.
func flockFile(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return f, nil
}

// endIfLast kills and deletes the container when no session holds it.
func (b ociBackend) endIfLast(rt ociRuntime, r *runSpec) {
	start, err := flockFile(r.runDir().startLock(), unix.LOCK_EX)
	if err != nil {
		return
	}
	defer start.Close()
	sess, err := flockFile(ociDirOf(r).sessions(), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		return // a session runs
	}
	defer sess.Close()
	b.remove(rt, r, 0)
}

// remove ends the container: SIGTERM to its init, which passes it on to
// every session, SIGKILL after timeout (at once when 0), then delete.
func (b ociBackend) remove(rt ociRuntime, r *runSpec, timeout time.Duration) (stopResult, error) {
	var res stopResult
	st, err := b.state(rt, r)
	if errors.Is(err, errNoContainer) {
		os.Remove(r.runDir().marker())
		return res, nil
	}
	if err == nil && (st.Status == "running" || st.Status == "created") {
		res.WasRunning = true
		if timeout > 0 {
			b.runtimeCmd(rt, r, "kill", containerID(r), strconv.Itoa(int(unix.SIGTERM)))
			if !waitPidGone(st.Pid, timeout) {
				res.Killed = true
			}
		}
		if !waitPidGone(st.Pid, 0) {
			b.runtimeCmd(rt, r, "kill", containerID(r), strconv.Itoa(int(unix.SIGKILL)))
			waitPidGone(st.Pid, 5*time.Second)
		}
	}
	err = b.runtimeCmd(rt, r, "delete", "--force", containerID(r))
	os.Remove(r.runDir().marker())
	return res, err
}

// waitPidGone waits up to timeout for pid to exit and says whether it has.
func waitPidGone(pid int, timeout time.Duration) bool {
	if pid <= 0 {
		return true
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for end := time.Now().Add(timeout); ; {
		n, err := unix.Poll(fds, int(max(time.Until(end), 0).Milliseconds()))
		if n > 0 {
			return true
		}
		if !errors.Is(err, unix.EINTR) || time.Now().After(end) {
			return false
		}
	}
}

// stop ends the container: its init passes SIGTERM to every session and
// kills what is left after instanceStopGrace; SIGKILL after timeout.
func (b ociBackend) stop(r *runSpec, timeout time.Duration) (stopResult, error) {
	rt, err := b.runtimeOf(r)
	if err != nil {
		return stopResult{}, err
	}
	start, err := flockFile(r.runDir().startLock(), unix.LOCK_EX)
	if err != nil {
		return stopResult{}, err
	}
	defer start.Close()
	return b.remove(rt, r, max(timeout, time.Millisecond))
}

// ensureContainer returns the pid of the running container's init and
// the runtime running it, creating and starting the container with rt
// when none runs; one a crash left behind is deleted first.
func (b ociBackend) ensureContainer(rt ociRuntime, r *runSpec, acc *hostAccess) (ociRuntime, int, error) {
	cur, err := b.runtimeOf(r)
	if err != nil {
		return rt, 0, err
	}
	// The marker, checked against the live process, says it runs: a
	// joining session costs no runtime's "state".
	if pid, ok := r.runDir().running(); ok {
		return cur, pid, nil
	}
	st, err := b.state(cur, r)
	if err != nil && !errors.Is(err, errNoContainer) {
		return cur, 0, err
	}
	if err == nil {
		// No live init behind it: a crash (of its init, or of the
		// session that was starting it) left it.
		b.out.debugf("removing the container a crash left (%s)", st.Status)
		if _, err := b.remove(cur, r, 0); err != nil {
			return cur, 0, fmt.Errorf("removing the container a crash left: %w", err)
		}
	}
	if err := os.WriteFile(ociDirOf(r).runtimeFile(), []byte(rt.name+"\n"+rt.path+"\n"), 0o600); err != nil {
		return rt, 0, fmt.Errorf("recording the environment's runtime: %w", err)
	}
	pid, err := b.create(rt, r, acc)
	return rt, pid, err
}

// runtimeOf is the runtime that made the environment's container (its
// state is that runtime's own), else the one a new one would be made with.
func (b ociBackend) runtimeOf(r *runSpec) (ociRuntime, error) {
	if data, err := os.ReadFile(ociDirOf(r).runtimeFile()); err == nil {
		if name, path, ok := strings.Cut(strings.TrimSpace(string(data)), "\n"); ok && unix.Access(path, unix.X_OK) == nil {
			return ociRuntime{name, path}, nil
		}
	}
	return findOCIRuntime(b.getenv)
}

// create writes the container's bundle and creates and starts it.
func (b ociBackend) create(rt ociRuntime, r *runSpec, acc *hostAccess) (int, error) {
	cfg, mapping, _, err := nsBackend{getenv: b.getenv, out: b.out}.initConfig(r, acc)
	if err != nil {
		return 0, err
	}
	d := ociDirOf(r)
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("finding karapace's own executable (the container's init): %w", err)
	}
	if err := ociLayers(cfg, mapping); err != nil {
		return 0, err
	}
	cgroups := rt.cgroups()
	if !cgroups && (acc.Limits.MemoryMB > 0 || acc.Limits.CPUShares > 0) {
		b.out.warnf("resource limits are not applied (memory_mb, cpu_shares): a user's OCI runtime runs in a user namespace, where no cgroup is delegated to it on this host; run as root, or use runtime.backend = \"namespace\" on a cgroup v2 host with a delegated subtree")
	}
	job := &ociCreateJob{Init: *cfg, Runtime: rt.path, Self: self, Log: string(d) + "/create.log"}
	if os.Geteuid() == 0 {
		// As root the container's root is an ID of the range, which may
		// not search the directories above the environment's (root's
		// store is under /root, mode 0700), nor above a bind's source:
		// everything it mounts is bound first under ociStaging, in the
		// mount namespace the runtime runs in.
		job.Staging = ociStaging
		// runc starts its helpers in the root's directory, as the host
		// sees it: there is one, empty.
		if err := os.MkdirAll(job.root(), 0o755); err != nil {
			return 0, fmt.Errorf("creating %s: %w", job.root(), err)
		}
	}
	spec := ociSpecFor(r, cfg, acc, mapping, job, rt.name, cgroups)
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(d.bundle(), 0o700); err != nil {
		return 0, fmt.Errorf("creating %s: %w", d.bundle(), err)
	}
	if err := os.WriteFile(filepath.Join(d.bundle(), "config.json"), data, 0o600); err != nil {
		return 0, fmt.Errorf("writing the container's config.json: %w", err)
	}
	os.Remove(d.pidFile())
	job.Create = rt.args(d.state(), cgroups, "create", "--bundle", d.bundle(), "--pid-file", d.pidFile(), containerID(r))
	job.Start = rt.args(d.state(), cgroups, "start", containerID(r))
	if os.Geteuid() == 0 {
		if job.mounts, err = ociBindMounts(cfg.Binds, mapping, b.out); err != nil {
			return 0, err
		}
		err = ociCreateAsRoot(job, b.out)
		closeAll(job.mounts)
	} else {
		err = ociCreateInStage(job, mapping, b.out)
	}
	if err != nil {
		b.remove(rt, r, 0)
		return 0, ociExplain(rt, err)
	}
	pidData, err := os.ReadFile(d.pidFile())
	if err != nil {
		return 0, fmt.Errorf("reading the pid of the container's init: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidData)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", d.pidFile(), err)
	}
	// "start" returns before the container's process has exec'd our
	// init; until it has, the runtime's own setup holds it, and an exec
	// may not join it (crun, rootless: setns fails with EPERM).
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); string(cmd) == ociInitPath+"\x00" {
			break
		}
	}
	if stt, err := procStartTime(pid); err == nil {
		if err := r.runDir().mark(instanceMarker{Pid: pid, StartTime: stt, Backend: "oci"}); err != nil {
			b.out.warnf("recording the running environment in %s: %v", r.runDir().marker(), err)
		}
	}
	return pid, nil
}

// ociStaging is where, as root, what the container mounts is bound for
// the runtime (see create): an empty directory on the host, a tmpfs in
// the mount namespace of each container's creation.
const ociStaging = "/run/karapace-oci"

// staged are the paths the runtime finds the root, init and the binds'
// sources at.
func (j *ociCreateJob) root() string {
	if j.Staging == "" {
		return j.Init.merged()
	}
	return j.Staging + "/root"
}

func (j *ociCreateJob) init() string {
	if j.Staging == "" {
		return j.Self
	}
	return j.Staging + "/init"
}

func (j *ociCreateJob) source(i int) string {
	if j.Staging == "" {
		return j.Init.Binds[i].Source
	}
	return j.Staging + "/bind" + strconv.Itoa(i)
}

// stage binds, as root, what the container mounts under j.Staging.
func (j *ociCreateJob) stage(out *output) error {
	if err := unix.Mount("tmpfs", j.Staging, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", j.Staging, err)
	}
	bind := func(src, dst string, dir, noSymlinks bool, why string) error {
		var err error
		if dir {
			err = os.Mkdir(dst, 0o755)
		} else {
			err = os.WriteFile(dst, nil, 0o644)
		}
		if err != nil {
			return fmt.Errorf("%s: creating %s: %w", why, dst, err)
		}
		how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}
		if noSymlinks {
			how.Resolve = unix.RESOLVE_NO_SYMLINKS
		}
		fd, err := unix.Openat2(unix.AT_FDCWD, src, how)
		if err != nil {
			return fmt.Errorf("%s: opening %s: %w", why, src, err)
		}
		defer unix.Close(fd)
		out.tracef("bind %s on %s (%s)", src, dst, why)
		if err := unix.Mount(fdPath(fd), dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("%s: binding %s on %s: %w", why, src, dst, err)
		}
		return nil
	}
	if err := bind(j.Init.merged(), j.root(), true, false, "the root"); err != nil {
		return err
	}
	if err := bind(j.Self, j.init(), false, false, "the container's init"); err != nil {
		return err
	}
	for i, b := range j.Init.Binds {
		if b.Tmpfs {
			continue
		}
		if i >= len(j.mounts) {
			if err := bind(b.Source, j.source(i), b.Dir, b.Resolved, b.Why); err != nil {
				return err
			}
			continue
		}
		if err := attachAt(j.mounts[i], j.source(i), b); err != nil {
			return err
		}
	}
	return nil
}

// attachAt puts a mount made beforehand at dst, made for it.
func attachAt(mnt int, dst string, b bindMount) error {
	var err error
	if b.Dir {
		err = os.Mkdir(dst, 0o755)
	} else {
		err = os.WriteFile(dst, nil, 0o644)
	}
	if err != nil {
		return fmt.Errorf("%s: creating %s: %w", b.Why, dst, err)
	}
	if err := unix.MoveMount(mnt, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("%s: attaching the mount of %s at %s: %w", b.Why, b.Source, dst, err)
	}
	return nil
}

// ociBindMounts makes, as root, the binds' mounts as the namespace
// backend does (bindMountOf): idmapped through a user namespace of the
// environment's mapping, so that the host's files keep their owners
// inside (host root as the environment's root), which neither runtime
// here does itself (runc 1.1 cannot; crun 1.8 only for its own mounts).
func ociBindMounts(binds []bindMount, m idMapping, out *output) ([]int, error) {
	need := false
	for _, b := range binds {
		need = need || !b.Tmpfs
	}
	if !need {
		return nil, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p, err := startStage("oci-userns", ociNoConfig{}, m, stageOptions{extraFiles: []*os.File{r}, out: out})
	r.Close()
	if err != nil {
		w.Close()
		return nil, err
	}
	defer func() {
		w.Close()
		p.wait()
	}()
	userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", p.cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the environment's user namespace: %w", err)
	}
	defer unix.Close(userns)
	return openBindMounts(binds, userns, out, true)
}

// ociNoConfig is the configuration of a stage that needs none.
type ociNoConfig struct{}

func (ociNoConfig) encode(*wireWriter) {}
func (ociNoConfig) decode(*wireReader) {}

// oci-userns holds a user namespace of an environment's mapping for as
// long as its fd 4 stays open.
func init() {
	stages["oci-userns"] = stage{func() wireMsg { return ociNoConfig{} }, func(wireMsg, []int, *output) int {
		unix.Read(4, make([]byte, 1))
		return exitOK
	}}
}

// ociExplain adds, to a runtime's refusal, why it refused here and what
// to change, where that is known.
func ociExplain(rt ociRuntime, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "rlimit"):
		return fmt.Errorf("%w (%s may not raise a resource limit above the hard limit it was started with: lower runtime.resource_limits.pids_limit or the policy's default_pids_limit below 'ulimit -Hu', or raise the hard limit)", err, rt.name)
	case strings.Contains(msg, "cgroup"):
		mode := "cgroup v2"
		if c := hybridControllers(); c != "" {
			mode = "a hybrid cgroup host, shown only cgroup v1"
		} else if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
			mode = "cgroup v1"
		}
		return fmt.Errorf("%w (%s could not set up the environment's cgroups on %s: remove memory_mb and cpu_shares from runtime.resource_limits, or use runtime.backend = \"namespace\")", err, rt.name, mode)
	}
	return err
}

// ociLayers adds to the overlay's layers those the namespace backend's
// init adds: the host user's name as an alias of root, and the binds'
// mount points, so that the runtime, which makes missing mount points,
// never writes them into the writable layer.
func ociLayers(cfg *initConfig, m idMapping) error {
	if cfg.User != "" && cfg.User != "root" {
		layer, err := writeUserLayer(filepath.Join(cfg.run(), "user-layer"), cfg, cfg.User)
		if err != nil {
			return err
		}
		if layer != "" {
			if err := m.ownTree(layer); err != nil {
				return err
			}
			cfg.Lower = append([]string{layer}, cfg.Lower...)
		}
	}
	if cfg.Direct {
		return nil
	}
	layer, err := writeMountpointLayer(filepath.Join(cfg.run(), "mountpoints"), cfg)
	if err != nil {
		return err
	}
	if layer != "" {
		if err := m.ownTree(layer); err != nil {
			return err
		}
		cfg.Lower = append(cfg.Lower, layer)
	}
	return nil
}

// ociCreateJob is the creation of a container: the overlay to mount (as
// the namespace backend's init mounts it), then the runtime's create and
// start.
type ociCreateJob struct {
	Init          initConfig
	Runtime       string
	Self          string // this binary: the container's init
	Staging       string // as root: see ociStaging
	Log           string // what the runtime says
	Create, Start []string
	// As root, the binds' mounts, made beforehand (see ociBindMounts),
	// by the binds' order; -1 for a tmpfs. Never sent to a stage.
	mounts []int
}

func (j *ociCreateJob) encode(w *wireWriter) {
	j.Init.encode(w)
	w.str(j.Runtime)
	w.str(j.Self)
	w.str(j.Staging)
	w.str(j.Log)
	w.strs(j.Create)
	w.strs(j.Start)
}

func (j *ociCreateJob) decode(r *wireReader) {
	j.Init.decode(r)
	j.Runtime, j.Self, j.Staging, j.Log, j.Create, j.Start = r.str(), r.str(), r.str(), r.str(), r.strs(), r.strs()
}

func init() {
	stages["oci-create"] = stage{func() wireMsg { return &ociCreateJob{} }, func(c wireMsg, _ []int, out *output) int {
		if err := ociCreate(c.(*ociCreateJob), out); err != nil {
			fmt.Fprintf(os.Stderr, "%v", err)
			return exitFailure
		}
		return exitOK
	}}
}

// ociCreate mounts the root and creates and starts the container, in a
// mount namespace of its own whose mounts propagate nowhere.
func ociCreate(j *ociCreateJob, out *output) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	// The runtime is shown no unified hierarchy, only cgroup v1: crun
	// would refuse to run at all beside one that holds a controller, and
	// neither runtime uses it when v1 holds the controllers.
	if j.Runtime != "" && hybridControllers() != "" {
		if err := unix.Mount("tmpfs", "/sys/fs/cgroup/unified", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k"); err != nil {
			return fmt.Errorf("hiding the unified cgroup hierarchy from the runtime (crun refuses hybrid hosts whose cgroup2 holds controllers, here %s; mount them as cgroup v1 or boot with systemd.unified_cgroup_hierarchy=1): %w", hybridControllers(), err)
		}
	}
	if err := mountRoot(&j.Init, out); err != nil {
		return err
	}
	if j.Staging != "" {
		if err := j.stage(out); err != nil {
			return err
		}
	}
	// What the runtime says goes to a file: the container's init
	// inherits its stdio, and a pipe would stay open as long as it runs.
	log, err := os.OpenFile(j.Log, os.O_CREATE|os.O_TRUNC|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("opening %s: %w", j.Log, err)
	}
	defer log.Close()
	for _, args := range [][]string{j.Create, j.Start} {
		cmd := exec.Command(j.Runtime, args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Run(); err != nil {
			said, _ := os.ReadFile(j.Log)
			return fmt.Errorf("%s %s: %v: %s", filepath.Base(j.Runtime), args[len(args)-2], err, strings.TrimSpace(string(said)))
		}
	}
	return nil
}

// ociCreateAsRoot runs ociCreate on a thread of ours in a new mount
// namespace: the runtime it starts is forked from that thread, and the
// thread ends with it.
func ociCreateAsRoot(j *ociCreateJob, out *output) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with its namespace
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			done <- fmt.Errorf("making a mount namespace for the container's root: %w", err)
			return
		}
		done <- ociCreate(j, out)
	}()
	return <-done
}

// ociCreateInStage runs ociCreate in a stage: a user namespace and a
// mount namespace. The stage's user namespace maps the host's IDs of the
// environment's mapping to themselves, and the stage runs as the user
// with all capabilities there (see startStage): the runtime, as the user,
// then makes the container's user namespace with the very mapping of
// config.json, and what it records of the container (its root's host ID)
// holds on the host too, where its later commands run. With no
// subordinate range, only the user is mapped: the same, one ID.
func ociCreateInStage(j *ociCreateJob, m idMapping, out *output) error {
	var said bytes.Buffer
	p, err := startStage("oci-create", j, ociStageMapping(m), stageOptions{cloneFlags: unix.CLONE_NEWNS, stdout: &said, stderr: &said, out: out})
	if err != nil {
		return err
	}
	if err := p.wait(); err != nil {
		if said.Len() > 0 {
			return errors.New(strings.TrimSpace(said.String()))
		}
		return err
	}
	return nil
}

// ociStageMapping is m's host IDs, each mapped to itself, by newuidmap
// (which keeps the stage's capabilities, as the user, across its exec).
func ociStageMapping(m idMapping) idMapping {
	same := func(rs []idRange) []idRange {
		var out []idRange
		for _, r := range rs {
			out = append(out, idRange{r.outside, r.outside, r.count})
		}
		return out
	}
	return idMapping{uids: same(m.uids), gids: same(m.gids), helper: true}
}

// The container's init: this binary, bound read-only into the container's
// /dev and started by that name. It reaps what sessions leave, and on
// SIGTERM passes it to every process inside, which it kills after
// instanceStopGrace by exiting (the last of a pid namespace's init).
const ociInitPath = "/dev/.karapace-init"

func init() {
	if len(os.Args) == 1 && os.Args[0] == ociInitPath && os.Getpid() == 1 {
		os.Exit(ociInit())
	}
}

func ociInit() int {
	// Nothing inside may reach init's memory (its sessions run as its
	// user).
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	for sig := range sigs {
		if sig == unix.SIGCHLD {
			for {
				var ws unix.WaitStatus
				if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		unix.Kill(-1, unix.SIGTERM)
		go func() {
			// Sessions came in from outside: they are not all our
			// children, but /proc lists them.
			for end := time.Now().Add(instanceStopGrace); time.Now().Before(end) && othersRun(); {
				time.Sleep(20 * time.Millisecond)
			}
			os.Exit(exitOK)
		}()
	}
	return exitOK
}

// othersRun says whether a process besides init runs in the container.
func othersRun() bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != 1 {
			if _, err := procStartTime(pid); err == nil { // zombies do not count
				return true
			}
		}
	}
	return false
}

// session runs one command in the running container, with "runtime exec",
// and returns its exit status.
func (b ociBackend) session(rt ociRuntime, r *runSpec, e *execSpec, initPid int, pids int64, sigs *signalCatch) (int, error) {
	env := commandEnv(r, e, b.getenv)
	proc, err := ociProcessFor(initPid, e, env, commandDir(r, e, b.getenv))
	if err != nil {
		return 0, err
	}
	cg := rt.cgroups()
	proc.Rlimits = ociRlimits(pids, cg)
	d := ociDirOf(r)
	tag := strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	procFile, pidFile := d.procFile(tag), d.procFile(tag)+".pid"
	defer os.Remove(procFile)
	defer os.Remove(pidFile)
	if e.TTY {
		if ws, err := unix.IoctlGetWinsize(int(e.Stdio[0].Fd()), unix.TIOCGWINSZ); err == nil {
			proc.ConsoleSize = &ociBox{Height: uint(ws.Row), Width: uint(ws.Col)}
		}
	}
	data, _ := json.Marshal(proc)
	if err := os.WriteFile(procFile, data, 0o600); err != nil {
		return 0, fmt.Errorf("writing the session's process.json: %w", err)
	}
	args := rt.args(d.state(), cg, "exec", "--process", procFile, "--pid-file", pidFile)
	var console *ociConsole
	if e.TTY {
		if console, err = listenConsole(); err != nil {
			return 0, err
		}
		defer console.close()
		args = append(args, "--tty", "--console-socket", console.path)
	}
	// runc takes a console socket only from a detached exec: the command
	// is then reparented to us, a subreaper, and we wait for it ourselves.
	detach := e.TTY && rt.name == "runc"
	if detach {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return 0, fmt.Errorf("becoming the subreaper of the session: %w", err)
		}
		args = append(args, "--detach")
	}
	args = append(args, containerID(r))
	cmd := exec.Command(rt.path, args...)
	var said bytes.Buffer
	if e.TTY {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, &said
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = e.Stdio[0], e.Stdio[1], e.Stdio[2]
	}
	// Its own process group: a terminal's signals reach the command once,
	// from us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	b.out.tracef("%s %s", rt.path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s exec: %w", rt.name, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var relay *termRelay
	var master int = -1
	if e.TTY {
		master, err = console.receive(waited)
		if err != nil {
			cmd.Process.Kill()
			<-waited
			return 0, fmt.Errorf("receiving the terminal from %s: %w: %s", rt.name, err, strings.TrimSpace(said.String()))
		}
		restore := makeRaw(e.Stdio[0])
		defer restore()
		if relay, err = relayTerminal(master, e.Stdio[0], e.Stdio[1]); err != nil {
			cmd.Process.Kill()
			<-waited
			return 0, err
		}
		defer relay.finish()
	}
	// Signals go to the command (its process group, when it leads one).
	pid := 0
	exited := make(chan unix.WaitStatus, 1)
	for {
		select {
		case sig := <-sigs.c:
			if sig == unix.SIGWINCH {
				if master >= 0 {
					resizeFrom(e.Stdio[0], master)
				}
				continue
			}
			// The command may run before the runtime has written its
			// pid: a signal waits for it, never lost.
			for end := time.Now().Add(2 * time.Second); pid == 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
				pid = readPidFile(pidFile)
			}
			if pid > 0 {
				target := pid
				if pg, err := unix.Getpgid(pid); err == nil && pg == pid {
					target = -pid
				}
				unix.Kill(target, sig.(unix.Signal))
			}
		case err := <-waited:
			if detach && err == nil {
				pid = readPidFile(pidFile)
				go func() { exited <- waitChild(pid) }()
				continue
			}
			if relay != nil {
				relay.finish()
			}
			if err == nil {
				return 0, nil
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return 0, fmt.Errorf("%s exec: %w", rt.name, err)
			}
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal()), nil
			}
			if readPidFile(pidFile) == 0 {
				// The command never started: the runtime said why (on
				// the session's stderr, which is the command's too).
				msg := strings.TrimSpace(said.String())
				if msg == "" {
					msg = "see its message above"
				}
				return 0, fmt.Errorf("%s exec failed before the command started (%v): %s", rt.name, ee.ProcessState, msg)
			}
			return ee.ExitCode(), nil
		case ws := <-exited:
			if relay != nil {
				relay.finish()
			}
			if ws.Signaled() {
				return 128 + int(ws.Signal()), nil
			}
			return ws.ExitStatus(), nil
		}
	}
}

// waitChild waits for pid, a child of ours, and returns how it ended.
func waitChild(pid int) unix.WaitStatus {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if !errors.Is(err, unix.EINTR) {
			return ws
		}
	}
}

func readPidFile(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// ociProcessFor is the process of a session: the command found as a
// shell inside would find it (127 when it is not there, 126 when it is
// not executable, as the namespace backend says), as root.
func ociProcessFor(initPid int, e *execSpec, env []string, cwd string) (*ociProcess, error) {
	root, err := unix.Open(fmt.Sprintf("/proc/%d/root", initPid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the container's root: %w", err)
	}
	defer unix.Close(root)
	var args []string
	if len(e.Argv) > 0 {
		path, err := lookPathInRoot(root, e.Argv[0], env)
		if err != nil {
			return nil, err
		}
		args = append([]string{path}, e.Argv[1:]...)
	} else if e.Login {
		for _, sh := range []string{"/bin/bash", "/bin/sh"} {
			if isExecutableIn(root, sh) == nil {
				args = []string{sh, "-l"}
				break
			}
		}
		if args == nil {
			return nil, commandErr(127, errors.New("no shell in the environment (/bin/bash, /bin/sh)"))
		}
	} else {
		return nil, commandErr(127, errors.New("no command"))
	}
	return newOCIProcess(args, e.TTY, env, cwd), nil
}

// newOCIProcess is a session's process: as root, with the capabilities a
// command of either backend holds.
func newOCIProcess(args []string, tty bool, env []string, cwd string) *ociProcess {
	return &ociProcess{
		Terminal: tty, Args: args, Env: env, Cwd: cwd,
		User:            ociUser{UID: 0, GID: 0},
		Capabilities:    ociCaps(),
		NoNewPrivileges: true,
	}
}

// lookPathInRoot finds a command in the container's root, with the PATH
// of its environment, never leaving that root.
func lookPathInRoot(root int, name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if err := isExecutableIn(root, name); err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
				return "", commandErr(127, fmt.Errorf("%s: no such file in the environment", name))
			}
			return "", commandErr(126, fmt.Errorf("%s: %v", name, err))
		}
		return name, nil
	}
	path := containerPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range strings.Split(path, ":") {
		if dir != "" && isExecutableIn(root, dir+"/"+name) == nil {
			return dir + "/" + name, nil
		}
	}
	return "", commandErr(127, fmt.Errorf("%s: command not found in the environment (PATH=%s)", name, path))
}

// isExecutableIn checks that path, inside root, is a regular file with an
// execute bit.
func isExecutableIn(root int, path string) error {
	fd, err := unix.Openat2(root, path, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return unix.EACCES
	}
	return nil
}

// ociConsole is the socket a runtime sends a session's terminal on: the
// pseudo-terminal's master, as SCM_RIGHTS.
type ociConsole struct {
	dir, path string
	fd        int
}

func listenConsole() (*ociConsole, error) {
	// A socket's path has at most 107 bytes: a short directory of its own.
	dir, err := os.MkdirTemp("", "karapace-console-")
	if err != nil {
		return nil, fmt.Errorf("making the console socket's directory: %w", err)
	}
	c := &ociConsole{dir: dir, path: filepath.Join(dir, "s"), fd: -1}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		c.fd = fd
		if err = unix.Bind(fd, &unix.SockaddrUnix{Name: c.path}); err == nil {
			err = unix.Listen(fd, 1)
		}
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("listening on the console socket %s: %w", c.path, err)
	}
	return c, nil
}

// receive waits for the runtime's connection and the master it sends,
// or for the runtime to exit without sending one (waited).
func (c *ociConsole) receive(waited chan error) (int, error) {
	got := make(chan struct {
		fd  int
		err error
	}, 1)
	go func() {
		conn, _, err := unix.Accept4(c.fd, unix.SOCK_CLOEXEC)
		if err != nil {
			got <- struct {
				fd  int
				err error
			}{-1, err}
			return
		}
		defer unix.Close(conn)
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*4))
		_, oobn, _, _, err := unix.Recvmsg(conn, buf, oob, unix.MSG_CMSG_CLOEXEC)
		fds := parseRights(oob[:max(oobn, 0)])
		if err == nil && len(fds) != 1 {
			closeAll(fds)
			err = fmt.Errorf("expected one descriptor, got %d", len(fds))
		}
		if err != nil {
			got <- struct {
				fd  int
				err error
			}{-1, err}
			return
		}
		got <- struct {
			fd  int
			err error
		}{fds[0], nil}
	}()
	select {
	case g := <-got:
		return g.fd, g.err
	case err := <-waited:
		waited <- err // the caller waits for it too
		if err == nil {
			// A detached exec sends the terminal, then exits.
			select {
			case g := <-got:
				return g.fd, g.err
			case <-time.After(2 * time.Second):
			}
		}
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
		return -1, errors.New("the runtime exited without sending the terminal")
	}
}

func (c *ociConsole) close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
	}
	os.RemoveAll(c.dir)
}

// The runtime-spec (1.0.2) configuration, as much of it as we write.
type ociSpec struct {
	OCIVersion  string            `json:"ociVersion"`
	Root        ociRoot           `json:"root"`
	Process     *ociProcess       `json:"process"`
	Hostname    string            `json:"hostname"`
	Mounts      []ociMount        `json:"mounts"`
	Linux       ociLinux          `json:"linux"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly,omitempty"`
}

type ociProcess struct {
	Terminal        bool        `json:"terminal,omitempty"`
	ConsoleSize     *ociBox     `json:"consoleSize,omitempty"`
	User            ociUser     `json:"user"`
	Args            []string    `json:"args"`
	Env             []string    `json:"env,omitempty"`
	Cwd             string      `json:"cwd"`
	Capabilities    *ociCapSet  `json:"capabilities,omitempty"`
	Rlimits         []ociRlimit `json:"rlimits,omitempty"`
	NoNewPrivileges bool        `json:"noNewPrivileges,omitempty"`
}

type ociBox struct {
	Height uint `json:"height"`
	Width  uint `json:"width"`
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociCapSet struct {
	Bounding    []string `json:"bounding"`
	Effective   []string `json:"effective"`
	Permitted   []string `json:"permitted"`
	Inheritable []string `json:"inheritable"`
}

type ociRlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type,omitempty"`
	Source      string   `json:"source,omitempty"`
	Options     []string `json:"options,omitempty"`
}

type ociLinux struct {
	UIDMappings   []ociIDMap     `json:"uidMappings,omitempty"`
	GIDMappings   []ociIDMap     `json:"gidMappings,omitempty"`
	Namespaces    []ociNamespace `json:"namespaces"`
	Resources     *ociResources  `json:"resources,omitempty"`
	CgroupsPath   string         `json:"cgroupsPath,omitempty"`
	Seccomp       *ociSeccomp    `json:"seccomp,omitempty"`
	ReadonlyPaths []string       `json:"readonlyPaths,omitempty"`
	MaskedPaths   []string       `json:"maskedPaths,omitempty"`
}

type ociIDMap struct {
	ContainerID uint32 `json:"containerID"`
	HostID      uint32 `json:"hostID"`
	Size        uint32 `json:"size"`
}

type ociNamespace struct {
	Type string `json:"type"`
}

type ociResources struct {
	Devices []ociDeviceRule `json:"devices,omitempty"`
	Memory  *ociMemory      `json:"memory,omitempty"`
	CPU     *ociCPU         `json:"cpu,omitempty"`
	Pids    *ociPids        `json:"pids,omitempty"`
}

type ociDeviceRule struct {
	Allow  bool   `json:"allow"`
	Type   string `json:"type,omitempty"`
	Major  *int64 `json:"major,omitempty"`
	Minor  *int64 `json:"minor,omitempty"`
	Access string `json:"access,omitempty"`
}

type ociMemory struct {
	Limit int64 `json:"limit"`
}

type ociCPU struct {
	Shares uint64 `json:"shares"`
}

type ociPids struct {
	Limit int64 `json:"limit"`
}

type ociSeccomp struct {
	DefaultAction string       `json:"defaultAction"`
	Architectures []string     `json:"architectures"`
	Syscalls      []ociSyscall `json:"syscalls"`
}

type ociSyscall struct {
	Names    []string        `json:"names"`
	Action   string          `json:"action"`
	ErrnoRet *uint           `json:"errnoRet,omitempty"`
	Args     []ociSyscallArg `json:"args,omitempty"`
}

type ociSyscallArg struct {
	Index    uint   `json:"index"`
	Value    uint64 `json:"value"`
	ValueTwo uint64 `json:"valueTwo"`
	Op       string `json:"op"`
}

// ociCapNames are the names of commandCapabilities, which a command of
// either backend may hold.
var ociCapNames = map[uintptr]string{
	unix.CAP_CHOWN: "CAP_CHOWN", unix.CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE", unix.CAP_FOWNER: "CAP_FOWNER",
	unix.CAP_FSETID: "CAP_FSETID", unix.CAP_KILL: "CAP_KILL", unix.CAP_SETGID: "CAP_SETGID",
	unix.CAP_SETUID: "CAP_SETUID", unix.CAP_SETPCAP: "CAP_SETPCAP", unix.CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
	unix.CAP_NET_RAW: "CAP_NET_RAW", unix.CAP_SYS_CHROOT: "CAP_SYS_CHROOT", unix.CAP_MKNOD: "CAP_MKNOD",
	unix.CAP_AUDIT_WRITE: "CAP_AUDIT_WRITE", unix.CAP_SETFCAP: "CAP_SETFCAP",
}

// ociCaps are root's capabilities inside, none inheritable (as the
// namespace backend's forker leaves them).
func ociCaps() *ociCapSet {
	var names []string
	for _, c := range commandCapabilities {
		names = append(names, ociCapNames[c])
	}
	return &ociCapSet{Bounding: names, Effective: names, Permitted: names, Inheritable: []string{}}
}

// ociSeccompFilter is seccomp.go's filter in the runtime's terms: every
// system call and terminal request it refuses fails with EPERM; another ABI's (i386, x32) are
// refused whole, the architecture not being listed.
func ociSeccompFilter() *ociSeccomp {
	eperm := uint(unix.EPERM)
	var names []string
	for _, r := range seccompDenied {
		names = append(names, r.name)
	}
	arch := map[string]string{"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}[runtime.GOARCH]
	f := &ociSeccomp{DefaultAction: "SCMP_ACT_ALLOW", Architectures: []string{arch},
		Syscalls: []ociSyscall{{Names: names, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm}}}
	// The terminal requests, by the low half of ioctl's request as the
	// kernel reads it (an unsigned int): high bits set do not pass.
	for _, r := range seccompIoctls {
		f.Syscalls = append(f.Syscalls, ociSyscall{Names: []string{"ioctl"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm,
			Args: []ociSyscallArg{{Index: 1, Value: 0xffffffff, ValueTwo: uint64(r.nr), Op: "SCMP_CMP_MASKED_EQ"}}})
	}
	return f
}

// ociIDMaps is a mapping in the runtime's terms.
func ociIDMaps(rs []idRange) []ociIDMap {
	var out []ociIDMap
	for _, r := range rs {
		out = append(out, ociIDMap{ContainerID: uint32(r.inside), HostID: uint32(r.outside), Size: uint32(r.count)})
	}
	return out
}

// ociRlimits: with no cgroup to hold the pids limit, RLIMIT_NPROC holds
// it, as with the namespace backend; never above the caller's hard
// limit, which an unprivileged runtime cannot raise (runc refuses to
// start then).
func ociRlimits(pids int64, cgroups bool) []ociRlimit {
	if cgroups || pids <= 0 {
		return nil
	}
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &cur); err != nil {
		return nil
	}
	n := min(uint64(pids), cur.Max)
	return []ociRlimit{{Type: "RLIMIT_NPROC", Hard: n, Soft: n}}
}

// ociSpecFor is the configuration of r's container: cfg and acc decided
// what it reaches (as for the namespace backend), m its IDs; init is
// this binary.
func ociSpecFor(r *runSpec, cfg *initConfig, acc *hostAccess, m idMapping, j *ociCreateJob, rt string, cgroups bool) *ociSpec {
	s := &ociSpec{
		OCIVersion: "1.0.2",
		Root:       ociRoot{Path: j.root(), Readonly: !cfg.Writable && !cfg.Direct},
		Hostname:   cfg.Hostname,
		Process: &ociProcess{
			Args: []string{ociInitPath}, Env: []string{"PATH=" + containerPath}, Cwd: "/",
			Capabilities: ociCaps(), NoNewPrivileges: true, Rlimits: ociRlimits(acc.Limits.Pids, cgroups),
		},
		Annotations: map[string]string{
			"org.karapace.env_id":  r.ID,
			"org.karapace.backend": "oci",
		},
	}
	pts := []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}
	if cfg.FullIDMap {
		pts = append(pts, "gid=5")
	}
	s.Mounts = []ociMount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: pts},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "nodev", "mode=1777"}},
		{Destination: ociInitPath, Type: "bind", Source: j.init(), Options: []string{"bind", "ro", "nosuid", "nodev"}},
	}
	if cfg.Isolated {
		s.Mounts = append(s.Mounts, ociMount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
	} else {
		s.Mounts = append(s.Mounts, ociMount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}})
	}
	for i, b := range cfg.Binds {
		if b.Tmpfs {
			s.Mounts = append(s.Mounts, ociMount{Destination: b.Target, Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=0700"}})
			continue
		}
		opts := []string{"rbind"}
		if b.ReadOnly {
			opts = append(opts, "ro")
		}
		s.Mounts = append(s.Mounts, ociMount{Destination: b.Target, Type: "bind", Source: j.source(i), Options: opts})
	}
	s.Linux = ociLinux{
		UIDMappings: ociIDMaps(m.uids),
		GIDMappings: ociIDMaps(m.gids),
		Namespaces:  []ociNamespace{{"pid"}, {"ipc"}, {"uts"}, {"mount"}, {"user"}},
		Seccomp:     ociSeccompFilter(),
		// What acts on the whole machine stays read-only, as with the
		// namespace backend's /proc.
		ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"},
	}
	if cfg.Isolated {
		s.Linux.Namespaces = append(s.Linux.Namespaces, ociNamespace{"network"})
	}
	// A cgroup namespace of its own, as the namespace backend gives each
	// command, where the runtime knows the cgroups (crun, refusing them
	// on a hybrid host, refuses the namespace too).
	if cgroups || rt != "crun" || hybridControllers() == "" {
		s.Linux.Namespaces = append(s.Linux.Namespaces, ociNamespace{"cgroup"})
	}
	if cgroups {
		res := &ociResources{Pids: &ociPids{Limit: acc.Limits.Pids}, Devices: ociDeviceRules(cfg.Binds)}
		if acc.Limits.MemoryMB > 0 {
			res.Memory = &ociMemory{Limit: acc.Limits.MemoryMB << 20}
		}
		if acc.Limits.CPUShares > 0 {
			res.CPU = &ociCPU{Shares: uint64(acc.Limits.CPUShares)}
		}
		s.Linux.Resources = res
		s.Linux.CgroupsPath = "/karapace/" + r.cgroupName()
	}
	return s
}

// ociDeviceRules let the environment use the device nodes it is given
// (gpu, audio): a runtime that manages cgroups denies every other one.
func ociDeviceRules(binds []bindMount) []ociDeviceRule {
	var rules []ociDeviceRule
	for _, b := range binds {
		if b.Tmpfs || !strings.HasPrefix(b.Source, "/dev/") {
			continue
		}
		filepath.WalkDir(b.Source, func(p string, _ os.DirEntry, err error) error {
			var st unix.Stat_t
			if err != nil || unix.Stat(p, &st) != nil {
				return nil
			}
			kind := ""
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFCHR:
				kind = "c"
			case unix.S_IFBLK:
				kind = "b"
			default:
				return nil
			}
			major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
			rules = append(rules, ociDeviceRule{Allow: true, Type: kind, Major: &major, Minor: &minor, Access: "rw"})
			return nil
		})
	}
	return rules
}
