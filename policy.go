package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// policy is what an environment may reach on the host. Defaults are
// strict; the user widens them in $XDG_CONFIG_HOME/karapace/config.toml.
type policy struct {
	MountPrefixes []string // absolute host paths a mount may come from
	// MountDeny wins over MountPrefixes and the manifest's directory: no
	// mount may reach into one of these, nor hold one. "~" is the home
	// directory itself (a project below it is fine); "~/x" is under it.
	MountDeny    []string
	EnvAllow     []string // host variables passed in; NAME or PREFIX*
	EnvDeny      []string // never passed in, even when allowed; NAME or PREFIX* or *PART*
	MaxMemoryMB  int64    // 0: no maximum
	MaxCPUShares int64
	MaxPids      int64
	DefaultPids  int64 // the pids limit of an environment whose manifest sets none
}

// defaultMountDeny are the places credentials live: a manifest, which
// comes with a project from anywhere, may not mount them. Only the user's
// own config changes this list.
var defaultMountDeny = []string{"~", "~/.ssh", "~/.gnupg", "~/.aws", "~/.kube", "~/.docker", "~/.netrc",
	"~/.config/gcloud", "~/.password-store"}

// defaultPidsLimit bounds the processes (and threads) of an environment
// whose manifest sets no limit: well above what builds and desktop
// programs use, well below what takes a host down.
const defaultPidsLimit = 4096

