package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type layerKind string

const (
	layerBase       layerKind = "Base"
	layerDependency layerKind = "Dependency"
	layerPolicy     layerKind = "Policy"
	layerSnapshot   layerKind = "Snapshot"
)

// layer is a layer manifest, store/layers/<hash>. Its hash is the blake3
// of its canonical JSON without the hash field.
type layer struct {
	Hash       string    `json:"hash,omitempty"`
	Kind       layerKind `json:"kind"`
	Parent     string    `json:"parent,omitempty"`
	ObjectRefs []string  `json:"object_refs"`
	ReadOnly   bool      `json:"read_only"`
	TarHash    string    `json:"tar_hash"`
}

// maxLayerFile bounds what getLayer reads: a manifest is a list of hashes.
const maxLayerFile = 16 << 20

func (l *layer) check() error {
	switch l.Kind {
	case layerBase, layerDependency, layerPolicy, layerSnapshot:
	default:
		return fmt.Errorf("layer: unknown kind %q", l.Kind)
	}
	if !validStoreHash(l.TarHash) {
		return fmt.Errorf("layer: invalid tar_hash %q", l.TarHash)
	}
	if l.Parent != "" && !validStoreHash(l.Parent) {
		return fmt.Errorf("layer: invalid parent %q", l.Parent)
	}
	for _, h := range l.ObjectRefs {
		if !validStoreHash(h) {
			return fmt.Errorf("layer: invalid object reference %q", h)
		}
	}
	if !slices.Contains(l.ObjectRefs, l.TarHash) {
		return fmt.Errorf("layer: object_refs does not include tar_hash %s", l.TarHash)
	}
	return nil
}

// canonical is the JSON the layer hash covers.
func (l *layer) canonical() []byte {
	c := *l
	c.Hash = ""
	b, _ := json.Marshal(&c) // strings and a bool only: cannot fail
	return b
}

// fileBytes is the exact content of the layer's file.
func (l *layer) fileBytes() []byte {
	b, _ := json.Marshal(l)
	return append(b, '\n')
}

// putLayer stores l under the hash of its canonical form, which it sets in
// l.Hash. Its objects and parent must already be in the store.
func (s *store) putLayer(l *layer) (string, error) {
	if _, err := l.prepare(); err != nil {
		return "", err
	}
	for _, h := range l.ObjectRefs {
		if !s.hasObject(h) {
			return "", fmt.Errorf("layer refers to object %s, which is not in the store", h)
		}
	}
	if l.Parent != "" && !s.hasLayer(l.Parent) {
		return "", fmt.Errorf("layer refers to parent layer %s, which is not in the store", l.Parent)
	}
	if s.hasLayer(l.Hash) {
		return l.Hash, nil
	}
	if _, err := s.writeAtomic(s.path("layers"), l.Hash, bytes.NewReader(l.fileBytes())); err != nil {
		return "", err
	}
	return l.Hash, nil
}

// prepare normalizes l (object_refs sorted, deduplicated, with tar_hash),
// checks it and sets its hash.
func (l *layer) prepare() (string, error) {
	refs := append([]string{l.TarHash}, l.ObjectRefs...)
	sort.Strings(refs)
	l.ObjectRefs = slices.Compact(refs)
	if err := l.check(); err != nil {
		return "", err
	}
	l.Hash = storeBlake3Hex(l.canonical())
	return l.Hash, nil
}

// getLayer reads a layer manifest and checks that its file is canonical and
// named by its hash.
func (s *store) getLayer(hash string) (*layer, error) {
	if !validStoreHash(hash) {
		return nil, fmt.Errorf("invalid layer hash %q", hash)
	}
	file := s.path("layers", hash)
	f, err := os.Open(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("layer %s is not in the store: %w", hash, err)
		}
		return nil, fmt.Errorf("reading layer %s: %w", hash, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLayerFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading layer %s: %w", hash, err)
	}
	l, err := parseLayer(hash, b)
	if err != nil {
		return nil, storeErrorf("layer file %s is corrupt: %v", file, err)
	}
	return l, nil
}

// parseLayer checks that b is exactly the canonical file of the layer
// named hash (read from the store, or received from a remote).
func parseLayer(hash string, b []byte) (*layer, error) {
	if len(b) > maxLayerFile {
		return nil, fmt.Errorf("larger than %d bytes", maxLayerFile)
	}
	var l layer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, err
	}
	if err := l.check(); err != nil {
		return nil, err
	}
	if got := storeBlake3Hex(l.canonical()); got != hash || l.Hash != hash {
		return nil, fmt.Errorf("its content hashes to %s", got)
	}
	if !bytes.Equal(b, l.fileBytes()) {
		return nil, errors.New("not in canonical form")
	}
	return &l, nil
}

