package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"
)

// An environment's changes live in its writable layer (upper/). diff
// reads them, commit stores them as a Snapshot layer, restore puts a
// snapshot back as the writable layer.

// change is one path of a diff.
type change struct {
	Path string `json:"path"`
	Kind string `json:"kind"` // added, modified, removed, replaced (an opaque directory)
}

// diffTree lists the changes an overlay upper directory makes to its lower
// directories. It runs inside a user namespace with the full mapping.
func diffTree(upper string, lower []string, w io.Writer) error {
	enc := json.NewEncoder(w)
	inLower := func(rel string) bool {
		for _, l := range lower {
			if _, err := os.Lstat(filepath.Join(l, rel)); err == nil {
				return true
			}
		}
		return false
	}
	return filepath.WalkDir(upper, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == upper {
			return nil
		}
		rel, err := filepath.Rel(upper, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		c := change{Path: "/" + rel}
		switch {
		case isWhiteout(p, &st):
			c.Kind = "removed"
		case d.IsDir() && overlayOpaque(p):
			c.Kind = "replaced"
		case d.IsDir() && inLower(rel):
			return nil // a directory copied up for what changed inside it
		case inLower(rel):
			c.Kind = "modified"
		default:
			c.Kind = "added"
		}
		return enc.Encode(c)
	})
}

// isWhiteout recognizes both forms overlayfs uses for a deleted path.
func isWhiteout(p string, st *unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
		return true
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 {
		_, err := unix.Lgetxattr(p, "user.overlay.whiteout", nil)
		return err == nil
	}
	return false
}

