package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// maxManifestSize bounds what we read: a manifest is a few hundred bytes,
// and anything near this size is a mistake, not a manifest.
const maxManifestSize = 1 << 20

// manifest is a parsed, checked and normalized karapace.toml (version 1).
type manifest struct {
	Path string         // absolute path of the file it came from
	Dir  string         // its directory, against which relative mount paths resolve
	src  *schemaChecker // the file as read: its name as given and positions, for messages

	Name             string // the environment's name when build is given none (not part of its identity)
	BaseImage        string
	Packages         []string // sorted, unique
	Apps             []string // sorted, unique
	GPU, Audio       bool
	Mounts           []mount // sorted by label
	Backend          string  // namespace | oci | mock
	NetworkIsolation bool
	SessionBus       bool     // bind the host's session D-Bus (runtime.session_bus)
	HostSockets      []string // host sockets named explicitly (runtime.host_sockets), sorted, unique
	CPUShares        int64    // 0: not set
	MemoryLimitMB    int64    // 0: not set
	PidsLimit        int64    // 0: not set (the policy's default)
}

// mount is one [mounts] entry, "host:container[:ro]".
type mount struct {
	Label     string
	Source    string // as written, cleaned: relative to the manifest's directory unless absolute or ~/
	Host      string // Source resolved to an absolute host path
	Container string
	ReadOnly  bool
}

var backends = []string{"namespace", "oci", "mock"}

// loadManifest reads, checks and normalizes the manifest at path. Every
// problem is a manifest error (exit 2) of the form "file:line:col: key: what".
func loadManifest(path string) (*manifest, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, manifestErrorf("%s: %v", path, err)
	}
	data, err := readLimited(abs, maxManifestSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, manifestErrorf("%s: no such manifest in %s; write one with 'karapace new NAME' (it makes ./karapace.toml from a template), or give the path of one", path, filepath.Dir(abs))
	}
	if err != nil {
		return nil, manifestErrorf("%s: %v", path, err)
	}
	return parseManifest(path, abs, data)
}

// decodeChecked decodes a TOML file of ours for checking against its
// schema; a syntax error is a manifest error at file:line:col.
func decodeChecked(name string, data []byte) (map[string]any, *schemaChecker, error) {
	doc, pos, err := decodeTOMLPos(data)
	if err != nil {
		var te *tomlError
		if errors.As(err, &te) {
			return nil, nil, manifestErrorf("%s:%d:%d: %s", name, te.Line, te.Col, te.Msg)
		}
		return nil, nil, manifestErrorf("%s: %v", name, err)
	}
	return doc, &schemaChecker{file: name, pos: pos, doc: doc}, nil
}

// schemaChecker walks a decoded TOML document against what a schema
// allows, and reports the first problem with the position of the key.
type schemaChecker struct {
	file string
	pos  map[string]tomlPos
	doc  map[string]any
}

func (sc *schemaChecker) errorf(path []string, format string, a ...any) error {
	return manifestErrorf("%s%s", sc.where(path), fmt.Sprintf(format, a...))
}

// where is the "file:line:col: key: " that starts a message about path.
func (sc *schemaChecker) where(path []string) string {
	p := sc.position(path)
	key := sc.displayKey(path)
	if key != "" {
		key += ": "
	}
	return fmt.Sprintf("%s:%d:%d: %s", sc.file, p.Line, p.Col, key)
}

// position finds the nearest recorded position for path, walking up to the
// enclosing table when a key itself has none (a missing key).
func (sc *schemaChecker) position(path []string) tomlPos {
	for n := len(path); n > 0; n-- {
		if p, ok := sc.pos[tomlPath(path[:n]...)]; ok {
			return p
		}
	}
	return tomlPos{Line: 1, Col: 1}
}

