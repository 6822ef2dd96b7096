package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDebDepsParse(t *testing.T) {
	for in, want := range map[string][][]debDep{
		"":      nil,
		"  \n ": nil,
		"libc6": {{{Name: "libc6"}}},
		"libc6 (>= 2.34), zlib1g (>= 1:1.1.4)": {
			{{Name: "libc6", Op: ">=", Version: "2.34"}},
			{{Name: "zlib1g", Op: ">=", Version: "1:1.1.4"}},
		},
		"debconf (>= 0.5) | debconf-2.0": {{{Name: "debconf", Op: ">=", Version: "0.5"}, {Name: "debconf-2.0"}}},
		"perl:any, python3:native (<<3.12)": {
			{{Name: "perl", ArchQual: "any"}},
			{{Name: "python3", ArchQual: "native", Op: "<<", Version: "3.12"}},
		},
		"a(=1.0-1)|b ( >> 2~rc1 ),\n c (< 1), d (> 2), e (<= 3)": {
			{{Name: "a", Op: "=", Version: "1.0-1"}, {Name: "b", Op: ">>", Version: "2~rc1"}},
			{{Name: "c", Op: "<=", Version: "1"}},
			{{Name: "d", Op: ">=", Version: "2"}},
			{{Name: "e", Op: "<=", Version: "3"}},
		},
		"libstdc++6 (>= 4.1.1), g++-12": {{{Name: "libstdc++6", Op: ">=", Version: "4.1.1"}}, {{Name: "g++-12"}}},
	} {
		got, err := parseDebDeps(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %+v, want %+v", in, got, want)
		}
	}
	for in, msg := range map[string]string{
		"a,,b":             "relation 2 (\"\"): empty alternative",
		"a, b,":            "relation 3",
		"a | | b":          "empty alternative",
		"Foo":              "\"Foo\" is not a package name",
		"-a":               "not a package name",
		"a (>= 1":          "without ')'",
		"a (~ 1)":          "constraint \"~ 1\" has no relation",
		"a (=> 1)":         "\"=>\" is not a version relation",
		"a (>= )":          "empty version",
		"a (>= x1)":        "does not start with a digit",
		"a:":               "qualifier \"\" is not an architecture",
		"a:AMD64":          "qualifier \"AMD64\"",
		"a [amd64]":        "architecture restriction \"[amd64]\": only source packages",
		"a (>= 1) [!i386]": "architecture restriction",
		"a <!nocheck>":     "build profile \"<!nocheck>\"",
		"a b":              "unexpected \"b\" after \"a\"",
		"a (>= 1) junk":    "unexpected \"junk\"",
	} {
		_, err := parseDebDeps(in)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: got %v, want %q", in, err, msg)
		}
	}
}

func FuzzDebDeps(f *testing.F) {
	for _, s := range []string{"libc6 (>= 2.34), zlib1g (>= 1:1.1.4)", "a | b:any (<< 1~) | c", "a [amd64] <x>", "a (>= 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := parseDebDeps(s)
		if err != nil {
			return
		}
		// What parses prints back to something that parses the same.
		var parts []string
		for _, alts := range g {
			parts = append(parts, debGroupString(alts))
		}
		g2, err := parseDebDeps(strings.Join(parts, ", "))
		if err != nil || !reflect.DeepEqual(g, g2) {
			t.Fatalf("%q → %q → %+v, %v", s, strings.Join(parts, ", "), g2, err)
		}
	})
}

// debTestStanza makes one Packages paragraph.
func debTestStanza(name, version, arch string, extra ...string) string {
	s := "Package: " + name + "\nVersion: " + version + "\nArchitecture: " + arch +
		"\nFilename: pool/main/" + name + "_" + version + "_" + arch + ".deb\nSize: 100\nSHA256: " + strings.Repeat("0", 64) +
		"\nDescription: test\n more text\n"
	for _, e := range extra {
		s += e + "\n"
	}
	return s + "\n"
}

func debTestNames(ps []*debPackage) []string {
	var n []string
	for _, p := range ps {
		n = append(n, p.Name)
	}
	return n
}

