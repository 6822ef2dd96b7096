package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	if f == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// useColor: colour only on a terminal, never with NO_COLOR or TERM=dumb.
func (c *cli) useColor() bool {
	f, ok := c.stdout.(*os.File)
	return ok && isTerminal(f) && c.getenv("NO_COLOR") == "" && c.getenv("TERM") != "dumb"
}

// writeJSON writes v as one indented JSON document with a final newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// writeTable writes rows in aligned columns; headers may be nil.
func writeTable(w io.Writer, headers []string, rows [][]string) {
	all := rows
	if headers != nil {
		all = append([][]string{headers}, rows...)
	}
	var widths []int
	for _, r := range all {
		for i, cell := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	var b strings.Builder
	for _, r := range all {
		b.Reset()
		for i, cell := range r {
			b.WriteString(cell)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell)+2))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " ")) // an empty last cell pads nothing
	}
}

// Log levels, from KARAPACE_LOG or -v/--trace.
const (
	levelError = iota
	levelWarn
	levelInfo
	levelDebug
	levelTrace
)

var levelNames = [...]string{"error", "warn", "info", "debug", "trace"}

// output is where karapace reports what it does: messages at a level, and
// the progress of long operations. The command line's goes to stderr,
// progress drawn as one updating line on a terminal and as a line per
// phase elsewhere; a front end (the D-Bus service, the terminal UI) takes
// the same as events. A nil output reports nothing.
type output struct {
	mu     sync.Mutex
	level  int
	w      io.Writer           // messages; nil: none
	term   *os.File            // progress lines are drawn here; nil: they are logged
	events func(progressEvent) // a front end's progress; nil: none
}

// progressEvent is one step of a long operation, for a front end.
type progressEvent struct {
	Label       string // what is being done: "downloading 96 packages"
	Done, Total int64  // so far, of (0: unknown)
	Bytes       bool   // Done and Total count bytes, not items
	Line        string // a status line's latest line of output
	Finished    bool
}

// newOutput reports at the level KARAPACE_LOG, -v or --trace ask for,
// on w; progress is drawn when w is a terminal.
func newOutput(env string, verbose, trace bool, w io.Writer) *output {
	o := &output{w: w, level: levelWarn}
	for i, n := range levelNames {
		if strings.EqualFold(strings.TrimSpace(env), n) {
			o.level = i
		}
	}
	if verbose {
		o.level = max(o.level, levelDebug)
	}
	if trace {
		o.level = levelTrace
	}
	if f, ok := w.(*os.File); ok && isTerminal(f) && os.Getenv("KARAPACE_NO_PROGRESS") == "" {
		o.term = f
	}
	return o
}

// withEvents is o for one operation whose progress goes, as events, to f
// (and is not drawn): a front end's view of it.
func (o *output) withEvents(f func(progressEvent)) *output {
	n := &output{level: levelWarn, events: f}
	if o != nil {
		n.level, n.w = o.level, o.w
	}
	return n
}

// levelName is the KARAPACE_LOG spelling of the level, passed on to
// stages so a child logs like its parent.
func (o *output) levelName() string {
	if o == nil {
		return "warn"
	}
	return levelNames[o.level]
}

func (o *output) logf(level int, prefix, format string, a ...any) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if level > o.level || o.w == nil {
		return
	}
	fmt.Fprintf(o.w, "karapace: %s"+format+"\n", append([]any{prefix}, a...)...)
}

func (o *output) warnf(format string, a ...any)  { o.logf(levelWarn, "warning: ", format, a...) }
func (o *output) infof(format string, a ...any)  { o.logf(levelInfo, "", format, a...) }
func (o *output) debugf(format string, a ...any) { o.logf(levelDebug, "debug: ", format, a...) }
func (o *output) tracef(format string, a ...any) { o.logf(levelTrace, "trace: ", format, a...) }

// notef says what a long operation is doing: at info level, and on a
// terminal, where someone is waiting.
func (o *output) notef(format string, a ...any) {
	if o != nil && o.term != nil {
		o.logf(levelError, "", format, a...)
		return
	}
	o.infof(format, a...)
}
