package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// karapace tui: the environments of a store in a terminal UI. The model
// (this file's tuiModel) holds the state and turns keys into commands;
// it draws itself on a screen of cells (term.go), which goes out as the
// difference from the frame before; the controller (tuiApp) runs the
// commands against the engine through tuiEngine and feeds their results
// back.

// tuiEnv is an environment as the list shows it.
type tuiEnv struct {
	EnvID, ShortID, Name string
	State                envState
	Size                 int64 // what its layers take in the store; -1: unknown
	Updated              time.Time
}

// label names the environment on the status line: its name, else its
// short_id.
func (e *tuiEnv) label() string {
	if e.Name != "" {
		return e.Name
	}
	return e.ShortID
}

// tuiDetail is what the detail and snapshots views show of one
// environment.
type tuiDetail struct {
	tuiEnv
	Pid       int
	Created   string
	Manifests []string
	Lock      [][2]string // the lock's summary: label, value
	LockErr   string      // why the lock could not be read
	Layers    []tuiLayer
	Snapshots []tuiLayer
	Mounts    []string
}

// tuiLayer is a layer of an environment: Current marks the snapshot its
// writable layer was restored from.
type tuiLayer struct {
	Kind, Hash string
	Size       int64
	Current    bool
}

// tuiOp is what a command asks the controller to do.
type tuiOp string

const (
	opReload  tuiOp = "reload" // list the environments again
	opRow     tuiOp = "row"    // read one environment's row again
	opDetail  tuiOp = "detail" // read one environment's detail
	opRename  tuiOp = "rename" // arg: the new name
	opState   tuiOp = "state"  // arg: the state to move to
	opDestroy tuiOp = "destroy"
	opCommit  tuiOp = "commit"
	opRestore tuiOp = "restore" // arg: the snapshot
	opGC      tuiOp = "gc"
	opEnter   tuiOp = "enter"  // the UI steps aside for a login shell
	opRedraw  tuiOp = "redraw" // draw the whole screen again
	opQuit    tuiOp = "quit"
)

// tuiCmd is one command of the model to the controller.
type tuiCmd struct {
	op         tuiOp
	env        string // env_id
	arg        string
	label      string // the environment, as the status line names it
	doing, did string // how the status line says it: "destroying", "destroyed"
}

// says is verb said of the command's environment, if it has one.
func (c tuiCmd) says(verb string) string {
	if c.label == "" {
		return verb
	}
	return verb + " " + c.label
}

// long reports whether the command changes the store: one runs at a
// time, in the background, with its progress on the status line.
func (c tuiCmd) long() bool { return c.doing != "" }

// tuiResult is how a command went.
type tuiResult struct {
	cmd    tuiCmd
	envs   []tuiEnv
	detail *tuiDetail
	text   string // what it did, for the status line
	err    error
}

type tuiView int

const (
	viewList tuiView = iota
	viewDetail
	viewSnapshots
	viewHelp
)

type tuiMode int

const (
	modeNormal  tuiMode = iota
	modeFilter          // typing the filter
	modeRename          // typing a name
	modeConfirm         // y/N
)

// The smallest screen the UI draws on.
const (
	tuiMinWidth  = 40
	tuiMinHeight = 10
	tuiMaxInput  = 64 // a name's most characters, and a filter's
)

// tuiColumn is a column of the list, also a sort key.
type tuiColumn struct {
	name  string
	width int // 0: the name column, which takes what is left
	right bool
	text  func(m *tuiModel, e *tuiEnv) string
	cmp   func(a, b *tuiEnv) int
}

var tuiColumns = []tuiColumn{
	{"SHORT_ID", 12, false, func(_ *tuiModel, e *tuiEnv) string { return e.ShortID },
		func(a, b *tuiEnv) int { return strings.Compare(a.ShortID, b.ShortID) }},
	{"NAME", 0, false, func(_ *tuiModel, e *tuiEnv) string {
		if e.Name == "" {
			return "-"
		}
		return e.Name
	}, func(a, b *tuiEnv) int { return strings.Compare(a.Name, b.Name) }},
	{"STATE", 8, false, func(_ *tuiModel, e *tuiEnv) string { return string(e.State) },
		func(a, b *tuiEnv) int { return strings.Compare(string(a.State), string(b.State)) }},
	{"SIZE", 10, true, func(_ *tuiModel, e *tuiEnv) string { return tuiSize(e.Size) },
		func(a, b *tuiEnv) int { return cmp.Compare(a.Size, b.Size) }},
	{"UPDATED", 10, false, func(m *tuiModel, e *tuiEnv) string { return tuiAge(m.now(), e.Updated) },
		func(a, b *tuiEnv) int { return a.Updated.Compare(b.Updated) }},
}

const tuiNameColumn = 1

// tuiModel is the UI's state; its methods handle keys and results and
// draw it. It does no I/O.
type tuiModel struct {
	now   func() time.Time
	store string // the store's root, for the title
	w, h  int

	envs   []tuiEnv // every environment, in the sort order
	rows   []int    // the ones the filter lets through, as indices of envs
	sel    int      // the selected row
	top    int      // the first row shown
	selID  string   // the selected env_id, kept across reloads and sorts
	loaded bool

	view     tuiView
	helpBack tuiView // the view help returns to
	mode     tuiMode
	input    []rune
	naming   string // the env_id a name is typed for
	filter   string
	sortCol  int
	desc     bool
	confirm  tuiCmd // what y does
	prompt   string

	status    string
	statusErr bool

	busy      tuiCmd // the long command running; op "" when none
	busySince time.Time
	busyNote  string // its latest line of output

	detailEnv string // the environment of the detail and snapshots views
	detail    *tuiDetail
	pageTop   int // the first line shown of the detail or the help
	snapSel   int
}

func newTUIModel(store string, now func() time.Time) *tuiModel {
	return &tuiModel{store: store, now: now, sortCol: tuiNameColumn, w: 80, h: 24}
}

// resize takes the terminal's new size.
func (m *tuiModel) resize(w, h int) {
	m.w, m.h = w, h
	m.scroll()
	m.clampPage()
}

// listRows is how many environments the list shows at once.
func (m *tuiModel) listRows() int { return max(1, m.h-3) }

