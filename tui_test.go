package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tuiNow is the clock of the model tests: the goldens do not age.
var tuiNow = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

// fakeEnvs are n environments of every state, some without a name,
// their sizes and ages spread.
func fakeEnvs(n int) []tuiEnv {
	states := []envState{stateBuilt, stateRunning, stateFrozen, stateArchived, stateBuilt, stateDefined}
	names := []string{"web", "", "db", "tools", "web-old", "", "docs", "api"}
	envs := make([]tuiEnv, n)
	for i := range envs {
		id := storeBlake3Hex([]byte(fmt.Sprint("env-", i)))
		name := names[i%len(names)]
		if name != "" && i >= len(names) {
			name += fmt.Sprint("-", i)
		}
		envs[i] = tuiEnv{EnvID: id, ShortID: id[:12], Name: name, State: states[i%len(states)],
			Size: int64(i*7919%5000) << 20, Updated: tuiNow.Add(-time.Duration(i*i*37) * time.Minute)}
	}
	return envs
}

func fakeDetail(e tuiEnv) *tuiDetail {
	h := func(s string) string { return storeBlake3Hex([]byte(s)) }
	return &tuiDetail{
		tuiEnv: e, Pid: 4242, Created: "2026-11-30T09:15:00Z", Manifests: []string{"/home/dev/web/karapace.toml", "/home/dev/web-copy/karapace.toml"},
		Lock: [][2]string{{"base image", "debian/bookworm"}, {"image digest", "sha256:" + strings.Repeat("ab", 32)},
			{"backend", "namespace"}, {"packages", "2: curl 7.88.1-10+deb12u12, git 1:2.39.5-0+deb12u2"}, {"network", "shared with the host"}},
		Layers:    []tuiLayer{{Kind: "base", Hash: h("base"), Size: 90 << 20}, {Kind: "packages", Hash: h("deps"), Size: 31 << 20}},
		Snapshots: []tuiLayer{{Kind: "snapshot", Hash: h("s1"), Size: 12 << 10}, {Kind: "snapshot", Hash: h("s2"), Size: 3 << 20, Current: true}},
		Mounts:    []string{"workspace /home/dev/web:/workspace (rw)", "cache /home/dev/.cache:/cache (ro)"},
	}
}

func newTestModel(envs []tuiEnv, w, h int) *tuiModel {
	m := newTUIModel("/home/dev/.local/share/karapace", func() time.Time { return tuiNow })
	m.resize(w, h)
	m.setEnvs(envs)
	return m
}

// press types keys into the model and returns the commands they gave.
func press(m *tuiModel, keys ...key) []tuiCmd {
	var cmds []tuiCmd
	for _, k := range keys {
		cmds = append(cmds, m.key(k)...)
	}
	return cmds
}

func typeText(m *tuiModel, s string) []tuiCmd {
	var keys []key
	for _, r := range s {
		keys = append(keys, key(string(r)))
	}
	return press(m, keys...)
}

// checkScreen compares the model's frame (text, then styles) with
// testdata/tui/NAME.screen; go test -run TestTUIScreens -update rewrites
// them.
func checkScreen(t *testing.T, name string, m *tuiModel) {
	t.Helper()
	s := newScreen(m.w, m.h)
	m.render(s)
	got := fmt.Sprintf("%dx%d\n%s--- styles\n%s", m.w, m.h, s.text(), s.styles())
	path := filepath.Join("testdata", "tui", name+".screen")
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run TestTUIScreens -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("screen %s differs from %s:\n%s\nwant:\n%s", name, path, got, want)
	}
}

// Every view at the smallest size, a usual one and a large one, and the
// list in each of its modes, against the golden screens.
func TestTUIScreens(t *testing.T) {
	sizes := [][2]int{{40, 10}, {80, 24}, {132, 40}}
	for _, sz := range sizes {
		w, h := sz[0], sz[1]
		tag := fmt.Sprintf("%dx%d", w, h)
		m := newTestModel(fakeEnvs(30), w, h)
		checkScreen(t, "list-"+tag, m)
		press(m, "j", "j", "j")
		checkScreen(t, "list-moved-"+tag, m)
		press(m, "G")
		checkScreen(t, "list-end-"+tag, m)

		m = newTestModel(fakeEnvs(30), w, h)
		press(m, "j", keyEnter)
		m.done(tuiResult{cmd: tuiCmd{op: opDetail, env: m.detailEnv}, detail: fakeDetail(*m.selected())})
		checkScreen(t, "detail-"+tag, m)
		press(m, keyPgDn)
		checkScreen(t, "detail-down-"+tag, m)
		press(m, "v", "j")
		checkScreen(t, "snapshots-"+tag, m)

		m = newTestModel(fakeEnvs(30), w, h)
		press(m, "?")
		checkScreen(t, "help-"+tag, m)
	}

	m := newTestModel(fakeEnvs(30), 80, 24)
	press(m, "/")
	typeText(m, "web")
	checkScreen(t, "list-filtering", m)
	press(m, keyEnter)
	checkScreen(t, "list-filtered", m)
	typeText(m, "/xyz")
	press(m, keyEnter)
	checkScreen(t, "list-filter-none", m)

	m = newTestModel(fakeEnvs(30), 80, 24)
	press(m, "s", "s", "S")
	checkScreen(t, "list-sorted-state-desc", m)
	press(m, "s")
	checkScreen(t, "list-sorted-size", m)

	m = newTestModel(fakeEnvs(30), 80, 24)
	press(m, "d")
	checkScreen(t, "list-confirm-destroy", m)
	press(m, "y")
	m.busySince = tuiNow.Add(-2300 * time.Millisecond)
	m.note("removing env/abc")
	checkScreen(t, "list-busy", m)

	m = newTestModel(fakeEnvs(30), 80, 24)
	press(m, "n", keyBackspace)
	typeText(m, "frontend")
	checkScreen(t, "list-rename", m)

	m = newTestModel(fakeEnvs(30), 80, 24)
	m.done(tuiResult{cmd: tuiCmd{op: opDestroy, label: "web", doing: "destroying"}, err: fmt.Errorf("environment 3ad2 is running; 'karapace stop 3ad2' first\nsecond line")})
	checkScreen(t, "list-error", m)

	checkScreen(t, "list-empty", newTestModel(nil, 80, 24))
	loading := newTUIModel("/home/dev/.local/share/karapace", func() time.Time { return tuiNow })
	loading.resize(80, 24)
	checkScreen(t, "list-loading", loading)
	checkScreen(t, "too-small", newTestModel(fakeEnvs(3), 39, 10))
}

