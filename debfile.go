package main

// Binary packages (.deb, deb(5)): an ar archive of debian-binary,
// control.tar[.gz|.xz|.zst] and data.tar[.gz|.xz|.zst], read as a stream;
// and the rewrite of a package's files for a merged-/usr root filesystem.

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"
)

const (
	debArMagic     = "!<arch>\n"
	debArHeaderLen = 60
	debControlMax  = 4 << 20 // a control file larger than this is not one
)

// errDebStop ends a readDeb walk early without an error.
var errDebStop = errors.New("stop reading the package")

// debMemberReader reads one ar member's bytes and reports a member that the
// archive ends before as truncated.
type debMemberReader struct {
	r         io.Reader
	name      string
	size, off int64
	base      int64 // the offset of the member's header in the archive
}

func (m *debMemberReader) Read(p []byte) (int, error) {
	if m.off >= m.size {
		return 0, io.EOF
	}
	if int64(len(p)) > m.size-m.off {
		p = p[:m.size-m.off]
	}
	n, err := m.r.Read(p)
	m.off += int64(n)
	if err == io.EOF {
		if m.off < m.size {
			return n, fmt.Errorf("member %s at offset %d is truncated: %d of its %d bytes present: %w", m.name, m.base, m.off, m.size, io.ErrUnexpectedEOF)
		}
		err = nil
	}
	return n, err
}

// readDeb walks a .deb and calls fn with its control and data members, in
// that order, each with the member's name and size. fn need not read a
// member to its end. Members whose names start with '_' are skipped, as
// dpkg does; whatever follows data.tar is not read.
func readDeb(r io.Reader, fn func(name string, size int64, r io.Reader) error) error {
	err := debWalk(r, fn)
	if err == errDebStop {
		return nil
	}
	return err
}

func debWalk(r io.Reader, fn func(name string, size int64, r io.Reader) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var magic [len(debArMagic)]byte
	if n, err := io.ReadFull(br, magic[:]); err != nil || string(magic[:]) != debArMagic {
		if n == 0 {
			return errors.New("not a .deb: empty input")
		}
		return fmt.Errorf("not a .deb: no ar magic %q at the start (got %q)", debArMagic, magic[:n])
	}
	off := int64(len(debArMagic))
	state := 0 // 0: want debian-binary, 1: want control, 2: want data
	for {
		var hdr [debArHeaderLen]byte
		n, err := io.ReadFull(br, hdr[:])
		if err != nil {
			if n == 0 && err == io.EOF {
				what := [...]string{"debian-binary", "control.tar", "data.tar"}[state]
				return fmt.Errorf("the package ends at offset %d without its %s member", off, what)
			}
			return fmt.Errorf("ar member header at offset %d is truncated (%d of %d bytes)", off, n, debArHeaderLen)
		}
		name, size, err := debArHeader(hdr[:])
		if err != nil {
			return fmt.Errorf("ar member header at offset %d: %w", off, err)
		}
		m := &debMemberReader{r: br, name: name, size: size, base: off}
		switch {
		case state == 0:
			if name != "debian-binary" {
				return fmt.Errorf("the first member is %q at offset %d, not debian-binary", name, off)
			}
			if size > 64 {
				return fmt.Errorf("debian-binary at offset %d is %d bytes; it holds a format version", off, size)
			}
			b, err := io.ReadAll(m)
			if err != nil {
				return err
			}
			if string(b) != "2.0\n" {
				return fmt.Errorf("debian-binary says %q; only format 2.0 is known", b)
			}
			state = 1
		case strings.HasPrefix(name, "_"):
		case state == 1 && strings.HasPrefix(name, "control.tar"):
			if err := debCompression(name); err != nil {
				return err
			}
			if err := fn(name, size, m); err != nil {
				return err
			}
			state = 2
		case state == 2 && strings.HasPrefix(name, "data.tar"):
			if err := debCompression(name); err != nil {
				return err
			}
			return fn(name, size, m)
		default:
			want := [...]string{"", "control.tar", "data.tar"}[state]
			return fmt.Errorf("unexpected member %q at offset %d where %s belongs", name, off, want)
		}
		if _, err := io.Copy(io.Discard, m); err != nil {
			return err
		}
		off += debArHeaderLen + size
		if size%2 == 1 { // members are aligned on two bytes
			if _, err := br.ReadByte(); err != nil {
				return fmt.Errorf("the padding byte after member %s at offset %d is missing", name, m.base)
			}
			off++
		}
	}
}

// debArHeader decodes a 60-byte ar member header: name (16), mtime (12),
// uid (6), gid (6), mode (8), size (10), "`\n".
func debArHeader(h []byte) (string, int64, error) {
	if string(h[58:60]) != "`\n" {
		return "", 0, fmt.Errorf("bad header terminator %q", h[58:60])
	}
	name := strings.TrimRight(string(h[:16]), " ")
	name = strings.TrimSuffix(name, "/") // GNU ar ends names with '/'
	if name == "" {
		return "", 0, errors.New("empty member name")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' || c == '/' {
			return "", 0, fmt.Errorf("member name %q contains %q", name, c)
		}
	}
	sf := strings.TrimRight(string(h[48:58]), " ")
	size, err := strconv.ParseInt(sf, 10, 64)
	if err != nil || size < 0 || sf == "" || sf[0] == '+' || sf[0] == '-' {
		return "", 0, fmt.Errorf("member %s: size field %q is not a number", name, h[48:58])
	}
	return name, size, nil
}

