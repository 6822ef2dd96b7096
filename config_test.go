package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigPolicyAndImages(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"XDG_CONFIG_HOME": dir}
	getenv := func(k string) string { return env[k] }
	writeFile(t, dir, "karapace/config.toml", `[policy]
allowed_mount_prefixes = ["/srv", "/home"]
env_allow = ["MY_*"]
max_memory_mb = 2048
[images]
source = "lxc"
server = "http://mirror.example/lxc"
debian_mirror = "http://apt.example/debian"
`)
	p, err := loadPolicy(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.MountPrefixes, ",") != "/srv,/home" || p.MaxMemoryMB != 2048 || !contains(p.EnvAllow, "MY_*") || !contains(p.EnvAllow, "TERM") {
		t.Fatalf("policy: %+v", p)
	}
	if err := p.checkLimits(0, 4096, 0); err == nil || !strings.Contains(err.Error(), "exceeds the policy maximum 2048") {
		t.Fatalf("limit: %v", err)
	}
	c, err := loadImagesConfig(getenv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != "lxc" || c.Server != "http://mirror.example/lxc" || c.Mirrors["debian"] != "http://apt.example/debian" {
		t.Fatalf("images: %+v", c)
	}
	// With source = "lxc" a bare Debian alias goes to the image server.
	ref, _ := parseImageRef("debian/bookworm")
	if spec, err := archiveFor(ref, c); err != nil || spec != nil {
		t.Fatalf("archiveFor with source lxc: %v %v", spec, err)
	}
	env["KARAPACE_IMAGE_SOURCE"] = "archive"
	env["KARAPACE_DEBIAN_MIRROR"] = "http://other.example/debian/"
	c, _ = loadImagesConfig(getenv)
	spec, err := archiveFor(ref, c)
	if err != nil || spec == nil || spec.Mirror != "http://other.example/debian" || spec.Suite != "bookworm" {
		t.Fatalf("archiveFor: %+v %v", spec, err)
	}
	env["KARAPACE_IMAGE_SOURCE"] = "ftp"
	if _, err := loadImagesConfig(getenv); err == nil {
		t.Fatal("a bad KARAPACE_IMAGE_SOURCE was accepted")
	}

	for _, tc := range []struct{ body, want string }{
		{"[policy]\nallowed_mount_prefixes = [\"relative\"]\n", `config.toml:2:27: policy.allowed_mount_prefixes[0]: "relative" is not an absolute path`},
		{"[policy]\nmax_cpu = 1\n", "policy.max_cpu: unknown key"},
		{"[images]\nsource = \"ftp\"\n", `images.source: "ftp": expected "archive" or "lxc"`},
		{"[images]\nserver = \"ftp://x\"\n", `images.server: "ftp://x" is not an http(s) URL`},
		{"[images]\ndebian_mirror = \"/srv/debian\"\n", `images.debian_mirror: "/srv/debian" is not an http(s) URL`},
		{"[extra]\n", "extra: unknown key"},
		{"[policy\n", "config.toml:1:"},
	} {
		writeFile(t, dir, "karapace/config.toml", tc.body)
		_, err1 := loadPolicy(getenv)
		_, err2 := loadImagesConfig(getenv)
		err := err1
		if err == nil {
			err = err2
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || exitCodeOf(err) != exitManifest {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), filepath.Join(dir, "karapace", "config.toml")) {
			t.Errorf("error does not name the file: %v", err)
		}
	}
}
