package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A launcher runs its app in its environment whatever store the desktop
// would pick (it names its own), stays valid, and follows renames.
func TestLaunchers(t *testing.T) {
	k := newMockKP(t, "")
	id := strings.TrimSpace(k.ok("build", "--name", "one"))
	launcher := filepath.Join(k.home, ".local/share/applications", "karapace-"+id[:12]+"-editor.desktop")
	validate := func() string {
		t.Helper()
		body, err := os.ReadFile(launcher)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(needTool(t, "desktop-file-validate"), launcher).CombinedOutput(); err != nil || len(out) > 0 {
			t.Fatalf("desktop-file-validate: %v\n%s\n%s", err, out, body)
		}
		return string(body)
	}
	body := validate()
	mustContain(t, "launcher", body, "Name=editor (karapace one)\n")
	var execLine string
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, "Exec="); ok {
			execLine = v
		}
	}
	argv := strings.Fields(execLine) // no quoting: the paths here have no spaces
	if len(argv) < 6 || argv[1] != "--store" || argv[2] != k.store {
		t.Fatalf("Exec=%s", execLine)
	}
	// Run it as a desktop would: without KARAPACE_STORE.
	cmd := exec.Command(os.Args[0], argv[1:]...)
	for _, kv := range k.env {
		if !strings.HasPrefix(kv, "KARAPACE_STORE=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "mock["+id[:12]+"]: editor\n" {
		t.Fatalf("the launcher's command: %v: %s", err, out)
	}
	k.ok("rename", "one", "two")
	mustContain(t, "launcher after rename", validate(), "Name=editor (karapace two)\n")
	k.ok("destroy", "two")
	if _, err := os.Stat(launcher); !os.IsNotExist(err) {
		t.Fatalf("destroy left the launcher: %v", err)
	}
}