// debCompression checks a member's compression, which its name's
// extension gives (dpkg trusts names, not magic bytes).
func debCompression(name string) error {
	switch path.Ext(name) {
	case ".tar", ".gz", ".xz", ".zst":
		return nil
	case ".bz2", ".lzma":
		return fmt.Errorf("member %s: unsupported compression %s (gzip, xz, zstd or none are)", name, path.Ext(name)[1:])
	}
	return fmt.Errorf("member %s: unknown compression", name)
}

func debDecompressor(name string, r io.Reader) (io.Reader, error) {
	var (
		d   io.Reader
		err error
	)
	switch path.Ext(name) {
	case ".tar":
		return r, nil
	case ".gz":
		d, err = gzip.NewReader(r)
	case ".xz":
		d, err = newXZReader(r)
	case ".zst":
		d, err = newZstdReader(r)
	default:
		return nil, debCompression(name)
	}
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", name, err)
	}
	return d, nil
}

// debDataTar calls fn with the decompressed data.tar of a .deb. After fn,
// the rest of the member is decompressed, so a corrupt end is an error.
func debDataTar(r io.Reader, fn func(tar io.Reader) error) error {
	found := false
	err := readDeb(r, func(name string, size int64, m io.Reader) error {
		if !strings.HasPrefix(name, "data.tar") {
			return nil
		}
		found = true
		d, err := debDecompressor(name, m)
		if err != nil {
			return err
		}
		if err := fn(d); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, d); err != nil {
			return fmt.Errorf("member %s: %w", name, err)
		}
		return nil
	})
	if err == nil && !found {
		err = errors.New("the package has no data.tar member")
	}
	return err
}

// debControlFields returns the control file's paragraph from a .deb.
func debControlFields(r io.Reader) (debStanza, error) {
	var st debStanza
	err := readDeb(r, func(name string, size int64, m io.Reader) error {
		if !strings.HasPrefix(name, "control.tar") {
			return nil
		}
		d, err := debDecompressor(name, m)
		if err != nil {
			return err
		}
		tr := tar.NewReader(d)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return fmt.Errorf("member %s has no control file", name)
			}
			if err != nil {
				return fmt.Errorf("member %s: %w", name, err)
			}
			if strings.TrimPrefix(h.Name, "./") != "control" || h.Typeflag != tar.TypeReg {
				continue
			}
			if h.Size > debControlMax {
				return fmt.Errorf("member %s: control file is %d bytes", name, h.Size)
			}
			err = readDebStanzas(tr, func(s debStanza) error {
				if st != nil {
					return errors.New("the control file has more than one paragraph")
				}
				st = s
				return nil
			})
			if err != nil {
				return fmt.Errorf("member %s: control: %w", name, err)
			}
			if st == nil {
				return fmt.Errorf("member %s: control file is empty", name)
			}
			return errDebStop
		}
	})
	if err == nil && st == nil {
		err = errors.New("the package has no control.tar member")
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// debUsrDirs are the top directories that a merged-/usr system has as
// symlinks into /usr.
var debUsrDirs = []string{"bin", "sbin", "lib", "lib32", "lib64", "libo32", "libx32"}

// debMergedUsr copies a package's data.tar moving entries under dirs (top
// directories, e.g. debUsrDirs) under usr/: in the target tree those
// directories are symlinks, which our unpacker does not write through. The
// entries for the directories themselves are dropped; hard link targets
// move the same way; symbolic link targets stay as they are, since they
// resolve inside the finished tree. Headers keep their fields except the
// access and change times, so the output depends only on the input.
func debMergedUsr(in io.Reader, out io.Writer, dirs []string) error {
	tr := tar.NewReader(in)
	tw := tar.NewWriter(out)
	move := func(name string) (string, bool) {
		rest, dotSlash := strings.CutPrefix(name, "./")
		top, _, _ := strings.Cut(rest, "/")
		for _, d := range dirs {
			if top == d {
				if dotSlash {
					return "./usr/" + rest, true
				}
				return "usr/" + rest, true
			}
		}
		return name, false
	}
	isTop := func(name string) bool {
		rest := strings.TrimSuffix(strings.TrimPrefix(name, "./"), "/")
		for _, d := range dirs {
			if rest == d {
				return true
			}
		}
		return false
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading data.tar: %w", err)
		}
		if isTop(h.Name) {
			if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeSymlink {
				return fmt.Errorf("data.tar: %s is a %s, not a directory", h.Name, debTarType(h.Typeflag))
			}
			continue
		}
		h.Name, _ = move(h.Name)
		if h.Typeflag == tar.TypeLink {
			h.Linkname, _ = move(h.Linkname)
		}
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		h.Format = tar.FormatUnknown
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("writing %s: %w", h.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("copying %s: %w", h.Name, err)
		}
	}
	return tw.Close()
}

func debTarType(t byte) string {
	switch t {
	case tar.TypeReg:
		return "regular file"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("tar entry of type %q", t)
}