func TestTUILayout(t *testing.T) {
	for _, c := range []struct {
		width, cols, name int
	}{
		{40, 3, 14}, {47, 3, 21}, {48, 4, 10}, {59, 4, 21}, {60, 5, 10}, {80, 5, 30}, {200, 5, 40},
	} {
		cols, name := tuiLayout(c.width)
		if len(cols) != c.cols || name != c.name {
			t.Errorf("width %d: %d columns, name %d; want %d, %d", c.width, len(cols), name, c.cols, c.name)
		}
		used := 2 + name
		for _, i := range cols {
			used += tuiColumns[i].width + 2
		}
		if used-2 > c.width {
			t.Errorf("width %d: the columns take %d", c.width, used-2)
		}
	}
}

func TestTUINavigation(t *testing.T) {
	m := newTestModel(fakeEnvs(100), 80, 24)
	n := m.listRows()
	press(m, "k", keyUp)
	if m.sel != 0 || m.top != 0 {
		t.Fatalf("above the first: sel %d top %d", m.sel, m.top)
	}
	press(m, "j", keyDown)
	if m.sel != 2 {
		t.Fatalf("j, Down: sel %d", m.sel)
	}
	press(m, "G")
	if m.sel != 99 || m.top != 100-n {
		t.Fatalf("G: sel %d top %d", m.sel, m.top)
	}
	press(m, "j")
	if m.sel != 99 {
		t.Fatalf("below the last: sel %d", m.sel)
	}
	press(m, keyPgUp)
	if m.sel != 99-n || m.top != m.sel {
		t.Fatalf("PgUp: sel %d top %d", m.sel, m.top)
	}
	press(m, keyHome)
	if m.sel != 0 || m.top != 0 {
		t.Fatalf("Home: sel %d top %d", m.sel, m.top)
	}
	press(m, keyEnd, "g", keyPgDn)
	if m.sel != n || m.top != 1 {
		t.Fatalf("PgDn: sel %d top %d", m.sel, m.top)
	}
	// The selection stays on its environment through a sort, a reload
	// and a resize.
	id := m.selected().EnvID
	press(m, "s", "S")
	if m.selected().EnvID != id || m.sel < m.top || m.sel >= m.top+m.listRows() {
		t.Fatalf("after sorting: %s at %d (top %d)", m.selected().EnvID, m.sel, m.top)
	}
	m.setEnvs(fakeEnvs(100))
	m.resize(40, 10)
	if m.selected().EnvID != id || m.sel < m.top || m.sel >= m.top+m.listRows() {
		t.Fatalf("after a reload and resize: %s at %d (top %d, %d rows)", m.selected().EnvID, m.sel, m.top, m.listRows())
	}
	// Gone, the selection stays where it was.
	envs := fakeEnvs(100)
	for i := range envs {
		if envs[i].EnvID == id {
			envs = append(envs[:i], envs[i+1:]...)
			break
		}
	}
	at := m.sel
	m.setEnvs(envs)
	if m.sel != at || m.selected() == nil {
		t.Fatalf("its environment gone: sel %d, was %d", m.sel, at)
	}
	// Sorting orders the rows.
	m = newTestModel(fakeEnvs(30), 80, 24)
	for col := range tuiColumns {
		for _, desc := range []bool{false, true} {
			m.sortCol, m.desc = col, desc
			m.order()
			for i := 1; i < len(m.rows); i++ {
				c := tuiColumns[col].cmp(&m.envs[m.rows[i-1]], &m.envs[m.rows[i]])
				if desc && c < 0 || !desc && c > 0 {
					t.Fatalf("sorted by %s (desc %v): row %d before %d", tuiColumns[col].name, desc, i-1, i)
				}
			}
		}
	}
}