// pageRows is how many lines the detail and help views show at once.
func (m *tuiModel) pageRows() int { return max(1, m.h-2) }

// setEnvs takes a new list of the environments.
func (m *tuiModel) setEnvs(envs []tuiEnv) {
	m.envs = envs
	m.loaded = true
	m.order()
}

// order sorts the environments by the sort column (env_ids settle
// ties), then arranges them.
func (m *tuiModel) order() {
	col := tuiColumns[m.sortCol]
	slices.SortFunc(m.envs, func(a, b tuiEnv) int {
		c := col.cmp(&a, &b)
		if c == 0 {
			c = strings.Compare(a.EnvID, b.EnvID)
		}
		if m.desc {
			c = -c
		}
		return c
	})
	m.arrange()
}

// setRow puts one environment's row anew; nil: it is gone.
func (m *tuiModel) setRow(id string, e *tuiEnv) {
	i := slices.IndexFunc(m.envs, func(e tuiEnv) bool { return e.EnvID == id })
	switch {
	case e == nil && i >= 0:
		m.envs = slices.Delete(m.envs, i, i+1)
	case e != nil && i >= 0:
		m.envs[i] = *e
	case e != nil:
		m.envs = append(m.envs, *e)
	}
	m.order()
}

// arrange filters and finds the selection again.
func (m *tuiModel) arrange() {
	m.rows = m.rows[:0]
	needle := strings.ToLower(m.filter)
	for i := range m.envs {
		e := &m.envs[i]
		if needle == "" || strings.Contains(strings.ToLower(e.Name), needle) || strings.Contains(e.EnvID, needle) ||
			strings.Contains(string(e.State), needle) {
			m.rows = append(m.rows, i)
		}
	}
	for i, r := range m.rows {
		if m.envs[r].EnvID == m.selID {
			m.sel = i
			break
		}
	}
	m.scroll()
}

// scroll keeps the selection in the rows and on the screen.
func (m *tuiModel) scroll() {
	m.sel = max(0, min(m.sel, len(m.rows)-1))
	if len(m.rows) > 0 {
		m.selID = m.envs[m.rows[m.sel]].EnvID
	}
	n := m.listRows()
	if m.sel < m.top {
		m.top = m.sel
	}
	if m.sel >= m.top+n {
		m.top = m.sel - n + 1
	}
	m.top = max(0, min(m.top, len(m.rows)-n))
}

func (m *tuiModel) move(to int) {
	m.sel = to
	m.scroll()
}

// selected is the environment of the selected row, if any.
func (m *tuiModel) selected() *tuiEnv {
	if m.sel < len(m.rows) {
		return &m.envs[m.rows[m.sel]]
	}
	return nil
}

// find is the environment with that env_id, if listed.
func (m *tuiModel) find(id string) *tuiEnv {
	for i := range m.envs {
		if m.envs[i].EnvID == id {
			return &m.envs[i]
		}
	}
	return nil
}

// target is the environment an action applies to: the selected one in
// the list, the one shown elsewhere.
func (m *tuiModel) target() *tuiEnv {
	if m.view == viewList {
		return m.selected()
	}
	return m.find(m.detailEnv)
}

func (m *tuiModel) say(text string, isErr bool) {
	m.status, m.statusErr = text, isErr
}

// note takes a line that something wrote to stderr while the UI owns
// the terminal: a long command's progress, else a message.
func (m *tuiModel) note(line string) {
	if m.busy.op != "" {
		m.busyNote = line
		return
	}
	lower := strings.ToLower(line)
	m.say(line, strings.Contains(lower, "warning") || strings.Contains(lower, "error"))
}

// key handles one key press.
func (m *tuiModel) key(k key) []tuiCmd {
	if k == keyCtrlC || k == keyHangup {
		return []tuiCmd{{op: opQuit}}
	}
	switch m.mode {
	case modeFilter, modeRename:
		return m.editKey(k)
	case modeConfirm:
		m.mode = modeNormal
		m.prompt = ""
		if k == "y" || k == "Y" {
			return m.start(m.confirm)
		}
		m.say("cancelled", false)
		return nil
	}
	if k == keyCtrlL {
		return []tuiCmd{{op: opRedraw}}
	}
	switch m.view {
	case viewHelp:
		switch k {
		case "q", "?", keyEsc:
			m.view = m.helpBack
			m.pageTop = 0
			return nil
		}
		m.pageKey(k)
		return nil
	case viewDetail:
		switch k {
		case "q", keyEsc:
			m.view = viewList
			return nil
		}
		if m.pageKey(k) {
			return nil
		}
	case viewSnapshots:
		if cmds, ok := m.snapshotKey(k); ok {
			return cmds
		}
	case viewList:
		if cmds, ok := m.listKey(k); ok {
			return cmds
		}
	}
	return m.actionKey(k)
}

// listKey handles the keys of the list's own.
func (m *tuiModel) listKey(k key) ([]tuiCmd, bool) {
	switch k {
	case "j", keyDown:
		m.move(m.sel + 1)
	case "k", keyUp:
		m.move(m.sel - 1)
	case "g", keyHome:
		m.move(0)
	case "G", keyEnd:
		m.move(len(m.rows) - 1)
	case keyPgDn:
		m.move(m.sel + m.listRows())
	case keyPgUp:
		m.move(m.sel - m.listRows())
	case keyEnter:
		if e := m.selected(); e != nil {
			return m.open(viewDetail, e), true
		}
	case "/":
		m.mode = modeFilter
		m.input = []rune(m.filter)
	case "s":
		m.sortCol = (m.sortCol + 1) % len(tuiColumns)
		m.order()
		m.say("sorted by "+strings.ToLower(tuiColumns[m.sortCol].name), false)
	case "S":
		m.desc = !m.desc
		m.order()
		m.say("sorted by "+strings.ToLower(tuiColumns[m.sortCol].name)+map[bool]string{false: ", ascending", true: ", descending"}[m.desc], false)
	case "q":
		return []tuiCmd{{op: opQuit}}, true
	case keyEsc:
		if m.filter == "" {
			return []tuiCmd{{op: opQuit}}, true
		}
		m.filter = ""
		m.arrange()
		m.say("filter cleared", false)
	default:
		return nil, false
	}
	return nil, true
}

