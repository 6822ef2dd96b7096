package main

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

func TestDecodeKeys(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []key
	}{
		{"jk/G", []key{"j", "k", "/", "G"}},
		{"\x1b[A\x1b[B\x1b[C\x1b[D", []key{keyUp, keyDown}},                  // left and right: not used
		{"\x1bOA\x1bOB\x1bOH\x1bOF", []key{keyUp, keyDown, keyHome, keyEnd}}, // application cursor mode
		{"\x1b[H\x1b[F\x1b[1~\x1b[4~\x1b[7~\x1b[8~", []key{keyHome, keyEnd, keyHome, keyEnd, keyHome, keyEnd}},
		{"\x1b[5~\x1b[6~\x1b[3~", []key{keyPgUp, keyPgDn}},
		{"\x1b[1;5A\x1b[5;2~", []key{keyUp, keyPgUp}}, // with modifiers
		{"\r\n\x7f\x08\t", []key{keyEnter, keyEnter, keyBackspace, keyBackspace}},
		{"\x03\x0c\x15", []key{keyCtrlC, keyCtrlL, keyCtrlU}},
		{"\x01\x02x", []key{"x"}},                      // other control keys mean nothing here
		{"é✓日", []key{"é", "✓", "日"}},                  // UTF-8
		{"\x1bj", []key{keyEsc, "j"}},                  // Alt+j
		{"\x1b[2~x", []key{"x"}},                       // Insert: not used
		{"\x1b[12;\x01x", []key{"x"}},                  // a broken sequence is dropped
		{"\x1b[?25l\x1b[200~", nil},                    // sequences of no key
		{"a\xffb", []key{"a", "b"}},                    // invalid UTF-8
		{"\x1b", []key{keyEsc}},                        // alone, with nothing after: Escape
		{strings.Repeat("\x1b[", 20), nil},             // noise
		{"\x1b[" + strings.Repeat("1", 40) + "A", nil}, // too long to be a key
	} {
		got, rest := decodeKeys([]byte(c.in), true)
		if !reflect.DeepEqual(got, c.want) || rest != nil {
			t.Errorf("decodeKeys(%q) = %q, rest %q; want %q", c.in, got, rest, c.want)
		}
	}
}

// A sequence or a character split between two reads is kept until its
// end comes; a lone ESC waits for what may follow.
func TestDecodeKeysSplit(t *testing.T) {
	for _, in := range []string{"\x1b[A", "\x1b[5~", "\x1bOH", "日", "\x1b[1;5B"} {
		for i := 1; i < len(in); i++ {
			keys, rest := decodeKeys([]byte(in[:i]), false)
			if len(keys) != 0 || string(rest) != in[:i] {
				t.Fatalf("%q cut at %d: keys %q rest %q", in, i, keys, rest)
			}
			keys, rest = decodeKeys(append(rest, in[i:]...), false)
			want, _ := decodeKeys([]byte(in), true)
			if !reflect.DeepEqual(keys, want) || len(rest) != 0 {
				t.Fatalf("%q cut at %d: then %q rest %q, want %q", in, i, keys, rest, want)
			}
		}
	}
	keys, rest := decodeKeys([]byte("j\x1b"), false)
	if !reflect.DeepEqual(keys, []key{"j"}) || string(rest) != "\x1b" {
		t.Fatalf("j ESC: %q %q", keys, rest)
	}
}

