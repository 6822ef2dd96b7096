package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func isRoot() bool { return os.Geteuid() == 0 }

// buildTree makes a tree exercising everything packLayer keeps, creating
// things in the given order of the steps (so readdir order differs).
func buildTree(t testing.TB, dir string, reverse bool) {
	t.Helper()
	long := strings.Repeat("long-name-", 12)
	steps := []func(){
		func() { os.MkdirAll(filepath.Join(dir, "a/b"), 0o755); os.Chmod(filepath.Join(dir, "a/b"), 0o750) },
		func() {
			writeFile(t, dir, "a/hello", "hello\n")
			if err := unix.Lsetxattr(filepath.Join(dir, "a/hello"), "user.karapace.test", []byte("value"), 0); err != nil {
				t.Fatal(err)
			}
			unix.Lsetxattr(filepath.Join(dir, "a/hello"), "user.overlay.redirect", []byte("/x"), 0)
		},
		func() {
			writeFile(t, dir, "a/suid", "#!/bin/sh\n")
			os.Chmod(filepath.Join(dir, "a/suid"), 0o4755|os.ModeSetuid)
		},
		func() { writeFile(t, dir, "sgid", "x"); chmodRaw(t, filepath.Join(dir, "sgid"), 0o2750) },
		func() { os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); chmodRaw(t, filepath.Join(dir, "tmp"), 0o1777) },
		func() { os.Symlink("hello", filepath.Join(dir, "a/link")) },
		func() { os.Symlink("/etc/passwd", filepath.Join(dir, "abs-link")) },
		func() {
			writeFile(t, dir, "z/h1", "linked content")
			os.MkdirAll(filepath.Join(dir, "m"), 0o755)
			os.Link(filepath.Join(dir, "z/h1"), filepath.Join(dir, "m/h2"))
			os.Link(filepath.Join(dir, "z/h1"), filepath.Join(dir, "a/h0"))
		},
		func() { unix.Mkfifo(filepath.Join(dir, "fifo"), 0o640) },
		func() { writeFile(t, dir, "empty", "") },
		func() { writeFile(t, dir, "deep/"+long+"/"+long+"/file", "deep") },
		func() { writeFile(t, dir, "ünïcode ✓", "utf-8") },
		func() { os.Chmod(filepath.Join(dir, "a/hello"), 0o600) },
	}
	if isRoot() {
		steps = append(steps,
			func() {
				writeFile(t, dir, "ping", "\x7fELF")
				// A v2 file capability: cap_net_raw permitted and effective.
				cap := make([]byte, 20)
				binary.LittleEndian.PutUint32(cap[0:], 0x02000001)
				binary.LittleEndian.PutUint32(cap[4:], 1<<13)
				if err := unix.Lsetxattr(filepath.Join(dir, "ping"), "security.capability", cap, 0); err != nil {
					t.Fatal(err)
				}
			},
			func() { writeFile(t, dir, "owned", "x"); os.Lchown(filepath.Join(dir, "owned"), 1000000, 100033) },
			func() { os.Lchown(filepath.Join(dir, "a/link"), 42, 43) },
		)
	}
	if reverse {
		// Create the top-level names in the opposite order, so that
		// readdir order differs where the filesystem follows creation.
		for _, n := range []string{"tmp", "sgid", "m", "z", "fifo", "empty", "deep", "ünïcode ✓", "abs-link", "a"} {
			if n == "a" || n == "m" || n == "z" || n == "deep" || n == "tmp" {
				os.Mkdir(filepath.Join(dir, n), 0o755)
			} else {
				writeFile(t, dir, n, "placeholder")
				os.Remove(filepath.Join(dir, n))
			}
		}
	}
	for _, s := range steps {
		s()
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && !strings.HasSuffix(p, "a/b") && !strings.HasSuffix(p, "/tmp") {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

func chmodRaw(t testing.TB, p string, mode uint32) {
	t.Helper()
	if err := unix.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func packBytes(t testing.TB, dir string) ([]byte, treeStats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := packLayer(dir, &buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), st
}

func tarHeaders(t testing.TB, b []byte) []*tar.Header {
	t.Helper()
	var hs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hs
		}
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
}

func TestPackDeterministic(t *testing.T) {
	d1, d2 := t.TempDir(), t.TempDir()
	if isRoot() {
		// tmpfs lists in creation order, unlike ext4's hash order.
		if err := unix.Mount("tmpfs", d2, "tmpfs", 0, "size=64m"); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(d2, unix.MNT_DETACH)
	}
	buildTree(t, d1, false)
	buildTree(t, d2, true)
	if isRoot() {
		// The test means something only if the raw orders differ.
		f1, _ := os.Open(d1)
		n1, _ := f1.Readdirnames(-1)
		f1.Close()
		f2, _ := os.Open(d2)
		n2, _ := f2.Readdirnames(-1)
		f2.Close()
		if strings.Join(n1, "/") == strings.Join(n2, "/") {
			t.Fatalf("readdir order is the same in both trees: %v", n1)
		}
	}
	b1, st := packBytes(t, d1)
	b2, _ := packBytes(t, d2)
	if !bytes.Equal(b1, b2) {
		diffStreams(t, b1, b2)
	}
	if b3, _ := packBytes(t, d1); !bytes.Equal(b1, b3) {
		t.Fatal("packing twice differs")
	}
	if st.Hardlinks != 2 || st.Fifos != 1 || st.Symlinks != 2 {
		t.Errorf("stats %+v", st)
	}
	hs := tarHeaders(t, b1)
	var names []string
	for _, h := range hs {
		names = append(names, h.Name)
		if !h.ModTime.Equal(time.Unix(0, 0)) || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %v uname %q gname %q", h.Name, h.ModTime, h.Uname, h.Gname)
		}
		for k := range h.PAXRecords {
			if strings.Contains(k, "overlay") || strings.HasPrefix(k, "atime") || strings.HasPrefix(k, "ctime") {
				t.Errorf("%s: unexpected PAX record %s", h.Name, k)
			}
		}
	}
	if names[0] != "./" {
		t.Errorf("first entry %q", names[0])
	}
	byName := map[string]*tar.Header{}
	for _, h := range hs {
		byName[h.Name] = h
	}
	// Depth first, names sorted bytewise within each directory.
	wantOrder := []string{"./", "a/", "a/b/", "a/h0", "a/hello", "a/link", "a/suid", "abs-link"}
	for i, w := range wantOrder {
		if names[i] != w {
			t.Fatalf("order: got %v, want prefix %v", names[:len(wantOrder)], wantOrder)
		}
	}
	check := func(name string, typ byte, mode int64) *tar.Header {
		t.Helper()
		h := byName[name]
		if h == nil {
			t.Fatalf("no entry %q in %v", name, names)
		}
		if h.Typeflag != typ || h.Mode != mode {
			t.Errorf("%s: type %q mode %o, want %q %o", name, h.Typeflag, h.Mode, typ, mode)
		}
		return h
	}
	check("a/b/", tar.TypeDir, 0o750)
	check("a/suid", tar.TypeReg, 0o4755)
	check("sgid", tar.TypeReg, 0o2750)
	check("tmp/", tar.TypeDir, 0o1777)
	check("fifo", tar.TypeFifo, 0o640)
	if h := check("a/hello", tar.TypeReg, 0o600); h.PAXRecords["SCHILY.xattr.user.karapace.test"] != "value" {
		t.Errorf("xattr missing: %v", h.PAXRecords)
	}
	if h := check("a/link", tar.TypeSymlink, 0o777); h.Linkname != "hello" {
		t.Errorf("symlink target %q", h.Linkname)
	}
	// The first name in stream order holds the content, the others link to it.
	check("a/h0", tar.TypeReg, 0o644)
	if h := check("m/h2", tar.TypeLink, 0o644); h.Linkname != "a/h0" {
		t.Errorf("hardlink to %q", h.Linkname)
	}
	if h := check("z/h1", tar.TypeLink, 0o644); h.Linkname != "a/h0" {
		t.Errorf("hardlink to %q", h.Linkname)
	}
	if isRoot() {
		if h := check("owned", tar.TypeReg, 0o644); h.Uid != 1000000 || h.Gid != 100033 {
			t.Errorf("owner %d:%d", h.Uid, h.Gid)
		}
		if h := check("ping", tar.TypeReg, 0o644); len(h.PAXRecords["SCHILY.xattr.security.capability"]) != 20 {
			t.Errorf("capability missing: %v", h.PAXRecords)
		}
	}
}

func TestPackSkipsDevicesAndSockets(t *testing.T) {
	needRoot(t, "mknod")
	d := t.TempDir()
	unix.Mknod(filepath.Join(d, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	unix.Mknod(filepath.Join(d, "sda"), unix.S_IFBLK|0o660, int(unix.Mkdev(8, 0)))
	l, err := (&unixSocketFile{}).listen(filepath.Join(d, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	unix.Lsetxattr(d, "trusted.karapace", []byte("x"), 0)
	b, st := packBytes(t, d)
	if st.SkippedDevices != 2 || st.SkippedSockets != 1 || st.SkippedXattrs != 1 || len(tarHeaders(t, b)) != 1 {
		t.Fatalf("stats %+v, entries %d", st, len(tarHeaders(t, b)))
	}
}

// unixSocketFile makes a socket file without importing net for one test.
type unixSocketFile struct{ fd int }

func (l *unixSocketFile) listen(p string) (*unixSocketFile, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return nil, err
	}
	l.fd = fd
	return l, unix.Bind(fd, &unix.SockaddrUnix{Name: p})
}

func (l *unixSocketFile) Close() { unix.Close(l.fd) }

func TestPackUnpackRoundTrip(t *testing.T) {
	src := t.TempDir()
	buildTree(t, src, false)
	b1, _ := packBytes(t, src)
	dst := t.TempDir()
	old := syscall.Umask(0o077) // unpacking must not depend on it
	st, err := unpackLayer(bytes.NewReader(b1), dst, unpackOptions{chown: isRoot()})
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if st.Hardlinks != 2 || st.Files == 0 || st.Dirs == 0 {
		t.Errorf("stats %+v", st)
	}
	b2, _ := packBytes(t, dst)
	if !bytes.Equal(b1, b2) {
		diffStreams(t, b1, b2)
	}
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(dst, "a/h0"), &a)
	unix.Lstat(filepath.Join(dst, "m/h2"), &b)
	if a.Ino != b.Ino || a.Nlink != 3 {
		t.Errorf("hardlinks not restored: %d %d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if _, err := os.Lstat(filepath.Join(dst, "a/hello")); err != nil {
		t.Fatal(err)
	}
	v := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(dst, "a/hello"), "user.karapace.test", v); err != nil || string(v[:n]) != "value" {
		t.Errorf("xattr: %q %v", v[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dst, "a/hello"), "user.overlay.redirect", v); err == nil {
		t.Error("overlay xattr was copied")
	}
}

func diffStreams(t *testing.T, a, b []byte) {
	t.Helper()
	ha, hb := tarHeaders(t, a), tarHeaders(t, b)
	for i := range min(len(ha), len(hb)) {
		x, y := ha[i], hb[i]
		if x.Name != y.Name || x.Mode != y.Mode || x.Uid != y.Uid || x.Gid != y.Gid || x.Typeflag != y.Typeflag || x.Linkname != y.Linkname || x.Size != y.Size || fmt.Sprint(x.PAXRecords) != fmt.Sprint(y.PAXRecords) {
			t.Fatalf("entry %d differs:\n%+v\n%+v", i, x, y)
		}
	}
	t.Fatalf("streams differ (%d vs %d entries, %d vs %d bytes)", len(ha), len(hb), len(a), len(b))
}

func TestPackOverlayMarkers(t *testing.T) {
	needRoot(t, "whiteout char devices, trusted xattrs")
	upper := t.TempDir()
	writeFile(t, upper, "keep", "k")
	unix.Mknod(filepath.Join(upper, "gone"), unix.S_IFCHR, 0)
	os.MkdirAll(filepath.Join(upper, "opq/sub"), 0o755)
	writeFile(t, upper, "opq/new", "n")
	unix.Lsetxattr(filepath.Join(upper, "opq"), "trusted.overlay.opaque", []byte("y"), 0)
	os.MkdirAll(filepath.Join(upper, "uopq"), 0o755)
	unix.Lsetxattr(filepath.Join(upper, "uopq"), "user.overlay.opaque", []byte("y"), 0)
	os.MkdirAll(filepath.Join(upper, "notopq"), 0o755)
	unix.Lsetxattr(filepath.Join(upper, "notopq"), "user.overlay.opaque", []byte("x"), 0)
	writeFile(t, upper, "xwh", "")
	unix.Lsetxattr(filepath.Join(upper, "xwh"), "user.overlay.whiteout", []byte("y"), 0)
	b, st := packBytes(t, upper)
	var names []string
	for _, h := range tarHeaders(t, b) {
		names = append(names, h.Name)
	}
	// A whiteout takes the place of the name it hides.
	want := "./ .wh.gone keep notopq/ opq/ opq/.wh..wh..opq opq/new opq/sub/ uopq/ uopq/.wh..wh..opq .wh.xwh"
	if got := strings.Join(names, " "); got != want || st.Whiteouts != 2 || st.Opaques != 2 {
		t.Fatalf("got %s\nwant %s\n%+v", got, want, st)
	}

	// Overlay mode recreates the markers the userxattr way, and packs back the same.
	dst := t.TempDir()
	if _, err := unpackLayer(bytes.NewReader(b), dst, unpackOptions{overlay: true, chown: true}); err != nil {
		t.Fatal(err)
	}
	var sst unix.Stat_t
	if err := unix.Lstat(filepath.Join(dst, "gone"), &sst); err != nil || sst.Mode&unix.S_IFMT != unix.S_IFCHR || sst.Rdev != 0 {
		t.Fatalf("whiteout not a 0:0 char device: %v %o", err, sst.Mode)
	}
	v := make([]byte, 8)
	if n, _ := unix.Lgetxattr(filepath.Join(dst, "opq"), "user.overlay.opaque", v); string(v[:n]) != "y" {
		t.Fatal("opaque xattr not set")
	}
	if b2, _ := packBytes(t, dst); !bytes.Equal(b, b2) {
		diffStreams(t, b, b2)
	}

	// Apply mode deletes what the markers hide.
	lower := t.TempDir()
	writeFile(t, lower, "gone", "old")
	writeFile(t, lower, "xwh/deep/file", "old")
	writeFile(t, lower, "opq/old", "old")
	writeFile(t, lower, "opq/sub/old", "old")
	writeFile(t, lower, "uopq/old", "old")
	writeFile(t, lower, "notopq/old", "stays")
	if _, err := unpackLayer(bytes.NewReader(b), lower, unpackOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"gone", "xwh", "opq/old", "opq/sub/old", "uopq/old"} {
		if _, err := os.Lstat(filepath.Join(lower, p)); err == nil {
			t.Errorf("%s survived its whiteout", p)
		}
	}
	for _, p := range []string{"keep", "opq/new", "opq/sub", "notopq/old"} {
		if _, err := os.Lstat(filepath.Join(lower, p)); err != nil {
			t.Errorf("%s missing: %v", p, err)
		}
	}
}

// TestOverlayRealWhiteouts checks against the kernel: a deletion made
// through a real overlay mount is packed as a whiteout, and an upper dir
// unpacked in overlay mode hides the lower file again.
func TestOverlayRealWhiteouts(t *testing.T) {
	needRoot(t, "mount overlay")
	base := t.TempDir()
	lower, upper, work, merged := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{lower, upper, work, merged} {
		os.MkdirAll(d, 0o755)
	}
	writeFile(t, lower, "etc/motd", "hi")
	writeFile(t, lower, "etc/keep", "k")
	writeFile(t, lower, "opt/x/y", "y")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	os.Remove(filepath.Join(merged, "etc/motd"))
	os.RemoveAll(filepath.Join(merged, "opt"))
	os.MkdirAll(filepath.Join(merged, "opt"), 0o755) // an opaque directory
	writeFile(t, merged, "opt/new", "n")
	unix.Unmount(merged, 0)
	b, st := packBytes(t, upper)
	if st.Whiteouts != 1 || st.Opaques != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Replay the upper into a fresh dir (overlay mode) and mount again.
	upper2 := filepath.Join(base, "upper2")
	os.Mkdir(upper2, 0o755)
	if _, err := unpackLayer(bytes.NewReader(b), upper2, unpackOptions{overlay: true, chown: true}); err != nil {
		t.Fatal(err)
	}
	// Without userxattr the kernel reads trusted.overlay.opaque; copy ours over.
	unix.Lsetxattr(filepath.Join(upper2, "opt"), "trusted.overlay.opaque", []byte("y"), 0)
	os.RemoveAll(work)
	os.Mkdir(work, 0o755)
	if err := unix.Mount("overlay", merged, "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper2, work)); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(merged, 0)
	if _, err := os.Lstat(filepath.Join(merged, "etc/motd")); err == nil {
		t.Error("whiteout does not hide etc/motd")
	}
	if _, err := os.Lstat(filepath.Join(merged, "opt/x")); err == nil {
		t.Error("opaque dir does not hide opt/x")
	}
	if _, err := os.Lstat(filepath.Join(merged, "etc/keep")); err != nil {
		t.Error("etc/keep hidden")
	}
}

func TestGNUTarReadsOurStreams(t *testing.T) {
	tarBin := needTool(t, "tar")
	src := t.TempDir()
	buildTree(t, src, false)
	b, _ := packBytes(t, src)
	stream := filepath.Join(t.TempDir(), "layer.tar")
	os.WriteFile(stream, b, 0o644)

	cmd := exec.Command(tarBin, "--xattrs", "--numeric-owner", "-tvf", stream)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tvf: %v\n%s", err, out)
	}
	list := string(out)
	mustContain(t, "tar -tvf", list, "m/h2 link to a/h0", "z/h1 link to a/h0", "a/link -> hello", "1970-01-01 00:00", "-rwsr-xr-x", "drwxrwxrwt", "prw-r-----")
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if !strings.Contains(line, "1970-01-01 00:00") {
			t.Errorf("mtime not 0: %s", line)
		}
	}

	dst := t.TempDir()
	args := []string{"--xattrs", "--xattrs-include=user.*", "--xattrs-include=security.capability", "--numeric-owner", "-xpf", stream, "-C", dst}
	if out, err := exec.Command(tarBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
	v := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(dst, "a/hello"), "user.karapace.test", v); err != nil || string(v[:n]) != "value" {
		t.Errorf("GNU tar did not see the xattr: %q %v", v[:n], err)
	}
	if isRoot() {
		if n, err := unix.Lgetxattr(filepath.Join(dst, "ping"), "security.capability", v); err != nil || n != 20 {
			t.Errorf("GNU tar did not restore the capability: %v", err)
		}
	}
	// What GNU tar extracted is the same tree: it packs to the same bytes.
	if isRoot() {
		if b2, _ := packBytes(t, dst); !bytes.Equal(b, b2) {
			diffStreams(t, b, b2)
		}
	}
}

func TestWeReadGNUTarStreams(t *testing.T) {
	tarBin := needTool(t, "tar")
	src := t.TempDir()
	buildTree(t, src, false)
	want, _ := packBytes(t, src)
	stream := filepath.Join(t.TempDir(), "gnu.tar")
	args := []string{"--format=posix", "--xattrs", "--xattrs-include=user.karapace.*", "--xattrs-include=security.capability", "--numeric-owner", "-cf", stream, "-C", src, "."}
	if out, err := exec.Command(tarBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("tar -c: %v\n%s", err, out)
	}
	// Also the old GNU format, with long-name records.
	streamGNU := filepath.Join(t.TempDir(), "gnu-old.tar")
	if out, err := exec.Command(tarBin, "--format=gnu", "--numeric-owner", "-cf", streamGNU, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar -c: %v\n%s", err, out)
	}
	for _, s := range []string{stream, streamGNU} {
		f, _ := os.Open(s)
		dst := t.TempDir()
		_, err := unpackLayer(f, dst, unpackOptions{chown: isRoot()})
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if s == streamGNU {
			continue // no xattrs in that format
		}
		if got, _ := packBytes(t, dst); !bytes.Equal(got, want) && isRoot() {
			diffStreams(t, want, got)
		}
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dst, "a/hello"), &st)
		if st.Mtim.Sec == 0 {
			t.Error("mtime from GNU tar not restored")
		}
	}
}

// hostileEntry is one entry of a hand-made tar stream.
type hostileEntry struct {
	hdr  tar.Header
	body string
}

func hostileTar(t *testing.T, entries ...hostileEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("writing hostile header %q: %v", h.Name, err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func reg(name, body string) hostileEntry {
	return hostileEntry{tar.Header{Typeflag: tar.TypeReg, Name: name}, body}
}
func sym(name, target string) hostileEntry {
	return hostileEntry{tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target}, ""}
}
func hard(name, target string) hostileEntry {
	return hostileEntry{tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}, ""}
}
func dirEntry(name string) hostileEntry {
	return hostileEntry{tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}, ""}
}

