package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// completeBash asks the generated bash completion what it offers after
// the words typed so far (the last one is being completed).
func completeBash(t *testing.T, script, pathDir string, words ...string) []string {
	t.Helper()
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, fmt.Sprintf("%q", w))
	}
	prog := fmt.Sprintf(`source %q; COMP_WORDS=(%s); COMP_CWORD=%d; _karapace; printf '%%s\n' "${COMPREPLY[@]}"`, script, strings.Join(quoted, " "), len(words)-1)
	cmd := exec.Command(needTool(t, "bash"), "--norc", "-c", prog)
	cmd.Env = append(os.Environ(), "PATH="+pathDir+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestCompletionsBashReal(t *testing.T) {
	k := newMockKP(t, "")
	id := strings.TrimSpace(k.ok("build", "--name", "alpha"))
	// "karapace" on PATH is this binary, acting as the CLI on the test store.
	bin := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nexec env %s %q \"$@\"\n", strings.Join(quoteAll(k.env), " "), os.Args[0])
	os.WriteFile(filepath.Join(bin, "karapace"), []byte(wrapper), 0o755)
	script := filepath.Join(bin, "karapace.bash")
	os.WriteFile(script, []byte(k.ok("completions", "bash")), 0o644)
	os.MkdirAll(filepath.Join(k.dir, "somedir"), 0o755)
	other := filepath.Join(k.base, "other-store")
	k.ok("--store", other, "build", "--name", "beta")

	for _, tc := range []struct {
		words []string
		want  []string
		not   []string
	}{
		{[]string{"karapace", "ex"}, []string{"exec"}, []string{"enter"}},
		{[]string{"karapace", ""}, []string{"build", "completions", "verify-store", "--store", "--json"}, nil},
		{[]string{"karapace", "build", "--lo"}, []string{"--locked"}, nil},
		{[]string{"karapace", "exec", "al"}, []string{"alpha"}, nil},
		{[]string{"karapace", "exec", ""}, []string{"alpha", id[:12]}, nil},
		{[]string{"karapace", "--json", "destroy", id[:3]}, []string{id[:12]}, []string{"alpha"}},
		{[]string{"karapace", "new", "x", "--template", "d"}, []string{"dev"}, []string{"minimal"}},
		{[]string{"karapace", "completions", "z"}, []string{"zsh"}, nil},
		{[]string{"karapace", "--store", filepath.Join(k.dir, "some")}, []string{filepath.Join(k.dir, "somedir")}, nil},
		{[]string{"karapace", "exec", "alpha", "--", "l"}, nil, []string{"alpha"}},
		// The environments of the store the command line names.
		{[]string{"karapace", "--store", other, "exec", ""}, []string{"beta"}, []string{"alpha"}},
		{[]string{"karapace", "exec", "--store=" + other, ""}, []string{"beta"}, []string{"alpha"}},
	} {
		checkOffers(t, fmt.Sprintf("%q", tc.words), completeBash(t, script, bin, tc.words...), tc.want, tc.not)
	}
}

// fish's own completion engine, asked what it offers on a command line.
func TestCompletionsFishReal(t *testing.T) {
	fish := needTool(t, "fish")
	k := newMockKP(t, "")
	k.ok("build", "--name", "alpha")
	other := filepath.Join(k.base, "other-store")
	k.ok("--store", other, "build", "--name", "beta")
	bin := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nexec env %s %q \"$@\"\n", strings.Join(quoteAll(k.env), " "), os.Args[0])
	os.WriteFile(filepath.Join(bin, "karapace"), []byte(wrapper), 0o755)
	script := filepath.Join(bin, "karapace.fish")
	os.WriteFile(script, []byte(k.ok("completions", "fish")), 0o644)
	for _, tc := range []struct {
		line      string
		want, not []string
	}{
		{"karapace ver", []string{"verify-store"}, []string{"exec"}},
		{"karapace exec ", []string{"alpha"}, []string{"beta"}},
		{"karapace --store " + other + " exec ", []string{"beta"}, []string{"alpha"}},
		{"karapace build --lo", []string{"--locked"}, nil},
		{"karapace completions ", []string{"bash", "zsh", "fish"}, nil},
	} {
		cmd := exec.Command(fish, "--no-config", "-c", fmt.Sprintf("source %q; complete -C %q", script, tc.line))
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			got = append(got, strings.SplitN(l, "\t", 2)[0])
		}
		checkOffers(t, fmt.Sprintf("%q", tc.line), got, tc.want, tc.not)
	}
}

// checkOffers fails unless a completion offered every word of want and
// none of not.
func checkOffers(t *testing.T, what string, got, want, not []string) {
	t.Helper()
	for _, w := range want {
		if !contains(got, w) {
			t.Errorf("%s: %v lacks %q", what, got, w)
		}
	}
	for _, w := range not {
		if contains(got, w) {
			t.Errorf("%s: %v offers %q", what, got, w)
		}
	}
}

func quoteAll(env []string) []string {
	var out []string
	for _, e := range env {
		out = append(out, fmt.Sprintf("%q", e))
	}
	return out
}

// The other shells' scripts parse in the real shells and cover every
// command.
func TestCompletionsOtherShells(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ shell, tool string }{
		{"zsh", "zsh"}, {"fish", "fish"}, {"elvish", "elvish"}, {"powershell", ""},
	} {
		code, out, errOut := runCLI(t, nil, "completions", tc.shell)
		if code != 0 {
			t.Fatalf("%s: %d %s", tc.shell, code, errOut)
		}
		for _, c := range commands {
			if !strings.Contains(out, c.name) {
				t.Errorf("%s completion lacks %s", tc.shell, c.name)
			}
		}
		if tc.tool == "" {
			continue // no PowerShell in Debian's archive to parse it with
		}
		p := filepath.Join(dir, "karapace."+tc.shell)
		if tc.shell == "elvish" {
			// The edit: module exists only in an interactive elvish.
			out = strings.Replace(out, "set edit:completion:arg-completer[karapace] =", "var completer =", 1)
		}
		os.WriteFile(p, []byte(out), 0o644)
		args := map[string][]string{"zsh": {"-n", p}, "fish": {"--no-execute", p}, "elvish": {"-compileonly", p}}[tc.shell]
		if out, err := exec.Command(needTool(t, tc.tool), args...).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("%s does not accept its completion: %v\n%s", tc.shell, err, out)
		}
	}
	code, _, errOut := runCLI(t, nil, "completions", "tcsh")
	if code != exitFailure || !strings.Contains(errOut, `unknown shell "tcsh"`) {
		t.Fatalf("unknown shell: %d %s", code, errOut)
	}
}
