package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/sys/unix"
)

// progress shows how a long operation advances: on a terminal one
// updating line, elsewhere a line when it starts and one every
// progressEvery while it runs (so that a log does not look hung), and to
// a front end, events.
type progress struct {
	mu      sync.Mutex
	o       *output // nil: quiet
	label   string
	total   int64 // 0: unknown
	done    int64
	start   time.Time
	last    time.Time
	drawn   bool
	counted string // unit: "bytes", "" for items, "line" for a status line
	line    string // a status line's latest line of output
	partial []byte // a status line's output since its last line ended
	ticker  *time.Timer
	ended   bool
}

// progressEvery is how often a log hears of a long operation.
const progressEvery = 30 * time.Second

// progress starts reporting an operation of total units (bytes or items).
func (o *output) progress(label string, total int64, bytes bool) *progress {
	p := &progress{o: o, label: label, total: total, start: time.Now()}
	if bytes {
		p.counted = "bytes"
	}
	if o == nil {
		return p
	}
	if o.term == nil && o.w != nil {
		o.logf(levelError, "", "%s", label)
		p.ticker = time.AfterFunc(progressEvery, p.tick)
	}
	p.event(false)
	return p
}

// status starts a status line that shows, after the label, the latest
// line of the output written to it: a long command's sign of life.
func (o *output) status(label string) *progress {
	p := o.progress(label, 0, false)
	p.counted = "line"
	return p
}

// tick logs where a long operation is, and comes again.
func (p *progress) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.o.logf(levelError, "", "%s (%s)", p.text(), time.Since(p.start).Round(time.Second))
	p.ticker.Reset(progressEvery)
}

// event tells a front end where the operation is.
func (p *progress) event(finished bool) {
	if p.o != nil && p.o.events != nil {
		p.o.events(progressEvent{Label: p.label, Done: p.done, Total: p.total, Bytes: p.counted == "bytes", Line: p.line, Finished: finished})
	}
}

// add counts n more units.
func (p *progress) add(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	p.redraw()
}

// redraw draws, and tells a front end, at most ten times a second.
func (p *progress) redraw() {
	if p.o == nil || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.event(false)
	if p.o.term != nil {
		p.draw()
	}
}

// text is where the operation is, in words.
func (p *progress) text() string {
	switch {
	case p.counted == "line":
		if p.line != "" {
			return p.label + ": " + p.line
		}
		return p.label
	case p.counted == "bytes":
		rate := float64(p.done) / max(time.Since(p.start).Seconds(), 0.001)
		if p.total > 0 {
			return fmt.Sprintf("%s  %s / %s  %3.0f%%  %s/s", p.label, humanBytes(p.done), humanBytes(p.total), 100*float64(p.done)/float64(p.total), humanBytes(int64(rate)))
		}
		return fmt.Sprintf("%s  %s  %s/s", p.label, humanBytes(p.done), humanBytes(int64(rate)))
	case p.total > 0:
		return fmt.Sprintf("%s  %d / %d", p.label, p.done, p.total)
	}
	return fmt.Sprintf("%s  %d", p.label, p.done)
}

func (p *progress) draw() {
	s := p.text()
	// One line: a longer one would wrap, and \r would not go back far
	// enough to clear it.
	width := 80
	if ws, err := unix.IoctlGetWinsize(int(p.o.term.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
		width = int(ws.Col)
	}
	if r := []rune(s); len(r) >= width {
		s = string(r[:width-1])
	}
	fmt.Fprintf(p.o.term, "\r\x1b[K%s", s)
	p.drawn = true
}

// Write takes output for a status line; lines end at \n or \r.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.o == nil {
		return len(b), nil
	}
	p.partial = append(p.partial, b...)
	end := bytes.LastIndexAny(p.partial, "\r\n")
	if end < 0 {
		if len(p.partial) > 4096 { // a line that never ends is not shown
			p.partial = p.partial[:0]
		}
		return len(b), nil
	}
	lines := bytes.TrimRight(p.partial[:end], "\r\n")
	if len(lines) > 0 {
		last := lines[bytes.LastIndexAny(lines, "\r\n")+1:]
		// Only printable text: the output's own escape sequences must
		// not reach the terminal.
		p.line = strings.TrimSpace(strings.Map(func(r rune) rune {
			if unicode.IsPrint(r) {
				return r
			}
			return ' '
		}, string(last)))
		p.redraw()
	}
	p.partial = append(p.partial[:0], p.partial[end+1:]...)
	return len(b), nil
}

// finish clears the line and ends the reports.
func (p *progress) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.ended = true
	if p.ticker != nil {
		p.ticker.Stop()
	}
	p.event(true)
	if p.o != nil && p.o.term != nil && p.drawn {
		fmt.Fprint(p.o.term, "\r\x1b[K")
		p.drawn = false
	}
}

// reader counts what is read through it.
func (p *progress) reader(r io.Reader) io.Reader { return &progressReader{r, p} }

type progressReader struct {
	r io.Reader
	p *progress
}

func (pr *progressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	pr.p.add(int64(n))
	return n, err
}

// humanBytes prints a size in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
