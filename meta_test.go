package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testEnv adds a complete environment (objects, base and dependency
// layers, metadata, env dir) to s.
func testEnv(t testing.TB, s *store, name, seed string) *envMeta {
	t.Helper()
	base, err := s.putLayer(&layer{Kind: layerBase, TarHash: mustPut(t, s, "base tar "+seed), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	dep, err := s.putLayer(&layer{Kind: layerDependency, Parent: base, TarHash: mustPut(t, s, "dep tar "+seed), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	id := storeBlake3Hex([]byte("env " + seed))
	now := time.Now().UTC().Format(time.RFC3339)
	m := &envMeta{EnvID: id, ShortID: id[:12], Name: name, State: stateBuilt,
		ManifestHash: mustPut(t, s, "manifest "+seed), LockHash: mustPut(t, s, "lock "+seed),
		BaseLayer: base, DependencyLayers: []string{dep}, CreatedAt: now, UpdatedAt: now, RefCount: 1}
	if err := s.putMeta(m); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(s.root, "env", id, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func TestMetaPutGet(t *testing.T) {
	s := newTestStore(t)
	m := testEnv(t, s, "dev", "1")
	got, err := s.getMeta(m.EnvID)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.canonical()) != string(m.canonical()) || got.Checksum != storeBlake3Hex(m.canonical()) {
		t.Fatalf("round trip:\n%s\n%s", got.canonical(), m.canonical())
	}
	var raw map[string]any
	b, _ := os.ReadFile(s.path("metadata", m.EnvID))
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"env_id", "short_id", "name", "state", "manifest_hash", "lock_hash", "base_layer", "dependency_layers", "snapshots", "created_at", "updated_at", "ref_count", "checksum"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("field %s missing in %s", k, b)
		}
	}
	if raw["state"] != "built" {
		t.Errorf("state %v", raw["state"])
	}

	// Names: syntax and uniqueness.
	m2 := testEnv(t, s, "", "2")
	m2.Name = "dev"
	if err := s.putMeta(m2); err == nil || !strings.Contains(err.Error(), `"dev" is already used by environment `+m.ShortID) {
		t.Errorf("duplicate name: %v", err)
	}
	m2.Name = "bad name"
	if err := s.putMeta(m2); err == nil || !strings.Contains(err.Error(), "invalid environment name") {
		t.Errorf("bad name: %v", err)
	}
	m.Name = "dev" // renaming an environment to its own name is fine
	if err := s.putMeta(m); err != nil {
		t.Fatal(err)
	}
	// A name is only known to be free when every metadata file can be
	// read: a damaged one may hold it.
	m3 := testEnv(t, s, "", "3")
	good, _ := os.ReadFile(s.path("metadata", m.EnvID))
	os.WriteFile(s.path("metadata", m.EnvID), good[:len(good)/2], 0o600)
	m3.Name = "dev"
	if err := s.putMeta(m3); err == nil || exitCodeOf(err) != exitStore || !strings.Contains(err.Error(), `cannot make sure the name "dev" is not taken: metadata file `+s.path("metadata", m.EnvID)+" is corrupt") {
		t.Errorf("name check with a damaged metadata file: %v", err)
	}
	os.WriteFile(s.path("metadata", m.EnvID), good, 0o600)
	must(t, s.deleteMeta(m3.EnvID))

	// References must exist; fields must be valid.
	bad := *m2
	bad.Name = ""
	bad.Snapshots = []string{strings.Repeat("c", 64)}
	if err := s.putMeta(&bad); err == nil || !strings.Contains(err.Error(), "layer "+strings.Repeat("c", 64)) {
		t.Errorf("missing layer: %v", err)
	}
	bad = *m2
	bad.Name, bad.LockHash = "", strings.Repeat("d", 64)
	if err := s.putMeta(&bad); err == nil || !strings.Contains(err.Error(), "object "+strings.Repeat("d", 64)) {
		t.Errorf("missing object: %v", err)
	}
	for _, f := range []func(*envMeta){
		func(m *envMeta) { m.ShortID = "x" },
		func(m *envMeta) { m.State = "Built" },
		func(m *envMeta) { m.EnvID = "../../etc" },
		func(m *envMeta) { m.RefCount = -1 },
		func(m *envMeta) { m.BaseLayer = "nothex" },
	} {
		c := *m2
		c.Name = ""
		f(&c)
		if err := s.putMeta(&c); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}

	// Corruption is detected on every read and named.
	file := s.path("metadata", m.EnvID)
	orig, _ := os.ReadFile(file)
	for what, content := range map[string]string{
		"edited state":     strings.Replace(string(orig), `"built"`, `"archived"`, 1),
		"edited ref_count": strings.Replace(string(orig), `"ref_count": 1`, `"ref_count": 2`, 1),
		"truncated":        string(orig[:len(orig)/2]),
		"unknown field":    strings.Replace(string(orig), "{", `{"extra": 1,`, 1),
	} {
		os.WriteFile(file, []byte(content), 0o600)
		_, err := s.getMeta(m.EnvID)
		if err == nil || exitCodeOf(err) != exitStore || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: %v", what, err)
		}
		all, errs := s.listMeta()
		if len(all) != 1 || len(errs) != 1 {
			t.Errorf("%s: listMeta %d good, %d errors", what, len(all), len(errs))
		}
	}
	noSum := strings.Replace(string(orig), `"checksum"`, `"x"`, 1)
	var mm map[string]any
	json.Unmarshal([]byte(noSum), &mm)
	delete(mm, "x")
	nb, _ := json.Marshal(mm)
	os.WriteFile(file, nb, 0o600)
	if _, err := s.getMeta(m.EnvID); err == nil || !strings.Contains(err.Error(), "karapace migrate") {
		t.Errorf("no checksum: %v", err)
	}
	os.WriteFile(file, orig, 0o600)
	os.WriteFile(s.path("metadata", "stray"), []byte("{}"), 0o600)
	all, errs := s.listMeta()
	if len(all) != 2 || len(errs) != 1 || all[0].EnvID > all[1].EnvID {
		t.Errorf("listMeta: %d good (sorted?), %v", len(all), errs)
	}
	if err := s.deleteMeta(m.EnvID); err != nil {
		t.Fatal(err)
	}
	if err := s.deleteMeta(m.EnvID); err != nil {
		t.Fatal("second delete:", err)
	}
	if _, err := s.getMeta(m.EnvID); err == nil || exitCodeOf(err) == exitStore {
		t.Errorf("deleted: %v", err)
	}
}

func TestValidEnvName(t *testing.T) {
	for _, ok := range []string{"a", "dev", "My_Env-2", strings.Repeat("x", 64)} {
		if err := validEnvName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 65), "a b", "a/b", "é", "a.b", "../x", "a\x00"} {
		if err := validEnvName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCanTransition(t *testing.T) {
	allowed := map[[2]envState]bool{
		{stateDefined, stateBuilt}: true, {stateDefined, stateDestroyed}: true,
		{stateBuilt, stateRunning}: true, {stateBuilt, stateFrozen}: true, {stateBuilt, stateArchived}: true, {stateBuilt, stateDestroyed}: true,
		{stateRunning, stateBuilt}: true,
		{stateFrozen, stateBuilt}:  true, {stateFrozen, stateArchived}: true, {stateFrozen, stateDestroyed}: true,
		{stateArchived, stateBuilt}: true, {stateArchived, stateDestroyed}: true,
	}
	states := []envState{stateDefined, stateBuilt, stateRunning, stateFrozen, stateArchived, stateDestroyed}
	for _, from := range states[:5] {
		for _, to := range states {
			err := (&envMeta{ShortID: "abc", State: from}).canTransition(to)
			if (err == nil) != allowed[[2]envState{from, to}] {
				t.Errorf("%s → %s: %v", from, to, err)
			}
		}
	}
	for _, c := range []struct {
		from, to envState
		want     string
	}{
		{stateRunning, stateArchived, "cannot archive a running environment; stop it first"},
		{stateRunning, stateDestroyed, "cannot destroy a running environment; stop it first"},
		{stateArchived, stateRunning, "cannot start an archived environment; unarchive it first"},
		{stateDefined, stateRunning, "build it first"},
		{stateFrozen, stateRunning, "read-only"},
		{stateBuilt, stateBuilt, "already built"},
	} {
		err := (&envMeta{ShortID: "abc", State: c.from}).canTransition(c.to)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s → %s: %v, want %q", c.from, c.to, err, c.want)
		}
	}
}

// legacyStore writes a store the way the original tool did: layers named
// by their tar hash (snapshots by the composite identity), metadata with
// capitalised states, nulls and no checksum.
func legacyStore(t *testing.T, version int) (root string, envIDs []string) {
	t.Helper()
	root = t.TempDir()
	s, err := openStore(root)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.path("version"), []byte(`{ "format_version": `+string(rune('0'+version))+` }`), 0o600)
	put := func(data string) string {
		h, _, err := s.putObject(strings.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	writeJSONFile := func(p string, v any) {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	baseTar, depTar, snapTar := put("base tar"), put("dep tar"), put("snap tar")
	writeJSONFile(s.path("layers", baseTar), map[string]any{"hash": baseTar, "kind": "Base", "parent": nil, "object_refs": []string{baseTar}, "read_only": true, "tar_hash": baseTar})
	writeJSONFile(s.path("layers", depTar), map[string]any{"hash": depTar, "kind": "Dependency", "parent": baseTar, "object_refs": []string{depTar}, "read_only": true})
	for i, st := range []string{"Built", "Running", "Archived"} {
		id := storeBlake3Hex([]byte{byte(i)})
		envIDs = append(envIDs, id)
		m := map[string]any{"env_id": id, "short_id": id[:12], "state": st, "manifest_hash": put("manifest " + st),
			"base_layer": baseTar, "dependency_layers": []string{depTar}, "policy_layer": nil,
			"created_at": "2026-02-01T10:00:00Z", "updated_at": "2026-02-01T10:00:00Z", "ref_count": 1}
		if i == 0 {
			m["name"] = "old-dev"
			snapHash := storeBlake3Hex([]byte("snapshot:" + id + ":" + baseTar + ":" + snapTar))
			writeJSONFile(s.path("layers", snapHash), map[string]any{"hash": snapHash, "kind": "Snapshot", "parent": baseTar, "object_refs": []string{snapTar}, "read_only": true, "tar_hash": snapTar})
		}
		if i == 1 {
			m["name"] = nil
			m["checksum"] = "ffff"
		}
		writeJSONFile(s.path("metadata", id), m)
	}
	os.WriteFile(s.path("wal", "20260201-1.json"), []byte(`{"op_id":"20260201-1","kind":"Build","env_id":"x","timestamp":"t","rollback_steps":[{"RemoveDir":"`+filepath.Join(root, "env", "orphan")+`"}]}`), 0o600)
	os.MkdirAll(filepath.Join(root, "env", "orphan"), 0o700)
	return root, envIDs
}

func TestMigrate(t *testing.T) {
	root, ids := legacyStore(t, 1)
	if _, err := openStore(root); err == nil || !strings.Contains(err.Error(), "run 'karapace migrate'") {
		t.Fatalf("open of format 1: %v", err)
	}
	code, out, errOut := runCLI(t, nil, "--store", root, "migrate")
	if code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, errOut)
	}
	mustContain(t, "migrate", out, "from format 1 to 2", "3 environments", "3 layers")
	s, err := openStore(root)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(s.path("version.v1.bak")); !strings.Contains(string(b), "1") {
		t.Errorf("no backup of the version file: %q", b)
	}
	if _, err := os.Stat(filepath.Join(root, "env", "orphan")); err == nil {
		t.Error("old WAL entry not replayed")
	}
	m, err := s.getMeta(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "old-dev" || m.State != stateBuilt || len(m.Snapshots) != 1 || len(m.DependencyLayers) != 1 {
		t.Errorf("converted: %+v", m)
	}
	dep, err := s.getLayer(m.DependencyLayers[0])
	if err != nil || dep.Parent != m.BaseLayer {
		t.Errorf("dependency layer: %+v %v", dep, err)
	}
	if m1, _ := s.getMeta(ids[1]); m1 == nil || m1.State != stateBuilt || len(m1.Snapshots) != 0 {
		t.Errorf("running env: %+v", m1)
	}
	if m2, _ := s.getMeta(ids[2]); m2 == nil || m2.State != stateArchived {
		t.Errorf("archived env: %+v", m2)
	}
	if code, out, errOut := runCLI(t, nil, "--store", root, "verify-store"); code != 0 {
		t.Fatalf("verify after migrate: %s %s", out, errOut)
	}
	if layers, _ := s.listLayers(); len(layers) != 3 {
		t.Errorf("old layers left: %v", layers)
	}
	code, out, _ = runCLI(t, nil, "--store", root, "migrate")
	if code != 0 || !strings.Contains(out, "already at format 2") {
		t.Errorf("second migrate: %d %s", code, out)
	}
	code, out, _ = runCLI(t, nil, "--store", root, "--json", "migrate")
	var rep migrateReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.Current || rep.ToVersion != 2 {
		t.Errorf("--json migrate: %d %s", code, out)
	}

	// The original tool called its own layout format 2: its metadata
	// is recognised and converted too.
	root2, ids2 := legacyStore(t, 2)
	code, out, errOut = runCLI(t, nil, "--store", root2, "--json", "migrate")
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.Metadata != 3 || rep.Current {
		t.Fatalf("migrate of a Rust format 2 store: %d %s %s", code, out, errOut)
	}
	s2, _ := openStore(root2)
	if _, err := s2.getMeta(ids2[0]); err != nil {
		t.Fatal(err)
	}

	// Newer stores are refused.
	root3 := t.TempDir()
	s3, _ := openStore(root3)
	os.WriteFile(s3.path("version"), []byte(`{"format_version": 9}`), 0o600)
	code, _, errOut = runCLI(t, nil, "--store", root3, "migrate")
	if code != exitStore || !strings.Contains(errOut, "upgrade karapace") {
		t.Errorf("newer store: %d %s", code, errOut)
	}
}

// TestMigrateInterrupted runs migrate, stops it half way (by damaging a
// later step), and checks a second run finishes the job.
func TestMigrateInterrupted(t *testing.T) {
	root, ids := legacyStore(t, 1)
	s, _, err := openStoreAnyVersion(root, true)
	if err != nil {
		t.Fatal(err)
	}
	// Convert only the first metadata file by hand, as an interrupted run would.
	l, _ := s.acquire("migrate", time.Second)
	layerMap, snaps, err := s.migrateLayers(&migrateReport{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.migrateMeta(ids[0], layerMap, snaps); err != nil {
		t.Fatal(err)
	}
	l.unlock()
	if code, _, errOut := runCLI(t, nil, "--store", root, "migrate"); code != 0 {
		t.Fatalf("second run: %s", errOut)
	}
	if code, out, errOut := runCLI(t, nil, "--store", root, "verify-store"); code != 0 {
		t.Fatalf("verify: %s %s", out, errOut)
	}
}

// ref_count counts the manifest files that built an environment: two
// projects with the same manifest share it, building one again does not
// count twice, and destroy, which removes it regardless, names them.
func TestRefCountCountsManifests(t *testing.T) {
	k := newKP(t)
	projA, projB := k.dir, filepath.Join(k.base, "other")
	for _, d := range []string{projA, projB} {
		must(t, os.MkdirAll(d, 0o755))
		tinyImage(t, filepath.Join(d, "image.tar.gz"))
		writeFile(t, d, "karapace.toml", mockManifest(`"git"`))
	}
	manA, manB := filepath.Join(projA, "karapace.toml"), filepath.Join(projB, "karapace.toml")
	id := strings.TrimSpace(k.ok("build", manA))
	k.ok("build", manA)
	var insp struct {
		Environment envInfo `json:"environment"`
	}
	k.jsonOut(&insp, "inspect", id)
	if e := insp.Environment; e.RefCount != 1 || len(e.ManifestPaths) != 1 || e.ManifestPaths[0] != manA {
		t.Fatalf("after two builds of one manifest: %+v", e)
	}
	if again := strings.TrimSpace(k.ok("build", manB)); again != id {
		t.Fatalf("the same manifest elsewhere built %s, not %s", again, id)
	}
	k.ok("build", manB)
	k.jsonOut(&insp, "inspect", id)
	if e := insp.Environment; e.RefCount != 2 || strings.Join(e.ManifestPaths, " ") != manA+" "+manB || e.ManifestPath != manB {
		t.Fatalf("after builds of two manifests: %+v", e)
	}

	// Destroy removes it whatever the count, and says who lost it.
	errOut := k.fails(0, "was built from 2 manifests, which now need 'karapace build' again: "+manA+", "+manB, "destroy", id)
	mustContain(t, "destroy", errOut, id[:12])
	k.fails(1, "no environment", "inspect", id)
	id = strings.TrimSpace(k.ok("build", manA))
	var res map[string]any
	k.jsonOut(&res, "destroy", id)
	if res["ref_count"] != 1.0 || fmt.Sprint(res["manifest_paths"]) != "["+manA+"]" {
		t.Fatalf("destroy --json: %v", res)
	}

	// An imported environment was built by no manifest here.
	id = strings.TrimSpace(k.ok("build", manA))
	file := filepath.Join(k.base, "env.tar")
	k.ok("export", id, file)
	k.ok("destroy", id)
	k.ok("import", file)
	k.jsonOut(&insp, "inspect", id)
	if e := insp.Environment; e.RefCount != 0 || len(e.ManifestPaths) != 0 {
		t.Fatalf("imported: %+v", e)
	}
	k.ok("build", manB)
	k.jsonOut(&insp, "inspect", id)
	if e := insp.Environment; e.RefCount != 1 || len(e.ManifestPaths) != 1 {
		t.Fatalf("imported, then built: %+v", e)
	}
	k.ok("verify-store")
}

// Metadata an older version wrote (no manifest_paths, every build
// counted) still reads, and the next build makes the count honest; a
// count that disagrees with the list is refused.
func TestRefCountOlderMetadata(t *testing.T) {
	s := newTestStore(t)
	m := testEnv(t, s, "", "old")
	m.RefCount, m.ManifestPath = 5, "/p/a/karapace.toml"
	must(t, s.writeMeta(m))
	raw, _ := os.ReadFile(s.path("metadata", m.EnvID))
	if strings.Contains(string(raw), "manifest_paths") {
		t.Fatalf("metadata without manifests written with the new field:\n%s", raw)
	}
	got, err := s.getMeta(m.EnvID)
	if err != nil || got.RefCount != 5 {
		t.Fatalf("older metadata: %+v %v", got, err)
	}
	got.addManifest("/p/a/karapace.toml")
	if got.RefCount != 1 || len(got.ManifestPaths) != 1 {
		t.Fatalf("rebuilt from its manifest: %+v", got)
	}
	got.addManifest("/p/b/karapace.toml")
	if got.RefCount != 2 || got.ManifestPath != "/p/b/karapace.toml" {
		t.Fatalf("built from a second manifest: %+v", got)
	}
	must(t, s.putMeta(got))
	got.RefCount = 3
	if err := s.putMeta(got); err == nil || !strings.Contains(err.Error(), "ref_count 3, but 2 manifest_paths") {
		t.Fatalf("inconsistent ref_count: %v", err)
	}
}
