package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rebuild builds the new environment and, in the same operation,
// destroys the one the lock named; its name and nothing else moves on.
func TestRebuild(t *testing.T) {
	k := newMockKP(t, `"alpha"`)
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
