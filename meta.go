package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

type envState string

const (
	stateDefined  envState = "defined"
	stateBuilt    envState = "built"
	stateRunning  envState = "running"
	stateFrozen   envState = "frozen"
	stateArchived envState = "archived"
	// stateDestroyed is never stored: it names the destroy transition.
	stateDestroyed envState = "destroyed"
)

func (s envState) valid() bool {
	switch s {
	case stateDefined, stateBuilt, stateRunning, stateFrozen, stateArchived:
		return true
	}
	return false
}

// envMeta is an environment's metadata file, store/metadata/<env_id>.
type envMeta struct {
	EnvID            string   `json:"env_id"`
	ShortID          string   `json:"short_id"`
	Name             string   `json:"name,omitempty"`
	State            envState `json:"state"`
	ManifestHash     string   `json:"manifest_hash"`
	LockHash         string   `json:"lock_hash"`
	BaseLayer        string   `json:"base_layer"`
	DependencyLayers []string `json:"dependency_layers"`
	PolicyLayer      string   `json:"policy_layer,omitempty"`
	Snapshots        []string `json:"snapshots"`
	UpperLayer       string   `json:"upper_layer,omitempty"`
	ManifestPath     string   `json:"manifest_path,omitempty"` // last manifest built into it: relative mounts resolve beside it
	ManifestPaths    []string `json:"manifest_paths,omitempty"`
	CreatedAt        string   `json:"created_at"`
	UpdatedAt        string   `json:"updated_at"`
	RefCount         int      `json:"ref_count"`
	Checksum         string   `json:"checksum,omitempty"`
}

// ref_count is how many manifest files on this machine have built into the
// environment: ManifestPaths lists them (absolute paths, each once). Two
// projects with the same manifest share one environment, and ref_count
// says how many lose it when it goes. It does not keep it alive: destroy
// removes the environment whatever the count and names those manifests;
// gc keeps every environment that has metadata. A pulled or imported
// environment starts at 0. Metadata of older versions has no
// manifest_paths and a count of every build; the next build turns it
// into the list.

// manifests lists the manifests known to have built the environment.
func (m *envMeta) manifests() []string {
	switch {
	case len(m.ManifestPaths) > 0:
		return m.ManifestPaths
	case m.ManifestPath != "":
		return []string{m.ManifestPath}
	}
	return []string{}
}

// addManifest records a build of the environment from the manifest at
// path.
func (m *envMeta) addManifest(path string) {
	if len(m.ManifestPaths) == 0 && m.ManifestPath != "" {
		m.ManifestPaths = []string{m.ManifestPath} // all an older version kept
	}
	if !contains(m.ManifestPaths, path) {
		m.ManifestPaths = append(m.ManifestPaths, path)
	}
	m.ManifestPath = path
	m.RefCount = len(m.ManifestPaths)
}

// canonical is the JSON the checksum covers: the metadata without its
// checksum, with nil lists written as [] so a round trip keeps the bytes.
func (m *envMeta) canonical() []byte {
	c := *m
	c.Checksum = ""
	if c.DependencyLayers == nil {
		c.DependencyLayers = []string{}
	}
	if c.Snapshots == nil {
		c.Snapshots = []string{}
	}
	b, _ := json.Marshal(&c) // cannot fail: strings, ints and string slices only
	return b
}

// layerRefs lists every layer the environment refers to.
func (m *envMeta) layerRefs() []string {
	var refs []string
	for _, h := range append(append([]string{m.BaseLayer, m.PolicyLayer, m.UpperLayer}, m.DependencyLayers...), m.Snapshots...) {
		if h != "" {
			refs = append(refs, h)
		}
	}
	return refs
}

// objectRefs lists the objects the metadata refers to directly.
func (m *envMeta) objectRefs() []string {
	var refs []string
	for _, h := range []string{m.ManifestHash, m.LockHash} {
		if h != "" {
			refs = append(refs, h)
		}
	}
	return refs
}

