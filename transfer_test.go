package main

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestExportImportMock(t *testing.T) {
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	writeFile(t, filepath.Join(a.store, "env", id, "upper"), "root/notes.txt", "carried\n")
	a.ok("restore", "demo", strings.TrimSpace(a.ok("commit", "demo")))
	file := filepath.Join(a.base, "demo.tar")
	var res struct {
		EnvID string `json:"env_id"`
		Blobs int    `json:"blobs"`
		Bytes int64  `json:"bytes"`
	}
	a.jsonOut(&res, "export", "demo", file)
	if res.EnvID != id || res.Blobs < 8 || res.Bytes == 0 {
		t.Fatalf("export: %+v", res)
	}
	first, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if stdout := a.ok("export", "demo", "-"); stdout != string(first) {
		t.Fatal("two exports of the same environment differ")
	}
	if ents, _ := filepath.Glob(filepath.Join(a.base, ".demo.tar.*")); len(ents) != 0 {
		t.Fatalf("export left %v", ents)
	}
	tr := tar.NewReader(bytes.NewReader(first))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Mode != 0o644 {
			t.Fatalf("entry %s: %+v", h.Name, h)
		}
	}
	if len(names) != res.Blobs+1 || names[0] != exportIndexName || names[1] != "blobs/metadata/"+id || !strings.HasPrefix(names[len(names)-1], "blobs/object/") {
		t.Fatalf("entries: %v", names)
	}

	b := newKP(t)
	if out := b.ok("import", file); out != id+"\n" {
		t.Fatalf("import printed %q", out)
	}
	if out := b.ok("exec", "demo", "--", "echo", "hi"); out != "mock["+id[:12]+"]: echo hi\n" {
		t.Fatalf("exec of the imported environment: %q", out)
	}
	if got, _ := os.ReadFile(filepath.Join(b.store, "env", id, "upper", "root/notes.txt")); string(got) != "carried\n" {
		t.Fatalf("the writable layer: %q", got)
	}
	b.ok("verify-store")
	var again map[string]any
	b.jsonOut(&again, "import", file)
	if again["already_present"] != true {
		t.Fatalf("second import: %v", again)
	}
	c := newKP(t)
	if code, out, errOut := c.runStdin(string(first), "import", "-", "--name", "copy"); code != 0 || out != id+"\n" {
		t.Fatalf("import from stdin: %d %q %s", code, out, errOut)
	}
	mustContain(t, "list", c.ok("list"), "copy")

	// One changed byte anywhere in an object, and nothing is kept.
	bad := bytes.Clone(first)
	bad[len(bad)-2048] ^= 0x40
	os.WriteFile(file, bad, 0o644)
	d := newKP(t)
	d.fails(1, "is corrupt", "import", file)
	d.emptyStore()
}

// exportEntry is one entry of an archive under test.
type exportEntry struct {
	name string
	data []byte
}

func exportReadArchive(t *testing.T, b []byte) []exportEntry {
	t.Helper()
	var out []exportEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out = append(out, exportEntry{h.Name, data})
	}
}

func exportWriteArchive(ents []exportEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Size: int64(len(e.data)), Mode: 0o644})
		tw.Write(e.data)
	}
	tw.Close()
	return buf.Bytes()
}

// exportWithIndex rewrites the index of an archive's entries with edit.
func exportWithIndex(t *testing.T, ents []exportEntry, edit func(*exportIndex)) []exportEntry {
	t.Helper()
	var idx exportIndex
	if err := json.Unmarshal(ents[0].data, &idx); err != nil {
		t.Fatal(err)
	}
	edit(&idx)
	b, _ := json.Marshal(&idx)
	out := append([]exportEntry{{exportIndexName, b}}, ents[1:]...)
	return out
}

