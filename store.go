package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"
)

// storeFormatVersion is the layout version this binary reads and writes.
// Format 1 is the original Rust tool's store; 'karapace migrate' converts it.
const storeFormatVersion = 2

// storeDirs are the directories under <root>/store.
var storeDirs = []string{"objects", "layers", "metadata", "staging", "wal"}

const defaultLockWait = 5 * time.Second

// storeBufSize is the I/O buffer for streaming objects: big enough that the
// blake3 hasher works on many chunks at once, small enough to keep memory flat.
const storeBufSize = 256 << 10

var storeBufPool = sync.Pool{New: func() any { b := make([]byte, storeBufSize); return &b }}

// store is a content-addressed store rooted at root (root/store, root/env,
// root/images). Mutating operations must run between lock and unlock.
type store struct {
	root     string
	dir      string // root/store
	lockWait time.Duration

	// inProc serializes lock holders inside this process: flock(2) is per
	// open file description, so goroutines need their own exclusion.
	inProc chan struct{}
	holder atomic.Pointer[storeLock]

	// removeAll removes a file or tree for WAL rollback, gc, destroy and
	// rebuild; nil is removeOwnedTree, which can remove what environments
	// made (tests set it to inject failures).
	removeAll func(string) error
	out       *output // what its operations report (gc, verify, recovery)
}

// defaultStoreRoot is where the store lives when --store is not given.
func defaultStoreRoot(getenv func(string) string) (string, error) {
	if p := getenv("KARAPACE_STORE"); p != "" {
		return filepath.Abs(p)
	}
	// The XDG spec says relative values are invalid and must be ignored.
	if p := getenv("XDG_DATA_HOME"); filepath.IsAbs(p) {
		return filepath.Join(p, "karapace"), nil
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "share", "karapace"), nil
	}
	return "", errors.New("cannot tell where the store is: set KARAPACE_STORE, XDG_DATA_HOME or HOME, or pass --store PATH")
}

// storeRoot is the store root the command line asks for.
func (c *cli) storeRoot() (string, error) {
	if c.storeFlag != "" {
		return filepath.Abs(c.storeFlag)
	}
	return defaultStoreRoot(c.getenv)
}

// storeCreators are the commands that put environments or images into the
// store, and so create it when there is none. Every other command only
// reads or changes what is there: on a missing store it says so
// (errNoStore) and leaves the disk alone.
var storeCreators = map[string]bool{"build": true, "rebuild": true, "pin": true, "pull": true, "import": true}

// errNoStore is what a command that does not create the store gets when
// there is none.
var errNoStore = errors.New("there is no store")

// openStore opens the store the command line asks for, with the lock wait
// taken from the command's environment.
func (c *cli) openStore() (*store, error) {
	root, err := c.storeRoot()
	if err != nil {
		return nil, err
	}
	s, v, err := openStoreAnyVersion(root, c.cmd == nil || storeCreators[c.cmd.name])
	if err == nil {
		err = s.openVersion(v)
	}
	if err != nil {
		return nil, err
	}
	s.lockWait = storeLockWait(c.getenv, c.out)
	s.out = c.out
	return s, nil
}

func storeLockWait(getenv func(string) string, out *output) time.Duration {
	v := getenv("KARAPACE_LOCK_WAIT")
	if v == "" {
		return defaultLockWait
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		out.warnf("ignoring KARAPACE_LOCK_WAIT=%q: not a duration like 5s or 2m", v)
		return defaultLockWait
	}
	return d
}

// openStore opens the store under root, creating a fresh one if there is
// none. It refuses a store of another format version. Leftovers of a
// crashed operation are rolled back when no other process holds the lock.
func openStore(root string) (*store, error) {
	s, v, err := openStoreAnyVersion(root, true)
	if err != nil {
		return nil, err
	}
	if err := s.openVersion(v); err != nil {
		return nil, err
	}
	return s, nil
}

// openVersion refuses a store of another format version and rolls back
// what a crashed operation left.
func (s *store) openVersion(v int) error {
	switch {
	case v > storeFormatVersion:
		return storeErrorf("store %s has format version %d, newer than this karapace supports (%d); upgrade karapace", s.dir, v, storeFormatVersion)
	case v < storeFormatVersion:
		return storeErrorf("store %s has format version %d; run 'karapace migrate' to convert it to format %d", s.dir, v, storeFormatVersion)
	}
	for _, d := range storeDirs {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return fmt.Errorf("opening store: %w", err)
		}
	}
	if s.hasLeftovers() {
		return s.tryRecover()
	}
	return nil
}

