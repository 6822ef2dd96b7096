package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// check is one line of 'karapace doctor'.
type check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn (works, with less), fail (a build cannot work)
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// runtimeChecks are the prerequisites of the namespace backend, each
// probed for real where it can be.
func runtimeChecks() []check {
	var out []check
	add := func(name, status, detail, fix string) {
		out = append(out, check{name, status, detail, fix})
	}

	userns := true
	if n, err := readIntFile("/proc/sys/user/max_user_namespaces"); err == nil && n == 0 {
		userns = false
		add("user namespaces", "fail", "disabled: user.max_user_namespaces is 0", "sudo sysctl -w user.max_user_namespaces=28633")
	}
	if n, err := readIntFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && n == 0 && os.Geteuid() != 0 {
		userns = false
		add("user namespaces", "fail", "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)", "sudo sysctl -w kernel.unprivileged_userns_clone=1")
	}
	if n, err := readIntFile("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"); err == nil && n == 1 && os.Geteuid() != 0 {
		add("AppArmor", "warn", "kernel.apparmor_restrict_unprivileged_userns=1 may deny capabilities in user namespaces", "allow karapace in an AppArmor profile with 'userns,' or: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
	}

	if userns {
		max, _ := readIntFile("/proc/sys/user/max_user_namespaces")
		add("user namespaces", "ok", fmt.Sprintf("enabled (user.max_user_namespaces = %d)", max), "")
	}

	m := planIDMapping()
	switch {
	case os.Geteuid() == 0:
		fix := ""
		if !strings.HasPrefix(m.rootRange, "root's") {
			free := freeSubordinateStart("/etc/subuid", "/etc/subgid")
			fix = fmt.Sprintf("to choose the range: sudo usermod --add-subuids %d-%d --add-subgids %d-%d root (a range no entry of /etc/subuid or /etc/subgid uses)", free, free+subordinateIDs, free, free+subordinateIDs)
		}
		add("ID mapping", "ok", fmt.Sprintf("running as root: an environment's IDs 0-%d are %s, no user of the host", subordinateIDs, m.rootRange), fix)
	case m.reduced == "":
		add("ID mapping", "ok", fmt.Sprintf("root -> uid %d, 1-%d -> %d-%d (newuidmap/newgidmap)", m.uids[0].outside, m.uids[1].count, m.uids[1].outside, m.uids[1].outside+m.uids[1].count-1), "")
	default:
		detail, fix, _ := strings.Cut(m.reduced, " (to fix: ")
		add("ID mapping", "fail", detail, strings.TrimSuffix(fix, ")"))
	}
	for _, tool := range []string{"newuidmap", "newgidmap"} {
		if os.Geteuid() == 0 {
			break
		}
		if p, err := exec.LookPath(tool); err != nil {
			add(tool, "fail", "not found on PATH", "sudo apt install uidmap (Fedora: shadow-utils, Arch: shadow)")
		} else {
			add(tool, "ok", p, "")
		}
	}

	if userns {
		overlayErr, idmapErr := probeSandbox()
		if os.Geteuid() == 0 {
			if idmapErr != nil {
				add("idmapped mounts", "warn", idmapErr.Error(), "Linux 5.12 or newer with idmapped mounts for the workspace's filesystem (ext4, xfs, btrfs, tmpfs); without them, a workspace's files belong to nobody inside")
			} else {
				add("idmapped mounts", "ok", "the workspace keeps its owners inside and is written as root (probed)", "")
			}
		}
		if err := overlayErr; err != nil {
			add("overlayfs in a user namespace", "fail", err.Error(), "Linux 5.11 or newer is needed for kernel overlayfs in a user namespace; install fuse-overlayfs as a fallback")
		} else {
			add("overlayfs in a user namespace", "ok", "kernel overlayfs with userxattr mounts", "")
		}
	}
	if p, err := exec.LookPath("fuse-overlayfs"); err != nil {
		add("fuse-overlayfs", "warn", "not installed; only needed on kernels older than 5.11", "sudo apt install fuse-overlayfs")
	} else if unix.Access("/dev/fuse", unix.R_OK|unix.W_OK) != nil {
		add("fuse-overlayfs", "warn", p+" is installed, but /dev/fuse is not readable and writable for this user", "sudo chmod 666 /dev/fuse (what udev does on most systems)")
	} else {
		add("fuse-overlayfs", "ok", p+" (fallback for kernels without overlayfs in user namespaces)", "")
	}
	out = append(out, confinementChecks()...)
	out = append(out, ociRuntimeChecks()...)
	for _, l := range []struct{ controller, limit string }{{"memory", "memory_mb"}, {"cpu", "cpu_shares"}} {
		out = append(out, limitCheck(l.controller, l.limit))
	}
	return out
}

// limitCheck says what applies a resource limit of manifests
// ([runtime.resource_limits] limit) here: a cgroup v2 controller delegated
// to this user, or as root a cgroup v1 hierarchy.
func limitCheck(controller, limit string) check {
	name := limit + " limit"
	parent, why := cgroup2Parent([]string{controller})
	switch {
	case why == "":
		return check{name, "ok", fmt.Sprintf("the cgroup v2 %s controller, below %s", controller, parent), ""}
	case os.Geteuid() == 0 && unix.Access("/sys/fs/cgroup/"+controller, unix.W_OK) == nil:
		return check{name, "ok", "the cgroup v1 " + controller + " hierarchy (/sys/fs/cgroup/" + controller + "), as root", ""}
	}
	return check{name, "warn", "manifests setting " + limit + " cannot be built here: " + why,
		"boot with the unified cgroup hierarchy (systemd.unified_cgroup_hierarchy=1) and run karapace in a systemd user session with delegation (systemd-run --user --scope -p Delegate=yes karapace ...)"}
}

// confinementChecks say which of the sandbox's protections hold here,
// beyond the namespaces and the mapping.
func confinementChecks() []check {
	var out []check
	if _, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0); err != nil {
		out = append(out, check{"commands", "fail", "this kernel has no seccomp filters (" + err.Error() + ")", "a kernel built with CONFIG_SECCOMP_FILTER"})
	} else {
		out = append(out, check{"commands", "ok", fmt.Sprintf("run in a user namespace below init's (no mount set up can be changed), with %d capabilities, no_new_privs and a seccomp filter refusing %d system calls", len(commandCapabilities), len(seccompDenied)), ""})
	}
	if mech, ok := pidsMechanism(); ok {
		out = append(out, check{"pids limit", "ok", mech, ""})
	} else {
		out = append(out, check{"pids limit", "warn", mech, "Linux 5.14 or newer, or a cgroup with the pids controller delegated to this user"})
	}
	pol, err := loadPolicy(os.Getenv)
	if err != nil {
		out = append(out, check{"mount policy", "fail", err.Error(), "fix the karapace config"})
	} else {
		out = append(out, check{"mount policy", "ok", fmt.Sprintf("mounts only from the manifest's directory and %s, never from %s", strings.Join(pol.MountPrefixes, ", "), strings.Join(pol.MountDeny, ", ")), ""})
	}
	sockets := "host session sockets only when a manifest asks (runtime.host_sockets, runtime.session_bus, [gui] apps, hardware.audio)"
	if abstract := abstractSessionSockets(); abstract != "" {
		out = append(out, check{"host sockets", "warn", sockets + "; but " + abstract + " listens on an abstract socket, which every environment sharing the host's network reaches", "runtime.network_isolation = true in manifests that must not reach it"})
	} else {
		out = append(out, check{"host sockets", "ok", sockets, ""})
	}
	return out
}

