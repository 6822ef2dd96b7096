package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// An env_id names what was resolved (its lock). Builds of one lock give
// the same layers (repro.go), but not those of an older karapace or of
// every package manager, and a remote can claim any. Once an environment
// is published, its env_id stands for the layers it was published with,
// and every party holds that binding fixed:
//
//   - the server refuses metadata of an env_id it holds that names other
//     layers (409), so a remote cannot be made to swap them;
//   - push to an OCI registry, which cannot refuse anything itself,
//     checks what the registry holds under the env_id before replacing it;
//   - pull and import refuse an environment whose layers differ from
//     those this store binds its env_id to, and leave the store as it was.
//
// A client cannot know what a remote was sent first. For it, "first
// published" is the first binding it saw, trusted on first use as ssh
// trusts a host key: its own build of the env_id, or its first pull or
// import of it. Its own commits and restores move the binding, for they
// are the user's doing, not a remote's. The binding is kept in
// store/bindings/ENV_ID, rewritten with the metadata whenever the layers
// change, and kept when the environment is destroyed and collected: a
// remote cannot swap the layers of an environment this store once held.
// To trust other layers for an env_id on purpose, remove that file.

// envLayers are an environment's layers, by role.
type envLayers struct {
	EnvID            string   `json:"env_id"`
	BaseLayer        string   `json:"base_layer"`
	DependencyLayers []string `json:"dependency_layers"`
	PolicyLayer      string   `json:"policy_layer,omitempty"`
	Snapshots        []string `json:"snapshots"`
	UpperLayer       string   `json:"upper_layer,omitempty"`
}

func layersOf(m *envMeta) envLayers {
	l := envLayers{EnvID: m.EnvID, BaseLayer: m.BaseLayer, DependencyLayers: slices.Clone(m.DependencyLayers),
		PolicyLayer: m.PolicyLayer, Snapshots: slices.Clone(m.Snapshots), UpperLayer: m.UpperLayer}
	if l.DependencyLayers == nil {
		l.DependencyLayers = []string{}
	}
	if l.Snapshots == nil {
		l.Snapshots = []string{}
	}
	return l
}

// layerDiff says, role by role, how the layers of b differ from those of
// a, each side named as the caller says; "" when they are the same.
func layerDiff(a, b envLayers, aName, bName string) string {
	var out []string
	role := func(name string, x, y []string) {
		x, y = slices.DeleteFunc(x, isEmpty), slices.DeleteFunc(y, isEmpty)
		if slices.Equal(x, y) {
			return
		}
		show := func(l []string) string {
			if len(l) == 0 {
				return "none"
			}
			return strings.Join(l, " ")
		}
		out = append(out, fmt.Sprintf("%s %s (%s) vs %s (%s)", name, show(x), aName, show(y), bName))
	}
	role("base_layer", []string{a.BaseLayer}, []string{b.BaseLayer})
	role("dependency_layers", a.DependencyLayers, b.DependencyLayers)
	role("policy_layer", []string{a.PolicyLayer}, []string{b.PolicyLayer})
	role("snapshots", a.Snapshots, b.Snapshots)
	role("upper_layer", []string{a.UpperLayer}, []string{b.UpperLayer})
	return strings.Join(out, "; ")
}

func isEmpty(s string) bool { return s == "" }

// knownLayers returns the layers this store binds envID to: those of its
// metadata while the environment is here, else those kept from when it
// was; nil when the store never held it.
func (s *store) knownLayers(envID string) (*envLayers, error) {
	m, err := s.getMeta(envID)
	if err == nil {
		l := layersOf(m)
		return &l, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	file := s.path("bindings", envID)
	b, err := readLimited(file, remoteMaxMeta)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, storeErrorf("reading the binding of %s: %v", envID, err)
	}
	var l envLayers
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil || l.EnvID != envID || !l.valid() {
		return nil, storeErrorf("binding file %s is damaged (remove it, and the next pull or import of %s is trusted as a first one)", file, envID)
	}
	return &l, nil
}

func (l *envLayers) valid() bool {
	for _, h := range append(append([]string{l.BaseLayer, l.PolicyLayer, l.UpperLayer}, l.DependencyLayers...), l.Snapshots...) {
		if h != "" && !validStoreHash(h) {
			return false
		}
	}
	return true
}

// recordBinding keeps m's layers as the binding of its env_id; nothing is
// written while they stay the same.
func (s *store) recordBinding(m *envMeta) error {
	b, _ := json.MarshalIndent(layersOf(m), "", "  ")
	b = append(b, '\n')
	file := s.path("bindings", m.EnvID)
	if old, err := readLimited(file, remoteMaxMeta); err == nil && bytes.Equal(old, b) {
		return nil
	}
	if err := os.MkdirAll(s.path("bindings"), 0o700); err != nil {
		return fmt.Errorf("recording the layers of %s: %w", m.ShortID, err)
	}
	_, err := s.writeAtomic(s.path("bindings"), m.EnvID, bytes.NewReader(b))
	return err
}
