package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"lukechampine.com/blake3"
)

// An export archive carries one environment to a machine without a
// network. It is a plain tar stream, the same bytes for the same
// environment (fixed order, times 0, owner 0, mode 0644):
//
//	karapace-export.json     the index: format, version, env_id and every
//	                         blob that follows {kind, hash, size}, in order
//	blobs/metadata/ENV_ID    the metadata
//	blobs/layer/HASH         every layer manifest, parents first
//	blobs/object/HASH        every object, sorted by hash
//
// The small entries come first, so an import has checked the metadata,
// every layer and that the archive holds exactly what the environment
// needs before it writes a byte; the objects then stream into the store,
// each checked against its name.

const (
	exportIndexName = "karapace-export.json"
	exportFormat    = "karapace-export"
	exportVersion   = 1
)

type exportIndex struct {
	Format  string       `json:"format"`
	Version int          `json:"version"`
	EnvID   string       `json:"env_id"`
	Blobs   []remoteBlob `json:"blobs"`
}

func exportEntryName(b remoteBlob) string { return "blobs/" + b.Kind + "/" + b.Hash }

// exportEnv writes the archive of the closure to w and returns its size
// in blob bytes.
func (s *store) exportEnv(c *envClosure, w io.Writer, prog *progress) (int64, error) {
	idx := exportIndex{Format: exportFormat, Version: exportVersion, EnvID: c.meta.EnvID}
	idx.Blobs = append(idx.Blobs, remoteBlob{blobMetadata, c.meta.EnvID, int64(len(c.wire))})
	for _, l := range c.layers {
		idx.Blobs = append(idx.Blobs, remoteBlob{blobLayer, l.Hash, int64(len(l.fileBytes()))})
	}
	idx.Blobs = append(idx.Blobs, c.objects...)
	ib, _ := json.MarshalIndent(&idx, "", "  ")
	ib = append(ib, '\n')
	tw := tar.NewWriter(w)
	entry := func(name string, size int64, r io.Reader) error {
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: time.Unix(0, 0)})
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		bp := storeBufPool.Get().(*[]byte)
		n, err := io.CopyBuffer(tw, r, *bp)
		storeBufPool.Put(bp)
		if err == nil && n != size {
			err = fmt.Errorf("%d bytes instead of %d", n, size)
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		return nil
	}
	if err := entry(exportIndexName, int64(len(ib)), bytes.NewReader(ib)); err != nil {
		return 0, err
	}
	var total int64
	for i, b := range idx.Blobs {
		var err error
		switch b.Kind {
		case blobMetadata:
			err = entry(exportEntryName(b), b.Size, bytes.NewReader(c.wire))
		case blobLayer:
			err = entry(exportEntryName(b), b.Size, bytes.NewReader(c.layers[i-1].fileBytes()))
		case blobObject:
			var rc io.ReadCloser
			if rc, err = s.openObject(b.Hash); err == nil {
				err = entry(exportEntryName(b), b.Size, prog.reader(rc)) // the object's hash is checked at its end
				rc.Close()
			}
		}
		if err != nil {
			return 0, err
		}
		total += b.Size
	}
	if err := tw.Close(); err != nil {
		return 0, fmt.Errorf("writing the archive: %w", err)
	}
	return total, nil
}

// exportSource reads an environment from an export archive.
type exportSource struct {
	raw    io.Reader
	tr     *tar.Reader
	m      *envMeta
	layers map[string]*layer
	objs   []remoteBlob // the object entries still to come, in order
	prog   *progress
}

// next reads the header of the entry the index promised.
func (a *exportSource) next(b remoteBlob) error {
	want := exportEntryName(b)
	hdr, err := a.tr.Next()
	if err == io.EOF {
		return fmt.Errorf("the archive ends before %s: a blob is missing", want)
	}
	if err != nil {
		return fmt.Errorf("reading the archive before %s: %w", want, err)
	}
	if hdr.Name != want || hdr.Typeflag != tar.TypeReg || hdr.Size != b.Size {
		return fmt.Errorf("the archive holds %q (%d bytes) where its index promises %s (%d bytes)", hdr.Name, hdr.Size, want, b.Size)
	}
	return nil
}