func (s *store) hasLayer(hash string) bool {
	if !validStoreHash(hash) {
		return false
	}
	fi, err := os.Lstat(s.path("layers", hash))
	return err == nil && fi.Mode().IsRegular()
}

// deleteLayer removes a layer manifest (not its objects); a missing one is
// not an error.
func (s *store) deleteLayer(hash string) error {
	if !validStoreHash(hash) {
		return fmt.Errorf("invalid layer hash %q", hash)
	}
	if err := os.Remove(s.path("layers", hash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting layer %s: %w", hash, err)
	}
	return nil
}

func (s *store) listLayers() ([]string, error) { return s.listDir("layers") }

// Overlay's markers, in the tar stream (OCI image spec style) and on disk.
const (
	layerWhiteoutPrefix = ".wh."
	layerOpaqueMarker   = ".wh..wh..opq"
)

// treeStats counts what packLayer wrote or unpackLayer created, and what
// they left out or could not set.
type treeStats struct {
	Entries        int   `json:"entries"`
	Files          int   `json:"files"`
	Dirs           int   `json:"dirs"`
	Symlinks       int   `json:"symlinks"`
	Hardlinks      int   `json:"hardlinks"`
	Fifos          int   `json:"fifos"`
	Whiteouts      int   `json:"whiteouts"`
	Opaques        int   `json:"opaques"`
	Bytes          int64 `json:"bytes"`
	SkippedDevices int   `json:"skipped_devices"`
	SkippedSockets int   `json:"skipped_sockets"`
	SkippedXattrs  int   `json:"skipped_xattrs"`
}

type packer struct {
	tw    *tar.Writer
	clamp int64                // the latest time an entry may have (see packLayerClamped)
	links map[[2]uint64]string // dev, ino of multiply linked files → first name
	st    treeStats
	buf   []byte
	xbuf  []byte
}

var layerEpoch = time.Unix(0, 0)

// packLayer writes the tree under dir to w as a deterministic tar stream:
// depth first with each directory's names sorted bytewise, times 0 (see
// packLayerClamped),
// numeric owners without names, permission bits with setuid, setgid and
// sticky, symlinks, hardlinks (to the first name in stream order), FIFOs,
// the xattrs security.capability and user.* (PAX SCHILY.xattr.*), and
// overlay whiteouts and opaque directories as OCI-style ".wh." files.
// Device nodes (the runtime mounts its own /dev), sockets and other xattrs
// are left out and counted. The root directory is the entry "./".
func packLayer(dir string, w io.Writer) (treeStats, error) { return packLayerClamped(dir, w, 0) }

// packLayerClamped is packLayer with each entry's time its modification
// time in whole seconds, but no later than clamp (seconds since 1970) nor
// before 1970: a build's files keep the times their packages gave them,
// and what the build made gets clamp, whenever it ran. With clamp 0 every
// time is 0.
func packLayerClamped(dir string, w io.Writer, clamp int64) (treeStats, error) {
	p := &packer{tw: tar.NewWriter(w), links: map[[2]uint64]string{}, clamp: clamp}
	bp := storeBufPool.Get().(*[]byte)
	defer storeBufPool.Put(bp)
	p.buf = *bp
	p.xbuf = make([]byte, 4096)
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return p.st, fmt.Errorf("packing %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return p.st, fmt.Errorf("packing %s: not a directory", dir)
	}
	if err := p.walk(dir, "", &st); err != nil {
		return p.st, err
	}
	if err := p.tw.Close(); err != nil {
		return p.st, fmt.Errorf("packing %s: %w", dir, err)
	}
	return p.st, nil
}

func (p *packer) header(name string, st *unix.Stat_t, typ byte) *tar.Header {
	t := layerEpoch
	if sec := min(st.Mtim.Sec, p.clamp); sec > 0 {
		t = time.Unix(sec, 0)
	}
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     int64(st.Mode & 0o7777),
		Uid:      int(st.Uid),
		Gid:      int(st.Gid),
		ModTime:  t,
		Format:   tar.FormatPAX,
	}
}

// marker is the empty file that stands for a whiteout or an opaque dir.
func layerMarker(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: layerEpoch, Format: tar.FormatPAX}
}

