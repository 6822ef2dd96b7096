package main

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const lockVersion = 2

// lockFile is karapace.lock: everything that was resolved for a manifest.
type lockFile struct {
	EnvID, ShortID   string
	BaseImage        string // the manifest's base.image
	BaseImageDigest  string // "sha256:HEX" or "blake3:HEX" over every byte of the image
	BaseImageURL     string // where those bytes came from; a relative path is relative to the lock
	Backend          string
	GPU, Audio       bool
	NetworkIsolation bool
	SessionBus       bool
	HostSockets      []string
	Apps             []string
	Mounts           []lockMount
	CPUShares        int64
	MemoryLimitMB    int64
	PidsLimit        int64
	// Requested is system.packages as the manifest asked for them, sorted;
	// nil in a lock written before karapace recorded them.
	Requested []string
	Packages  []lockedPackage // the installed closure, sorted by name

	src *schemaChecker // the file it was read from, for messages; nil if made here
}

type lockMount struct {
	Label, Source, Container string
	ReadOnly                 bool
}

// String is the mount as inspect shows it: "LABEL SOURCE:CONTAINER (rw)".
func (mt lockMount) String() string {
	rw := "rw"
	if mt.ReadOnly {
		rw = "ro"
	}
	return fmt.Sprintf("%s %s:%s (%s)", mt.Label, mt.Source, mt.Container, rw)
}

type lockedPackage struct{ Name, Version string }

// lockPath is where the lock of a manifest lives: beside it, spelled the
// way the manifest's path was, so that messages name both alike.
func lockPath(manifestPath string) string {
	dir, _ := filepath.Split(manifestPath)
	return dir + "karapace.lock"
}

// newLock records a manifest and what resolving it found, and computes
// the identity.
func newLock(m *manifest, digest, imageURL string, pkgs []lockedPackage) *lockFile {
	l := &lockFile{
		BaseImage: m.BaseImage, BaseImageDigest: digest, BaseImageURL: imageURL,
		Requested: append([]string{}, m.Packages...), Packages: append([]lockedPackage(nil), pkgs...),
	}
	copyFields(m, l)
	for _, mt := range m.Mounts {
		l.Mounts = append(l.Mounts, lockMount{mt.Label, mt.Source, mt.Container, mt.ReadOnly})
	}
	sort.Slice(l.Packages, func(i, j int) bool { return l.Packages[i].Name < l.Packages[j].Name })
	l.EnvID, l.ShortID = l.computeID()
	return l
}

// encode is the lock's TOML text: same content, same bytes.
func (l *lockFile) encode() ([]byte, error) {
	doc := []tomlKV{
		{"lock_version", int64(lockVersion)},
		{"env_id", l.EnvID},
		{"short_id", l.ShortID},
		{"base_image", l.BaseImage},
		{"base_image_digest", l.BaseImageDigest},
	}
	if l.BaseImageURL != "" {
		doc = append(doc, tomlKV{"base_image_url", l.BaseImageURL})
	}
	before, after := lockKVs(l)
	doc = append(doc, before...)
	if l.Requested != nil {
		doc = append(doc, tomlKV{"requested_packages", stringsToAny(l.Requested)})
	}
	doc = append(doc, after...)
	if len(l.Mounts) > 0 {
		var ms []any
		for _, m := range l.Mounts {
			ms = append(ms, []tomlKV{{"label", m.Label}, {"host_path", m.Source}, {"container_path", m.Container}, {"read_only", m.ReadOnly}})
		}
		doc = append(doc, tomlKV{"mounts", ms})
	}
	if len(l.Packages) > 0 {
		var ps []any
		for _, p := range l.Packages {
			ps = append(ps, []tomlKV{{"name", p.Name}, {"version", p.Version}})
		}
		doc = append(doc, tomlKV{"resolved_packages", ps})
	}
	body, err := encodeTOML(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding lock file: %w", err)
	}
	return append([]byte("# Written by karapace: what the manifest resolved to. Commit it; do not edit it.\n"), body...), nil
}

func stringsToAny(s []string) []any {
	out := make([]any, 0, len(s))
	for _, e := range s {
		out = append(out, e)
	}
	return out
}

// writeLock writes the lock beside its manifest, atomically.
func writeLock(path string, l *lockFile) error {
	data, err := l.encode()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o644)
}

// loadLock reads and checks a lock file. Problems are manifest errors
// (exit 2) naming file, line, column and key.
func loadLock(path string) (*lockFile, error) {
	data, err := readLimited(path, 64<<20)
	if err != nil {
		return nil, manifestErrorf("%s: %v", path, err)
	}
	return parseLock(path, data)
}

