package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A status line shows the latest line of output, printable and cut to
// the terminal's width, and is cleared at the end.
func TestProgressStatusLine(t *testing.T) {
	master, slave := openPTY(t)
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 60}); err != nil {
		t.Fatal(err)
	}
	p := &progress{out: slave, label: "apt", counted: "line"}
	io.WriteString(p, "Reading package lists...\nSetting up git (1:2.39.5) \x1b[31mred\x1b[0m\n")
	p.last = p.last.AddDate(-1, 0, 0) // draw the next line too
	io.WriteString(p, "Progress: [ 10%]\r")
	p.last = p.last.AddDate(-1, 0, 0)
	io.WriteString(p, "a very long line of package manager output that does not fit\npartial")
	p.finish()
	slave.Close()
	var seen bytes.Buffer
	io.Copy(&seen, master)
	got := seen.String()
	mustContain(t, "terminal", got, "\r\x1b[Kapt: Setting up git (1:2.39.5)  [31mred [0m", "\r\x1b[Kapt: Progress: [ 10%]",
		"\r\x1b[Kapt: a very long line of package manager output that does n\r\x1b[K")
	if strings.Contains(got, "Reading") || strings.Contains(got, "partial") || strings.Contains(got, "\x1b[31m") {
		t.Fatalf("terminal: %q", got)
	}
	// Quiet when not on a terminal.
	q := &progress{label: "apt", counted: "line"}
	if n, err := io.WriteString(q, "output\n"); n != 7 || err != nil || q.line != "" {
		t.Fatalf("quiet status: %d %v %q", n, err, q.line)
	}
}
