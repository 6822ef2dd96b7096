package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// The terminal as the UI uses it: raw mode on the alternate screen, the
// keys decoded from the bytes the terminal sends, and a screen of cells
// that goes out as the difference from the frame before it.

// key is one key press: a printable character as itself, or the name of
// another key the UI uses (always longer than one character). Other keys
// are dropped.
type key string

const (
	keyUp        key = "up"
	keyDown      key = "down"
	keyHome      key = "home"
	keyEnd       key = "end"
	keyPgUp      key = "pgup"
	keyPgDn      key = "pgdn"
	keyEnter     key = "enter"
	keyEsc       key = "esc"
	keyBackspace key = "backspace"
	keyCtrlC     key = "ctrl-c"
	keyCtrlL     key = "ctrl-l"
	keyCtrlU     key = "ctrl-u"
	keyHangup    key = "hangup" // the terminal is gone
)

// maxEscape bounds an escape sequence; anything longer is noise.
const maxEscape = 32

// decodeKeys turns terminal input into keys. What ends the input
// incomplete (part of an escape sequence or of a UTF-8 character) comes
// back as rest, to be completed by the next read; final says no more is
// coming, so a lone ESC is the Escape key and a broken sequence is
// dropped.
func decodeKeys(b []byte, final bool) (keys []key, rest []byte) {
	for len(b) > 0 {
		c := b[0]
		switch {
		case c == 0x1b:
			if len(b) == 1 {
				if !final {
					return keys, b
				}
				keys = append(keys, keyEsc)
				b = b[1:]
				continue
			}
			k, n, ok := decodeEscape(b)
			if !ok {
				if !final && len(b) < maxEscape {
					return keys, b
				}
				n = len(b) // unfinished and nothing more comes: noise
			}
			if k != "" {
				keys = append(keys, k)
			}
			b = b[n:]
		case c == '\r' || c == '\n':
			keys = append(keys, keyEnter)
			b = b[1:]
		case c == 0x7f || c == 0x08:
			keys = append(keys, keyBackspace)
			b = b[1:]
		case c < 0x20:
			switch c {
			case 0x03:
				keys = append(keys, keyCtrlC)
			case 0x0c:
				keys = append(keys, keyCtrlL)
			case 0x15:
				keys = append(keys, keyCtrlU)
			}
			b = b[1:]
		default:
			if !utf8.FullRune(b) {
				if !final {
					return keys, b
				}
				return keys, nil
			}
			r, n := utf8.DecodeRune(b)
			if r != utf8.RuneError && unicode.IsPrint(r) {
				keys = append(keys, key(string(r)))
			}
			b = b[n:]
		}
	}
	return keys, nil
}

// decodeEscape reads the escape sequence at the start of b (which begins
// with ESC and has more): the key it means ("" for one the UI does not
// use), its length, and false while it is incomplete.
func decodeEscape(b []byte) (key, int, bool) {
	switch b[1] {
	case '[': // CSI: parameters and intermediates, then a final byte
		for i := 2; i < len(b) && i < maxEscape; i++ {
			c := b[i]
			if c >= 0x40 && c <= 0x7e {
				return csiKey(string(b[2:i]), c), i + 1, true
			}
			if c < 0x20 || c > 0x3f {
				return "", i, true // not a sequence after all: drop what was
			}
		}
		return "", 0, false
	case 'O': // SS3: the cursor keys in application mode
		if len(b) < 3 {
			return "", 0, false
		}
		return csiKey("", b[2]), 3, true
	}
	// ESC then a key (Alt+key): the Escape key, and the key after it on
	// its own.
	return keyEsc, 1, true
}

func csiKey(params string, final byte) key {
	switch final {
	case 'A':
		return keyUp
	case 'B':
		return keyDown
	case 'H':
		return keyHome
	case 'F':
		return keyEnd
	case '~':
		n, _, _ := strings.Cut(params, ";") // a modifier may follow
		switch n {
		case "1", "7":
			return keyHome
		case "4", "8":
			return keyEnd
		case "5":
			return keyPgUp
		case "6":
			return keyPgDn
		}
	}
	return ""
}

// escTimeout is how long a lone ESC waits for the rest of a sequence
// before it is the Escape key.
const escTimeout = 25 // milliseconds

// tty is the terminal while the UI owns it.
type tty struct {
	in, out *os.File
	keys    chan key
	crashed func() // after the terminal is given back on a panic of the reading goroutine

	mu      sync.Mutex
	restore func() // the terminal's own mode; nil while the UI is off it
	input   *ttyInput
}

// ttyInput is one run of the goroutine reading keys.
type ttyInput struct {
	stop chan struct{}
	wake *os.File // written to end the wait for input
	done chan struct{}
}

