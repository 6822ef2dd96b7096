package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// policy is what an environment may reach on the host. Defaults are
// strict; the user widens them in $XDG_CONFIG_HOME/karapace/config.toml.
type policy struct {
	MountPrefixes []string // absolute host paths a mount may come from
	EnvAllow      []string // host variables passed in; NAME or PREFIX*
	EnvDeny       []string // never passed in, even when allowed; NAME or PREFIX* or *PART*
	MaxMemoryMB   int64    // 0: no maximum
	MaxCPUShares  int64
}

func defaultPolicy() policy {
	return policy{
		MountPrefixes: []string{"/home", "/tmp"},
		EnvAllow: []string{"TERM", "COLORTERM", "LANG", "LANGUAGE", "LC_*", "TZ", "DISPLAY", "WAYLAND_DISPLAY",
			"XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP", "EDITOR", "VISUAL", "PAGER", "NO_COLOR",
			"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"},
		EnvDeny: []string{"SSH_AUTH_SOCK", "SSH_AGENT_PID", "GPG_AGENT_INFO", "GNUPGHOME", "KRB5CCNAME",
			"DOCKER_HOST", "DOCKER_CONFIG", "AWS_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS",
			"*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*API_KEY*"},
	}
}

// envPatternMatch matches NAME, PREFIX* and *PART* patterns.
func envPatternMatch(pattern, name string) bool {
	switch {
	case strings.HasPrefix(pattern, "*") && strings.HasSuffix(pattern, "*") && len(pattern) > 1:
		return strings.Contains(name, pattern[1:len(pattern)-1])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(name, pattern[:len(pattern)-1])
	default:
		return name == pattern
	}
}

// filterEnv keeps the allowed, not denied host variables, sorted.
func (p policy) filterEnv(host []string) []string {
	var out []string
	for _, kv := range host {
		name, _, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		allowed, denied := false, false
		for _, a := range p.EnvAllow {
			allowed = allowed || envPatternMatch(a, name)
		}
		for _, d := range p.EnvDeny {
			denied = denied || envPatternMatch(d, name)
		}
		if allowed && !denied {
			out = append(out, kv)
		}
	}
	sort.Strings(out)
	return out
}

// resolveMountPath finds the real host path of a mount source: "~/"
// under home, relative paths under the manifest's directory, symlinks and
// ".." resolved.
func (p policy) resolveMountPath(source, manifestDir, home string) (string, error) {
	var host string
	switch {
	case source == "~" || strings.HasPrefix(source, "~/"):
		if home == "" {
			return "", fmt.Errorf("%s: HOME is not set", source)
		}
		host = filepath.Join(home, strings.TrimPrefix(source, "~"))
	case filepath.IsAbs(source):
		host = source
	default:
		host = filepath.Join(manifestDir, source)
	}
	real, err := filepath.EvalSymlinks(host)
	if err != nil {
		return "", fmt.Errorf("host path %s: %w", host, errors.Unwrap(err))
	}
	return real, nil
}

