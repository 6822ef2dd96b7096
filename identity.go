package main

import (
	"encoding/hex"

	"lukechampine.com/blake3"
)

// Domain prefixes keep the two identities, and any future one, from ever
// colliding on the same canonical bytes.
const (
	envIDDomain     = "karapace env_id v2\n"
	previewIDDomain = "karapace preliminary id v1\n"
)

// identityDocument is the canonical serialization of the locked fields
// the environment's identity covers. The base image counts by content
// digest, never by its name or URL, so the same bytes give the same
// environment however they were found. Host paths of mounts count as
// written (relative to the manifest), so the identity does not depend on
// where a checkout lives.
func (l *lockFile) identityDocument() []byte {
	pkgs := make([]any, 0, len(l.Packages))
	for _, p := range l.Packages {
		pkgs = append(pkgs, map[string]any{"name": p.Name, "version": p.Version})
	}
	mounts := make([]any, 0, len(l.Mounts))
	for _, m := range l.Mounts {
		mounts = append(mounts, map[string]any{
			"label": m.Label, "host_path": m.Source, "container_path": m.Container, "read_only": m.ReadOnly,
		})
	}
	return canonicalJSON(map[string]any{
		"lock_version":      lockVersion,
		"base_image_digest": l.BaseImageDigest,
		"resolved_packages": pkgs,
		"resolved_apps":     nonNil(l.Apps),
		"runtime_backend":   l.Backend,
		"hardware_gpu":      l.GPU,
		"hardware_audio":    l.Audio,
		"network_isolation": l.NetworkIsolation,
		"mounts":            mounts,
		"cpu_shares":        l.CPUShares,
		"memory_limit_mb":   l.MemoryLimitMB,
	})
}

// computeID returns env_id (64 hex digits of blake3) and short_id (its
// first 12).
func (l *lockFile) computeID() (string, string) {
	id := hashHex([]byte(envIDDomain), l.identityDocument())
	return id, id[:12]
}

// previewID identifies a manifest before resolution, only to find the
// environments built from it; the stored identity is always the lock's.
func (m *manifest) previewID() string {
	return hashHex([]byte(previewIDDomain), m.canonicalJSON())
}

func hashHex(parts ...[]byte) string {
	h := blake3.New(32, nil)
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}
