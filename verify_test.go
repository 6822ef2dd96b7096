package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestVerifyFindsEveryProblem(t *testing.T) {
	s := newTestStore(t)
	a := testEnv(t, s, "a", "a")
	b := testEnv(t, s, "b", "b")
	c := testEnv(t, s, "c", "c")
	for i := range 50 {
		mustPut(t, s, strings.Repeat("filler ", i*1000))
	}
	code, out, errOut := runCLI(t, nil, "--store", s.root, "verify-store")
	if code != 0 || !strings.Contains(out, "all good") {
		t.Fatalf("clean store: %d %s %s", code, out, errOut)
	}

	// 1. an object whose content changed
	p := s.path("objects", a.ManifestHash)
	os.WriteFile(p, []byte("tampered"), 0o600)
	// 2. a file that is not an object
	os.WriteFile(s.path("objects", "README"), []byte("x"), 0o600)
	// 3. a layer whose object is gone
	bl, _ := s.getLayer(b.BaseLayer)
	os.Remove(s.path("objects", bl.TarHash))
	// 4. a layer file edited
	lf := s.path("layers", c.DependencyLayers[0])
	lb, _ := os.ReadFile(lf)
	os.WriteFile(lf, []byte(strings.Replace(string(lb), "true", "false", 1)), 0o600)
	// 5. metadata edited without its checksum
	mf := s.path("metadata", b.EnvID)
	mb, _ := os.ReadFile(mf)
	os.WriteFile(mf, []byte(strings.Replace(string(mb), `"ref_count": 1`, `"ref_count": 7`, 1)), 0o600)
	// 6. metadata pointing at a missing layer, 7. a duplicate name
	os.Remove(s.path("layers", a.BaseLayer))
	c.Name = "a"
	must(t, s.writeMeta(c))

	code, out, errOut = runCLI(t, nil, "--store", s.root, "verify-store")
	if code != exitStore {
		t.Fatalf("exit %d, want 3: %s %s", code, out, errOut)
	}
	mustContain(t, "verify-store", out,
		"bad object "+a.ManifestHash+": corrupt: content hashes to",
		"bad object README: not a valid object name",
		"bad layer "+b.BaseLayer+": refers to object "+bl.TarHash+", which is missing",
		"bad layer "+c.DependencyLayers[0]+":",
		"bad metadata "+b.EnvID+": metadata file "+mf+" is corrupt: checksum mismatch",
		"bad metadata "+a.EnvID+": refers to layer "+a.BaseLayer+", which is missing",
		"is also used by environment",
		"bad layer "+a.DependencyLayers[0]+": refers to parent layer "+a.BaseLayer+", which is missing",
		"problems")
	mustContain(t, "stderr", errOut, "verify-store found 8 problems")

	code, out, _ = runCLI(t, nil, "--store", s.root, "--json", "verify-store")
	var rep verifyReport
	if code != exitStore || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("--json: %d %s", code, out)
	}
	if len(rep.Bad) != 8 || rep.Objects != 62 || rep.Layers != 5 || rep.Metadata != 3 {
		t.Errorf("report %+v", rep)
	}
}

func TestVerifyEmptyJSON(t *testing.T) {
	s := newTestStore(t)
	code, out, _ := runCLI(t, nil, "--store", s.root, "--json", "verify-store")
	if code != 0 || !strings.Contains(out, `"bad": []`) {
		t.Fatalf("%d %s", code, out)
	}
	rep, err := s.verify(context.Background())
	if err != nil || rep.Objects != 0 || rep.Bad == nil {
		t.Fatal(rep, err)
	}
}