// A change heard puts one row anew, keeping the selection on its
// environment.
func TestTUISetRow(t *testing.T) {
	m := newTestModel(fakeEnvs(10), 80, 24)
	press(m, "j", "j")
	sel := m.selected().EnvID
	e := *m.find(fakeEnvs(10)[4].EnvID)
	e.State, e.Name = stateRunning, "zzz-last"
	m.done(tuiResult{cmd: tuiCmd{op: opRow, env: e.EnvID}, envs: []tuiEnv{e}})
	if got := m.envs[m.rows[9]]; got.EnvID != e.EnvID || got.State != stateRunning || len(m.envs) != 10 {
		t.Fatalf("changed row: the last is %+v", got)
	}
	if m.selected().EnvID != sel {
		t.Fatal("the selection moved to another environment")
	}
	m.done(tuiResult{cmd: tuiCmd{op: opRow, env: e.EnvID}})
	if len(m.envs) != 9 || m.find(e.EnvID) != nil {
		t.Fatal("a removed environment stays")
	}
	n := tuiEnv{EnvID: strings.Repeat("0", 64), ShortID: strings.Repeat("0", 12), Name: "zzzz", State: stateBuilt}
	m.done(tuiResult{cmd: tuiCmd{op: opRow, env: n.EnvID}, envs: []tuiEnv{n}})
	if len(m.envs) != 10 || m.envs[m.rows[9]].EnvID != n.EnvID || m.selected().EnvID != sel {
		t.Fatal("a new environment is not in its place")
	}
	m.done(tuiResult{cmd: tuiCmd{op: opRow, env: n.EnvID}, err: fmt.Errorf("metadata file x is corrupt\nmore")})
	if len(m.envs) != 10 || m.status != "metadata file x is corrupt" {
		t.Fatalf("an unreadable row: %d rows, status %q", len(m.envs), m.status)
	}
}

func TestTUIFilter(t *testing.T) {
	m := newTestModel(fakeEnvs(30), 80, 24)
	press(m, "/")
	typeText(m, "WEB")
	for _, r := range m.rows {
		if !strings.Contains(m.envs[r].Name, "web") {
			t.Fatalf("/WEB let %q through", m.envs[r].Name)
		}
	}
	if len(m.rows) != 8 { // web, web-old and their numbered twins
		t.Fatalf("/WEB: %d rows", len(m.rows))
	}
	press(m, keyEnter, "j")
	if m.mode != modeNormal || m.filter != "WEB" || m.sel != 1 {
		t.Fatalf("after Enter: mode %d filter %q sel %d", m.mode, m.filter, m.sel)
	}
	press(m, "/", keyCtrlU)
	typeText(m, "froz")
	for _, r := range m.rows {
		if m.envs[r].State != stateFrozen {
			t.Fatalf("/froz let a %s one through", m.envs[r].State)
		}
	}
	press(m, keyBackspace, keyBackspace, keyBackspace, keyBackspace)
	if len(m.rows) != 30 {
		t.Fatalf("an empty filter shows %d", len(m.rows))
	}
	typeText(m, m.envs[5].EnvID[20:30]) // any part of an env_id
	if len(m.rows) != 1 || m.rows[0] != 5 {
		t.Fatalf("by env_id: %v", m.rows)
	}
	press(m, keyEsc)
	if m.filter != "" || len(m.rows) != 30 || m.mode != modeNormal {
		t.Fatal("Esc while typing clears the filter")
	}
	press(m, "/")
	typeText(m, "db")
	press(m, keyEnter)
	if cmds := press(m, keyEsc); cmds != nil || m.filter != "" {
		t.Fatalf("Esc in the filtered list clears the filter, not quits: %v", cmds)
	}
	if cmds := press(m, keyEsc); len(cmds) != 1 || cmds[0].op != opQuit {
		t.Fatalf("Esc in the list quits: %v", cmds)
	}
	press(m, "/")
	typeText(m, strings.Repeat("x", 100))
	if len(m.input) != tuiMaxInput {
		t.Fatalf("the filter grew to %d", len(m.input))
	}
}

