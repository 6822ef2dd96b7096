package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fullManifest = `manifest_version = 1

[base]
image = "  debian/bookworm "

[system]
packages = ["git", "curl", "git", " clang "]

[gui]
apps = ["ide", "debugger"]

[hardware]
gpu = true
audio = false

[mounts]
workspace = "./:/workspace"
cache = "/tmp/cache:/cache:ro"
home = "~/.config:/cfg:rw"

[runtime]
backend = "OCI"
network_isolation = true

[runtime.resource_limits]
cpu_shares = 1024
memory_limit_mb = 4096
`

func TestManifestParseAndNormalize(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "karapace.toml", fullManifest)
	m, err := loadManifest(p)
	if err != nil {
		t.Fatal(err)
	}
	if m.BaseImage != "debian/bookworm" {
		t.Errorf("image %q", m.BaseImage)
	}
	if strings.Join(m.Packages, ",") != "clang,curl,git" {
		t.Errorf("packages %v", m.Packages)
	}
	if strings.Join(m.Apps, ",") != "debugger,ide" {
		t.Errorf("apps %v", m.Apps)
	}
	if !m.GPU || m.Audio || m.Backend != "oci" || !m.NetworkIsolation || m.CPUShares != 1024 || m.MemoryLimitMB != 4096 {
		t.Errorf("fields %+v", m)
	}
	want := []mount{
		{Label: "cache", Source: "/tmp/cache", Host: "/tmp/cache", Container: "/cache", ReadOnly: true},
		{Label: "home", Source: "~/.config", Container: "/cfg"},
		{Label: "workspace", Source: ".", Host: dir, Container: "/workspace"},
	}
	if len(m.Mounts) != len(want) {
		t.Fatalf("mounts %+v", m.Mounts)
	}
	for i := range want {
		if m.Mounts[i] != want[i] {
			t.Errorf("mount %d: got %+v want %+v", i, m.Mounts[i], want[i])
		}
	}
}

// Any TOML spelling of the same meaning gives the same canonical JSON.
func TestManifestCanonicalJSONSpellings(t *testing.T) {
	spellings := []string{
		fullManifest,
		// dotted keys, inline tables, literal strings, comments, other order
		`# comment
runtime.backend = 'oci'   # lower-cased anyway
runtime.network_isolation = true
runtime.resource_limits = { memory_limit_mb = 4_096, cpu_shares = 0x400 }
manifest_version = 1
base = { image = "debian/bookworm" }
system.packages = [
  "curl", # trailing comments
  "git",
  "clang",
]
gui.apps = ['ide', "debugger", 'ide']
hardware = { gpu = true, audio = false }
[mounts]
"workspace" = '.:/workspace'
cache = """/tmp/cache:/cache:ro"""
home = "~/.config:/cfg"
`,
		// CRLF line endings
		strings.ReplaceAll(fullManifest, "\n", "\r\n"),
	}
	dir := t.TempDir()
	var first []byte
	for i, s := range spellings {
		p := writeFile(t, dir, "karapace.toml", s)
		m, err := loadManifest(p)
		if err != nil {
			t.Fatalf("spelling %d: %v", i, err)
		}
		j := m.canonicalJSON()
		if i == 0 {
			first = j
			if bytes.ContainsAny(j, " \n") && !bytes.Contains(j, []byte(`"`)) {
				t.Fatalf("not compact: %s", j)
			}
			continue
		}
		if !bytes.Equal(j, first) {
			t.Errorf("spelling %d gives different canonical JSON:\n%s\n%s", i, j, first)
		}
	}
	if !bytes.HasPrefix(first, []byte(`{"base_image":"debian/bookworm","cpu_shares":1024,`)) {
		t.Errorf("canonical JSON keys not sorted / compact: %s", first)
	}
}