// displayKey spells a key path the way a user would write it in TOML,
// with array indexes in brackets. Which segments are indexes the document
// says, since a key may be all digits.
func (sc *schemaChecker) displayKey(path []string) string {
	var b []byte
	var v any = sc.doc
	for i, seg := range path {
		if arr, ok := v.([]any); ok {
			b = append(append(append(b, '['), seg...), ']')
			v = nil
			if n, err := strconv.Atoi(seg); err == nil && n >= 0 && n < len(arr) {
				v = arr[n]
			}
			continue
		}
		if i > 0 {
			b = append(b, '.')
		}
		b = tomlAppendKey(b, seg)
		t, _ := v.(map[string]any)
		v = t[seg]
	}
	return string(b)
}

// elementIndex maps each string of the array at path, trimmed, to the
// index where it first appears.
func (sc *schemaChecker) elementIndex(path []string) map[string]int {
	var v any = sc.doc
	for _, seg := range path {
		t, _ := v.(map[string]any)
		v = t[seg]
	}
	arr, _ := v.([]any)
	index := make(map[string]int, len(arr))
	for i, e := range arr {
		if s, ok := e.(string); ok {
			if _, dup := index[strings.TrimSpace(s)]; !dup {
				index[strings.TrimSpace(s)] = i
			}
		}
	}
	return index
}

func isBareKey(s string) bool {
	for i := 0; i < len(s); i++ {
		if !tomlBareChar[s[i]] {
			return false
		}
	}
	return s != ""
}

// table checks that v is a table holding only the allowed keys.
func (sc *schemaChecker) table(path []string, v any, allowed ...string) (map[string]any, error) {
	t, ok := v.(map[string]any)
	if !ok {
		return nil, sc.errorf(path, "expected a table, got %s", tomlTypeName(v))
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if allowed != nil && !contains(allowed, k) {
			return nil, sc.errorf(append(path, k), "unknown key (allowed here: %s)", strings.Join(allowed, ", "))
		}
	}
	return t, nil
}

func (sc *schemaChecker) str(path []string, v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", sc.errorf(path, "expected a string, got %s", tomlTypeName(v))
	}
	return strings.TrimSpace(s), nil
}

func (sc *schemaChecker) boolean(path []string, v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, sc.errorf(path, "expected true or false, got %s", tomlTypeName(v))
	}
	return b, nil
}

func (sc *schemaChecker) integer(path []string, v any, lo, hi int64) (int64, error) {
	n, ok := v.(int64)
	if !ok {
		return 0, sc.errorf(path, "expected an integer, got %s", tomlTypeName(v))
	}
	if n < lo || n > hi {
		return 0, sc.errorf(path, "%d is out of range (%d..%d)", n, lo, hi)
	}
	return n, nil
}