func validEnvName(name string) error {
	if len(name) == 0 || len(name) > 64 {
		return fmt.Errorf("invalid environment name %q: it must be 1 to 64 characters long", name)
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("invalid environment name %q: only letters, digits, '_' and '-' are allowed", name)
		}
	}
	return nil
}

// check validates the fields on their own (not against the store).
func (m *envMeta) check() error {
	if !validStoreHash(m.EnvID) {
		return fmt.Errorf("invalid env_id %q", m.EnvID)
	}
	if m.ShortID != m.EnvID[:12] {
		return fmt.Errorf("environment %s: short_id %q is not the first 12 characters of env_id", m.EnvID, m.ShortID)
	}
	if m.Name != "" {
		if err := validEnvName(m.Name); err != nil {
			return err
		}
	}
	if !m.State.valid() {
		return fmt.Errorf("environment %s: unknown state %q", m.EnvID, m.State)
	}
	for _, h := range append(m.layerRefs(), m.objectRefs()...) {
		if !validStoreHash(h) {
			return fmt.Errorf("environment %s: invalid hash %q", m.EnvID, h)
		}
	}
	if m.RefCount < 0 {
		return fmt.Errorf("environment %s: negative ref_count %d", m.EnvID, m.RefCount)
	}
	if len(m.ManifestPaths) > 0 && m.RefCount != len(m.ManifestPaths) {
		return fmt.Errorf("environment %s: ref_count %d, but %d manifest_paths", m.EnvID, m.RefCount, len(m.ManifestPaths))
	}
	return nil
}

// putMeta validates m and writes it atomically with a fresh checksum. Every
// layer and object it names must already be in the store, so metadata
// never points at nothing, and its name must be unique, which takes every
// other metadata file to be readable. The caller holds the lock and sets
// the times.
func (s *store) putMeta(m *envMeta) error {
	if err := s.checkMetaRefs(m); err != nil {
		return err
	}
	if m.Name != "" {
		all, errs := s.listMeta()
		if len(errs) > 0 {
			return storeErrorf("cannot make sure the name %q is not taken: %v (run 'karapace verify-store')", m.Name, errs[0])
		}
		for _, o := range all {
			if o.Name == m.Name && o.EnvID != m.EnvID {
				return fmt.Errorf("the name %q is already used by environment %s", m.Name, o.ShortID)
			}
		}
	}
	return s.writeMeta(m)
}

// checkMetaRefs validates m's fields and that what it refers to is there.
func (s *store) checkMetaRefs(m *envMeta) error {
	if err := m.check(); err != nil {
		return err
	}
	for _, h := range m.layerRefs() {
		if !s.hasLayer(h) {
			return fmt.Errorf("environment %s refers to layer %s, which is not in the store", m.EnvID, h)
		}
	}
	for _, h := range m.objectRefs() {
		if !s.hasObject(h) {
			return fmt.Errorf("environment %s refers to object %s, which is not in the store", m.EnvID, h)
		}
	}
	return nil
}

// writeMeta writes m with a fresh checksum, without checking references,
// and keeps its layers as the binding of its env_id (see binding.go).
func (s *store) writeMeta(m *envMeta) error {
	m.Checksum = storeBlake3Hex(m.canonical())
	b, _ := json.MarshalIndent(m, "", "  ")
	if _, err := s.writeAtomic(s.path("metadata"), m.EnvID, bytes.NewReader(append(b, '\n'))); err != nil {
		return err
	}
	return s.recordBinding(m)
}

// getMeta reads and checks an environment's metadata.
func (s *store) getMeta(envID string) (*envMeta, error) {
	if !validStoreHash(envID) {
		return nil, fmt.Errorf("invalid env_id %q", envID)
	}
	var buf []byte
	return s.getMetaBuf(envID, &buf)
}

// getMetaBuf is getMeta reading into *buf, which listMeta reuses: a
// thousand metadata files then cost no more memory than one.
func (s *store) getMetaBuf(envID string, buf *[]byte) (*envMeta, error) {
	b, err := readSmallFile(s.path("metadata", envID), *buf)
	*buf = b
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("environment %s not found: %w", envID, err)
		}
		return nil, fmt.Errorf("reading metadata of %s: %w", envID, err)
	}
	return s.parseMeta(envID, b)
}