// treeListing describes a tree (names, types, modes, sizes, content hashes,
// link targets) so that any change shows.
func treeListing(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			fmt.Fprintf(&b, "%s error %v\n", p, err)
			return nil
		}
		fmt.Fprintf(&b, "%s %v %d", p, fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() {
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", sha256.Sum256(c))
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", l)
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

func TestUnpackRefusesHostileStreams(t *testing.T) {
	base := t.TempDir()
	sentinel := filepath.Join(base, "sentinel")
	writeFile(t, sentinel, "file", "precious")
	os.Symlink("/etc/passwd", filepath.Join(sentinel, "passwd-link"))

	// A stream of a truncated file: the header says 1000 bytes, 100 follow.
	truncated := hostileTar(t, reg("ok", "fine"), hostileEntry{tar.Header{Typeflag: tar.TypeReg, Name: "short", Size: 1000}, ""})
	truncated = truncated[:512+512+512+100]
	// A PAX header bigger than the reader's limit.
	hugePAX := hostileTar(t, reg("ok", "fine"))
	hugePAX = hugePAX[:len(hugePAX)-1024]
	rec := "comment=" + strings.Repeat("x", 2<<20) + "\n"
	rec = fmt.Sprintf("%d %s", len(rec)+8, rec)
	hugePAX = append(hugePAX, rawHeader("PaxHeaders/big", 'x', int64(len(rec)))...)
	hugePAX = append(hugePAX, rec...)
	hugePAX = append(hugePAX, make([]byte, (512-len(rec)%512)%512)...)
	hugePAX = append(hugePAX, rawHeader("big", '0', 0)...)
	hugePAX = append(hugePAX, make([]byte, 1024)...)
	// A size field that is not a number.
	badSize := hostileTar(t, reg("size", "x"))
	copy(badSize[124:136], "zzzzzzzzzzz\x00")
	fixChecksum(badSize[:512])

	cases := []struct {
		name   string
		stream []byte
		entry  string // the error must name it
		want   string
	}{
		{"dotdot", hostileTar(t, reg("../evil", "x")), "../evil", `".."`},
		{"dotdot-inside", hostileTar(t, dirEntry("a/"), reg("a/../../evil", "x")), "a/../../evil", `".."`},
		{"absolute", hostileTar(t, reg("/tmp/evil", "x")), "/tmp/evil", "absolute"},
		{"symlink-abs-then-write", hostileTar(t, sym("link", sentinel), reg("link/evil", "x")), "link/evil", "symlink"},
		{"symlink-rel-then-write", hostileTar(t, sym("link", "../sentinel"), reg("link/evil", "x")), "link/evil", "symlink"},
		{"symlink-then-mkdir", hostileTar(t, sym("link", "../sentinel"), dirEntry("link/newdir/")), "link/newdir/", "symlink"},
		{"dir-replaced-by-symlink", hostileTar(t, dirEntry("d/"), reg("d/x", "x"), sym("d", sentinel), reg("d/evil", "x")), "d/evil", "symlink"},
		{"hardlink-dotdot", hostileTar(t, reg("a", "x"), hard("h", "a/../../sentinel/file")), "h", "invalid"},
		{"hardlink-outside-rel", hostileTar(t, hard("h", "../sentinel/file")), "h", "invalid"},
		{"hardlink-outside-abs", hostileTar(t, hard("h", filepath.Join(sentinel, "file"))), "h", "invalid"},
		{"hardlink-not-in-stream", hostileTar(t, hard("h", "etc/passwd")), "h", "not an earlier regular file"},
		{"hardlink-to-symlink", hostileTar(t, sym("s", sentinel+"/file"), hard("h", "s")), "h", "not an earlier regular file"},
		{"hardlink-through-symlink", hostileTar(t, sym("s", "../sentinel"), hard("h", "s/file")), "h", "not an earlier regular file"},
		{"char-device", hostileTar(t, hostileEntry{tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}, ""}), "null", "device node 1:3 refused"},
		{"block-device", hostileTar(t, hostileEntry{tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}, ""}), "sda", "block device"},
		{"unknown-type", hostileTar(t, hostileEntry{tar.Header{Typeflag: 'X', Name: "what"}, ""}), "what", "unsupported entry type"},
		{"root-as-symlink", hostileTar(t, sym("./", sentinel)), "./", "target directory itself"},
		{"whiteout-dotdot", hostileTar(t, reg(".wh...", "")), ".wh...", "invalid name"},
		{"whiteout-dot", hostileTar(t, reg("a/.wh..", "")), "a/.wh..", "invalid name"},
		{"whiteout-as-symlink", hostileTar(t, sym(".wh.x", sentinel)), ".wh.x", "whiteout marker must be a regular file"},
		{"long-name", hostileTar(t, reg(strings.Repeat("d/", 2100)+"f", "x")), "d/d/d/", "longer than 4095"},
		{"long-component", hostileTar(t, reg(strings.Repeat("n", 300), "x")), "nnnn", "longer than 255"},
		{"truncated", truncated, "short", "unexpected EOF"},
		{"huge-pax-header", hugePAX, `after "ok"`, "too long"},
		{"bad-size-field", badSize, "(start of stream)", "invalid"},
		// GNU tar -S of a 100 GB file holding 3 bytes: 10 KiB of stream.
		{"sparse-bomb-gnu", readTestdata(t, "tar/sparse-100g-gnu.tar"), "big", "sparse files are not supported"},
		{"sparse-bomb-pax", readTestdata(t, "tar/sparse-100g-pax.tar"), "big", "sparse files are not supported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := treeListing(t, sentinel)
			target := filepath.Join(base, "target-"+c.name)
			os.Mkdir(target, 0o755)
			for _, overlay := range []bool{false, true} {
				_, err := unpackLayer(bytes.NewReader(c.stream), target, unpackOptions{overlay: overlay, chown: isRoot()})
				if err == nil {
					t.Fatalf("hostile stream accepted (overlay=%v)", overlay)
				}
				if !strings.Contains(err.Error(), c.entry) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("error %q does not name %q / say %q", err, c.entry, c.want)
				}
			}
			if after := treeListing(t, sentinel); after != before {
				t.Fatalf("sentinel changed:\n%s\n%s", before, after)
			}
			// Nothing but targets and the sentinel appeared beside them.
			for _, n := range dirNames(t, base) {
				if n != "sentinel" && !strings.HasPrefix(n, "target-") {
					t.Fatalf("%s appeared outside the target", n)
				}
			}
		})
	}
	if len(cases) < 15 {
		t.Fatalf("corpus too small: %d", len(cases))
	}
}

