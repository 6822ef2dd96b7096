package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The host's session sockets appear in one place inside, with the
// variables pointing at them, each once.
func TestNSHostSockets(t *testing.T) {
	r := testEnvSpec(t)
	run := t.TempDir()
	os.Chmod(run, 0o755)
	os.Mkdir(filepath.Join(run, "pulse"), 0o755)
	for _, name := range []string{"wayland-1", "pipewire-0", "pulse/native", "bus"} {
		ln, err := net.Listen("unix", filepath.Join(run, name))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func(name string) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hello from " + name + "\n"))
				c.Close()
			}
		}(name)
	}
	env := append(baseEnv(), "XDG_RUNTIME_DIR="+run, "WAYLAND_DISPLAY=wayland-1",
		"DBUS_SESSION_BUS_ADDRESS=unix:path="+filepath.Join(run, "bus")+",guid=x")
	// Not asked for, none is there, nor a variable naming one.
	code, out, errOut := nsRun(t, r, env, "", "/bin/sh", "-c", `
env | grep -E '^(WAYLAND_DISPLAY|XDG_RUNTIME_DIR|PULSE_SERVER|PIPEWIRE_REMOTE|DBUS_SESSION_BUS_ADDRESS)='; ls /run/host-session`)
	if code == 0 || out != "" || !strings.Contains(errOut, "No such file or directory") {
		t.Fatalf("no sockets asked for: status %d, %q, %s", code, out, errOut)
	}
	nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
	r.Sockets = hostSocketKinds
	code, out, errOut = nsRun(t, r, env, "", "/bin/sh", "-c", `
env | grep -E '^(WAYLAND_DISPLAY|XDG_RUNTIME_DIR|PULSE_SERVER|PIPEWIRE_REMOTE|DBUS_SESSION_BUS_ADDRESS)=' | sort
perl -MIO::Socket::UNIX -e 'for (@ARGV) { $s = IO::Socket::UNIX->new(Peer => $_) or die "$_: $!"; print scalar <$s> }' $WAYLAND_DISPLAY /run/host-session/pipewire-0 /run/host-session/pulse-native /run/host-session/bus`)
	want := "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/host-session/bus\nPIPEWIRE_REMOTE=/run/host-session/pipewire-0\n" +
		"PULSE_SERVER=unix:/run/host-session/pulse-native\nWAYLAND_DISPLAY=/run/host-session/wayland-0\nXDG_RUNTIME_DIR=/run/host-session\n" +
		"hello from wayland-1\nhello from pipewire-0\nhello from pulse/native\nhello from bus\n"
	if code != 0 || out != want {
		t.Fatalf("status %d\n%s\nwant:\n%s\nstderr: %s", code, out, want, errOut)
	}
}

// Devices only when the manifest asks; one that is missing on the host is
// a warning naming the manifest key, not a failure.
func TestNSDevices(t *testing.T) {
	logs := captureLog(t)
	r := testEnvSpec(t)
	_, out, _ := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "ls /dev/dri /dev/snd 2>&1 | grep -c 'No such file'")
	if out != "2\n" {
		t.Fatalf("devices without asking: %q", out)
	}
	nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
	r.GPU, r.Audio = true, true
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "for d in /dev/dri /dev/snd; do test -d $d && echo $d; done; true")
	want := ""
	for _, d := range []struct{ dev, key string }{{"/dev/dri", "hardware.gpu"}, {"/dev/snd", "hardware.audio"}} {
		if _, err := os.Stat(d.dev); err == nil {
			want += d.dev + "\n"
		} else if !strings.Contains(logs.String(), d.key+": "+d.dev+" is not present on this host") {
			t.Errorf("no warning for the missing %s:\n%s", d.dev, logs.String())
		}
	}
	if code != 0 || out != want {
		t.Fatalf("status %d: %q, want %q (%s)", code, out, want, errOut)
	}
}

