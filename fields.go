package main

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// envFields are the manifest's settings that the lock records as they are
// and the environment's identity covers: one entry each, read from the
// manifest, copied into the lock, written to and read from it, hashed
// into the identity, compared for drift, summarized by inspect and
// written back by templates, all from here. A new setting is one more
// entry (and its field, of the same name, in manifest and lockFile). The
// base image, the packages and the mounts, which resolving changes, have
// code of their own.
var envFields = []envField{
	{field: "Backend", manifest: "runtime.backend", lock: "runtime_backend", kind: fieldString, lower: true,
		check: func(s string) error {
			if !contains(backends, s) {
				return fmt.Errorf("unknown backend %q (expected one of: %s)", s, strings.Join(backends, ", "))
			}
			return nil
		}},
	{field: "GPU", manifest: "hardware.gpu", lock: "hardware_gpu", kind: fieldBool},
	{field: "Audio", manifest: "hardware.audio", lock: "hardware_audio", kind: fieldBool},
	{field: "NetworkIsolation", manifest: "runtime.network_isolation", lock: "network_isolation", kind: fieldBool},
	{field: "SessionBus", manifest: "runtime.session_bus", lock: "session_bus", kind: fieldBool, since: true},
	{field: "HostSockets", manifest: "runtime.host_sockets", lock: "host_sockets", kind: fieldStrings, since: true,
		check: func(s string) error {
			if !contains(hostSocketKinds, s) {
				return fmt.Errorf("unknown host socket %q (expected some of: %s)", s, strings.Join(hostSocketKinds, ", "))
			}
			return nil
		}},
	{field: "Apps", manifest: "gui.apps", lock: "resolved_apps", preview: "gui_apps", kind: fieldStrings, names: "app", afterRequested: true},
	{field: "CPUShares", manifest: "runtime.resource_limits.cpu_shares", lock: "cpu_shares", kind: fieldInt, min: 2, max: 262144, lockOmitZero: true, afterRequested: true},
	{field: "MemoryLimitMB", manifest: "runtime.resource_limits.memory_limit_mb", lock: "memory_limit_mb", kind: fieldInt, min: 16, max: 1 << 30, lockOmitZero: true, afterRequested: true},
	{field: "PidsLimit", manifest: "runtime.resource_limits.pids_limit", lock: "pids_limit", kind: fieldInt, min: pidsLimitMin, max: pidsLimitMax, since: true, afterRequested: true},
}

type fieldKind int

const (
	fieldBool fieldKind = iota
	fieldInt
	fieldString
	fieldStrings
)

// envField is one setting (see envFields).
type envField struct {
	field    string // the Go field, of the same name in manifest and lockFile
	manifest string // its key in the manifest, dotted
	lock     string // its key in the lock, the identity and inspect's summary
	preview  string // its key in the manifest's canonical JSON, when not lock's
	kind     fieldKind
	min, max int64              // fieldInt's range
	check    func(string) error // each string of fieldString and fieldStrings
	lower    bool               // fieldString: compared and kept in lower case
	names    string             // fieldStrings: package-like names of this kind ("app"); else sorted and deduplicated as they are
	// since: added after lock v2 appeared: in the lock and the identities
	// only when set, so that a lock without it keeps its bytes and env_id.
	since bool
	// lockOmitZero: left out of the lock when zero (the identity has it).
	lockOmitZero   bool
	afterRequested bool // written in the lock after requested_packages
}

func (f *envField) previewKey() string {
	if f.preview != "" {
		return f.preview
	}
	return f.lock
}

// value is the field's value in a manifest or a lockFile.
func (f *envField) value(of any) reflect.Value {
	return reflect.ValueOf(of).Elem().FieldByName(f.field)
}

// set reports whether the field holds anything.
func (f *envField) set(of any) bool { return !f.value(of).IsZero() }

// parse reads the field from a decoded TOML value at path, checked.
func (f *envField) parse(sc *schemaChecker, path []string, v any) (any, error) {
	switch f.kind {
	case fieldBool:
		return sc.boolean(path, v)
	case fieldInt:
		return sc.integer(path, v, f.min, f.max)
	case fieldString:
		s, err := sc.str(path, v)
		if err != nil {
			return nil, err
		}
		if f.lower {
			s = strings.ToLower(s)
		}
		if f.check != nil {
			if err := f.check(s); err != nil {
				return nil, sc.errorf(path, "%v", err)
			}
		}
		return s, nil
	}
	if f.names != "" {
		return sc.names(path, v, f.names)
	}
	list, err := sc.strings(path, v)
	if err != nil {
		return nil, err
	}
	for i, s := range list {
		if f.check != nil {
			if err := f.check(s); err != nil {
				return nil, sc.errorf(append(path, strconv.Itoa(i)), "%v", err)
			}
		}
	}
	sort.Strings(list)
	return slices.Compact(list), nil
}

// parseFields reads every envField of a manifest section (nil: the top
// level) that the document has, into m.
func (sc *schemaChecker) parseFields(section []string, t map[string]any, m *manifest) error {
	prefix := strings.Join(section, ".")
	for i := range envFields {
		f := &envFields[i]
		parent, key := splitDotted(f.manifest)
		if parent != prefix {
			continue
		}
		v, ok := t[key]
		if !ok {
			continue
		}
		val, err := f.parse(sc, append(section, key), v)
		if err != nil {
			return err
		}
		if val != nil {
			f.value(m).Set(reflect.ValueOf(val))
		}
	}
	return nil
}