// open shows the detail or snapshots view of e, and reads its detail.
func (m *tuiModel) open(v tuiView, e *tuiEnv) []tuiCmd {
	if m.detailEnv != e.EnvID {
		m.detail = nil
		m.snapSel = 0
	}
	m.view, m.detailEnv, m.pageTop = v, e.EnvID, 0
	return []tuiCmd{{op: opDetail, env: e.EnvID}}
}

// pageKey scrolls the detail or help view.
func (m *tuiModel) pageKey(k key) bool {
	switch k {
	case "j", keyDown:
		m.pageTop++
	case "k", keyUp:
		m.pageTop--
	case "g", keyHome:
		m.pageTop = 0
	case "G", keyEnd:
		m.pageTop = m.pageLen()
	case keyPgDn:
		m.pageTop += m.pageRows()
	case keyPgUp:
		m.pageTop -= m.pageRows()
	default:
		return false
	}
	m.clampPage()
	return true
}

func (m *tuiModel) clampPage() {
	m.pageTop = max(0, min(m.pageTop, m.pageLen()-m.pageRows()))
}

// pageLen is how many lines the detail or help view has.
func (m *tuiModel) pageLen() int {
	if m.view == viewDetail {
		return len(m.detailLines())
	}
	return len(tuiHelp)
}

func (m *tuiModel) snapshotKey(k key) ([]tuiCmd, bool) {
	var snaps []tuiLayer
	if m.detail != nil {
		snaps = m.detail.Snapshots
	}
	switch k {
	case "j", keyDown:
		m.snapSel++
	case "k", keyUp:
		m.snapSel--
	case "g", keyHome:
		m.snapSel = 0
	case "G", keyEnd:
		m.snapSel = len(snaps) - 1
	case "q", keyEsc:
		m.view = viewDetail
		return nil, true
	case keyEnter:
		e := m.target()
		if e == nil || m.snapSel >= len(snaps) {
			return nil, true
		}
		h := snaps[m.snapSel].Hash
		return m.ask(tuiCmd{op: opRestore, env: e.EnvID, arg: h, label: e.label(), doing: "restoring", did: "restored"},
			fmt.Sprintf("restore %s to snapshot %s (its writable layer is replaced)? y/N", e.label(), h[:12])), true
	default:
		return nil, false
	}
	m.snapSel = max(0, min(m.snapSel, len(snaps)-1))
	return nil, true
}

// actionKey handles the keys that act on an environment or the store,
// the same in every view but help.
func (m *tuiModel) actionKey(k key) []tuiCmd {
	switch k {
	case "?":
		m.helpBack, m.view, m.pageTop = m.view, viewHelp, 0
		return nil
	case "r":
		cmds := []tuiCmd{{op: opReload}}
		if m.view != viewList {
			cmds = append(cmds, tuiCmd{op: opDetail, env: m.detailEnv})
		}
		return cmds
	case "x":
		return m.ask(tuiCmd{op: opGC, doing: "collecting garbage", did: "collected garbage"},
			"collect garbage: remove what no environment uses? y/N")
	case "n", "f", "a", "d", "e", "c", "v":
	default:
		return nil
	}
	e := m.target()
	if e == nil {
		m.say("no environment selected", true)
		return nil
	}
	c := tuiCmd{env: e.EnvID, label: e.label()}
	switch k {
	case "n":
		if m.refuseBusy() {
			return nil
		}
		m.mode, m.naming = modeRename, e.EnvID
		m.input = []rune(e.Name)
	case "f", "a":
		t := tuiToggles[k]
		c.op = opState
		if e.State == t.state { // back, which loses nothing
			c.arg, c.doing, c.did = string(stateBuilt), t.undoing, t.undid
			return m.start(c)
		}
		c.arg, c.doing, c.did = string(t.state), t.doing, t.did
		return m.ask(c, fmt.Sprintf(t.question, e.label()))
	case "d":
		c.op, c.doing, c.did = opDestroy, "destroying", "destroyed"
		what := e.label()
		if what != e.ShortID {
			what += " (" + e.ShortID + ")"
		}
		return m.ask(c, "destroy "+what+"? y/N")
	case "e":
		if e.State == stateArchived {
			m.say(e.label()+" is archived and cannot be entered; a unarchives it", true)
			return nil
		}
		c.op = opEnter
		return m.start(c)
	case "c":
		c.op, c.doing, c.did = opCommit, "committing", "committed"
		return m.start(c)
	case "v":
		return m.open(viewSnapshots, e)
	}
	return nil
}

// tuiToggles are f and a: a state asked for with y/N, and the way back.
var tuiToggles = map[key]struct {
	state                      envState
	doing, did, undoing, undid string
	question                   string // of the environment's label
}{
	"f": {stateFrozen, "freezing", "froze", "unfreezing", "unfroze", "freeze %s (no more writes)? y/N"},
	"a": {stateArchived, "archiving", "archived", "unarchiving", "unarchived", "archive %s (kept, but not entered)? y/N"},
}

// refuseBusy says so when a long command runs: one at a time.
func (m *tuiModel) refuseBusy() bool {
	if m.busy.op == "" {
		return false
	}
	m.say("wait: "+m.busy.says(m.busy.doing)+" is still running", true)
	return true
}

// ask asks y/N before c.
func (m *tuiModel) ask(c tuiCmd, prompt string) []tuiCmd {
	if m.refuseBusy() {
		return nil
	}
	m.mode, m.confirm, m.prompt = modeConfirm, c, prompt
	return nil
}

// start issues c, marking a long one as running.
func (m *tuiModel) start(c tuiCmd) []tuiCmd {
	if m.refuseBusy() {
		return nil
	}
	if c.long() {
		m.busy, m.busySince, m.busyNote = c, m.now(), ""
		m.say("", false)
	}
	return []tuiCmd{c}
}