// pidsMechanism says what holds an environment's pids limit here, and
// whether it holds for the environment alone.
func pidsMechanism() (string, bool) {
	if _, why := cgroup2Parent([]string{"pids"}); why == "" {
		return "the cgroup v2 pids controller", true
	}
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
			return "the cgroup v1 pids controller", true
		}
	}
	var u unix.Utsname
	unix.Uname(&u)
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	if major > 5 || major == 5 && minor >= 14 {
		return "RLIMIT_NPROC, counted in each environment's user namespace (no pids cgroup is delegated to this user)", true
	}
	return fmt.Sprintf("RLIMIT_NPROC, which Linux %d.%d counts over all of this user's processes", major, minor), false
}

// abstractSessionSockets names a display or session bus of the host
// listening on an abstract socket, which no mount can hide.
func abstractSessionSockets() string {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		switch path := f[len(f)-1]; {
		case strings.HasPrefix(path, "@/tmp/.X11-unix/"):
			return "an X server (" + path + ")"
		case strings.HasPrefix(path, "@/tmp/dbus-"):
			return "a D-Bus bus (" + path + ")"
		}
	}
	return ""
}

func readIntFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

func init() {
	stages["probe"] = stage{func() wireMsg { return &probeJob{} }, probeStage}
}

func (j *probeJob) dirs() []*string { return []*string{&j.Dir} }