func (sc *schemaChecker) strings(path []string, v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, sc.errorf(path, "expected an array of strings, got %s", tomlTypeName(v))
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		s, err := sc.str(append(path, strconv.Itoa(i)), e)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func tomlTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case map[string]any:
		return "a table"
	}
	return tomlKind(v)
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// parseManifest checks and normalizes manifest bytes. name is how the
// file is shown in errors; abs locates relative mount paths.
func parseManifest(name, abs string, data []byte) (*manifest, error) {
	doc, sc, err := decodeChecked(name, data)
	if err != nil {
		return nil, err
	}
	m := &manifest{Path: abs, Dir: filepath.Dir(abs), Backend: "namespace", src: sc}

	top, err := sc.table(nil, doc, "manifest_version", "name", "base", "system", "gui", "hardware", "mounts", "runtime")
	if err != nil {
		return nil, err
	}
	v, ok := top["manifest_version"]
	if !ok {
		return nil, sc.errorf([]string{"manifest_version"}, "missing (write manifest_version = 1 at the top)")
	}
	if n, ok := v.(int64); !ok || n != 1 {
		if !ok {
			return nil, sc.errorf([]string{"manifest_version"}, "expected the integer 1, got %s", tomlTypeName(v))
		}
		return nil, sc.errorf([]string{"manifest_version"}, "unsupported version %d (this karapace reads version 1)", n)
	}

	if v, ok := top["name"]; ok {
		if m.Name, err = sc.str([]string{"name"}, v); err != nil {
			return nil, err
		}
		if err := validEnvName(m.Name); err != nil {
			return nil, sc.errorf([]string{"name"}, "%v", err)
		}
	}

	bv, ok := top["base"]
	if !ok {
		return nil, sc.errorf([]string{"base"}, "missing section [base] with image = \"...\"")
	}
	base, err := sc.table([]string{"base"}, bv, "image")
	if err != nil {
		return nil, err
	}
	iv, ok := base["image"]
	if !ok {
		return nil, sc.errorf([]string{"base", "image"}, "missing (for example image = \"debian/bookworm\")")
	}
	if m.BaseImage, err = sc.str([]string{"base", "image"}, iv); err != nil {
		return nil, err
	}
	if m.BaseImage == "" {
		return nil, sc.errorf([]string{"base", "image"}, "must not be empty")
	}
	if _, err := parseImageRef(m.BaseImage); err != nil {
		return nil, sc.errorf([]string{"base", "image"}, "%v", err)
	}

	if v, ok := top["system"]; ok {
		t, err := sc.table([]string{"system"}, v, "packages")
		if err != nil {
			return nil, err
		}
		if m.Packages, err = sc.names([]string{"system", "packages"}, t["packages"], "package"); err != nil {
			return nil, err
		}
	}
	if v, ok := top["mounts"]; ok {
		if m.Mounts, err = sc.mounts(v, m.Dir); err != nil {
			return nil, err
		}
	}
	// The settings of envFields, section by section.
	for _, sec := range []struct{ name, sub string }{{"gui", ""}, {"hardware", ""}, {"runtime", "resource_limits"}} {
		v, ok := top[sec.name]
		if !ok {
			continue
		}
		var subs []string
		if sec.sub != "" {
			subs = []string{sec.sub}
		}
		t, err := sc.table([]string{sec.name}, v, sectionKeys(sec.name, subs...)...)
		if err != nil {
			return nil, err
		}
		if err := sc.parseFields([]string{sec.name}, t, m); err != nil {
			return nil, err
		}
		if sv, ok := t[sec.sub]; ok && sec.sub != "" {
			path := []string{sec.name, sec.sub}
			st, err := sc.table(path, sv, sectionKeys(sec.name+"."+sec.sub)...)
			if err != nil {
				return nil, err
			}
			if err := sc.parseFields(path, st, m); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// names reads a list of package or app names: trimmed, non-empty, of
// characters no package manager reads as an option or a pattern, then
// sorted and deduplicated.
func (sc *schemaChecker) names(path []string, v any, what string) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, err := sc.strings(path, v)
	if err != nil {
		return nil, err
	}
	for i, s := range list {
		if err := validPackageName(s); err != nil {
			return nil, sc.errorf(append(path, strconv.Itoa(i)), "%s name %q: %v", what, s, err)
		}
	}
	sort.Strings(list)
	out := list[:0]
	for i, s := range list {
		if i == 0 || s != list[i-1] {
			out = append(out, s)
		}
	}
	return out, nil
}

// validPackageName accepts the names distributions use (Debian, Fedora,
// openSUSE, Arch) and refuses what could reach a package manager as an
// option, a glob or a second word.
func validPackageName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 128 {
		return errors.New("longer than 128 characters")
	}
	c0 := s[0]
	if !(c0 >= 'a' && c0 <= 'z' || c0 >= 'A' && c0 <= 'Z' || c0 >= '0' && c0 <= '9') {
		return errors.New("must start with a letter or digit")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._+-", r)) {
			return fmt.Errorf("character %q is not allowed (letters, digits, '.', '_', '+', '-')", r)
		}
	}
	return nil
}