// editKey handles a key while the filter or a name is typed.
func (m *tuiModel) editKey(k key) []tuiCmd {
	filtering := m.mode == modeFilter
	switch k {
	case keyEsc:
		m.mode = modeNormal
		if filtering {
			m.filter = ""
			m.arrange()
		} else {
			m.say("rename cancelled", false)
		}
		return nil
	case keyEnter:
		m.mode = modeNormal
		if filtering {
			if m.filter != "" {
				m.say(fmt.Sprintf("%d of %d match /%s", len(m.rows), len(m.envs), m.filter), false)
			}
			return nil
		}
		e := m.find(m.naming)
		name := string(m.input)
		if e == nil || name == e.Name {
			m.say("rename cancelled", false)
			return nil
		}
		return m.start(tuiCmd{op: opRename, env: e.EnvID, arg: name, label: e.label(), doing: "renaming", did: "renamed"})
	case keyBackspace:
		if len(m.input) > 0 {
			m.input = m.input[:len(m.input)-1]
		}
	case keyCtrlU:
		m.input = m.input[:0]
	default:
		if utf8.RuneCountInString(string(k)) == 1 && len(m.input) < tuiMaxInput {
			m.input = append(m.input, []rune(string(k))...)
		}
	}
	if filtering {
		m.filter = string(m.input)
		m.arrange()
	}
	return nil
}

// done takes a command's result, and says what to do next.
func (m *tuiModel) done(r tuiResult) []tuiCmd {
	c := r.cmd
	switch c.op {
	case opReload:
		if r.err != nil {
			m.say(firstLine(r.err.Error()), true)
		}
		if r.envs != nil || r.err == nil {
			m.setEnvs(r.envs)
		}
		return nil
	case opRow:
		if r.err != nil {
			m.say(firstLine(r.err.Error()), true)
			return nil
		}
		var e *tuiEnv
		if len(r.envs) > 0 {
			e = &r.envs[0]
		}
		m.setRow(c.env, e)
		return nil
	case opDetail:
		if c.env == m.detailEnv && r.detail == nil && r.err == nil && m.showsDetail() {
			m.view, m.helpBack = viewList, viewList
			m.say("the environment shown is gone", true)
			return nil
		}
		if c.env == m.detailEnv {
			m.detail = r.detail
			if r.err != nil {
				m.say(firstLine(r.err.Error()), true)
			}
			m.clampPage()
			if m.detail != nil {
				m.snapSel = max(0, min(m.snapSel, len(m.detail.Snapshots)-1))
			}
		}
		return nil
	}
	if c.long() {
		m.busy = tuiCmd{}
		m.busyNote = ""
	}
	switch {
	case r.err != nil && c.op == opEnter:
		m.say(c.says("entering")+": "+firstLine(r.err.Error()), true)
	case r.err != nil:
		m.say(c.says(c.doing)+": "+firstLine(r.err.Error()), true)
	case c.op == opEnter:
		m.say(c.says("back from")+" ("+r.text+")", false)
	case r.text != "":
		m.say(c.says(c.did)+": "+r.text, false)
	default:
		m.say(c.says(c.did), false)
	}
	next := []tuiCmd{{op: opRow, env: c.env}}
	if c.env == "" {
		next[0] = tuiCmd{op: opReload}
	}
	if m.showsDetail() {
		if c.op == opDestroy && r.err == nil && c.env == m.detailEnv {
			m.view, m.helpBack = viewList, viewList // it is gone
		} else {
			next = append(next, tuiCmd{op: opDetail, env: m.detailEnv})
		}
	}
	return next
}