// resolveMount turns a manifest mount into a checked bind mount. Symlinks
// and ".." are resolved first, so the check sees the real host path. A
// relative mount may reach anything under the manifest's directory; any
// other must lie under an allowed prefix.
func (p policy) resolveMount(label, source, container string, ro bool, manifestDir, home string) (bindMount, error) {
	where := "mounts." + label
	real, err := p.resolveMountPath(source, manifestDir, home)
	if err != nil {
		return bindMount{}, fmt.Errorf("%s: %w", where, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return bindMount{}, fmt.Errorf("%s: host path %s: %w", where, real, err)
	}
	ok := false
	if !filepath.IsAbs(source) && !strings.HasPrefix(source, "~") {
		base, err := filepath.EvalSymlinks(manifestDir)
		ok = err == nil && pathWithin(real, base)
	}
	for _, prefix := range p.MountPrefixes {
		ok = ok || pathWithin(real, filepath.Clean(prefix))
	}
	if !ok {
		return bindMount{}, fmt.Errorf("%s: host path %s (from %q) is outside the allowed places (the manifest's directory, %s); allow it under [policy] allowed_mount_prefixes in the karapace config", where, real, source, strings.Join(p.MountPrefixes, ", "))
	}
	return bindMount{Source: real, Target: container, ReadOnly: ro, Dir: st.IsDir(), Why: "mount " + label, Resolved: true}, nil
}

// pathWithin reports whether path is dir or below it, by whole components.
func pathWithin(path, dir string) bool {
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// checkLimits validates resource limits against the policy's maximums.
func (p policy) checkLimits(cpuShares, memoryMB int64) error {
	if p.MaxCPUShares > 0 && cpuShares > p.MaxCPUShares {
		return fmt.Errorf("runtime.resource_limits.cpu_shares: %d exceeds the policy maximum %d", cpuShares, p.MaxCPUShares)
	}
	if p.MaxMemoryMB > 0 && memoryMB > p.MaxMemoryMB {
		return fmt.Errorf("runtime.resource_limits.memory_limit_mb: %d exceeds the policy maximum %d", memoryMB, p.MaxMemoryMB)
	}
	return nil
}

// deviceBinds are the host devices the manifest asks for, when present.
func deviceBinds(gpu, audio bool) []bindMount {
	var out []bindMount
	add := func(path, why string) {
		if st, err := os.Stat(path); err == nil {
			out = append(out, bindMount{Source: path, Target: path, Dir: st.IsDir(), Why: why})
		} else {
			warnf("%s: %s is not present on this host; continuing without it", why, path)
		}
	}
	if gpu {
		add("/dev/dri", "hardware.gpu")
	}
	if audio {
		add("/dev/snd", "hardware.audio")
	}
	return out
}

// hostSession is where the host's session sockets appear inside.
const hostSession = "/run/host-session"

// hostSockets binds the sockets of the user's desktop session that exist
// (Wayland, X11, PipeWire, PulseAudio, session D-Bus) and returns the
// variables that point programs at them.
func hostSockets(getenv func(string) string) ([]bindMount, []string) {
	var binds []bindMount
	var env []string
	isSocket := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && st.Mode()&os.ModeSocket != 0
	}
	runtimeDir := getenv("XDG_RUNTIME_DIR")
	if runtimeDir != "" {
		if wl := getenv("WAYLAND_DISPLAY"); wl != "" {
			src := wl
			if !filepath.IsAbs(src) {
				src = filepath.Join(runtimeDir, wl)
			}
			if isSocket(src) {
				binds = append(binds, bindMount{Source: src, Target: hostSession + "/wayland-0", Why: "Wayland socket"})
				env = append(env, "WAYLAND_DISPLAY="+hostSession+"/wayland-0")
			}
		}
		if src := filepath.Join(runtimeDir, "pipewire-0"); isSocket(src) {
			binds = append(binds, bindMount{Source: src, Target: hostSession + "/pipewire-0", Why: "PipeWire socket"})
			env = append(env, "PIPEWIRE_REMOTE="+hostSession+"/pipewire-0")
		}
		if src := filepath.Join(runtimeDir, "pulse/native"); isSocket(src) {
			binds = append(binds, bindMount{Source: src, Target: hostSession + "/pulse-native", Why: "PulseAudio socket"})
			env = append(env, "PULSE_SERVER=unix:"+hostSession+"/pulse-native")
		}
	}
	if addr := getenv("DBUS_SESSION_BUS_ADDRESS"); addr != "" {
		if p, ok := strings.CutPrefix(addr, "unix:path="); ok {
			p, _, _ = strings.Cut(p, ",")
			if isSocket(p) {
				binds = append(binds, bindMount{Source: p, Target: hostSession + "/bus", Why: "session D-Bus socket"})
				env = append(env, "DBUS_SESSION_BUS_ADDRESS=unix:path="+hostSession+"/bus")
			}
		}
	}
	if len(binds) > 0 {
		env = append(env, "XDG_RUNTIME_DIR="+hostSession)
	}
	if d := getenv("DISPLAY"); strings.HasPrefix(d, ":") {
		if st, err := os.Stat("/tmp/.X11-unix"); err == nil && st.IsDir() {
			binds = append(binds, bindMount{Source: "/tmp/.X11-unix", Target: "/tmp/.X11-unix", Dir: true, ReadOnly: true, Why: "X11 sockets"})
		}
	}
	return binds, env
}
