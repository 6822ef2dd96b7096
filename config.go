package main

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
)

// configPath is the user's karapace configuration:
// $XDG_CONFIG_HOME/karapace/config.toml, else ~/.config/karapace/config.toml.
func configPath(getenv func(string) string) string {
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "karapace", "config.toml")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "karapace", "config.toml")
	}
	return ""
}

// loadConfig reads the configuration file, checked as strictly as a
// manifest. A missing file is an empty configuration.
func loadConfig(getenv func(string) string) (map[string]any, *schemaChecker, error) {
	path := configPath(getenv)
	if path == "" {
		return map[string]any{}, &schemaChecker{}, nil
	}
	data, err := readLimited(path, 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]any{}, &schemaChecker{file: path}, nil
	}
	if err != nil {
		return nil, nil, manifestErrorf("%s: %v", path, err)
	}
	doc, sc, err := decodeChecked(path, data)
	if err != nil {
		return nil, nil, err
	}
	if _, err := sc.table(nil, doc, "policy", "images", "remote", "limits", "runtime"); err != nil {
		return nil, nil, err
	}
	return doc, sc, nil
}

// loadPolicy is the default policy, widened or narrowed by [policy].
func loadPolicy(getenv func(string) string) (policy, error) {
	p := defaultPolicy()
	doc, sc, err := loadConfig(getenv)
	if err != nil {
		return p, err
	}
	v, ok := doc["policy"]
	if !ok {
		return p, nil
	}
	t, err := sc.table([]string{"policy"}, v, "allowed_mount_prefixes", "denied_mount_paths", "env_allow", "env_deny",
		"max_memory_mb", "max_cpu_shares", "max_pids", "default_pids_limit")
	if err != nil {
		return p, err
	}
	if v, ok := t["allowed_mount_prefixes"]; ok {
		path := []string{"policy", "allowed_mount_prefixes"}
		if p.MountPrefixes, err = sc.strings(path, v); err != nil {
			return p, err
		}
		for i, pre := range p.MountPrefixes {
			if !filepath.IsAbs(pre) {
				return p, sc.errorf(append(path, strconv.Itoa(i)), "%q is not an absolute path", pre)
			}
		}
	}
	if v, ok := t["denied_mount_paths"]; ok {
		// The whole list, replaced: what it leaves out, the user allows.
		path := []string{"policy", "denied_mount_paths"}
		if p.MountDeny, err = sc.strings(path, v); err != nil {
			return p, err
		}
		for i, d := range p.MountDeny {
			if !filepath.IsAbs(d) && d != "~" && !strings.HasPrefix(d, "~/") {
				return p, sc.errorf(append(path, strconv.Itoa(i)), "%q is neither an absolute path nor one under ~/", d)
			}
		}
	}
	for _, f := range []struct {
		key string
		dst *[]string
	}{{"env_allow", &p.EnvAllow}, {"env_deny", &p.EnvDeny}} {
		if v, ok := t[f.key]; ok {
			extra, err := sc.strings([]string{"policy", f.key}, v)
			if err != nil {
				return p, err
			}
			*f.dst = append(*f.dst, extra...)
		}
	}
	if v, ok := t["max_memory_mb"]; ok {
		if p.MaxMemoryMB, err = sc.integer([]string{"policy", "max_memory_mb"}, v, 16, 1<<30); err != nil {
			return p, err
		}
	}
	if v, ok := t["max_cpu_shares"]; ok {
		if p.MaxCPUShares, err = sc.integer([]string{"policy", "max_cpu_shares"}, v, 2, 262144); err != nil {
			return p, err
		}
	}
	if v, ok := t["max_pids"]; ok {
		if p.MaxPids, err = sc.integer([]string{"policy", "max_pids"}, v, pidsLimitMin, pidsLimitMax); err != nil {
			return p, err
		}
	}
	if v, ok := t["default_pids_limit"]; ok {
		if p.DefaultPids, err = sc.integer([]string{"policy", "default_pids_limit"}, v, pidsLimitMin, pidsLimitMax); err != nil {
			return p, err
		}
	}
	if p.MaxPids > 0 && p.DefaultPids > p.MaxPids {
		p.DefaultPids = p.MaxPids
	}
	return p, nil
}

// imagesConfig is [images]: where base images come from.
type imagesConfig struct {
	Server  string            // the LXC image server or its mirror
	Source  string            // "archive" (default for Debian and Ubuntu aliases) or "lxc"
	Mirrors map[string]string // distribution archive mirrors, by distribution
	Keyring string            // an archive keyring to trust instead of the built-in one
}

