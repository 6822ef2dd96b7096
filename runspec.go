package main

import (
	"os"
	"os/user"
	"path/filepath"
	"strings"
)

// What a backend runs: an environment, and a command in it. Everything of
// the host an environment reaches (mounts, devices, files, sockets,
// limits, variables) is decided here, once, against the policy, for
// whichever backend runs it.

// runSpec is an environment as a backend sees it: assembled by the engine
// from the store and the lock, or by a build step.
type runSpec struct {
	ID, ShortID string
	Dir         envDir   // where it lives: upper/, work/, merged/, run/
	Lower       []string // layer trees, top first
	ReadOnly    bool     // frozen: the root is mounted read-only
	Mounts      []lockMount
	ManifestDir string // relative mounts resolve here
	GPU, Audio  bool
	GUI         bool // [gui] apps: the host's fonts, icons and themes, read-only
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

// hostAccess is what of the host an environment reaches: its binds
// (manifest mounts, devices, the host's name resolution files, session
// sockets), each checked, and its limits, the pids limit resolved.
type hostAccess struct {
	Binds  []bindMount
	Limits cgroupLimits
}

// resolveAccess decides an environment's hostAccess in the caller's
// environment (getenv: its config, HOME, session). A refused mount or limit
// is a manifest error, and nothing has started yet.
func resolveAccess(r *runSpec, getenv func(string) string, out *output) (*hostAccess, error) {
	pol, err := loadPolicy(getenv)
	if err != nil {
		return nil, err
	}
	if err := pol.checkLimits(r.CPUShares, r.MemoryMB, r.PidsLimit); err != nil {
		return nil, manifestErrorf("%v", err)
	}
	a := &hostAccess{Limits: cgroupLimits{CPUShares: r.CPUShares, MemoryMB: r.MemoryMB, Pids: r.PidsLimit}}
	if a.Limits.Pids == 0 {
		a.Limits.Pids = pol.DefaultPids
	}
	home := getenv("HOME")
	for _, m := range r.Mounts {
		bm, err := pol.resolveMount(m.Label, m.Source, m.Container, m.ReadOnly, r.ManifestDir, home)
		if err != nil {
			return nil, manifestErrorf("%v", err)
		}
		a.Binds = append(a.Binds, bm)
	}
	a.Binds = append(a.Binds, r.Binds...)
	if !r.Build {
		a.Binds = append(a.Binds, deviceBinds(r.GPU, r.Audio, out)...)
		if r.GUI {
			a.Binds = append(a.Binds, guiBinds()...)
		}
	}
	if !r.Isolated {
		for _, f := range []string{"/etc/resolv.conf", "/etc/hosts"} {
			if _, err := os.Stat(f); err == nil {
				a.Binds = append(a.Binds, bindMount{Source: f, Target: f, ReadOnly: true, Why: "host " + f})
			}
		}
	}
	// What a build step writes goes into shared layers: nothing of the
	// host's session may go in.
	if sockets, _ := hostSockets(getenv, r.Sockets); len(sockets) > 0 && !r.Build {
		a.Binds = append(a.Binds, bindMount{Tmpfs: true, Target: hostSession, Dir: true, Why: "host session sockets"})
		a.Binds = append(a.Binds, sockets...)
	}
	return a, nil
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
func commandEnv(r *runSpec, e *execSpec, getenv func(string) string) []string {
	env := []string{
		"PATH=" + containerPath, "HOME=/root", "USER=root", "LOGNAME=root",
		"HOSTNAME=karapace-" + r.ShortID, "container=karapace",
		"KARAPACE_ENV=1", "KARAPACE_ENV_ID=" + r.ID,
	}
	pol, err := loadPolicy(getenv)
	if err != nil {
		pol = defaultPolicy()
	}
	env = append(env, pol.filterEnv(e.Env)...)
	if !r.Build {
		_, sockEnv := hostSockets(getenv, r.Sockets)
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
func commandDir(r *runSpec, e *execSpec, getenv func(string) string) string {
	if e.Cwd != "" {
		cwd, err := filepath.EvalSymlinks(e.Cwd)
		if err == nil {
			for _, m := range r.Mounts {
				bm, err := policy{}.resolveMountPath(m.Source, r.ManifestDir, getenv("HOME"))
				if err == nil && pathWithin(cwd, bm) {
					return filepath.Join(m.Container, strings.TrimPrefix(cwd, bm))
				}
			}
		}
	}
	return "/root"
}