// probeStage mounts an overlay the way an environment's init does and,
// given a mount the parent made of dir/i (as root), attaches it at dir/a
// and checks that its file, the host root's, is the namespace's root's,
// and that a file written there comes out the host root's.
func probeStage(cfg wireMsg, mounts []int, _ *output) int {
	job := cfg.(*probeJob)
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, format+"\n", a...)
		return exitFailure
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("making mounts private: %v", err)
	}
	dir := job.Dir
	opts := fmt.Sprintf("lowerdir=%s/l,upperdir=%s/u,workdir=%s/w,userxattr", dir, dir, dir)
	if err := unix.Mount("overlay", dir+"/m", "overlay", 0, opts); err != nil {
		return fail("mounting overlayfs with userxattr: %v", err)
	}
	if len(mounts) == 0 {
		return exitOK
	}
	dst, err := unix.Open(dir+"/a", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.MoveMount(mounts[0], "", dst, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	}
	if err != nil {
		return fail("attaching an idmapped mount: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir+"/a/f", &st); err != nil || st.Uid != 0 {
		return fail("through an idmapped mount, a file of the host's root is %d's inside (%v), not root's", st.Uid, err)
	}
	if err := os.WriteFile(dir+"/a/g", nil, 0o600); err != nil {
		return fail("writing through an idmapped mount: %v", err)
	}
	return exitOK
}

// probeSandbox does what an environment's setup does that the kernel may
// refuse: the overlay in a user namespace, and as root an idmapped mount.
// It returns the overlay's error and the idmapped mount's.
func probeSandbox() (overlayErr, idmapErr error) {
	dir, err := os.MkdirTemp("", "karapace-probe-")
	if err != nil {
		return err, nil
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"l", "u", "w", "m", "i", "a"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return err, nil
		}
	}
	m := planIDMapping()
	if err := m.own(dir, filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "a")); err != nil {
		return err, nil
	}
	o := stageOptions{cloneFlags: unix.CLONE_NEWNS}
	if os.Geteuid() == 0 {
		if err := os.WriteFile(filepath.Join(dir, "i", "f"), nil, 0o600); err != nil {
			return err, nil
		}
		o.made = func(pid int) ([]int, error) {
			userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			defer unix.Close(userns)
			fd, idmapped, err := bindMountOf(bindMount{Source: filepath.Join(dir, "i"), Idmap: true, Why: "probe"}, userns)
			if err == nil && !idmapped {
				unix.Close(fd)
				err = errors.New("the kernel refused an idmapped mount of " + dir)
			}
			if err != nil {
				idmapErr = err
				return nil, nil
			}
			return []int{fd}, nil
		}
	}
	var errb strings.Builder
	o.stderr = &errb
	p, err := startStage("probe", &probeJob{Dir: dir}, m, o)
	if err != nil {
		return err, idmapErr
	}
	if err := p.wait(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = err.Error()
		}
		if strings.Contains(msg, "idmapped") {
			return nil, errors.New(msg)
		}
		return errors.New(msg), idmapErr
	}
	if os.Geteuid() == 0 && idmapErr == nil {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, "i", "g"), &st); err != nil || st.Uid != 0 {
			idmapErr = fmt.Errorf("a file written through an idmapped mount belongs to %d on the host, not root (%v)", st.Uid, err)
		}
	}
	return nil, idmapErr
}