func (p *packer) write(hdr *tar.Header, full string) error {
	if err := p.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("packing %s: %w", full, err)
	}
	p.st.Entries++
	return nil
}

func (p *packer) walk(full, rel string, st *unix.Stat_t) error {
	name := rel
	base := filepath.Base(rel)
	if rel != "" && strings.HasPrefix(base, layerWhiteoutPrefix) {
		return fmt.Errorf("packing %s: names starting with %q are reserved for whiteouts", full, layerWhiteoutPrefix)
	}
	xattrs, opaque, whiteout, err := p.xattrs(full, st)
	if err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if rel == "" {
			name = "./"
		} else {
			name += "/"
		}
		hdr := p.header(name, st, tar.TypeDir)
		hdr.PAXRecords = xattrs
		if err := p.write(hdr, full); err != nil {
			return err
		}
		p.st.Dirs++
		if opaque {
			if err := p.write(layerMarker(path.Join(rel, layerOpaqueMarker)), full); err != nil {
				return err
			}
			p.st.Opaques++
		}
		return p.walkDir(full, rel)
	case unix.S_IFREG:
		if whiteout {
			return p.whiteout(full, rel)
		}
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := p.links[key]; ok {
				hdr := p.header(name, st, tar.TypeLink)
				hdr.Linkname = first
				p.st.Hardlinks++
				return p.write(hdr, full)
			}
			p.links[key] = rel
		}
		hdr := p.header(name, st, tar.TypeReg)
		hdr.Size = st.Size
		hdr.PAXRecords = xattrs
		if err := p.write(hdr, full); err != nil {
			return err
		}
		p.st.Files++
		return p.copyFile(full, st.Size)
	case unix.S_IFLNK:
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("packing %s: %w", full, err)
		}
		hdr := p.header(name, st, tar.TypeSymlink)
		hdr.Linkname = target
		p.st.Symlinks++
		return p.write(hdr, full)
	case unix.S_IFIFO:
		hdr := p.header(name, st, tar.TypeFifo)
		hdr.PAXRecords = xattrs
		p.st.Fifos++
		return p.write(hdr, full)
	case unix.S_IFCHR:
		if st.Rdev == 0 {
			return p.whiteout(full, rel)
		}
		p.st.SkippedDevices++
	case unix.S_IFBLK:
		p.st.SkippedDevices++
	case unix.S_IFSOCK:
		p.st.SkippedSockets++
	}
	return nil
}

func (p *packer) whiteout(full, rel string) error {
	dir, base := filepath.Split(rel)
	p.st.Whiteouts++
	return p.write(layerMarker(dir+layerWhiteoutPrefix+base), full)
}

func (p *packer) walkDir(full, rel string) error {
	d, err := os.Open(full)
	if err != nil {
		return fmt.Errorf("packing %s: %w", full, err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("packing %s: %w", full, err)
	}
	sort.Strings(names)
	for _, n := range names {
		childFull := filepath.Join(full, n)
		childRel := n
		if rel != "" {
			childRel = rel + "/" + n
		}
		var st unix.Stat_t
		if err := unix.Lstat(childFull, &st); err != nil {
			return fmt.Errorf("packing %s: %w", childFull, err)
		}
		if err := p.walk(childFull, childRel, &st); err != nil {
			return err
		}
	}
	return nil
}

// copyFile appends the file's content to the stream. Raw syscalls: an
// os.File per file costs a poller registration and a finalizer.
func (p *packer) copyFile(full string, size int64) error {
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packing %s: %w", full, err)
	}
	defer unix.Close(fd)
	left := size
	for left > 0 {
		n, err := unix.Read(fd, p.buf[:min(int64(len(p.buf)), left)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("packing %s: %w", full, err)
		}
		if n == 0 {
			return fmt.Errorf("packing %s: file shrank while being packed", full)
		}
		if _, err := p.tw.Write(p.buf[:n]); err != nil {
			return fmt.Errorf("packing %s: %w", full, err)
		}
		left -= int64(n)
		p.st.Bytes += int64(n)
	}
	return nil
}

// layerKeepXattr says whether an xattr belongs in a layer. Overlay's own xattrs
// are turned into markers, never copied.
func layerKeepXattr(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "user.overlay.")
}

func layerOverlayXattr(name string) bool {
	return strings.HasPrefix(name, "user.overlay.") || strings.HasPrefix(name, "trusted.overlay.")
}