func defaultPolicy() policy {
	return policy{
		MountPrefixes: []string{"/home", "/tmp"},
		MountDeny:     defaultMountDeny,
		DefaultPids:   defaultPidsLimit,
		EnvAllow: []string{"TERM", "COLORTERM", "LANG", "LANGUAGE", "LC_*", "TZ", "XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP", "EDITOR", "VISUAL", "PAGER", "NO_COLOR",
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
// ".." resolved. A relative source needs the manifest's directory: an
// environment from pull or import has none.
func (p policy) resolveMountPath(source, manifestDir, home string) (string, error) {
	host, err := mountHostPath(source, manifestDir, home)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(host)
	if err != nil {
		return "", fmt.Errorf("host path %s: %w", host, errors.Unwrap(err))
	}
	return real, nil
}

// mountHostPath is where a mount source lies on the host, as written.
func mountHostPath(source, manifestDir, home string) (string, error) {
	switch {
	case source == "~" || strings.HasPrefix(source, "~/"):
		if home == "" {
			return "", fmt.Errorf("%s: HOME is not set", source)
		}
		return filepath.Join(home, strings.TrimPrefix(source, "~")), nil
	case filepath.IsAbs(source):
		return filepath.Clean(source), nil
	case manifestDir == "":
		return "", fmt.Errorf("%q is relative to the manifest's directory, and this environment has none (it came from pull or import): run 'karapace build --locked' in a directory holding its karapace.toml and karapace.lock to tie it to that project, or use an absolute path", source)
	}
	return filepath.Join(manifestDir, source), nil
}

// realPath resolves the symlinks of path, or of its longest existing
// beginning when it does not exist (yet): where it is, or would be.
func realPath(path string) string {
	rest := ""
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(real, rest)
		}
		if p == "/" || p == "." {
			return filepath.Clean(path)
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// resolveMount turns a manifest mount into a checked bind mount. Symlinks
// and ".." are resolved first, so the check sees the real host path.
func (p policy) resolveMount(label, source, container string, ro bool, manifestDir, home string) (bindMount, error) {
	where := "mounts." + label
	real, err := p.resolveMountPath(source, manifestDir, home)
	if err != nil {
		return bindMount{}, fmt.Errorf("%s: %w", where, err)
	}
	if err := p.checkMount(source, real, manifestDir, home); err != nil {
		return bindMount{}, fmt.Errorf("%s: %w", where, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return bindMount{}, fmt.Errorf("%s: host path %s: %w", where, real, err)
	}
	return bindMount{Source: real, Target: container, ReadOnly: ro, Dir: st.IsDir(), Why: "mount " + label, Resolved: true}, nil
}

// checkMount decides whether a mount source, at its real host path, may
// be mounted: never a place of the deny-list or one holding it; else a
// relative mount anywhere under the manifest's directory, any other under
// an allowed prefix.
func (p policy) checkMount(source, real, manifestDir, home string) error {
	for _, d := range p.MountDeny {
		denied, subtree := d, true
		if d == "~" || strings.HasPrefix(d, "~/") {
			if home == "" {
				continue
			}
			denied, subtree = filepath.Join(home, d[1:]), d != "~"
		}
		denied = realPath(denied)
		if pathWithin(denied, real) || subtree && pathWithin(real, denied) {
			what := "holds " + denied
			if pathWithin(real, denied) {
				what = "is " + denied
				if real != denied {
					what = "lies in " + denied
				}
			}
			return fmt.Errorf("host path %s (from %q) %s, which the policy keeps out of every environment (credentials live there); to allow it, remove %q from [policy] denied_mount_paths in your karapace config", real, source, what, d)
		}
	}
	if !filepath.IsAbs(source) && !strings.HasPrefix(source, "~") && manifestDir != "" {
		if pathWithin(real, realPath(manifestDir)) {
			return nil
		}
	}
	for _, prefix := range p.MountPrefixes {
		if pathWithin(real, realPath(prefix)) {
			return nil
		}
	}
	return fmt.Errorf("host path %s (from %q) is outside the allowed places (the manifest's directory, %s); allow it under [policy] allowed_mount_prefixes in the karapace config", real, source, strings.Join(p.MountPrefixes, ", "))
}

// checkMounts checks a manifest's mounts against the policy at build
// time, each error at its key's position; a source that does not exist
// yet is checked where it would be.
func (p policy) checkMounts(m *manifest, home string) error {
	for _, mt := range m.Mounts {
		host, err := mountHostPath(mt.Source, m.Dir, home)
		if err == nil {
			err = p.checkMount(mt.Source, realPath(host), m.Dir, home)
		}
		if err != nil {
			return m.src.errorf([]string{"mounts", mt.Label}, "%v", err)
		}
	}
	return nil
}

// pathWithin reports whether path is dir or below it, by whole
// components. Both must be absolute and clean, with their symlinks
// resolved by the caller: anything else is never within.
func pathWithin(path, dir string) bool {
	if !filepath.IsAbs(path) || !filepath.IsAbs(dir) || filepath.Clean(path) != path || filepath.Clean(dir) != dir {
		return false
	}
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// checkLimits validates resource limits against the policy's maximums:
// the key of the first one over, and why.
func (p policy) checkLimits(cpuShares, memoryMB, pids int64) error {
	key, msg := p.limitOver(cpuShares, memoryMB, pids)
	if key == "" {
		return nil
	}
	return fmt.Errorf("runtime.resource_limits.%s: %s", key, msg)
}

func (p policy) limitOver(cpuShares, memoryMB, pids int64) (string, string) {
	for _, l := range []struct {
		key    string
		v, max int64
	}{{"cpu_shares", cpuShares, p.MaxCPUShares}, {"memory_limit_mb", memoryMB, p.MaxMemoryMB}, {"pids_limit", pids, p.MaxPids}} {
		if l.max > 0 && l.v > l.max {
			return l.key, fmt.Sprintf("%d exceeds the policy maximum %d", l.v, l.max)
		}
	}
	return "", ""
}

// deviceBinds are the host devices the manifest asks for, when present.
func deviceBinds(gpu, audio bool, out *output) []bindMount {
	var binds []bindMount
	add := func(path, why string) {
		if st, err := os.Stat(path); err == nil {
			binds = append(binds, bindMount{Source: path, Target: path, Dir: st.IsDir(), Why: why})
		} else {
			out.warnf("%s: %s is not present on this host; continuing without it", why, path)
		}
	}
	if gpu {
		add("/dev/dri", "hardware.gpu")
		// NVIDIA's proprietary driver has nodes of its own, when loaded.
		nvidia, _ := filepath.Glob("/dev/nvidia*")
		for _, p := range nvidia {
			add(p, "hardware.gpu")
		}
	}
	if audio {
		add("/dev/snd", "hardware.audio")
	}
	return binds
}

// guiShares are the host's fonts, icons and themes, which a graphical
// environment sees read-only where fontconfig and GTK look besides their
// own (/usr/local/share), so its programs look like the desktop's.
var guiShares = map[string]string{
	"/usr/share/fonts":  "/usr/local/share/fonts",
	"/usr/share/icons":  "/usr/local/share/icons",
	"/usr/share/themes": "/usr/local/share/themes",
}

// guiBinds are those of guiShares the host has.
func guiBinds() []bindMount {
	var binds []bindMount
	for _, src := range slices.Sorted(maps.Keys(guiShares)) {
		if st, err := os.Stat(src); err == nil && st.IsDir() {
			binds = append(binds, bindMount{Source: src, Target: guiShares[src], ReadOnly: true, Dir: true, Why: "gui.apps: the host's " + filepath.Base(src)})
		}
	}
	return binds
}

// hostSession is where the host's session sockets appear inside.
const hostSession = "/run/host-session"

// hostSocketKinds are the sockets of the user's desktop session an
// environment may be given. From the session bus, systemd --user starts
// anything on the host; from the display servers, a program reads every
// keystroke: none is given unless the manifest asks.
var hostSocketKinds = []string{"pipewire", "pulseaudio", "session-bus", "wayland", "x11"}

// hostSocketsOf is which host sockets an environment gets: those its
// manifest names (runtime.host_sockets, runtime.session_bus) and, unless
// its network is isolated, those [gui] apps imply (the display servers)
// and hardware.audio (the sound servers). Sorted.
func hostSocketsOf(l *lockFile) []string {
	kinds := append([]string{}, l.HostSockets...)
	if l.SessionBus {
		kinds = append(kinds, "session-bus")
	}
	if !l.NetworkIsolation {
		if len(l.Apps) > 0 {
			kinds = append(kinds, "wayland", "x11")
		}
		if l.Audio {
			kinds = append(kinds, "pipewire", "pulseaudio")
		}
	}
	sort.Strings(kinds)
	return slices.Compact(kinds)
}

// hostSockets binds those of the user's desktop session's sockets that
// kinds names and that exist (see hostSocketKinds), and returns the
// variables that point programs at them.
func hostSockets(getenv func(string) string, kinds []string) ([]bindMount, []string) {
	want := func(k string) bool { return contains(kinds, k) }
	var binds []bindMount
	var env []string
	isSocket := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && st.Mode()&os.ModeSocket != 0
	}
	runtimeDir := getenv("XDG_RUNTIME_DIR")
	if runtimeDir != "" {
		if wl := getenv("WAYLAND_DISPLAY"); wl != "" && want("wayland") {
			src := wl
			if !filepath.IsAbs(src) {
				src = filepath.Join(runtimeDir, wl)
			}
			if isSocket(src) {
				binds = append(binds, bindMount{Source: src, Target: hostSession + "/wayland-0", Why: "Wayland socket"})
				env = append(env, "WAYLAND_DISPLAY="+hostSession+"/wayland-0")
			}
		}
		if src := filepath.Join(runtimeDir, "pipewire-0"); want("pipewire") && isSocket(src) {
			binds = append(binds, bindMount{Source: src, Target: hostSession + "/pipewire-0", Why: "PipeWire socket"})
			env = append(env, "PIPEWIRE_REMOTE="+hostSession+"/pipewire-0")
		}
		if src := filepath.Join(runtimeDir, "pulse/native"); want("pulseaudio") && isSocket(src) {
			binds = append(binds, bindMount{Source: src, Target: hostSession + "/pulse-native", Why: "PulseAudio socket"})
			env = append(env, "PULSE_SERVER=unix:"+hostSession+"/pulse-native")
		}
	}
	if addr := getenv("DBUS_SESSION_BUS_ADDRESS"); addr != "" && want("session-bus") {
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
	if d := getenv("DISPLAY"); strings.HasPrefix(d, ":") && want("x11") {
		if st, err := os.Stat("/tmp/.X11-unix"); err == nil && st.IsDir() {
			binds = append(binds, bindMount{Source: "/tmp/.X11-unix", Target: "/tmp/.X11-unix", Dir: true, ReadOnly: true, Why: "X11 sockets"})
			env = append(env, "DISPLAY="+d)
		}
	}
	return binds, env
}