func parseLock(name string, data []byte) (*lockFile, error) {
	doc, sc, err := decodeChecked(name, data)
	if err != nil {
		return nil, err
	}
	top, err := sc.table(nil, doc, append([]string{"lock_version", "env_id", "short_id", "base_image", "base_image_digest",
		"base_image_url", "requested_packages", "mounts", "resolved_packages"}, lockKeys()...)...)
	if err != nil {
		return nil, err
	}
	need := func(key string) (any, error) {
		v, ok := top[key]
		if !ok {
			return nil, sc.errorf([]string{key}, "missing")
		}
		return v, nil
	}
	l := &lockFile{src: sc}
	v, err := need("lock_version")
	if err != nil {
		return nil, err
	}
	if n, ok := v.(int64); !ok || n != lockVersion {
		return nil, sc.errorf([]string{"lock_version"}, "unsupported lock version %v (this karapace reads version %d; rebuild to rewrite the lock)", v, lockVersion)
	}
	strField := func(key string, dst *string, required bool) error {
		v, ok := top[key]
		if !ok {
			if required {
				return sc.errorf([]string{key}, "missing")
			}
			return nil
		}
		s, err := sc.str([]string{key}, v)
		if err != nil {
			return err
		}
		if required && s == "" {
			return sc.errorf([]string{key}, "must not be empty")
		}
		*dst = s
		return nil
	}
	for _, f := range []struct {
		key      string
		dst      *string
		required bool
	}{
		{"env_id", &l.EnvID, true}, {"short_id", &l.ShortID, true}, {"base_image", &l.BaseImage, true},
		{"base_image_digest", &l.BaseImageDigest, true}, {"base_image_url", &l.BaseImageURL, false},
	} {
		if err := strField(f.key, f.dst, f.required); err != nil {
			return nil, err
		}
	}
	if !isHexID(l.EnvID, 64) {
		return nil, sc.errorf([]string{"env_id"}, "expected 64 lowercase hex digits")
	}
	if !isHexID(l.ShortID, 12) {
		return nil, sc.errorf([]string{"short_id"}, "expected 12 lowercase hex digits")
	}
	if err := validDigest(l.BaseImageDigest); err != nil {
		return nil, sc.errorf([]string{"base_image_digest"}, "%v", err)
	}
	if err := sc.parseLockFields(top, l); err != nil {
		return nil, err
	}
	if v, ok := top["requested_packages"]; ok {
		if l.Requested, err = sc.requested(v); err != nil {
			return nil, err
		}
	}
	if v, ok := top["mounts"]; ok {
		if l.Mounts, err = sc.lockMounts(v); err != nil {
			return nil, err
		}
	}
	if v, ok := top["resolved_packages"]; ok {
		if l.Packages, err = sc.lockPackages(v); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// requested reads requested_packages: package names, each once.
func (sc *schemaChecker) requested(v any) ([]string, error) {
	path := []string{"requested_packages"}
	list, err := sc.strings(path, v)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(list))
	for i, s := range list {
		if err := validPackageName(s); err != nil {
			return nil, sc.errorf(append(path, strconv.Itoa(i)), "package name %q: %v", s, err)
		}
		if seen[s] {
			return nil, sc.errorf(append(path, strconv.Itoa(i)), "package %q is listed twice", s)
		}
		seen[s] = true
	}
	return list, nil
}

// tables checks that v is an array of tables and returns them.
func (sc *schemaChecker) tables(path []string, v any) ([]map[string]any, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, sc.errorf(path, "expected an array of tables, got %s", tomlTypeName(v))
	}
	out := make([]map[string]any, 0, len(arr))
	for i, e := range arr {
		t, ok := e.(map[string]any)
		if !ok {
			return nil, sc.errorf(append(path, strconv.Itoa(i)), "expected a table, got %s", tomlTypeName(e))
		}
		out = append(out, t)
	}
	return out, nil
}

func (sc *schemaChecker) lockMounts(v any) ([]lockMount, error) {
	ts, err := sc.tables([]string{"mounts"}, v)
	if err != nil {
		return nil, err
	}
	var out []lockMount
	for i, t := range ts {
		path := []string{"mounts", strconv.Itoa(i)}
		if _, err := sc.table(path, t, "label", "host_path", "container_path", "read_only"); err != nil {
			return nil, err
		}
		var m lockMount
		for _, f := range []struct {
			key string
			dst *string
		}{{"label", &m.Label}, {"host_path", &m.Source}, {"container_path", &m.Container}} {
			fv, ok := t[f.key]
			if !ok {
				return nil, sc.errorf(append(path, f.key), "missing")
			}
			if *f.dst, err = sc.str(append(path, f.key), fv); err != nil {
				return nil, err
			}
		}
		if ro, ok := t["read_only"]; ok {
			if m.ReadOnly, err = sc.boolean(append(path, "read_only"), ro); err != nil {
				return nil, err
			}
		}
		out = append(out, m)
	}
	return out, nil
}