// xattrs returns the PAX records for the xattrs to keep and whether the
// entry is an opaque directory or an xattr-style whiteout.
func (p *packer) xattrs(full string, st *unix.Stat_t) (recs map[string]string, opaque, whiteout bool, err error) {
	names, err := p.listXattrs(full)
	if err != nil || len(names) == 0 {
		return nil, false, false, err
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	isReg := st.Mode&unix.S_IFMT == unix.S_IFREG
	for _, n := range names {
		switch {
		case layerOverlayXattr(n):
			suffix := n[strings.Index(n, ".overlay.")+len(".overlay."):]
			if isDir && suffix == "opaque" {
				v, err := p.getXattr(full, n)
				if err != nil {
					return nil, false, false, err
				}
				opaque = opaque || string(v) == "y"
			}
			if isReg && st.Size == 0 && suffix == "whiteout" {
				whiteout = true
			}
		case layerKeepXattr(n):
			v, err := p.getXattr(full, n)
			if err != nil {
				return nil, false, false, err
			}
			if recs == nil {
				recs = map[string]string{}
			}
			recs["SCHILY.xattr."+n] = string(v)
		default:
			p.st.SkippedXattrs++
		}
	}
	return recs, opaque, whiteout, nil
}

func (p *packer) listXattrs(full string) ([]string, error) {
	for {
		n, err := unix.Llistxattr(full, p.xbuf)
		if err == unix.ERANGE {
			sz, err := unix.Llistxattr(full, nil)
			if err != nil {
				return nil, fmt.Errorf("packing %s: listing xattrs: %w", full, err)
			}
			p.xbuf = make([]byte, sz+256)
			continue
		}
		if err == unix.ENOTSUP {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("packing %s: listing xattrs: %w", full, err)
		}
		var names []string
		for _, s := range bytes.Split(p.xbuf[:n], []byte{0}) {
			if len(s) > 0 {
				names = append(names, string(s))
			}
		}
		return names, nil
	}
}

func (p *packer) getXattr(full, name string) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(full, name, p.xbuf)
		if err == unix.ERANGE {
			sz, err := unix.Lgetxattr(full, name, nil)
			if err != nil {
				return nil, fmt.Errorf("packing %s: reading xattr %s: %w", full, name, err)
			}
			p.xbuf = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("packing %s: reading xattr %s: %w", full, name, err)
		}
		return slices.Clone(p.xbuf[:n]), nil
	}
}

// unpackOptions say how unpackLayer treats whiteouts and owners.
type unpackOptions struct {
	// overlay: dir is an overlay layer directory (userxattr semantics), so
	// whiteouts become 0:0 character devices (or, where mknod is refused,
	// empty files with user.overlay.whiteout) and opaque markers set
	// user.overlay.opaque=y. Otherwise they are applied: the named path is
	// deleted, the directory emptied.
	overlay bool
	// chown: give entries the stream's numeric owners (the caller is root,
	// or inside a user namespace with the full mapping).
	chown bool
	// skipDevices: leave out device nodes instead of refusing them. Base
	// images carry a /dev the runtime replaces anyway.
	skipDevices bool
	// limits: the bytes of file content and the entries the stream may
	// create at most (TreeSize, TreeEntries; 0 for no bound).
	limits inputLimits
}

// limits are an unpack job's bounds, the defaults where it sets none.
func (j *treeJob) limits() inputLimits {
	l := defaultLimits()
	if j.MaxSize > 0 {
		l.TreeSize = int64(j.MaxSize)
	}
	if j.MaxEntries > 0 {
		l.TreeEntries = int64(j.MaxEntries)
	}
	l.file = j.Config
	return l
}

// Limits on what a stream may ask for.
const (
	unpackMaxPath         = 4095
	unpackMaxDeferredDirs = 1 << 16
)

// unpackResolve keeps every lookup below the target directory and refuses
// symlinks on the way: a stream cannot write through a link it planted.
const unpackResolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

type unpackDeferredDir struct {
	rel  string
	mode uint32
}

type unpacker struct {
	root int
	opts unpackOptions
	st   treeStats
	buf  []byte

	// The parent directory of the previous entry, kept open because
	// streams come sorted. Dropped whenever anything is removed.
	parentRel string
	parentFd  int

	// regular holds (hashes of) the names of regular files unpacked so
	// far, the only valid hardlink targets: 8 bytes a file, not a path.
	regular  map[uint64]struct{}
	seed     maphash.Seed
	deferred []unpackDeferredDir
}

