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

// cgroupLimits are an environment's resource limits, applied to its init
// (and so to everything inside) through a cgroup of its own.
type cgroupLimits struct {
	CPUShares int64
	MemoryMB  int64
}

// open prepares the environment's cgroup(s) and opens their
// cgroup.procs files: init stays outside, so the OOM killer can never
// take it for a command's excess, and moves every command it starts in
// through these files. Where no cgroup can be used it warns and returns
// none: the environment runs unlimited rather than not at all.
func (l cgroupLimits) open(name string) []*os.File {
	if l.CPUShares == 0 && l.MemoryMB == 0 {
		return nil
	}
	dirs, err := l.prepare("karapace-" + name)
	if err != nil {
		warnf("resource limits are not applied: %v", err)
		return nil
	}
	var files []*os.File
	for _, d := range dirs {
		f, err := os.OpenFile(filepath.Join(d, "cgroup.procs"), os.O_WRONLY, 0)
		if err != nil {
			warnf("resource limits are not applied: opening %s/cgroup.procs: %v", d, err)
			for _, f := range files {
				f.Close()
			}
			return nil
		}
		files = append(files, f)
	}
	debugf("resource limits in %s", strings.Join(dirs, ", "))
	return files
}

// cpuWeight converts cgroup v1 CPU shares (2..262144) to a cgroup v2
// weight (1..10000), the conversion container runtimes agree on.
func cpuWeight(shares int64) int64 { return 1 + ((shares-2)*9999)/262142 }

func (l cgroupLimits) prepare(name string) ([]string, error) {
	v2, why2 := cgroup2Parent()
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
		if err := makeCgroup(dir, files); err != nil {
			return nil, err
		}
		return []string{dir}, nil
	}
	// A hybrid hierarchy keeps memory and cpu on cgroup v1, which only
	// root may use.
	if os.Geteuid() == 0 {
		var dirs []string
		if l.MemoryMB > 0 {
			dir := "/sys/fs/cgroup/memory/karapace/" + name
			if err := makeCgroup(dir, map[string]string{"memory.limit_in_bytes": strconv.FormatInt(l.MemoryMB<<20, 10)}); err != nil {
				return nil, fmt.Errorf("%s; cgroup v1: %v", why2, err)
			}
			dirs = append(dirs, dir)
		}
		if l.CPUShares > 0 {
			dir := "/sys/fs/cgroup/cpu/karapace/" + name
			if err := makeCgroup(dir, map[string]string{"cpu.shares": strconv.FormatInt(l.CPUShares, 10)}); err != nil {
				return nil, fmt.Errorf("%s; cgroup v1: %v", why2, err)
			}
			dirs = append(dirs, dir)
		}
		return dirs, nil
	}
	return nil, errors.New(why2)
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
// with the memory and cpu controllers enabled: the parent of our own
// cgroup when it is delegated to us (a systemd user session), or the
// root when we are root. It says why when there is none.
func cgroup2Parent() (string, string) {
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
	ctrl, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Sprintf("reading %s/cgroup.controllers: %v", parent, err)
	}
	have := strings.Fields(string(ctrl))
	for _, c := range []string{"memory", "cpu"} {
		if !contains(have, c) {
			return "", fmt.Sprintf("the cgroup v2 controller %q is not available in %s (controllers there: %q); on a hybrid hierarchy it is bound to cgroup v1, and systemd delegates it to user sessions only with cgroup v2", c, parent, strings.TrimSpace(string(ctrl)))
		}
	}
	if unix.Access(filepath.Join(parent, "cgroup.subtree_control"), unix.W_OK) != nil {
		return "", fmt.Sprintf("%s is not delegated to this user (not writable); run inside a systemd user session with delegation, e.g. systemd-run --user --scope -p Delegate=yes", parent)
	}
	if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+memory +cpu"), 0); err != nil {
		return "", fmt.Sprintf("enabling memory and cpu controllers in %s: %v", parent, err)
	}
	return parent, ""
}