// rawHeader is a ustar header made by hand, for what tar.Writer refuses.
func rawHeader(name string, typ byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], "00000000000\x00")
	h[156] = typ
	copy(h[257:265], "ustar\x0000")
	fixChecksum(h)
	return h
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fixChecksum(h []byte) {
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

func TestUnpackDropsForgedOverlayXattrs(t *testing.T) {
	s := hostileTar(t, hostileEntry{tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755, PAXRecords: map[string]string{
		"SCHILY.xattr.user.overlay.opaque":     "y",
		"SCHILY.xattr.user.overlay.redirect":   "/etc",
		"SCHILY.xattr.trusted.overlay.opaque":  "y",
		"SCHILY.xattr.security.selinux":        "system_u:object_r:shadow_t:s0",
		"SCHILY.xattr.user.karapace.kept":      "yes",
		"SCHILY.xattr.system.posix_acl_access": "x",
	}}, ""})
	dst := t.TempDir()
	st, err := unpackLayer(bytes.NewReader(s), dst, unpackOptions{overlay: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.SkippedXattrs != 5 {
		t.Errorf("skipped %d xattrs, want 5", st.SkippedXattrs)
	}
	v := make([]byte, 64)
	for _, n := range []string{"user.overlay.opaque", "user.overlay.redirect", "trusted.overlay.opaque"} {
		if _, err := unix.Lgetxattr(filepath.Join(dst, "d"), n, v); err == nil {
			t.Errorf("%s was set", n)
		}
	}
	if n, err := unix.Lgetxattr(filepath.Join(dst, "d"), "user.karapace.kept", v); err != nil || string(v[:n]) != "yes" {
		t.Errorf("user xattr not set: %v", err)
	}
}

func TestUnpackReplacesSymlinkInsteadOfFollowing(t *testing.T) {
	base := t.TempDir()
	writeFile(t, base, "sentinel/file", "precious")
	dst := filepath.Join(base, "dst")
	os.Mkdir(dst, 0o755)
	s := hostileTar(t, sym("link", filepath.Join(base, "sentinel/file")), reg("link", "overwritten?"),
		sym("rel", "../sentinel/file"), hostileEntry{tar.Header{Typeflag: tar.TypeFifo, Name: "rel", Mode: 0o600}, ""})
	if _, err := unpackLayer(bytes.NewReader(s), dst, unpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "sentinel/file")); string(b) != "precious" {
		t.Fatal("wrote through a symlink")
	}
	if fi, _ := os.Lstat(filepath.Join(dst, "link")); !fi.Mode().IsRegular() {
		t.Fatal("symlink not replaced")
	}
}

func TestUnpackReplacesAndDefersModes(t *testing.T) {
	dst := t.TempDir()
	writeFile(t, dst, "was-dir/inner/file", "x")
	writeFile(t, dst, "was-file", "x")
	s := hostileTar(t,
		reg("was-dir", "now a file"),
		dirEntry("was-file/"),
		hostileEntry{tar.Header{Typeflag: tar.TypeDir, Name: "ro/", Mode: 0o555}, ""},
		reg("ro/inside", "written before the mode is applied"),
		hostileEntry{tar.Header{Typeflag: tar.TypeReg, Name: "implicit/parent/file", Mode: 0o644, Size: 1}, "x"},
		reg("dup", "first"),
		reg("dup", "second"),
		hostileEntry{tar.Header{Typeflag: tar.TypeDir, Name: "gone-ro/", Mode: 0o500}, ""},
		reg(".wh.gone-ro", ""),
		hostileEntry{tar.Header{Typeflag: tar.TypeDir, Name: "link-ro/", Mode: 0o500}, ""},
		sym("link-ro", "ro"),
	)
	if _, err := unpackLayer(bytes.NewReader(s), dst, unpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "was-dir")); string(b) != "now a file" {
		t.Error("dir not replaced by file")
	}
	if fi, _ := os.Stat(filepath.Join(dst, "was-file")); !fi.IsDir() {
		t.Error("file not replaced by dir")
	}
	if fi, _ := os.Stat(filepath.Join(dst, "ro")); fi.Mode().Perm() != 0o555 {
		t.Errorf("ro mode %v", fi.Mode())
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "dup")); string(b) != "second" {
		t.Error("later entry does not win")
	}
	if _, err := os.Stat(filepath.Join(dst, "implicit/parent/file")); err != nil {
		t.Error(err)
	}
	os.Chmod(filepath.Join(dst, "ro"), 0o755)
}

