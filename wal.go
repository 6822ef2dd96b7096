package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// WAL step operations. Each undoes one forward action and is safe to run
// again (recovery may itself be interrupted).
//
// Paths are recorded relative to the store root: an entry still applies
// when the store is reached by another path, moved, or opened through a
// symlink one time and by its real path another (/home → /var/home).
const (
	walRemovePath   = "remove_path"   // Path: a file or tree under the store root
	walRemoveObject = "remove_object" // Hash
	walRemoveLayer  = "remove_layer"  // Hash
	walRemoveMeta   = "remove_meta"   // EnvID
	walRestoreMeta  = "restore_meta"  // EnvID, Meta: the previous metadata file
	walRename       = "rename"        // move Path back to From
	walSetState     = "set_state"     // EnvID, State
)

// walStep is one rollback step, recorded before the action it undoes.
type walStep struct {
	Op    string `json:"op"`
	Path  string `json:"path,omitempty"`
	From  string `json:"from,omitempty"`
	EnvID string `json:"env_id,omitempty"`
	State string `json:"state,omitempty"`
	Hash  string `json:"hash,omitempty"`
	Meta  string `json:"meta,omitempty"`
}

// walOp is a multi-step operation in progress: store/wal/<id>.json exists
// from beginOp until done, and lists how to undo what was done so far.
type walOp struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	EnvID   string    `json:"env_id,omitempty"`
	Started string    `json:"started"`
	Steps   []walStep `json:"steps"`
	// Committed: the operation is complete; what is left is removing
	// Cleanup (superseded trees), which recovery finishes instead of
	// rolling anything back.
	Committed bool     `json:"committed,omitempty"`
	Cleanup   []string `json:"cleanup,omitempty"`

	s *store
}