// Sequences that take the terminal and give it back: the alternate
// screen, the cursor hidden, no automatic wrap (the last column of the
// last line is written like any other).
const (
	ttyTake    = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[0m\x1b[H\x1b[2J"
	ttyRelease = "\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l"
)

// openTTY takes the terminal: in must be one (out is where the screen
// is written, usually the same terminal). Should the goroutine reading
// keys panic, it gives the terminal back and calls crashed.
func openTTY(in, out *os.File, crashed func()) (*tty, error) {
	if !isTerminal(in) || !isTerminal(out) {
		return nil, errors.New("not a terminal")
	}
	t := &tty{in: in, out: out, keys: make(chan key, 64), crashed: crashed}
	return t, t.take()
}

// take puts the terminal in raw mode on the alternate screen and starts
// reading keys.
func (t *tty) take() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.restore != nil {
		return nil
	}
	t.restore = makeRaw(t.in)
	if _, err := t.out.WriteString(ttyTake); err != nil {
		t.releaseLocked()
		return err
	}
	in, err := t.startInput()
	if err != nil {
		t.releaseLocked()
		return err
	}
	t.input = in
	return nil
}

// suspend gives the terminal back as it was, for a program that runs on
// it (take resumes): no key is read meanwhile.
func (t *tty) suspend() {
	t.mu.Lock()
	in := t.input
	t.input = nil
	t.mu.Unlock()
	if in != nil {
		in.end()
	}
	t.release()
}

// release gives the terminal back at once, whatever else runs: the exit
// path of signals and panics. The reading goroutine, if any, is told to
// end but not waited for.
func (t *tty) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.releaseLocked()
}

func (t *tty) releaseLocked() {
	if t.input != nil {
		close(t.input.stop)
		t.input.wake.Write([]byte{0})
		t.input = nil
	}
	if t.restore != nil {
		t.out.WriteString(ttyRelease)
		t.restore()
		t.restore = nil
	}
}

// size is the terminal's size in cells.
func (t *tty) size() (int, int) {
	ws, err := unix.IoctlGetWinsize(int(t.out.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return 80, 24
	}
	return int(ws.Col), int(ws.Row)
}

func (t *tty) write(b []byte) error {
	_, err := t.out.Write(b)
	return err
}

// startInput reads keys into t.keys until ended. It waits with poll on
// the terminal and a pipe of its own, so that it can be stopped before a
// program that gets the terminal reads from it, having read nothing
// meant for that program.
func (t *tty) startInput() (*ttyInput, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	in := &ttyInput{stop: make(chan struct{}), wake: w, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		defer r.Close()
		defer func() {
			if p := recover(); p != nil {
				t.release()
				t.crashed()
				panic(p)
			}
		}()
		t.readKeys(in, r)
	}()
	return in, nil
}

func (t *tty) readKeys(in *ttyInput, wake *os.File) {
	send := func(keys []key) bool {
		for _, k := range keys {
			select {
			case t.keys <- k:
			case <-in.stop:
				return false
			}
		}
		return true
	}
	fds := []unix.PollFd{{Fd: int32(t.in.Fd()), Events: unix.POLLIN}, {Fd: int32(wake.Fd()), Events: unix.POLLIN}}
	buf := make([]byte, 4096)
	var pending []byte
	for {
		timeout := -1
		if len(pending) > 0 {
			timeout = escTimeout
		}
		n, err := unix.Poll(fds, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || fds[1].Revents != 0 {
			return
		}
		if n == 0 { // a pause: what is pending is complete as it is
			keys, _ := decodeKeys(pending, true)
			pending = nil
			if !send(keys) {
				return
			}
			continue
		}
		m, err := unix.Read(int(t.in.Fd()), buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if m <= 0 || err != nil {
			send([]key{keyHangup})
			return
		}
		var keys []key
		keys, pending = decodeKeys(append(pending, buf[:m]...), false)
		if !send(keys) {
			return
		}
	}
}

// end stops the reading goroutine and waits until it has.
func (in *ttyInput) end() {
	close(in.stop)
	in.wake.Write([]byte{0})
	<-in.done
	in.wake.Close()
}

// style is how a cell is drawn: attributes, and a foreground colour
// (drawn only where colour is allowed).
type style uint16

const (
	stBold style = 1 << iota
	stDim
	stReverse
	stUnderline
)

// Colours, as ANSI numbers + 1 in bits 8 to 11 (0: the default colour).
const (
	colRed style = (iota + 2) << 8
	colGreen
	colYellow
	colBlue
	colMagenta
	colCyan
	colorMask style = 0xf << 8
)

// sgr is the escape sequence that sets st, from a reset.
func (st style) sgr(color bool) string {
	s := "\x1b[0"
	for i, code := range []string{"1", "2", "7", "4"} {
		if st&(1<<i) != 0 {
			s += ";" + code
		}
	}
	if c := int(st&colorMask) >> 8; color && c > 0 {
		s += ";3" + strconv.Itoa(c-1)
	}
	return s + "m"
}

// cell is one character cell; r 0 is the right half of a wide
// character in the cell before it.
type cell struct {
	r  rune
	st style
}

// screen is a frame: w×h cells.
type screen struct {
	w, h  int
	cells []cell
}

func newScreen(w, h int) *screen {
	s := &screen{w: w, h: h, cells: make([]cell, w*h)}
	s.clear()
	return s
}

// clear blanks every cell.
func (s *screen) clear() {
	for i := range s.cells {
		s.cells[i] = cell{r: ' '}
	}
}

// runeWidth is how many cells r takes: 2 for the wide characters of East
// Asian scripts and emoji, else 1.
func runeWidth(r rune) int {
	switch {
	case r >= 0x1100 && r <= 0x115f, r >= 0x2e80 && r <= 0xa4cf && r != 0x303f, r >= 0xac00 && r <= 0xd7a3,
		r >= 0xf900 && r <= 0xfaff, r >= 0xfe30 && r <= 0xfe4f, r >= 0xff00 && r <= 0xff60, r >= 0xffe0 && r <= 0xffe6,
		r >= 0x1f300 && r <= 0x1f64f, r >= 0x1f900 && r <= 0x1f9ff, r >= 0x20000 && r <= 0x3fffd:
		return 2
	}
	return 1
}

// textWidth is how many cells s takes.
func textWidth(s string) int {
	n := 0
	for _, r := range s {
		n += runeWidth(r)
	}
	return n
}

// put writes s from column x of line y in style st, cut at the right
// edge, and returns the column after it. What cannot be shown (control
// characters, from a name or a message) shows as '?'.
func (s *screen) put(x, y int, text string, st style) int {
	if y < 0 || y >= s.h {
		return x
	}
	for _, r := range text {
		if !unicode.IsPrint(r) {
			r = '?'
		}
		w := runeWidth(r)
		if x+w > s.w {
			break
		}
		if x >= 0 {
			s.set(x, y, cell{r, st})
			if w == 2 {
				s.set(x+1, y, cell{0, st})
			}
		}
		x += w
	}
	return x
}

// set puts c in a cell; a wide character it cuts in two leaves a space
// in its other half.
func (s *screen) set(x, y int, c cell) {
	row := s.cells[y*s.w : (y+1)*s.w]
	if row[x].r == 0 && c.r != 0 && x > 0 {
		row[x-1].r = ' '
	}
	if runeWidth(row[x].r) == 2 && x+1 < s.w && (c.r == 0 || runeWidth(c.r) == 1) {
		row[x+1].r = ' '
	}
	row[x] = c
}

// putField writes text in a field of width cells: cut with a '~' when
// longer, padded with spaces in st when shorter; right aligns it.
func (s *screen) putField(x, y, width int, text string, st style, right bool) {
	if width <= 0 || y < 0 || y >= s.h {
		return
	}
	w := textWidth(text)
	if w > width {
		text = cutText(text, width-1) + "~"
		w = textWidth(text)
	}
	start := x
	if right {
		s.blank(x, y, width-w, st)
		start += width - w
	}
	end := s.put(start, y, text, st)
	s.blank(end, y, x+width-end, st)
}

// blank writes n spaces in style st.
func (s *screen) blank(x, y, n int, st style) {
	for end := min(x+n, s.w); x < end; x++ {
		if x >= 0 {
			s.set(x, y, cell{' ', st})
		}
	}
}

// cutText is the longest beginning of s that fits in width cells.
func cutText(s string, width int) string {
	n := 0
	for i, r := range s {
		if n += runeWidth(r); n > width {
			return s[:i]
		}
	}
	return s
}

// fillLine gives line y style st, keeping its characters.
func (s *screen) fillLine(y int, st style) {
	for x := 0; x < s.w; x++ {
		s.cells[y*s.w+x].st = st
	}
}

// diff is what turns the terminal showing prev (nil: unknown) into s:
// only the cells that changed, in runs, each with the cursor moved to it
// and its styles set; colour only if color.
func (s *screen) diff(prev *screen, color bool) []byte {
	var b bytes.Buffer
	full := prev == nil || prev.w != s.w || prev.h != s.h
	if full {
		b.Grow(len(s.cells) * 2)
	}
	if full {
		b.WriteString("\x1b[0m\x1b[H\x1b[2J")
	}
	blank := cell{r: ' '}
	changed := func(i int) bool {
		if full {
			return s.cells[i] != blank
		}
		return s.cells[i] != prev.cells[i]
	}
	cur := style(0)
	curX, curY := -1, -1
	for y := 0; y < s.h; y++ {
		row := y * s.w
		for x := 0; x < s.w; x++ {
			if !changed(row + x) {
				continue
			}
			if s.cells[row+x].r == 0 && x > 0 {
				x-- // the right half of a wide character: from its left
			}
			// A run goes on over unchanged cells when fewer than four of
			// them lead to the next change: cheaper than moving there.
			end := x + 1
			for i := end; i < s.w && i < end+4; i++ {
				if changed(row + i) {
					end = i + 1
				}
			}
			if x != curX || y != curY {
				b.WriteString("\x1b[" + strconv.Itoa(y+1) + ";" + strconv.Itoa(x+1) + "H")
			}
			for x < end {
				c := s.cells[row+x]
				if c.r == 0 {
					x++
					continue
				}
				st := c.st
				if !color {
					st &^= colorMask
				}
				if st != cur {
					b.WriteString(st.sgr(color))
					cur = st
				}
				b.WriteRune(c.r)
				x += runeWidth(c.r)
			}
			curX, curY = x, y
			x-- // the loop's own step
		}
	}
	if cur != 0 {
		b.WriteString("\x1b[0m")
	}
	return b.Bytes()
}

// stderrCapture points fd 2 at a pseudo-terminal of its own while the UI
// owns the screen. Whatever would write to the screen there (the
// logger's warnings, progress lines, drawn as on any terminal, the
// messages of helper processes) comes out as lines for the status line.
type stderrCapture struct {
	saved  int // the real stderr
	slave  int
	master *os.File
	lines  chan string

	mu sync.Mutex
	on bool
}

func captureStderr() (*stderrCapture, error) {
	m, sl, err := openPTYInside(1, 80)
	if err != nil {
		return nil, err
	}
	saved, err := unix.FcntlInt(2, unix.F_DUPFD_CLOEXEC, 3)
	if err == nil {
		// Non-blocking, the master is pollable: close ends a read.
		err = unix.SetNonblock(m, true)
	}
	if err != nil {
		unix.Close(m)
		unix.Close(sl)
		return nil, fmt.Errorf("redirecting stderr: %w", err)
	}
	c := &stderrCapture{saved: saved, slave: sl, master: os.NewFile(uintptr(m), "stderr"), lines: make(chan string, 16)}
	go c.read()
	return c, c.resume()
}

// resume sends stderr to the capture again.
func (c *stderrCapture) resume() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on {
		return nil
	}
	if err := unix.Dup3(c.slave, 2, 0); err != nil {
		return fmt.Errorf("redirecting stderr: %w", err)
	}
	c.on = true
	return nil
}

// pause gives stderr back.
func (c *stderrCapture) pause() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on {
		unix.Dup3(c.saved, 2, 0)
		c.on = false
	}
}

// close gives stderr back for good.
func (c *stderrCapture) close() {
	c.pause()
	unix.Close(c.slave)
	c.master.Close()
	unix.Close(c.saved)
}

// setWidth is the width progress lines fit in.
func (c *stderrCapture) setWidth(w int) {
	unix.IoctlSetWinsize(int(c.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 1, Col: uint16(w)})
}

// read passes on, of each read, the latest line with something in it;
// a line ends at \n or \r, where progress lines redraw.
func (c *stderrCapture) read() {
	buf := make([]byte, 4096)
	var partial []byte
	var sent string
	for {
		n, err := c.master.Read(buf)
		if n > 0 {
			partial = append(partial, buf[:n]...)
			latest := ""
			for {
				i := bytes.IndexAny(partial, "\r\n")
				if i < 0 {
					break
				}
				if l := cleanLine(partial[:i]); l != "" {
					latest = l
				}
				partial = partial[i+1:]
			}
			if l := cleanLine(partial); l != "" {
				latest = l
			}
			if len(partial) > 4096 { // a line that never ends
				partial = nil
			}
			partial = append([]byte(nil), partial...)
			// A line is sent while it is written (a progress line ends
			// only when the next one starts), and not again when it ends.
			if latest != "" && latest != sent {
				select {
				case c.lines <- latest:
					sent = latest
				default: // the status line shows one at a time anyway
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// cleanLine is a line of output as the status line shows it: without
// escape sequences or control characters, and without our own prefix.
func cleanLine(b []byte) string {
	var out strings.Builder
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == 0x1b:
			if i+1 < len(b) && b[i+1] == '[' {
				for i += 2; i < len(b) && (b[i] < 0x40 || b[i] > 0x7e); i++ {
				}
			} else {
				i++
			}
		case c < 0x20 || c == 0x7f:
			out.WriteByte(' ')
		default:
			out.WriteByte(c)
		}
	}
	return strings.TrimPrefix(strings.TrimSpace(strings.ToValidUTF8(out.String(), "?")), "karapace: ")
}