// TestUnpackManyEntriesBoundedMemory streams 300000 whiteouts (no disk
// writes in apply mode) and checks the heap does not grow with them.
func TestUnpackManyEntriesBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	pr, pw := io.Pipe()
	const n = 300_000
	go func() {
		tw := tar.NewWriter(pw)
		for i := range n {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%03d/.wh.f%07d", i/1000, i), Mode: 0o644})
		}
		tw.Close()
		pw.Close()
	}()
	dst := t.TempDir()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	st, err := unpackLayer(pr, dst, unpackOptions{})
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if err != nil || st.Entries != n {
		t.Fatal(st.Entries, err)
	}
	if m1.HeapInuse > m0.HeapInuse+8<<20 {
		t.Fatalf("heap grew by %d bytes over %d entries", m1.HeapInuse-m0.HeapInuse, n)
	}
}

func TestLayers(t *testing.T) {
	s := newTestStore(t)
	tarHash := mustPut(t, s, "tar bytes")
	other := mustPut(t, s, "other")
	l := &layer{Kind: layerBase, ObjectRefs: []string{other}, ReadOnly: true, TarHash: tarHash}
	h, err := s.putLayer(l)
	if err != nil {
		t.Fatal(err)
	}
	canon, _ := json.Marshal(map[string]any{"kind": "Base", "object_refs": l.ObjectRefs, "read_only": true, "tar_hash": tarHash})
	if h != storeBlake3Hex(canon) || l.Hash != h {
		t.Fatalf("hash %s is not blake3 of %s", h, canon)
	}
	if len(l.ObjectRefs) != 2 {
		t.Fatalf("tar hash not added to refs: %v", l.ObjectRefs)
	}
	if h2, _ := s.putLayer(&layer{Kind: layerBase, ObjectRefs: []string{other, tarHash, other}, ReadOnly: true, TarHash: tarHash}); h2 != h {
		t.Fatal("same layer, different hash")
	}
	got, err := s.getLayer(h)
	if err != nil || got.TarHash != tarHash || got.Kind != layerBase {
		t.Fatalf("getLayer: %+v %v", got, err)
	}
	child, err := s.putLayer(&layer{Kind: layerSnapshot, Parent: h, TarHash: other})
	if err != nil {
		t.Fatal(err)
	}
	if names, _ := s.listLayers(); len(names) != 2 {
		t.Fatal(names)
	}

	// Refused: missing objects or parent, bad kind, bad hashes.
	missing := strings.Repeat("ab", 32)
	for _, bad := range []*layer{
		{Kind: layerBase, TarHash: missing},
		{Kind: layerBase, TarHash: tarHash, Parent: missing},
		{Kind: "Other", TarHash: tarHash},
		{Kind: layerBase, TarHash: "nothex"},
	} {
		if _, err := s.putLayer(bad); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}

	// Corruption of any kind is reported as a store error naming the file.
	file := s.path("layers", child)
	orig, _ := os.ReadFile(file)
	for name, content := range map[string]string{
		"edited":        strings.Replace(string(orig), `"Snapshot"`, `"Base"`, 1),
		"not canonical": strings.Replace(string(orig), `,"kind"`, `, "kind"`, 1),
		"garbage":       "{",
		"unknown field": strings.Replace(string(orig), `{`, `{"x":1,`, 1),
	} {
		os.WriteFile(file, []byte(content), 0o600)
		_, err := s.getLayer(child)
		if err == nil || exitCodeOf(err) != exitStore || !strings.Contains(err.Error(), file) {
			t.Errorf("%s layer: %v", name, err)
		}
	}
	os.WriteFile(file, orig, 0o600)
	if _, err := s.getLayer(child); err != nil {
		t.Fatal(err)
	}
	// A valid layer under the wrong name.
	os.Rename(file, s.path("layers", missing))
	if _, err := s.getLayer(missing); err == nil || exitCodeOf(err) != exitStore {
		t.Errorf("renamed layer: %v", err)
	}
	if err := s.deleteLayer(missing); err != nil || s.hasLayer(missing) {
		t.Fatal(err)
	}
}

