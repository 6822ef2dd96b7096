package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

func TestManPagesLintClean(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := runCLI(t, nil, "man-pages", filepath.Join(dir, "a"))
	if code != 0 {
		t.Fatalf("%d %s", code, errOut)
	}
	mustContain(t, "man-pages", out, fmt.Sprintf("wrote %d manual pages", len(commands)+1))
	runCLI(t, nil, "man-pages", filepath.Join(dir, "b"))
	pages, _ := filepath.Glob(filepath.Join(dir, "a", "*.1"))
	if len(pages) != len(commands)+1 {
		t.Fatalf("%d pages", len(pages))
	}
	for _, p := range pages {
		a, _ := os.ReadFile(p)
		b, _ := os.ReadFile(filepath.Join(dir, "b", filepath.Base(p)))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two runs", filepath.Base(p))
		}
	}
	lint, err := exec.Command(needTool(t, "mandoc"), append([]string{"-Tlint", "-Wwarning"}, pages...)...).CombinedOutput()
	if err != nil || len(lint) > 0 {
		t.Fatalf("mandoc -Tlint: %v\n%s", err, lint)
	}
	text, err := exec.Command("mandoc", "-Tutf8", filepath.Join(dir, "a", "karapace-build.1")).Output()
	if err != nil {
		t.Fatal(err)
	}
	plain := regexp.MustCompile(".\x08").ReplaceAllString(string(text), "") // overstrike bold
	mustContain(t, "karapace-build(1)", plain, "--locked", "--require-pinned-image", "EXIT STATUS", "karapace(1)")
}