// openStoreAnyVersion opens the store, creating it if there is none and
// create is set (else errNoStore), and returns its format version
// without judging it (migrate needs old stores). The root is used by its
// real path: the paths the store records are then the same however it is
// reached.
func openStoreAnyVersion(root string, create bool) (*store, int, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, 0, fmt.Errorf("store root %q: %w", root, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, 0, fmt.Errorf("creating store: %w", err)
		}
		real, err = filepath.EvalSymlinks(abs)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%w at %s (building an environment creates one)", errNoStore, abs)
	}
	if err != nil {
		return nil, 0, storeErrorf("store root %s: %v", abs, err)
	}
	s := &store{root: real, dir: filepath.Join(real, "store"), lockWait: storeLockWait(os.Getenv, nil), inProc: make(chan struct{}, 1)}
	v, err := s.readVersion()
	if errors.Is(err, fs.ErrNotExist) {
		if s.hasData() {
			return nil, 0, storeErrorf("store %s holds data but has no version file; it is damaged or was not made by karapace (restore %s or move the store away)", s.dir, s.path("version"))
		}
		if !create {
			return nil, 0, fmt.Errorf("%w at %s (building an environment creates one)", errNoStore, abs)
		}
		if err := s.create(); err != nil {
			return nil, 0, err
		}
		return s, storeFormatVersion, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return s, v, nil
}

