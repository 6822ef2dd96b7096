package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupLimits are an environment's resource limits, applied to every
// command inside through a cgroup of its own.
type cgroupLimits struct {
	CPUShares int64
	MemoryMB  int64
	Pids      int64
}

// controllers are the cgroup controllers the limits need.
func (l cgroupLimits) controllers() []string {
	var c []string
	if l.MemoryMB > 0 {
		c = append(c, "memory")
	}
	if l.CPUShares > 0 {
		c = append(c, "cpu")
	}
	if l.Pids > 0 {
		c = append(c, "pids")
	}
	return c
}

// open prepares the environment's cgroup(s), so that not even a command's
// first child escapes them. With cgroup v2 it is the directory itself,
// which init is started in (CLONE_INTO_CGROUP), and everything inside
// with it: a process of the environment's IDs (root's are a subordinate
// range) may move nothing across cgroups it does not own. With cgroup v1
// (root only) they are pairs of cgroup.procs files, by descriptors opened
// here: the environment's, and the service's own to return to, for the
// service enters the environment's cgroups only while it forks a command
// and stays outside otherwise, so the OOM killer never takes it for a
// command's excess. Where no cgroup can be used it warns and returns
// none: the environment runs without memory and CPU limits rather than
// not at all, and its pids limit falls back to RLIMIT_NPROC (see
// instanceServer.forker), which is no reason to warn.
func (l cgroupLimits) open(name string, out *output) (files []*os.File, intoDir bool) {
	if len(l.controllers()) == 0 {
		return nil, false
	}
	dirs, v2, err := l.prepare(name)
	if err != nil {
		if l.CPUShares > 0 || l.MemoryMB > 0 {
			out.warnf("resource limits are not applied: %v", err)
		}
		return nil, false
	}
	if v2 {
		f, err := os.OpenFile(dirs[0], os.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			out.warnf("resource limits are not applied: opening %s: %v", dirs[0], err)
			return nil, false
		}
		out.debugf("resource limits in %s", dirs[0])
		return []*os.File{f}, true
	}
	for _, d := range dirs {
		controller := strings.Split(strings.TrimPrefix(d, "/sys/fs/cgroup/"), "/")[0]
		home, err := ownCgroupV1(controller)
		for _, p := range []string{filepath.Join(d, "cgroup.procs"), filepath.Join(home, "cgroup.procs")} {
			var f *os.File
			if err == nil {
				f, err = os.OpenFile(p, os.O_WRONLY, 0)
			}
			if err != nil {
				out.warnf("resource limits are not applied: opening %s: %v", p, err)
				for _, f := range files {
					f.Close()
				}
				return nil, false
			}
			files = append(files, f)
		}
	}
	out.debugf("resource limits in %s", strings.Join(dirs, ", "))
	return files, false
}

// ownCgroupV1 is our cgroup in a cgroup v1 hierarchy.
func ownCgroupV1(controller string) (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && contains(strings.Split(f[1], ","), controller) {
			return filepath.Join("/sys/fs/cgroup", controller, f[2]), nil
		}
	}
	return "", fmt.Errorf("no %s cgroup in /proc/self/cgroup", controller)
}

// cgroupName is an environment's cgroup: by its short_id, and by where
// it lives, since the same environment may run from two stores at once.
func (r *runSpec) cgroupName() string {
	return "karapace-" + r.ShortID + "-" + hashHex([]byte(r.Dir))[:8]
}

// removeCgroups removes the environment's cgroups once nothing runs in
// them; a busy or missing one is left alone.
func removeCgroups(name string, out *output) {
	dirs := []string{"/sys/fs/cgroup/memory/karapace/" + name, "/sys/fs/cgroup/cpu/karapace/" + name, "/sys/fs/cgroup/pids/karapace/" + name}
	if parent, _ := cgroup2Location(); parent != "" {
		dirs = append(dirs, filepath.Join(parent, name))
	}
	for _, d := range dirs {
		if err := unix.Rmdir(d); err == nil {
			out.debugf("removed cgroup %s", d)
		}
	}
}

