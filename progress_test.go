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
	p := &progress{o: &output{term: slave}, label: "apt", counted: "line"}
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
	// Quiet with no output.
	q := (*output)(nil).status("apt")
	if n, err := io.WriteString(q, "output\n"); n != 7 || err != nil || q.line != "" {
		t.Fatalf("quiet status: %d %v %q", n, err, q.line)
	}
}

// Not on a terminal (a CI log), a long operation says when it starts and,
// every progressEvery, where it is, whatever the level: a log that stops
// for minutes looks hung.
func TestProgressLogged(t *testing.T) {
	var b bytes.Buffer
	o := newOutput("error", false, false, &b)
	p := o.progress("downloading 96 packages", 1000, true)
	p.add(250)
	p.tick()
	p.finish()
	p.tick() // a tick that was on its way when the operation ended says nothing
	got := b.String()
	if !strings.HasPrefix(got, "karapace: downloading 96 packages\nkarapace: downloading 96 packages  250 B / 1000 B   25%") || strings.Count(got, "\n") != 2 {
		t.Fatalf("logged:\n%s", got)
	}
}

// A front end gets every step of an operation as events, the last one
// marked finished.
func TestProgressEvents(t *testing.T) {
	var evs []progressEvent
	o := &output{events: func(e progressEvent) { evs = append(evs, e) }}
	p := o.progress("unpacking", 3, false)
	p.add(1)
	p.last = p.last.AddDate(-1, 0, 0)
	p.add(1)
	p.finish()
	if len(evs) < 3 || evs[0].Label != "unpacking" || evs[0].Total != 3 || evs[len(evs)-2].Done != 2 || !evs[len(evs)-1].Finished || evs[len(evs)-2].Finished {
		t.Fatalf("events: %+v", evs)
	}
}