func (s *store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// readVersion returns the format version; fs.ErrNotExist if there is no
// version file.
func (s *store) readVersion() (int, error) {
	b, err := os.ReadFile(s.path("version"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
		return 0, storeErrorf("reading store version: %v", err)
	}
	var v struct {
		FormatVersion *int `json:"format_version"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.FormatVersion == nil || *v.FormatVersion < 1 {
		return 0, storeErrorf("store version file %s is unreadable (%q); the store is damaged: restore it from a backup", s.path("version"), strings.TrimSpace(string(b)))
	}
	return *v.FormatVersion, nil
}

// hasData reports whether the store directory holds anything beyond the
// skeleton a crashed create may have left: empty directories, the lock
// file, temp files in staging.
func (s *store) hasData() bool {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		switch name := e.Name(); {
		case name == ".lock", name == "staging" && e.IsDir():
		case e.IsDir():
			if sub, err := os.ReadDir(filepath.Join(s.dir, name)); err != nil || len(sub) > 0 {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// create lays out a fresh store; the version file comes last so that a
// crash leaves a skeleton that is simply created again.
func (s *store) create() error {
	for _, d := range storeDirs {
		if err := os.MkdirAll(s.path(d), 0o700); err != nil {
			return fmt.Errorf("creating store: %w", err)
		}
	}
	for _, d := range []string{"env", "images"} {
		if err := os.MkdirAll(filepath.Join(s.root, d), 0o700); err != nil {
			return fmt.Errorf("creating store: %w", err)
		}
	}
	// Under the lock: another process's recovery clears staging, where
	// the version file is written first.
	l, err := s.acquire("create", s.lockWait)
	if err != nil {
		return err
	}
	defer l.unlock()
	if _, err := s.readVersion(); err == nil {
		return nil // another process was quicker
	}
	// A new store's trees are made with this user's IDs (see ownership.go).
	if err := writeFileAtomic(filepath.Join(s.root, idsFile), []byte(idsRecord(planIDMapping())), 0o600); err != nil {
		return fmt.Errorf("creating store: %w", err)
	}
	return s.writeVersion(storeFormatVersion)
}

func (s *store) writeVersion(v int) error {
	_, err := s.writeAtomic(s.dir, "version", strings.NewReader(fmt.Sprintf("{\"format_version\": %d}\n", v)))
	return err
}

// writeAtomic writes r to dir/name: a temp file in staging, fsync, rename,
// fsync of dir. Readers see the old file or the whole new one.
func (s *store) writeAtomic(dir, name string, r io.Reader) (n int64, err error) {
	f, err := os.CreateTemp(s.path("staging"), name+".*.tmp")
	if err != nil {
		return 0, fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
		}
	}()
	bp := storeBufPool.Get().(*[]byte)
	n, err = io.CopyBuffer(f, r, *bp)
	storeBufPool.Put(bp)
	if err != nil {
		return n, err
	}
	if err = f.Sync(); err != nil {
		return n, err
	}
	if err = f.Close(); err != nil {
		return n, err
	}
	if err = os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return n, err
	}
	return n, syncDir(dir)
}

// servedMarker, in store/, marks the store of a remote server: it keeps
// environments (their metadata, layers and objects) for others to pull,
// without directories to run them in.
const servedMarker = "served"

// markServed records that the store is a remote server's.
func (s *store) markServed() error {
	if s.served() {
		return nil
	}
	_, err := s.writeAtomic(s.dir, servedMarker, strings.NewReader("this store is a karapace server's: its environments are kept, not run\n"))
	return err
}

func (s *store) served() bool {
	_, err := os.Lstat(s.path(servedMarker))
	return err == nil
}

// validStoreHash reports whether h is a lowercase hex blake3-256 digest.
func validStoreHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func storeBlake3Hex(b []byte) string {
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// objectWriter streams a new object into staging while hashing it; commit
// moves it into objects/ under its hash.
type objectWriter struct {
	s    *store
	f    *os.File
	h    *blake3.Hasher
	n    int64
	err  error
	hash string

	// Writing is a pipeline of two buffers: while the producer (a packer,
	// a download) fills one, a goroutine hashes and writes the other, so
	// hashing costs no time of its own on a second core.
	cur  []byte
	work chan []byte           // full buffers to hash and write
	free chan []byte           // buffers handed back
	done chan error            // the writer goroutine's result, once work is closed
	werr atomic.Pointer[error] // the writer's first error, seen early by Write
}

func (s *store) newObjectWriter() (*objectWriter, error) {
	f, err := os.CreateTemp(s.path("staging"), "object.*.tmp")
	if err != nil {
		return nil, fmt.Errorf("writing object: %w", err)
	}
	w := &objectWriter{s: s, f: f, h: blake3.New(32, nil),
		cur: make([]byte, 0, storeBufSize), work: make(chan []byte, 1), free: make(chan []byte, 1), done: make(chan error, 1)}
	w.free <- make([]byte, 0, storeBufSize)
	go w.writer()
	return w, nil
}

// writer hashes and writes the buffers it is given, until work closes.
func (w *objectWriter) writer() {
	var err error
	for b := range w.work {
		if err == nil {
			w.h.Write(b)
			if _, err = w.f.Write(b); err != nil {
				w.werr.Store(&err)
			}
		}
		w.free <- b[:0]
	}
	w.done <- err
}

// ship hands the current buffer to the writer and takes a free one.
func (w *objectWriter) ship() {
	w.n += int64(len(w.cur))
	w.work <- w.cur
	w.cur = <-w.free
	if e := w.werr.Load(); e != nil && w.err == nil {
		w.err = *e // stop the producer: the disk is full, say
	}
}

func (w *objectWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	total := len(p)
	for len(p) > 0 {
		k := copy(w.cur[len(w.cur):cap(w.cur)], p)
		w.cur = w.cur[:len(w.cur)+k]
		p = p[k:]
		if len(w.cur) == cap(w.cur) {
			if w.ship(); w.err != nil {
				return total - len(p), w.err
			}
		}
	}
	return total, nil
}

func (w *objectWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	var total int64
	for {
		n, err := r.Read(w.cur[len(w.cur):cap(w.cur)])
		w.cur = w.cur[:len(w.cur)+n]
		total += int64(n)
		if len(w.cur) == cap(w.cur) {
			if w.ship(); w.err != nil {
				return total, w.err
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			w.err = err
			return total, err
		}
	}
}

// finish flushes the last buffer and waits for the writer.
func (w *objectWriter) finish() error {
	if w.work == nil {
		return w.err
	}
	if len(w.cur) > 0 {
		w.ship()
	}
	close(w.work)
	err := <-w.done
	w.work = nil
	if w.err == nil {
		w.err = err
	}
	return w.err
}

// abort drops the temp file; harmless after commit.
func (w *objectWriter) abort() {
	w.finish()
	if w.f != nil {
		w.f.Close()
		os.Remove(w.f.Name())
		w.f = nil
	}
}

// sum ends the writing and returns the object's hash; commit may follow.
func (w *objectWriter) sum() (string, error) {
	if w.hash != "" {
		return w.hash, nil
	}
	if err := w.finish(); err != nil {
		return "", fmt.Errorf("writing object: %w", err)
	}
	w.hash = hex.EncodeToString(w.h.Sum(nil))
	return w.hash, nil
}

// commit makes the object visible under its hash. An object that already
// exists is left alone (same name, same bytes).
func (w *objectWriter) commit() (hash string, size int64, err error) {
	defer w.abort()
	if hash, err = w.sum(); err != nil {
		return "", 0, err
	}
	if w.f == nil {
		return "", 0, fmt.Errorf("writing object %s: already committed or aborted", hash)
	}
	if w.s.hasObject(hash) {
		return hash, w.n, nil
	}
	if err := w.f.Sync(); err != nil {
		return "", 0, fmt.Errorf("writing object %s: %w", hash, err)
	}
	if err := w.f.Close(); err != nil {
		return "", 0, fmt.Errorf("writing object %s: %w", hash, err)
	}
	name := w.f.Name()
	w.f = nil
	if err := os.Rename(name, w.s.path("objects", hash)); err != nil {
		os.Remove(name)
		return "", 0, fmt.Errorf("writing object %s: %w", hash, err)
	}
	if err := syncDir(w.s.path("objects")); err != nil {
		return "", 0, fmt.Errorf("writing object %s: %w", hash, err)
	}
	return hash, w.n, nil
}

// putObject stores the bytes of r and returns their hash and size.
func (s *store) putObject(r io.Reader) (hash string, size int64, err error) {
	w, err := s.newObjectWriter()
	if err != nil {
		return "", 0, err
	}
	defer w.abort()
	if _, err := w.ReadFrom(r); err != nil {
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	return w.commit()
}

func (s *store) hasObject(hash string) bool {
	if !validStoreHash(hash) {
		return false
	}
	fi, err := os.Lstat(s.path("objects", hash))
	return err == nil && fi.Mode().IsRegular()
}

func (s *store) objectSize(hash string) (int64, error) {
	if !validStoreHash(hash) {
		return 0, fmt.Errorf("invalid object hash %q", hash)
	}
	fi, err := os.Lstat(s.path("objects", hash))
	if err != nil {
		return 0, fmt.Errorf("object %s: %w", hash, err)
	}
	return fi.Size(), nil
}

// deleteObject removes an object; a missing one is not an error.
func (s *store) deleteObject(hash string) error {
	if !validStoreHash(hash) {
		return fmt.Errorf("invalid object hash %q", hash)
	}
	if err := os.Remove(s.path("objects", hash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting object %s: %w", hash, err)
	}
	return nil
}

// openObject returns a reader of the object that fails at the end, instead
// of returning io.EOF, if the content does not hash to the object's name.
func (s *store) openObject(hash string) (io.ReadCloser, error) {
	if !validStoreHash(hash) {
		return nil, fmt.Errorf("invalid object hash %q", hash)
	}
	f, err := os.Open(s.path("objects", hash))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("object %s is not in the store: %w", hash, err)
		}
		return nil, fmt.Errorf("opening object %s: %w", hash, err)
	}
	// A small object (a lock, a manifest) gets a buffer of its size: one
	// from the pool, fresh in a short-lived process, costs more to zero
	// than the object does to read.
	var buf *[]byte
	if fi, err := f.Stat(); err == nil && fi.Size() < storeBufSize/4 {
		b := make([]byte, fi.Size()+1)
		buf = &b
	} else {
		buf = storeBufPool.Get().(*[]byte)
	}
	return &objectVerifyingReader{f: f, want: hash, h: blake3.New(32, nil), buf: buf}, nil
}

// objectVerifyingReader hashes the file in large blocks (fast for blake3) and
// hands them out in whatever sizes the caller reads.
type objectVerifyingReader struct {
	f      *os.File
	want   string
	h      *blake3.Hasher
	buf    *[]byte
	r, w   int
	eof    bool
	n      int64
	closed bool
}

func (v *objectVerifyingReader) Read(p []byte) (int, error) {
	if v.closed {
		return 0, fmt.Errorf("object %s: read after close", v.want)
	}
	for v.r == v.w {
		if v.eof {
			if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
				return 0, storeErrorf("object %s is corrupt: its %d bytes hash to %s (run 'karapace verify-store')", v.want, v.n, got)
			}
			return 0, io.EOF
		}
		n, err := v.f.Read(*v.buf)
		v.h.Write((*v.buf)[:n])
		v.n += int64(n)
		v.r, v.w = 0, n
		if err == io.EOF {
			v.eof = true
		} else if err != nil {
			return 0, fmt.Errorf("reading object %s: %w", v.want, err)
		}
	}
	n := copy(p, (*v.buf)[v.r:v.w])
	v.r += n
	return n, nil
}

func (v *objectVerifyingReader) Close() error {
	if v.closed {
		return nil
	}
	v.closed = true
	if len(*v.buf) == storeBufSize {
		storeBufPool.Put(v.buf)
	}
	return v.f.Close()
}

// listDir returns the names in one of the store's directories, sorted.
func (s *store) listDir(sub string) ([]string, error) {
	ents, err := os.ReadDir(s.path(sub))
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s.path(sub), err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func (s *store) listObjects() ([]string, error) { return s.listDir("objects") }

// storeLock is a hold on the store (flock on store/.lock): exclusive for
// whatever changes the store, shared for what only reads it while it
// talks to something else (push, export), so that a gc cannot take what
// such a reader is about to read.
type storeLock struct {
	s      *store
	f      *os.File
	op     string
	shared bool
	line   [2]int64 // a shared holder's line in the lock file: from, to
	once   sync.Once
}

// lock takes the store's exclusive lock for op, waiting up to s.lockWait,
// and rolls back what a crashed holder left behind.
func (s *store) lock(op string) (*storeLock, error) {
	l, err := s.acquire(op, s.lockWait)
	if err != nil {
		return nil, err
	}
	if _, err := s.recoverLocked(); err != nil {
		l.unlock()
		return nil, err
	}
	return l, nil
}

// lockShared takes the store's lock shared for op, which only reads the
// store: any number of them hold it at once, and no writer meanwhile.
// Leftovers of a crash stay for the next writer to roll back.
func (s *store) lockShared(op string) (*storeLock, error) {
	return s.acquireMode(op, s.lockWait, true)
}

// acquire takes the store's exclusive lock for op, waiting up to wait.
func (s *store) acquire(op string, wait time.Duration) (*storeLock, error) {
	return s.acquireMode(op, wait, false)
}

func (s *store) acquireMode(op string, wait time.Duration, shared bool) (*storeLock, error) {
	deadline := time.Now().Add(wait)
	select {
	case s.inProc <- struct{}{}:
	default:
		t := time.NewTimer(wait)
		select {
		case s.inProc <- struct{}{}:
			t.Stop()
		case <-t.C:
			holder := "another operation"
			if h := s.holder.Load(); h != nil {
				holder = h.op
			}
			return nil, storeBusyError{storeErrorf("store %s is locked by this process (%s); try again when it finishes", s.dir, holder)}
		}
	}
	f, err := os.OpenFile(s.path(".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		<-s.inProc
		return nil, storeErrorf("opening store lock %s: %v", s.path(".lock"), err)
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EWOULDBLOCK || !time.Now().Before(deadline) {
			f.Close()
			<-s.inProc
			if err != unix.EWOULDBLOCK {
				return nil, storeErrorf("locking store %s: %v", s.path(".lock"), err)
			}
			return nil, storeBusyError{storeErrorf("store %s is locked by %s; try again when it finishes", s.dir, s.lockHolder())}
		}
		time.Sleep(min(20*time.Millisecond, time.Until(deadline)+time.Millisecond))
	}
	// Tell a waiting process who holds the lock, a "pid N (op)" line
	// each. Not synced: it is advice only. A writer is alone; readers
	// append their lines (atomically, O_APPEND) and blank them out when
	// they leave, so that no reader's line is lost to another's.
	line := fmt.Sprintf("pid %d (%s)\n", os.Getpid(), op)
	l := &storeLock{s: s, f: f, op: op, shared: shared}
	if !shared {
		f.Truncate(0)
		f.WriteAt([]byte(line), 0)
	} else if af, err := os.OpenFile(s.path(".lock"), os.O_WRONLY|os.O_APPEND, 0); err == nil {
		if _, err := af.WriteString(line); err == nil {
			if end, err := af.Seek(0, io.SeekCurrent); err == nil {
				l.line = [2]int64{end - int64(len(line)), end}
			}
		}
		af.Close()
	}
	s.holder.Store(l)
	return l, nil
}

// lockHolder describes a process holding the lock, as it wrote itself.
func (s *store) lockHolder() string {
	b, _ := os.ReadFile(s.path(".lock"))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "pid" {
			if _, err := strconv.Atoi(f[1]); err == nil {
				return strings.TrimSpace(line)
			}
		}
	}
	return "another process"
}

// unlock releases the lock; calling it again does nothing.
func (l *storeLock) unlock() {
	l.once.Do(func() {
		l.s.holder.Store(nil)
		if !l.shared {
			l.f.Truncate(0)
		} else if n := l.line[1] - l.line[0]; n > 0 {
			l.f.WriteAt(append(bytes.Repeat([]byte(" "), int(n-1)), '\n'), l.line[0])
		}
		unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
		<-l.s.inProc
	})
}

// locked reports whether this process holds the store lock exclusively,
// as changing the store requires.
func (s *store) locked() bool {
	h := s.holder.Load()
	return h != nil && !h.shared
}

// hasLeftovers reports whether a crashed operation may have left WAL
// entries or temp files.
func (s *store) hasLeftovers() bool {
	for _, d := range []string{"wal", "staging"} {
		f, err := os.Open(s.path(d))
		if err != nil {
			continue
		}
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			return true
		}
	}
	return false
}

// tryRecover rolls back leftovers if no other process holds the lock; a
// live holder's entries are its own work in progress.
func (s *store) tryRecover() error {
	l, err := s.acquire("recover", 0)
	if err != nil {
		return nil
	}
	defer l.unlock()
	_, err = s.recoverLocked()
	return err
}

// recoverLocked replays leftover WAL entries and clears staging. Under the
// lock, every such leftover belongs to a process that died.
func (s *store) recoverLocked() (int, error) {
	n, err := s.recoverWAL()
	if err != nil {
		return n, err
	}
	names, err := s.listDir("staging")
	if err != nil {
		return n, err
	}
	for _, name := range names {
		if err := os.RemoveAll(s.path("staging", name)); err != nil {
			return n, storeErrorf("removing leftover %s: %v", s.path("staging", name), err)
		}
	}
	partials, _ := filepath.Glob(filepath.Join(s.root, "env", "*", "*"+unpackPartialSuffix))
	for _, p := range partials {
		if err := os.RemoveAll(p); err != nil {
			return n, storeErrorf("removing leftover %s: %v", p, err)
		}
	}
	return n, nil
}

func runMigrate(c *cli) error {
	root, err := c.storeRoot()
	if err != nil {
		return err
	}
	s, v, err := openStoreAnyVersion(root, false)
	if err != nil {
		return err
	}
	s.lockWait = storeLockWait(c.getenv, c.out)
	if v > storeFormatVersion {
		return storeErrorf("store %s has format version %d, newer than this karapace supports (%d); upgrade karapace", s.dir, v, storeFormatVersion)
	}
	for _, d := range storeDirs {
		if err := os.MkdirAll(s.path(d), 0o700); err != nil {
			return fmt.Errorf("migrating %s: %w", s.dir, err)
		}
	}
	l, err := s.acquire("migrate", s.lockWait)
	if err != nil {
		return err
	}
	defer l.unlock()
	rep := migrateReport{FromVersion: v, ToVersion: storeFormatVersion, Current: true}
	legacy := false
	if v == storeFormatVersion {
		if legacy, err = s.hasLegacyMeta(); err != nil {
			return err
		}
	}
	if v < storeFormatVersion || legacy {
		if rep, err = s.migrate(v); err != nil {
			return err
		}
		if _, err := s.recoverLocked(); err != nil {
			return err
		}
	}
	if rep.IDs, err = migrateStoreIDs(s.root); err != nil {
		return err
	}
	if rep.IDs != nil {
		rep.Current = false
	}
	if c.json {
		return writeJSON(c.stdout, rep)
	}
	if ids := rep.IDs; ids != nil {
		fmt.Fprintf(c.stdout, "gave the environments of %s to host IDs %s (were %s): %d files moved, %d layer trees to be remade from their layers\n",
			s.root, ids.To, ids.From, ids.Files, ids.TreesPruned)
	}
	if rep.Current {
		fmt.Fprintf(c.stdout, "store %s is already at format %d\n", s.dir, storeFormatVersion)
		return nil
	}
	if rep.FromVersion == rep.ToVersion {
		return nil
	}
	fmt.Fprintf(c.stdout, "migrated store %s from format %d to %d: %s, %s converted\n", s.dir, v, storeFormatVersion,
		gcPlural(rep.Metadata, "environment", "environments"), gcPlural(rep.Layers, "layer", "layers"))
	return nil
}