func (a *exportSource) small(b remoteBlob) ([]byte, error) {
	if err := a.next(b); err != nil {
		return nil, err
	}
	buf, err := io.ReadAll(a.tr)
	if err != nil {
		return nil, fmt.Errorf("reading %s from the archive: %w", exportEntryName(b), err)
	}
	return buf, nil
}

// openExport reads and checks the index, the metadata and every layer,
// and that the archive holds exactly the environment's blobs.
func openExport(r io.Reader, prog *progress) (*exportSource, error) {
	a := &exportSource{raw: r, tr: tar.NewReader(r), layers: map[string]*layer{}, prog: prog}
	idx, err := a.readIndex()
	if err != nil {
		return nil, err
	}
	listed, err := a.checkIndex(idx)
	if err != nil {
		return nil, err
	}
	if err := a.readMeta(idx); err != nil {
		return nil, err
	}
	if err := a.readLayers(idx.Blobs[1 : len(idx.Blobs)-len(a.objs)]); err != nil {
		return nil, err
	}
	if err := a.checkClosure(idx, listed); err != nil {
		return nil, err
	}
	return a, nil
}

// readIndex reads the archive's first entry, its index, of a format and
// version this karapace reads, starting with the metadata of its env_id.
func (a *exportSource) readIndex() (*exportIndex, error) {
	hdr, err := a.tr.Next()
	if err != nil {
		return nil, fmt.Errorf("not a karapace export archive: %w", err)
	}
	if hdr.Name != exportIndexName || hdr.Typeflag != tar.TypeReg || hdr.Size > remoteMaxDoc {
		return nil, fmt.Errorf("not a karapace export archive: it starts with %q, not %s", hdr.Name, exportIndexName)
	}
	ib, err := io.ReadAll(a.tr)
	if err != nil {
		return nil, fmt.Errorf("reading the archive's index: %w", err)
	}
	var idx exportIndex
	dec := json.NewDecoder(bytes.NewReader(ib))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("the archive's index is invalid: %w", err)
	}
	if idx.Format != exportFormat || idx.Version != exportVersion {
		return nil, fmt.Errorf("the archive is %q version %d; this karapace reads %q version %d", idx.Format, idx.Version, exportFormat, exportVersion)
	}
	if len(idx.Blobs) == 0 || idx.Blobs[0].Kind != blobMetadata || idx.Blobs[0].Hash != idx.EnvID || !validStoreHash(idx.EnvID) {
		return nil, errors.New("the archive's index does not start with the metadata of its env_id")
	}
	return &idx, nil
}

// checkIndex checks every entry of the index: named by a valid hash,
// listed once, in the order the entries come (metadata, layers, objects),
// small blobs within their limits. It notes the objects to come and
// returns the set of kind/hash listed.
func (a *exportSource) checkIndex(idx *exportIndex) (map[string]bool, error) {
	listed := map[string]bool{}
	stage := 0 // 0 metadata, 1 layers, 2 objects: the order the entries come in
	var layerBytes int64
	for _, b := range idx.Blobs {
		key := b.Kind + "/" + b.Hash
		if listed[key] {
			return nil, fmt.Errorf("the archive's index lists %s twice", key)
		}
		listed[key] = true
		if !validStoreHash(b.Hash) || b.Size < 0 {
			return nil, fmt.Errorf("the archive's index has an invalid entry %s (%d bytes)", key, b.Size)
		}
		st := map[string]int{blobMetadata: 0, blobLayer: 1, blobObject: 2}[b.Kind]
		if (b.Kind != blobMetadata && st == 0) || st < stage || (b.Kind == blobMetadata && len(listed) > 1) {
			return nil, fmt.Errorf("the archive's index has %s out of place", key)
		}
		stage = st
		if b.Kind == blobLayer {
			if layerBytes += b.Size; b.Size > maxLayerFile || layerBytes > remoteMaxLayers {
				return nil, fmt.Errorf("the archive's layer manifests are too large (%s)", key)
			}
		}
		if b.Kind == blobObject {
			a.objs = append(a.objs, b)
		}
	}
	if idx.Blobs[0].Size > remoteMaxMeta {
		return nil, fmt.Errorf("the archive's metadata is larger than %d bytes", remoteMaxMeta)
	}
	return listed, nil
}