func TestDebIndexResolve(t *testing.T) {
	pk := strings.Join([]string{
		debTestStanza("base", "1", "amd64", "Essential: yes", "Priority: required", "Pre-Depends: libc", "Depends: awk, sh | dash"),
		debTestStanza("libc", "2.36-9", "amd64", "Priority: required", "Source: glibc (2.36-9)"),
		debTestStanza("libc", "2.36-10", "amd64", "Priority: required", "Source: glibc"),
		debTestStanza("libc", "3.0", "i386"), // another architecture
		debTestStanza("libc", "2.36-1", "amd64"),
		debTestStanza("mawk", "1.3", "amd64", "Priority: required", "Provides: awk"),
		debTestStanza("gawk", "5", "amd64", "Priority: optional", "Provides: awk"),
		debTestStanza("dash", "0.5", "amd64", "Essential: yes", "Depends: libc (>= 2.36-10)"),
		debTestStanza("apt", "2.6", "amd64", "Priority: important", "Depends: libapt (= 2.6), gpgv | gpgv2 | gpgv1, base-passwd:any"),
		debTestStanza("libapt", "2.6", "amd64"),
		debTestStanza("gpgv1", "1", "amd64"),
		debTestStanza("gpgv-new", "2", "amd64", "Provides: gpgv2 (= 2)"),
		debTestStanza("base-passwd", "3", "amd64", "Multi-Arch: allowed"),
		debTestStanza("needy", "1", "all", "Depends: libc (>= 9) | virt (>= 1)"),
		debTestStanza("pv", "1", "all", "Provides: virt"),
		debTestStanza("pv2", "1", "all", "Provides: virt (= 2)"),
		debTestStanza("native", "1", "all", "Depends: base-passwd:amd64, libapt:native"),
		debTestStanza("foreign", "1", "all", "Depends: libapt:any"),
	}, "")
	ix := newDebIndex("amd64")
	if err := ix.readPackages(strings.NewReader(pk)); err != nil {
		t.Fatal(err)
	}
	if l := ix.lookup("libc"); l == nil || l.Version != "2.36-10" || l.Source != "glibc" || l.Arch != "amd64" || l.Size != 100 {
		t.Fatalf("libc: %+v", l)
	}
	if ix.lookup("base").Source != "base" || !ix.lookup("base").Essential || ix.lookup("mawk").Essential {
		t.Fatal("Source or Essential wrong")
	}
	if ix.lookup("missing") != nil {
		t.Fatal("lookup of a missing package")
	}
	mb, err := ix.minbase()
	if err != nil {
		t.Fatal(err)
	}
	// awk is virtual: mawk (required) over gawk; "sh | dash": dash is essential
	// anyway; among "gpgv | gpgv2 | gpgv1" a real package (gpgv1) wins
	// over a provider of an earlier one (gpgv-new); base-passwd:any is
	// Multi-Arch: allowed.
	if got, want := debTestNames(mb), []string{"apt", "base", "base-passwd", "dash", "gpgv1", "libapt", "libc", "mawk"}; !slices.Equal(got, want) {
		t.Fatalf("minbase %v, want %v", got, want)
	}
	es, err := ix.essential()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := debTestNames(es), []string{"base", "dash", "libc", "mawk"}; !slices.Equal(got, want) {
		t.Fatalf("essential %v, want %v", got, want)
	}
	// A versioned dependency: only a versioned Provides counts.
	got, err := ix.resolve([]string{"needy"})
	if err != nil || !slices.Equal(debTestNames(got), []string{"needy", "pv2"}) {
		t.Fatalf("needy: %v %v", debTestNames(got), err)
	}
	if got, err := ix.resolve([]string{"native"}); err != nil || !slices.Equal(debTestNames(got), []string{"base-passwd", "libapt", "native"}) {
		t.Fatalf("native: %v %v", debTestNames(got), err)
	}
	// A seed that is only provided resolves to its provider.
	if got, err := ix.resolve([]string{"virt"}); err != nil || !slices.Equal(debTestNames(got), []string{"pv"}) {
		t.Fatalf("virt: %v %v", debTestNames(got), err)
	}
	for seed, msg := range map[string]string{
		"nothere": `package "nothere" is not in the archive`,
		"foreign": `foreign depends on "libapt:any", which no package in the archive satisfies`,
	} {
		if _, err := ix.resolve([]string{seed}); err == nil || err.Error() != msg {
			t.Errorf("resolve %s: %v, want %s", seed, err, msg)
		}
	}
	ix2 := newDebIndex("amd64")
	if err := ix2.readPackages(strings.NewReader(debTestStanza("foo", "1", "amd64", "Pre-Depends: libbar (>= 2)") + debTestStanza("libbar", "1", "amd64"))); err != nil {
		t.Fatal(err)
	}
	if _, err := ix2.resolve([]string{"foo"}); err == nil || err.Error() != `foo pre-depends on "libbar (>= 2)", which no package in the archive satisfies` {
		t.Errorf("unsatisfiable: %v", err)
	}
}