func TestUnpackObjectTo(t *testing.T) {
	s := newTestStore(t)
	src := t.TempDir()
	buildTree(t, src, false)
	w, _ := s.newObjectWriter()
	if _, err := packLayer(src, w); err != nil {
		t.Fatal(err)
	}
	h, _, err := w.commit()
	if err != nil {
		t.Fatal(err)
	}
	envDir := filepath.Join(s.root, "env", strings.Repeat("e", 64))
	os.MkdirAll(envDir, 0o700)
	dest := filepath.Join(envDir, "upper")
	if err := s.unpackObjectTo(h, dest, unpackOptions{chown: isRoot()}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "a/h0")); string(b) != "linked content" {
		t.Fatal("content")
	}
	// Add bytes after the tar's end: the tar reads fine, but the hash
	// check at EOF must keep the tree from appearing.
	p := s.path("objects", h)
	f, _ := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
	f.Write(make([]byte, 4096))
	f.Close()
	dest2 := filepath.Join(envDir, "upper2")
	err = s.unpackObjectTo(h, dest2, unpackOptions{})
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt object unpacked: %v", err)
	}
	if names := dirNames(t, envDir); len(names) != 1 || names[0] != "upper" {
		t.Fatalf("leftovers beside dest: %v", names)
	}
	// A leftover partial dir from a crash is removed by lock recovery.
	os.Mkdir(dest2+unpackPartialSuffix, 0o700)
	mustLock(t, s, "x").unlock()
	if _, err := os.Stat(dest2 + unpackPartialSuffix); err == nil {
		t.Fatal("partial dir survived recovery")
	}
}

