package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	mrand "math/rand"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestWALRollback(t *testing.T) {
	s := newTestStore(t)
	kept := testEnv(t, s, "kept", "kept")
	l := mustLock(t, s, "build")
	envID := storeBlake3Hex([]byte("new env"))
	op, err := s.beginOp("build", envID)
	if err != nil {
		t.Fatal(err)
	}
	entry := s.path("wal", op.file())
	if _, err := os.Stat(entry); err != nil {
		t.Fatal("no WAL entry before the work starts")
	}
	// The forward actions, each after its rollback step.
	obj := mustPut(t, s, "new object")
	must(t, op.add(walStep{Op: walRemoveObject, Hash: obj}))
	lay, _ := s.putLayer(&layer{Kind: layerBase, TarHash: obj})
	must(t, op.add(walStep{Op: walRemoveLayer, Hash: lay}))
	envDir := filepath.Join(s.root, "env", envID)
	must(t, op.add(walStep{Op: walRemovePath, Path: envDir}))
	writeFile(t, envDir, "upper/file", "x")
	must(t, op.add(walStep{Op: walRename, Path: envDir + "/moved", From: envDir + "/upper"}))
	must(t, os.Rename(envDir+"/upper", envDir+"/moved"))
	must(t, op.saveMeta(kept.EnvID))
	changed := *kept
	changed.State = stateArchived
	must(t, s.putMeta(&changed))
	must(t, op.add(walStep{Op: walSetState, EnvID: kept.EnvID, State: "archived"}))
	must(t, op.saveMeta(envID))
	nm := &envMeta{EnvID: envID, ShortID: envID[:12], State: stateBuilt, BaseLayer: lay}
	must(t, s.putMeta(nm))
	l.unlock() // "crash": the entry stays

	raw, _ := os.ReadFile(entry)
	for _, w := range []string{`"op": "remove_object"`, `"op": "restore_meta"`, `"op": "rename"`, `"kind": "build"`} {
		if !bytes.Contains(raw, []byte(w)) {
			t.Errorf("WAL entry lacks %s:\n%s", w, raw)
		}
	}
	// Opening the store rolls back, newest step first.
	if _, err := openStore(s.root); err != nil {
		t.Fatal(err)
	}
	if s.hasObject(obj) || s.hasLayer(lay) {
		t.Error("object or layer not removed")
	}
	if _, err := os.Stat(envDir); err == nil {
		t.Error("env dir not removed")
	}
	if _, err := s.getMeta(envID); err == nil {
		t.Error("new metadata not removed")
	}
	if m, err := s.getMeta(kept.EnvID); err != nil || m.State != stateBuilt {
		t.Errorf("old metadata not restored: %+v %v", m, err)
	}
	if n := dirNames(t, s.path("wal")); len(n) != 0 {
		t.Errorf("WAL entries left: %v", n)
	}
	if rep, err := s.verify(context.Background()); err != nil || len(rep.Bad) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestWALRenameAndIdempotence(t *testing.T) {
	s := newTestStore(t)
	envDir := filepath.Join(s.root, "env", strings.Repeat("a", 64))
	writeFile(t, envDir, "upper/v1", "1")
	writeFile(t, envDir, "upper.new/v2", "2")
	l := mustLock(t, s, "restore")
	op, _ := s.beginOp("restore", "")
	must(t, op.add(walStep{Op: walRemovePath, Path: envDir + "/upper.new"}))
	must(t, op.add(walStep{Op: walRename, Path: envDir + "/upper.old", From: envDir + "/upper"}))
	must(t, os.Rename(envDir+"/upper", envDir+"/upper.old"))
	must(t, op.add(walStep{Op: walRename, Path: envDir + "/upper", From: envDir + "/upper.new"}))
	must(t, os.Rename(envDir+"/upper.new", envDir+"/upper"))
	// Recovery interrupted after its first step, then run again.
	must(t, s.undo(op.Steps[2]))
	n, err := s.recoverWAL()
	if err != nil || n != 1 {
		t.Fatal(n, err)
	}
	l.unlock()
	if names := dirNames(t, envDir); len(names) != 1 || names[0] != "upper" {
		t.Fatalf("env dir: %v", names)
	}
	if _, err := os.Stat(envDir + "/upper/v1"); err != nil {
		t.Fatal("the old upper is not back")
	}

	// A committed operation is finished, not rolled back.
	writeFile(t, envDir, "upper.old/x", "x")
	l = mustLock(t, s, "restore")
	op, _ = s.beginOp("restore", "")
	must(t, op.add(walStep{Op: walRemovePath, Path: envDir + "/upper"}))
	op.Committed, op.Cleanup = true, []string{envDir + "/upper.old"}
	must(t, op.write())
	if n, err := s.recoverWAL(); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	if names := dirNames(t, envDir); len(names) != 1 || names[0] != "upper" {
		t.Fatalf("committed op rolled back or not cleaned: %v", names)
	}
	op, _ = s.beginOp("restore", "")
	writeFile(t, envDir, "upper.old/x", "x")
	must(t, op.finish(envDir+"/upper.old"))
	if names := dirNames(t, envDir); len(names) != 1 || len(dirNames(t, s.path("wal"))) != 0 {
		t.Fatalf("finish: %v", names)
	}
	// rollback undoes at once.
	op, _ = s.beginOp("build", "")
	must(t, op.add(walStep{Op: walRemovePath, Path: envDir + "/tmp"}))
	writeFile(t, envDir, "tmp/x", "x")
	must(t, op.rollback())
	if _, err := os.Stat(envDir + "/tmp"); err == nil || len(dirNames(t, s.path("wal"))) != 0 {
		t.Fatal("rollback")
	}
	l.unlock()
}

func TestWALRefusesBadEntries(t *testing.T) {
	s := newTestStore(t)
	if _, err := s.beginOp("build", ""); err == nil || !strings.Contains(err.Error(), "lock is not held") {
		t.Fatalf("beginOp without lock: %v", err)
	}
	l := mustLock(t, s, "build")
	op, _ := s.beginOp("build", "")
	outside := t.TempDir()
	writeFile(t, outside, "precious", "x")
	for _, st := range []walStep{
		{Op: walRemovePath, Path: outside},
		{Op: walRemovePath, Path: s.root},
		{Op: walRemovePath, Path: s.root + "/env/../../x"},
		{Op: walRemovePath, Path: s.path("objects")},
		{Op: walRemovePath, Path: filepath.Join(s.root, "env")},
		{Op: walRemovePath, Path: "../x"},
		{Op: walRemovePath, Path: "env/../../x"},
		{Op: walRemovePath, Path: "store/objects"},
		{Op: walRemovePath, Path: "env"},
		{Op: walRename, Path: filepath.Join(s.root, "env", "x"), From: outside},
		{Op: walRemoveObject, Hash: "../x"},
		{Op: walRestoreMeta, EnvID: strings.Repeat("a", 64), Meta: "{}"},
		{Op: walSetState, EnvID: strings.Repeat("a", 64), State: "gone"},
		{Op: "format_disk"},
	} {
		if err := op.add(st); err == nil {
			t.Errorf("accepted %+v", st)
		}
	}
	// A symlink inside the root that leads out of it.
	must(t, os.Symlink(outside, filepath.Join(s.root, "env", "escape")))
	if err := op.add(walStep{Op: walRemovePath, Path: filepath.Join(s.root, "env", "escape", "precious")}); err == nil {
		t.Error("accepted a path through a symlink out of the root")
	}
	must(t, op.done())

	// Corrupt entries, and one naming a path outside, are reported, removed
	// and counted, and never replayed.
	os.WriteFile(s.path("wal", "garbage.json"), []byte("{not json"), 0o600)
	os.WriteFile(s.path("wal", "stray.tmp"), []byte("x"), 0o600)
	os.WriteFile(s.path("wal", "evil.json"), []byte(`{"id":"evil","kind":"build","started":"x","steps":[{"op":"remove_path","path":"`+outside+`"}]}`), 0o600)
	rel, _ := filepath.Rel(s.root, outside)
	os.WriteFile(s.path("wal", "evil2.json"), []byte(`{"id":"evil2","kind":"build","started":"x","steps":[{"op":"remove_path","path":"`+rel+`"}]}`), 0o600)
	logs := captureLog(t)
	s.out = logs.out
	n, err := s.recoverWAL()
	if err != nil || n != 4 {
		t.Fatalf("recoverWAL: %d %v", n, err)
	}
	mustContain(t, "warnings", logs.String(), "removing corrupt WAL entry "+s.path("wal", "garbage.json"), "evil.json", "evil2.json", "outside the store root")
	if _, err := os.Stat(filepath.Join(outside, "precious")); err != nil {
		t.Fatal("a WAL entry removed something outside the store")
	}
	if n := dirNames(t, s.path("wal")); len(n) != 0 {
		t.Fatalf("left: %v", n)
	}
	l.unlock()
}

func randHex(rng *mrand.Rand) string {
	b := make([]byte, 32)
	rng.Read(b)
	return hex.EncodeToString(b)
}

// A crashed restore (the old writable layer moved aside, the new one not
// in place yet) is rolled back however the store is reached next: moved
// to another directory, or opened by its real path after a symlink
// (Silverblue's /home → /var/home), also for an entry of an older
// version that recorded absolute paths.
func TestWALStoreReachedByAnotherPath(t *testing.T) {
	envID := strings.Repeat("e", 64)
	crash := func(t *testing.T, root string) {
		t.Helper()
		s, err := openStore(root)
		must(t, err)
		env := filepath.Join(s.root, "env", envID)
		writeFile(t, env, "upper/kept", "x")
		l := mustLock(t, s, "restore")
		op, err := s.beginOp("restore", envID)
		must(t, err)
		must(t, op.mkdir(env+"/upper.new"))
		must(t, op.rename(env+"/upper", env+"/upper.old"))
		raw, _ := os.ReadFile(s.path("wal", op.file()))
		mustContain(t, "WAL entry", string(raw), `"path": "env/`+envID+`/upper.old"`, `"from": "env/`+envID+`/upper"`)
		l.unlock() // the process dies here
	}
	rolledBack := func(t *testing.T, root string) {
		t.Helper()
		s, err := openStore(root)
		must(t, err)
		env := filepath.Join(s.root, "env", envID)
		if names := dirNames(t, env); len(names) != 1 || names[0] != "upper" {
			t.Fatalf("after reopening by %s the environment holds %v, want [upper]", root, names)
		}
		if _, err := os.Stat(env + "/upper/kept"); err != nil {
			t.Fatal("the old writable layer is not back")
		}
		if n := dirNames(t, s.path("wal")); len(n) != 0 {
			t.Fatalf("WAL entries left: %v", n)
		}
	}

	t.Run("moved", func(t *testing.T) {
		dir := t.TempDir()
		crash(t, dir+"/a")
		must(t, os.Rename(dir+"/a", dir+"/b"))
		rolledBack(t, dir+"/b")
	})
	t.Run("symlink then real path", func(t *testing.T) {
		real, link := t.TempDir()+"/real", t.TempDir()+"/link"
		must(t, os.Mkdir(real, 0o700))
		must(t, os.Symlink(real, link))
		crash(t, link)
		rolledBack(t, real)
	})
	t.Run("absolute paths of an older version", func(t *testing.T) {
		real, link := t.TempDir()+"/real", t.TempDir()+"/link"
		must(t, os.Mkdir(real, 0o700))
		must(t, os.Symlink(real, link))
		s, err := openStore(real)
		must(t, err)
		env := filepath.Join(link, "env", envID)
		writeFile(t, env, "upper.old/kept", "x")
		writeFile(t, env, "upper.new/partial", "x")
		entry := fmt.Sprintf(`{"id":"old","kind":"restore","started":"x","steps":[`+
			`{"op":"remove_path","path":%q},{"op":"rename","path":%q,"from":%q}]}`, env+"/upper.new", env+"/upper.old", env+"/upper")
		must(t, os.WriteFile(s.path("wal", "old.json"), []byte(entry), 0o600))
		rolledBack(t, real)
	})
}

// crashEnv is what the crash test knows of an environment between two
// operations: what its metadata says and what its writable layer holds.
type crashEnv struct {
	upperLayer string
	snapshots  []string
	marker     string // upper/marker, which the test writes; "" if none
}

// crashState reads every environment of the store at root.
func crashState(t *testing.T, root string) map[string]crashEnv {
	t.Helper()
	s, err := openStore(root)
	must(t, err)
	metas, errs := s.listMeta()
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	st := map[string]crashEnv{}
	for _, m := range metas {
		b, _ := os.ReadFile(filepath.Join(root, "env", m.EnvID, "upper", "marker"))
		st[m.EnvID] = crashEnv{m.UpperLayer, m.Snapshots, string(b)}
	}
	return st
}

// snapshotMarker is the content of marker in a snapshot layer's tar.
func snapshotMarker(t *testing.T, root, snap string) string {
	t.Helper()
	s, err := openStore(root)
	must(t, err)
	l, err := s.getLayer(snap)
	must(t, err)
	rc, err := s.openObject(l.TarHash)
	must(t, err)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ""
		}
		must(t, err)
		if strings.TrimPrefix(h.Name, "./") == "marker" {
			b, err := io.ReadAll(tr)
			must(t, err)
			return string(b)
		}
	}
}