func overlayOpaque(p string) bool {
	buf := make([]byte, 4)
	for _, name := range []string{"user.overlay.opaque", "trusted.overlay.opaque"} {
		if n, err := unix.Lgetxattr(p, name, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

func init() {
	stages["diff"] = stage{func() wireMsg { return &diffJob{} }, diffStage}
}

func (j *diffJob) dirs() []*string {
	d := []*string{&j.Upper}
	for i := range j.Lower {
		d = append(d, &j.Lower[i])
	}
	return d
}

func diffStage(cfg wireMsg, _ []int, _ *output) int {
	job := cfg.(*diffJob)
	w := bufio.NewWriter(os.Stdout)
	err := diffTree(job.Upper, job.Lower, w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, stagePaths.Replace(err.Error()))
		return exitFailure
	}
	return exitOK
}

// diff lists an environment's changes, sorted by path.
func (e *engine) diff(ref string) (*envMeta, []change, error) {
	m, err := e.findEnv(ref)
	if err != nil {
		return nil, nil, err
	}
	lower, err := e.layerTrees(m)
	if err != nil {
		return nil, nil, err
	}
	var out strings.Builder
	var errb strings.Builder
	job := &diffJob{Upper: e.s.envs().env(m.EnvID).upper(), Lower: lower}
	p, err := startStage("diff", job, planIDMapping(), stageOptions{stdout: &out, stderr: &errb})
	if err != nil {
		return nil, nil, err
	}
	if err := p.wait(); err != nil {
		return nil, nil, fmt.Errorf("diff of %s: %s", m.ShortID, strings.TrimSpace(errb.String()))
	}
	var changes []change
	dec := json.NewDecoder(strings.NewReader(out.String()))
	for dec.More() {
		var c change
		if err := dec.Decode(&c); err != nil {
			return nil, nil, err
		}
		changes = append(changes, c)
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Path < changes[j].Path })
	return m, changes, nil
}

// topLayer is the layer a snapshot of the environment sits on.
func topLayer(m *envMeta) string {
	if n := len(m.DependencyLayers); n > 0 {
		return m.DependencyLayers[n-1]
	}
	return m.BaseLayer
}

// commit stores the writable layer as a Snapshot layer. Only the changed
// files are packed, so its cost follows the changes, not the environment.
func (e *engine) commit(ref string) (*envMeta, string, error) {
	// A running environment could change while it is packed.
	m, sl, err := e.stoppedEnv(ref, "commit")
	if err != nil {
		return nil, "", err
	}
	defer sl.unlock()
	op, err := e.s.beginOp("commit", m.EnvID)
	if err != nil {
		return nil, "", err
	}
	h, err := func() (string, error) {
		pr, pw := io.Pipe()
		go func() {
			pw.CloseWithError(treeInNS(treeJob{Op: "pack", Dir: e.s.envs().env(m.EnvID).upper()}, nil, pw))
		}()
		obj, _, err := op.putObject(pr)
		pr.CloseWithError(io.ErrClosedPipe)
		if err != nil {
			return "", fmt.Errorf("packing the writable layer of %s: %w", m.ShortID, err)
		}
		h, err := op.putLayer(&layer{Kind: layerSnapshot, Parent: topLayer(m), ObjectRefs: []string{obj}, ReadOnly: true, TarHash: obj})
		if err != nil {
			return "", err
		}
		if !contains(m.Snapshots, h) {
			m.Snapshots = append(m.Snapshots, h)
		}
		m.UpdatedAt = time.Now().UTC().Format(time.RFC3339)
		return h, op.putMeta(m)
	}()
	if err != nil {
		return nil, "", op.abandon(err)
	}
	return m, h, op.done()
}

// uncommitted refuses to lose the writable layer: it is empty, or it is
// one of the environment's snapshots byte for byte.
func (e *engine) uncommitted(m *envMeta) error {
	upper := e.s.envs().env(m.EnvID).upper()
	if names, err := gcListNames(upper); err == nil && len(names) == 0 {
		return nil
	}
	h := blake3.New(32, nil)
	if err := treeInNS(treeJob{Op: "pack", Dir: upper}, nil, h); err != nil {
		return fmt.Errorf("reading the writable layer of %s: %w", m.ShortID, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	for _, s := range m.Snapshots {
		if l, err := e.s.getLayer(s); err == nil && l.TarHash == sum {
			return nil
		}
	}
	return fmt.Errorf("environment %s has changes no snapshot holds (see 'karapace diff %s'); 'karapace commit %s' keeps them, 'restore --force' drops them", m.ShortID, m.ShortID, m.ShortID)
}

// findSnapshot resolves a snapshot hash or unique prefix, or the number
// 'karapace snapshots' gives it (#2, or 2 when no hash begins with it).
func findSnapshot(m *envMeta, ref string) (string, error) {
	var found []string
	for _, h := range m.Snapshots {
		if strings.HasPrefix(h, ref) {
			found = append(found, h)
		}
	}
	if n, err := strconv.Atoi(strings.TrimPrefix(ref, "#")); err == nil && n >= 1 && n <= len(m.Snapshots) && !strings.HasPrefix(ref, "+") {
		if strings.HasPrefix(ref, "#") || len(found) == 0 {
			return m.Snapshots[n-1], nil
		}
		return "", usageErrorf("snapshot %q is ambiguous: number %d (%s) or a hash beginning with it (%s); write #%d for the number", ref, n, m.Snapshots[n-1][:12], strings.Join(found, ", "), n)
	}
	switch {
	case len(found) == 1 && ref != "":
		return found[0], nil
	case len(found) > 1:
		return "", usageErrorf("snapshot %q is ambiguous: %s", ref, strings.Join(found, ", "))
	}
	return "", fmt.Errorf("environment %s has no snapshot %q (see 'karapace snapshots %s')", m.ShortID, ref, m.ShortID)
}

// The names restore gives an environment's directories while it swaps
// them; verify-store reports any that an operation left behind.
const (
	restoreNewUpper = "upper.new"
	restoreOldUpper = "upper.old"
	restoreOldWork  = "work.old"
)

// restore makes a snapshot the writable layer again. The new layer is
// unpacked beside the old one and swapped in, with a fresh overlay work
// directory (the old one belongs to the old layer), by renames recorded
// in the WAL: a crash leaves either the old writable layer or the new
// one, each with a work directory.
func (e *engine) restore(ref, snap string, force bool) (*envMeta, string, error) {
	m, sl, err := e.stoppedEnv(ref, "restore")
	if err != nil {
		return nil, "", err
	}
	defer sl.unlock()
	switch m.State {
	case stateFrozen:
		return nil, "", fmt.Errorf("environment %s is frozen: its writable layer may not change; 'karapace unfreeze %s' first", m.ShortID, ref)
	case stateArchived:
		return nil, "", fmt.Errorf("environment %s is archived; 'karapace unarchive %s' first", m.ShortID, ref)
	}
	h, err := findSnapshot(m, snap)
	if err != nil {
		return nil, "", err
	}
	if !force {
		if err := e.uncommitted(m); err != nil {
			return nil, "", err
		}
	}
	l, err := e.s.getLayer(h)
	if err != nil {
		return nil, "", err
	}
	dir := e.s.envs().env(m.EnvID)
	upper, fresh, old := dir.upper(), filepath.Join(string(dir), restoreNewUpper), filepath.Join(string(dir), restoreOldUpper)
	work, oldWork := dir.work(), filepath.Join(string(dir), restoreOldWork)
	for _, p := range []string{fresh, old, oldWork} {
		if err := e.s.removeTree(p); err != nil {
			return nil, "", err
		}
	}
	op, err := e.s.beginOp("restore", m.EnvID)
	if err != nil {
		return nil, "", err
	}
	err = func() error {
		if err := op.mkdir(fresh); err != nil {
			return err
		}
		rc, err := e.s.openObject(l.TarHash)
		if err != nil {
			return err
		}
		defer rc.Close()
		job, err := e.unpackJob(fresh)
		if err != nil {
			return err
		}
		if err := treeInNS(job, rc, nil); err != nil {
			return fmt.Errorf("unpacking snapshot %s: %w", h, err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil { // the object's hash is checked at its end
			return err
		}
		if err := op.rename(upper, old); err != nil {
			return err
		}
		if err := op.rename(fresh, upper); err != nil {
			return err
		}
		if _, err := os.Lstat(work); err == nil {
			if err := op.rename(work, oldWork); err != nil {
				return err
			}
		}
		if err := op.mkdir(work); err != nil {
			return err
		}
		m.UpperLayer = h
		m.UpdatedAt = time.Now().UTC().Format(time.RFC3339)
		return op.putMeta(m)
	}()
	if err != nil {
		return nil, "", op.abandon(err)
	}
	if err := op.finish(old, oldWork); err != nil {
		return nil, "", err
	}
	return m, h, nil
}

func cmdDiff(c *cli) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	m, changes, err := e.diff(c.args[0])
	if err != nil {
		return err
	}
	if changes == nil {
		changes = []change{}
	}
	if c.json {
		return writeJSON(c.stdout, map[string]any{"env_id": m.EnvID, "changes": changes})
	}
	marks := map[string]string{"added": "A", "modified": "M", "removed": "D", "replaced": "R"}
	for _, ch := range changes {
		fmt.Fprintf(c.stdout, "%s %s\n", marks[ch.Kind], ch.Path)
	}
	return nil
}

func cmdCommit(c *cli) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	m, h, err := e.commit(c.args[0])
	if err != nil {
		return err
	}
	return c.report(map[string]any{"env_id": m.EnvID, "snapshot": h}, func() string { return h })
}

func cmdSnapshots(c *cli) error {
	e, m, err := c.envArg()
	if err != nil {
		return err
	}
	type snapInfo struct {
		Hash    string `json:"hash"`
		Size    int64  `json:"size"`
		Current bool   `json:"current"`
	}
	snaps := []snapInfo{}
	var rows [][]string
	for i, h := range m.Snapshots {
		var size int64
		if l, err := e.s.getLayer(h); err == nil {
			size, _ = e.s.objectSize(l.TarHash)
		}
		snaps = append(snaps, snapInfo{h, size, h == m.UpperLayer})
		cur := ""
		if h == m.UpperLayer {
			cur = "restored"
		}
		rows = append(rows, []string{fmt.Sprint(i + 1), h, humanBytes(size), cur})
	}
	if c.json {
		return writeJSON(c.stdout, map[string]any{"env_id": m.EnvID, "snapshots": snaps})
	}
	writeTable(c.stdout, []string{"#", "SNAPSHOT", "SIZE", ""}, rows)
	return nil
}

func cmdRestore(c *cli) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	m, h, err := e.restore(c.args[0], c.args[1], c.has("force"))
	if err != nil {
		return err
	}
	return c.report(map[string]any{"env_id": m.EnvID, "snapshot": h}, func() string {
		return "restored " + m.ShortID + " to snapshot " + h[:12]
	})
}