// benchDir is the tree the pack/unpack benchmarks work on (bench/pack.sh
// extracts a Debian root filesystem for it).
func benchDir(b *testing.B) string {
	dir := os.Getenv("KARAPACE_BENCH_DIR")
	if dir == "" {
		b.Skip("set KARAPACE_BENCH_DIR to a root filesystem (see bench/pack.sh)")
	}
	return dir
}

// fastest keeps the shortest of the times it is given: other processes
// on a shared machine only ever add time, so the minimum is the figure
// that compares.
type fastest time.Duration

func (f *fastest) add(d time.Duration) {
	if *f == 0 || d < time.Duration(*f) {
		*f = fastest(d)
	}
}

func (f fastest) s() float64 { return time.Duration(f).Seconds() }

func timeCmd(b *testing.B, name string, args ...string) time.Duration {
	start := time.Now()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(start)
}

func init() {
	// Packs KP_DIR into a new object of the store KP_STORE and prints the
	// process's peak RSS, for the memory figure of the benchmark.
	testHelpers["store-bench-pack"] = func() {
		s := helperStore()
		w, _ := s.newObjectWriter()
		_, err := packLayer(os.Getenv("KP_DIR"), w)
		helperCheck(err)
		h, _, err := w.commit()
		helperCheck(err)
		fmt.Println(h, helperPeakRSS())
	}
}