// cpuWeight converts cgroup v1 CPU shares (2..262144) to a cgroup v2
// weight (1..10000), the conversion container runtimes agree on.
func cpuWeight(shares int64) int64 { return 1 + ((shares-2)*9999)/262142 }

func (l cgroupLimits) prepare(name string) ([]string, bool, error) {
	v2, why2 := cgroup2Parent(l.controllers())
	if v2 != "" {
		dir := filepath.Join(v2, name)
		files := map[string]string{}
		if l.MemoryMB > 0 {
			files["memory.max"] = strconv.FormatInt(l.MemoryMB<<20, 10)
			files["memory.swap.max"] = "0"
		}
		if l.CPUShares > 0 {
			files["cpu.weight"] = strconv.FormatInt(cpuWeight(l.CPUShares), 10)
		}
		if l.Pids > 0 {
			files["pids.max"] = strconv.FormatInt(l.Pids, 10)
		}
		if err := makeCgroup(dir, files); err != nil {
			return nil, false, err
		}
		return []string{dir}, true, nil
	}
	// A hybrid hierarchy keeps the controllers on cgroup v1, which only
	// root may use.
	if os.Geteuid() != 0 {
		return nil, false, errors.New(why2)
	}
	var dirs []string
	for _, c := range []struct {
		controller, file string
		value            int64
	}{
		{"memory", "memory.limit_in_bytes", l.MemoryMB << 20},
		{"cpu", "cpu.shares", l.CPUShares},
		{"pids", "pids.max", l.Pids},
	} {
		if c.value == 0 {
			continue
		}
		dir := "/sys/fs/cgroup/" + c.controller + "/karapace/" + name
		if err := makeCgroup(dir, map[string]string{c.file: strconv.FormatInt(c.value, 10)}); err != nil {
			return nil, false, fmt.Errorf("%s; cgroup v1: %v", why2, err)
		}
		dirs = append(dirs, dir)
	}
	return dirs, false, nil
}

// makeCgroup creates dir and writes the limit files.
func makeCgroup(dir string, files map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	for f, v := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0); err != nil {
			// memory.swap.max is missing where swap accounting is off.
			if f == "memory.swap.max" && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("writing %s/%s: %w", dir, f, err)
		}
	}
	return nil
}

// cgroup2Parent finds a cgroup v2 directory we may create children in
// with the controllers enabled: the parent of our own cgroup when it is
// delegated to us (a systemd user session), or the root when we are root.
// It says why when there is none.
func cgroup2Parent(controllers []string) (string, string) {
	parent, why := cgroup2Location()
	if parent == "" {
		return "", why
	}
	ctrl, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Sprintf("reading %s/cgroup.controllers: %v", parent, err)
	}
	have := strings.Fields(string(ctrl))
	for _, c := range controllers {
		if !contains(have, c) {
			return "", fmt.Sprintf("the cgroup v2 controller %q is not available in %s (controllers there: %q); on a hybrid hierarchy it is bound to cgroup v1, and systemd delegates it to user sessions only with cgroup v2", c, parent, strings.TrimSpace(string(ctrl)))
		}
	}
	if unix.Access(filepath.Join(parent, "cgroup.subtree_control"), unix.W_OK) != nil {
		return "", fmt.Sprintf("%s is not delegated to this user (not writable); run inside a systemd user session with delegation, e.g. systemd-run --user --scope -p Delegate=yes", parent)
	}
	enable := "+" + strings.Join(controllers, " +")
	if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(enable), 0); err != nil {
		return "", fmt.Sprintf("enabling the %s controllers in %s: %v", strings.Join(controllers, ", "), parent, err)
	}
	return parent, ""
}

// cgroup2Location is where environments' cgroup v2 directories go: beside
// our own cgroup (or in the root, when that is ours).
func cgroup2Location() (string, string) {
	mnt := ""
	for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(m, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			mnt = m
			break
		}
	}
	if mnt == "" {
		return "", "no cgroup v2 hierarchy is mounted"
	}
	own := ""
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", "reading /proc/self/cgroup: " + err.Error()
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			own = p
		}
	}
	parent := filepath.Join(mnt, own)
	if own != "/" {
		parent = filepath.Dir(parent)
	}
	return parent, ""
}