// readMeta reads and checks the metadata entry.
func (a *exportSource) readMeta(idx *exportIndex) error {
	mb, err := a.small(idx.Blobs[0])
	if err != nil {
		return err
	}
	if a.m, err = remoteParseMeta(idx.EnvID, mb); err != nil {
		return fmt.Errorf("the archive's metadata is invalid: %v; refusing it", err)
	}
	return nil
}

// readLayers reads and checks the layer manifest entries.
func (a *exportSource) readLayers(blobs []remoteBlob) error {
	for _, b := range blobs {
		lb, err := a.small(b)
		if err != nil {
			return err
		}
		l, err := parseLayer(b.Hash, lb)
		if err != nil {
			return fmt.Errorf("layer %s in the archive is corrupt: %v; refusing it", b.Hash, err)
		}
		a.layers[b.Hash] = l
	}
	return nil
}

// checkClosure makes sure the index lists exactly the environment's
// closure: nothing missing, nothing extra.
func (a *exportSource) checkClosure(idx *exportIndex, listed map[string]bool) error {
	need := map[string]bool{}
	for _, h := range a.m.objectRefs() {
		need["object/"+h] = true
	}
	var walk func(h string) error
	walk = func(h string) error {
		if need["layer/"+h] {
			return nil
		}
		need["layer/"+h] = true
		l, ok := a.layers[h]
		if !ok {
			return fmt.Errorf("the archive lacks layer %s, which the environment needs", h)
		}
		for _, o := range l.ObjectRefs {
			need["object/"+o] = true
		}
		if l.Parent != "" {
			return walk(l.Parent)
		}
		return nil
	}
	for _, h := range a.m.layerRefs() {
		if err := walk(h); err != nil {
			return err
		}
	}
	for key := range need {
		if !listed[key] {
			return fmt.Errorf("the archive lacks %s, which the environment needs", key)
		}
	}
	for _, b := range idx.Blobs[1:] {
		if key := b.Kind + "/" + b.Hash; !need[key] {
			return fmt.Errorf("the archive holds %s, which the environment does not need; refusing it", key)
		}
	}
	return nil
}

func (a *exportSource) origin() string { return "the archive" }

func (a *exportSource) meta() (*envMeta, error) { return a.m, nil }

func (a *exportSource) layer(hash string) (*layer, error) {
	if l, ok := a.layers[hash]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("the archive lacks layer %s", hash)
}