// BenchmarkPackVsGNUTar times, in the same run, GNU tar -cf of the tree to
// a file and our pack of it into a store object (hashing as it writes):
// both without fsync, and both with (tar followed by sync of its file;
// our commit syncs). It reports the ratios and our peak RSS.
func BenchmarkPackVsGNUTar(b *testing.B) {
	dir := benchDir(b)
	tarBin := needTool(b, "tar")
	work := b.TempDir()
	s, err := openStore(filepath.Join(work, "store"))
	if err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(work, "gnu.tar")
	timeCmd(b, tarBin, "-cf", out, "-C", dir, ".") // warm the page cache
	var tarT, tarSyncT, oursT, oursSyncT fastest
	var size int64
	b.ResetTimer()
	for range b.N {
		os.Remove(out)
		tarT.add(timeCmd(b, tarBin, "-cf", out, "-C", dir, "."))
		os.Remove(out)
		tarSyncT.add(timeCmd(b, "sh", "-c", `tar -cf "$0" -C "$1" . && sync "$0"`, out, dir))

		start := time.Now()
		w, _ := s.newObjectWriter()
		if _, err := packLayer(dir, w); err != nil {
			b.Fatal(err)
		}
		if _, err := w.sum(); err != nil {
			b.Fatal(err)
		}
		oursT.add(time.Since(start))
		size = w.n
		w.abort()

		start = time.Now()
		w, _ = s.newObjectWriter()
		if _, err := packLayer(dir, w); err != nil {
			b.Fatal(err)
		}
		h, _, err := w.commit()
		if err != nil {
			b.Fatal(err)
		}
		oursSyncT.add(time.Since(start))
		s.deleteObject(h)
	}
	b.StopTimer()
	b.ReportMetric(float64(size)/1e6, "MB")
	b.ReportMetric(tarT.s(), "tar-s")
	b.ReportMetric(oursT.s(), "pack-s")
	b.ReportMetric(oursT.s()/tarT.s(), "pack/tar")
	b.ReportMetric(oursSyncT.s()/tarSyncT.s(), "pack+fsync/tar+sync")

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KARAPACE_TEST_HELPER=store-bench-pack", "KP_STORE="+s.root, "KP_DIR="+dir)
	o, err := cmd.Output()
	var h string
	var rss int64
	if _, serr := fmt.Sscan(string(o), &h, &rss); err != nil || serr != nil {
		b.Fatalf("pack helper: %v %s", err, o)
	}
	b.ReportMetric(float64(rss)/1024, "peak-RSS-MiB")
}

