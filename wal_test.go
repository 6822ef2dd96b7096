package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	var logs bytes.Buffer
	setLogLevel("warn", false, false, &logs)
	defer setLogLevel("", false, false, os.Stderr)
	n, err := s.recoverWAL()
	if err != nil || n != 3 {
		t.Fatalf("recoverWAL: %d %v", n, err)
	}
	mustContain(t, "warnings", logs.String(), "removing corrupt WAL entry "+s.path("wal", "garbage.json"), "evil.json", "outside the store root")
	if _, err := os.Stat(filepath.Join(outside, "precious")); err != nil {
		t.Fatal("a WAL entry removed something outside the store")
	}
	if n := dirNames(t, s.path("wal")); len(n) != 0 {
		t.Fatalf("left: %v", n)
	}
	l.unlock()
}
