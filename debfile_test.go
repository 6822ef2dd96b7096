package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// debTestAr builds an ar archive from name, content pairs.
func debTestAr(members ...string) []byte {
	var b bytes.Buffer
	b.WriteString(debArMagic)
	for i := 0; i+1 < len(members); i += 2 {
		fmt.Fprintf(&b, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", members[i], 0, 0, 0, "100644", len(members[i+1]))
		b.WriteString(members[i+1])
		if len(members[i+1])%2 == 1 {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// debTestTar builds a tar of name, content pairs (names ending in "/" are
// directories).
func debTestTar(t testing.TB, entries ...string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for i := 0; i+1 < len(entries); i += 2 {
		h := &tar.Header{Name: entries[i], Mode: 0o644, Size: int64(len(entries[i+1])), Typeflag: tar.TypeReg, ModTime: time.Unix(1e9, 0)}
		if strings.HasSuffix(h.Name, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(entries[i+1]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func debTestGzip(b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func TestDebReadSynthetic(t *testing.T) {
	control := debTestTar(t, "./", "", "./control", "Package: x\nVersion: 1\n")
	data := debTestTar(t, "./", "", "./usr/", "", "./usr/a", "odd")
	deb := debTestAr("debian-binary", "2.0\n", "_extra", "skipped", "control.tar.gz/", string(debTestGzip(control)), "data.tar", string(data), "trailing", "not read")
	var seen []string
	err := readDeb(bytes.NewReader(deb), func(name string, size int64, r io.Reader) error {
		seen = append(seen, fmt.Sprintf("%s:%d", name, size))
		return nil // members need not be read
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{fmt.Sprintf("control.tar.gz:%d", len(debTestGzip(control))), fmt.Sprintf("data.tar:%d", len(data))}; !reflect.DeepEqual(seen, want) {
		t.Fatalf("members %v, want %v", seen, want)
	}
	st, err := debControlFields(bytes.NewReader(deb))
	if err != nil || st.get("package") != "x" {
		t.Fatalf("control %v, %v", st, err)
	}
	var got []byte
	if err := debDataTar(bytes.NewReader(deb), func(r io.Reader) error {
		got, err = io.ReadAll(r)
		return err
	}); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data.tar: %v, equal %v", err, bytes.Equal(got, data))
	}
	// fn's error comes back as is.
	boom := fmt.Errorf("boom")
	if err := debDataTar(bytes.NewReader(deb), func(io.Reader) error { return boom }); err != boom {
		t.Fatalf("callback error: %v", err)
	}
}

// TestDebReadHostile feeds broken and hostile archives: each is refused
// with an error that says what is wrong, and nothing panics.
func TestDebReadHostile(t *testing.T) {
	ctl := string(debTestGzip(debTestTar(t, "./control", "Package: x\n")))
	data := string(debTestTar(t, "./", ""))
	good := debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "data.tar", data)
	hdr := func(name, size string) string {
		return fmt.Sprintf("%-16s%-12d%-6d%-6d%-8s%-10s`\n", name, 0, 0, 0, "100644", size)
	}
	cases := []struct{ name, in, want string }{
		{"empty", "", "not a .deb: empty input"},
		{"bad magic", "!<arhc>\nxxxxxxxx", "no ar magic"},
		{"short magic", "!<ar", "no ar magic"},
		{"tar instead", data, "no ar magic"},
		{"no members", debArMagic, "ends at offset 8 without its debian-binary member"},
		{"truncated header", debArMagic + "debian-binary   0   ", "header at offset 8 is truncated (20 of 60 bytes)"},
		{"bad terminator", debArMagic + strings.Replace(hdr("debian-binary", "4"), "`\n", "XX", 1) + "2.0\n", "bad header terminator"},
		{"size not a number", debArMagic + hdr("debian-binary", "4x"), "size field \"4x        \" is not a number"},
		{"negative size", debArMagic + hdr("debian-binary", "-4"), "is not a number"},
		{"empty size", debArMagic + hdr("debian-binary", ""), "is not a number"},
		{"empty name", debArMagic + hdr("", "4") + "2.0\n", "empty member name"},
		{"name with slash", debArMagic + hdr("a/b", "4") + "2.0\n", "member name \"a/b\" contains '/'"},
		{"name with control char", debArMagic + hdr("a\x01b", "4") + "2.0\n", "contains '\\x01'"},
		{"name with high byte", debArMagic + hdr("a\xffb", "4") + "2.0\n", "contains"},
		{"not debian-binary first", string(debTestAr("control.tar.gz", ctl)), "first member is \"control.tar.gz\""},
		{"format 3.0", string(debTestAr("debian-binary", "3.0\n")), "debian-binary says \"3.0\\n\""},
		{"huge debian-binary", debArMagic + hdr("debian-binary", "9999999999") + "2.0\n", "debian-binary at offset 8 is 9999999999 bytes"},
		{"truncated debian-binary", debArMagic + hdr("debian-binary", "4") + "2.", "truncated: 2 of its 4 bytes"},
		{"missing control", string(debTestAr("debian-binary", "2.0\n")), "without its control.tar member"},
		{"data before control", string(debTestAr("debian-binary", "2.0\n", "data.tar", data)), "unexpected member \"data.tar\" at offset 72 where control.tar belongs"},
		{"unknown member", string(debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "evil", "x")), "unexpected member \"evil\""},
		{"two controls", string(debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "control.tar.gz", ctl)), "unexpected member \"control.tar.gz\""},
		{"missing data", string(debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl)), "without its data.tar member"},
		{"bzip2 data", string(debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "data.tar.bz2", "BZh9")), "data.tar.bz2: unsupported compression bz2"},
		{"lzma control", string(debTestAr("debian-binary", "2.0\n", "control.tar.lzma", "x")), "unsupported compression lzma"},
		{"unknown compression", string(debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "data.tar.lz4", "x")), "data.tar.lz4: unknown compression"},
		{"huge data size", string(good[:len(good)-len(data)-60]) + hdr("data.tar", "9999999999") + data, "member data.tar at offset"},
		{"missing padding", debArMagic + hdr("debian-binary", "3") + "2.0", "debian-binary says"},
		{"odd member without padding", string(debTestAr("debian-binary", "2.0\n")) + hdr("_x", "1") + "x", "padding byte after member _x"},
	}
	for _, c := range cases {
		var err error
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("%s: panic %v", c.name, r)
				}
			}()
			err = debDataTar(strings.NewReader(c.in), func(r io.Reader) error {
				_, err := io.Copy(io.Discard, r)
				return err
			})
		}()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// Broken compressed members: errors from the decoders, named.
	for name, content := range map[string]string{"data.tar.gz": "not gzip", "data.tar.xz": "not xz", "data.tar.zst": "not zstd"} {
		in := debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, name, content)
		err := debDataTar(bytes.NewReader(in), func(io.Reader) error { return nil })
		if err == nil {
			t.Errorf("%s with garbage: no error", name)
		}
	}
	// A gzip member whose end is corrupt is caught even if fn stops early.
	gz := debTestGzip(debTestTar(t, "./a", strings.Repeat("x", 5000)))
	gz[len(gz)-5] ^= 0xff // the CRC
	in := debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "data.tar.gz", string(gz))
	if err := debDataTar(bytes.NewReader(in), func(io.Reader) error { return nil }); err == nil || !strings.Contains(err.Error(), "data.tar.gz") {
		t.Errorf("corrupt gzip trailer: %v", err)
	}
	// Control files that are not one paragraph.
	for ctlTar, want := range map[string]string{
		string(debTestTar(t, "./md5sums", "x")):                "has no control file",
		string(debTestTar(t, "./control", "")):                 "control file is empty",
		string(debTestTar(t, "./control", "A: 1\n\nB: 2\n")):   "more than one paragraph",
		string(debTestTar(t, "./control", "A: 1\nbad line\n")): "control: line 2",
		"not a tar": "control.tar",
	} {
		in := debTestAr("debian-binary", "2.0\n", "control.tar", ctlTar, "data.tar", data)
		if _, err := debControlFields(bytes.NewReader(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("control %q: got %v, want %q", debClip([]byte(ctlTar)), err, want)
		}
	}
}

func FuzzReadDeb(f *testing.F) {
	ctl := string(debTestGzip(debTestTar(f, "./control", "Package: x\n")))
	data := string(debTestTar(f, "./", "", "./a", "b"))
	f.Add(debTestAr("debian-binary", "2.0\n", "control.tar.gz", ctl, "data.tar", data))
	f.Add(debTestAr("debian-binary", "2.0\n", "control.tar", data, "data.tar.gz", ctl))
	f.Add(debTestAr("debian-binary", "2.0\n", "_x", "1", "control.tar.xz", "\xfd7zXZ\x00", "data.tar.zst", "\x28\xb5\x2f\xfd"))
	f.Fuzz(func(t *testing.T, b []byte) {
		debDataTar(bytes.NewReader(b), func(r io.Reader) error {
			tr := tar.NewReader(r)
			for {
				if _, err := tr.Next(); err != nil {
					return nil
				}
			}
		})
		debControlFields(bytes.NewReader(b))
		readDeb(bytes.NewReader(b), func(string, int64, io.Reader) error { return nil })
	})
}

// debTestDeb downloads a package of the bookworm index, checked against the
// SHA-256 the index gives.
func debTestDeb(t *testing.T, ix *debIndex, name string) string {
	t.Helper()
	p := ix.lookup(name)
	if p == nil {
		t.Fatalf("%s is not in the index", name)
	}
	f := debTestFetch(t, debTestMirror+"/"+p.Filename, filepath.Base(p.Filename), false)
	if got := debTestSHA256(t, f); got != p.SHA256 {
		// A stale cached file: the archive replaced the version.
		f = debTestFetch(t, debTestMirror+"/"+p.Filename, filepath.Base(p.Filename), true)
		if got = debTestSHA256(t, f); got != p.SHA256 {
			t.Fatalf("%s: sha256 %s, Packages says %s", p.Filename, got, p.SHA256)
		}
	}
	return f
}

// debTestCompare reads a .deb with our code and with dpkg-deb and compares
// the data.tar byte for byte and the control fields.
func debTestCompare(t *testing.T, deb string) debStanza {
	t.Helper()
	want, err := exec.Command("dpkg-deb", "--fsys-tarfile", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", deb, err)
	}
	f, err := os.Open(deb)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []byte
	if err := debDataTar(f, func(r io.Reader) error {
		got, err = io.ReadAll(r)
		return err
	}); err != nil {
		t.Fatalf("%s: %v", deb, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: our data.tar (%d bytes) differs from dpkg-deb's (%d bytes)", deb, len(got), len(want))
	}
	f.Seek(0, 0)
	st, err := debControlFields(f)
	if err != nil {
		t.Fatalf("%s: %v", deb, err)
	}
	out, err := exec.Command("dpkg-deb", "-f", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb -f %s: %v", deb, err)
	}
	var theirs debStanza
	if err := readDebStanzas(bytes.NewReader(out), func(s debStanza) error { theirs = s; return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, theirs) {
		t.Fatalf("%s: control fields differ:\nours   %q\ndpkg's %q", deb, st, theirs)
	}
	return st
}

func TestDebRealPackages(t *testing.T) {
	needTool(t, "dpkg-deb")
	ix := debTestIndex(t)
	for _, name := range []string{"hello", "base-files", "libc6", "tzdata"} {
		deb := debTestDeb(t, ix, name)
		st := debTestCompare(t, deb)
		p := ix.lookup(name)
		if st.get("Package") != name || st.get("Version") != p.Version {
			t.Fatalf("%s: control says %s %s, the index %s", name, st.get("Package"), st.get("Version"), p.Version)
		}
		// The index's relations are the control file's.
		deps, err := parseDebDeps(st.get("Depends"))
		if err != nil || !reflect.DeepEqual(deps, p.Depends) {
			t.Fatalf("%s: Depends %v vs index %v (%v)", name, deps, p.Depends, err)
		}
		fi, _ := os.Stat(deb)
		t.Logf("%s %s: %d bytes, data and control identical to dpkg-deb's", name, p.Version, fi.Size())
	}
}

// TestDebBuiltByDpkgDeb reads packages dpkg-deb builds with each
// compression it offers.
func TestDebBuiltByDpkgDeb(t *testing.T) {
	needTool(t, "dpkg-deb")
	dir := t.TempDir()
	root := filepath.Join(dir, "pkg")
	writeFile(t, root, "DEBIAN/control", "Package: karapace-test\nVersion: 1:2.0~rc1-3\nArchitecture: all\nMaintainer: Test <t@example.org>\nDescription: test package\n with a long description\n .\n and a paragraph\n")
	writeFile(t, root, "usr/bin/tool", "#!/bin/sh\necho hi\n")
	writeFile(t, root, "usr/share/doc/karapace-test/big", strings.Repeat("karapace data ", 100000))
	if err := os.Symlink("tool", filepath.Join(root, "usr/bin/alias")); err != nil {
		t.Fatal(err)
	}
	for _, z := range []string{"zstd", "gzip", "none", "xz"} {
		deb := filepath.Join(dir, "test-"+z+".deb")
		out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Z"+z, "--build", root, deb).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb -Z%s: %v\n%s", z, err, out)
		}
		var members []string
		f, err := os.Open(deb)
		if err != nil {
			t.Fatal(err)
		}
		err = readDeb(f, func(name string, size int64, r io.Reader) error {
			members = append(members, name)
			return nil
		})
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ext := map[string]string{"zstd": ".zst", "gzip": ".gz", "none": "", "xz": ".xz"}[z]
		if members[1] != "data.tar"+ext {
			t.Fatalf("-Z%s: members %v", z, members)
		}
		st := debTestCompare(t, deb)
		if st.get("Version") != "1:2.0~rc1-3" || st.get("Description") != "test package\n with a long description\n .\n and a paragraph" {
			t.Fatalf("-Z%s: control %q", z, st)
		}
		t.Logf("-Z%s: members %v", z, members)
	}
}

func TestDebMergedUsr(t *testing.T) {
	var in bytes.Buffer
	tw := tar.NewWriter(&in)
	mt := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./bin/x", Typeflag: tar.TypeReg, Mode: 0o755, Size: 3},
		{Name: "./lib/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./lib/x86_64-linux-gnu/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./lib/x86_64-linux-gnu/libc.so.6", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
		{Name: "./lib64", Typeflag: tar.TypeSymlink, Linkname: "usr/lib64"},
		{Name: "./sbin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./sbin/y", Typeflag: tar.TypeLink, Linkname: "./bin/x"},
		{Name: "./sbin/z", Typeflag: tar.TypeSymlink, Linkname: "/bin/x"},
		{Name: "./usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./usr/share/w", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
		{Name: "./usr/bin/w", Typeflag: tar.TypeLink, Linkname: "./usr/share/w"},
		{Name: "./binary/", Typeflag: tar.TypeDir, Mode: 0o755}, // not bin
		{Name: "./" + strings.Repeat("long/", 30) + "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
	} {
		h.ModTime, h.Uname, h.Gname = mt, "root", "root"
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("abc"))
		}
	}
	tw.Close()
	var out, out2 bytes.Buffer
	if err := debMergedUsr(bytes.NewReader(in.Bytes()), &out, debUsrDirs); err != nil {
		t.Fatal(err)
	}
	debMergedUsr(bytes.NewReader(in.Bytes()), &out2, debUsrDirs)
	if !bytes.Equal(out.Bytes(), out2.Bytes()) {
		t.Fatal("output differs between runs")
	}
	var got []string
	tr := tar.NewReader(bytes.NewReader(out.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		s := h.Name
		if h.Linkname != "" {
			s += " -> " + h.Linkname
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			s += " " + string(b)
		}
		if !h.ModTime.Equal(mt) {
			t.Fatalf("%s: mtime %v", h.Name, h.ModTime)
		}
		got = append(got, s)
	}
	want := []string{
		"./", "./usr/bin/x abc",
		"./usr/lib/x86_64-linux-gnu/", "./usr/lib/x86_64-linux-gnu/libc.so.6 abc",
		"./usr/sbin/y -> ./usr/bin/x", "./usr/sbin/z -> /bin/x",
		"./usr/", "./usr/bin/", "./usr/share/w abc", "./usr/bin/w -> ./usr/share/w",
		"./binary/", "./" + strings.Repeat("long/", 30) + "f abc",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	// Without "./" prefixes.
	var plain bytes.Buffer
	if err := debMergedUsr(bytes.NewReader(debTestTar(t, "bin/", "", "bin/a", "1", "libx32/b", "2")), &plain, debUsrDirs); err != nil {
		t.Fatal(err)
	}
	tr = tar.NewReader(&plain)
	var names []string
	for h, err := tr.Next(); err == nil; h, err = tr.Next() {
		names = append(names, h.Name)
	}
	if !reflect.DeepEqual(names, []string{"usr/bin/a", "usr/libx32/b"}) {
		t.Fatalf("plain names %v", names)
	}
	// A top directory that is a file is refused.
	if err := debMergedUsr(bytes.NewReader(debTestTar(t, "./bin", "x")), io.Discard, debUsrDirs); err == nil || !strings.Contains(err.Error(), "./bin is a regular file") {
		t.Fatalf("bin as a file: %v", err)
	}
	if err := debMergedUsr(strings.NewReader(strings.Repeat("x", 1024)), io.Discard, debUsrDirs); err == nil {
		t.Fatal("garbage input accepted")
	}

	// GNU tar unpacks the output into a merged-/usr tree.
	gnutar := needTool(t, "tar")
	dir := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		os.Symlink("usr/"+d, filepath.Join(dir, d))
	}
	cmd := exec.Command(gnutar, "-x", "--no-same-owner", "-C", dir)
	cmd.Stdin = bytes.NewReader(out.Bytes())
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, b)
	}
	for p, content := range map[string]string{"bin/x": "abc", "usr/sbin/y": "abc", "lib/x86_64-linux-gnu/libc.so.6": "abc", "usr/bin/w": "abc"} {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || string(b) != content {
			t.Fatalf("%s: %q %v", p, b, err)
		}
	}
	a, _ := os.Stat(filepath.Join(dir, "usr/bin/x"))
	b, _ := os.Stat(filepath.Join(dir, "usr/sbin/y"))
	if !os.SameFile(a, b) {
		t.Fatal("usr/sbin/y is not a hard link of usr/bin/x")
	}
	if l, err := os.Readlink(filepath.Join(dir, "usr/sbin/z")); err != nil || l != "/bin/x" {
		t.Fatalf("usr/sbin/z: %q %v", l, err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "bin")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("bin is no longer a symlink")
	}
}

// TestDebMergedUsrReal rewrites libc6's real data.tar and checks that its
// entries moved and its contents did not change.
func TestDebMergedUsrReal(t *testing.T) {
	ix := debTestIndex(t)
	deb := debTestDeb(t, ix, "libc6")
	f, err := os.Open(deb)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	if err := debDataTar(f, func(r io.Reader) error { return debMergedUsr(r, &out, debUsrDirs) }); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&out)
	n, moved := 0, 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		top, _, _ := strings.Cut(strings.TrimPrefix(h.Name, "./"), "/")
		for _, d := range debUsrDirs {
			if top == d {
				t.Fatalf("%s left outside usr/", h.Name)
			}
		}
		if strings.HasPrefix(h.Name, "./usr/lib64/") || strings.HasPrefix(h.Name, "./usr/lib/x86_64-linux-gnu/ld-linux") {
			moved++
		}
	}
	if n < 50 || moved == 0 {
		t.Fatalf("%d entries, %d of them under usr/lib64 or the loader", n, moved)
	}
	t.Logf("libc6: %d entries rewritten for merged /usr", n)
}
