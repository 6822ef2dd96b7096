package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeBlocks returns the README's sh blocks, in order.
func readmeBlocks(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && line == "```sh":
			cur = &strings.Builder{}
		case cur != nil && line == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	if cur != nil {
		t.Fatal("README.md: an sh block is not closed")
	}
	return blocks
}

// copySources copies the repository (without .git) to dir.
func copySources(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "man") {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		to := filepath.Join(dir, p)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case !info.Mode().IsRegular() || p == "karapace":
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReadme runs every sh block of the README as written, top to bottom,
// as a newcomer would on a machine set up by the README's test command:
// the first builds karapace from a copy of these sources and runs its main
// job, the install block puts it on PATH, the tour, sharing, D-Bus and
// clean-up blocks run in an empty project directory, the interactive one
// in a real terminal. Real builds from Debian's archive, a real server,
// registry and bus; HOME is a directory of the test's.
func TestReadme(t *testing.T) {
	needReal(t)
	goBin := needTool(t, "go")
	needTool(t, "tmux")
	blocks := readmeBlocks(t)
	if len(blocks) < 7 || strings.TrimSpace(blocks[1]) != "./test.sh" {
		t.Fatalf("README.md: expected the build block, ./test.sh, then the rest; found %d blocks: %q", len(blocks), blocks)
	}
	base, err := os.MkdirTemp("/var/tmp", "karapace-readme-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	home, src, proj := filepath.Join(base, "home"), filepath.Join(base, "src"), filepath.Join(base, "proj")
	for _, d := range []string{home, src, proj, filepath.Join(home, ".local/share/dbus-1/services")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copySources(t, src)
	goenv := func(name string) string {
		out, err := exec.Command(goBin, "env", name).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	env := []string{"HOME=" + home, "LANG=C.UTF-8", "TERM=xterm-256color",
		"PATH=" + home + "/.local/bin:" + filepath.Dir(goBin) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		// The Go build shares the caller's caches, and so its downloads.
		"GOCACHE=" + goenv("GOCACHE"), "GOMODCACHE=" + goenv("GOMODCACHE"), "GOPROXY=" + goenv("GOPROXY"), "GOTOOLCHAIN=local"}
	for _, k := range []string{"KARAPACE_DEBIAN_MIRROR", "KARAPACE_UBUNTU_MIRROR"} {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	karapace := filepath.Join(home, ".local/bin/karapace")
	t.Cleanup(func() {
		if out, err := exec.Command(karapace, "--store", filepath.Join(home, ".local/share/karapace"), "--json", "list").Output(); err == nil {
			var envs []envInfo
			json.Unmarshal(out, &envs)
			for _, e := range envs {
				exec.Command(karapace, "--store", filepath.Join(home, ".local/share/karapace"), "stop", e.EnvID).Run()
			}
		}
		if err := treeInNS(treeJob{Op: "remove", Dir: base}, nil, nil); err != nil {
			t.Errorf("removing %s: %v", base, err)
		}
	})
	reg := startOCIRegistry(t, "")
	bus := startTestBus(t, "", filepath.Join(home, ".local/share/dbus-1/services"), "", env)
	env = append(env, "REGISTRY="+reg.host, "DBUS_SESSION_BUS_ADDRESS="+bus.addr)

	shell := func(i int, dir string) string {
		cmd := exec.Command("/bin/sh", "-ec", blocks[i])
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README block %d, run in %s: %v\n%s\noutput:\n%s", i+1, dir, err, blocks[i], out)
		}
		return string(out)
	}
	out := shell(0, src)
	mustContain(t, "the main job", out, "12.")
	for i := 2; i < len(blocks); i++ {
		b := blocks[i]
		switch {
		case strings.Contains(b, "install -Dm755"):
			shell(i, src)
			if _, err := os.Stat(filepath.Join(home, ".local/share/man/man1/karapace.1")); err != nil {
				t.Fatalf("the install block left no manual page: %v", err)
			}
			data, _ := os.ReadFile(filepath.Join(home, ".local/share/bash-completion/completions/karapace"))
			mustContain(t, "the bash completion", string(data), "complete")
		case strings.Contains(b, "karapace enter"):
			readmeInteractive(t, b, proj, env)
		default:
			out := shell(i, proj)
			switch {
			case strings.Contains(b, "karapace new"):
				mustContain(t, "the tour", out, "git version", "A /srv/hello")
			case strings.Contains(b, "karapace server"):
				mustContain(t, "the sharing block", out, "dev@v1")
			case strings.Contains(b, "busctl"):
				mustContain(t, "the D-Bus block", out, "dev")
			}
		}
	}
	list := exec.Command(karapace, "--json", "list")
	list.Env = env
	left, err := list.Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(left)) != "[]" {
		t.Fatalf("after the clean-up block: %s", left)
	}
}

// readmeInteractive runs each line of an interactive block in a real
// terminal and answers it as a user would.
func readmeInteractive(t *testing.T, block, dir string, env []string) {
	for line := range strings.Lines(block) {
		cmd, _, _ := strings.Cut(line, "#")
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			continue
		}
		script := writeFile(t, t.TempDir(), "line.sh", fmt.Sprintf("#!/bin/sh\ncd %q\nenv -i %s %s\necho readme-exit-$?\nsleep 60\n",
			dir, strings.Join(quoteAll(env), " "), cmd))
		os.Chmod(script, 0o755)
		term := newTmuxSession(t, script, 100, 30)
		switch cmd {
		case "karapace enter dev":
			term.keys("echo inside-$((6*7))-$(cat /etc/debian_version)", "Enter")
			term.waitFor("inside-42-12.")
			term.keys("exit", "Enter")
		case "karapace tui":
			term.waitFor(" dev ")
			term.keys("q")
		default:
			t.Fatalf("README.md: the interactive line %q is new; tell readmeInteractive how to answer it", cmd)
		}
		term.waitFor("readme-exit-0")
	}
}