// unpackLayer extracts a tar stream into dir, which must exist. It never
// creates, changes or removes anything outside dir, whatever the stream
// holds; an entry it refuses stops it with an error naming the entry.
func unpackLayer(r io.Reader, dir string, opts unpackOptions) (treeStats, error) {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return treeStats{}, fmt.Errorf("unpacking into %s: %w", dir, err)
	}
	bp := storeBufPool.Get().(*[]byte)
	u := &unpacker{root: root, opts: opts, buf: *bp, parentFd: -1, regular: map[uint64]struct{}{}, seed: maphash.MakeSeed()}
	defer func() {
		u.dropParent()
		unix.Close(root)
		storeBufPool.Put(bp)
	}()
	tr := tar.NewReader(r)
	last := "(start of stream)"
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if hdr != nil {
				return u.st, fmt.Errorf("unpacking into %s: entry %q: %w", dir, hdr.Name, err)
			}
			return u.st, fmt.Errorf("unpacking into %s: reading the entry after %q: %w", dir, last, err)
		}
		last = hdr.Name
		if err := u.entry(hdr, tr); err != nil {
			return u.st, fmt.Errorf("unpacking into %s: entry %q: %w", dir, hdr.Name, err)
		}
	}
	for i := len(u.deferred) - 1; i >= 0; i-- {
		d := u.deferred[i]
		// A later entry may have removed or replaced the directory.
		if err := u.chmodPath(d.rel, d.mode); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.ELOOP) {
			return u.st, fmt.Errorf("unpacking into %s: setting the mode of %q: %w", dir, d.rel, err)
		}
	}
	return u.st, nil
}

// unpackCleanName turns an entry name into a relative path with no ".",
// ".." or empty components; "" is the target directory itself.
func unpackCleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("name contains a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute name")
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", errors.New(`name contains a ".." component`)
		}
		if len(p) > 255 {
			return "", errors.New("a name component is longer than 255 bytes")
		}
		parts = append(parts, p)
	}
	clean := strings.Join(parts, "/")
	if len(clean) > unpackMaxPath {
		return "", fmt.Errorf("name longer than %d bytes", unpackMaxPath)
	}
	return clean, nil
}

func (u *unpacker) entry(hdr *tar.Header, tr *tar.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	rel, err := unpackCleanName(hdr.Name)
	if err != nil {
		return err
	}
	// A sparse map lets a few bytes of stream stand for terabytes of holes.
	if hdr.Typeflag == tar.TypeGNUSparse {
		return errors.New("sparse files are not supported")
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return errors.New("sparse files are not supported")
		}
	}
	u.st.Entries++
	if max := u.opts.limits.TreeEntries; max > 0 && int64(u.st.Entries) > max {
		return fmt.Errorf("more than %d entries, the most one unpack may create (%s)", max, u.opts.limits.setting("tree_max_entries"))
	}
	dir, base := "", rel
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		dir, base = rel[:i], rel[i+1:]
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("only a directory may stand for the target directory itself")
		}
		return u.setAttrs(u.root, "", hdr, true)
	}
	if strings.HasPrefix(base, layerWhiteoutPrefix) {
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("a whiteout marker must be a regular file, not type %q", hdr.Typeflag)
		}
		if base == layerOpaqueMarker {
			return u.opaque(dir)
		}
		target := base[len(layerWhiteoutPrefix):]
		if target == "" || target == "." || target == ".." {
			return errors.New("whiteout of an invalid name")
		}
		return u.whiteout(dir, target)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.mkdir(dir, base, rel, hdr)
	case tar.TypeReg:
		return u.file(dir, base, rel, hdr, tr)
	case tar.TypeLink:
		return u.hardlink(dir, base, hdr)
	case tar.TypeSymlink:
		return u.symlink(dir, base, hdr)
	case tar.TypeFifo:
		pfd, err := u.prepare(dir, base, false)
		if err != nil {
			return err
		}
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return fmt.Errorf("creating FIFO: %w", err)
		}
		u.st.Fifos++
		return u.setAttrsAt(pfd, base, hdr)
	case tar.TypeChar:
		if hdr.Devmajor == 0 && hdr.Devminor == 0 {
			return u.whiteout(dir, base)
		}
		if u.opts.skipDevices {
			u.st.SkippedDevices++
			return nil
		}
		return fmt.Errorf("device node %d:%d refused (the runtime provides /dev)", hdr.Devmajor, hdr.Devminor)
	case tar.TypeBlock:
		if u.opts.skipDevices {
			u.st.SkippedDevices++
			return nil
		}
		return fmt.Errorf("block device %d:%d refused", hdr.Devmajor, hdr.Devminor)
	}
	return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
}