// loadImagesConfig reads [images], then lets the environment override it:
// KARAPACE_IMAGE_SERVER, KARAPACE_IMAGE_SOURCE, KARAPACE_DEBIAN_MIRROR,
// KARAPACE_UBUNTU_MIRROR, KARAPACE_ARCHIVE_KEYRING.
func loadImagesConfig(getenv func(string) string) (imagesConfig, error) {
	cfg := imagesConfig{Mirrors: map[string]string{}}
	doc, sc, err := loadConfig(getenv)
	if err != nil {
		return cfg, err
	}
	if v, ok := doc["images"]; ok {
		t, err := sc.table([]string{"images"}, v, "server", "source", "debian_mirror", "ubuntu_mirror", "keyring")
		if err != nil {
			return cfg, err
		}
		for _, f := range []struct {
			key string
			dst *string
			url bool
		}{{"server", &cfg.Server, true}, {"source", &cfg.Source, false}, {"keyring", &cfg.Keyring, false}} {
			if v, ok := t[f.key]; ok {
				if *f.dst, err = sc.str([]string{"images", f.key}, v); err != nil {
					return cfg, err
				}
				if f.url && !strings.HasPrefix(*f.dst, "http://") && !strings.HasPrefix(*f.dst, "https://") {
					return cfg, sc.errorf([]string{"images", f.key}, "%q is not an http(s) URL", *f.dst)
				}
			}
		}
		for _, d := range []string{"debian", "ubuntu"} {
			if v, ok := t[d+"_mirror"]; ok {
				m, err := sc.str([]string{"images", d + "_mirror"}, v)
				if err != nil {
					return cfg, err
				}
				if !isHTTPURL(m) {
					return cfg, sc.errorf([]string{"images", d + "_mirror"}, "%q is not an http(s) URL", m)
				}
				cfg.Mirrors[d] = m
			}
		}
		if cfg.Source != "" && cfg.Source != "archive" && cfg.Source != "lxc" {
			return cfg, sc.errorf([]string{"images", "source"}, "%q: expected \"archive\" or \"lxc\"", cfg.Source)
		}
	}
	for env, dst := range map[string]*string{"KARAPACE_IMAGE_SERVER": &cfg.Server, "KARAPACE_IMAGE_SOURCE": &cfg.Source, "KARAPACE_ARCHIVE_KEYRING": &cfg.Keyring} {
		if v := getenv(env); v != "" {
			*dst = v
		}
	}
	if v := getenv("KARAPACE_IMAGE_SERVER"); v != "" && !isHTTPURL(v) {
		return cfg, usageErrorf("KARAPACE_IMAGE_SERVER=%q is not an http(s) URL", v)
	}
	for _, d := range []string{"debian", "ubuntu"} {
		name := "KARAPACE_" + strings.ToUpper(d) + "_MIRROR"
		if v := getenv(name); v != "" {
			if !isHTTPURL(v) {
				return cfg, usageErrorf("%s=%q is not an http(s) URL", name, v)
			}
			cfg.Mirrors[d] = v
		}
	}
	if cfg.Source != "" && cfg.Source != "archive" && cfg.Source != "lxc" {
		return cfg, usageErrorf("KARAPACE_IMAGE_SOURCE=%q: expected archive or lxc", cfg.Source)
	}
	return cfg, nil
}

// inputLimits are [limits]: how much an image or a layer may make
// karapace write, whoever made it. Generous, but finite: a small
// compressed image can stand for terabytes.
type inputLimits struct {
	ImageSize   int64 // bytes an image may decompress to
	TreeSize    int64 // bytes of file content one unpack may write
	TreeEntries int64 // entries one unpack may create
	file        string
}

func defaultLimits() inputLimits {
	return inputLimits{ImageSize: 16 << 30, TreeSize: 64 << 30, TreeEntries: 4 << 20}
}

// setting names where a limit is set, for the message of what it refused.
func (l inputLimits) setting(key string) string {
	if l.file == "" {
		return "[limits] " + key + " of the configuration file"
	}
	return "[limits] " + key + " in " + l.file
}

// loadLimits reads [limits]: sizes as bytes or like "16G", counts as
// integers.
func loadLimits(getenv func(string) string) (inputLimits, error) {
	l := defaultLimits()
	doc, sc, err := loadConfig(getenv)
	if err != nil {
		return l, err
	}
	l.file = sc.file
	v, ok := doc["limits"]
	if !ok {
		return l, nil
	}
	t, err := sc.table([]string{"limits"}, v, "image_max_size", "tree_max_size", "tree_max_entries")
	if err != nil {
		return l, err
	}
	for _, f := range []struct {
		key  string
		dst  *int64
		size bool
	}{{"image_max_size", &l.ImageSize, true}, {"tree_max_size", &l.TreeSize, true}, {"tree_max_entries", &l.TreeEntries, false}} {
		v, ok := t[f.key]
		if !ok {
			continue
		}
		path := []string{"limits", f.key}
		if s, isStr := v.(string); isStr && f.size {
			n, err := serverParseSize(s)
			if err != nil {
				return l, sc.errorf(path, "%v", err)
			}
			*f.dst = n
			continue
		}
		if *f.dst, err = sc.integer(path, v, 1, 1<<62); err != nil {
			if f.size {
				return l, sc.errorf(path, "expected a size like 16G or a number of bytes")
			}
			return l, err
		}
	}
	return l, nil
}