// mounts reads [mounts]: label = "host:container[:ro|:rw]".
func (sc *schemaChecker) mounts(v any, dir string) ([]mount, error) {
	t, err := sc.table([]string{"mounts"}, v)
	if err != nil {
		return nil, err
	}
	labels := make([]string, 0, len(t))
	for k := range t {
		labels = append(labels, k)
	}
	sort.Strings(labels)
	var out []mount
	seenLabel := map[string]bool{}
	seenTarget := map[string]string{}
	for _, raw := range labels {
		path := []string{"mounts", raw}
		label := strings.TrimSpace(raw)
		if !isBareKey(label) {
			return nil, sc.errorf(path, "mount label must be letters, digits, '_' or '-'")
		}
		if seenLabel[label] {
			return nil, sc.errorf(path, "duplicate mount label %q", label)
		}
		seenLabel[label] = true
		spec, err := sc.str(path, t[raw])
		if err != nil {
			return nil, err
		}
		mt, err := parseMountSpec(spec, dir)
		if err != nil {
			return nil, sc.errorf(path, "%v", err)
		}
		mt.Label = label
		if other, dup := seenTarget[mt.Container]; dup {
			return nil, sc.errorf(path, "container path %s is already mounted by %q", mt.Container, other)
		}
		seenTarget[mt.Container] = label
		out = append(out, mt)
	}
	return out, nil
}

// parseMountSpec reads "host:container[:ro|:rw]". Relative host paths are
// relative to the manifest's directory; "~/" is the user's home, resolved
// when the environment runs.
func parseMountSpec(spec, dir string) (mount, error) {
	parts := strings.Split(spec, ":")
	var m mount
	switch {
	case len(parts) == 3 && (parts[2] == "ro" || parts[2] == "rw"):
		m.ReadOnly = parts[2] == "ro"
	case len(parts) != 2:
		return m, fmt.Errorf("mount %q: expected \"host_path:container_path\" or \"host_path:container_path:ro\"", spec)
	}
	host, cont := strings.TrimSpace(parts[0]), strings.TrimSpace(parts[1])
	if host == "" || cont == "" {
		return m, fmt.Errorf("mount %q: host and container paths must not be empty", spec)
	}
	if !strings.HasPrefix(cont, "/") {
		return m, fmt.Errorf("mount %q: container path %q must be absolute", spec, cont)
	}
	for _, seg := range strings.Split(cont, "/") {
		if seg == ".." {
			return m, fmt.Errorf("mount %q: container path must not contain '..'", spec)
		}
	}
	m.Container = filepath.Clean(cont)
	if m.Container == "/" {
		return m, fmt.Errorf("mount %q: cannot mount over the container's root", spec)
	}
	for _, reserved := range []string{"/proc", "/sys", "/dev"} {
		if m.Container == reserved || strings.HasPrefix(m.Container, reserved+"/") {
			return m, fmt.Errorf("mount %q: %s is managed by karapace", spec, reserved)
		}
	}
	switch {
	case host == "~" || strings.HasPrefix(host, "~/"):
		m.Source = filepath.Clean(host)
	case filepath.IsAbs(host):
		m.Source = filepath.Clean(host)
		m.Host = m.Source
	default:
		m.Source = filepath.Clean(host)
		m.Host = filepath.Join(dir, host)
	}
	return m, nil
}

// canonicalJSON is the normalized manifest as JSON with sorted keys and no
// insignificant space: identical meaning gives identical bytes.
func (m *manifest) canonicalJSON() []byte {
	j := canonJSON{b: make([]byte, 0, 512)}
	writeCanonObject(&j, m, (*envField).previewKey,
		canonEntry{"base_image", func(j *canonJSON) { j.key("base_image").str(m.BaseImage) }},
		canonEntry{"manifest_version", func(j *canonJSON) { j.key("manifest_version").int(1) }},
		canonEntry{"mounts", func(j *canonJSON) {
			j.key("mounts").open('[')
			for _, mt := range m.Mounts {
				j.open('{')
				j.key("container_path").str(mt.Container)
				j.key("host_path").str(mt.Host)
				j.key("label").str(mt.Label)
				j.key("read_only").bool(mt.ReadOnly)
				j.key("source").str(mt.Source)
				j.close('}')
			}
			j.close(']')
		}},
		canonEntry{"system_packages", func(j *canonJSON) { j.key("system_packages").strs(m.Packages) }})
	return j.b
}

// The range of runtime.resource_limits.pids_limit: enough for a shell and
// a package manager at least, and the kernel's maximum at most.
const (
	pidsLimitMin = 32
	pidsLimitMax = 4194304
)