// objects reads the object entries in their order: those the store lacks
// go to got, the others are hashed all the same, then the archive must
// end, with nothing but zero padding after it.
func (a *exportSource) objects(need map[string]bool, got func(string, io.Reader) error) error {
	bp := storeBufPool.Get().(*[]byte)
	defer storeBufPool.Put(bp)
	for _, b := range a.objs {
		if err := a.next(b); err != nil {
			return err
		}
		r := a.prog.reader(a.tr)
		if need[b.Hash] {
			if err := got(b.Hash, r); err != nil {
				return fmt.Errorf("%v (in the archive)", err)
			}
			continue
		}
		h := blake3.New(32, nil)
		n, err := io.CopyBuffer(h, r, *bp)
		if err != nil {
			return fmt.Errorf("reading object %s from the archive: %w", b.Hash, err)
		}
		if sum := hex.EncodeToString(h.Sum(nil)); sum != b.Hash {
			return fmt.Errorf("object %s in the archive is corrupt: its %d bytes hash to %s; refusing the archive", b.Hash, n, sum)
		}
	}
	if hdr, err := a.tr.Next(); err != io.EOF {
		if err == nil {
			return fmt.Errorf("the archive holds %q after its last blob; refusing it", hdr.Name)
		}
		return fmt.Errorf("reading the end of the archive: %w", err)
	}
	for {
		n, err := a.raw.Read(*bp)
		for _, c := range (*bp)[:n] {
			if c != 0 {
				return errors.New("the archive has data after its end; refusing it")
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the end of the archive: %w", err)
		}
	}
}

func cmdExport(c *cli) error {
	e, m, sl, err := c.envArgShared("export")
	if err != nil {
		return err
	}
	defer sl.unlock()
	cl, err := e.s.closureOf(m)
	if err != nil {
		return err
	}
	var total int64
	for _, b := range cl.objects {
		total += b.Size
	}
	start := time.Now()
	file := c.args[1]
	prog := c.out.progress("exporting "+m.ShortID, total, true)
	var n int64
	if file == "-" {
		if f, ok := c.stdout.(*os.File); ok && isTerminal(f) {
			return usageErrorf("export: refusing to write an archive to a terminal; name a FILE or redirect stdout")
		}
		w := bufio.NewWriterSize(c.stdout, 256<<10)
		if n, err = e.s.exportEnv(cl, w, prog); err == nil {
			err = w.Flush()
		}
	} else {
		n, err = exportToFile(e.s, cl, file, prog)
	}
	prog.finish()
	if err != nil {
		return fmt.Errorf("exporting %s to %s: %w", m.ShortID, file, err)
	}
	res := map[string]any{"env_id": m.EnvID, "short_id": m.ShortID, "file": file, "blobs": len(cl.blobs()), "bytes": n,
		"seconds": time.Since(start).Seconds()}
	if c.json && file != "-" {
		return writeJSON(c.stdout, res)
	}
	fmt.Fprintf(c.stderr, "exported %s to %s: %d blob(s), %s\n", m.ShortID, file, len(cl.blobs()), humanBytes(n))
	return nil
}

// exportToFile writes the archive beside file and renames it into place:
// a FILE that exists is a whole archive, and stays one after a crash.
func exportToFile(s *store, cl *envClosure, file string, prog *progress) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.partial")
	if err != nil {
		return 0, err
	}
	defer func() {
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	w := bufio.NewWriterSize(f, 256<<10)
	n, err := s.exportEnv(cl, w, prog)
	if err != nil {
		return 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if err := f.Chmod(0o644); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(f.Name(), file); err != nil {
		return 0, err
	}
	f = nil
	return n, syncDir(filepath.Dir(file))
}

func cmdImport(c *cli) error {
	file := c.args[0]
	var in io.Reader
	var size int64
	if file == "-" {
		in = c.stdin
		if c.stdin == nil {
			in = os.Stdin
		}
	} else {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil {
			size = fi.Size()
		}
		in = f
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	start := time.Now()
	prog := c.out.progress("importing "+filepath.Base(file), size, true)
	src, err := openExport(bufio.NewReaderSize(in, 256<<10), prog)
	var r *receiveResult
	if err == nil {
		r, err = e.receive(src, receiveOptions{kind: "import", name: c.flag("name")})
	}
	prog.finish()
	if err != nil {
		return fmt.Errorf("importing %s: %w", file, err)
	}
	if c.json {
		return writeJSON(c.stdout, map[string]any{"env_id": r.EnvID, "short_id": r.ShortID, "name": r.Name, "file": file,
			"already_present": r.AlreadyPresent, "blobs_imported": r.Received, "blobs_skipped": r.Skipped, "bytes_imported": r.Bytes,
			"seconds": time.Since(start).Seconds()})
	}
	if r.AlreadyPresent {
		fmt.Fprintf(c.stderr, "%s is already in the store\n", r.ShortID)
	} else {
		fmt.Fprintf(c.stderr, "imported %s: %d blob(s) (%s), %d already here\n", r.ShortID, r.Received, humanBytes(r.Bytes), r.Skipped)
	}
	fmt.Fprintln(c.stdout, r.EnvID)
	return nil
}