func TestScreenPut(t *testing.T) {
	s := newScreen(10, 2)
	if x := s.put(0, 0, "abc", stBold); x != 3 {
		t.Fatalf("put returned %d", x)
	}
	s.put(8, 0, "xyz", 0) // cut at the edge
	s.put(0, 1, "日本語", 0) // wide: two cells each
	s.put(7, 1, "\x1b\n界", 0)
	s.put(0, 5, "off the screen", 0)
	if got, want := s.text(), "abc     xy\n日本語 ??\n"; got != want {
		t.Fatalf("text %q, want %q", got, want)
	}
	if s.cells[1*10+1].r != 0 || s.cells[1*10+6].r != ' ' {
		t.Fatalf("the right half of a wide character: %+v", s.cells[10:20])
	}
	f := newScreen(12, 1)
	f.putField(0, 0, 5, "abcdefgh", stReverse, false)
	f.putField(6, 0, 6, "42", stReverse, true)
	if got := f.text(); got != "abcd~     42\n" {
		t.Fatalf("fields %q", got)
	}
	if f.cells[9].st != stReverse || f.cells[5].st != 0 {
		t.Fatal("a field's padding has the field's style, between fields nothing")
	}
	if got := cutText("日本語", 3); got != "日" {
		t.Fatalf("cutText %q", got)
	}
}

// vt is a terminal of the few sequences diff writes: what the terminal
// shows after a frame's output.
type vt struct {
	w, h   int
	cells  []cell
	x, y   int
	st     style
	writes int // cursor moves
}

func newVT(w, h int) *vt {
	v := &vt{w: w, h: h}
	v.clear()
	return v
}

func (v *vt) clear() {
	v.cells = newScreen(v.w, v.h).cells
}

func (v *vt) apply(t *testing.T, out []byte) {
	t.Helper()
	for len(out) > 0 {
		if out[0] == 0x1b {
			end := bytes.IndexFunc(out[2:], func(r rune) bool { return r >= 0x40 && r <= 0x7e }) + 2
			params, final := string(out[2:end]), out[end]
			out = out[end+1:]
			switch final {
			case 'H':
				v.writes++
				v.y, v.x = 0, 0
				if params != "" {
					r, c, _ := strings.Cut(params, ";")
					y, _ := strconv.Atoi(r)
					x, _ := strconv.Atoi(c)
					v.y, v.x = y-1, x-1
				}
			case 'J':
				v.clear()
			case 'm':
				v.st = 0
				for _, p := range strings.Split(params, ";") {
					switch p {
					case "1":
						v.st |= stBold
					case "2":
						v.st |= stDim
					case "7":
						v.st |= stReverse
					case "4":
						v.st |= stUnderline
					case "0":
					default:
						n, _ := strconv.Atoi(p)
						v.st |= style(n-30+1) << 8
					}
				}
			default:
				t.Fatalf("unexpected sequence %q", final)
			}
			continue
		}
		r, n := utf8.DecodeRune(out)
		out = out[n:]
		if v.x >= v.w || v.y >= v.h {
			t.Fatalf("writing %q at %d,%d, off the screen", r, v.x, v.y)
		}
		v.cells[v.y*v.w+v.x] = cell{r, v.st}
		if runeWidth(r) == 2 {
			v.cells[v.y*v.w+v.x+1] = cell{0, v.st}
		}
		v.x += runeWidth(r)
	}
}

func randomScreen(rng *rand.Rand, w, h int, base *screen) *screen {
	s := newScreen(w, h)
	if base != nil {
		copy(s.cells, base.cells)
	}
	words := []string{"env", "日本", "built", "running", "  ", "x", "✓"}
	for i := rng.Intn(8); i >= 0; i-- {
		st := style(rng.Intn(16)) | style(rng.Intn(8))<<8
		s.put(rng.Intn(w), rng.Intn(h), words[rng.Intn(len(words))], st)
	}
	return s
}

// Whatever the frames, the terminal shows the last one after the
// diffs: from a cleared screen, then from each frame to the next.
func TestScreenDiff(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		w, h := 5+rng.Intn(30), 2+rng.Intn(8)
		v := newVT(w, h)
		var prev *screen
		for f := 0; f < 6; f++ {
			s := randomScreen(rng, w, h, prev)
			v.apply(t, s.diff(prev, true))
			if !reflect.DeepEqual(v.cells, s.cells) {
				t.Fatalf("round %d frame %d: the terminal shows\n%s\nnot\n%s", round, f, (&screen{w: w, h: h, cells: v.cells}).text(), s.text())
			}
			prev = s
		}
	}
}

