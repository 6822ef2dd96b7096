package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The integration tests run this test binary as the karapace command
// (see TestMain), in a fresh store and home, the way a user would.

type kpRun struct {
	t     *testing.T
	base  string
	store string
	home  string
	dir   string // working directory: the project
	env   []string
	// asUser runs karapace as this user (with runuser and env -i) from
	// userBinary, a copy of this binary that the user can run.
	asUser, userBinary string
}

func newKP(t *testing.T) *kpRun {
	t.Helper()
	base, err := os.MkdirTemp("/var/tmp", "karapace-cli-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	k := &kpRun{t: t, base: base, store: base + "/store", home: base + "/home", dir: base + "/project"}
	for _, d := range []string{k.home, k.dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	k.env = []string{"KARAPACE_TEST_CLI=1", "PATH=" + os.Getenv("PATH"), "HOME=" + k.home, "KARAPACE_STORE=" + k.store,
		"XDG_DATA_HOME=" + k.home + "/.local/share", "XDG_CONFIG_HOME=" + k.home + "/.config", "KARAPACE_LOCK_WAIT=60s", "LANG=C.UTF-8",
		// A race-enabled binary otherwise sleeps a second at every exit.
		"GORACE=atexit_sleep_ms=0"}
	t.Cleanup(func() {
		code, out, _ := k.run("--json", "list")
		var envs []envInfo
		if code == 0 && json.Unmarshal([]byte(out), &envs) == nil {
			for _, e := range envs {
				if e.State == stateRunning {
					k.run("stop", e.EnvID)
				}
			}
		}
		if err := treeInNS(treeJob{Op: "remove", Dir: base}, nil, nil); err != nil {
			t.Errorf("removing %s: %v", base, err)
		}
	})
	return k
}

func (k *kpRun) cmd(stdin string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = k.env
	if k.asUser != "" {
		argv := append(append([]string{"-u", k.asUser, "--", "env", "-i"}, k.env...), k.userBinary)
		cmd = exec.Command("runuser", append(argv, args...)...)
	}
	cmd.Dir = k.dir
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

func (k *kpRun) runStdin(stdin string, args ...string) (int, string, string) {
	k.t.Helper()
	cmd := k.cmd(stdin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			k.t.Fatalf("karapace %v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

func (k *kpRun) run(args ...string) (int, string, string) {
	k.t.Helper()
	return k.runStdin("", args...)
}

// ok runs a command that must succeed and returns its stdout.
func (k *kpRun) ok(args ...string) string {
	k.t.Helper()
	code, out, errOut := k.run(args...)
	if code != 0 {
		k.t.Fatalf("karapace %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs a command that must fail with code and say want on stderr.
func (k *kpRun) fails(code int, want string, args ...string) string {
	k.t.Helper()
	got, out, errOut := k.run(args...)
	if got != code || !strings.Contains(errOut, want) {
		k.t.Fatalf("karapace %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr to contain %q", strings.Join(args, " "), got, code, out, errOut, want)
	}
	return errOut
}

func (k *kpRun) jsonOut(v any, args ...string) {
	k.t.Helper()
	out := k.ok(append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		k.t.Fatalf("karapace --json %v: %v\n%s", args, err, out)
	}
}

func (k *kpRun) writeManifest(body string) string {
	k.t.Helper()
	return writeFile(k.t, k.dir, "karapace.toml", body)
}

// tinyImage writes a small gzip root filesystem tarball for mock builds.
func tinyImage(t testing.TB, path string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range []struct {
		name, body string
		dir        bool
	}{{"./", "", true}, {"etc/", "", true}, {"etc/os-release", "ID=tiny\n", false}, {"etc/issue", "tiny\n", false}, {"root/", "", true}} {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if e.dir {
			h.Mode, h.Typeflag, h.Size = 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	gz.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// newMockKP is newKP with a project whose manifest (mockManifest(pkgs))
// builds on the mock backend from a tiny local image.
func newMockKP(t *testing.T, pkgs string) *kpRun {
	t.Helper()
	k := newKP(t)
	tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	k.writeManifest(mockManifest(pkgs))
	return k
}

func mockManifest(pkgs string) string {
	return fmt.Sprintf(`manifest_version = 1
[base]
image = "./image.tar.gz"
[system]
packages = [%s]
[gui]
apps = ["editor"]
[runtime]
backend = "mock"
`, pkgs)
}

// The whole life of a real environment, on a Debian root filesystem,
// as root and rootless.
func TestCLIEndToEndReal(t *testing.T) {
	rootfs := testRootfsTar(t)
	k := newKP(t)
	k.ok("new", "demo", "--template", "minimal")
	os.MkdirAll(filepath.Join(k.dir, "src"), 0o755)
	os.WriteFile(filepath.Join(k.dir, "src", "main.c"), []byte("int main(void){return 0;}\n"), 0o644)
	k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n[mounts]\nsrc = \"./src:/src\"\n", rootfs))
	id := strings.TrimSpace(k.ok("build", "--name", "demo"))

	if out := k.ok("exec", "demo", "--", "cat", "/etc/debian_version", "/src/main.c"); !strings.HasPrefix(out, "12.") || !strings.Contains(out, "int main") {
		t.Fatalf("exec: %q", out)
	}
	k.ok("exec", "demo", "--", "sh", "-c", "echo one > /root/a.txt && rm /etc/issue && echo made > /src/out.txt")
	if got, _ := os.ReadFile(filepath.Join(k.dir, "src", "out.txt")); string(got) != "made\n" {
		t.Fatalf("write through the mount: %q", got)
	}
	diff1 := k.ok("diff", "demo")
	mustContain(t, "diff", diff1, "A /root/a.txt\n", "D /etc/issue\n")
	if strings.Contains(diff1, "/src") {
		t.Fatalf("the diff shows the mount:\n%s", diff1)
	}
	snap := strings.TrimSpace(k.ok("commit", "demo"))
	k.ok("exec", "demo", "--", "sh", "-c", "echo two > /root/b.txt && echo changed > /root/a.txt")
	mustContain(t, "diff", k.ok("diff", "demo"), "A /root/b.txt\n")
	// Changes no snapshot holds are not dropped without --force; a
	// snapshot is named by its number too.
	k.fails(1, "has changes no snapshot holds", "restore", "demo", snap)
	k.ok("restore", "demo", "#1", "--force")
	if out := k.ok("diff", "demo"); out != diff1 {
		t.Fatalf("after restore the diff is\n%s\nnot the snapshot's\n%s", out, diff1)
	}
	if out := k.ok("exec", "demo", "--", "cat", "/root/a.txt"); out != "one\n" {
		t.Fatalf("restored file: %q", out)
	}

	// Running: visible in list, protected from destroy, stoppable.
	bg := k.cmd("", "exec", "demo", "--", "sleep", "60")
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	running := false
	for i := 0; i < 100 && !running; i++ {
		var envs []envInfo
		k.jsonOut(&envs, "list")
		running = len(envs) == 1 && envs[0].State == stateRunning && envs[0].Pid > 0
		time.Sleep(50 * time.Millisecond)
	}
	if !running {
		t.Fatal("list never showed the environment running")
	}
	k.fails(1, "is running; 'karapace stop demo' first", "destroy", "demo")
	k.fails(1, "is running", "freeze", "demo")
	k.ok("stop", "demo")
	bg.Wait()
	if code := bg.ProcessState.ExitCode(); code != 128+15 {
		t.Fatalf("the stopped session ended with %d", code)
	}

	k.ok("freeze", "demo")
	code, _, errOut := k.run("exec", "demo", "--", "touch", "/root/c.txt")
	if code == 0 || !strings.Contains(errOut, "Read-only file system") {
		t.Fatalf("write in a frozen environment: %d %q", code, errOut)
	}
	k.ok("unfreeze", "demo")
	k.ok("archive", "demo")
	k.fails(1, "archived and cannot be entered", "enter", "demo")
	k.ok("rename", "demo", "kept")
	var rep gcReport
	k.jsonOut(&rep, "gc")
	if rep.EnvDirs != 0 || rep.Layers != 0 {
		t.Fatalf("gc collected from an archived environment: %+v", rep)
	}
	k.ok("unarchive", "kept")
	if out := k.ok("exec", "kept", "--", "cat", "/root/a.txt"); out != "one\n" {
		t.Fatalf("after gc: %q", out)
	}
	k.ok("destroy", "kept")
	k.jsonOut(&rep, "gc")
	if rep.Layers == 0 || rep.Objects == 0 || rep.Bytes < 50<<20 {
		t.Fatalf("gc after destroy: %+v", rep)
	}
	if _, err := os.Stat(filepath.Join(k.store, "env", id)); !os.IsNotExist(err) {
		t.Fatal("the environment's directory survived")
	}
	k.ok("verify-store")
}