func (s *store) parseMeta(envID string, b []byte) (*envMeta, error) {
	file := s.path("metadata", envID)
	var m envMeta
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, storeErrorf("metadata file %s is corrupt: %v", file, err)
	}
	if m.Checksum == "" {
		return nil, storeErrorf("metadata file %s has no checksum (written by an older karapace? run 'karapace migrate')", file)
	}
	if got := storeBlake3Hex(m.canonical()); got != m.Checksum {
		return nil, storeErrorf("metadata file %s is corrupt: checksum mismatch (recorded %s, content hashes to %s)", file, m.Checksum, got)
	}
	if m.EnvID != envID {
		return nil, storeErrorf("metadata file %s is for environment %q", file, m.EnvID)
	}
	if err := m.check(); err != nil {
		return nil, storeErrorf("metadata file %s: %v", file, err)
	}
	return &m, nil
}

// listMeta returns every readable metadata entry sorted by env_id and an
// error for each one that is not.
func (s *store) listMeta() ([]*envMeta, []error) {
	names, err := s.listDir("metadata")
	if err != nil {
		return nil, []error{err}
	}
	sort.Strings(names)
	// Reading and checking each file is independent: use every core, so
	// a store with a thousand environments lists quickly.
	metas := make([]*envMeta, len(names))
	errsAt := make([]error, len(names))
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.NumCPU(), len(names)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := int(next.Add(1) - 1); i < len(names); i = int(next.Add(1) - 1) {
				if !validStoreHash(names[i]) {
					errsAt[i] = storeErrorf("stray file %s in the metadata directory", s.path("metadata", names[i]))
					continue
				}
				metas[i], errsAt[i] = s.getMetaBuf(names[i], &buf)
			}
		}()
	}
	wg.Wait()
	var all []*envMeta
	var errs []error
	for i := range names {
		if errsAt[i] != nil {
			errs = append(errs, errsAt[i])
		} else {
			all = append(all, metas[i])
		}
	}
	return all, errs
}

