package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rebuild builds the new environment and, in the same operation,
// destroys the one the lock named; its name and nothing else moves on.
func TestRebuild(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	k.writeManifest(mockManifest(`"alpha"`))
	old := strings.TrimSpace(k.ok("build", "--name", "web"))
	lockPath := filepath.Join(k.dir, "karapace.lock")

	// Another project owns the name "db".
	otherDir := filepath.Join(k.base, "other")
	os.Mkdir(otherDir, 0o755)
	tinyImage(t, filepath.Join(otherDir, "image.tar.gz"))
	writeFile(t, otherDir, "karapace.toml", mockManifest(`"zeta"`))
	db := strings.TrimSpace(k.ok("build", "--name", "db", filepath.Join(otherDir, "karapace.toml")))

	// Refusals come before any work, and change nothing.
	k.writeManifest(mockManifest(`"alpha", "beta"`))
	before, _ := os.ReadFile(lockPath)
	k.fails(1, `the name "db" is taken by environment `+db[:12], "rebuild", "--name", "db")
	k.fails(1, `the name "db" is taken by environment `+db[:12], "build", "--name", "db")
	if after, _ := os.ReadFile(lockPath); string(after) != string(before) {
		t.Fatalf("a refused build rewrote the lock:\n%s", after)
	}
	var envs []envInfo
	k.jsonOut(&envs, "list")
	if len(envs) != 2 {
		t.Fatalf("a refused build left environments behind: %+v", envs)
	}
	// A running old environment is not destroyed under its sessions.
	markRunning(t, filepath.Join(k.store, "env", old))
	k.fails(1, "is running; stop it before rebuilding", "rebuild")
	os.Remove(filepath.Join(k.store, "env", old, "run", "instance.json"))

	// A failed build leaves the old environment and its lock as they were.
	writeFile(t, k.dir, "karapace.toml", strings.Replace(mockManifest(`"alpha", "beta"`), "./image.tar.gz", "./missing.tar.gz", 1))
	k.fails(1, "missing.tar.gz", "rebuild")
	if after, _ := os.ReadFile(lockPath); string(after) != string(before) {
		t.Fatalf("a failed rebuild rewrote the lock:\n%s", after)
	}
	k.ok("exec", "web", "--", "true")

	k.writeManifest(mockManifest(`"alpha", "beta"`))
	var res buildResult
	k.jsonOut(&res, "rebuild")
	if res.EnvID == old || res.Replaced != old || res.Name != "web" || !res.Created {
		t.Fatalf("rebuild: %+v (old %s)", res, old)
	}
	k.fails(1, "no environment", "inspect", old)
	if _, err := os.Stat(filepath.Join(k.store, "env", old)); !os.IsNotExist(err) {
		t.Fatalf("the old environment's directory is left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(k.home, ".local/share/applications", "karapace-"+old[:12]+"-editor.desktop")); !os.IsNotExist(err) {
		t.Fatal("the old environment's launcher is left")
	}
	if _, err := os.Stat(filepath.Join(k.home, ".local/share/applications", "karapace-"+res.ShortID+"-editor.desktop")); err != nil {
		t.Fatalf("no launcher for the new environment: %v", err)
	}
	if l, err := loadLock(lockPath); err != nil || l.EnvID != res.EnvID {
		t.Fatalf("the lock names %v (%v), want %s", l, err, res.EnvID)
	}
	if out := k.ok("exec", "web", "--", "true"); !strings.HasPrefix(out, "mock["+res.ShortID+"]") {
		t.Fatalf("the name did not move: %q", out)
	}
	// Rebuilding what is already built replaces nothing.
	var again buildResult
	k.jsonOut(&again, "rebuild")
	if again.EnvID != res.EnvID || again.Replaced != "" || again.Created || again.Name != "web" {
		t.Fatalf("second rebuild: %+v", again)
	}
	k.ok("verify-store")
}

// markRunning makes an environment look running: its instance marker
// names a live process (this test).
func markRunning(t *testing.T, envDir string) {
	t.Helper()
	st, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(instanceMarker{Pid: os.Getpid(), StartTime: st})
	writeFile(t, filepath.Join(envDir, "run"), "instance.json", string(data))
}

// A name may not read as the beginning of another environment's env_id.
func TestNamesAndReferences(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	var ids []string
	for i := 0; i < 2; i++ {
		k.writeManifest(mockManifest(fmt.Sprintf(`"p%d"`, i)))
		ids = append(ids, strings.TrimSpace(k.ok("build")))
	}
	k.fails(1, "would be mistaken for environment "+ids[1][:12], "rename", ids[0], ids[1][:12])
	k.writeManifest(mockManifest(`"p2"`))
	k.fails(1, "would be mistaken for environment "+ids[1][:12], "build", "--name", ids[1][:6])
	k.ok("rename", ids[0], "first")
	if out := k.ok("--json", "inspect", "first"); !strings.Contains(out, ids[0]) {
		t.Fatalf("inspect by name: %s", out)
	}
}

// pin --write-lock pins the image, then builds, writing the lock.
func TestPinWriteLock(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	k.writeManifest(mockManifest(`"alpha"`))
	k.ok("pin", "--write-lock")
	m, err := loadManifest(filepath.Join(k.dir, "karapace.toml"))
	if err != nil || !strings.HasPrefix(m.BaseImage, "./image.tar.gz#sha256=") {
		t.Fatalf("pinned manifest: %v %q", err, m.BaseImage)
	}
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil || "sha256:"+strings.TrimPrefix(m.BaseImage, "./image.tar.gz#sha256=") != l.BaseImageDigest {
		t.Fatalf("lock: %v %+v", err, l)
	}
	k.ok("pin", "--check")
	k.ok("inspect", l.EnvID)
	k.ok("build", "--locked", "--require-pinned-image")
}

// enter through a real terminal: the user's login shell in the
// environment, its exit status karapace's.
func TestCLIEnterWithTmux(t *testing.T) {
	needTool(t, "tmux")
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	k.ok("build", "--name", "demo")
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	script := writeFile(t, t.TempDir(), "enter.sh", fmt.Sprintf("#!/bin/sh\ncd %q\nenv -i %s %q enter demo\necho karapace-exited-$?\nsleep 30\n",
		k.dir, strings.Join(quoteAll(k.env), " "), os.Args[0]))
	os.Chmod(script, 0o755)
	tmux("new-session", "-d", "-x", "100", "-y", "30", script)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()
	waitPane := func(want string) {
		var pane string
		for i := 0; i < 150; i++ {
			if pane = tmux("capture-pane", "-p"); strings.Contains(pane, want) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("the terminal never showed %q:\n%s", want, pane)
	}
	tmux("send-keys", "echo $((6*7)) $0 $(hostname) $(cat /etc/debian_version | cut -c1-3)", "Enter")
	waitPane("42 -bash karapace-")
	tmux("send-keys", "exit 4", "Enter")
	waitPane("karapace-exited-4")
}
