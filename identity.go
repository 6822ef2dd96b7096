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
// where a checkout lives. requested_packages counts when the lock records
// it; locks written before it was recorded keep the identity they had.
func (l *lockFile) identityDocument() []byte {
	j := canonJSON{b: make([]byte, 0, 512+64*len(l.Packages))}
	entries := []canonEntry{
		{"base_image_digest", func(j *canonJSON) { j.key("base_image_digest").str(l.BaseImageDigest) }},
		{"lock_version", func(j *canonJSON) { j.key("lock_version").int(lockVersion) }},
		{"mounts", func(j *canonJSON) {
			j.key("mounts").open('[')
			for _, m := range l.Mounts {
				j.open('{')
				j.key("container_path").str(m.Container)
				j.key("host_path").str(m.Source)
				j.key("label").str(m.Label)
				j.key("read_only").bool(m.ReadOnly)
				j.close('}')
			}
			j.close(']')
		}},
		{"resolved_packages", func(j *canonJSON) {
			j.key("resolved_packages").open('[')
			for _, p := range l.Packages {
				j.open('{')
				j.key("name").str(p.Name)
				j.key("version").str(p.Version)
				j.close('}')
			}
			j.close(']')
		}},
	}
	if l.Requested != nil {
		entries = append(entries, canonEntry{"requested_packages", func(j *canonJSON) { j.key("requested_packages").strs(l.Requested) }})
	}
	writeCanonObject(&j, l, func(f *envField) string { return f.lock }, entries...)
	return j.b
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

// hashHex is the blake3-256 of the parts one after the other, in hex. They
// are small: one Sum256 of them all is cheaper than a streaming hasher.
func hashHex(parts ...[]byte) string {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}