// An unchanged frame writes nothing; one changed cell, one move and the
// cell; colour only where allowed.
func TestScreenDiffCost(t *testing.T) {
	s := newScreen(80, 24)
	s.put(0, 0, "karapace", stBold|colGreen)
	if out := s.diff(s, true); len(out) != 0 {
		t.Fatalf("unchanged frame wrote %q", out)
	}
	next := newScreen(80, 24)
	copy(next.cells, s.cells)
	next.put(40, 10, "x", 0)
	if out := string(next.diff(s, true)); out != "\x1b[11;41Hx" {
		t.Fatalf("one cell: %q", out)
	}
	if out := string(s.diff(nil, true)); !strings.Contains(out, "\x1b[0;1;32m") {
		t.Fatalf("colour missing: %q", out)
	}
	if out := string(s.diff(nil, false)); strings.Contains(out, "32") || !strings.Contains(out, "\x1b[0;1m") {
		t.Fatalf("NO_COLOR: colour written, or the attributes lost: %q", out)
	}
}

// The terminal in raw mode and on the alternate screen while taken, and
// exactly as it was after: on release, and across a suspension, during
// which no key is read from it.
func TestTTYOnPTY(t *testing.T) {
	master, slave := openPTY(t)
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			if err != nil {
				close(out)
				return
			}
			out <- string(buf[:n])
		}
	}()
	expect := func(want string) {
		t.Helper()
		var got string
		for deadline := time.After(10 * time.Second); !strings.Contains(got, want); {
			select {
			case s := <-out:
				got += s
			case <-deadline:
				t.Fatalf("the terminal got %q, not %q", got, want)
			}
		}
	}
	tt, err := openTTY(slave, slave, func() {})
	if err != nil {
		t.Fatal(err)
	}
	expect(ttyTake)
	raw, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Fatalf("not raw: lflag %#x", raw.Lflag)
	}
	nextKey := func() key {
		t.Helper()
		select {
		case k := <-tt.keys:
			return k
		case <-time.After(10 * time.Second):
			t.Fatal("no key")
		}
		return ""
	}
	master.Write([]byte("j\x1b[B"))
	if k1, k2 := nextKey(), nextKey(); k1 != "j" || k2 != keyDown {
		t.Fatalf("keys %q %q", k1, k2)
	}
	master.Write([]byte("\x1b")) // Escape, once nothing follows
	if k := nextKey(); k != keyEsc {
		t.Fatalf("key %q", k)
	}

	tt.suspend()
	expect(ttyRelease)
	if now, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS); *now != *before {
		t.Fatalf("suspended, the terminal's mode is %+v, not %+v", now, before)
	}
	// What is typed now is for the program that has the terminal.
	master.Write([]byte("ls\n"))
	buf := make([]byte, 16)
	slave.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := slave.Read(buf); err != nil || string(buf[:n]) != "ls\n" {
		t.Fatalf("the next program read %q, %v", buf[:n], err)
	}
	if err := tt.take(); err != nil {
		t.Fatal(err)
	}
	master.Write([]byte("k"))
	if k := nextKey(); k != "k" {
		t.Fatalf("after resuming: %q", k)
	}
	tt.release()
	tt.release() // twice: the exit paths may meet
	if now, _ := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS); *now != *before {
		t.Fatalf("released, the terminal's mode is %+v, not %+v", now, before)
	}
	if w, h := tt.size(); w <= 0 || h <= 0 {
		t.Fatalf("size %dx%d", w, h)
	}
	unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 10, Col: 40})
	if w, h := tt.size(); w != 40 || h != 10 {
		t.Fatalf("size %dx%d, want 40x10", w, h)
	}
	if _, err := openTTY(os.NewFile(^uintptr(0), "none"), slave, nil); err == nil {
		t.Fatal("openTTY took something that is not a terminal")
	}
}

// fd2 is file descriptor 2 itself: 'go test -json' makes os.Stderr the
// test's stdout. A package variable, so no finalizer ever closes it.
var fd2 = os.NewFile(2, "/dev/stderr")

