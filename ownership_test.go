package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A store whose trees were made with other host IDs (root's, before its
// environments had a range of their own) is refused until migrate gives
// them to the new IDs; then the environment is as it was inside: owners,
// set-id bits. Rootless, only a record naming other IDs can be tested: the
// refusal says what to do instead.
func TestStoreIDsMigration(t *testing.T) {
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	id := strings.TrimSpace(k.ok("build", "--name", "old"))
	k.ok("exec", "old", "--", "sh", "-c", "echo kept > /root/f && chown 1000:100 /root/f && chmod 4754 /root/f")
	record := filepath.Join(k.store, idsFile)
	if data, err := os.ReadFile(record); err != nil || string(data) != idsRecord(planIDMapping()) {
		t.Fatalf("the store's IDs record: %q %v", data, err)
	}
	if os.Geteuid() != 0 {
		os.WriteFile(record, []byte("uid 0:5000:1\ngid 0:5000:1\n"), 0o600)
		k.fails(exitStore, "were made with host IDs uid 0:5000:1, gid 0:5000:1, but this machine maps them to", "exec", "old", "--", "true")
		k.fails(exitStore, "restore the old range in /etc/subuid", "exec", "old", "--", "true")
		return
	}
	// The store as an older karapace left it: the writable layer with the
	// host's own IDs, no record.
	legacy := legacyIDs(planIDMapping())
	if n, err := shiftTree(filepath.Join(k.store, "env", id, "upper"), planIDMapping(), legacy); err != nil || n == 0 {
		t.Fatalf("making a legacy store: %d files, %v", n, err)
	}
	os.Remove(record)
	k.fails(exitStore, "run 'karapace migrate' to give them to the new IDs", "exec", "old", "--", "true")
	k.fails(exitStore, "run 'karapace migrate'", "build")
	var rep migrateReport
	k.jsonOut(&rep, "migrate")
	if rep.IDs == nil || rep.IDs.Files == 0 || rep.IDs.TreesPruned == 0 || !strings.Contains(rep.IDs.From, "uid 0:0:65537") {
		t.Fatalf("migrate: %+v %+v", rep, rep.IDs)
	}
	if out := k.ok("exec", "old", "--", "stat", "-c", "%u:%g %a %n", "/root/f", "/etc/shadow"); out != "1000:100 4754 /root/f\n0:42 640 /etc/shadow\n" {
		t.Fatalf("after migrate: %q", out)
	}
	// Again: nothing left to do.
	rep = migrateReport{}
	k.jsonOut(&rep, "migrate")
	if rep.IDs != nil {
		t.Fatalf("a second migrate moved files: %+v", rep.IDs)
	}
	k.ok("verify-store")
}