func sortedJSON(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func TestManifestMinimalDefaults(t *testing.T) {
	m, err := parseManifest("k.toml", "/x/k.toml", []byte("manifest_version = 1\n[base]\nimage = \"images:alpine/3.20\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Backend != "namespace" || m.NetworkIsolation || m.GPU || len(m.Packages) != 0 || m.Dir != "/x" {
		t.Fatalf("defaults: %+v", m)
	}
}

// badManifests: each must fail with exit code 2 and name file, line,
// column and key.
var badManifests = []struct{ name, src, want string }{
	{"empty file", "", "k.toml:1:1: manifest_version: missing"},
	{"version missing", "[base]\nimage = \"x\"\n", "manifest_version: missing"},
	{"version 2", "manifest_version = 2\n[base]\nimage = \"x\"\n", "k.toml:1:1: manifest_version: unsupported version 2"},
	{"version string", "manifest_version = \"1\"\n[base]\nimage = \"x\"\n", "k.toml:1:1: manifest_version: expected the integer 1, got a string"},
	{"version float", "manifest_version = 1.0\n[base]\nimage = \"x\"\n", "manifest_version: expected the integer 1, got a float"},
	{"base missing", "manifest_version = 1\n", "base: missing section [base]"},
	{"image missing", "manifest_version = 1\n[base]\n", "k.toml:2:1: base.image: missing"},
	{"image empty", "manifest_version = 1\n[base]\nimage = \"   \"\n", "k.toml:3:1: base.image: must not be empty"},
	{"image int", "manifest_version = 1\n[base]\nimage = 3\n", "k.toml:3:1: base.image: expected a string, got an integer"},
	{"image bad scheme", "manifest_version = 1\n[base]\nimage = \"ftp://x/y\"\n", "base.image: unsupported image URL scheme"},
	{"image bad digest", "manifest_version = 1\n[base]\nimage = \"https://x/y.tar#sha256=abc\"\n", "base.image: image digest"},
	{"alias with digest", "manifest_version = 1\n[base]\nimage = \"debian#sha256=00\"\n", "base.image: an alias cannot carry a digest"},
	{"image with space", "manifest_version = 1\n[base]\nimage = \"debian bookworm\"\n", "base.image: image reference"},
	{"base not table", "manifest_version = 1\nbase = \"debian\"\n", "k.toml:2:1: base: expected a table, got a string"},
	{"unknown top key", "manifest_version = 1\nlabel = \"x\"\n[base]\nimage = \"x\"\n", "k.toml:2:1: label: unknown key"},
	{"bad name", "manifest_version = 1\nname = \"a b\"\n[base]\nimage = \"x\"\n", "k.toml:2:1: name: "},
	{"unknown section", "manifest_version = 1\n[base]\nimage = \"x\"\n[network]\nx = 1\n", "k.toml:4:1: network: unknown key"},
	{"unknown base key", "manifest_version = 1\n[base]\nimage = \"x\"\ntag = \"y\"\n", "k.toml:4:1: base.tag: unknown key"},
	{"packages not array", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = \"git\"\n", "k.toml:5:1: system.packages: expected an array of strings"},
	{"package int", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = [\"git\", 3]\n", "k.toml:5:20: system.packages[1]: expected a string"},
	{"package empty", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = [\"git\", \" \"]\n", "system.packages[1]: package name \"\": empty"},
	{"package option", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = [\"--allow-unauthenticated\"]\n", "system.packages[0]: package name \"--allow-unauthenticated\": must start with a letter or digit"},
	{"package glob", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = [\"lib*\"]\n", "character '*' is not allowed"},
	{"package two words", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = [\"git curl\"]\n", "character ' ' is not allowed"},
	{"unknown system key", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npkgs = []\n", "system.pkgs: unknown key"},
	{"apps not strings", "manifest_version = 1\n[base]\nimage = \"x\"\n[gui]\napps = [true]\n", "gui.apps[0]: expected a string, got a boolean"},
	{"gpu string", "manifest_version = 1\n[base]\nimage = \"x\"\n[hardware]\ngpu = \"yes\"\n", "k.toml:5:1: hardware.gpu: expected true or false, got a string"},
	{"unknown hardware", "manifest_version = 1\n[base]\nimage = \"x\"\n[hardware]\nusb = true\n", "hardware.usb: unknown key"},
	{"mount no colon", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \"./src\"\n", "k.toml:5:1: mounts.ws: mount \"./src\": expected"},
	{"mount relative target", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \"./:workspace\"\n", "container path \"workspace\" must be absolute"},
	{"mount bad option", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \"./:/w:rx\"\n", "mounts.ws: mount \"./:/w:rx\": expected"},
	{"mount over root", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \"./:/\"\n", "cannot mount over the container's root"},
	{"mount proc", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \"./:/proc/x\"\n", "/proc is managed by karapace"},
	{"mount dotdot target", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \"./:/a/../etc\"\n", "must not contain '..'"},
	{"mount empty host", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = \":/w\"\n", "must not be empty"},
	{"mount not string", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\nws = 1\n", "mounts.ws: expected a string"},
	{"mount same target", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\na = \"./a:/w\"\nb = \"./b:/w\"\n", "mounts.b: container path /w is already mounted by \"a\""},
	{"mount label trimmed duplicate", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\na = \"./a:/w\"\n\" a\" = \"./b:/v\"\n", "duplicate mount label \"a\""},
	{"mount label odd", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\n\"a/b\" = \"./a:/w\"\n", `k.toml:5:1: mounts."a/b": mount label must be`},
	{"mount label NUL", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\n\"\\u0000\" = \"./a:/w\"\n", `k.toml:5:1: mounts."\u0000": mount label must be`},
	{"mount label numeric", "manifest_version = 1\n[base]\nimage = \"x\"\n[mounts]\n123 = \"bad\"\n", `k.toml:5:1: mounts.123: mount "bad": expected`},
	{"duplicate key", "manifest_version = 1\n[base]\nimage = \"x\"\nimage = \"y\"\n", "k.toml:4:1: duplicate key"},
	{"duplicate table", "manifest_version = 1\n[base]\nimage = \"x\"\n[base]\nimage = \"y\"\n", "k.toml:4:"},
	{"backend unknown", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime]\nbackend = \"docker\"\n", "k.toml:5:1: runtime.backend: unknown backend \"docker\""},
	{"backend int", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime]\nbackend = 1\n", "runtime.backend: expected a string"},
	{"isolation string", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime]\nnetwork_isolation = \"true\"\n", "runtime.network_isolation: expected true or false"},
	{"cpu negative", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime.resource_limits]\ncpu_shares = -5\n", "k.toml:5:1: runtime.resource_limits.cpu_shares: -5 is out of range"},
	{"memory float", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime.resource_limits]\nmemory_limit_mb = 1.5\n", "runtime.resource_limits.memory_limit_mb: expected an integer, got a float"},
	{"memory tiny", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime.resource_limits]\nmemory_limit_mb = 1\n", "1 is out of range (16.."},
	{"unknown limit", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime.resource_limits]\npids = 10\n", "runtime.resource_limits.pids: unknown key"},
	{"unknown runtime key", "manifest_version = 1\n[base]\nimage = \"x\"\n[runtime]\nprivileged = true\n", "runtime.privileged: unknown key"},
	{"truncated string", "manifest_version = 1\n[base]\nimage = \"debi", "k.toml:3:"},
	{"truncated table", "manifest_version = 1\n[bas", `k.toml:2:5: expected "]" to close the header, found end of file`},
	{"binary junk", "\x00\x01\x02\xff\xfe", "k.toml:1:"},
	{"invalid utf8", "manifest_version = 1\n[base]\nimage = \"\xff\"\n", "k.toml:3:"},
	{"bom then junk", "\ufeffmanifest_version = 1\n[base\n", "k.toml:2:"},
	{"huge nesting", "manifest_version = 1\nx = " + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + "\n", "k.toml:2:"},
	{"control char", "manifest_version = 1\n[base]\nimage = \"a\x07b\"\n", "k.toml:3:11: base.image: control character U+0007 in string"},
	{"bad escape", "manifest_version = 1\n[base]\nimage = \"\\e\"\n", `k.toml:3:10: base.image: invalid escape sequence "\e"`},
	{"bad package string", "manifest_version = 1\n[base]\nimage = \"x\"\n[system]\npackages = [\"git\", 'a\x01']\n", "k.toml:5:22: system.packages[1]: control character U+0001 in string"},
	{"bare CR", "manifest_version = 1\r[base]\nimage = \"x\"\n", "k.toml:1:"},
	{"inline table reopened", "manifest_version = 1\nbase = {image = \"x\"}\n[base]\n", "k.toml:3:"},
}

func TestManifestBadInput(t *testing.T) {
	if len(badManifests) < 40 {
		t.Fatalf("only %d malformed manifests", len(badManifests))
	}
	for _, tc := range badManifests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseManifest("k.toml", "/w/k.toml", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.src)
			}
			if exitCodeOf(err) != exitManifest {
				t.Errorf("exit code %d, want %d (%v)", exitCodeOf(err), exitManifest, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "k.toml:") || strings.Count(strings.SplitN(err.Error(), " ", 2)[0], ":") < 3 {
				t.Errorf("error %q does not start with file:line:col:", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestManifestBOMAccepted(t *testing.T) {
	m, err := parseManifest("k.toml", "/k.toml", []byte("\ufeffmanifest_version = 1\r\n[base]\r\nimage = \"debian\"\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.BaseImage != "debian" {
		t.Fatalf("image %q", m.BaseImage)
	}
}

func TestManifestFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := loadManifest(filepath.Join(dir, "missing.toml"))
	if err == nil || exitCodeOf(err) != exitManifest || !strings.Contains(err.Error(), "missing.toml") {
		t.Fatalf("missing file: %v", err)
	}
	big := writeFile(t, dir, "big.toml", "manifest_version = 1\n#"+strings.Repeat("x", maxManifestSize)+"\n")
	_, err = loadManifest(big)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("big file: %v", err)
	}
}

// A bad manifest is never modified by a command that rejects it.
func TestManifestUntouchedOnError(t *testing.T) {
	dir := t.TempDir()
	bad := "manifest_version = 1\n[base]\nimage = 7\n"
	p := writeFile(t, dir, "karapace.toml", bad)
	code, _, errOut := runCLI(t, nil, "pin", p)
	if code != exitManifest {
		t.Fatalf("pin of bad manifest: exit %d (%s)", code, errOut)
	}
	mustContain(t, "stderr", errOut, "karapace.toml:3:1: base.image: expected a string")
	got, _ := os.ReadFile(p)
	if string(got) != bad {
		t.Fatal("manifest changed")
	}
}

func BenchmarkManifestParseNormalizeIdentity(b *testing.B) {
	data := []byte(fullManifest)
	b.ReportAllocs()
	for b.Loop() {
		m, err := parseManifest("k.toml", "/w/k.toml", data)
		if err != nil {
			b.Fatal(err)
		}
		_ = m.previewID()
	}
}
