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

var logState struct {
	sync.Mutex
	level int
	out   io.Writer
}

func setLogLevel(env string, verbose, trace bool, out io.Writer) {
	logState.Lock()
	defer logState.Unlock()
	logState.out = out
	logState.level = levelWarn
	switch strings.ToLower(strings.TrimSpace(env)) {
	case "error":
		logState.level = levelError
	case "info":
		logState.level = levelInfo
	case "debug":
		logState.level = levelDebug
	case "trace":
		logState.level = levelTrace
	}
	if verbose {
		logState.level = max(logState.level, levelDebug)
	}
	if trace {
		logState.level = levelTrace
	}
}

// logLevelName is the KARAPACE_LOG spelling of the current level, passed
// on to stages so a child logs like its parent.
func logLevelName() string {
	logState.Lock()
	defer logState.Unlock()
	return [...]string{"error", "warn", "info", "debug", "trace"}[logState.level]
}

func logAt(level int, prefix, format string, a ...any) {
	logState.Lock()
	defer logState.Unlock()
	if level > logState.level || logState.out == nil {
		return
	}
	fmt.Fprintf(logState.out, "karapace: %s"+format+"\n", append([]any{prefix}, a...)...)
}

func warnf(format string, a ...any)  { logAt(levelWarn, "warning: ", format, a...) }
func infof(format string, a ...any)  { logAt(levelInfo, "", format, a...) }
func debugf(format string, a ...any) { logAt(levelDebug, "debug: ", format, a...) }
func tracef(format string, a ...any) { logAt(levelTrace, "trace: ", format, a...) }