// Every way an archive can be wrong is refused, and nothing of it stays.
func TestImportRefusesDamage(t *testing.T) {
	src, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := testRemoteEnv(t, src, 1, 1, 40000, 30000)
	other := testRemoteEnv(t, src, 2, 2, 1000, 1000)
	cl, err := src.closureOf(m)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := src.exportEnv(cl, &buf, nil); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	ents := exportReadArchive(t, good)
	last := len(ents) - 1
	otherCl, _ := src.closureOf(other)
	extraObj := otherCl.objects[0]
	rc, _ := src.openObject(extraObj.Hash)
	extraData, _ := io.ReadAll(rc)
	rc.Close()
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 1; return b }

	cases := map[string]struct {
		archive []byte
		want    string
	}{
		"not an archive":    {[]byte("hello"), "not a karapace export archive"},
		"truncated":         {good[:len(good)-4096], "the archive"},
		"changed object":    {exportWriteArchive(append(append([]exportEntry{}, ents[:last]...), exportEntry{ents[last].name, flip(ents[last].data, 100)})), "is corrupt"},
		"changed layer":     {exportWriteArchive(append(append(append([]exportEntry{}, ents[:2]...), exportEntry{ents[2].name, flip(ents[2].data, bytes.Index(ents[2].data, []byte(`"tar_hash":"`))+12)}), ents[3:]...)), "in the archive is corrupt"},
		"changed metadata":  {exportWriteArchive(append(append([]exportEntry{ents[0]}, exportEntry{ents[1].name, bytes.Replace(ents[1].data, []byte("built"), []byte("frozn"), 1)}), ents[2:]...)), "metadata is invalid"},
		"missing entry":     {exportWriteArchive(ents[:last]), "ends before"},
		"entries reordered": {exportWriteArchive(append(append(append([]exportEntry{}, ents[:last-1]...), ents[last]), ents[last-1])), "where its index promises"},
		"missing blob": {exportWriteArchive(exportWithIndex(t, ents[:last], func(x *exportIndex) { x.Blobs = x.Blobs[:len(x.Blobs)-1] })),
			"the archive lacks object"},
		"blob not needed": {exportWriteArchive(append(exportWithIndex(t, ents, func(x *exportIndex) { x.Blobs = append(x.Blobs, extraObj) }), exportEntry{"blobs/object/" + extraObj.Hash, extraData})),
			"which the environment does not need"},
		"entry after the last": {exportWriteArchive(append(append([]exportEntry{}, ents...), exportEntry{"extra", []byte("x")})), `holds "extra" after its last blob`},
		"junk after the end":   {append(bytes.Clone(good), []byte("junk")...), "data after its end"},
		"index not first":      {exportWriteArchive(append([]exportEntry{ents[1]}, ents...)), "not a karapace export archive"},
		"wrong version": {exportWriteArchive(exportWithIndex(t, ents, func(x *exportIndex) { x.Version = 2 })),
			"version 2"},
		"metadata out of place": {exportWriteArchive(exportWithIndex(t, ents, func(x *exportIndex) { x.Blobs[0], x.Blobs[1] = x.Blobs[1], x.Blobs[0] })),
			"does not start with the metadata"},
	}
	for name, c := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			s, err := openStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			e := newEngine(s, os.Getenv, nil)
			a, err := openExport(bytes.NewReader(c.archive), nil)
			if err == nil {
				_, err = e.receive(a, receiveOptions{kind: "import"})
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want %q", err, c.want)
			}
			for _, d := range []string{"objects", "layers", "metadata", "wal", "staging"} {
				if n := remoteCountFiles(t, s.path(d)); n != 0 {
					t.Fatalf("store/%s holds %d file(s) after the refusal", d, n)
				}
			}
		})
	}
	// Zero padding after the end (as tar(1) writes) is fine.
	s, _ := openStore(t.TempDir())
	a, err := openExport(bytes.NewReader(append(bytes.Clone(good), make([]byte, 10240)...)), nil)
	if err == nil {
		_, err = newEngine(s, os.Getenv, nil).receive(a, receiveOptions{kind: "import"})
	}
	if err != nil {
		t.Fatalf("a padded archive: %v", err)
	}
	if rep, err := s.verify(t.Context()); err != nil || len(rep.Bad) != 0 || rep.Metadata != 1 {
		t.Fatalf("after import: %v %+v", err, rep)
	}
}

// The archive's directory is synced after the rename, or a crash could
// lose the name FILE: inotify sees the directory opened (to fsync it)
// after the archive moved in.
func TestExportSyncsDirectory(t *testing.T) {
	a := newKP(t)
	remoteMockEnv(t, a, "demo", "")
	dir := filepath.Join(a.base, "out")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	a.ok("export", "demo", filepath.Join(dir, "demo.tar"))
	buf := make([]byte, 64<<10)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("reading inotify events: %v", err)
	}
	var events []string
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		// struct inotify_event: wd, mask, cookie, len, then the name.
		mask := binary.NativeEndian.Uint32(buf[off+4:])
		size := int(binary.NativeEndian.Uint32(buf[off+12:]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+size]), "\x00")
		switch {
		case mask&unix.IN_MOVED_TO != 0:
			events = append(events, "moved in "+name)
		case mask&unix.IN_OPEN != 0 && name == "":
			events = append(events, "directory opened")
		}
		off += unix.SizeofInotifyEvent + size
	}
	if got := strings.Join(events, ", "); !strings.Contains(got, "moved in demo.tar, directory opened") {
		t.Fatalf("events in %s: %s; want the directory opened after demo.tar moved in", dir, got)
	}
}