// Each destructive action asks y/N, and only y does it; one long
// command at a time.
func TestTUIActions(t *testing.T) {
	m := newTestModel(fakeEnvs(6), 80, 24)
	m.sortCol = 0 // SHORT_ID: the fakes' order does not matter
	m.order()
	pick := func(state envState) *tuiEnv {
		for i, r := range m.rows {
			if m.envs[r].State == state {
				m.move(i)
				return &m.envs[r]
			}
		}
		t.Fatalf("no %s environment", state)
		return nil
	}
	e := pick(stateBuilt)
	for _, c := range []struct {
		k      key
		op     tuiOp
		arg    string
		prompt string
	}{
		{"d", opDestroy, "", "destroy " + e.label()},
		{"f", opState, "frozen", "freeze " + e.label()},
		{"a", opState, "archived", "archive " + e.label()},
		{"x", opGC, "", "collect garbage"},
	} {
		for _, no := range []key{"n", "N", keyEsc, keyEnter, "q"} {
			if cmds := press(m, c.k); cmds != nil || m.mode != modeConfirm || !strings.Contains(m.prompt, c.prompt) {
				t.Fatalf("%s: %v, mode %d, prompt %q", c.k, cmds, m.mode, m.prompt)
			}
			if cmds := press(m, no); cmds != nil || m.status != "cancelled" || m.mode != modeNormal {
				t.Fatalf("%s then %q: %v, status %q", c.k, no, cmds, m.status)
			}
		}
		cmds := press(m, c.k, "y")
		if len(cmds) != 1 || cmds[0].op != c.op || cmds[0].arg != c.arg || (c.op != opGC && cmds[0].env != e.EnvID) {
			t.Fatalf("%s y: %+v", c.k, cmds)
		}
		if m.busy.op != c.op {
			t.Fatalf("%s y: busy %+v", c.k, m.busy)
		}
		// Busy: no second long command, nor a shell; moving is fine.
		for _, k := range []key{"d", "f", "a", "c", "n", "e", "x"} {
			if cmds := press(m, k); cmds != nil || m.mode != modeNormal || !strings.HasPrefix(m.status, "wait: ") {
				t.Fatalf("%s while busy: %v, mode %d, status %q", k, cmds, m.mode, m.status)
			}
		}
		press(m, "j", "k")
		// Done: the environment's row is read again, the whole list
		// after a gc.
		next := m.done(tuiResult{cmd: cmds[0]})
		want := tuiCmd{op: opRow, env: e.EnvID}
		if c.op == opGC {
			want = tuiCmd{op: opReload}
		}
		if m.busy.op != "" || len(next) != 1 || next[0] != want {
			t.Fatalf("%s done: busy %+v, next %v", c.k, m.busy, next)
		}
	}
	// Unfreezing and unarchiving lose nothing: no question.
	if cmds := press(m, "f"); len(cmds) != 0 {
		t.Fatal("f on a built one asks first")
	}
	press(m, keyEsc)
	for state, k := range map[envState]key{stateFrozen: "f", stateArchived: "a"} {
		e := pick(state)
		cmds := press(m, k)
		if len(cmds) != 1 || cmds[0].op != opState || cmds[0].arg != string(stateBuilt) || cmds[0].env != e.EnvID {
			t.Fatalf("%s on a %s one: %+v", k, state, cmds)
		}
		m.done(tuiResult{cmd: cmds[0]})
	}
	// An archived one is not entered; a built one is, and commits.
	pick(stateArchived)
	if cmds := press(m, "e"); cmds != nil || !m.statusErr {
		t.Fatalf("e on an archived one: %v %q", cmds, m.status)
	}
	e = pick(stateBuilt)
	if cmds := press(m, "e"); len(cmds) != 1 || cmds[0].op != opEnter || cmds[0].env != e.EnvID || m.busy.op != "" {
		t.Fatalf("e: %+v busy %+v", cmds, m.busy)
	}
	m.done(tuiResult{cmd: tuiCmd{op: opEnter, env: e.EnvID, label: e.label()}, text: "exit status 3"})
	if m.status != "back from "+e.label()+" (exit status 3)" {
		t.Fatalf("after enter: %q", m.status)
	}
	cmds := press(m, "c")
	if len(cmds) != 1 || cmds[0].op != opCommit || m.busy.op != opCommit {
		t.Fatalf("c: %+v", cmds)
	}
	m.done(tuiResult{cmd: cmds[0], text: "snapshot 0123456789ab"})
	if m.status != "committed "+e.label()+": snapshot 0123456789ab" {
		t.Fatalf("committed: %q", m.status)
	}
	// An error is shown, its first line.
	cmds = press(m, "d", "y")
	m.done(tuiResult{cmd: cmds[0], err: fmt.Errorf("it is running\nmore")})
	if m.status != "destroying "+e.label()+": it is running" || !m.statusErr {
		t.Fatalf("error: %q", m.status)
	}
	// Ctrl-C and a hung-up terminal quit from anywhere.
	for _, setup := range [][]key{nil, {"/"}, {"n"}, {"d"}, {keyEnter}, {"?"}} {
		m := newTestModel(fakeEnvs(3), 80, 24)
		press(m, setup...)
		for _, k := range []key{keyCtrlC, keyHangup} {
			if cmds := press(m, k); len(cmds) != 1 || cmds[0].op != opQuit {
				t.Fatalf("%v then %s: %v", setup, k, cmds)
			}
		}
	}
}

func TestTUIRename(t *testing.T) {
	m := newTestModel(fakeEnvs(3), 80, 24)
	e := m.selected()
	press(m, "n")
	if m.mode != modeRename || string(m.input) != e.Name {
		t.Fatalf("n: mode %d input %q", m.mode, string(m.input))
	}
	press(m, keyCtrlU)
	typeText(m, "new name")
	press(m, keyBackspace, keyBackspace, keyBackspace, keyBackspace, keyBackspace)
	cmds := press(m, "-", "x", keyEnter)
	if len(cmds) != 1 || cmds[0].op != opRename || cmds[0].arg != "new-x" || cmds[0].env != e.EnvID {
		t.Fatalf("rename: %+v", cmds)
	}
	m.done(tuiResult{cmd: cmds[0]})
	press(m, "n")
	if cmds := press(m, keyEnter); cmds != nil || m.status != "rename cancelled" {
		t.Fatalf("the same name again: %v %q", cmds, m.status)
	}
	press(m, "n", "z")
	if cmds := press(m, keyEsc); cmds != nil || m.mode != modeNormal || m.status != "rename cancelled" {
		t.Fatalf("Esc: %v", cmds)
	}
	// Keys are text while typing.
	press(m, "n", keyCtrlU)
	if cmds := typeText(m, "qdfy?"); cmds != nil || string(m.input) != "qdfy?" || m.mode != modeRename {
		t.Fatalf("typing keys: %v %q", cmds, string(m.input))
	}
}