// parent returns an fd of the directory rel, creating missing directories;
// the fd belongs to the unpacker.
func (u *unpacker) parent(rel string) (int, error) {
	if rel == "" {
		return u.root, nil
	}
	if u.parentFd >= 0 && u.parentRel == rel {
		return u.parentFd, nil
	}
	u.dropParent()
	fd, err := u.openDir(rel)
	if err == unix.ENOENT {
		fd, err = u.mkdirAll(rel)
	}
	if err != nil {
		return -1, u.explain(rel, err)
	}
	u.parentRel, u.parentFd = rel, fd
	return fd, nil
}

func (u *unpacker) dropParent() {
	if u.parentFd >= 0 {
		unix.Close(u.parentFd)
	}
	u.parentRel, u.parentFd = "", -1
}

func (u *unpacker) openDir(rel string) (int, error) {
	for {
		fd, err := unix.Openat2(u.root, rel, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unpackResolve,
		})
		if err != unix.EINTR && err != unix.EAGAIN {
			return fd, err
		}
	}
}

func (u *unpacker) explain(rel string, err error) error {
	switch err {
	case unix.ELOOP:
		return fmt.Errorf("parent directory %q is a symlink: refusing to write through it", rel)
	case unix.EXDEV:
		return fmt.Errorf("parent directory %q leads outside the target", rel)
	case unix.ENOTDIR:
		return fmt.Errorf("parent %q is not a directory", rel)
	case unix.ENOSYS:
		return errors.New("openat2 is not available: Linux 5.6 or newer is needed")
	}
	return fmt.Errorf("opening parent directory %q: %w", rel, err)
}

// mkdirAll creates the missing directories of rel one component at a
// time, each lookup confined like any other.
func (u *unpacker) mkdirAll(rel string) (int, error) {
	fd, err := unix.Dup(u.root)
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(rel, "/") {
		err := unix.Mkdirat(fd, c, 0o755)
		if err != nil && err != unix.EEXIST {
			unix.Close(fd)
			return -1, err
		}
		next, err := unix.Openat2(fd, c, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unpackResolve})
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// prepare returns the parent fd and clears the way for a new non-directory
// (or, with dir, a directory) named base.
func (u *unpacker) prepare(dir, base string, wantDir bool) (int, error) {
	pfd, err := u.parent(dir)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	err = unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.ENOENT {
		return pfd, nil
	}
	if err != nil {
		return -1, fmt.Errorf("checking what is there: %w", err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if wantDir && isDir {
		return pfd, nil
	}
	if err := u.removeAt(pfd, base, isDir); err != nil {
		return -1, err
	}
	return u.parent(dir)
}

// removeAt deletes name under dirfd, a whole tree if it is a directory,
// never following symlinks. The cached parent is dropped first, since it
// may lie in the removed tree.
func (u *unpacker) removeAt(dirfd int, name string, isDir bool) error {
	if u.parentFd == dirfd {
		d, err := unix.Dup(dirfd)
		if err != nil {
			return err
		}
		defer unix.Close(d)
		dirfd = d
	}
	u.dropParent()
	return unpackRemoveAt(dirfd, name, isDir)
}

func unpackRemoveAt(dirfd int, name string, isDir bool) error {
	if !isDir {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && err != unix.ENOENT {
			return fmt.Errorf("removing %q: %w", name, err)
		}
		return nil
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("removing %q: %w", name, err)
	}
	if err := unpackEmptyDir(fd); err != nil {
		unix.Close(fd)
		return fmt.Errorf("removing %q: %w", name, err)
	}
	unix.Close(fd)
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("removing %q: %w", name, err)
	}
	return nil
}

// unpackEmptyDir removes everything inside the directory fd.
func unpackEmptyDir(fd int) error {
	// A fresh open, not a dup: a dup would share (and leave at the end)
	// the directory offset of fd.
	d, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(d), "dir")
	defer f.Close()
	for {
		ents, err := f.ReadDir(256)
		for _, e := range ents {
			if err := unpackRemoveAt(fd, e.Name(), e.IsDir()); err != nil {
				return err
			}
		}
		if err == io.EOF || len(ents) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (u *unpacker) mkdir(dir, base, rel string, hdr *tar.Header) error {
	pfd, err := u.prepare(dir, base, true)
	if err != nil {
		return err
	}
	if err := unix.Mkdirat(pfd, base, 0o700); err != nil && err != unix.EEXIST {
		return fmt.Errorf("creating directory: %w", err)
	}
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening directory: %w", err)
	}
	defer unix.Close(fd)
	u.st.Dirs++
	return u.setAttrs(fd, rel, hdr, true)
}

func (u *unpacker) file(dir, base, rel string, hdr *tar.Header, tr *tar.Reader) error {
	if max := u.opts.limits.TreeSize; max > 0 && u.st.Bytes+hdr.Size > max {
		return fmt.Errorf("more than %s of files, the most one unpack may write (%s)", humanBytes(max), u.opts.limits.setting("tree_max_size"))
	}
	pfd, err := u.prepare(dir, base, false)
	if err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating file: %w", err)
	}
	defer unix.Close(fd)
	for {
		n, rerr := tr.Read(u.buf)
		for off := 0; off < n; {
			w, err := unix.Write(fd, u.buf[off:n])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("writing file: %w", err)
			}
			off += w
		}
		u.st.Bytes += int64(n)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("reading its content: %w", rerr)
		}
	}
	u.st.Files++
	u.regular[maphash.String(u.seed, rel)] = struct{}{}
	return u.setAttrs(fd, rel, hdr, false)
}

