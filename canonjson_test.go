package main

import (
	"bytes"
	"testing"
)

// The canonical JSON, written by hand, is exactly what encoding/json makes
// of the same values as maps with sorted keys (what identities were first
// defined as), for every character class a string may hold.
func TestCanonicalJSONIsSortedJSON(t *testing.T) {
	odd := "q\"b\\ c\x00\x01\b\f\n\r\t\x1f\x7f <&> é\u2028\u2029\U0001F600 bad\xff\xc3"
	m := &manifest{BaseImage: odd, Packages: []string{"a", odd}, Backend: "namespace", CPUShares: -3, MemoryLimitMB: 1 << 40,
		Mounts: []mount{{Label: "w", Source: ".", Host: "/p/" + odd, Container: "/w", ReadOnly: true}, {Label: "x"}}}
	mounts := []any{}
	for _, mt := range m.Mounts {
		mounts = append(mounts, map[string]any{"label": mt.Label, "source": mt.Source, "host_path": mt.Host,
			"container_path": mt.Container, "read_only": mt.ReadOnly})
	}
	want := sortedJSON(t, map[string]any{
		"manifest_version": 1, "base_image": m.BaseImage, "system_packages": m.Packages, "gui_apps": []string{},
		"hardware_gpu": m.GPU, "hardware_audio": m.Audio, "mounts": mounts, "runtime_backend": m.Backend,
		"network_isolation": m.NetworkIsolation, "cpu_shares": m.CPUShares, "memory_limit_mb": m.MemoryLimitMB,
	})
	if got := m.canonicalJSON(); !bytes.Equal(got, want) {
		t.Errorf("manifest:\n got %s\nwant %s", got, want)
	}

	for _, l := range []*lockFile{
		{BaseImageDigest: odd, Backend: "mock", GPU: true, Apps: []string{odd}, CPUShares: 2, Requested: []string{"a", "b"},
			Mounts: []lockMount{{odd, "s", "/c", false}}, Packages: []lockedPackage{{"a", odd}, {"b", "1"}}},
		{BaseImageDigest: "sha256:00", Backend: "namespace", Audio: true, NetworkIsolation: true, Requested: []string{}},
		{BaseImageDigest: "sha256:00", Backend: "namespace"}, // written before requested_packages
	} {
		mounts := []any{}
		for _, mt := range l.Mounts {
			mounts = append(mounts, map[string]any{"label": mt.Label, "host_path": mt.Source, "container_path": mt.Container, "read_only": mt.ReadOnly})
		}
		pkgs := []any{}
		for _, p := range l.Packages {
			pkgs = append(pkgs, map[string]any{"name": p.Name, "version": p.Version})
		}
		v := map[string]any{
			"lock_version": lockVersion, "base_image_digest": l.BaseImageDigest, "resolved_packages": pkgs,
			"resolved_apps": append([]string{}, l.Apps...), "runtime_backend": l.Backend, "hardware_gpu": l.GPU,
			"hardware_audio": l.Audio, "network_isolation": l.NetworkIsolation, "mounts": mounts,
			"cpu_shares": l.CPUShares, "memory_limit_mb": l.MemoryLimitMB,
		}
		if l.Requested != nil {
			v["requested_packages"] = l.Requested
		}
		if got, want := l.identityDocument(), sortedJSON(t, v); !bytes.Equal(got, want) {
			t.Errorf("identity document:\n got %s\nwant %s", got, want)
		}
	}
}
