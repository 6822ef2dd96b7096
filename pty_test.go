package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// enter, driven through a real terminal by tmux: the shell has job
// control, the window size follows the terminal, Ctrl-C interrupts the
// shell's job and not karapace.
func TestNSTerminalSessionWithTmux(t *testing.T) {
	r := testEnvSpec(t)
	spec, _ := jsonMarshalString(r)
	script := filepath.Join(t.TempDir(), "enter.sh")
	os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nexport KARAPACE_TEST_HELPER=ns-exec KARAPACE_TEST_TTY=1 KARAPACE_TEST_SPEC='%s' KARAPACE_TEST_ARGV=null\n%s\necho karapace-exited-$?\nsleep 30\n", spec, os.Args[0])), 0o755)
	term := newTmuxSession(t, script, 100, 30)
	term.keys("echo $((6*7)) $(tty) $0", "Enter")
	term.waitFor("42 /dev/pts/0 -bash") // a login shell
	term.jobControl()
	// A job left running still holds the terminal: the session ends
	// with the shell all the same.
	term.keys("kill %1; (trap '' HUP; exec sleep 1000) & exit 3", "Enter")
	term.waitFor("karapace-exited-3")
}

// jobControl checks, in a shell on a 100x30 terminal, that the size
// follows the window, Ctrl-C reaches the foreground job (which says so
// once it is ready to take it; arithmetic, so the typed line itself
// never matches) and a job runs in the background.
func (term *tmuxSession) jobControl() {
	term.t.Helper()
	term.keys("stty size", "Enter")
	term.waitFor("30 100")
	term.do("resize-window", "-x", "120", "-y", "40")
	term.keys("clear; stty size", "Enter")
	term.waitFor("40 120")
	term.keys(`sh -c 'trap "echo INT-reached-$((40+2)); exit 5" INT; echo armed-$((1+1)); while :; do sleep 0.1; done'`, "Enter")
	term.waitFor("armed-2")
	term.keys("C-c")
	term.waitFor("INT-reached-42")
	term.keys("echo after-interrupt-$?", "Enter")
	term.waitFor("after-interrupt-5")
	term.keys("sleep 1000 &", "Enter")
	term.keys("jobs", "Enter")
	term.waitFor("Running")
}