func TestDebIndexMalformed(t *testing.T) {
	for in, msg := range map[string]string{
		"Package: Foo\nArchitecture: all\n":                                                         "paragraph at line 1: Package: \"Foo\" is not a package name",
		"Version: 1\n":                                                                              "Package: missing package name",
		"Package: foo\nVersion: 1\n":                                                                "package foo: no Architecture",
		"Package: foo\nArchitecture: all\nVersion: x\n":                                             "package foo: Version: version \"x\"",
		debTestStanza("ok", "1", "all") + "Package: foo\nArchitecture: all\n":                       "paragraph at line 10: package foo: Version: empty version",
		strings.Replace(debTestStanza("foo", "1", "all"), "Size: 100", "Size: big", 1):              "Size \"big\"",
		strings.Replace(debTestStanza("foo", "1", "all"), "Filename: pool", "Filename: ../pool", 1): "Filename \"../pool",
		strings.Replace(debTestStanza("foo", "1", "all"), "SHA256: 0", "SHA256: x", 1):              "SHA256 \"x0",
		debTestStanza("foo", "1", "all", "Depends: a [amd64]"):                                      "package foo 1: Depends: relation 1",
		debTestStanza("foo", "1", "all", "Pre-Depends: a (>> )"):                                    "Pre-Depends",
		debTestStanza("foo", "1", "all", "Provides: a | b"):                                         "Provides: \"a | b\"",
		debTestStanza("foo", "1", "all", "Provides: a (>= 1)"):                                      "only \"= version\"",
	} {
		err := newDebIndex("amd64").readPackages(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q:\n got %v\nwant %q", in, err, msg)
		}
	}
	// Another architecture's paragraph is skipped before its fields are checked.
	if err := newDebIndex("amd64").readPackages(strings.NewReader("Package: foo\nArchitecture: i386\nVersion: x\n")); err != nil {
		t.Errorf("foreign paragraph: %v", err)
	}
}

// debTestIndex is bookworm main amd64, read once per test run.
func debTestIndex(t testing.TB) *debIndex {
	t.Helper()
	_, p := debTestArchive(t)
	s := &debTestArchiveState
	s.Lock()
	defer s.Unlock()
	if s.ix != nil {
		return s.ix
	}
	ix, err := debReadIndexFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s.ix = ix
	return ix
}

func debReadIndexFile(p string) (*debIndex, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := newXZReader(f)
	if err != nil {
		return nil, err
	}
	ix := newDebIndex("amd64")
	return ix, ix.readPackages(x)
}

// debTestInstalled lists the packages dpkg's status file in a root
// filesystem tarball records as installed.
func debTestInstalled(t *testing.T, tarPath string) []string {
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("%s has no var/lib/dpkg/status", tarPath)
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "./") != "var/lib/dpkg/status" {
			continue
		}
		var names []string
		err = readDebStanzas(tr, func(s debStanza) error {
			if s.get("Status") == "install ok installed" {
				names = append(names, s.get("Package"))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		return names
	}
}

func debTestMinus(a, b []string) []string {
	var d []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			d = append(d, x)
		}
	}
	return d
}