// showsDetail reports whether the view shows detailEnv's detail (or
// help will return to it).
func (m *tuiModel) showsDetail() bool {
	v := m.view
	if v == viewHelp {
		v = m.helpBack
	}
	return v == viewDetail || v == viewSnapshots
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// render draws the model on s, which is m.w×m.h.
func (m *tuiModel) render(s *screen) {
	if s.w < tuiMinWidth || s.h < tuiMinHeight {
		s.put(0, 0, fmt.Sprintf("karapace tui needs %dx%d;", tuiMinWidth, tuiMinHeight), stBold)
		s.put(0, 1, fmt.Sprintf("this terminal is %dx%d", s.w, s.h), 0)
		s.put(0, 2, "(q quits)", stDim)
		return
	}
	m.renderTitle(s)
	switch m.view {
	case viewList:
		m.renderList(s)
	case viewDetail:
		m.renderPage(s, m.detailLines())
	case viewSnapshots:
		m.renderSnapshots(s)
	case viewHelp:
		m.renderPage(s, tuiHelp)
	}
	m.renderStatus(s)
}

func (m *tuiModel) renderTitle(s *screen) {
	st := stReverse | stBold
	left := " karapace"
	var right string
	switch m.view {
	case viewList:
		n := fmt.Sprint(len(m.envs))
		if m.filter != "" {
			n = fmt.Sprintf("%d of %d", len(m.rows), len(m.envs))
		}
		left += "  " + n + " environment" + map[bool]string{true: "", false: "s"}[len(m.envs) == 1]
		if len(m.rows) > m.listRows() {
			right = fmt.Sprintf("%d/%d ", m.sel+1, len(m.rows))
		}
	case viewDetail, viewSnapshots:
		what := m.detailEnv
		if e := m.find(m.detailEnv); e != nil {
			what = e.label()
		}
		if m.view == viewSnapshots {
			left += "  snapshots of " + what
		} else {
			left += "  " + what
		}
	case viewHelp:
		left += "  keys"
	}
	left += "  " + m.store
	s.putField(0, 0, s.w, left, st, false)
	if right != "" && textWidth(left)+textWidth(right)+2 <= s.w {
		s.put(s.w-textWidth(right), 0, right, st)
	}
}

// tuiLayout picks the list's columns for a width: the name column takes
// what the others leave, and SIZE and UPDATED go first when it would
// have fewer than ten cells.
func tuiLayout(width int) (cols []int, nameWidth int) {
	avail := width - 2 // a margin each side
	used := 0
	for i, c := range tuiColumns {
		if c.width > 0 && i < 3 {
			used += c.width + 2
		}
	}
	cols = []int{0, 1, 2}
	for i := 3; i < len(tuiColumns); i++ {
		if avail-used-tuiColumns[i].width-2 < 10 {
			break
		}
		used += tuiColumns[i].width + 2
		cols = append(cols, i)
	}
	return cols, min(avail-used, 40)
}

// tuiStateStyle colours a state.
func tuiStateStyle(s envState) style {
	switch s {
	case stateRunning:
		return colCyan | stBold
	case stateBuilt:
		return colGreen
	case stateFrozen:
		return colBlue
	case stateArchived:
		return stDim
	case stateDefined:
		return colYellow
	}
	return 0
}

func (m *tuiModel) renderList(s *screen) {
	cols, nameWidth := tuiLayout(s.w)
	widthOf := func(i int) int {
		if tuiColumns[i].width == 0 {
			return nameWidth
		}
		return tuiColumns[i].width
	}
	x := 1
	for _, i := range cols {
		head := tuiColumns[i].name
		if i == m.sortCol {
			head += map[bool]string{false: " ^", true: " v"}[m.desc]
		}
		s.putField(x, 1, widthOf(i), head, stBold, tuiColumns[i].right)
		x += widthOf(i) + 2
	}
	switch {
	case !m.loaded:
		s.put(2, 3, "reading the store...", stDim)
		return
	case len(m.envs) == 0:
		s.put(2, 3, "No environments yet: 'karapace build' makes one.", 0)
		return
	case len(m.rows) == 0:
		s.put(2, 3, "Nothing matches /"+m.filter+" (Esc clears it).", 0)
		return
	}
	for y, r := 2, m.top; y < s.h-1 && r < len(m.rows); y, r = y+1, r+1 {
		e := &m.envs[m.rows[r]]
		var base style
		if r == m.sel {
			base = stReverse
			s.fillLine(y, base)
		}
		x := 1
		for _, i := range cols {
			st := base
			if i == 2 {
				st |= tuiStateStyle(e.State)
			}
			s.putField(x, y, widthOf(i), tuiColumns[i].text(m, e), st, tuiColumns[i].right)
			x += widthOf(i) + 2
		}
	}
}

// tuiLine is a line of the detail or help view: a heading, or a label
// and its value.
type tuiLine struct {
	label, value string
	heading      bool
	st           style // of the value
}

func (m *tuiModel) renderPage(s *screen, lines []tuiLine) {
	if lines == nil {
		s.put(2, 2, "reading...", stDim)
		return
	}
	for y, i := 1, m.pageTop; y < s.h-1 && i < len(lines); y, i = y+1, i+1 {
		l := lines[i]
		if l.heading {
			s.put(1, y, l.label, stBold|stUnderline)
			continue
		}
		s.putField(1, y, 15, l.label, stBold, false)
		s.putField(17, y, s.w-18, l.value, l.st, false)
	}
}

// detailLines are the detail view's lines, nil while it is read.
func (m *tuiModel) detailLines() []tuiLine {
	d := m.detail
	if d == nil {
		return nil
	}
	state := string(d.State)
	if d.Pid != 0 {
		state += fmt.Sprintf(" (init pid %d)", d.Pid)
	}
	name := d.Name
	if name == "" {
		name = "(none: n names it)"
	}
	lines := []tuiLine{
		{label: "env_id", value: d.EnvID},
		{label: "short_id", value: d.ShortID},
		{label: "name", value: name},
		{label: "state", value: state, st: tuiStateStyle(d.State)},
		{label: "size", value: tuiSize(d.Size)},
		{label: "created", value: d.Created},
		{label: "updated", value: d.Updated.UTC().Format(time.RFC3339) + " (" + tuiAge(m.now(), d.Updated) + ")"},
	}
	for i, p := range d.Manifests {
		lines = append(lines, tuiLine{label: map[bool]string{true: "manifest", false: ""}[i == 0], value: p})
	}
	lines = append(lines, tuiLine{}, tuiLine{label: "Lock", heading: true})
	if d.LockErr != "" {
		lines = append(lines, tuiLine{label: "error", value: d.LockErr, st: colRed})
	}
	for _, kv := range d.Lock {
		lines = append(lines, tuiLine{label: kv[0], value: kv[1]})
	}
	lines = append(lines, tuiLine{}, tuiLine{label: "Layers", heading: true})
	for _, l := range d.Layers {
		lines = append(lines, tuiLine{label: l.Kind, value: l.Hash + "  " + tuiSize(l.Size)})
	}
	lines = append(lines, tuiLine{}, tuiLine{label: fmt.Sprintf("Snapshots (%d)", len(d.Snapshots)), heading: true})
	if len(d.Snapshots) == 0 {
		lines = append(lines, tuiLine{value: "none: c commits the writable layer"})
	}
	for _, l := range d.Snapshots {
		cur := ""
		if l.Current {
			cur = "  restored"
		}
		lines = append(lines, tuiLine{value: l.Hash[:12] + "  " + tuiSize(l.Size) + cur})
	}
	lines = append(lines, tuiLine{}, tuiLine{label: "Mounts", heading: true})
	if len(d.Mounts) == 0 {
		lines = append(lines, tuiLine{value: "none"})
	}
	for _, mt := range d.Mounts {
		lines = append(lines, tuiLine{value: mt})
	}
	return lines
}

func (m *tuiModel) renderSnapshots(s *screen) {
	s.putField(1, 1, 3, "#", stBold, true)
	s.putField(6, 1, 10, "SIZE", stBold, true)
	s.putField(29, 1, s.w-30, "SNAPSHOT", stBold, false)
	if m.detail == nil {
		s.put(2, 3, "reading...", stDim)
		return
	}
	snaps := m.detail.Snapshots
	if len(snaps) == 0 {
		s.put(2, 3, "No snapshots yet: c commits the writable layer.", 0)
		return
	}
	n := max(1, s.h-3)
	top := max(0, m.snapSel-n+1)
	for y, i := 2, top; y < s.h-1 && i < len(snaps); y, i = y+1, i+1 {
		var st style
		if i == m.snapSel {
			st = stReverse
			s.fillLine(y, st)
		}
		s.putField(1, y, 3, fmt.Sprint(i+1), st, true)
		s.putField(6, y, 10, tuiSize(snaps[i].Size), st, true)
		if snaps[i].Current {
			s.put(18, y, "restored", st|colGreen)
		}
		s.putField(29, y, s.w-30, snaps[i].Hash, st, false)
	}
}

// tuiSpinner turns while a long command runs.
const tuiSpinner = `|/-\`

func (m *tuiModel) renderStatus(s *screen) {
	y := s.h - 1
	hint := "? help  q quit "
	switch {
	case m.mode == modeFilter || m.mode == modeRename:
		text := "/"
		if m.mode == modeRename {
			text = "name: "
			if e := m.find(m.naming); e != nil {
				text = "name for " + e.label() + ": "
			}
		}
		x := s.put(1, y, text+string(m.input), 0)
		s.put(x, y, " ", stReverse) // the cursor
		hint = "Enter ok  Esc cancel "
	case m.mode == modeConfirm:
		s.putField(1, y, s.w-2, m.prompt, colYellow|stBold, false)
		return
	case m.busy.op != "":
		el := m.now().Sub(m.busySince)
		text := fmt.Sprintf("%c %s %ds", tuiSpinner[int(el/(100*time.Millisecond))%len(tuiSpinner)], m.busy.says(m.busy.doing), int(el.Seconds()))
		if m.busyNote != "" {
			text += "  " + m.busyNote
		}
		s.putField(1, y, s.w-2, text, colYellow, false)
		return
	default:
		st := style(0)
		if m.statusErr {
			st = colRed | stBold
		}
		s.putField(1, y, s.w-2, m.status, st, false)
		if m.status != "" && textWidth(m.status)+textWidth(hint)+4 > s.w {
			return
		}
	}
	s.put(s.w-textWidth(hint), y, hint, stDim)
}

// tuiHelp is the help view.
var tuiHelp = []tuiLine{
	{label: "Keys", heading: true},
	{label: "j, Down", value: "next environment (detail, help: scroll)"},
	{label: "k, Up", value: "previous environment"},
	{label: "g, Home", value: "first"},
	{label: "G, End", value: "last"},
	{label: "PgDn, PgUp", value: "a page down, up"},
	{label: "Enter", value: "the environment's detail"},
	{label: "/", value: "filter by name, env_id or state (Enter keeps it, Esc clears it)"},
	{label: "s", value: "sort by the next column"},
	{label: "S", value: "reverse the order"},
	{label: "r", value: "read the store again"},
	{label: "e", value: "enter the environment: a login shell on this terminal; the UI comes back when it exits"},
	{label: "n", value: "rename"},
	{label: "f", value: "freeze (asks y/N); unfreeze a frozen one"},
	{label: "a", value: "archive (asks y/N); unarchive an archived one"},
	{label: "d", value: "destroy (asks y/N)"},
	{label: "c", value: "commit the writable layer as a snapshot"},
	{label: "v", value: "snapshots; Enter restores the one selected (asks y/N)"},
	{label: "x", value: "collect garbage (asks y/N)"},
	{label: "?", value: "this help"},
	{label: "q, Esc", value: "back; from the list, quit"},
	{label: "Ctrl-C", value: "quit"},
	{},
	{label: "Columns", heading: true},
	{label: "STATE", value: "follows the store as it changes: running while any session is inside"},
	{label: "SIZE", value: "what the environment's layers take in the store (shared layers count in each)"},
	{label: "UPDATED", value: "when it was last built, renamed, committed or changed state"},
}

// tuiSize shows a size, "?" when it is not known.
func tuiSize(n int64) string {
	if n < 0 {
		return "?"
	}
	return humanBytes(n)
}

// tuiAge says how long ago t was, in ten characters at most.
func tuiAge(now, t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	case d < 30*24*time.Hour:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
	return t.UTC().Format("2006-01-02")
}

// tuiEngine is what the UI asks of the engine. engineTUI implements it
// over today's engine; a change of the engine changes only that.
type tuiEngine interface {
	list() ([]tuiEnv, error)                 // with an error, what could be read
	env(envID string) (*tuiEnv, error)       // nil: there is none
	detail(envID string) (*tuiDetail, error) // nil: there is none
	rename(envID, name string) error
	setState(envID string, to envState) error // freeze, archive and back
	destroy(envID string) error
	commit(envID string) (string, error)
	restore(envID, snapshot string) error
	gc(ctx context.Context) (gcReport, error)
	enter(envID string) (int, error) // a login shell on the terminal; its exit status
	// watch reports the env_id of each environment that changes ("":
	// any may have), until stopped.
	watch() (changes <-chan string, stop func(), err error)
}

func cmdTUI(c *cli) error {
	if c.json {
		return &codedError{exitManifest, "usage", errors.New("tui: --json does not apply to the terminal UI; use 'karapace --json list'")}
	}
	out, _ := c.stdout.(*os.File)
	if !isTerminal(c.stdin) || !isTerminal(out) {
		return &codedError{exitManifest, "usage", errors.New("tui: not a terminal; use 'karapace list' (or 'karapace --json list') instead")}
	}
	if c.getenv("TERM") == "dumb" {
		return &codedError{exitManifest, "usage", errors.New("tui: TERM=dumb cannot place the cursor; use 'karapace list' instead")}
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	code, err := runTUI(&engineTUI{e: e, c: c, layers: map[string]int64{}}, c.stdin, out, e.s.root, c.useColor())
	if err == nil && code != 0 {
		err = exitStatus(code)
	}
	return err
}

// runTUI runs the UI on the terminal in and out until it quits (0) or a
// signal ends it (128+N). The terminal and stderr are given back on
// every way out, a panic's included.
func runTUI(eng tuiEngine, in, out *os.File, store string, color bool) (int, error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGWINCH, unix.SIGTERM, unix.SIGHUP, unix.SIGINT)
	defer signal.Stop(sigs)
	errs, err := captureStderr()
	if err != nil {
		return 0, err
	}
	t, err := openTTY(in, out, errs.close)
	if err != nil {
		errs.close()
		return 0, err
	}
	giveBack := sync.OnceFunc(func() {
		t.release()
		errs.close()
	})
	defer giveBack()
	defer func() {
		if r := recover(); r != nil {
			giveBack()
			panic(r)
		}
	}()
	a := &tuiApp{m: newTUIModel(store, time.Now), eng: eng, t: t, errs: errs, color: color, giveBack: giveBack,
		results: make(chan tuiResult, 16), inflight: map[string]bool{}, again: map[string]bool{}}
	changes, stop, err := eng.watch()
	if err != nil {
		a.m.say("live updates are off: "+err.Error()+" (r reads the store again)", true)
	} else {
		defer stop()
	}
	return a.run(sigs, changes), nil
}

// tuiApp is the controller: it feeds keys, results, changes and signals
// to the model, runs its commands and draws it.
type tuiApp struct {
	m        *tuiModel
	eng      tuiEngine
	t        *tty
	errs     *stderrCapture
	color    bool
	giveBack func()  // the terminal and stderr, as they were
	prev     *screen // what the terminal shows; nil: unknown
	spare    *screen

	results  chan tuiResult
	inflight map[string]bool // reads running, by op and env_id
	again    map[string]bool // reads to run once more when they end
	cancel   context.CancelFunc
	quitting bool // once the long command ends
	quit     bool
}

func (a *tuiApp) run(sigs <-chan os.Signal, changes <-chan string) int {
	a.resize()
	a.exec([]tuiCmd{{op: opReload}})
	// The spinner turns while a long command runs; else nothing wakes
	// the UI but what happens.
	var ticker *time.Ticker
	var tick <-chan time.Time
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	for !a.quit {
		if err := a.draw(); err != nil {
			return exitFailure // the terminal is gone
		}
		if busy := a.m.busy.op != ""; busy != (ticker != nil) {
			if busy {
				ticker = time.NewTicker(100 * time.Millisecond)
				tick = ticker.C
			} else {
				ticker.Stop()
				ticker, tick = nil, nil
			}
		}
		select {
		case k := <-a.t.keys:
			a.exec(a.m.key(k))
			// Keys that came meanwhile (a held j) make one frame.
			for more := true; more && !a.quit; {
				select {
				case k := <-a.t.keys:
					a.exec(a.m.key(k))
				default:
					more = false
				}
			}
		case r := <-a.results:
			a.finish(r)
		case id := <-changes:
			a.changed(id)
		case line := <-a.errs.lines:
			a.m.note(line)
		case sig := <-sigs:
			if sig == unix.SIGWINCH {
				a.resize()
				continue
			}
			if a.cancel != nil {
				a.cancel()
			}
			return 128 + int(sig.(unix.Signal))
		case <-tick:
		}
	}
	return exitOK
}

func (a *tuiApp) resize() {
	w, h := a.t.size()
	a.m.resize(w, h)
	a.errs.setWidth(w)
	a.prev = nil // the terminal may have moved what it showed
}

func (a *tuiApp) draw() error {
	s := a.spare // the frame before the last one: drawn over
	if s == nil || s.w != a.m.w || s.h != a.m.h {
		s = newScreen(a.m.w, a.m.h)
	} else {
		s.clear()
	}
	a.m.render(s)
	out := s.diff(a.prev, a.color)
	a.spare, a.prev = a.prev, s
	if len(out) == 0 {
		return nil
	}
	return a.t.write(out)
}

// spawn runs f in the background; a panic there gives the terminal
// back before it ends the program.
func (a *tuiApp) spawn(f func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				a.giveBack()
				panic(r)
			}
		}()
		f()
	}()
}

func (a *tuiApp) exec(cmds []tuiCmd) {
	for _, c := range cmds {
		switch c.op {
		case opQuit:
			if a.m.busy.op == "" {
				a.quit = true
				return
			}
			a.quitting = true
			if a.cancel != nil {
				a.cancel() // gc stops between two items
			}
			a.m.busyNote = "quitting when it ends"
		case opRedraw:
			a.prev = nil
		case opReload, opRow, opDetail:
			a.fetch(c)
		case opEnter:
			a.enter(c)
		default:
			a.act(c)
		}
	}
}

// fetch reads the list or a detail in the background; asked again while
// it runs, it runs once more after.
func (a *tuiApp) fetch(c tuiCmd) {
	k := string(c.op) + c.env
	if a.inflight[k] {
		a.again[k] = true
		return
	}
	a.inflight[k] = true
	a.spawn(func() {
		r := tuiResult{cmd: c}
		switch c.op {
		case opReload:
			r.envs, r.err = a.eng.list()
		case opRow:
			var e *tuiEnv
			if e, r.err = a.eng.env(c.env); e != nil {
				r.envs = []tuiEnv{*e}
			}
		case opDetail:
			r.detail, r.err = a.eng.detail(c.env)
		}
		a.results <- r
	})
}

// act runs a long command in the background.
func (a *tuiApp) act(c tuiCmd) {
	ctx, cancel := context.WithCancel(context.Background())
	if c.op == opGC {
		a.cancel = cancel
	}
	a.spawn(func() {
		defer cancel()
		r := tuiResult{cmd: c}
		switch c.op {
		case opRename:
			r.err = a.eng.rename(c.env, c.arg)
		case opState:
			r.err = a.eng.setState(c.env, envState(c.arg))
		case opDestroy:
			if r.err = a.eng.destroy(c.env); r.err == nil {
				r.text = "x collects what it alone used"
			}
		case opCommit:
			var h string
			if h, r.err = a.eng.commit(c.env); r.err == nil {
				r.text = "snapshot " + h[:12]
			}
		case opRestore:
			if r.err = a.eng.restore(c.env, c.arg); r.err == nil {
				r.text = "snapshot " + c.arg[:12]
			}
		case opGC:
			rep, err := a.eng.gc(ctx)
			r.text, r.err = rep.summary(), err
			if rep.Interrupted {
				r.text += " (interrupted: the store is consistent, x finishes)"
			}
		}
		a.results <- r
	})
}

func (a *tuiApp) finish(r tuiResult) {
	c := r.cmd
	if !c.long() && c.op != opEnter {
		k := string(c.op) + c.env
		delete(a.inflight, k)
		if a.again[k] {
			delete(a.again, k)
			a.fetch(c)
		}
	}
	if c.long() {
		a.cancel = nil
	}
	a.exec(a.m.done(r))
	if a.quitting && a.m.busy.op == "" {
		a.quit = true
	}
}

// changed reads again what a change in the store touched: the row of
// the environment named, or the whole list. A change heard while the
// list is read may have come after that read: it is read again after.
func (a *tuiApp) changed(id string) {
	if id == "" || a.inflight[string(opReload)] {
		a.fetch(tuiCmd{op: opReload})
	} else {
		a.fetch(tuiCmd{op: opRow, env: id})
	}
	if a.m.showsDetail() && (id == "" || id == a.m.detailEnv) {
		a.fetch(tuiCmd{op: opDetail, env: a.m.detailEnv})
	}
}

// enter steps aside for a login shell in the environment: the terminal
// and stderr as they were, no key read, and the UI back after it.
func (a *tuiApp) enter(c tuiCmd) {
	a.t.suspend()
	a.errs.pause()
	fmt.Fprintf(a.t.out, "karapace tui: entering %s; the UI comes back when its shell exits\n", c.label)
	code, err := a.eng.enter(c.env)
	if rerr := a.errs.resume(); rerr != nil && err == nil {
		err = rerr
	}
	if terr := a.t.take(); terr != nil {
		a.quit = true
		return
	}
	a.resize()
	a.exec(a.m.done(tuiResult{cmd: c, text: fmt.Sprintf("exit status %d", code), err: err}))
}

// engineTUI is tuiEngine over today's engine.
type engineTUI struct {
	e *engine
	c *cli

	mu     sync.Mutex
	layers map[string]int64 // a layer's objects' bytes: layers never change
}

func (a *engineTUI) list() ([]tuiEnv, error) {
	metas, errs := a.e.s.listMeta()
	envs := make([]tuiEnv, 0, len(metas))
	for _, m := range metas {
		envs = append(envs, a.row(m, a.e.state(m)))
	}
	if len(errs) > 0 {
		return envs, storeErrorf("%v (and %d more damaged; run 'karapace verify-store')", errs[0], len(errs)-1)
	}
	return envs, nil
}

func (a *engineTUI) env(id string) (*tuiEnv, error) {
	m, err := a.e.s.getMeta(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	e := a.row(m, a.e.state(m))
	return &e, nil
}

func (a *engineTUI) row(m *envMeta, state envState) tuiEnv {
	updated, _ := time.Parse(time.RFC3339, m.UpdatedAt)
	var size int64
	for _, h := range m.layerRefs() {
		n := a.layerSize(h)
		if n < 0 {
			size = -1
			break
		}
		size += n
	}
	return tuiEnv{EnvID: m.EnvID, ShortID: m.ShortID, Name: m.Name, State: state, Size: size, Updated: updated}
}

// layerSize is what a layer's objects take in the store; -1 if unknown.
func (a *engineTUI) layerSize(h string) int64 {
	a.mu.Lock()
	n, ok := a.layers[h]
	a.mu.Unlock()
	if ok {
		return n
	}
	l, err := a.e.s.getLayer(h)
	if err != nil {
		return -1
	}
	seen := map[string]bool{}
	for _, o := range append([]string{l.TarHash}, l.ObjectRefs...) {
		if seen[o] {
			continue
		}
		seen[o] = true
		size, err := a.e.s.objectSize(o)
		if err != nil {
			return -1
		}
		n += size
	}
	a.mu.Lock()
	a.layers[h] = n
	a.mu.Unlock()
	return n
}

func (a *engineTUI) detail(id string) (*tuiDetail, error) {
	m, err := a.e.s.getMeta(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info := a.e.info(m)
	d := &tuiDetail{tuiEnv: a.row(m, info.State), Pid: info.Pid, Created: m.CreatedAt, Manifests: m.manifests()}
	d.Layers = append(d.Layers, tuiLayer{Kind: "base", Hash: m.BaseLayer, Size: a.layerSize(m.BaseLayer)})
	for _, h := range m.DependencyLayers {
		d.Layers = append(d.Layers, tuiLayer{Kind: "packages", Hash: h, Size: a.layerSize(h)})
	}
	if m.PolicyLayer != "" {
		d.Layers = append(d.Layers, tuiLayer{Kind: "policy", Hash: m.PolicyLayer, Size: a.layerSize(m.PolicyLayer)})
	}
	for _, h := range m.Snapshots {
		d.Snapshots = append(d.Snapshots, tuiLayer{Kind: "snapshot", Hash: h, Size: a.layerSize(h), Current: h == m.UpperLayer})
	}
	l, err := a.e.lockOf(m)
	if err != nil {
		d.LockErr = err.Error()
		return d, nil
	}
	var names []string
	for _, p := range l.Packages {
		names = append(names, p.Name+" "+p.Version)
	}
	d.Lock = [][2]string{{"base image", l.BaseImage}, {"image digest", l.BaseImageDigest}, {"backend", l.Backend},
		{"packages", strings.TrimSuffix(fmt.Sprintf("%d: %s", len(l.Packages), strings.Join(names, ", ")), ": ")}}
	for _, p := range protections(l, a.e.getenv) {
		if p[0] != "mounts" { // listed below, one a line
			d.Lock = append(d.Lock, p)
		}
	}
	for _, mt := range l.Mounts {
		d.Mounts = append(d.Mounts, mt.String())
	}
	return d, nil
}

func (a *engineTUI) rename(id, name string) error {
	_, err := a.e.rename(id, name)
	return err
}

func (a *engineTUI) setState(id string, to envState) error {
	_, err := a.e.setState(id, to, "")
	return err
}

func (a *engineTUI) destroy(id string) error {
	_, err := a.e.destroy(id)
	return err
}

func (a *engineTUI) commit(id string) (string, error) {
	_, h, err := a.e.commit(id)
	return h, err
}

func (a *engineTUI) restore(id, snap string) error {
	_, _, err := a.e.restore(id, snap, false) // uncommitted changes are refused, not lost
	return err
}

func (a *engineTUI) gc(ctx context.Context) (gcReport, error) {
	return a.e.s.gc(ctx, gcOptions{})
}

func (a *engineTUI) enter(id string) (int, error) {
	sigs := catchSignals(true)
	defer sigs.stop()
	es := a.c.execSpec(nil, true, true)
	es.Signals = sigs
	return a.e.run(id, es)
}

func (a *engineTUI) watch() (<-chan string, func(), error) {
	w, err := watchStore(a.e.s, func(id string) (int, bool) {
		m, err := a.e.s.getMeta(id)
		if err != nil {
			return 0, false
		}
		return a.e.running(m)
	})
	if err != nil {
		return nil, nil, err
	}
	return w.changes(), w.close, nil
}