func TestTUIViews(t *testing.T) {
	m := newTestModel(fakeEnvs(10), 80, 24)
	press(m, "j")
	e := *m.selected()
	cmds := press(m, keyEnter)
	if m.view != viewDetail || len(cmds) != 1 || cmds[0].op != opDetail || cmds[0].env != e.EnvID {
		t.Fatalf("Enter: view %d, %v", m.view, cmds)
	}
	// A detail of another environment (read before) is not shown.
	m.done(tuiResult{cmd: tuiCmd{op: opDetail, env: "other"}, detail: fakeDetail(fakeEnvs(1)[0])})
	if m.detail != nil {
		t.Fatal("took another environment's detail")
	}
	m.done(tuiResult{cmd: tuiCmd{op: opDetail, env: e.EnvID}, detail: fakeDetail(e)})
	// Actions apply to the environment shown; r reads both again.
	if cmds := press(m, "d", "y"); len(cmds) != 1 || cmds[0].env != e.EnvID {
		t.Fatalf("d in the detail: %v", cmds)
	}
	next := m.done(tuiResult{cmd: tuiCmd{op: opDestroy, env: e.EnvID, label: e.label(), doing: "destroying", did: "destroyed"}})
	if m.view != viewList || len(next) != 1 {
		t.Fatalf("destroyed the one shown: view %d, next %v", m.view, next)
	}
	press(m, keyEnter, "v")
	if m.view != viewSnapshots {
		t.Fatal("v: no snapshots view")
	}
	d := fakeDetail(*m.selected())
	m.done(tuiResult{cmd: tuiCmd{op: opDetail, env: m.detailEnv}, detail: d})
	press(m, "G", "j")
	if m.snapSel != len(d.Snapshots)-1 {
		t.Fatalf("snapshot selection %d", m.snapSel)
	}
	press(m, "g", keyEnter)
	if m.mode != modeConfirm || !strings.Contains(m.prompt, d.Snapshots[0].Hash[:12]) {
		t.Fatalf("Enter on a snapshot: %q", m.prompt)
	}
	cmds = press(m, "y")
	if len(cmds) != 1 || cmds[0].op != opRestore || cmds[0].arg != d.Snapshots[0].Hash {
		t.Fatalf("restore: %+v", cmds)
	}
	next = m.done(tuiResult{cmd: cmds[0]})
	if len(next) != 2 || next[1].op != opDetail || m.view != viewSnapshots {
		t.Fatalf("restored: next %v, view %d", next, m.view)
	}
	press(m, "?")
	if m.view != viewHelp {
		t.Fatal("? shows help")
	}
	// Gone elsewhere while shown (renaming it): back to the list.
	gone := newTestModel(fakeEnvs(3), 80, 24)
	press(gone, keyEnter, "n")
	gone.setRow(gone.detailEnv, nil)
	s := newScreen(80, 24)
	gone.render(s)
	gone.done(tuiResult{cmd: tuiCmd{op: opDetail, env: gone.detailEnv}})
	if gone.view != viewList || gone.status != "the environment shown is gone" {
		t.Fatalf("its detail gone: view %d, %q", gone.view, gone.status)
	}
	if cmds := press(gone, keyEnter); cmds != nil || gone.mode != modeNormal || gone.status != "rename cancelled" {
		t.Fatalf("a name for nothing: %v %q", cmds, gone.status)
	}
	press(m, "j", "G")
	if m.pageTop != len(tuiHelp)-m.pageRows() {
		t.Fatalf("help scrolled to %d", m.pageTop)
	}
	for _, want := range []tuiView{viewSnapshots, viewDetail, viewList} {
		press(m, "q")
		if m.view != want {
			t.Fatalf("q: view %d, want %d", m.view, want)
		}
	}
	if cmds := press(m, "q"); len(cmds) != 1 || cmds[0].op != opQuit {
		t.Fatalf("q in the list: %v", cmds)
	}
	// No environment: nothing to act on.
	m = newTestModel(nil, 80, 24)
	for _, k := range []key{"d", "f", "n", "e", keyEnter, "v", "c"} {
		if cmds := press(m, k); cmds != nil || m.mode != modeNormal {
			t.Fatalf("%s with no environment: %v", k, cmds)
		}
	}
}

// A frame of the list of a thousand environments: drawn, and written as
// its difference from the one before, after one step down.
func BenchmarkTUIFrame(b *testing.B) {
	for _, sz := range [][2]int{{80, 24}, {200, 60}} {
		b.Run(fmt.Sprintf("%dx%d", sz[0], sz[1]), func(b *testing.B) {
			m := newTestModel(fakeEnvs(1000), sz[0], sz[1])
			prev, s := newScreen(m.w, m.h), newScreen(m.w, m.h)
			m.render(prev)
			b.ReportAllocs()
			for b.Loop() {
				if m.sel == len(m.rows)-1 {
					m.move(0)
				}
				m.key("j")
				s.clear()
				m.render(s)
				s.diff(prev, true)
				prev, s = s, prev
			}
		})
	}
}

// Filtering a thousand environments, which each keystroke of a filter
// does.
func BenchmarkTUIFilter(b *testing.B) {
	m := newTestModel(fakeEnvs(1000), 80, 24)
	m.filter = "web"
	for b.Loop() {
		m.arrange()
	}
}