// beginOp records the start of an operation. The caller holds the lock:
// recovery treats any entry it finds under the lock as a dead process's.
func (s *store) beginOp(kind, envID string) (*walOp, error) {
	if !s.locked() {
		return nil, fmt.Errorf("starting %s: the store lock is not held", kind)
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	now := time.Now().UTC()
	o := &walOp{
		ID:      now.Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(rnd[:]),
		Kind:    kind,
		EnvID:   envID,
		Started: now.Format(time.RFC3339),
		Steps:   []walStep{},
		s:       s,
	}
	if err := o.write(); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *walOp) file() string { return o.ID + ".json" }

func (o *walOp) write() error {
	b, _ := json.MarshalIndent(o, "", "  ")
	if _, err := o.s.writeAtomic(o.s.path("wal"), o.file(), bytes.NewReader(append(b, '\n'))); err != nil {
		return fmt.Errorf("recording %s in the WAL: %w", o.Kind, err)
	}
	return nil
}

// add persists rollback steps (paths absolute or relative to the root);
// only then may the caller do the action. Several steps at once cost one
// write.
func (o *walOp) add(steps ...walStep) error {
	n := len(o.Steps)
	for _, step := range steps {
		if err := o.s.checkStep(&step); err != nil {
			o.Steps = o.Steps[:n]
			return fmt.Errorf("%s: invalid WAL step: %w", o.Kind, err)
		}
		o.Steps = append(o.Steps, step)
	}
	if err := o.write(); err != nil {
		o.Steps = o.Steps[:n]
		return err
	}
	return nil
}

// saveMeta adds the step that puts envID's metadata back as it is now
// (or removes it if there is none yet), before the caller changes it.
func (o *walOp) saveMeta(envID string) error {
	b, err := os.ReadFile(o.s.path("metadata", envID))
	if errors.Is(err, fs.ErrNotExist) {
		return o.add(walStep{Op: walRemoveMeta, EnvID: envID})
	}
	if err != nil {
		return fmt.Errorf("saving metadata of %s: %w", envID, err)
	}
	if _, err := o.s.parseMeta(envID, b); err != nil {
		return err
	}
	return o.add(walStep{Op: walRestoreMeta, EnvID: envID, Meta: string(b)})
}

// putObject stores r within the operation: an object that was not in the
// store before is removed again if the operation is rolled back.
func (o *walOp) putObject(r io.Reader) (string, int64, error) {
	w, err := o.s.newObjectWriter()
	if err != nil {
		return "", 0, err
	}
	defer w.abort()
	if _, err := w.ReadFrom(r); err != nil {
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	return o.commitObject(w)
}

// commitObject commits w after recording its removal if it is new.
func (o *walOp) commitObject(w *objectWriter) (string, int64, error) {
	h, err := w.sum()
	if err != nil {
		return "", 0, err
	}
	if !o.s.hasObject(h) {
		if err := o.add(walStep{Op: walRemoveObject, Hash: h}); err != nil {
			return "", 0, err
		}
	}
	return w.commit()
}

// packObject packs dir into a new object within the operation.
func (o *walOp) packObject(dir string) (string, treeStats, error) {
	w, err := o.s.newObjectWriter()
	if err != nil {
		return "", treeStats{}, err
	}
	defer w.abort()
	st, err := packLayer(dir, w)
	if err != nil {
		return "", st, err
	}
	h, _, err := o.commitObject(w)
	return h, st, err
}

// putLayer stores l within the operation (removed on rollback if new).
func (o *walOp) putLayer(l *layer) (string, error) {
	h, err := l.prepare()
	if err != nil {
		return "", err
	}
	if !o.s.hasLayer(h) {
		if err := o.add(walStep{Op: walRemoveLayer, Hash: h}); err != nil {
			return "", err
		}
	}
	return o.s.putLayer(l)
}

// putMeta writes m within the operation: rollback puts back what was there.
func (o *walOp) putMeta(m *envMeta) error {
	if err := o.saveMeta(m.EnvID); err != nil {
		return err
	}
	return o.s.putMeta(m)
}

// mkdir creates a directory within the operation (removed on rollback).
func (o *walOp) mkdir(p string) error {
	if err := o.add(walStep{Op: walRemovePath, Path: p}); err != nil {
		return err
	}
	if err := os.Mkdir(p, 0o700); err != nil {
		return fmt.Errorf("%s: %w", o.Kind, err)
	}
	return nil
}

// rename moves from to to within the operation (moved back on rollback);
// to must not exist.
func (o *walOp) rename(from, to string) error {
	if err := o.add(walStep{Op: walRename, Path: to, From: from}); err != nil {
		return err
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("%s: %w", o.Kind, err)
	}
	return syncDir(filepath.Dir(to))
}

// done ends the operation: its entry goes, nothing will be rolled back.
func (o *walOp) done() error {
	if err := os.Remove(o.s.path("wal", o.file())); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("finishing %s: %w", o.Kind, err)
	}
	return syncDir(o.s.path("wal"))
}

// finish is done for an operation that leaves superseded trees behind
// (the old upper directory of a restore): it records the commit point,
// removes the trees and ends the operation. From the commit point on, a
// crash is completed by recovery, not rolled back.
func (o *walOp) finish(cleanup ...string) error {
	rels := make([]string, len(cleanup))
	for i, p := range cleanup {
		rel, err := o.s.walRel(p)
		if err != nil {
			return fmt.Errorf("%s: invalid cleanup path: %w", o.Kind, err)
		}
		rels[i] = rel
	}
	o.Committed, o.Cleanup = true, rels
	if err := o.write(); err != nil {
		return err
	}
	if err := o.s.cleanup(o); err != nil {
		return err
	}
	return o.done()
}

func (s *store) cleanup(o *walOp) error {
	for _, rel := range o.Cleanup {
		p := filepath.Join(s.root, rel)
		if err := s.removeTree(p); err != nil {
			return storeErrorf("finishing %s (WAL entry %s): removing %s: %v", o.Kind, s.path("wal", o.file()), p, err)
		}
	}
	return nil
}

// abandon rolls the operation back after err and returns err, with the
// rollback's own failure when it had one (its entry then stays, for the
// next open to replay).
func (o *walOp) abandon(err error) error {
	if rerr := o.rollback(); rerr != nil {
		return fmt.Errorf("%v (and rolling back: %v)", err, rerr)
	}
	return err
}

// rollback undoes the operation now (for a failure the caller noticed)
// and removes its entry.
func (o *walOp) rollback() error {
	if err := o.s.replay(o); err != nil {
		return err
	}
	return o.done()
}

// checkStep validates a step before it is recorded or replayed and puts
// its paths in the root-relative form: a path must name something a
// rollback may remove, strictly under the root.
func (s *store) checkStep(st *walStep) error {
	var err error
	switch st.Op {
	case walRemovePath:
		st.Path, err = s.walRel(st.Path)
		return err
	case walRename:
		if st.Path, err = s.walRel(st.Path); err != nil {
			return err
		}
		st.From, err = s.walRel(st.From)
		return err
	case walRemoveObject, walRemoveLayer:
		if !validStoreHash(st.Hash) {
			return fmt.Errorf("%s: invalid hash %q", st.Op, st.Hash)
		}
	case walRemoveMeta:
		if !validStoreHash(st.EnvID) {
			return fmt.Errorf("%s: invalid env_id %q", st.Op, st.EnvID)
		}
	case walRestoreMeta:
		if !validStoreHash(st.EnvID) {
			return fmt.Errorf("%s: invalid env_id %q", st.Op, st.EnvID)
		}
		if _, err := s.parseMeta(st.EnvID, []byte(st.Meta)); err != nil {
			return fmt.Errorf("%s: saved metadata: %w", st.Op, err)
		}
	case walSetState:
		if !validStoreHash(st.EnvID) || !envState(st.State).valid() {
			return fmt.Errorf("%s: invalid env_id %q or state %q", st.Op, st.EnvID, st.State)
		}
	default:
		return fmt.Errorf("unknown operation %q", st.Op)
	}
	return nil
}

// walRel returns p, absolute or relative to the root, as the WAL records
// it: relative, under env/, images/ or store/staging/, never one of the
// store's own directories, and not led out of the root by a symlink.
func (s *store) walRel(p string) (string, error) {
	if filepath.Clean(p) != p {
		return "", fmt.Errorf("path %q is not clean", p)
	}
	rel := p
	if filepath.IsAbs(p) {
		var ok bool
		if rel, ok = relBeneath(s.root, p); !ok {
			// Entries of older versions hold absolute paths, of the root
			// as it was opened then: its real path may be ours.
			if dir, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
				rel, ok = relBeneath(s.root, filepath.Join(dir, filepath.Base(p)))
			}
			if !ok {
				return "", fmt.Errorf("path %q is outside the store root %s", p, s.root)
			}
		}
	}
	parts := strings.Split(rel, "/")
	switch {
	case rel == ".." || strings.HasPrefix(rel, "../"):
		return "", fmt.Errorf("path %q is outside the store root %s", p, s.root)
	case len(parts) >= 2 && (parts[0] == "env" || parts[0] == "images"):
	case len(parts) >= 3 && parts[0] == "store" && parts[1] == "staging":
	default:
		return "", fmt.Errorf("path %q is not one a rollback may touch", p)
	}
	if realDir, err := filepath.EvalSymlinks(filepath.Dir(filepath.Join(s.root, rel))); err == nil {
		if _, ok := relBeneath(s.root, realDir); !ok {
			return "", fmt.Errorf("path %q leads outside the store root through a symlink", p)
		}
	}
	return rel, nil
}

