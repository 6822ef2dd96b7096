package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Whose the store's trees are. The layer trees and writable layers under
// env/ hold files owned by the host IDs an environment's IDs map to: the
// user and the subordinate range, or for root the range of planIDMapping.
// store/ids records that mapping; when it changes (root's environments
// used to map to the host's own IDs; an /etc/subuid range can move), the
// trees would show their files as nobody's inside, so every command that
// uses them refuses until 'karapace migrate' moves them to the new IDs.

// idsFile is the record's place under the store root, beside the
// format version.
const idsFile = "store/ids"

// idsRecord is the mapping as the record spells it.
func idsRecord(m idMapping) string {
	var b strings.Builder
	for _, set := range []struct {
		name   string
		ranges []idRange
	}{{"uid", m.uids}, {"gid", m.gids}} {
		b.WriteString(set.name)
		for _, r := range set.ranges {
			fmt.Fprintf(&b, " %d:%d:%d", r.inside, r.outside, r.count)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// parseIDsRecord reads a record back.
func parseIDsRecord(s string) (idMapping, error) {
	var m idMapping
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) != 2 {
		return m, errors.New("expected a uid line and a gid line")
	}
	for i, dst := range []*[]idRange{&m.uids, &m.gids} {
		f := strings.Fields(lines[i])
		if len(f) < 2 || f[0] != []string{"uid", "gid"}[i] {
			return m, fmt.Errorf("line %d: %q", i+1, lines[i])
		}
		for _, r := range f[1:] {
			var in, out, n int
			if _, err := fmt.Sscanf(r, "%d:%d:%d", &in, &out, &n); err != nil || n <= 0 {
				return m, fmt.Errorf("line %d: range %q", i+1, r)
			}
			*dst = append(*dst, idRange{in, out, n})
		}
	}
	return m, nil
}

// legacyIDs is the mapping of a store without a record: root's stores
// were made with IDs 0-65536 as the host's own; anyone else's with the
// mapping they have now (which never depended on karapace's version).
func legacyIDs(now idMapping) idMapping {
	if os.Geteuid() != 0 {
		return now
	}
	ids := []idRange{{0, 0, 1 + subordinateIDs}}
	return idMapping{uids: ids, gids: ids}
}

// storeIDs reads the record of the store at root: the mapping its trees
// were made with, and whether there are trees at all.
func storeIDs(root string, now idMapping) (idMapping, bool, error) {
	data, err := os.ReadFile(filepath.Join(root, idsFile))
	if err == nil {
		m, err := parseIDsRecord(string(data))
		if err != nil {
			return m, true, storeErrorf("%s: %v", filepath.Join(root, idsFile), err)
		}
		return m, true, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return idMapping{}, false, err
	}
	entries, err := os.ReadDir(filepath.Join(root, "env"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return idMapping{}, false, err
	}
	return legacyIDs(now), len(entries) > 0, nil
}

// checkStoreIDs refuses a store whose trees were made with other IDs
// than this user's environments have now, and records the mapping of a
// store that has none.
func checkStoreIDs(root string) error {
	now := planIDMapping()
	was, trees, err := storeIDs(root, now)
	if err != nil {
		return err
	}
	if idsRecord(was) == idsRecord(now) {
		if _, err := os.Stat(filepath.Join(root, idsFile)); err == nil {
			return nil
		}
		if err := os.MkdirAll(filepath.Join(root, "store"), 0o700); err != nil {
			return err
		}
		return writeFileAtomic(filepath.Join(root, idsFile), []byte(idsRecord(now)), 0o600)
	}
	if !trees {
		return writeFileAtomic(filepath.Join(root, idsFile), []byte(idsRecord(now)), 0o600)
	}
	how := "run 'karapace migrate' to give them to the new IDs"
	if os.Geteuid() != 0 {
		how = "restore the old range in /etc/subuid and /etc/subgid, or destroy and rebuild the environments (only root may give files to other IDs)"
	}
	return storeErrorf("the environments in %s were made with host IDs %s, but this machine maps them to %s now; %s",
		root, idsString(was), idsString(now), how)
}

// idsMigration is what migrating a store's IDs did.
type idsMigration struct {
	From        string `json:"from"`
	To          string `json:"to"`
	Files       int    `json:"files_moved"`
	TreesPruned int    `json:"layer_trees_removed"`
}

// migrateStoreIDs gives root's store's trees to the IDs its environments
// map to now: the writable layers' files move to the new range (modes
// and file capabilities kept), the layer trees go (each comes back from
// its object, with the new IDs, when next used), the generated layers and
// overlay work directories are remade. Every step can run again after an
// interruption; the record is written last.
func migrateStoreIDs(root string) (*idsMigration, error) {
	now := planIDMapping()
	was, trees, err := storeIDs(root, now)
	if err != nil || idsRecord(was) == idsRecord(now) || !trees {
		if err == nil {
			err = checkStoreIDs(root)
		}
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, checkStoreIDs(root)
	}
	rep := &idsMigration{From: idsString(was), To: idsString(now)}
	envs := envDirs(filepath.Join(root, "env"))
	entries, err := os.ReadDir(string(envs))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		switch {
		case !e.IsDir():
			continue
		case e.Name() == filepath.Base(envs.trees()):
			trees, err := os.ReadDir(envs.trees())
			if err != nil {
				return nil, err
			}
			for _, t := range trees {
				if err := os.RemoveAll(envs.tree(t.Name())); err != nil {
					return nil, err
				}
				rep.TreesPruned++
			}
		case validStoreHash(e.Name()):
			d := envs.env(e.Name())
			for _, p := range []string{d.work(), string(d.run())} {
				if err := os.RemoveAll(p); err != nil {
					return nil, err
				}
			}
			if err := d.prepare(); err != nil {
				return nil, err
			}
			n, err := shiftTree(d.upper(), was, now)
			rep.Files += n
			if err != nil {
				return nil, err
			}
			if err := now.own(append([]string{string(d)}, d.subdirs()...)...); err != nil {
				return nil, err
			}
		}
	}
	return rep, writeFileAtomic(filepath.Join(root, idsFile), []byte(idsRecord(now)), 0o600)
}

// shiftTree gives every file of dir whose owner the old mapping maps
// from inside to the ID the new mapping gives that same inside ID. IDs
// outside the old mapping are left, so a second run changes nothing.
func shiftTree(dir string, from, to idMapping) (int, error) {
	moved := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return filepath.SkipDir
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		uid, okU := remapID(int(st.Uid), from.uids, to.uids)
		gid, okG := remapID(int(st.Gid), from.gids, to.gids)
		if !okU && !okG {
			return nil
		}
		if !okU {
			uid = int(st.Uid)
		}
		if !okG {
			gid = int(st.Gid)
		}
		// chown drops set-id bits and file capabilities: put them back,
		// the capabilities for the new root (VFS_CAP_REVISION_3 rootid).
		caps := make([]byte, 24)
		n, capErr := unix.Lgetxattr(p, "security.capability", caps)
		if err := unix.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("moving %s to the new IDs: %w", p, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Chmod(p, st.Mode&0o7777); err != nil {
				return fmt.Errorf("restoring the mode of %s: %w", p, err)
			}
		}
		if capErr == nil && n >= 20 {
			v3 := make([]byte, 24)
			copy(v3, caps[:20])
			binary.LittleEndian.PutUint32(v3, 0x03000000|binary.LittleEndian.Uint32(caps)&1) // revision 3, keep the effective flag
			binary.LittleEndian.PutUint32(v3[20:], uint32(to.uids[0].outside))
			if err := unix.Lsetxattr(p, "security.capability", v3, 0); err != nil {
				return fmt.Errorf("restoring the file capabilities of %s: %w", p, err)
			}
		}
		moved++
		return nil
	})
	return moved, err
}

// remapID maps a host ID of one mapping to the host ID the other gives
// the same inside ID; false if the first does not map it.
func remapID(host int, from, to []idRange) (int, bool) {
	for _, r := range from {
		if host >= r.outside && host < r.outside+r.count {
			inside := r.inside + host - r.outside
			for _, t := range to {
				if inside >= t.inside && inside < t.inside+t.count {
					return t.outside + inside - t.inside, true
				}
			}
		}
	}
	return 0, false
}

// idsString is a mapping's record on one line, for messages.
func idsString(m idMapping) string {
	return strings.ReplaceAll(strings.TrimSpace(idsRecord(m)), "\n", ", ")
}
