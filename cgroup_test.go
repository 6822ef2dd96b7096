package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestNSResourceLimits(t *testing.T) {
	r := testEnvSpec(t)
	r.MemoryMB = 64
	r.CPUShares = 512
	logs := captureLog(t)
	// tail keeps a line-less stream in memory; 300 MB of it cannot fit.
	code, out, errOut, err := nsRunErr(r, baseEnv(), "", "/bin/bash", "-c", "set -o pipefail; cat /proc/self/cgroup; head -c 300000000 /dev/zero | tail -n 1 | wc -c")
	if err != nil {
		t.Fatal(err)
	}
	if _, why := cgroup2Parent([]string{"memory", "cpu"}); why != "" && os.Geteuid() != 0 {
		// No cgroup we may use: the environment runs, unlimited, after a clear warning.
		if code != 0 {
			t.Fatalf("status %d: %s", code, errOut)
		}
		mustContain(t, "warnings", logs.String(), "resource limits are not applied: "+why)
		t.Logf("limits not applicable here (%s): checked the warning, and that the environment still runs", why)
		return
	}
	// The command's first child (cat) is in the cgroup too.
	if !strings.Contains(out, "karapace-"+r.ShortID) {
		t.Fatalf("not in the environment's cgroup:\n%s", out)
	}
	if code != 128+int(syscall.SIGKILL) {
		t.Fatalf("300 MB under a 64 MB limit: status %d, want the OOM kill's %d: %q %q", code, 128+int(syscall.SIGKILL), out, errOut)
	}
	// The instance has ended with its last session: its cgroups are gone.
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !strings.Contains(f[2], "karapace-"+r.ShortID) {
			continue
		}
		for _, mnt := range []string{"/sys/fs/cgroup/" + strings.Split(f[1], ",")[0], "/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			if _, err := os.Stat(mnt + f[2]); !os.IsNotExist(err) {
				t.Errorf("cgroup %s is left behind (%v)", mnt+f[2], err)
			}
		}
	}
}
