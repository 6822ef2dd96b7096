package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

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

// enter through a real terminal: the user's login shell in the
// environment, its exit status karapace's.
func TestCLIEnterWithTmux(t *testing.T) {
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	k.ok("build", "--name", "demo")
	script := writeFile(t, t.TempDir(), "enter.sh", fmt.Sprintf("#!/bin/sh\ncd %q\nenv -i %s %q enter demo\necho karapace-exited-$?\nsleep 30\n",
		k.dir, strings.Join(quoteAll(k.env), " "), os.Args[0]))
	os.Chmod(script, 0o755)
	term := newTmuxSession(t, script, 100, 30)
	term.keys("echo $((6*7)) $0 $(hostname) $(cat /etc/debian_version | cut -c1-3)", "Enter")
	term.waitFor("42 -bash karapace-")
	term.keys("exit 4", "Enter")
	term.waitFor("karapace-exited-4")
}

var envIDLine = regexp.MustCompile(`^[0-9a-f]{64}\n$`)

func TestCLIMockLifecycle(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	k.ok("new", "proj", "--template", "minimal")
	k.writeManifest(mockManifest(`"beta", "alpha"`))

	out := k.ok("build", "--name", "one")
	if !envIDLine.MatchString(out) {
		t.Fatalf("build printed %q, want the env_id", out)
	}
	id := strings.TrimSpace(out)
	lock, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil || lock.EnvID != id || len(lock.Packages) != 2 || lock.Packages[0] != (lockedPackage{"alpha", "0-mock"}) {
		t.Fatalf("lock: %v %+v", err, lock)
	}
	var res buildResult
	k.jsonOut(&res, "build")
	if res.Created || res.EnvID != id || res.Name != "one" || res.Packages != 2 {
		t.Fatalf("second build: %+v", res)
	}

	// A launcher for the app, valid by the desktop entry specification.
	launcher := filepath.Join(k.home, ".local/share/applications", "karapace-"+id[:12]+"-editor.desktop")
	body, err := os.ReadFile(launcher)
	if err != nil || !strings.Contains(string(body), "exec "+id+" -- editor") {
		t.Fatalf("launcher: %v\n%s", err, body)
	}
	if out, err := exec.Command(needTool(t, "desktop-file-validate"), launcher).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("desktop-file-validate: %v\n%s", err, out)
	}

	list := k.ok("list")
	if !regexp.MustCompile(`(?m)^SHORT_ID\s+NAME\s+STATE\s+ENV_ID\n` + id[:12] + `\s+one\s+built\s+` + id + `$`).MatchString(list) {
		t.Fatalf("list:\n%s", list)
	}
	var envs []envInfo
	k.jsonOut(&envs, "list")
	if len(envs) != 1 || envs[0].EnvID != id || envs[0].State != stateBuilt {
		t.Fatalf("list --json: %+v", envs)
	}
	var insp struct {
		Environment envInfo        `json:"environment"`
		Lock        map[string]any `json:"lock"`
	}
	k.jsonOut(&insp, "inspect", "one")
	if insp.Environment.EnvID != id || insp.Lock["runtime_backend"] != "mock" {
		t.Fatalf("inspect --json: %+v", insp)
	}
	mustContain(t, "inspect", k.ok("inspect", id[:5]), "env_id", id, "packages")

	if out := k.ok("exec", "one", "--", "echo", "hi"); out != "mock["+id[:12]+"]: echo hi\n" {
		t.Fatalf("exec: %q", out)
	}
	if out := k.ok("exec", id[:8], "echo", "--flag"); out != "mock["+id[:12]+"]: echo --flag\n" {
		t.Fatalf("exec without --: %q", out)
	}
	if code, _, _ := k.run("exec", "one", "--", "exit", "3"); code != 3 {
		t.Fatalf("exit status: %d", code)
	}
	k.fails(1, `no environment "nope"`, "exec", "nope", "--", "true")
	k.fails(1, "exec: no command given after '--'", "exec", "one")
	k.fails(1, "exec: unknown flag --bogus", "exec", "--bogus", "one", "--", "true")
	k.fails(1, "inspect: expected 1 argument(s): ENV", "inspect")
	k.fails(2, "missing.toml", "build", filepath.Join(k.dir, "missing.toml"))
	jsonErr := k.fails(1, `"kind": "failure"`, "--json", "exec", "nope", "--", "true")
	mustContain(t, "json error", jsonErr, `"exit_code": 1`, `"message": "no environment \"nope\"`)

	// Names are unique; rename checks the syntax.
	k.ok("rename", "one", "two")
	k.fails(1, "invalid environment name", "rename", "two", "bad name")
	k.writeManifest(mockManifest(`"gamma"`))
	k.fails(1, `the name "two" is taken by environment `+id[:12], "build", "--name", "two")
	id3 := strings.TrimSpace(k.ok("build", "--name", "three"))

	// Enough environments that two share a first hex digit: ambiguous.
	ids := []string{id, id3}
	for i := 0; len(ids) < 17; i++ {
		k.writeManifest(mockManifest(fmt.Sprintf(`"p%d"`, i)))
		ids = append(ids, strings.TrimSpace(k.ok("build")))
	}
	byFirst := map[byte][]string{}
	for _, x := range ids {
		byFirst[x[0]] = append(byFirst[x[0]], x)
	}
	for c, same := range byFirst {
		if len(same) > 1 {
			msg := k.fails(1, "is ambiguous", "exec", string(c), "--", "true")
			mustContain(t, "ambiguous", msg, "\n  "+same[0], "\n  "+same[1])
			break
		}
	}

	// States: frozen runs, archived does not; gc keeps archived ones.
	k.ok("freeze", "two")
	k.fails(1, "is already frozen", "freeze", "two")
	k.ok("exec", "two", "--", "true")
	k.ok("unfreeze", "two")
	k.ok("archive", "two")
	k.fails(1, "archived and cannot be entered", "exec", "two", "--", "true")
	k.fails(1, "cannot freeze an archived environment; unarchive it first", "freeze", "two")
	var gcRep gcReport
	k.jsonOut(&gcRep, "gc")
	if gcRep.EnvDirs != 0 {
		t.Fatalf("gc removed environment directories: %+v", gcRep)
	}
	k.ok("unarchive", "two")
	k.ok("exec", "two", "--", "true")

	k.ok("destroy", "three")
	if _, err := os.Stat(filepath.Join(k.store, "env", id3)); !os.IsNotExist(err) {
		t.Fatalf("destroy left the directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(k.home, ".local/share/applications", "karapace-"+id3[:12]+"-editor.desktop")); !os.IsNotExist(err) {
		t.Fatal("destroy left the launcher")
	}
	k.fails(1, "no environment", "inspect", "three")
	k.jsonOut(&gcRep, "gc")
	if gcRep.Objects == 0 || gcRep.Layers == 0 || gcRep.Bytes == 0 {
		t.Fatalf("gc after destroy freed nothing: %+v", gcRep)
	}
	k.ok("verify-store")

	// A second writer waits a little, then names the holder.
	s, err := openStore(k.store)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.lock("test-holder")
	if err != nil {
		t.Fatal(err)
	}
	k.env = append(k.env, "KARAPACE_LOCK_WAIT=200ms")
	k.fails(3, fmt.Sprintf("store is locked by pid %d (test-holder)", os.Getpid()), "destroy", "two")
	l.unlock()
	k.env = k.env[:len(k.env)-1]
	k.ok("destroy", "two")
}