// sectionKeys are the keys a manifest section may hold: its fields and
// the sections within it.
func sectionKeys(section string, subsections ...string) []string {
	keys := append([]string{}, subsections...)
	for _, f := range envFields {
		if parent, key := splitDotted(f.manifest); parent == section {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	return keys
}

func splitDotted(s string) (string, string) {
	i := strings.LastIndexByte(s, '.')
	return s[:max(i, 0)], s[i+1:]
}

// copyFields copies the fields of a manifest into its lock.
func copyFields(m *manifest, l *lockFile) {
	for i := range envFields {
		f := &envFields[i]
		v := f.value(m)
		if v.Kind() == reflect.Slice && !v.IsNil() {
			v = reflect.ValueOf(slices.Clone(v.Interface().([]string)))
		}
		f.value(l).Set(v)
	}
}

// lockKVs are the fields as the lock writes them; before and after
// requested_packages.
func lockKVs(l *lockFile) (before, after []tomlKV) {
	for i := range envFields {
		f := &envFields[i]
		if (f.since || f.lockOmitZero) && !f.set(l) {
			continue
		}
		v := f.value(l).Interface()
		if list, ok := v.([]string); ok {
			v = stringsToAny(list)
		}
		if f.afterRequested {
			after = append(after, tomlKV{f.lock, v})
		} else {
			before = append(before, tomlKV{f.lock, v})
		}
	}
	return before, after
}

// lockKeys are the keys of the fields in a lock.
func lockKeys() []string {
	var keys []string
	for _, f := range envFields {
		keys = append(keys, f.lock)
	}
	return keys
}

// parseLockFields reads the fields of a lock: each is required, but
// those the lock may leave out.
func (sc *schemaChecker) parseLockFields(top map[string]any, l *lockFile) error {
	for i := range envFields {
		f := &envFields[i]
		v, ok := top[f.lock]
		if !ok {
			if f.since || f.lockOmitZero || f.kind == fieldStrings {
				continue
			}
			return sc.errorf([]string{f.lock}, "missing")
		}
		val, err := f.parseLock(sc, v)
		if err != nil {
			return err
		}
		f.value(l).Set(reflect.ValueOf(val))
	}
	return nil
}

// parseLock reads the field as a lock records it: what the manifest gave,
// normalized, so strings keep their order and case.
func (f *envField) parseLock(sc *schemaChecker, v any) (any, error) {
	path := []string{f.lock}
	switch f.kind {
	case fieldString:
		s, err := sc.str(path, v)
		if err == nil && f.check != nil {
			if err := f.check(s); err != nil {
				return nil, sc.errorf(path, "%v", err)
			}
		}
		return s, err
	case fieldStrings:
		list, err := sc.strings(path, v)
		for i, s := range list {
			if err == nil && f.check != nil {
				if cerr := f.check(s); cerr != nil {
					return nil, sc.errorf(append(path, strconv.Itoa(i)), "%v", cerr)
				}
			}
		}
		return list, err
	}
	return f.parse(sc, path, v)
}

// fieldDrift names each field whose manifest value is not the locked one.
func fieldDrift(l *lockFile, m *manifest, add func(key, locked, now string)) {
	for i := range envFields {
		f := &envFields[i]
		lv, mv := fieldText(f.value(l)), fieldText(f.value(m))
		if lv != mv {
			add(f.manifest, lv, mv)
		}
	}
}

func fieldText(v reflect.Value) string {
	if list, ok := v.Interface().([]string); ok {
		return strings.Join(list, ",")
	}
	return fmt.Sprint(v.Interface())
}

// canonField writes the field into canonical JSON under key, when it
// counts: always, or, for a field added since, only when set.
func (f *envField) canonField(j *canonJSON, key string, of any) {
	if f.since && !f.set(of) {
		return
	}
	v := f.value(of)
	switch f.kind {
	case fieldBool:
		j.key(key).bool(v.Bool())
	case fieldInt:
		j.key(key).int(v.Int())
	case fieldString:
		j.key(key).str(v.String())
	case fieldStrings:
		j.key(key).strs(v.Interface().([]string))
	}
}

// canonEntry is one key of a canonical JSON object, written by w: the
// objects identities hash write their keys sorted, fields and others alike.
type canonEntry struct {
	key string
	w   func(*canonJSON)
}

// writeCanonObject writes entries, and the fields of of under keyOf, as
// one object with sorted keys.
func writeCanonObject(j *canonJSON, of any, keyOf func(*envField) string, entries ...canonEntry) {
	for i := range envFields {
		f := &envFields[i]
		key := keyOf(f)
		entries = append(entries, canonEntry{key, func(j *canonJSON) { f.canonField(j, key, of) }})
	}
	sort.Slice(entries, func(a, b int) bool { return entries[a].key < entries[b].key })
	j.open('{')
	for _, e := range entries {
		e.w(j)
	}
	j.close('}')
}

// fieldSummary is the fields for inspect's summary, by lock key.
func fieldSummary(l *lockFile, into map[string]any) {
	for i := range envFields {
		f := &envFields[i]
		v := f.value(l).Interface()
		if list, ok := v.([]string); ok && list == nil {
			v = []string{}
		}
		into[f.lock] = v
	}
}

// manifestTOML is a manifest's settings as TOML for a template: each in
// its section, when set.
func manifestTOML(m *manifest, section string) []tomlKV {
	var kvs []tomlKV
	for i := range envFields {
		f := &envFields[i]
		parent, key := splitDotted(f.manifest)
		if parent != section || !f.set(m) {
			continue
		}
		v := f.value(m).Interface()
		if list, ok := v.([]string); ok {
			v = stringsToAny(list)
		}
		kvs = append(kvs, tomlKV{key, v})
	}
	return kvs
}
