package main

import (
	"os"
	"path/filepath"
	"testing"
)

// Without newuidmap, only root is mapped: a clear warning, and the
// environment still runs, with the image's other owners unmapped.
func TestNSReducedMapping(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root's mapping is never reduced; the rootless pass of the suite runs this test")
	}
	need(t, planIDMapping().reduced == "", "a full mapping to start from")
	r := testEnvSpec(t)
	logs := captureLog(t)
	t.Setenv("PATH", t.TempDir()) // no newuidmap, no fuse-overlayfs
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", "id -u; stat -c %u /etc/shadow /var/cache/apt/archives/partial")
	if code != 0 || out != "0\n0\n65534\n" {
		t.Fatalf("status %d: %q %s", code, out, errOut)
	}
	mustContain(t, "warnings", logs.String(), "newuidmap/newgidmap are not installed; only root is mapped inside", "sudo apt install uidmap")
}

// The full ID mapping keeps the image's owners: apt's sandbox user and
// the shadow group exist as themselves inside.
func TestNSOwnership(t *testing.T) {
	need(t, planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	r := testEnvSpec(t)
	code, out, errOut := nsRun(t, r, baseEnv(), "", "stat", "-c", "%n %U:%G %a", "/", "/etc/shadow", "/var/cache/apt/archives/partial", "/tmp")
	want := "/ root:root 755\n/etc/shadow root:shadow 640\n/var/cache/apt/archives/partial _apt:root 700\n/tmp root:root 1777\n"
	if code != 0 || out != want {
		t.Fatalf("status %d\n%s%s\nwant:\n%s", code, out, errOut, want)
	}
}

func TestFreeSubordinateStart(t *testing.T) {
	dir := t.TempDir()
	none := filepath.Join(dir, "none")
	u := writeFile(t, dir, "subuid", "alice:100000:65536\nbob:165536:65536\n# junk\nbad:x:1\n")
	g := writeFile(t, dir, "subgid", "alice:100000:65536\ncarol:300000:1000\n")
	for _, c := range []struct {
		files []string
		want  int
	}{
		{[]string{none}, 131072}, // 100000 rounded up
		{[]string{u}, 262144},    // after bob's 165536+65536
		{[]string{u, g}, 327680}, // after carol's 301000
	} {
		if got := freeSubordinateStart(c.files...); got != c.want {
			t.Errorf("%v: %d, want %d", c.files, got, c.want)
		}
	}
}
