package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
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
	CreatedAt        string   `json:"created_at"`
	UpdatedAt        string   `json:"updated_at"`
	RefCount         int      `json:"ref_count"`
	Checksum         string   `json:"checksum,omitempty"`
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
	if !validHash(m.EnvID) {
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
		if !validHash(h) {
			return fmt.Errorf("environment %s: invalid hash %q", m.EnvID, h)
		}
	}
	if m.RefCount < 0 {
		return fmt.Errorf("environment %s: negative ref_count %d", m.EnvID, m.RefCount)
	}
	return nil
}

// putMeta validates m and writes it atomically with a fresh checksum. Every
// layer and object it names must already be in the store, so metadata
// never points at nothing. The caller holds the lock and sets the times.
func (s *store) putMeta(m *envMeta) error {
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
	if m.Name != "" {
		all, _ := s.listMeta()
		for _, o := range all {
			if o.Name == m.Name && o.EnvID != m.EnvID {
				return fmt.Errorf("the name %q is already used by environment %s", m.Name, o.ShortID)
			}
		}
	}
	return s.writeMeta(m)
}

// writeMeta writes m with a fresh checksum, without checking references.
func (s *store) writeMeta(m *envMeta) error {
	m.Checksum = hashBytes(m.canonical())
	b, _ := json.MarshalIndent(m, "", "  ")
	_, err := s.writeAtomic(s.path("metadata"), m.EnvID, bytes.NewReader(append(b, '\n')))
	return err
}

// getMeta reads and checks an environment's metadata.
func (s *store) getMeta(envID string) (*envMeta, error) {
	if !validHash(envID) {
		return nil, fmt.Errorf("invalid env_id %q", envID)
	}
	b, err := os.ReadFile(s.path("metadata", envID))
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
	if got := hashBytes(m.canonical()); got != m.Checksum {
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
	var all []*envMeta
	var errs []error
	for _, n := range names {
		if !validHash(n) {
			errs = append(errs, storeErrorf("stray file %s in the metadata directory", s.path("metadata", n)))
			continue
		}
		m, err := s.getMeta(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, m)
	}
	return all, errs
}

// deleteMeta removes an environment's metadata; a missing one is not an
// error.
func (s *store) deleteMeta(envID string) error {
	if !validHash(envID) {
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

// transitionVerb names what a user does to reach a state from another.
func transitionVerb(from, to envState) string {
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
	msg := fmt.Sprintf("cannot %s a %s environment", transitionVerb(m.State, to), m.State)
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