// BenchmarkUnpackVsGNUTar times GNU tar -xf of the tree's tar against our
// unpack of the same tree's object (verifying its hash), both keeping
// owners (run as root).
func BenchmarkUnpackVsGNUTar(b *testing.B) {
	dir := benchDir(b)
	tarBin := needTool(b, "tar")
	work := b.TempDir()
	s, err := openStore(filepath.Join(work, "store"))
	if err != nil {
		b.Fatal(err)
	}
	gnu := filepath.Join(work, "gnu.tar")
	timeCmd(b, tarBin, "--xattrs", "--format=posix", "-cf", gnu, "-C", dir, ".")
	w, _ := s.newObjectWriter()
	if _, err := packLayer(dir, w); err != nil {
		b.Fatal(err)
	}
	h, _, err := w.commit()
	if err != nil {
		b.Fatal(err)
	}
	var tarT, oursT fastest
	b.ResetTimer()
	for i := range b.N {
		d1 := filepath.Join(work, fmt.Sprint("gnu", i))
		os.Mkdir(d1, 0o755)
		tarT.add(timeCmd(b, tarBin, "--xattrs", "--numeric-owner", "-xpf", gnu, "-C", d1))
		d2 := filepath.Join(work, fmt.Sprint("ours", i))
		start := time.Now()
		if err := s.unpackObjectTo(h, d2, unpackOptions{chown: isRoot()}); err != nil {
			b.Fatal(err)
		}
		oursT.add(time.Since(start))
		b.StopTimer()
		os.RemoveAll(d1)
		os.RemoveAll(d2)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(tarT.s(), "tar-x-s")
	b.ReportMetric(oursT.s(), "unpack-s")
	b.ReportMetric(oursT.s()/tarT.s(), "unpack/tar")
}

// FuzzUnpackLayer feeds arbitrary streams to unpackLayer: it may refuse
// them, but must not panic or touch anything outside its target.
func FuzzUnpackLayer(f *testing.F) {
	src := f.TempDir()
	writeFile(f, src, "a/b", "content")
	os.Symlink("b", filepath.Join(src, "a/l"))
	os.Link(filepath.Join(src, "a/b"), filepath.Join(src, "h"))
	unix.Lsetxattr(filepath.Join(src, "a/b"), "user.x", []byte("y"), 0)
	var buf bytes.Buffer
	packLayer(src, &buf)
	f.Add(buf.Bytes())
	var tw bytes.Buffer
	w := tar.NewWriter(&tw)
	for _, e := range []struct {
		name string
		typ  byte
		link string
	}{{"d/", tar.TypeDir, ""}, {"l", tar.TypeSymlink, "../.."}, {"l/x", tar.TypeReg, ""}, {"h", tar.TypeLink, "d"}, {".wh.d", tar.TypeReg, ""}, {"d/.wh..wh..opq", tar.TypeReg, ""}} {
		w.WriteHeader(&tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o755})
	}
	w.Close()
	f.Add(tw.Bytes())
	base := f.TempDir()
	writeFile(f, base, "sentinel/file", "precious")
	f.Fuzz(func(t *testing.T, data []byte) {
		target, err := os.MkdirTemp(base, "target-")
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			filepath.Walk(target, func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.IsDir() {
					os.Chmod(p, 0o755)
				}
				return nil
			})
			os.RemoveAll(target)
		}()
		for _, overlay := range []bool{false, true} {
			unpackLayer(bytes.NewReader(data), target, unpackOptions{overlay: overlay})
		}
		if b, err := os.ReadFile(filepath.Join(base, "sentinel/file")); err != nil || string(b) != "precious" {
			t.Fatal("sentinel changed")
		}
		for _, n := range dirNames(t, base) {
			if n != "sentinel" && !strings.HasPrefix(n, "target-") {
				t.Fatalf("%s appeared outside the target", n)
			}
		}
	})
}