// tuiSession runs karapace tui in a real terminal (tmux) in k's store.
// The script says something before the UI, which must show again after
// it, then the exit status and the terminal's mode.
func (k *kpRun) tuiSession(t *testing.T, cols, rows int) *tmuxSession {
	t.Helper()
	script := writeFile(t, t.TempDir(), "tui.sh", fmt.Sprintf("#!/bin/sh\ncd %q\necho before-the-ui\nenv -i TERM=\"$TERM\" %s %q tui\necho tui-exited-$?\nstty -a\nsleep 60\n",
		k.dir, strings.Join(quoteAll(k.env), " "), os.Args[0]))
	os.Chmod(script, 0o755)
	term := newTmuxSession(t, script, cols, rows)
	term.waitFor(" karapace  ")
	return term
}

// waitUntil waits (15 s at most) until the terminal shows what ok
// wants, and returns it.
func (s *tmuxSession) waitUntil(what string, ok func(pane string) bool) string {
	s.t.Helper()
	var pane string
	for i := 0; i < 150; i++ {
		if pane = s.do("capture-pane", "-p"); ok(pane) {
			return pane
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("the terminal never showed %s:\n%s", what, pane)
	return ""
}

func (s *tmuxSession) waitGone(text string) string {
	s.t.Helper()
	return s.waitUntil("no "+text, func(p string) bool { return !strings.Contains(p, text) })
}

// uiPID is the pid of the program the pane's shell runs.
func (s *tmuxSession) uiPID() int {
	s.t.Helper()
	sh := strings.TrimSpace(s.do("display-message", "-p", "#{pane_pid}"))
	data, err := os.ReadFile("/proc/" + sh + "/task/" + sh + "/children")
	var pid int
	if _, serr := fmt.Sscan(string(data), &pid); err != nil || serr != nil {
		s.t.Fatalf("the UI's pid (children of %s): %q %v", sh, data, err)
	}
	return pid
}

// restored checks that the UI gave the terminal back: its exit status,
// the screen from before, the terminal's mode as the shell left it.
func (s *tmuxSession) restored(code int) {
	s.t.Helper()
	pane := s.waitUntil("the UI gone and stty's output", func(p string) bool {
		return strings.Contains(p, fmt.Sprintf("tui-exited-%d", code)) && strings.Contains(p, "isig")
	})
	mustContain(s.t, "the terminal after the UI", pane, "before-the-ui")
	modes := map[string]bool{}
	for _, f := range strings.Fields(pane) {
		modes[f] = true
	}
	for _, m := range []string{"icanon", "echo", "isig", "icrnl", "opost", "onlcr", "iexten"} {
		if !modes[m] || modes["-"+m] {
			s.t.Fatalf("the terminal is left without %s:\n%s", m, pane)
		}
	}
}

func rowOrder(pane string, names ...string) bool {
	last := -1
	for _, n := range names {
		i := strings.Index(pane, "  "+n+" ")
		if i <= last {
			return false
		}
		last = i
	}
	return true
}

// The UI on a real terminal, on environments of the mock backend: keys,
// filter, sort, rename, freeze, archive and destroy with their
// questions, a change made elsewhere, resizing, quitting.
func TestTUIWithTmux(t *testing.T) {
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	for i, name := range []string{"alpha", "beta", "gamma"} {
		k.writeManifest(mockManifest(fmt.Sprintf(`"p%d"`, i)))
		k.ok("build", "--name", name)
	}
	state := func(name string) envState {
		var envs []envInfo
		k.jsonOut(&envs, "list")
		for _, e := range envs {
			if e.Name == name {
				return e.State
			}
		}
		return ""
	}
	term := k.tuiSession(t, 100, 30)
	term.waitUntil("the three in order", func(p string) bool {
		return strings.Contains(p, "3 environments") && rowOrder(p, "alpha", "beta", "gamma")
	})

	term.keys("j", "Down", "Enter")
	term.waitFor(" karapace  gamma  ")
	term.waitFor("mock")
	term.keys("Escape")
	term.waitFor("3 environments")

	term.keys("/", "e", "t", "a", "Enter")
	pane := term.waitUntil("the filter applied", func(p string) bool { return strings.Contains(p, "1 of 3 environments") })
	if !strings.Contains(pane, "  beta ") || strings.Contains(pane, "alpha") {
		t.Fatalf("filtered by /eta:\n%s", pane)
	}
	term.keys("Escape")
	term.waitFor("3 environments")

	term.keys("S")
	term.waitUntil("the order reversed", func(p string) bool { return rowOrder(p, "gamma", "beta", "alpha") })
	term.keys("S", "s")
	term.waitFor("sorted by state")
	term.keys("s", "s", "s", "s") // back to the name
	term.waitUntil("sorted by name", func(p string) bool {
		return strings.Contains(p, "sorted by name") && rowOrder(p, "alpha", "beta", "gamma")
	})

	term.keys("g", "n", "C-u")
	term.do("send-keys", "-l", "delta")
	term.keys("Enter")
	term.waitFor("renamed alpha")
	if state("delta") != stateBuilt {
		t.Fatal("the store has no delta after the rename")
	}
	// The selection follows it to its new place.
	term.keys("f")
	term.waitFor("freeze delta (no more writes)? y/N")
	term.keys("n")
	term.waitFor("cancelled")
	if state("delta") != stateBuilt {
		t.Fatal("froze after n")
	}
	term.keys("f", "y")
	term.waitFor("froze delta")
	term.waitUntil("delta frozen", func(p string) bool { return regexp.MustCompile(`delta +frozen`).MatchString(p) })
	if state("delta") != stateFrozen {
		t.Fatal("not frozen in the store")
	}
	term.keys("a", "y")
	term.waitFor("archived delta")
	if state("delta") != stateArchived {
		t.Fatal("not archived in the store")
	}
	term.keys("e")
	term.waitFor("delta is archived and cannot be entered")
	term.keys("d")
	term.waitFor("destroy delta (")
	term.keys("Escape")
	term.waitFor("cancelled")
	term.keys("d", "y")
	term.waitFor("destroyed delta")
	term.waitFor("2 environments")
	if state("delta") != "" {
		t.Fatal("delta is still in the store")
	}

	// A change made elsewhere shows with no key pressed.
	k.ok("rename", "beta", "bravo")
	term.waitUntil("the rename made elsewhere", func(p string) bool { return strings.Contains(p, "  bravo ") && !strings.Contains(p, "beta") })

	term.do("resize-window", "-x", "40", "-y", "10")
	term.waitFor("NAME ^          STATE")
	term.do("resize-window", "-x", "30", "-y", "8")
	term.waitFor("needs 40x10")
	term.do("resize-window", "-x", "132", "-y", "40")
	pane = term.waitUntil("the wide layout", func(p string) bool { return strings.Contains(p, "UPDATED") })
	if n := strings.Count(pane, "\n"); n < 39 {
		t.Fatalf("%d lines at 132x40:\n%s", n, pane)
	}

	term.keys("?")
	term.waitFor("collect garbage (asks y/N)")
	term.keys("q")
	term.waitFor("2 environments")
	term.keys("q")
	term.restored(0)
}

// Colour where it is allowed, none with NO_COLOR; the selection is
// reverse video either way.
func TestTUIColourWithTmux(t *testing.T) {
	k := newMockKP(t, `"p"`)
	k.ok("build", "--name", "one")
	colour := regexp.MustCompile(`\x1b\[(\d+;)*3[0-7]m`)
	for _, noColour := range []bool{false, true} {
		run := *k
		if noColour {
			run.env = append(append([]string{}, k.env...), "NO_COLOR=1")
		}
		term := run.tuiSession(t, 80, 24)
		term.waitFor("1 environment")
		pane := term.do("capture-pane", "-p", "-e")
		if colour.MatchString(pane) == noColour || !strings.Contains(pane, "7m") {
			t.Fatalf("NO_COLOR %v: colour %v, reverse %v:\n%q", noColour, colour.MatchString(pane), strings.Contains(pane, "7m"), pane)
		}
		term.keys("q")
		term.restored(0)
	}
}

// However the UI ends, the terminal is as it was: Ctrl-C, SIGTERM,
// SIGHUP, and a panic.
func TestTUIRestoresTerminal(t *testing.T) {
	k := newMockKP(t, `"p"`)
	k.ok("build", "--name", "one")
	t.Run("ctrl-c", func(t *testing.T) {
		term := k.tuiSession(t, 80, 24)
		term.waitFor("1 environment")
		term.keys("C-c")
		term.restored(0)
	})
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			term := k.tuiSession(t, 80, 24)
			term.waitFor("1 environment")
			term.keys("d") // a question open
			term.waitFor("destroy one")
			if err := unix.Kill(term.uiPID(), sig); err != nil {
				t.Fatal(err)
			}
			term.restored(128 + int(sig))
			if out := k.ok("list", "--quiet"); !strings.HasPrefix(out, "one\n") {
				t.Fatalf("the environment the question was about: %q", out)
			}
		})
	}
	t.Run("panic", func(t *testing.T) {
		script := writeFile(t, t.TempDir(), "tui.sh", fmt.Sprintf("#!/bin/sh\necho before-the-ui\nKARAPACE_TEST_HELPER=tui-panic %q\necho tui-exited-$?\nstty -a\nsleep 60\n", os.Args[0]))
		os.Chmod(script, 0o755)
		term := newTmuxSession(t, script, 120, 100) // the trace too
		term.restored(2)                            // Go's status for a panic
		term.waitFor("panic: the engine broke")
	})
}