func TestNSMountPolicy(t *testing.T) {
	shared, err := os.MkdirTemp("/tmp", "karapace-mount-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(shared)
	os.Chmod(shared, 0o777)
	os.WriteFile(filepath.Join(shared, "in.txt"), []byte("host data\n"), 0o644)
	os.Symlink("/etc", filepath.Join(shared, "to-etc"))

	r := testEnvSpec(t)
	os.MkdirAll(filepath.Join(r.ManifestDir, "src"), 0o755)
	os.WriteFile(filepath.Join(r.ManifestDir, "src", "main.c"), []byte("int main;\n"), 0o644)
	r.Mounts = []lockMount{
		{Label: "data", Source: shared, Container: "/data", ReadOnly: true},
		{Label: "work", Source: "src", Container: "/workspace"},
	}
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c",
		"cat /data/in.txt /workspace/main.c; echo new > /workspace/out.txt; echo x > /data/x 2>&1 || echo read-only")
	if code != 0 || out != "host data\nint main;\nread-only\n" {
		t.Fatalf("status %d\n%s%s", code, out, errOut)
	}
	if got, _ := os.ReadFile(filepath.Join(r.ManifestDir, "src", "out.txt")); string(got) != "new\n" {
		t.Fatalf("write through the mount: %q", got)
	}

	for _, tc := range []struct {
		m    lockMount
		want string
	}{
		{lockMount{Label: "etc", Source: "/etc", Container: "/x"}, "mounts.etc: host path /etc"},
		{lockMount{Label: "dots", Source: shared + "/../../etc", Container: "/x"}, "mounts.dots: host path /etc"},
		{lockMount{Label: "link", Source: shared + "/to-etc", Container: "/x"}, "mounts.link: host path /etc (from"},
		{lockMount{Label: "up", Source: "../../../../../../etc", Container: "/x"}, "mounts.up: host path /etc"},
		{lockMount{Label: "gone", Source: "/tmp/does-not-exist-karapace", Container: "/x"}, "mounts.gone: host path /tmp/does-not-exist-karapace: no such file"},
	} {
		bad := testEnvSpec(t)
		bad.Mounts = []lockMount{tc.m}
		_, _, _, err := nsRunErr(bad, baseEnv(), "", "true")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.m.Label, err, tc.want)
		}
		if exitCodeOf(err) != exitManifest {
			t.Errorf("%s: exit code %d", tc.m.Label, exitCodeOf(err))
		}
		if _, ok := bad.runDir().running(); ok {
			t.Errorf("%s: an instance was started", tc.m.Label)
		}
	}
}

func TestNSEnvFiltering(t *testing.T) {
	r := testEnvSpec(t)
	env := append(baseEnv(), "TERM=xterm-test", "LANG=C.UTF-8", "LC_TIME=C", "SSH_AUTH_SOCK=/tmp/agent.sock",
		"AWS_SECRET_ACCESS_KEY=hunter2", "GITHUB_TOKEN=ghp_x", "DOCKER_HOST=unix:///x", "MY_VAR=1")
	code, out, _ := nsRun(t, r, env, "", "env")
	if code != 0 {
		t.Fatal(code)
	}
	for _, want := range []string{"TERM=xterm-test", "LANG=C.UTF-8", "LC_TIME=C", "KARAPACE_ENV=1", "KARAPACE_ENV_ID=" + r.ID, "PATH=" + containerPath, "HOME=/root"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
	for _, bad := range []string{"SSH_AUTH_SOCK", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DOCKER_HOST", "MY_VAR", "hunter2"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s leaked into the environment:\n%s", bad, out)
		}
	}
}