func (sc *schemaChecker) lockPackages(v any) ([]lockedPackage, error) {
	ts, err := sc.tables([]string{"resolved_packages"}, v)
	if err != nil {
		return nil, err
	}
	out := make([]lockedPackage, 0, len(ts))
	seen := map[string]bool{}
	for i, t := range ts {
		path := []string{"resolved_packages", strconv.Itoa(i)}
		if _, err := sc.table(path, t, "name", "version"); err != nil {
			return nil, err
		}
		var p lockedPackage
		for _, f := range []struct {
			key string
			dst *string
		}{{"name", &p.Name}, {"version", &p.Version}} {
			fv, ok := t[f.key]
			if !ok {
				return nil, sc.errorf(append(path, f.key), "missing")
			}
			if *f.dst, err = sc.str(append(path, f.key), fv); err != nil {
				return nil, err
			}
			if *f.dst == "" {
				return nil, sc.errorf(append(path, f.key), "must not be empty")
			}
		}
		if err := validPackageName(p.Name); err != nil {
			return nil, sc.errorf(append(path, "name"), "package name %q: %v", p.Name, err)
		}
		if strings.ContainsAny(p.Version, " \t\n*?=") {
			return nil, sc.errorf(append(path, "version"), "version %q contains a space or a pattern character", p.Version)
		}
		if seen[p.Name] {
			return nil, sc.errorf(append(path, "name"), "package %q is listed twice", p.Name)
		}
		seen[p.Name] = true
		out = append(out, p)
	}
	return out, nil
}

func isHexID(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// validDigest accepts "sha256:HEX" and "blake3:HEX" (64 lowercase hex digits).
func validDigest(d string) error {
	algo, h, ok := strings.Cut(d, ":")
	if !ok || (algo != "sha256" && algo != "blake3") {
		return fmt.Errorf("digest %q: expected sha256:HEX or blake3:HEX", d)
	}
	if _, err := hex.DecodeString(h); err != nil || !isHexID(h, 64) {
		return fmt.Errorf("digest %q: expected 64 lowercase hex digits", d)
	}
	return nil
}

// verifyIntegrity recomputes the identity from the fields of a lock read
// by parseLock and compares it with the one the lock states.
func (l *lockFile) verifyIntegrity() error {
	id, short := l.computeID()
	if id != l.EnvID || short != l.ShortID {
		return l.src.errorf([]string{"env_id"}, "does not match the locked contents (lock says %s, contents give %s): the lock was edited or damaged; build without --locked to resolve it again", l.EnvID, id)
	}
	return nil
}

// verifyIntent reports every way the manifest has drifted from a lock read
// by parseLock: one line for each, at the manifest's key, then what to do.
func (l *lockFile) verifyIntent(m *manifest) error {
	if l.Requested == nil {
		return l.src.errorf([]string{"requested_packages"}, "missing: this lock was written by an older karapace and does not say which packages were asked for; build without --locked to lock again")
	}
	ms := m.src
	var drift []string
	add := func(path []string, format string, a ...any) {
		drift = append(drift, ms.where(path)+fmt.Sprintf(format, a...))
	}
	diff := func(key, locked, now string) {
		if locked != now {
			add(strings.Split(key, "."), "locked %q, manifest %q", locked, now)
		}
	}
	// A manifest that pins the very bytes the lock pins has not drifted,
	// whatever name it gives them (after 'karapace pin', say).
	if ref, err := parseImageRef(m.BaseImage); err != nil || ref.DigestAlgo != "sha256" || "sha256:"+ref.Digest != l.BaseImageDigest {
		diff("base.image", l.BaseImage, m.BaseImage)
	}
	pkgs := []string{"system", "packages"}
	locked, asked, at := setOf(l.Requested), setOf(m.Packages), ms.elementIndex(pkgs)
	for _, p := range m.Packages {
		if !locked[p] {
			add(append(pkgs[:2:2], strconv.Itoa(at[p])), "%q is not in %s", p, l.src.file)
		}
	}
	for _, p := range l.Requested {
		if !asked[p] {
			add(pkgs, "%q was removed, but %s installs it", p, l.src.file)
		}
	}
	fieldDrift(l, m, diff)
	var lm, mm []string
	for _, x := range l.Mounts {
		lm = append(lm, fmt.Sprintf("%s=%s:%s:%v", x.Label, x.Source, x.Container, x.ReadOnly))
	}
	for _, x := range m.Mounts {
		mm = append(mm, fmt.Sprintf("%s=%s:%s:%v", x.Label, x.Source, x.Container, x.ReadOnly))
	}
	diff("mounts", strings.Join(lm, ","), strings.Join(mm, ","))
	if len(drift) > 0 {
		return manifestErrorf("%s\n%s no longer matches %s: build without --locked to resolve and lock again", strings.Join(drift, "\n"), l.src.file, ms.file)
	}
	return nil
}

func setOf(list []string) map[string]bool {
	set := make(map[string]bool, len(list))
	for _, s := range list {
		set[s] = true
	}
	return set
}