// While the UI runs, what anything writes to stderr (the logger,
// progress lines, helper processes) becomes status lines; after, stderr
// is the same file again.
func TestStderrCapture(t *testing.T) {
	var before unix.Stat_t
	unix.Fstat(2, &before)
	c, err := captureStderr()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	next := func() string {
		t.Helper()
		select {
		case l := <-c.lines:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no line")
		}
		return ""
	}
	if !isTerminal(fd2) {
		t.Fatal("progress lines are drawn only on a terminal")
	}
	c.setWidth(50)
	out := newOutput("warn", false, false, fd2)
	if out.term == nil {
		t.Fatal("progress is not drawn on the capture")
	}
	p := out.progress("collecting garbage", 0, false)
	p.last = time.Time{}
	p.add(7)
	if l := next(); l != "collecting garbage  7" {
		t.Fatalf("progress line %q", l)
	}
	p.finish()
	out.warnf("disk %s", "\x1b[31mfull\x1b[0m")
	if l := next(); l != "warning: disk full" {
		t.Fatalf("warning %q", l)
	}
	c.pause()
	c.pause()
	var during unix.Stat_t
	unix.Fstat(2, &during)
	if during.Ino != before.Ino || during.Dev != before.Dev {
		t.Fatal("paused, stderr is not what it was")
	}
	if err := c.resume(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(fd2, "karapace: after resuming")
	if l := next(); l != "after resuming" {
		t.Fatalf("line %q", l)
	}
	c.close()
	var after unix.Stat_t
	unix.Fstat(2, &after)
	if after.Ino != before.Ino || after.Dev != before.Dev {
		t.Fatal("closed, stderr is not what it was")
	}
}

func TestCleanLine(t *testing.T) {
	for in, want := range map[string]string{
		"\x1b[Kimporting x  1.0 MiB":         "importing x  1.0 MiB",
		"karapace: warning: \x1b[1mx\x1b[0m": "warning: x",
		"a\tb\x07c\xff":                      "a b c?",
		"\x1b]0;title\x07x":                  "0;title x", // not a CSI: only its ESC and the byte after go
	} {
		if got := cleanLine([]byte(in)); got != want {
			t.Errorf("cleanLine(%q) = %q, want %q", in, got, want)
		}
	}
}

// A frame as text and as a map of its styles: the golden screens.

var styleNames = []string{"bold", "dim", "reverse", "underline"}
var colorNames = []string{"", "black", "red", "green", "yellow", "blue", "magenta", "cyan"}

func (st style) String() string {
	var parts []string
	for i, n := range styleNames {
		if st&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if c := int(st&colorMask) >> 8; c > 0 && c < len(colorNames) {
		parts = append(parts, colorNames[c])
	}
	if parts == nil {
		return "plain"
	}
	return strings.Join(parts, "+")
}

// text is the frame as lines of text without trailing spaces.
func (s *screen) text() string {
	var b strings.Builder
	for y := 0; y < s.h; y++ {
		var line strings.Builder
		for _, c := range s.cells[y*s.w : (y+1)*s.w] {
			if c.r != 0 {
				line.WriteRune(c.r)
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " "))
		b.WriteByte('\n')
	}
	return b.String()
}

// styles maps the frame's styles, one letter a cell ('.' plain), with a
// legend of the letters: the half of a golden screen that text misses.
func (s *screen) styles() string {
	letters := map[style]byte{}
	var legend []string
	var b strings.Builder
	for y := 0; y < s.h; y++ {
		line := make([]byte, s.w)
		for x, c := range s.cells[y*s.w : (y+1)*s.w] {
			if c.st == 0 {
				line[x] = '.'
				continue
			}
			l, ok := letters[c.st]
			if !ok {
				l = byte('a' + len(letters))
				letters[c.st] = l
				legend = append(legend, string(l)+" "+c.st.String())
			}
			line[x] = l
		}
		b.WriteString(strings.TrimRight(string(line), "."))
		b.WriteByte('\n')
	}
	return b.String() + strings.Join(legend, "\n") + "\n"
}