// TestDebMinbaseReal resolves bookworm's minbase and compares it with what
// mmdebstrap --variant=minbase installed.
func TestDebMinbaseReal(t *testing.T) {
	ix := debTestIndex(t)
	if n := len(ix.pkgs); n < 50000 {
		t.Fatalf("only %d packages in bookworm main amd64", n)
	}
	start := time.Now()
	mb, err := ix.minbase()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	ours := debTestNames(mb)
	es, err := ix.essential()
	if err != nil {
		t.Fatal(err)
	}
	if d := debTestMinus(debTestNames(es), ours); len(d) > 0 || len(es) >= len(mb) {
		t.Fatalf("essential() is not a proper subset of minbase(): %v", d)
	}
	for _, p := range mb {
		if p.Filename == "" || len(p.SHA256) != 64 || p.Size <= 0 {
			t.Fatalf("%s: %+v", p.Name, p)
		}
	}
	theirs := debTestInstalled(t, testRootfsTar(t))
	t.Logf("minbase resolved in %v: %d packages: %s", took, len(ours), strings.Join(ours, " "))
	t.Logf("essential: %d packages: %s", len(es), strings.Join(debTestNames(es), " "))
	t.Logf("mmdebstrap installed %d packages: %s", len(theirs), strings.Join(theirs, " "))
	if missing := debTestMinus(ours, theirs); len(missing) > 0 {
		t.Fatalf("we resolve packages mmdebstrap did not install: %v", missing)
	}
	// The sets are equal. What mmdebstrap could add beyond apt's choice is
	// its merged-/usr handling (usrmerge and its closure); in bookworm apt
	// already picks usrmerge, the first alternative of init-system-helpers'
	// "usrmerge | usr-is-merged", so nothing is left over.
	extra := debTestMinus(theirs, ours)
	um, err := ix.resolve([]string{"usrmerge"})
	if err != nil {
		t.Fatal(err)
	}
	if d := debTestMinus(extra, debTestNames(um)); len(d) > 0 {
		t.Fatalf("mmdebstrap installed %v beyond ours, not for merged /usr", d)
	}
	if !slices.Contains(ours, "usrmerge") || len(extra) != 0 {
		t.Fatalf("expected equal sets with usrmerge in both; mmdebstrap has %v more", extra)
	}
	t.Logf("mmdebstrap's set = ours (%d packages)", len(ours))

	// A bootstrap that lays out merged /usr itself can ask for
	// usr-is-merged instead: usrmerge and the Perl it needs drop out.
	alt, err := ix.resolve(append(ix.minbaseSeed(), "usr-is-merged"))
	if err != nil {
		t.Fatal(err)
	}
	dropped := debTestMinus(ours, debTestNames(alt))
	added := debTestMinus(debTestNames(alt), ours)
	if !slices.Contains(dropped, "usrmerge") || !slices.Equal(added, []string{"usr-is-merged"}) {
		t.Fatalf("with usr-is-merged: dropped %v, added %v", dropped, added)
	}
	t.Logf("with usr-is-merged instead of usrmerge: %d packages; dropped %s", len(alt), strings.Join(dropped, " "))
}

// TestDebIndexMemory measures what the index of bookworm main amd64 keeps.
func TestDebIndexMemory(t *testing.T) {
	_, p := debTestArchive(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	ix, err := debReadIndexFile(p)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	kept := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("readPackages (with xz decoding): %v, %d packages, %.1f MiB kept on the heap", took, len(ix.pkgs), float64(kept)/(1<<20))
	if kept > 80<<20 {
		t.Errorf("the index keeps %d MiB", kept>>20)
	}
	runtime.KeepAlive(ix)
}

// BenchmarkDebIndex reads bookworm's Packages (already decompressed, so
// the figure is ours, not the xz decoder's) and resolves minbase.
func BenchmarkDebIndex(b *testing.B) {
	_, p := debTestArchive(b)
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	x, err := newXZReader(f)
	if err != nil {
		b.Fatal(err)
	}
	text, err := io.ReadAll(x)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("readPackages", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(text)))
		for b.Loop() {
			ix := newDebIndex("amd64")
			if err := ix.readPackages(bytes.NewReader(text)); err != nil {
				b.Fatal(err)
			}
		}
	})
	ix := newDebIndex("amd64")
	if err := ix.readPackages(bytes.NewReader(text)); err != nil {
		b.Fatal(err)
	}
	b.Run("minbase", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ix.minbase(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