// relBeneath returns p relative to dir when p is strictly beneath it.
func relBeneath(dir, p string) (string, bool) {
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return rel, true
}

// replay runs an operation's steps backwards.
func (s *store) replay(o *walOp) error {
	for i := len(o.Steps) - 1; i >= 0; i-- {
		st := o.Steps[i]
		if err := s.undo(st); err != nil {
			return storeErrorf("rolling back %s (WAL entry %s), step %d (%s): %v", o.Kind, s.path("wal", o.file()), i+1, st.Op, err)
		}
	}
	return nil
}

func (s *store) undo(st walStep) error {
	switch st.Op {
	case walRemovePath:
		return s.removeTree(filepath.Join(s.root, st.Path))
	case walRename:
		to, from := filepath.Join(s.root, st.Path), filepath.Join(s.root, st.From)
		if _, err := os.Lstat(to); errors.Is(err, fs.ErrNotExist) {
			return nil // never done, or already undone
		}
		if _, err := os.Lstat(from); err == nil {
			return fmt.Errorf("cannot move %s back: %s exists", to, from)
		}
		if err := os.Rename(to, from); err != nil {
			return err
		}
		return syncDir(filepath.Dir(from))
	case walRemoveObject:
		return s.deleteObject(st.Hash)
	case walRemoveLayer:
		return s.deleteLayer(st.Hash)
	case walRemoveMeta:
		return s.deleteMeta(st.EnvID)
	case walRestoreMeta:
		_, err := s.writeAtomic(s.path("metadata"), st.EnvID, strings.NewReader(st.Meta))
		return err
	case walSetState:
		m, err := s.getMeta(st.EnvID)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		m.State = envState(st.State)
		return s.writeMeta(m)
	}
	return fmt.Errorf("unknown operation %q", st.Op)
}

