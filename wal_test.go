package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lukechampine.com/blake3"
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
	var logs bytes.Buffer
	setLogLevel("warn", false, false, &logs)
	defer setLogLevel("", false, false, os.Stderr)
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

// The crash-injection workers: each loops one kind of operation, done the
// way the engine does it (lock, WAL entry, steps before actions), until
// the parent kills it.
func init() {
	testHelpers["store-crash-worker"] = func() {
		s := helperStore()
		s.lockWait = time.Minute
		var seed int64
		fmt.Sscan(os.Getenv("KP_SEED"), &seed)
		rng := mrand.New(mrand.NewSource(seed))
		scratch := os.Getenv("KP_SCRATCH")
		fmt.Println("ready")
		ops := map[string]func(*store, *mrand.Rand, string) error{
			"build": crashBuild, "commit": crashCommit, "restore": crashRestore, "gc": crashGC,
		}
		op := ops[os.Getenv("KP_KIND")]
		for {
			if err := op(s, rng, scratch); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
	}
}

func randHex(rng *mrand.Rand) string {
	b := make([]byte, 32)
	rng.Read(b)
	return hex.EncodeToString(b)
}

// crashBuild: pack a tree → object → base layer → env dir with the tree
// unpacked as upper → metadata. One build in eight fails and rolls back;
// one in four reuses an earlier tree, so its object is already there.
func crashBuild(s *store, rng *mrand.Rand, scratch string) error {
	l, err := s.lock("build")
	if err != nil {
		return err
	}
	defer l.unlock()
	envID := randHex(rng)
	op, err := s.beginOp("build", envID)
	if err != nil {
		return err
	}
	tree := filepath.Join(scratch, "tree")
	os.RemoveAll(tree)
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	content := randHex(rng)
	if rng.Intn(4) == 0 {
		content = fmt.Sprint(rng.Intn(3))
	}
	os.WriteFile(filepath.Join(tree, "etc", "id"), []byte(content), 0o644)
	os.WriteFile(filepath.Join(tree, "big"), bytes.Repeat([]byte(content), 2000), 0o644)
	tarHash, _, err := op.packObject(tree)
	if err != nil {
		return err
	}
	base, err := op.putLayer(&layer{Kind: layerBase, TarHash: tarHash, ReadOnly: true})
	if err != nil {
		return err
	}
	manifest, _, err := op.putObject(strings.NewReader("manifest " + envID))
	if err != nil {
		return err
	}
	envDir := filepath.Join(s.root, "env", envID)
	if err := op.mkdir(envDir); err != nil {
		return err
	}
	if err := s.unpackObjectTo(tarHash, filepath.Join(envDir, "upper"), unpackOptions{}); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(envDir, "work"), 0o700); err != nil {
		return err
	}
	now := time.Now().UTC().Format(time.RFC3339)
	m := &envMeta{EnvID: envID, ShortID: envID[:12], State: stateBuilt, ManifestHash: manifest, BaseLayer: base,
		CreatedAt: now, UpdatedAt: now, RefCount: 1}
	if err := op.putMeta(m); err != nil {
		return err
	}
	if rng.Intn(8) == 0 {
		return op.rollback()
	}
	return op.done()
}

