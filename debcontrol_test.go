package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// The real archive the tests use: Debian bookworm from deb.debian.org,
// cached under the user's cache directory so reruns work offline.
const debTestMirror = "http://deb.debian.org/debian"

func debTestCache(t testing.TB) string {
	t.Helper()
	c, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c, "karapace-test", "deb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// debTestFetch downloads url to the cache file name unless it is there
// already (or refresh is set), and returns its path.
func debTestFetch(t testing.TB, url, name string, refresh bool) string {
	t.Helper()
	needReal(t)
	p := filepath.Join(debTestCache(t), name)
	if _, err := os.Stat(p); err == nil && !refresh {
		return p
	}
	err := func() error {
		c := &http.Client{Timeout: 5 * time.Minute}
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		f, err := os.Create(p + ".tmp")
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(p+".tmp", p)
	}()
	need(t, err == nil, fmt.Sprintf("network access to the Debian archive (%v)", err))
	return p
}

func debTestSHA256(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var debTestArchiveState struct {
	sync.Mutex
	rel      *debRelease
	packages string
	ix       *debIndex
}

// debTestArchive returns bookworm's Release, read from the InRelease whose
// signature the embedded Debian keyring verifies, and the path of
// main/binary-amd64/Packages.xz checked against it.
func debTestArchive(t testing.TB) (*debRelease, string) {
	t.Helper()
	s := &debTestArchiveState
	s.Lock()
	defer s.Unlock()
	if s.rel != nil {
		return s.rel, s.packages
	}
	const pkgs = "main/binary-amd64/Packages.xz"
	for attempt := 0; ; attempt++ {
		in := debTestFetch(t, debTestMirror+"/dists/bookworm/InRelease", "bookworm-InRelease", attempt > 0)
		rel := debTestVerifiedRelease(t, in)
		want, ok := rel.SHA256[pkgs]
		if !ok {
			t.Fatalf("InRelease lists no %s", pkgs)
		}
		p := debTestFetch(t, debTestMirror+"/dists/bookworm/"+pkgs, "bookworm-main-amd64-Packages.xz", attempt > 0)
		got := debTestSHA256(t, p)
		st, _ := os.Stat(p)
		if got == want.SHA256 && st.Size() == want.Size {
			s.rel, s.packages = rel, p
			return rel, p
		}
		if attempt > 0 {
			t.Fatalf("%s: sha256 %s (%d bytes), InRelease says %s (%d bytes)", pkgs, got, st.Size(), want.SHA256, want.Size)
		}
		// The archive moved on since the cache was filled: fetch both again.
	}
}

func debTestVerifiedRelease(t testing.TB, inRelease string) *debRelease {
	t.Helper()
	msg, err := os.ReadFile(inRelease)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := defaultArchiveKeyring("debian")
	if err != nil {
		t.Fatal(err)
	}
	text, _, err := kr.verifyClearsigned(msg, time.Now())
	if err != nil {
		t.Fatalf("verifying %s: %v", inRelease, err)
	}
	rel, err := parseDebRelease(text)
	if err != nil {
		t.Fatalf("%s: %v", inRelease, err)
	}
	return rel
}

func TestDebStanzas(t *testing.T) {
	in := "Package: foo\nversion:  1.0 \nDescription: short\n long line\n .\n  indented\n# a comment\nDepends: a,\n b\n\n \t\nPackage: bar\r\nX-Empty:\n\n\n"
	var got []debStanza
	err := readDebStanzas(strings.NewReader(in), func(s debStanza) error {
		got = append(got, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []debStanza{
		{"Package": "foo", "version": "1.0", "Description": "short\n long line\n .\n  indented", "Depends": "a,\n b"},
		{"Package": "bar", "X-Empty": ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got[0].get("VERSION") != "1.0" || got[0].get("depends") != "a,\n b" || got[0].get("missing") != "" {
		t.Fatalf("case-insensitive get fails: %q", got[0])
	}
	// No final newline.
	n := 0
	if err := readDebStanzas(strings.NewReader("A: 1\n\nB: 2"), func(s debStanza) error { n++; return nil }); err != nil || n != 2 {
		t.Fatalf("no final newline: %d paragraphs, %v", n, err)
	}
}

func TestDebStanzasMalformed(t *testing.T) {
	for in, want := range map[string]string{
		" continued\n":          "line 1: continuation line outside a field",
		"A: 1\n\n continued\n":  "line 3: continuation line outside a field",
		"A: 1\nno colon here\n": "line 2: \"no colon here\" is neither a field",
		"A: 1\n: empty\n":       "line 2: empty field name",
		"A: 1\nB: 2\na: 3\n":    "line 3: field \"a\" repeats the one at line 1",
		"A: 1\n-B: 2\n":         "line 2: field name \"-B\" starts with '-'",
		"A: 1\nB C: 2\n":        "line 2: field name \"B C\" contains ' '",
		"A: 1\nB\x01: 2\n":      "line 2: field name",
		"A: 1\n" + strings.Repeat("x", debMaxLine+10) + ": 1\n": "line 2 is longer than",
	} {
		err := readDebStanzas(strings.NewReader(in), func(debStanza) error { return nil })
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", debClip([]byte(in)), err, want)
		}
	}
	// A paragraph past the limit, line by line.
	big := "A: 1\n" + strings.Repeat(" "+strings.Repeat("x", 1000)+"\n", debMaxParagraph/1000+2)
	err := readDebStanzas(strings.NewReader(big), func(debStanza) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "paragraph starting at line 1 is larger") {
		t.Errorf("huge paragraph: %v", err)
	}
	// The callback's error names the paragraph.
	err = readDebStanzas(strings.NewReader("A: 1\n\nB: 2\n"), func(s debStanza) error {
		if s.get("B") != "" {
			return fmt.Errorf("boom")
		}
		return nil
	})
	if err == nil || err.Error() != "paragraph at line 3: boom" {
		t.Errorf("callback error: %v", err)
	}
}

func TestDebReleaseReal(t *testing.T) {
	rel, _ := debTestArchive(t)
	if rel.Origin != "Debian" || rel.Codename != "bookworm" || (rel.Suite != "stable" && rel.Suite != "oldstable") {
		t.Fatalf("Origin %q Suite %q Codename %q", rel.Origin, rel.Suite, rel.Codename)
	}
	if rel.Date.IsZero() || rel.Date.Year() < 2023 || !rel.AcquireByHash {
		t.Fatalf("Date %v Acquire-By-Hash %v", rel.Date, rel.AcquireByHash)
	}
	if !reflect.DeepEqual(rel.Components, []string{"main", "contrib", "non-free-firmware", "non-free"}) {
		t.Fatalf("Components %q", rel.Components)
	}
	if !strings.Contains(" "+strings.Join(rel.Architectures, " ")+" ", " amd64 ") {
		t.Fatalf("Architectures %q", rel.Architectures)
	}
	if len(rel.SHA256) < 500 {
		t.Fatalf("only %d SHA256 entries", len(rel.SHA256))
	}
	for p, h := range rel.SHA256 {
		if len(h.SHA256) != 64 || h.Size < 0 || strings.HasPrefix(p, "/") {
			t.Fatalf("entry %q: %+v", p, h)
		}
	}
	// The unsigned Release file says the same as InRelease's signed text.
	r := debTestFetch(t, debTestMirror+"/dists/bookworm/Release", "bookworm-Release", false)
	b, err := os.ReadFile(r)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := parseDebRelease(b)
	if err != nil {
		t.Fatal(err)
	}
	if plain.Date.Equal(rel.Date) && !reflect.DeepEqual(plain, rel) {
		t.Fatalf("Release and InRelease of the same date differ")
	}
	t.Logf("bookworm Release of %v (valid until %v), %d files listed", rel.Date, rel.ValidUntil, len(rel.SHA256))
}

func TestDebReleaseMalformed(t *testing.T) {
	const good = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nValid-Until: Sat, 1 Jul 2023 08:50:48 +0000\nArchitectures: all amd64\nComponents: main\nAcquire-By-Hash: yes\nSHA256:\n " +
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 12 main/binary-amd64/Packages.xz\n"
	rel, err := parseDebRelease([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	want := &debRelease{
		Origin: "Debian", Suite: "stable", Codename: "bookworm",
		Date:          time.Date(2023, 6, 10, 8, 50, 48, 0, time.UTC),
		ValidUntil:    time.Date(2023, 7, 1, 8, 50, 48, 0, time.UTC),
		Architectures: []string{"all", "amd64"}, Components: []string{"main"},
		SHA256:        map[string]debFileHash{"main/binary-amd64/Packages.xz": {"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", 12}},
		AcquireByHash: true,
	}
	if !reflect.DeepEqual(rel, want) {
		t.Fatalf("got %+v\nwant %+v", rel, want)
	}
	hash := strings.Repeat("ab", 32)
	for in, msg := range map[string]string{
		"":                       "empty file",
		"Suite: a\n\nSuite: b\n": "paragraph at line 3: a Release file has a single paragraph",
		"Origin: x\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n " + hash + " 1 a\n":                   "neither Suite nor Codename",
		"Suite: a\nSHA256:\n " + hash + " 1 a\n":                                                         "Date: missing",
		"Suite: a\nDate: yesterday\nSHA256:\n " + hash + " 1 a\n":                                        "not a date",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 CEST\nSHA256:\n " + hash + " 1 a\n":                   "not UTC",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nValid-Until: soon\nSHA256:\n " + hash + " 1 a\n": "Valid-Until",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\n":                                                "no SHA256 list",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n " + hash + " 1\n":                      "want \"hash size path\"",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n abc 1 a\n":                             "not a SHA-256",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n " + hash + " -1 a\n":                   "size \"-1\"",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n " + hash + " 1 ../a\n":                 "leaves the suite",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n " + hash + " 1 /a\n":                   "leaves the suite",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256:\n " + hash + " 1 a\n " + hash + " 2 a\n": "listed twice",
		"Suite: a\nDate: Sat, 10 Jun 2023 08:50:48 UTC\nSHA256\n":                                        "line 3",
	} {
		_, err := parseDebRelease([]byte(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: got %v, want %q", in, err, msg)
		}
	}
}
