package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type doctorReport struct {
	OK     bool    `json:"ok"`
	Checks []check `json:"checks"`
}

func runDoctor(t *testing.T, env map[string]string) (int, doctorReport) {
	t.Helper()
	code, out, errOut := runCLI(t, env, "--json", "doctor")
	var rep doctorReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, out, errOut)
	}
	return code, rep
}

func findCheck(rep doctorReport, name string) *check {
	for i := range rep.Checks {
		if rep.Checks[i].Name == name {
			return &rep.Checks[i]
		}
	}
	return nil
}

// On a machine set up by the README's test command every prerequisite is
// there, and the overlay probe really mounts one in a user namespace.
func TestDoctorOnThisMachine(t *testing.T) {
	needTool(t, "fuse-overlayfs")
	if os.Geteuid() != 0 {
		needTool(t, "newuidmap")
	}
	env := map[string]string{"PATH": os.Getenv("PATH"), "HOME": t.TempDir()}
	code, rep := runDoctor(t, env)
	if code != 0 || !rep.OK {
		t.Fatalf("doctor failed on a prepared machine: %+v", rep)
	}
	names := []string{"user namespaces", "ID mapping", "overlayfs in a user namespace", "fuse-overlayfs", "memory_mb limit", "cpu_shares limit", "store",
		"commands", "pids limit", "mount policy", "host sockets"}
	if os.Geteuid() == 0 {
		names = append(names, "idmapped mounts")
	}
	for _, name := range names {
		c := findCheck(rep, name)
		if c == nil {
			t.Fatalf("no %q check in %+v", name, rep.Checks)
		}
		if c.Status == "fail" || c.Detail == "" {
			t.Errorf("%s: %+v", name, *c)
		}
	}
	if c := findCheck(rep, "overlayfs in a user namespace"); c.Status != "ok" {
		t.Errorf("overlay probe: %+v", *c)
	}
	if c := findCheck(rep, "idmapped mounts"); c != nil && (c.Status != "ok" || !strings.Contains(c.Detail, "(probed)")) {
		t.Errorf("idmapped mount probe: %+v", *c)
	}
	if c := findCheck(rep, "commands"); c.Status != "ok" || !strings.Contains(c.Detail, "no_new_privs and a seccomp filter") {
		t.Errorf("commands: %+v", *c)
	}
	if c := findCheck(rep, "store"); !strings.Contains(c.Detail, "not created yet") {
		t.Errorf("store: %+v", *c)
	}
}

// Without the uidmap tools an ordinary user gets a failing doctor that
// names the fix; a missing fuse-overlayfs is only a warning.
func TestDoctorReportsMissingTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	code, rep := runDoctor(t, map[string]string{"HOME": t.TempDir()})
	if c := findCheck(rep, "fuse-overlayfs"); c == nil || c.Status != "warn" || !strings.Contains(c.Fix, "apt install fuse-overlayfs") {
		t.Errorf("fuse-overlayfs: %+v", c)
	}
	if os.Geteuid() == 0 {
		if code != 0 {
			t.Fatalf("root needs no uidmap tools, yet doctor failed: %+v", rep)
		}
		return
	}
	if code != exitFailure || rep.OK {
		t.Fatalf("doctor passed without newuidmap: %+v", rep)
	}
	if c := findCheck(rep, "newuidmap"); c == nil || c.Status != "fail" || !strings.Contains(c.Fix, "apt install uidmap") {
		t.Errorf("newuidmap: %+v", c)
	}
}

// doctor reports on the store without changing it: what a crash left,
// who holds the lock, a damaged object; each with its fix, and the store
// as it was.
func TestDoctorStore(t *testing.T) {
	k := newMockKP(t, "")
	var br buildResult
	k.jsonOut(&br, "build")
	doctor := func(wantCode int) doctorReport {
		t.Helper()
		code, out, errOut := k.run("--json", "doctor")
		var rep doctorReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != wantCode {
			t.Fatalf("doctor: exit %d (want %d) %v\n%s\n%s", code, wantCode, err, out, errOut)
		}
		return rep
	}
	status := func(rep doctorReport, name, want string, detail ...string) *check {
		t.Helper()
		c := findCheck(rep, name)
		if c == nil || c.Status != want {
			t.Fatalf("%s: %+v, want %s; all: %+v", name, c, want, rep.Checks)
		}
		mustContain(t, name, c.Detail, detail...)
		if want != "ok" && c.Fix == "" {
			t.Errorf("%s: no fix: %+v", name, *c)
		}
		return c
	}
	rep := doctor(0)
	status(rep, "store", "ok", "1 environment(s)")
	status(rep, "disk space", "ok", "free of")
	status(rep, "store lock", "ok", "free")
	status(rep, "interrupted operations", "ok", "none")
	status(rep, "integrity sample", "ok", "all match")

	// A crash's WAL entry: reported, and left for verify-store.
	wal := filepath.Join(k.store, "store", "wal", "0001-test.json")
	writeFile(t, filepath.Dir(wal), filepath.Base(wal), `{"id":"0001-test","kind":"build","env_id":"`+br.EnvID+`","started":"2026-12-05T10:00:00Z","steps":[]}`)
	rep = doctor(0)
	c := status(rep, "interrupted operations", "warn", "1 left by a crash", "build of "+br.EnvID[:12], "2026-12-05T10:00:00Z")
	mustContain(t, "fix", c.Fix, "karapace verify-store")
	if _, err := os.Stat(wal); err != nil {
		t.Fatalf("doctor rolled the entry back itself: %v", err)
	}

	// The lock held by another process: named, and the entry is its own.
	f, err := os.OpenFile(filepath.Join(k.store, "store", ".lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "pid %d (build)\n", os.Getpid())
	rep = doctor(0)
	status(rep, "store lock", "warn", fmt.Sprintf("held by pid %d (build): %s", os.Getpid(), os.Args[0]))
	status(rep, "interrupted operations", "ok", "in progress under the lock")
	f.Truncate(0)
	f.Close()

	k.ok("verify-store")
	rep = doctor(0)
	status(rep, "interrupted operations", "ok", "none")
	status(rep, "store lock", "ok", "free")

	// A damaged object is found by the sample (a small store is sampled
	// whole), and doctor fails.
	bad := strings.Repeat("ab", 32)
	writeFile(t, filepath.Join(k.store, "store", "objects"), bad, "not what the name says")
	rep = doctor(exitFailure)
	c = status(rep, "integrity sample", "fail", "objects/"+bad+": corrupt")
	mustContain(t, "fix", c.Fix, "verify-store")
}

// The disk check's thresholds: a build needs hundreds of MiB and tens of
// thousands of inodes.
func TestDoctorDiskCheck(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		avail, total, freeInodes, inodes uint64
		want                             string
	}{
		{100 << 20, 100 * gib, 1e6, 1e7, "fail"},
		{1 * gib, 100 * gib, 1e6, 1e7, "warn"},
		{3 * gib, 100 * gib, 1e6, 1e7, "warn"}, // under 5%
		{50 * gib, 100 * gib, 1e6, 1e7, "ok"},
		{50 * gib, 100 * gib, 1000, 1e7, "warn"},
		{50 * gib, 100 * gib, 0, 0, "ok"}, // no inode limit (btrfs)
	} {
		got := diskCheck(c.avail, c.total, c.freeInodes, c.inodes)
		if got.Status != c.want || (got.Status != "ok") != (got.Fix != "") {
			t.Errorf("diskCheck(%d, %d, %d, %d) = %+v, want %s", c.avail, c.total, c.freeInodes, c.inodes, got, c.want)
		}
	}
}