func crashPick(s *store, rng *mrand.Rand, withSnapshots bool) *envMeta {
	all, _ := s.listMeta()
	var c []*envMeta
	for _, m := range all {
		if !withSnapshots || len(m.Snapshots) > 0 {
			c = append(c, m)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[rng.Intn(len(c))]
}

// crashCommit: change the writable layer (undoably), snapshot it, record
// the snapshot as the layer the upper now equals.
func crashCommit(s *store, rng *mrand.Rand, _ string) error {
	l, err := s.lock("commit")
	if err != nil {
		return err
	}
	defer l.unlock()
	m := crashPick(s, rng, false)
	if m == nil {
		return nil
	}
	op, err := s.beginOp("commit", m.EnvID)
	if err != nil {
		return err
	}
	upper := filepath.Join(s.root, "env", m.EnvID, "upper")
	f := filepath.Join(upper, "f-"+randHex(rng)[:8])
	if err := op.add(walStep{Op: walRemovePath, Path: f}); err != nil {
		return err
	}
	if err := os.WriteFile(f, []byte(randHex(rng)), 0o644); err != nil {
		return err
	}
	tarHash, _, err := op.packObject(upper)
	if err != nil {
		return err
	}
	snap, err := op.putLayer(&layer{Kind: layerSnapshot, Parent: m.BaseLayer, TarHash: tarHash, ReadOnly: true})
	if err != nil {
		return err
	}
	m.Snapshots = append(m.Snapshots, snap)
	m.UpperLayer = snap
	if err := op.putMeta(m); err != nil {
		return err
	}
	return op.done()
}

// crashRestore: unpack a snapshot beside the upper, swap the two by
// renames, record it, and remove the old upper after the commit point.
func crashRestore(s *store, rng *mrand.Rand, _ string) error {
	l, err := s.lock("restore")
	if err != nil {
		return err
	}
	defer l.unlock()
	m := crashPick(s, rng, true)
	if m == nil {
		return nil
	}
	snap := m.Snapshots[rng.Intn(len(m.Snapshots))]
	lay, err := s.getLayer(snap)
	if err != nil {
		return err
	}
	op, err := s.beginOp("restore", m.EnvID)
	if err != nil {
		return err
	}
	envDir := filepath.Join(s.root, "env", m.EnvID)
	upper, fresh, old := filepath.Join(envDir, "upper"), filepath.Join(envDir, "upper.new"), filepath.Join(envDir, "upper.old")
	if err := op.add(walStep{Op: walRemovePath, Path: fresh}); err != nil {
		return err
	}
	if err := s.unpackObjectTo(lay.TarHash, fresh, unpackOptions{}); err != nil {
		return err
	}
	if err := op.rename(upper, old); err != nil {
		return err
	}
	if err := op.rename(fresh, upper); err != nil {
		return err
	}
	m.UpperLayer = snap
	if err := op.putMeta(m); err != nil {
		return err
	}
	return op.finish(old)
}

// crashGC: leave some garbage, then collect.
func crashGC(s *store, rng *mrand.Rand, _ string) error {
	l, err := s.lock("garbage")
	if err != nil {
		return err
	}
	for range rng.Intn(3) + 1 {
		h, _, err := s.putObject(strings.NewReader(randHex(rng)))
		if err != nil {
			l.unlock()
			return err
		}
		if rng.Intn(2) == 0 {
			if _, err := s.putLayer(&layer{Kind: layerBase, TarHash: h}); err != nil {
				l.unlock()
				return err
			}
		}
	}
	l.unlock()
	_, err = s.gc(context.Background(), gcOptions{DryRun: rng.Intn(5) == 0})
	return err
}

// checkCrashedStore recovers the store and checks every invariant.
func checkCrashedStore(t *testing.T, root string) (walEntries, stagingLeft int) {
	t.Helper()
	walEntries = len(dirNames(t, filepath.Join(root, "store", "wal")))
	stagingLeft = len(dirNames(t, filepath.Join(root, "store", "staging")))
	s, err := openStore(root)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	l := mustLock(t, s, "check")
	defer l.unlock()
	rep, err := s.verifyLocked(context.Background())
	if err != nil || len(rep.Bad) != 0 {
		t.Fatalf("verify after crash: %v %+v", err, rep.Bad)
	}
	if n := dirNames(t, s.path("wal")); len(n) != 0 {
		t.Fatalf("WAL entries left: %v", n)
	}
	if n := dirNames(t, s.path("staging")); len(n) != 0 {
		t.Fatalf("staging left: %v", n)
	}
	metas, errs := s.listMeta()
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	live := map[string]bool{}
	for _, m := range metas {
		live[m.EnvID] = true
		envDir := filepath.Join(root, "env", m.EnvID)
		if names := dirNames(t, envDir); len(names) != 2 || !contains(names, "upper") || !contains(names, "work") {
			t.Fatalf("env %s holds %v, want upper and work", m.ShortID, names)
		}
		// The writable layer is exactly the layer the metadata says.
		want := m.UpperLayer
		if want == "" {
			want = m.BaseLayer
		}
		lay, err := s.getLayer(want)
		if err != nil {
			t.Fatal(err)
		}
		h := blake3.New(32, nil)
		if _, err := packLayer(filepath.Join(envDir, "upper"), h); err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != lay.TarHash {
			t.Fatalf("env %s: upper packs to %s, metadata says layer %s with tar %s", m.ShortID, got, want, lay.TarHash)
		}
	}
	for _, n := range dirNames(t, filepath.Join(root, "env")) {
		if !live[n] {
			t.Fatalf("env dir %s has no metadata", n)
		}
	}
	return walEntries, stagingLeft
}

func TestCrashInjection(t *testing.T) {
	kills := 240
	if testing.Short() {
		kills = 40
	}
	root := t.TempDir()
	scratch := t.TempDir()
	if _, err := openStore(root); err != nil {
		t.Fatal(err)
	}
	kinds := []string{"build", "commit", "restore", "gc"}
	rng := mrand.New(mrand.NewSource(time.Now().UnixNano()))
	stats := map[string][3]int{} // kills, recoveries with WAL work, staging leftovers
	for i := range kills {
		kind := kinds[i%4]
		if i < 8 {
			kind = "build" // have environments to work on
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "KARAPACE_TEST_HELPER=store-crash-worker", "KP_STORE="+root,
			"KP_KIND="+kind, "KP_SEED="+fmt.Sprint(rng.Int63()), "KP_SCRATCH="+scratch)
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		must(t, cmd.Start())
		br := bufio.NewReader(out)
		if line, _ := br.ReadString('\n'); line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s worker: %q", kind, line)
		}
		time.Sleep(time.Duration(rng.Intn(120)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		rest, _ := io.ReadAll(br)
		cmd.Wait()
		if strings.Contains(string(rest), "error") {
			t.Fatalf("%s worker failed before the kill: %s", kind, rest)
		}
		w, st := checkCrashedStore(t, root)
		c := stats[kind]
		c[0]++
		if w > 0 {
			c[1]++
		}
		if st > 0 {
			c[2]++
		}
		stats[kind] = c
	}
	total := 0
	for _, k := range kinds {
		c := stats[k]
		total += c[0]
		t.Logf("%-8s %3d kills, %3d left a WAL entry to roll back, %3d left staging files", k, c[0], c[1], c[2])
	}
	s, _ := openStore(root)
	metas, _ := s.listMeta()
	t.Logf("%d kills in total; %d environments in the store at the end", total, len(metas))
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