// panicEngine breaks when asked for the list.
type panicEngine struct{ tuiEngine }

func (panicEngine) list() ([]tuiEnv, error) { panic("the engine broke") }
func (panicEngine) watch() (<-chan string, func(), error) {
	return nil, nil, errors.New("not watched")
}

func init() {
	testHelpers["tui-panic"] = func() {
		runTUI(panicEngine{}, os.Stdin, os.Stdout, "/nowhere", false)
	}
}

// A thousand environments: listed, paged, searched, one changed
// elsewhere shown.
func TestTUIThousandWithTmux(t *testing.T) {
	k := newMockKP(t, `"p"`)
	k.ok("build", "--name", "clone-0000")
	s, err := openStore(k.store)
	if err != nil {
		t.Fatal(err)
	}
	metas, _ := s.listMeta()
	for i := 1; i < 1000; i++ {
		m := *metas[0]
		m.EnvID = storeBlake3Hex([]byte(fmt.Sprint("clone", i)))
		m.ShortID, m.Name = m.EnvID[:12], fmt.Sprintf("clone-%04d", i)
		if err := s.writeMeta(&m); err != nil {
			t.Fatal(err)
		}
	}
	term := k.tuiSession(t, 100, 30)
	term.waitFor("1000 environments")
	term.keys("G")
	term.waitFor("1000/1000")
	term.waitFor("clone-0999")
	term.keys("PageUp", "PageUp")
	term.waitFor(fmt.Sprintf("%d/1000", 1000-2*27))
	term.keys("g")
	term.waitFor("1/1000")
	term.keys("/")
	term.do("send-keys", "-l", "clone-05")
	term.keys("Enter")
	term.waitFor("100 of 1000 environments")
	term.keys("Escape", "G")
	term.waitFor("1000/1000")
	k.ok("rename", "clone-0999", "zz-renamed-elsewhere")
	term.waitFor("zz-renamed-elsewhere")
	term.keys("q")
	term.restored(0)
}