// The deny-list wins over every allowed place, the manifest's directory
// included: a credentials directory, anything in one, anything holding
// one, and the home directory itself, symlinks resolved; a project under
// home is fine. Only the user's config changes the list.
func TestMountDenyList(t *testing.T) {
	base := t.TempDir()
	home := filepath.Join(base, "home", "u")
	for _, d := range []string{".ssh", ".gnupg/private", "proj/src", ".config/gcloud"} {
		os.MkdirAll(filepath.Join(home, d), 0o700)
	}
	os.Symlink(filepath.Join(home, ".ssh"), filepath.Join(home, "proj", "keys"))
	p := defaultPolicy()
	p.MountPrefixes = []string{base}
	for _, tc := range []struct{ source, manifestDir, want string }{
		{"~/.ssh", "", "is " + filepath.Join(home, ".ssh")},
		{"~/.gnupg/private", "", "lies in " + filepath.Join(home, ".gnupg")},
		{"~/", "", "is " + home},
		{"~", "", "is " + home},
		{filepath.Join(base, "home"), "", "holds " + home},
		{"./", home, "is " + home},
		{"keys", filepath.Join(home, "proj"), "is " + filepath.Join(home, ".ssh")},
		{"~/.config", "", "holds " + filepath.Join(home, ".config", "gcloud")},
	} {
		_, err := p.resolveMount("m", tc.source, "/x", false, tc.manifestDir, home)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "denied_mount_paths") {
			t.Errorf("%s (from %s): %v, want %q", tc.source, tc.manifestDir, err, tc.want)
		}
	}
	for _, ok := range []struct{ source, manifestDir string }{{"~/proj", ""}, {"src", filepath.Join(home, "proj")}, {"./", filepath.Join(home, "proj")}} {
		if _, err := p.resolveMount("m", ok.source, "/x", false, ok.manifestDir, home); err != nil {
			t.Errorf("%s: %v", ok.source, err)
		}
	}
	// The user's config, and only it, replaces the list.
	cfgHome := t.TempDir()
	writeFile(t, cfgHome, "karapace/config.toml", "[policy]\ndenied_mount_paths = [\"~/.gnupg\"]\nallowed_mount_prefixes = [\""+base+"\"]\n")
	pol, err := loadPolicy(func(k string) string { return map[string]string{"XDG_CONFIG_HOME": cfgHome}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pol.resolveMount("m", "~/.ssh", "/x", false, "", home); err != nil {
		t.Errorf("allowed by the config: %v", err)
	}
	writeFile(t, cfgHome, "karapace/config.toml", "[policy]\ndenied_mount_paths = [\"relative/x\"]\n")
	if _, err := loadPolicy(func(k string) string { return map[string]string{"XDG_CONFIG_HOME": cfgHome}[k] }); err == nil || !strings.Contains(err.Error(), `policy.denied_mount_paths[0]: "relative/x" is neither an absolute path nor one under ~/`) {
		t.Errorf("a relative denied path: %v", err)
	}
}

// An environment from pull or import has no manifest directory: a
// relative mount is refused with the way out, never read as the current
// directory.
func TestRelativeMountNeedsManifestDir(t *testing.T) {
	for _, src := range []string{"./", ".", "src", "../x"} {
		_, err := defaultPolicy().resolveMount("workspace", src, "/workspace", false, "", t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "mounts.workspace: \""+src+"\" is relative to the manifest's directory, and this environment has none (it came from pull or import): run 'karapace build --locked' in a directory holding its karapace.toml") {
			t.Errorf("%q: %v", src, err)
		}
	}
}

// pathWithin decides only on absolute, clean paths.
func TestPathWithin(t *testing.T) {
	for _, tc := range []struct {
		path, dir string
		want      bool
	}{
		{"/a/b", "/a", true}, {"/a", "/a", true}, {"/ab", "/a", false}, {"/a/b", "/", true},
		{"a/b", "a", false}, {"/a/../etc", "/a", false}, {"/a/b/", "/a", false}, {"/a/b", "/a/", false}, {"", "/", false},
	} {
		if got := pathWithin(tc.path, tc.dir); got != tc.want {
			t.Errorf("pathWithin(%q, %q) = %v", tc.path, tc.dir, got)
		}
	}
}

// build refuses what exec would, at the manifest's line and column, and
// builds nothing: no lock, no environment.
func TestBuildChecksPolicy(t *testing.T) {
	k := newMockKP(t, "")
	os.MkdirAll(filepath.Join(k.home, ".ssh"), 0o700)
	writeFile(t, k.home, ".config/karapace/config.toml", "[policy]\nmax_pids = 100\n")
	base := mockManifest("")
	for _, tc := range []struct{ extra, want string }{
		{"[mounts]\nkeys = \"~/.ssh:/keys\"\n", "karapace.toml:11:1: mounts.keys: host path " + filepath.Join(k.home, ".ssh") + " (from \"~/.ssh\") is " + filepath.Join(k.home, ".ssh") + ", which the policy keeps out"},
		{"[mounts]\nall = \"../:/all\"\n", "karapace.toml:11:1: mounts.all: host path " + k.base + " (from \"..\") holds " + k.home},
		{"[mounts]\netc = \"/etc:/host-etc\"\n", "karapace.toml:11:1: mounts.etc: host path /etc (from \"/etc\") is outside the allowed places"},
		{"[runtime.resource_limits]\npids_limit = 200\n", "karapace.toml:11:1: runtime.resource_limits.pids_limit: 200 exceeds the policy maximum 100"},
	} {
		k.writeManifest(base + tc.extra)
		k.fails(exitManifest, tc.want, "build")
		if _, err := os.Stat(filepath.Join(k.dir, "karapace.lock")); !os.IsNotExist(err) {
			t.Errorf("%s: a lock was written (%v)", tc.extra, err)
		}
		if out := k.ok("list", "--quiet"); out != "" {
			t.Errorf("%s: an environment was built: %s", tc.extra, out)
		}
	}
}

// inspect says how the sandbox holds an environment: its limits and what
// of the host it reaches; implied host sockets are dropped by isolation,
// named ones kept.
func TestInspectProtections(t *testing.T) {
	k := newMockKP(t, "")
	k.writeManifest(mockManifest("") + "network_isolation = true\nsession_bus = true\nhost_sockets = [\"wayland\"]\n[runtime.resource_limits]\npids_limit = 128\n")
	k.ok("build", "--name", "p")
	var v struct {
		Protections map[string]string `json:"protections"`
	}
	k.jsonOut(&v, "inspect", "p")
	p := v.Protections
	if !strings.HasPrefix(p["pids_limit"], "128 (") || p["network"] != "isolated (loopback only)" || p["host_sockets"] != "session-bus, wayland" ||
		p["mounts"] != "none" || !strings.Contains(p["commands"], "seccomp") || p["ids"] == "" {
		t.Fatalf("protections: %+v", p)
	}
	out := k.ok("inspect", "p")
	mustContain(t, "inspect", out, "pids_limit", "host_sockets", "session-bus, wayland")
	// Without isolation, [gui] apps bring the display servers.
	k.writeManifest(mockManifest(""))
	k.ok("build", "--name", "q")
	k.jsonOut(&v, "inspect", "q")
	if v.Protections["host_sockets"] != "wayland, x11" || !strings.HasPrefix(v.Protections["pids_limit"], "4096 (") {
		t.Fatalf("protections: %+v", v.Protections)
	}
}

// A graphical environment sees the host's fonts, icons and themes,
// read-only, where fontconfig and GTK look besides their own; another
// does not.
func TestNSGUIShares(t *testing.T) {
	host := t.TempDir()
	was := guiShares
	guiShares = map[string]string{}
	for _, d := range []string{"fonts", "icons", "themes"} {
		writeFile(t, filepath.Join(host, d), "host-"+d, d+"\n")
		guiShares[filepath.Join(host, d)] = "/usr/local/share/" + d
	}
	t.Cleanup(func() { guiShares = was })
	r := testEnvSpec(t)
	script := "cat /usr/local/share/fonts/host-fonts /usr/local/share/icons/host-icons /usr/local/share/themes/host-themes; touch /usr/local/share/fonts/x 2>&1"
	if _, out, _ := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", script); strings.Contains(out, "fonts\n") {
		t.Fatalf("not graphical, yet the host's fonts are there: %q", out)
	}
	nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
	r.GUI = true
	_, out, _ := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", script)
	if !strings.HasPrefix(out, "fonts\nicons\nthemes\n") || !strings.Contains(out, "Read-only file system") {
		t.Fatalf("graphical: %q", out)
	}
}