// deleteMeta removes an environment's metadata; a missing one is not an
// error.
func (s *store) deleteMeta(envID string) error {
	if !validStoreHash(envID) {
		return fmt.Errorf("invalid env_id %q", envID)
	}
	if err := os.Remove(s.path("metadata", envID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting metadata of %s: %w", envID, err)
	}
	return syncDir(s.path("metadata"))
}

// envTransitions lists the allowed state changes.
var envTransitions = map[envState][]envState{
	stateDefined:  {stateBuilt, stateDestroyed},
	stateBuilt:    {stateRunning, stateFrozen, stateArchived, stateDestroyed},
	stateRunning:  {stateBuilt},
	stateFrozen:   {stateBuilt, stateArchived, stateDestroyed},
	stateArchived: {stateBuilt, stateDestroyed},
}

// envTransitionVerb names what a user does to reach a state from another.
func envTransitionVerb(from, to envState) string {
	switch to {
	case stateBuilt:
		switch from {
		case stateRunning:
			return "stop"
		case stateFrozen:
			return "unfreeze"
		case stateArchived:
			return "unarchive"
		}
		return "build"
	case stateRunning:
		return "start"
	case stateFrozen:
		return "freeze"
	case stateArchived:
		return "archive"
	case stateDestroyed:
		return "destroy"
	}
	return "move to " + string(to)
}

// canTransition says whether m may go to state to, and if not, why and
// what to do instead. A frozen environment runs read-only without
// changing state, so frozen→running is not a transition.
func (m *envMeta) canTransition(to envState) error {
	for _, ok := range envTransitions[m.State] {
		if ok == to {
			return nil
		}
	}
	if m.State == to {
		return fmt.Errorf("environment %s is already %s", m.ShortID, to)
	}
	article := "a"
	if m.State == stateArchived {
		article = "an"
	}
	msg := fmt.Sprintf("cannot %s %s %s environment", envTransitionVerb(m.State, to), article, m.State)
	switch {
	case m.State == stateRunning:
		msg += "; stop it first"
	case m.State == stateDefined:
		msg += "; build it first"
	case m.State == stateArchived && to == stateRunning:
		msg += "; unarchive it first"
	case m.State == stateArchived && to == stateFrozen:
		msg += "; unarchive it first"
	case m.State == stateFrozen && to == stateRunning:
		msg += "; it can be entered read-only as it is, or unfreeze it first"
	}
	return errors.New(msg)
}

// legacyMeta is metadata as the original Rust tool wrote it (format 1):
// capitalised states, null or missing name and policy_layer, a checksum
// over its own serialization or none, no snapshot list.
type legacyMeta struct {
	EnvID            string   `json:"env_id"`
	ShortID          string   `json:"short_id"`
	Name             *string  `json:"name"`
	State            string   `json:"state"`
	ManifestHash     string   `json:"manifest_hash"`
	BaseLayer        string   `json:"base_layer"`
	DependencyLayers []string `json:"dependency_layers"`
	PolicyLayer      *string  `json:"policy_layer"`
	CreatedAt        string   `json:"created_at"`
	UpdatedAt        string   `json:"updated_at"`
	RefCount         int      `json:"ref_count"`
}

var legacyStates = map[string]envState{
	"Defined": stateDefined, "Built": stateBuilt, "Frozen": stateFrozen, "Archived": stateArchived,
	// Nothing runs across an upgrade.
	"Running": stateBuilt,
}

// legacyLayer is a layer manifest of the original tool: its hash is the
// tar's (or, for snapshots, blake3("snapshot:ENV:BASE:TAR")), parent null.
type legacyLayer struct {
	Hash       string   `json:"hash"`
	Kind       string   `json:"kind"`
	Parent     *string  `json:"parent"`
	ObjectRefs []string `json:"object_refs"`
	ReadOnly   bool     `json:"read_only"`
	TarHash    string   `json:"tar_hash"`
}

// legacyWAL is a WAL entry of the original tool.
type legacyWAL struct {
	Kind          string              `json:"kind"`
	RollbackSteps []map[string]string `json:"rollback_steps"`
}

type migrateReport struct {
	FromVersion int  `json:"from_version"`
	ToVersion   int  `json:"to_version"`
	Metadata    int  `json:"metadata"`
	Layers      int  `json:"layers"`
	WAL         int  `json:"wal"`
	Current     bool `json:"already_current"`
	// IDs: the environments' trees given to the IDs they map to now.
	IDs *idsMigration `json:"ids,omitempty"`
}

// hasLegacyMeta reports whether some metadata file is in the original
// tool's form (it also called its layout format 2).
func (s *store) hasLegacyMeta() (bool, error) {
	names, err := s.listDir("metadata")
	if err != nil {
		return false, err
	}
	for _, id := range names {
		if _, err := s.getMeta(id); err == nil || !validStoreHash(id) {
			continue
		}
		b, err := os.ReadFile(s.path("metadata", id))
		if err != nil {
			return false, err
		}
		var lm legacyMeta
		if json.Unmarshal(b, &lm) == nil {
			if _, ok := legacyStates[lm.State]; ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// migrate converts a format 1 store in place. Every step is idempotent and
// the version file is written last, so an interrupted migrate is simply
// run again. The caller holds the lock.
func (s *store) migrate(from int) (migrateReport, error) {
	rep := migrateReport{FromVersion: from, ToVersion: storeFormatVersion}
	if err := s.migrateWAL(&rep); err != nil {
		return rep, err
	}
	layerMap, snapshots, err := s.migrateLayers(&rep)
	if err != nil {
		return rep, err
	}
	names, err := s.listDir("metadata")
	if err != nil {
		return rep, err
	}
	for _, id := range names {
		if _, err := s.getMeta(id); err == nil {
			continue // already converted by an interrupted run
		}
		if err := s.migrateMeta(id, layerMap, snapshots); err != nil {
			return rep, err
		}
		rep.Metadata++
	}
	// Only now that nothing refers to them: the old layer files.
	for old, nw := range layerMap {
		if old != nw {
			if err := s.deleteLayer(old); err != nil {
				return rep, err
			}
		}
	}
	if err := syncDir(s.path("layers")); err != nil {
		return rep, err
	}
	if from != storeFormatVersion {
		b, err := os.ReadFile(s.path("version"))
		if err != nil {
			return rep, fmt.Errorf("reading %s: %w", s.path("version"), err)
		}
		if _, err := s.writeAtomic(s.dir, fmt.Sprintf("version.v%d.bak", from), bytes.NewReader(b)); err != nil {
			return rep, err
		}
	}
	return rep, s.writeVersion(storeFormatVersion)
}

// migrateWAL replays the original tool's leftover rollback steps (remove a
// file or directory under the root) and removes its entries.
func (s *store) migrateWAL(rep *migrateReport) error {
	names, err := s.listDir("wal")
	if err != nil {
		return err
	}
	for _, n := range names {
		file := s.path("wal", n)
		if _, err := s.readWAL(file); err == nil {
			continue // ours: the lock's recovery handles it
		}
		b, err := os.ReadFile(file)
		var lw legacyWAL
		if err == nil && json.Unmarshal(b, &lw) == nil {
			for i := len(lw.RollbackSteps) - 1; i >= 0; i-- {
				for k, p := range lw.RollbackSteps[i] {
					rel, err := s.walRel(p)
					if (k == "RemoveDir" || k == "RemoveFile") && err == nil {
						if err := s.removeTree(filepath.Join(s.root, rel)); err != nil {
							return storeErrorf("replaying old WAL entry %s: %v", file, err)
						}
					} else {
						s.out.warnf("old WAL entry %s: skipping step %s %q", file, k, p)
					}
				}
			}
		} else {
			s.out.warnf("removing unreadable WAL entry %s", file)
		}
		if err := os.Remove(file); err != nil {
			return storeErrorf("removing WAL entry %s: %v", file, err)
		}
		rep.WAL++
	}
	return nil
}

type legacySnapshot struct {
	oldHash, tarHash, newHash string
	order                     int64
}

// migrateLayers rewrites every old layer in canonical form and returns
// old hash → new hash (identity for layers already converted) and the
// snapshot layers, whose owner is found from their old hash.
func (s *store) migrateLayers(rep *migrateReport) (map[string]string, []legacySnapshot, error) {
	names, err := s.listLayers()
	if err != nil {
		return nil, nil, err
	}
	legacy := map[string]*legacyLayer{}
	m := map[string]string{}
	for _, h := range names {
		if _, err := s.getLayer(h); err == nil {
			m[h] = h
			continue
		}
		b, err := os.ReadFile(s.path("layers", h))
		var ll legacyLayer
		if err != nil || json.Unmarshal(b, &ll) != nil || ll.Hash != h {
			return nil, nil, storeErrorf("layer file %s is neither in format 1 nor 2; move it away and run migrate again", s.path("layers", h))
		}
		legacy[h] = &ll
	}
	var convert func(h string, depth int) (string, error)
	convert = func(h string, depth int) (string, error) {
		if nh, ok := m[h]; ok {
			return nh, nil
		}
		ll, ok := legacy[h]
		if !ok {
			return "", storeErrorf("layer %s is referred to but not in the store; cannot migrate", h)
		}
		if depth > len(legacy) {
			return "", storeErrorf("layer %s: parent cycle; cannot migrate", h)
		}
		l := &layer{Kind: layerKind(ll.Kind), ObjectRefs: ll.ObjectRefs, ReadOnly: ll.ReadOnly, TarHash: ll.TarHash}
		if l.TarHash == "" && len(ll.ObjectRefs) == 1 {
			l.TarHash = ll.ObjectRefs[0]
		}
		if ll.Parent != nil && *ll.Parent != "" {
			p, err := convert(*ll.Parent, depth+1)
			if err != nil {
				return "", err
			}
			l.Parent = p
		}
		nh, err := s.putLayer(l)
		if err != nil {
			return "", storeErrorf("converting layer %s: %v", s.path("layers", h), err)
		}
		m[h] = nh
		rep.Layers++
		return nh, nil
	}
	var snaps []legacySnapshot
	for _, h := range slices.Sorted(maps.Keys(legacy)) {
		nh, err := convert(h, 0)
		if err != nil {
			return nil, nil, err
		}
		if legacy[h].Kind == string(layerSnapshot) {
			var order int64
			if fi, err := os.Stat(s.path("layers", h)); err == nil {
				order = fi.ModTime().UnixNano()
			}
			snaps = append(snaps, legacySnapshot{h, legacy[h].TarHash, nh, order})
		}
	}
	sort.SliceStable(snaps, func(i, j int) bool { return snaps[i].order < snaps[j].order })
	return m, snaps, nil
}

func (s *store) migrateMeta(id string, layerMap map[string]string, snaps []legacySnapshot) error {
	file := s.path("metadata", id)
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading %s: %w", file, err)
	}
	var lm legacyMeta
	if err := json.Unmarshal(b, &lm); err != nil {
		return storeErrorf("metadata file %s is neither in format 1 nor 2: %v", file, err)
	}
	state, ok := legacyStates[lm.State]
	if !ok {
		return storeErrorf("metadata file %s: unknown state %q", file, lm.State)
	}
	if lm.EnvID != id {
		return storeErrorf("metadata file %s is for environment %q", file, lm.EnvID)
	}
	mapped := func(h string) (string, error) {
		if h == "" {
			return "", nil
		}
		if nh, ok := layerMap[h]; ok {
			return nh, nil
		}
		return "", storeErrorf("metadata file %s refers to layer %s, which is not in the store; cannot migrate", file, h)
	}
	m := &envMeta{EnvID: lm.EnvID, ShortID: lm.ShortID, State: state, ManifestHash: lm.ManifestHash,
		CreatedAt: lm.CreatedAt, UpdatedAt: lm.UpdatedAt, RefCount: lm.RefCount, DependencyLayers: []string{}, Snapshots: []string{}}
	if lm.Name != nil {
		m.Name = *lm.Name
	}
	if m.BaseLayer, err = mapped(lm.BaseLayer); err != nil {
		return err
	}
	if lm.PolicyLayer != nil {
		if m.PolicyLayer, err = mapped(*lm.PolicyLayer); err != nil {
			return err
		}
	}
	for _, d := range lm.DependencyLayers {
		nd, err := mapped(d)
		if err != nil {
			return err
		}
		m.DependencyLayers = append(m.DependencyLayers, nd)
	}
	for _, sn := range snaps {
		if storeBlake3Hex([]byte("snapshot:"+lm.EnvID+":"+lm.BaseLayer+":"+sn.tarHash)) == sn.oldHash {
			m.Snapshots = append(m.Snapshots, sn.newHash)
		}
	}
	// Not putMeta: the files not converted yet are unreadable to it. The
	// original tool kept names unique. Format 2 keeps every environment's
	// writable layer and work directory in place (verify-store holds it to
	// that): made before the metadata, which marks it converted.
	err = s.checkMetaRefs(m)
	for _, p := range s.envs().env(m.EnvID).kept() {
		if err == nil {
			err = os.MkdirAll(p, 0o700)
		}
	}
	if err == nil {
		err = s.writeMeta(m)
	}
	if err != nil {
		return storeErrorf("converting metadata file %s: %v", file, err)
	}
	return nil
}

// readSmallFile reads a file of a few kilobytes with as few system calls
// as it can (no fstat): list reads a thousand of them.
func readSmallFile(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return buf, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf = buf[:0]
	if cap(buf) == 0 {
		buf = make([]byte, 0, 2048)
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}
