package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestTemplatesAreValidManifests(t *testing.T) {
	names := templateNames()
	if strings.Join(names, ",") != "dev,gui-dev,minimal,rust-dev,ubuntu-dev" {
		t.Fatalf("templates: %v", names)
	}
	for _, n := range names {
		src, err := templateSource(n)
		if err != nil {
			t.Fatal(err)
		}
		m, err := parseManifest(n, "/w/karapace.toml", src)
		if err != nil {
			t.Fatalf("template %s: %v", n, err)
		}
		// formatManifest gives a manifest with the same meaning.
		out, err := formatManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := parseManifest(n, "/w/karapace.toml", out)
		if err != nil {
			t.Fatalf("formatted %s: %v\n%s", n, err, out)
		}
		if !bytes.Equal(m.canonicalJSON(), m2.canonicalJSON()) {
			t.Fatalf("template %s changes meaning when formatted:\n%s", n, out)
		}
	}
}

func TestNewWritesTemplate(t *testing.T) {
	t.Chdir(t.TempDir())
	code, out, errOut := runCLI(t, nil, "new", "myenv", "--template", "dev")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	mustContain(t, "stdout", out, "wrote ./karapace.toml (template dev, environment myenv)", "next: karapace build\n")
	got, _ := os.ReadFile("karapace.toml")
	want, _ := templateSource("dev")
	if !bytes.Equal(got, bytes.Replace(want, []byte("manifest_version = 1\n"), []byte("manifest_version = 1\nname = \"myenv\"\n"), 1)) {
		t.Fatalf("written manifest is not the template with the name:\n%s", got)
	}

	// No overwrite without --force when not on a terminal.
	os.WriteFile("karapace.toml", []byte("mine"), 0o644)
	code, _, errOut = runCLI(t, nil, "new", "myenv", "-t", "minimal")
	if code != exitFailure {
		t.Fatalf("overwrite: exit %d", code)
	}
	mustContain(t, "stderr", errOut, "refusing to overwrite ./karapace.toml (pass --force)")
	if got, _ := os.ReadFile("karapace.toml"); string(got) != "mine" {
		t.Fatal("existing manifest was changed")
	}
	code, out, _ = runCLI(t, nil, "--json", "new", "myenv", "--force", "--template=minimal")
	if code != exitOK {
		t.Fatalf("--force: exit %d", code)
	}
	mustContain(t, "json", out, `"template": "minimal"`, `"name": "myenv"`)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"new", "my env"}, "new: "},
		{[]string{"new", "x", "--template", "nope"}, `unknown template "nope" (templates: dev, gui-dev, minimal, rust-dev, ubuntu-dev)`},
		{[]string{"new"}, "new: expected 1 argument(s): NAME"},
		{[]string{"new", "x", "--template"}, "flag --template needs a value"},
		{[]string{"new", "x", "--force=yes"}, "flag --force takes no value"},
	} {
		code, _, errOut := runCLI(t, nil, tc.args...)
		if code != exitFailure || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestNewPromptsOnTerminal(t *testing.T) {
	t.Chdir(t.TempDir())
	master, slave := openPTY(t)
	// base image, packages, workspace mount, backend, network isolation
	answers := "ubuntu/24.04\ngit make\n./src:/src:ro\nMOCK\ny\n"
	if _, err := master.Write([]byte(answers)); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"new", "proj"}, slave, &out, &errb, func(string) string { return "" })
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	mustContain(t, "prompts", errb.String(), "base image [debian/bookworm]:", "packages (space-separated) []:", "isolate the network")
	m, err := loadManifest("karapace.toml")
	if err != nil {
		t.Fatal(err)
	}
	if m.BaseImage != "ubuntu/24.04" || strings.Join(m.Packages, " ") != "git make" || m.Backend != "mock" || !m.NetworkIsolation {
		t.Fatalf("manifest from answers: %+v", m)
	}
	if len(m.Mounts) != 1 || m.Mounts[0].Container != "/src" || !m.Mounts[0].ReadOnly {
		t.Fatalf("mounts: %+v", m.Mounts)
	}
}
