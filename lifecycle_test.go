package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
