package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLISnapshotsMock(t *testing.T) {
	k := newMockKP(t, ``)
	id := strings.TrimSpace(k.ok("build"))
	upper := filepath.Join(k.store, "env", id, "upper")
	if out := k.ok("diff", id); out != "" {
		t.Fatalf("diff of a fresh environment: %q", out)
	}
	os.WriteFile(filepath.Join(upper, "etc", "new.conf"), nil, 0o644) // no such dir yet
	os.MkdirAll(filepath.Join(upper, "etc"), 0o755)
	os.WriteFile(filepath.Join(upper, "etc", "new.conf"), []byte("x\n"), 0o644)
	os.WriteFile(filepath.Join(upper, "etc", "os-release"), []byte("ID=changed\n"), 0o644)
	if out := k.ok("diff", id); out != "A /etc/new.conf\nM /etc/os-release\n" {
		t.Fatalf("diff:\n%s", out)
	}
	snap := strings.TrimSpace(k.ok("commit", id))
	if !validStoreHash(snap) {
		t.Fatalf("commit printed %q", snap)
	}
	os.Remove(filepath.Join(upper, "etc", "new.conf"))
	os.WriteFile(filepath.Join(upper, "later.txt"), []byte("later\n"), 0o644)
	k.fails(1, "has changes no snapshot holds", "restore", id, snap[:10])
	if _, err := os.Stat(filepath.Join(upper, "later.txt")); err != nil {
		t.Fatalf("a refused restore dropped a change: %v", err)
	}
	k.ok("restore", "--force", id, snap[:10])
	// Restored, the writable layer is the snapshot: nothing to refuse.
	k.ok("restore", id, "1")
	if out := k.ok("diff", id); out != "A /etc/new.conf\nM /etc/os-release\n" {
		t.Fatalf("diff after restore:\n%s", out)
	}
	var snaps struct {
		Snapshots []struct {
			Hash    string `json:"hash"`
			Current bool   `json:"current"`
		} `json:"snapshots"`
	}
	k.jsonOut(&snaps, "snapshots", id)
	if len(snaps.Snapshots) != 1 || snaps.Snapshots[0].Hash != snap || !snaps.Snapshots[0].Current {
		t.Fatalf("snapshots: %+v", snaps)
	}
	k.fails(1, "has no snapshot", "restore", id, "ffff")
	k.ok("verify-store")
}

// restore changes the writable layer: not of a frozen or archived one.
func TestRestoreRespectsState(t *testing.T) {
	k := newMockKP(t, ``)
	id := strings.TrimSpace(k.ok("build"))
	upper := filepath.Join(k.store, "env", id, "upper")
	writeFile(t, upper, "note", "one\n")
	snap := strings.TrimSpace(k.ok("commit", id))
	writeFile(t, upper, "note", "two\n")
	k.ok("freeze", id)
	k.fails(1, "is frozen: its writable layer may not change; 'karapace unfreeze", "restore", id, snap)
	k.ok("unfreeze", id)
	k.ok("archive", id)
	k.fails(1, "is archived; 'karapace unarchive", "restore", id, snap)
	if got, _ := os.ReadFile(filepath.Join(upper, "note")); string(got) != "two\n" {
		t.Fatalf("a refused restore changed the writable layer: %q", got)
	}
	k.ok("unarchive", id)
	k.ok("restore", id, "#1", "--force")
	if got, _ := os.ReadFile(filepath.Join(upper, "note")); string(got) != "one\n" {
		t.Fatalf("restore: %q", got)
	}
}
