package main

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
)

// Where environments live on disk: the store's env/ directory. Everything
// that makes, reads or removes what is in it goes through these two types.
//
//	env/<env_id>/          an environment (envDir)
//	env/<env_id>/upper/    its writable layer, the environment's "/" (mode 0755)
//	env/<env_id>/work/     overlayfs's work directory
//	env/<env_id>/merged/   where its root is assembled
//	env/<env_id>/run/      its running instance (instanceDir)
//	env/.layers/<layer>/   a layer unpacked: a lower directory of overlays
//	env/.<kind>-<random>/  an operation's working directory, which the WAL removes if it dies

// envDirs is a store's env/ directory.
type envDirs string

func (s *store) envs() envDirs { return envDirs(filepath.Join(s.root, "env")) }

func (d envDirs) env(id string) envDir     { return envDir(filepath.Join(string(d), id)) }
func (d envDirs) trees() string            { return filepath.Join(string(d), ".layers") }
func (d envDirs) tree(layer string) string { return filepath.Join(d.trees(), layer) }
func (d envDirs) isStaging(name string) bool {
	return len(name) > 1 && name[0] == '.' && name != ".layers"
}

// staging makes a fresh working directory within op, which a rollback
// removes.
func (d envDirs) staging(op *walOp, kind string) (string, error) {
	var b [8]byte
	rand.Read(b[:])
	p := filepath.Join(string(d), "."+kind+"-"+hex.EncodeToString(b[:]))
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return "", err
	}
	if err := op.mkdir(p); err != nil {
		return "", err
	}
	return p, nil
}

// envDir is one environment's directory (also the scratch environment a
// build step runs in).
type envDir string

func (d envDir) upper() string     { return string(d) + "/upper" }
func (d envDir) work() string      { return string(d) + "/work" }
func (d envDir) merged() string    { return string(d) + "/merged" }
func (d envDir) run() instanceDir  { return instanceDir(string(d) + "/run") }
func (d envDir) kept() []string    { return []string{d.upper(), d.work()} } // what the store keeps of it
func (d envDir) String() string    { return string(d) }
func (d envDir) subdirs() []string { return []string{d.upper(), d.work(), d.merged(), string(d.run())} }

// create makes a new environment's directory within op (a rollback
// removes it), with an empty writable layer.
func (d envDir) create(op *walOp) error {
	if err := os.MkdirAll(filepath.Dir(string(d)), 0o700); err != nil {
		return err
	}
	if err := op.mkdir(string(d)); err != nil {
		return err
	}
	return d.prepare()
}

// prepare makes what of the directory is missing: an environment that
// came from an older store, or a scratch one.
func (d envDir) prepare() error {
	for _, sub := range d.subdirs() {
		if err := os.MkdirAll(sub, 0o700); err != nil {
			return err
		}
	}
	// The writable layer's own directory is the environment's "/".
	return os.Chmod(d.upper(), 0o755)
}
