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
	nsBackend{getenv: os.Getenv}.stop(r, time.Second)
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
	nsBackend{getenv: os.Getenv}.stop(r, time.Second)
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
