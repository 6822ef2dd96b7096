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
	doc, pos, err := decodeTOMLPos(data)
	if err != nil {
		var te *tomlError
		if errors.As(err, &te) {
			return nil, nil, manifestErrorf("%s:%d:%d: %s", path, te.Line, te.Col, te.Msg)
		}
		return nil, nil, manifestErrorf("%s: %v", path, err)
	}
	sc := &schemaChecker{file: path, pos: pos}
	if _, err := sc.table(nil, doc, "policy", "images", "remote"); err != nil {
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
	t, err := sc.table([]string{"policy"}, v, "allowed_mount_prefixes", "env_allow", "env_deny", "max_memory_mb", "max_cpu_shares")
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
	return p, nil
}

// loadImageConfig is [images] server: the LXC image server (or a mirror).
func loadImageConfig(getenv func(string) string) (string, error) {
	doc, sc, err := loadConfig(getenv)
	if err != nil {
		return "", err
	}
	v, ok := doc["images"]
	if !ok {
		return "", nil
	}
	t, err := sc.table([]string{"images"}, v, "server")
	if err != nil {
		return "", err
	}
	s, ok := t["server"]
	if !ok {
		return "", nil
	}
	server, err := sc.str([]string{"images", "server"}, s)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(server, "http://") && !strings.HasPrefix(server, "https://") {
		return "", sc.errorf([]string{"images", "server"}, "%q is not an http(s) URL", server)
	}
	return server, nil
}
