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

// enter, driven through a real terminal by tmux: the shell has job
// control, the window size follows the terminal, Ctrl-C interrupts the
// shell's job and not karapace.
func TestNSTerminalSessionWithTmux(t *testing.T) {
	needTool(t, "tmux")
	r := testEnvSpec(t)
	spec, _ := jsonMarshalString(r)
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	script := filepath.Join(t.TempDir(), "enter.sh")
	os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nexport KARAPACE_TEST_HELPER=ns-exec KARAPACE_TEST_TTY=1 KARAPACE_TEST_SPEC='%s' KARAPACE_TEST_ARGV=null\n%s\necho karapace-exited-$?\nsleep 30\n", spec, os.Args[0])), 0o755)
	tmux("new-session", "-d", "-x", "100", "-y", "30", script)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()
	waitPane := func(want string) string {
		var pane string
		for i := 0; i < 150; i++ {
			pane = tmux("capture-pane", "-p")
			if strings.Contains(pane, want) {
				return pane
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("the terminal never showed %q:\n%s", want, pane)
		return ""
	}
	tmux("send-keys", "echo $((6*7)) $(tty) $0", "Enter")
	waitPane("42 /dev/pts/0 -bash") // a login shell
	tmux("send-keys", "stty size", "Enter")
	waitPane("30 100")
	tmux("resize-window", "-x", "120", "-y", "40")
	tmux("send-keys", "clear; stty size", "Enter")
	waitPane("40 120")
	// Ctrl-C reaches the foreground job, which says so once it is ready
	// to take it.
	// (Arithmetic, so that the typed line itself never matches.)
	tmux("send-keys", `sh -c 'trap "echo INT-reached-$((40+2)); exit 5" INT; echo armed-$((1+1)); while :; do sleep 0.1; done'`, "Enter")
	waitPane("armed-2")
	tmux("send-keys", "C-c")
	waitPane("INT-reached-42")
	tmux("send-keys", "echo after-interrupt-$?", "Enter")
	waitPane("after-interrupt-5")
	tmux("send-keys", "sleep 1000 &", "Enter")
	tmux("send-keys", "jobs", "Enter")
	waitPane("Running")
	// A job left running still holds the terminal: the session ends
	// with the shell all the same.
	tmux("send-keys", "kill %1; (trap '' HUP; exec sleep 1000) & exit 3", "Enter")
	waitPane("karapace-exited-3")
}
