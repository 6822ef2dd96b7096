package main

import (
	"fmt"
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
		add("ID mapping", "ok", fmt.Sprintf("running as root: IDs 0-%d map to themselves, in a user namespace", subordinateIDs), "")
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
		if err := probeOverlay(); err != nil {
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
	if _, why := cgroup2Parent([]string{"memory", "cpu", "pids"}); why == "" {
		add("cgroup delegation", "ok", "memory and cpu limits can be applied (cgroup v2)", "")
	} else if os.Geteuid() == 0 {
		add("cgroup delegation", "ok", "running as root: limits use cgroup v1 where v2 lacks the controllers ("+why+")", "")
	} else {
		add("cgroup delegation", "warn", "resource limits cannot be applied: "+why, "boot with systemd's unified cgroup hierarchy (systemd.unified_cgroup_hierarchy=1) and run in a user session with delegation")
	}
	return out
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

// probeStage mounts an overlay the way an environment's init does.
func probeStage(cfg wireMsg, _ []int) int {
	job := cfg.(*probeJob)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintf(os.Stderr, "making mounts private: %v\n", err)
		return exitFailure
	}
	dir := job.Dir
	opts := fmt.Sprintf("lowerdir=%s/l,upperdir=%s/u,workdir=%s/w,userxattr", dir, dir, dir)
	if err := unix.Mount("overlay", dir+"/m", "overlay", 0, opts); err != nil {
		fmt.Fprintf(os.Stderr, "mounting overlayfs with userxattr: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func probeOverlay() error {
	dir, err := os.MkdirTemp("", "karapace-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"l", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	m := planIDMapping()
	if err := m.own(dir, filepath.Join(dir, "u"), filepath.Join(dir, "w")); err != nil {
		return err
	}
	var errb strings.Builder
	job := &probeJob{Dir: dir}
	p, err := startStage("probe", job, m, stageOptions{cloneFlags: unix.CLONE_NEWNS, stderr: &errb})
	if err != nil {
		return err
	}
	if err := p.wait(); err != nil {
		if msg := strings.TrimSpace(errb.String()); msg != "" {
			return fmt.Errorf("%s", msg)
		}
		return err
	}
	return nil
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

// storeChecks report on the store the command line names.
func storeChecks(c *cli) []check {
	root, err := c.storeRoot()
	if err != nil {
		return []check{{"store", "fail", err.Error(), "pass --store PATH or set KARAPACE_STORE"}}
	}
	if _, err := os.Stat(filepath.Join(root, "store", "version")); os.IsNotExist(err) {
		return []check{{"store", "ok", root + ": not created yet (the first build creates it)", ""}}
	}
	s, err := openStore(root)
	if err != nil {
		return []check{{"store", "fail", err.Error(), "see 'karapace verify-store' and 'karapace migrate'"}}
	}
	metas, errs := s.listMeta()
	if len(errs) > 0 {
		return []check{{"store", "fail", fmt.Sprintf("%s: %d damaged metadata file(s), first: %v", root, len(errs), errs[0]), "run 'karapace verify-store' for the full list"}}
	}
	return []check{{"store", "ok", fmt.Sprintf("%s: format %d, %d environment(s)", root, storeFormatVersion, len(metas)), ""}}
}