// Not on a terminal, tui refuses and points at list.
func TestTUINeedsTerminal(t *testing.T) {
	k := newMockKP(t, `"p"`)
	k.ok("build")
	k.fails(2, "tui: not a terminal; use 'karapace list'", "tui")
	k.fails(2, "does not apply to the terminal UI", "--json", "tui")
	master, slave := openPTY(t)
	defer master.Close()
	cmd := k.cmd("", "tui")
	cmd.Stdin, cmd.Stdout = slave, slave
	cmd.Env = append(cmd.Env, "TERM=dumb")
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Run(); cmd.ProcessState.ExitCode() != 2 || !strings.Contains(errb.String(), "TERM=dumb") {
		t.Fatalf("TERM=dumb: %v %s", err, errb.String())
	}
	if code, _, errOut := runCLI(t, map[string]string{"KARAPACE_STORE": t.TempDir()}, "tui"); code != 2 || !strings.Contains(errOut, "not a terminal") {
		t.Fatalf("in-process, no stdin: %d %q", code, errOut)
	}
}

// A real environment of the namespace backend in the UI: an exec in
// another terminal shows it running and its end built again, with no key
// pressed; e enters it and comes back; c commits, v restores, x collects.
func TestTUIRealWithTmux(t *testing.T) {
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	k.ok("build", "--name", "demo")
	term := k.tuiSession(t, 100, 30)
	term.waitUntil("demo built", func(p string) bool { return regexp.MustCompile(`demo +built`).MatchString(p) })

	bg := k.cmd("", "exec", "demo", "--", "sh", "-c", "read line; exit 0")
	bg.Stdin = nil
	in, err := bg.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	term.waitUntil("demo running", func(p string) bool { return regexp.MustCompile(`demo +running`).MatchString(p) })
	in.Close()
	if err := bg.Wait(); err != nil {
		t.Fatalf("the exec: %v", err)
	}
	term.waitUntil("demo built again", func(p string) bool { return regexp.MustCompile(`demo +built`).MatchString(p) })

	term.keys("e")
	term.waitFor("entering demo")
	term.keys("echo inside-$((6*7)) $(cat /etc/debian_version | cut -c1-3)", "Enter")
	term.waitFor("inside-42 12.")
	term.keys("exit 3", "Enter")
	term.waitFor("back from demo (exit status 3)")
	term.waitUntil("demo built after the shell", func(p string) bool { return regexp.MustCompile(`demo +built`).MatchString(p) })

	term.keys("c")
	pane := term.waitUntil("the commit", func(p string) bool { return strings.Contains(p, "committed demo: snapshot ") })
	snap := regexp.MustCompile(`snapshot ([0-9a-f]{12})`).FindStringSubmatch(pane)[1]
	term.keys("v")
	term.waitFor(snap)
	term.keys("Enter")
	term.waitFor("restore demo to snapshot " + snap)
	term.keys("y")
	term.waitFor("restored demo: snapshot " + snap)
	term.waitFor("restored   " + snap)
	term.keys("q", "q", "x", "y")
	term.waitFor("collected garbage: removed ")
	var envs []envInfo
	k.jsonOut(&envs, "list")
	if len(envs) != 1 || envs[0].UpperLayer == "" || !strings.HasPrefix(envs[0].UpperLayer, snap) {
		t.Fatalf("after restore: %+v", envs)
	}
	term.keys("q")
	term.restored(0)
}

// Reading a store of a thousand environments, as the UI does at every
// change it hears: the metadata, each one's state and size.
func BenchmarkTUIList(b *testing.B) {
	dir := b.TempDir()
	tinyImage(b, filepath.Join(dir, "image.tar.gz"))
	env := map[string]string{"KARAPACE_STORE": filepath.Join(dir, "store"), "HOME": dir}
	manifest := writeFile(b, dir, "karapace.toml", mockManifest(`"p"`))
	if code, _, errOut := runCLI(b, env, "build", manifest); code != 0 {
		b.Fatalf("build: %s", errOut)
	}
	s, err := openStore(env["KARAPACE_STORE"])
	if err != nil {
		b.Fatal(err)
	}
	metas, _ := s.listMeta()
	for i := 1; i < 1000; i++ {
		m := *metas[0]
		m.EnvID = storeBlake3Hex([]byte(fmt.Sprint("clone", i)))
		m.ShortID = m.EnvID[:12]
		if err := s.writeMeta(&m); err != nil {
			b.Fatal(err)
		}
	}
	eng := &engineTUI{e: newEngine(s, func(k string) string { return env[k] }, nil), layers: map[string]int64{}}
	for b.Loop() {
		envs, err := eng.list()
		if err != nil || len(envs) != 1000 || envs[999].Size <= 0 {
			b.Fatalf("%d environments, %v", len(envs), err)
		}
	}
}
