package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
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
	names := []string{"user namespaces", "ID mapping", "overlayfs in a user namespace", "fuse-overlayfs", "cgroup delegation", "store",
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