func (u *unpacker) hardlink(dir, base string, hdr *tar.Header) error {
	target, err := unpackCleanName(hdr.Linkname)
	if err != nil || target == "" {
		return fmt.Errorf("hardlink target %q is invalid", hdr.Linkname)
	}
	if _, ok := u.regular[maphash.String(u.seed, target)]; !ok {
		return fmt.Errorf("hardlink target %q is not an earlier regular file of this stream", hdr.Linkname)
	}
	tdir, tbase := "", target
	if i := strings.LastIndexByte(target, '/'); i >= 0 {
		tdir, tbase = target[:i], target[i+1:]
	}
	tfd := u.root
	if tdir != "" {
		if tfd, err = u.openDir(tdir); err != nil {
			return u.explain(tdir, err)
		}
		defer unix.Close(tfd)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("hardlink target %q is no longer a regular file", hdr.Linkname)
	}
	pfd, err := u.prepare(dir, base, false)
	if err != nil {
		return err
	}
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("linking to %q: %w", hdr.Linkname, err)
	}
	u.st.Hardlinks++
	return nil
}

func (u *unpacker) symlink(dir, base string, hdr *tar.Header) error {
	if strings.IndexByte(hdr.Linkname, 0) >= 0 || len(hdr.Linkname) > unpackMaxPath || hdr.Linkname == "" {
		return errors.New("invalid symlink target")
	}
	pfd, err := u.prepare(dir, base, false)
	if err != nil {
		return err
	}
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return fmt.Errorf("creating symlink: %w", err)
	}
	u.st.Symlinks++
	if u.opts.chown {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("setting owner: %w", err)
		}
	}
	ts := unpackTimes(hdr)
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

func unpackTimes(hdr *tar.Header) []unix.Timespec {
	t := unix.NsecToTimespec(hdr.ModTime.UnixNano())
	return []unix.Timespec{t, t}
}

// setAttrs gives the open file or directory fd the entry's owner, mode,
// xattrs and time. A directory the owner could not write into is made
// writable until the end of the stream.
func (u *unpacker) setAttrs(fd int, rel string, hdr *tar.Header, isDir bool) error {
	if u.opts.chown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("setting owner %d:%d: %w", hdr.Uid, hdr.Gid, err)
		}
	}
	mode := uint32(hdr.Mode & 0o7777)
	if isDir && mode&0o700 != 0o700 {
		if len(u.deferred) >= unpackMaxDeferredDirs {
			return fmt.Errorf("more than %d directories without owner rwx permission", unpackMaxDeferredDirs)
		}
		u.deferred = append(u.deferred, unpackDeferredDir{rel, mode})
		mode |= 0o700
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("setting mode %o: %w", mode, err)
	}
	u.setXattrs(hdr, func(name string, v []byte) error { return unix.Fsetxattr(fd, name, v, 0) })
	ts := unpackTimes(hdr)
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// setAttrsAt is setAttrs for something that cannot be opened (a FIFO would
// block); base was just created by us under pfd.
func (u *unpacker) setAttrsAt(pfd int, base string, hdr *tar.Header) error {
	if u.opts.chown {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("setting owner %d:%d: %w", hdr.Uid, hdr.Gid, err)
		}
	}
	if err := unix.Fchmodat(pfd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
		return fmt.Errorf("setting mode: %w", err)
	}
	ts := unpackTimes(hdr)
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// setXattrs applies the xattrs a layer may carry; any other (above all
// overlay's own, which could forge whiteouts) is dropped and counted, and
// so is one the filesystem or our privileges refuse.
func (u *unpacker) setXattrs(hdr *tar.Header, set func(string, []byte) error) {
	keys := make([]string, 0, len(hdr.PAXRecords))
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := strings.TrimPrefix(k, "SCHILY.xattr.")
		if !layerKeepXattr(name) || set(name, []byte(hdr.PAXRecords[k])) != nil {
			u.st.SkippedXattrs++
		}
	}
}