// removeTree removes a file or tree with the store's remover.
func (s *store) removeTree(p string) error {
	if s.removeAll == nil {
		return removeOwnedTree(p)
	}
	return s.removeAll(p)
}

// recoverWAL rolls back every leftover entry, newest first, and returns
// how many it handled. A corrupt entry is reported and removed.
func (s *store) recoverWAL() (int, error) {
	names, err := s.listDir("wal")
	if err != nil {
		return 0, err
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	n := 0
	for _, name := range names {
		file := s.path("wal", name)
		o, err := s.readWAL(file)
		if err != nil {
			s.out.warnf("removing corrupt WAL entry %s: %v", file, err)
			if err := os.RemoveAll(file); err != nil {
				return n, storeErrorf("removing corrupt WAL entry %s: %v", file, err)
			}
			n++
			continue
		}
		if o.Committed {
			err = s.cleanup(o)
		} else {
			err = s.replay(o)
		}
		if err != nil {
			return n, err
		}
		if err := os.Remove(file); err != nil {
			return n, storeErrorf("removing WAL entry %s: %v", file, err)
		}
		if o.Committed {
			s.out.infof("finished an interrupted %s (WAL entry %s)", o.Kind, name)
		} else {
			s.out.infof("rolled back an interrupted %s (WAL entry %s)", o.Kind, name)
		}
		n++
	}
	if n > 0 {
		if err := syncDir(s.path("wal")); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (s *store) readWAL(file string) (*walOp, error) {
	if !strings.HasSuffix(file, ".json") {
		return nil, errors.New("not a WAL entry name")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var o walOp
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return nil, err
	}
	if o.ID+".json" != filepath.Base(file) || o.Kind == "" {
		return nil, errors.New("entry does not match its file name")
	}
	for i := range o.Steps {
		if err := s.checkStep(&o.Steps[i]); err != nil {
			return nil, fmt.Errorf("step %d: %w", i+1, err)
		}
	}
	for i, p := range o.Cleanup {
		rel, err := s.walRel(p)
		if err != nil {
			return nil, fmt.Errorf("cleanup: %w", err)
		}
		o.Cleanup[i] = rel
	}
	o.s = s
	return &o, nil
}