// waitGroupGone waits until no live process is left in process group
// pgid: the stages a killed karapace started die with it (Pdeathsig), and
// the store is only looked at once they have.
func waitGroupGone(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		alive := ""
		procs, _ := os.ReadDir("/proc")
		for _, p := range procs {
			b, err := os.ReadFile("/proc/" + p.Name() + "/stat")
			if err != nil {
				continue
			}
			// pid (comm) state ppid pgrp ...; comm may hold spaces.
			f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
			if len(f) > 2 && f[2] == fmt.Sprint(pgid) && f[0] != "Z" && f[0] != "X" {
				alive = p.Name()
			}
		}
		if alive == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s of the killed karapace's group %d is still alive", alive, pgid)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCrashInjection SIGKILLs the real commands — build (mock backend,
// local image), commit, restore, destroy, gc and gc --dry-run — at random
// points, at least 200 times. After each, the real verify-store must find
// the store clean (it recovers first: WAL replay, staging), and each
// environment must be wholly before or wholly after the operation: a
// commit's snapshot holds the writable layer as it was, a restore leaves
// the old layer with the old metadata or the snapshot with the new, a
// destroy leaves everything or nothing, the others change no environment.
func TestCrashInjection(t *testing.T) {
	needReal(t)
	kills := 200
	if testing.Short() {
		kills = 30
	}
	k := newKP(t)
	image := filepath.Join(k.base, "image.tar.gz")
	tinyImage(t, image)
	var manifests []string
	for i := range 6 {
		manifests = append(manifests, writeFile(t, filepath.Join(k.base, fmt.Sprintf("proj%d", i)), "karapace.toml",
			fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n[system]\npackages = [\"p%d\"]\n[runtime]\nbackend = \"mock\"\n", image, i)))
	}
	k.ok("build", manifests[0])
	seed := time.Now().UnixNano()
	rng := mrand.New(mrand.NewSource(seed))
	t.Logf("seed %d", seed)

	// About how long each operation takes when left alone, to kill it
	// anywhere in that time (and now and then not at all), mostly after
	// the time any karapace takes to start.
	took := map[string]time.Duration{}
	startup := time.Hour
	for range 3 {
		start := time.Now()
		k.ok("--version")
		startup = min(startup, time.Since(start))
	}
	startup = startup * 3 / 4
	type tally struct{ kills, inWAL, done int }
	stats := map[string]*tally{}
	snapMarkers := map[string]string{}
	kinds := []string{"build", "build", "build", "commit", "commit", "restore", "restore", "destroy", "gc", "gc-dry"}
	killed := 0
	enough := func() bool {
		for _, kind := range []string{"build", "commit", "restore", "destroy", "gc"} {
			if stats[kind] == nil || stats[kind].kills < kills/20 {
				return false
			}
		}
		return killed >= kills
	}
	for iter := 0; !enough(); iter++ {
		if iter > 20*kills {
			t.Fatalf("only %d kills in %d runs", killed, iter)
		}
		before := crashState(t, k.store)
		ids := slices.Sorted(maps.Keys(before))
		var env, snap, marker string
		var args []string
		kind := kinds[rng.Intn(len(kinds))]
		if len(ids) == 0 {
			kind = "build"
		} else {
			env = ids[rng.Intn(len(ids))]
		}
		if kind == "restore" && len(before[env].snapshots) == 0 {
			kind = "commit"
		}
		switch kind {
		case "build":
			args = []string{"build", manifests[rng.Intn(len(manifests))]}
		case "commit", "restore":
			// Work in the environment: the writable layer changes.
			marker = randHex(rng)
			writeFile(t, filepath.Join(k.store, "env", env, "upper"), "marker", marker)
			c := before[env]
			c.marker = marker
			before[env] = c
			args = []string{kind, env}
			if kind == "restore" {
				// --force: the marker is the change a restore drops.
				snap = before[env].snapshots[rng.Intn(len(before[env].snapshots))]
				args = append(args, "--force", snap)
			}
		case "destroy":
			args = []string{"destroy", env}
		case "gc", "gc-dry":
			// Garbage for gc to spend its time on.
			s, err := openStore(k.store)
			must(t, err)
			l := mustLock(t, s, "garbage")
			for range 30 {
				mustPut(t, s, randHex(rng))
			}
			l.unlock()
			args = []string{"gc"}
			if kind == "gc-dry" {
				args = append(args, "--dry-run")
			}
		}
		listing := func() string {
			var all []string
			for _, d := range []string{"store/objects", "store/layers", "store/metadata", "env", "env/.layers"} {
				all = append(all, d+": "+strings.Join(slices.Sorted(slices.Values(dirNames(t, filepath.Join(k.store, d)))), " "))
			}
			return strings.Join(all, "\n")
		}
		listedBefore := listing()

		cmd := k.cmd("", args...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if took[kind] == 0 {
			took[kind] = startup + 100*time.Millisecond
		}
		delay := startup + time.Duration(rng.Int63n(int64(took[kind]-startup)*5/4))
		start := time.Now()
		must(t, cmd.Start())
		timer := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		cmd.Wait()
		timer.Stop()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		waitGroupGone(t, cmd.Process.Pid)
		if stats[kind] == nil {
			stats[kind] = &tally{}
		}
		wasKilled := ws.Signaled() && ws.Signal() == syscall.SIGKILL
		if wasKilled {
			killed++
			stats[kind].kills++
			if len(dirNames(t, filepath.Join(k.store, "store", "wal"))) > 0 {
				stats[kind].inWAL++ // killed in the middle of the work
			}
			took[kind] = took[kind] * 11 / 10 // perhaps it takes longer
		} else {
			if code := ws.ExitStatus(); code != 0 {
				t.Fatalf("karapace %v (not killed) exited %d:\n%s", args, code, errb.String())
			}
			stats[kind].done++
			took[kind] = (took[kind]*3 + time.Since(start)) / 4
		}
		what := fmt.Sprintf("run %d: karapace %s, killed=%v after %v", iter, strings.Join(args, " "), wasKilled, delay)

		// The real verify-store recovers and must find nothing wrong.
		if code, out, errOut := k.run("verify-store"); code != 0 {
			t.Fatalf("%s: verify-store exit %d\n%s%s", what, code, out, errOut)
		}
		for _, d := range []string{"wal", "staging"} {
			if n := dirNames(t, filepath.Join(k.store, "store", d)); len(n) != 0 {
				t.Fatalf("%s: %s holds %v after recovery", what, d, n)
			}
		}
		after := crashState(t, k.store)
		for id, b := range before {
			a, ok := after[id]
			switch {
			case id != env || kind == "build" || kind == "gc" || kind == "gc-dry":
				if !ok || !reflect.DeepEqual(a, b) {
					t.Fatalf("%s: environment %s changed: %+v, was %+v", what, id[:12], a, b)
				}
			case kind == "destroy":
				if ok && !reflect.DeepEqual(a, b) {
					t.Fatalf("%s: half destroyed: %+v, was %+v", what, a, b)
				}
			case kind == "commit":
				if !ok || a.upperLayer != b.upperLayer || a.marker != marker {
					t.Fatalf("%s: %+v, was %+v", what, a, b)
				}
				switch len(a.snapshots) - len(b.snapshots) {
				case 0:
					if !reflect.DeepEqual(a.snapshots, b.snapshots) {
						t.Fatalf("%s: snapshots %v, were %v", what, a.snapshots, b.snapshots)
					}
				case 1:
					s := a.snapshots[len(a.snapshots)-1]
					if got := snapshotMarker(t, k.store, s); got != marker {
						t.Fatalf("%s: the new snapshot holds marker %q, the writable layer held %q", what, got, marker)
					}
					snapMarkers[s] = marker
				default:
					t.Fatalf("%s: snapshots %v, were %v", what, a.snapshots, b.snapshots)
				}
			case kind == "restore":
				if _, ok := snapMarkers[snap]; !ok {
					snapMarkers[snap] = snapshotMarker(t, k.store, snap)
				}
				old := ok && reflect.DeepEqual(a, b)
				restored := ok && a.upperLayer == snap && a.marker == snapMarkers[snap] && reflect.DeepEqual(a.snapshots, b.snapshots)
				if !old && !restored {
					t.Fatalf("%s: neither before nor after: %+v, was %+v", what, a, b)
				}
			}
		}
		for id, a := range after {
			if _, ok := before[id]; !ok && (kind != "build" || a.upperLayer != "" || len(a.snapshots) != 0 || a.marker != "") {
				t.Fatalf("%s: environment %s appeared as %+v", what, id[:12], a)
			}
		}
		if now := listing(); kind == "gc-dry" && now != listedBefore {
			t.Fatalf("%s: the store changed:\n%s\nwas:\n%s", what, now, listedBefore)
		}
	}
	for _, kind := range slices.Sorted(maps.Keys(stats)) {
		c := stats[kind]
		t.Logf("%-8s %3d killed (%3d with a WAL entry to recover), %3d finished (in about %v)", kind, c.kills, c.inWAL, c.done, took[kind].Round(time.Millisecond))
	}
}

// A restore whose cleanup fails after its commit point (here: the old
// work directory cannot be removed) is finished by the next open, and
// the environment has a work directory all along.
func TestRestoreCleanupInterrupted(t *testing.T) {
	k := newMockKP(t, ``)
	id := strings.TrimSpace(k.ok("build"))
	snap := strings.TrimSpace(k.ok("commit", id))
	writeFile(t, filepath.Join(k.store, "env", id, "work"), "x", "overlay's")
	s, err := openStore(k.store)
	must(t, err)
	e := newEngine(s, func(string) string { return "" }, nil)
	s.removeAll = func(p string) error {
		if _, err := os.Lstat(p); err == nil && strings.Contains(filepath.Base(p), "work") {
			return fmt.Errorf("injected failure removing %s", p)
		}
		return removeOwnedTree(p)
	}
	if _, _, err := e.restore(id, snap, false); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("restore: %v", err)
	}
	k.ok("verify-store") // recovers: finishes the cleanup
	env := filepath.Join(k.store, "env", id)
	if names := dirNames(t, filepath.Join(env, "work")); len(names) != 0 {
		t.Fatalf("the work directory of the old writable layer stayed: %v", names)
	}
	if m, err := s.getMeta(id); err != nil || m.UpperLayer != snap {
		t.Fatalf("after the commit point the restore stands: %+v %v", m, err)
	}
}