func (u *unpacker) chmodPath(rel string, mode uint32) error {
	fd := u.root
	if rel != "" {
		var err error
		if fd, err = u.openDir(rel); err != nil {
			return err
		}
		defer unix.Close(fd)
	}
	return unix.Fchmod(fd, mode)
}

// whiteout records (overlay) or applies the deletion of dir/name.
func (u *unpacker) whiteout(dir, name string) error {
	u.st.Whiteouts++
	if !u.opts.overlay {
		if dir != "" && u.parentRel != dir {
			fd, err := u.openDir(dir)
			if err == unix.ENOENT {
				return nil // nothing there to delete
			}
			if err != nil {
				return u.explain(dir, err)
			}
			u.dropParent()
			u.parentRel, u.parentFd = dir, fd
		}
		pfd, err := u.parent(dir)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return nil
			}
			return fmt.Errorf("whiteout of %q: %w", name, err)
		}
		return u.removeAt(pfd, name, st.Mode&unix.S_IFMT == unix.S_IFDIR)
	}
	pfd, err := u.prepare(dir, name, false)
	if err != nil {
		return err
	}
	err = unix.Mknodat(pfd, name, unix.S_IFCHR, 0)
	if err == nil {
		return nil
	}
	if err != unix.EPERM && err != unix.EOPNOTSUPP && err != unix.EINVAL {
		return fmt.Errorf("creating whiteout for %q: %w", name, err)
	}
	// Where mknod is refused, overlayfs (6.7+) also reads an empty file
	// marked with the whiteout xattr, in a directory marked as holding such.
	fd, err := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating whiteout for %q: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsetxattr(fd, "user.overlay.whiteout", []byte("y"), 0); err != nil {
		return fmt.Errorf("creating whiteout for %q: %w", name, err)
	}
	v := make([]byte, 8)
	if n, err := unix.Fgetxattr(pfd, "user.overlay.opaque", v); err == nil && string(v[:n]) == "y" {
		return nil
	}
	if err := unix.Fsetxattr(pfd, "user.overlay.opaque", []byte("x"), 0); err != nil {
		return fmt.Errorf("marking %q as holding whiteouts: %w", dir, err)
	}
	return nil
}

// opaque records (overlay) or applies an opaque directory: what lower
// layers had there is hidden.
func (u *unpacker) opaque(dir string) error {
	u.st.Opaques++
	pfd, err := u.parent(dir)
	if err != nil {
		return err
	}
	if u.opts.overlay {
		if err := unix.Fsetxattr(pfd, "user.overlay.opaque", []byte("y"), 0); err != nil {
			return fmt.Errorf("marking %q opaque: %w", dir, err)
		}
		return nil
	}
	d, err := unix.Dup(pfd)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	u.dropParent()
	return unpackEmptyDir(d)
}

// unpackPartialSuffix names the directory unpackObjectTo fills before renaming
// it into place; lock recovery removes leftovers under env/.
const unpackPartialSuffix = ".kp-partial"

// unpackObjectTo unpacks the tar stream held by object hash into dest,
// which must not exist (or be an empty directory). dest appears only
// if the whole stream unpacked and hashed to its name.
func (s *store) unpackObjectTo(hash, dest string, opts unpackOptions) error {
	tmp := dest + unpackPartialSuffix
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("unpacking object %s: %w", hash, err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("unpacking object %s: %w", hash, err)
	}
	err := func() error {
		rc, err := s.openObject(hash)
		if err != nil {
			return err
		}
		defer rc.Close()
		if _, err := unpackLayer(rc, tmp, opts); err != nil {
			return err
		}
		// Read to the end: the object's hash is checked there.
		if _, err := io.CopyBuffer(io.Discard, rc, make([]byte, 32<<10)); err != nil {
			return err
		}
		return nil
	}()
	if err == nil {
		err = os.Rename(tmp, dest)
	}
	if err == nil {
		err = syncDir(filepath.Dir(dest))
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("unpacking object %s into %s: %w", hash, dest, err)
	}
	return nil
}
