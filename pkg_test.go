package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func pkgManagerNamed(t *testing.T, name string) *pkgManager {
	t.Helper()
	for i := range pkgManagers {
		if pkgManagers[i].name == name {
			return &pkgManagers[i]
		}
	}
	t.Fatalf("no package manager %s", name)
	return nil
}

// The exact command lines: non-interactive installs, and the locked forms
// that name each package at its version.
func TestPackageManagerCommands(t *testing.T) {
	locked := []lockedPackage{{"git", "1:2.39.5-0+deb12u2"}, {"curl", "7.88.1-10+deb12u12"}}
	aptInstall := []string{"apt-get", "-q", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "install"}
	dnfInstall := []string{"dnf", "-y", "--setopt=install_weak_deps=False", "install"}
	zypperInstall := []string{"zypper", "--non-interactive", "install", "--no-recommends"}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, tc := range []struct {
		pm             string
		resolve, exact [][]string
	}{
		{"apt",
			[][]string{{"apt-get", "-q", "update"}, cat(aptInstall, []string{"git", "curl"})},
			[][]string{{"apt-get", "-q", "update"}, cat(aptInstall, []string{"--allow-downgrades", "git=1:2.39.5-0+deb12u2", "curl=7.88.1-10+deb12u12"})}},
		{"dnf",
			[][]string{cat(dnfInstall, []string{"git", "curl"})},
			[][]string{cat(dnfInstall, []string{"git-1:2.39.5-0+deb12u2", "curl-7.88.1-10+deb12u12"})}},
		{"zypper",
			[][]string{{"zypper", "--non-interactive", "refresh"}, cat(zypperInstall, []string{"git", "curl"})},
			[][]string{{"zypper", "--non-interactive", "refresh"}, cat(zypperInstall, []string{"--oldpackage", "git=1:2.39.5-0+deb12u2", "curl=7.88.1-10+deb12u12"})}},
		{"pacman",
			[][]string{{"pacman", "-Syu", "--needed", "--noconfirm", "git", "curl"}},
			nil},
	} {
		pm := pkgManagerNamed(t, tc.pm)
		got, err := pm.installCommands([]string{"git", "curl"}, nil)
		if err != nil || !reflect.DeepEqual(got, tc.resolve) {
			t.Errorf("%s resolving: %q %v\nwant %q", tc.pm, got, err, tc.resolve)
		}
		got, err = pm.installCommands([]string{"git", "curl"}, locked)
		if tc.exact == nil {
			if err == nil || !strings.Contains(err.Error(), "--locked: pacman cannot install exact versions") {
				t.Errorf("%s locked: %q %v", tc.pm, got, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.exact) {
			t.Errorf("%s locked: %q %v\nwant %q", tc.pm, got, err, tc.exact)
		}
	}
}

// The version queries and what their output parses to.
func TestPackageManagerQueries(t *testing.T) {
	for _, tc := range []struct {
		pm, out string
		query   []string
		want    map[string]string
	}{
		{"apt", "ii \tgit\t1:2.39.5-0+deb12u2\nrc \told\t1.0\niU \thalf\t2.0\nii \tlibc6\t2.36-9+deb12u9\n\n",
			[]string{"dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"},
			map[string]string{"git": "1:2.39.5-0+deb12u2", "libc6": "2.36-9+deb12u9"}},
		{"dnf", "git\t0:2.47.1-1.fc41\nperl-Error\t1:0.17029-16.fc41\n",
			[]string{"rpm", "-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"},
			map[string]string{"git": "2.47.1-1.fc41", "perl-Error": "1:0.17029-16.fc41"}},
		{"zypper", "git\t2.47.1-1.1\nzypper\t1.14.79-1.1\n",
			[]string{"rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n"},
			map[string]string{"git": "2.47.1-1.1", "zypper": "1.14.79-1.1"}},
		{"pacman", "git 2.47.1-1\nglibc 2.40+r16+gaa533d58ff-2\n",
			[]string{"pacman", "-Q"},
			map[string]string{"git": "2.47.1-1", "glibc": "2.40+r16+gaa533d58ff-2"}},
	} {
		pm := pkgManagerNamed(t, tc.pm)
		if !reflect.DeepEqual(pm.query, tc.query) {
			t.Errorf("%s query: %q", tc.pm, pm.query)
		}
		if got := pm.parse(tc.out); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s parse: %v, want %v", tc.pm, got, tc.want)
		}
	}
	// Each is found by its marker; apt first when several are there.
	for _, name := range []string{"apt", "dnf", "zypper", "pacman"} {
		dir := t.TempDir()
		writeFile(t, dir, pkgManagerNamed(t, name).marker, "")
		if pm, err := detectPackageManager([]string{t.TempDir(), dir}); err != nil || pm.name != name {
			t.Errorf("%s: detected %v %v", name, pm, err)
		}
	}
	if _, err := detectPackageManager([]string{t.TempDir()}); err == nil || !strings.Contains(err.Error(), "apt, dnf, zypper or pacman") {
		t.Errorf("no package manager: %v", err)
	}
}

// fakePacmanImage writes the test root filesystem as an Arch-like image:
// apt-get taken out, and a pacman that "installs" packages (version
// 1.0-1) by recording them, and fails unless called with -Syu --needed
// --noconfirm or -Q.
func fakePacmanImage(t *testing.T, path string) {
	t.Helper()
	in, err := os.Open(testRootfsTar(t))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	bw := bufio.NewWriterSize(out, 1<<20)
	tr, tw := tar.NewReader(bufio.NewReaderSize(in, 1<<20)), tar.NewWriter(bw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "./") == "usr/bin/apt-get" {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	script := `#!/bin/sh
db=/var/lib/fakepacman/installed
case "$1 $2 $3" in
"-Q  ") cat $db ;;
"-Syu --needed --noconfirm")
	shift 3
	echo ":: Synchronizing package databases..."
	echo ":: Starting full system upgrade..."
	for p; do echo "installing $p..."; echo "$p 1.0-1" >> $db; done ;;
*) echo "fake pacman: unexpected arguments: $*" >&2; exit 1 ;;
esac
`
	for _, f := range []struct {
		name, body string
		mode       int64
	}{{"./var/lib/fakepacman/", "", 0o755}, {"./var/lib/fakepacman/installed", "filesystem 2024.11.21-1\n", 0o644}, {"./usr/bin/pacman", script, 0o755}} {
		h := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg}
		if strings.HasSuffix(f.name, "/") {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, f.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A package manager that cannot pin (pacman) resolves again, with a
// warning, when a lock exists but its packages were never installed on
// this machine; --locked keeps refusing. On a terminal the install shows
// a status line that is gone at the end; piped, nothing.
func TestPacmanLockResolvesAgain(t *testing.T) {
	k := newKP(t)
	fakePacmanImage(t, filepath.Join(k.dir, "arch.tar"))
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"./arch.tar\"\n[system]\npackages = [\"foo\", \"bar\"]\n")

	stdout, terminal := k.onTerminal("build")
	mustContain(t, "terminal", terminal, "installing bar foo with pacman", "importing arch.tar")
	// The latest line of pacman's output when it was drawn: which one
	// depends on how the output arrived.
	if !regexp.MustCompile(`\r\x1b\[Kpacman: (:: Synchronizing package databases|:: Starting full system upgrade|installing (foo|bar))\.\.\.`).MatchString(terminal) {
		t.Fatalf("no status line of pacman's output: %q", terminal)
	}
	if !strings.HasSuffix(strings.TrimRight(terminal[:strings.LastIndex(terminal, "built ")], "\r\n"), "\r\x1b[K") {
		t.Fatalf("the status line is not cleared before the build's last line: %q", terminal)
	}
	id := strings.TrimSpace(stdout)
	l, err := loadLock(filepath.Join(k.dir, "karapace.lock"))
	if err != nil || !reflect.DeepEqual(l.Packages, []lockedPackage{{"bar", "1.0-1"}, {"foo", "1.0-1"}}) {
		t.Fatalf("lock: %v %+v", err, l)
	}
	lock, _ := os.ReadFile(filepath.Join(k.dir, "karapace.lock"))

	// This machine has the packages of the lock: no pacman run.
	if code, out, errOut := k.run("-v", "build", "--locked"); code != 0 || strings.TrimSpace(out) != id || !strings.Contains(errOut, "from the store") || strings.Contains(errOut, "installing") {
		t.Fatalf("build --locked here: %d %q\n%s", code, out, errOut)
	}
	// A fresh machine (an empty store): resolved again, with a warning,
	// to the same environment; piped, no progress.
	k.env = append(k.env, "KARAPACE_STORE="+filepath.Join(k.base, "fresh"))
	code, out2, errOut := k.run("build")
	if code != 0 || strings.TrimSpace(out2) != id {
		t.Fatalf("build on a fresh machine: %d %q\n%s", code, out2, errOut)
	}
	mustContain(t, "build", errOut, "pacman cannot install the locked versions: resolving the packages again")
	if strings.ContainsAny(errOut, "\r\x1b") {
		t.Fatalf("progress on a pipe: %q", errOut)
	}
	if again, _ := os.ReadFile(filepath.Join(k.dir, "karapace.lock")); !bytes.Equal(again, lock) {
		t.Fatalf("the lock changed:\n%s", again)
	}
	k.env = append(k.env, "KARAPACE_STORE="+filepath.Join(k.base, "fresh2"))
	k.fails(1, "--locked: pacman cannot install exact versions from its repositories", "build", "--locked")
}

// A failed package install names a log that is still there after the
// build's working directory is gone, in the store's logs/.
func TestFailedInstallKeepsLog(t *testing.T) {
	need(t, os.Geteuid() == 0 || planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n[system]\npackages = [\"karapace-no-such-package\"]\n", rootfs))
	errOut := k.fails(1, "installing packages with apt", "build")
	m := regexp.MustCompile(`last lines of (\S+/logs/\S+-apt-install\.log):`).FindStringSubmatch(errOut)
	if m == nil {
		t.Fatalf("no kept log named:\n%s", errOut)
	}
	log, err := os.ReadFile(m[1])
	if err != nil || !strings.Contains(string(log), "karapace-no-such-package") {
		t.Fatalf("the kept log: %v\n%s", err, log)
	}
	var rep gcReport
	k.jsonOut(&rep, "gc")
	if _, err := os.Stat(m[1]); err != nil || rep.Logs != 0 {
		t.Fatalf("gc removed a fresh log: %v %+v", err, rep)
	}
	k.ok("verify-store")
}
