package main

import (
	"bufio"
	"bytes"
	"embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The example manifests are the templates of 'karapace new'.
//
//go:embed examples/*.toml
var templateFS embed.FS

func templateNames() []string {
	entries, _ := templateFS.ReadDir("examples")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".toml"))
	}
	sort.Strings(names)
	return names
}

func templateSource(name string) ([]byte, error) {
	data, err := templateFS.ReadFile("examples/" + name + ".toml")
	if err != nil {
		return nil, usageErrorf("unknown template %q (templates: %s)", name, strings.Join(templateNames(), ", "))
	}
	return data, nil
}

// cmdNew writes ./karapace.toml from a template, asking on a terminal.
func cmdNew(c *cli) error {
	name := c.args[0]
	if err := validEnvName(name); err != nil {
		return usageErrorf("new: %v", err)
	}
	tmpl := "minimal"
	if c.has("template") {
		tmpl = c.flag("template")
	}
	src, err := templateSource(tmpl)
	if err != nil {
		return err
	}
	dest, err := filepath.Abs("karapace.toml")
	if err != nil {
		return err
	}
	tty := isTerminal(c.stdin)
	var in *bufio.Reader
	if tty {
		in = bufio.NewReader(c.stdin)
	}
	if _, err := os.Lstat(dest); err == nil && !c.has("force") {
		if !tty || !askYesNo(in, c.stderr, "./karapace.toml exists; overwrite it?", false) {
			return fmt.Errorf("refusing to overwrite ./karapace.toml (pass --force)")
		}
	}
	// The name goes in as the manifest's: build names the environment by it.
	out := bytes.Replace(src, []byte("manifest_version = 1\n"), []byte(fmt.Sprintf("manifest_version = 1\nname = %q\n", name)), 1)
	if tty {
		m, err := parseManifest("template "+tmpl, dest, out)
		if err != nil {
			return err
		}
		changed, err := promptManifest(in, c.stderr, m)
		if err != nil {
			return err
		}
		if changed {
			if out, err = formatManifest(m); err != nil {
				return err
			}
		}
	}
	// What we write must read back as a valid manifest.
	if _, err := parseManifest(dest, dest, out); err != nil {
		return err
	}
	if err := writeFileAtomic(dest, out, 0o644); err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, map[string]any{"path": dest, "name": name, "template": tmpl})
	}
	fmt.Fprintf(c.stdout, "wrote ./karapace.toml (template %s, environment %s)\nnext: karapace build\n", tmpl, name)
	return nil
}

// promptManifest asks for the main settings, offering m's values as
// defaults, and reports whether any answer changed them.
func promptManifest(in *bufio.Reader, w io.Writer, m *manifest) (bool, error) {
	before, _ := formatManifest(m)
	image := ask(in, w, "base image", m.BaseImage)
	if _, err := parseImageRef(image); err != nil {
		return false, usageErrorf("base image: %v", err)
	}
	m.BaseImage = image
	pkgs := ask(in, w, "packages (space-separated)", strings.Join(m.Packages, " "))
	m.Packages = nil
	seen := map[string]bool{}
	for _, p := range strings.Fields(pkgs) {
		if err := validPackageName(p); err != nil {
			return false, usageErrorf("package %q: %v", p, err)
		}
		if !seen[p] {
			seen[p] = true
			m.Packages = append(m.Packages, p)
		}
	}
	sort.Strings(m.Packages)
	ws := ""
	for _, mt := range m.Mounts {
		if mt.Label == "workspace" {
			ws = mountSpecString(mt)
		}
	}
	ws = ask(in, w, "workspace mount (host:container, '-' for none)", ws)
	var mounts []mount
	for _, mt := range m.Mounts {
		if mt.Label != "workspace" {
			mounts = append(mounts, mt)
		}
	}
	if ws != "" && ws != "-" {
		mt, err := parseMountSpec(ws, m.Dir)
		if err != nil {
			return false, usageErrorf("workspace mount: %v", err)
		}
		mt.Label = "workspace"
		mounts = append(mounts, mt)
		sort.Slice(mounts, func(i, j int) bool { return mounts[i].Label < mounts[j].Label })
	}
	m.Mounts = mounts
	backend := strings.ToLower(ask(in, w, "runtime backend ("+strings.Join(backends, ", ")+")", m.Backend))
	if !contains(backends, backend) {
		return false, usageErrorf("unknown backend %q (expected one of: %s)", backend, strings.Join(backends, ", "))
	}
	m.Backend = backend
	m.NetworkIsolation = askYesNo(in, w, "isolate the network (only loopback inside)?", m.NetworkIsolation)
	after, err := formatManifest(m)
	return string(before) != string(after), err
}

func ask(in *bufio.Reader, w io.Writer, question, def string) string {
	fmt.Fprintf(w, "%s [%s]: ", question, def)
	line, _ := in.ReadString('\n')
	if line = strings.TrimSpace(line); line == "" {
		return def
	}
	return line
}

func askYesNo(in *bufio.Reader, w io.Writer, question string, def bool) bool {
	hint := "y/N"
	if def {
		hint = "Y/n"
	}
	fmt.Fprintf(w, "%s [%s]: ", question, hint)
	line, _ := in.ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	case "n", "no":
		return false
	}
	return def
}

func mountSpecString(m mount) string {
	s := m.Source + ":" + m.Container
	if m.ReadOnly {
		s += ":ro"
	}
	return s
}

// formatManifest writes a manifest back as TOML, sections in the order
// the documentation uses.
func formatManifest(m *manifest) ([]byte, error) {
	doc := []tomlKV{{"manifest_version", int64(1)}}
	if m.Name != "" {
		doc = append(doc, tomlKV{"name", m.Name})
	}
	doc = append(doc, tomlKV{"base", []tomlKV{{"image", m.BaseImage}}})
	if len(m.Packages) > 0 {
		doc = append(doc, tomlKV{"system", []tomlKV{{"packages", stringsToAny(m.Packages)}}})
	}
	for _, sec := range []string{"gui", "hardware"} {
		if kvs := manifestTOML(m, sec); kvs != nil {
			doc = append(doc, tomlKV{sec, kvs})
		}
	}
	if len(m.Mounts) > 0 {
		var ms []tomlKV
		for _, mt := range m.Mounts {
			ms = append(ms, tomlKV{mt.Label, mountSpecString(mt)})
		}
		doc = append(doc, tomlKV{"mounts", ms})
	}
	rt := manifestTOML(m, "runtime")
	if lim := manifestTOML(m, "runtime.resource_limits"); lim != nil {
		rt = append(rt, tomlKV{"resource_limits", lim})
	}
	doc = append(doc, tomlKV{"runtime", rt})
	return encodeTOML(doc)
}