// cmdDoctor prints one line per check, with the fix for each problem, and
// fails when a build could not work.
func cmdDoctor(c *cli) error {
	checks := runtimeChecks()
	checks = append(checks, storeChecks(c)...)
	failed := 0
	for _, ch := range checks {
		if ch.Status == "fail" {
			failed++
		}
	}
	if c.json {
		if err := writeJSON(c.stdout, map[string]any{"ok": failed == 0, "checks": checks}); err != nil {
			return err
		}
	} else {
		color := c.useColor()
		for _, ch := range checks {
			tag := map[string]string{"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[ch.Status]
			if color {
				tag = map[string]string{"ok": "\x1b[32mok  \x1b[0m", "warn": "\x1b[33mwarn\x1b[0m", "fail": "\x1b[31mFAIL\x1b[0m"}[ch.Status]
			}
			fmt.Fprintf(c.stdout, "%s %s: %s\n", tag, ch.Name, ch.Detail)
			if ch.Fix != "" && ch.Status != "ok" {
				fmt.Fprintf(c.stdout, "     fix: %s\n", ch.Fix)
			}
		}
	}
	if failed > 0 {
		return exitStatus(exitFailure)
	}
	return nil
}

// storeChecks report on the store the command line names. They only
// look: a crash's leftovers stay for verify-store or the next change.
func storeChecks(c *cli) []check {
	root, err := c.storeRoot()
	if err != nil {
		return []check{{"store", "fail", err.Error(), "pass --store PATH or set KARAPACE_STORE"}}
	}
	if _, err := os.Stat(filepath.Join(root, "store", "version")); os.IsNotExist(err) {
		return []check{{"store", "ok", root + ": not created yet (the first build creates it)", ""}}
	}
	s, v, err := openStoreAnyVersion(root, false)
	switch {
	case err != nil:
		return []check{{"store", "fail", err.Error(), "see 'karapace verify-store' and 'karapace migrate'"}}
	case v < storeFormatVersion:
		return []check{{"store", "fail", fmt.Sprintf("%s has format version %d", root, v), "karapace migrate"}}
	case v > storeFormatVersion:
		return []check{{"store", "fail", fmt.Sprintf("%s has format version %d, newer than this karapace's %d", root, v, storeFormatVersion), "upgrade karapace"}}
	}
	var out []check
	metas, errs := s.listMeta()
	if len(errs) > 0 {
		out = append(out, check{"store", "fail", fmt.Sprintf("%s: %d damaged metadata file(s), first: %v", root, len(errs), errs[0]), "run 'karapace verify-store' for the full list"})
	} else {
		out = append(out, check{"store", "ok", fmt.Sprintf("%s: format %d, %d environment(s)", root, storeFormatVersion, len(metas)), ""})
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err == nil {
		out = append(out, diskCheck(st.Bavail*uint64(st.Bsize), st.Blocks*uint64(st.Bsize), st.Ffree, st.Files))
	}
	holder, held := lockHeld(s)
	if held {
		out = append(out, check{"store lock", "warn", "held by " + holder + ": commands that change the store wait for it (KARAPACE_LOCK_WAIT, 30s by default)", "let it finish, or set KARAPACE_LOCK_WAIT=10m to wait longer"})
	} else {
		out = append(out, check{"store lock", "ok", "free", ""})
	}
	out = append(out, walCheck(s, held))
	return append(out, sampleCheck(s))
}

// diskCheck judges the space left where the store is: a build unpacks a
// base and packages (a few hundred MiB to GiBs) before it stores them.
func diskCheck(avail, total, freeInodes, inodes uint64) check {
	const low, tight = 512 << 20, 2 << 30
	detail := fmt.Sprintf("%s free of %s", humanBytes(int64(avail)), humanBytes(int64(total)))
	fix := "karapace gc (removes what no environment uses), destroy environments no longer needed, or move the store to a larger filesystem (--store, KARAPACE_STORE)"
	switch {
	case avail < low:
		return check{"disk space", "fail", detail + ": a build needs more", fix}
	case inodes > 0 && freeInodes < 50000:
		return check{"disk space", "warn", fmt.Sprintf("%s, but only %d free inodes: a base unpacks to tens of thousands of files", detail, freeInodes), fix}
	case avail < tight || avail < total/20:
		return check{"disk space", "warn", detail + ": a large build may run out", fix}
	}
	return check{"disk space", "ok", detail, ""}
}

// lockHeld says whether another process holds the store lock exclusively,
// and who: a lock outlives no process, so a holder is alive. Shared
// holders (push, export) only read, and hold up only writers briefly.
func lockHeld(s *store) (string, bool) {
	f, err := os.Open(s.path(".lock"))
	if err != nil {
		return "", false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return "", false
	}
	who := s.lockHolder()
	if f := strings.Fields(who); len(f) >= 2 {
		if cmd, err := os.ReadFile("/proc/" + f[1] + "/cmdline"); err == nil && len(cmd) > 0 {
			who += ": " + strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return who, true
}

// walCheck reports operations the WAL holds. Under a held lock they are
// the holder's, in progress; otherwise a crash left them, and the next
// command that changes the store rolls them back.
func walCheck(s *store, held bool) check {
	names, err := s.listDir("wal")
	if err != nil {
		return check{"interrupted operations", "fail", err.Error(), "karapace verify-store"}
	}
	if len(names) == 0 {
		return check{"interrupted operations", "ok", "none (the WAL is empty)", ""}
	}
	var ops []string
	for _, name := range names {
		o, err := s.readWAL(s.path("wal", name))
		if err != nil {
			ops = append(ops, name+" (unreadable: "+err.Error()+")")
			continue
		}
		op := o.Kind
		if o.EnvID != "" {
			op += " of " + o.EnvID[:min(12, len(o.EnvID))]
		}
		ops = append(ops, op+" started "+o.Started)
	}
	if held {
		return check{"interrupted operations", "ok", "in progress under the lock: " + strings.Join(ops, "; "), ""}
	}
	return check{"interrupted operations", "warn", fmt.Sprintf("%d left by a crash: %s; nothing is lost, the next command that changes the store rolls them back", len(ops), strings.Join(ops, "; ")),
		"karapace verify-store (rolls them back now, then checks every object)"}
}

// doctorSample bounds the integrity sample: a quick look, where
// verify-store reads everything.
const (
	doctorSampleObjects = 16
	doctorSampleBytes   = 256 << 20
)

// sampleCheck re-hashes a random sample of the store's objects.
func sampleCheck(s *store) check {
	names, err := s.listObjects()
	if err != nil {
		return check{"integrity sample", "fail", err.Error(), "karapace verify-store"}
	}
	if len(names) == 0 {
		return check{"integrity sample", "ok", "no objects yet", ""}
	}
	rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	var pick []string
	var total int64
	for _, n := range names {
		fi, err := os.Lstat(s.path("objects", n))
		if len(pick) == doctorSampleObjects || err == nil && total+fi.Size() > doctorSampleBytes {
			continue
		}
		if err == nil {
			total += fi.Size()
		}
		pick = append(pick, n)
	}
	var bad []string
	for _, r := range s.hashObjects(context.Background(), pick, nil) {
		if r.problem != "" {
			bad = append(bad, "objects/"+r.name+": "+r.problem)
		}
	}
	detail := fmt.Sprintf("%d of %d objects re-hashed (%s)", len(pick), len(names), humanBytes(total))
	if len(bad) > 0 {
		return check{"integrity sample", "fail", detail + "; " + strings.Join(bad, "; "),
			"karapace verify-store (checks every object and names the environments that use a damaged one); rebuild those, or pull them again"}
	}
	return check{"integrity sample", "ok", detail + ", all match their names", ""}
}
