package main

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Pairs with a < b in dpkg's order, covering each rule of deb-version(7).
var debVersionLess = [][2]string{
	{"1.0", "1.1"},
	{"1.0", "1.0.1"},
	{"1.0~rc1", "1.0"},
	{"1.0~~", "1.0~"},
	{"1.0~~a", "1.0~"},
	{"1.0~", "1.0"},
	{"1.0", "1.0a"},
	{"1.0a", "1.0+"},  // letters before non-letters
	{"1.0+", "1.0.1"}, // "+" < "." by ASCII, both non-letters
	{"1.0a", "1.0b"},
	{"1.0Z", "1.0a"}, // ASCII order among letters
	{"1.0z", "1.0+"},
	{"1.0", "1:0.1"}, // epoch first
	{"1:1.0", "2:0.1"},
	{"9:1", "10:1"}, // epochs numerically
	{"1.9", "1.10"}, // digits numerically
	{"1.09", "1.10"},
	{"1.0-1", "1.0-2"},
	{"1.0-9", "1.0-10"},
	{"1.0-1", "1.0.1-1"},
	{"1.0-1~bpo1", "1.0-1"},
	{"1.0-1", "1.0-1+b1"},
	{"1.0-1+b1", "1.0-1.1"},
	{"1.0-1+deb12u1", "1.0-1+deb12u2"},
	{"2.36-9", "2.36-9+deb12u4"},
	{"2.36-9+deb12u3", "2.36-9+deb12u10"},
	{"0.9", "1.0"},
	{"1.0", "1.0-0.1"},
	{"1.0-0", "1.0-0.1"},
	{"1.0-a", "1.0-b"},
	{"1.0-~", "1.0-"}, // not valid, but ordered all the same
	{"7.6-0", "7.6p2-4"},
	{"1.2.3", "1.2.3.0.1"},
	{"2:1.0", "10:0.1"},
	{"1.0+dfsg-1", "1.0+dfsg1-1"},
	{"1.0+dfsg1-1", "1.0.0-1"},
	{"5.36.0-7", "5.36.0-7+deb12u1"},
	{"3.0.11-1~deb12u2", "3.0.11-1"},
	{"1:2.38.1-5+deb12u1", "1:2.38.1-5+deb12u2"},
	{"0~20230101", "0.1"},
	{"1a", "1aa"},
	{"1~", "1"},
	{"1", "1a"},
	{"a", "b"},
	{"1.0-1ubuntu1", "1.0-1ubuntu2"},
	{"1.0-1ubuntu0.22.04.1", "1.0-1ubuntu1"},
	{"18446744073709551615", "18446744073709551616"}, // past 64 bits
	{"1:0", "18446744073709551616:0"},
}

// Pairs that compare equal.
var debVersionEqual = [][2]string{
	{"1.0", "1.0"},
	{"1.0", "0:1.0"},
	{"1.0", "1.0-0"}, // no revision is revision "0"'s equal
	{"1.00", "1.0"},  // digits numerically
	{"01.0", "1.0"},
	{"00:1", "1"},
	{"1.0-00", "1.0"},
	{"1a", "1a0"}, // a missing number is a zero
	{"", ""},
}

func TestDebVersionCompareTable(t *testing.T) {
	for _, p := range debVersionLess {
		if c := debVersionCompare(p[0], p[1]); c != -1 {
			t.Errorf("compare(%q, %q) = %d, want -1", p[0], p[1], c)
		}
		if c := debVersionCompare(p[1], p[0]); c != 1 {
			t.Errorf("compare(%q, %q) = %d, want 1", p[1], p[0], c)
		}
	}
	for _, p := range debVersionEqual {
		if c := debVersionCompare(p[0], p[1]); c != 0 {
			t.Errorf("compare(%q, %q) = %d, want 0", p[0], p[1], c)
		}
	}
}

func TestDebVersionValid(t *testing.T) {
	for _, v := range []string{"1", "1.0", "1:1.0-1", "1.0-1+b1", "1.0~rc1-2~bpo12+1", "2:1.2:3-4", "2147483647:1", "1.0+dfsg-1.1", "0", "3.0-a.b~c+d", "1a"} {
		if err := debVersionValid(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for v, want := range map[string]string{
		"":             "empty version",
		"1.0 1":        "white space",
		"a:1.0":        "epoch",
		":1.0":         "epoch",
		"1:":           "empty upstream",
		"1.0-":         "empty revision",
		"-1":           "empty upstream",
		"a1.0":         "does not start with a digit",
		"1.0_1":        "not allowed in the upstream",
		"1:1.0-1:2":    "not allowed in the revision",
		"1.0-1_2":      "not allowed in the revision",
		"2147483648:1": "too big",
		"1.0é":         "not allowed",
	} {
		err := debVersionValid(v)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("debVersionValid(%q) = %v, want an error containing %q", v, err, want)
		}
	}
}

// dpkgCompare asks dpkg about many pairs at once, through one shell.
func dpkgCompare(t *testing.T, pairs [][2]string) []int {
	t.Helper()
	var script strings.Builder
	for _, p := range pairs {
		fmt.Fprintf(&script, "if dpkg --compare-versions '%s' lt '%s'; then echo -1; elif dpkg --compare-versions '%s' eq '%s'; then echo 0; else echo 1; fi\n", p[0], p[1], p[0], p[1])
	}
	cmd := exec.Command("sh")
	cmd.Stdin = strings.NewReader(script.String())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg --compare-versions: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(pairs) {
		t.Fatalf("dpkg gave %d answers for %d pairs", len(lines), len(pairs))
	}
	res := make([]int, len(lines))
	for i, l := range lines {
		fmt.Sscan(l, &res[i])
	}
	return res
}

// debRandomVersion makes valid versions dense in the tricky characters.
func debRandomVersion(r *rand.Rand) string {
	part := func(alphabet string, n int) string {
		var b strings.Builder
		for range n {
			b.WriteByte(alphabet[r.IntN(len(alphabet))])
		}
		return b.String()
	}
	v := part("0123456789", 1) + part("0129.~+aZz", r.IntN(5))
	if r.IntN(4) == 0 {
		v = part("0123", 1+r.IntN(2)) + ":" + v
	}
	if r.IntN(2) == 0 {
		v += "-" + part("0129.~+aZz", 1+r.IntN(4))
	}
	return v
}

func TestDebVersionAgainstDpkg(t *testing.T) {
	needTool(t, "dpkg")
	r := rand.New(rand.NewPCG(1, 2))
	var pairs [][2]string
	for _, p := range debVersionLess {
		if debVersionValid(p[0]) == nil && debVersionValid(p[1]) == nil && len(p[0]) < 16 {
			pairs = append(pairs, p)
		}
	}
	for range 400 {
		a := debRandomVersion(r)
		b := debRandomVersion(r)
		if r.IntN(3) == 0 { // near neighbours
			b = a + debRandomVersion(r)[:1]
		}
		pairs = append(pairs, [2]string{a, b})
	}
	want := dpkgCompare(t, pairs)
	bad := 0
	for i, p := range pairs {
		if got := debVersionCompare(p[0], p[1]); got != want[i] {
			t.Errorf("compare(%q, %q) = %d, dpkg says %d", p[0], p[1], got, want[i])
			bad++
		}
	}
	t.Logf("%d pairs checked against dpkg, %d differ", len(pairs), bad)
}

// TestDebVersionRealArchive sorts every distinct version of the bookworm
// Packages file with our order and has dpkg confirm each adjacent pair:
// dpkg's order being transitive, that confirms the whole order. It also
// compares every pair of versions within each source package.
func TestDebVersionRealArchive(t *testing.T) {
	needTool(t, "dpkg")
	ix := debTestIndex(t)
	seen := map[string]bool{}
	bySource := map[string][]string{}
	for _, p := range ix.pkgs {
		if !seen[p.Version] {
			seen[p.Version] = true
			bySource[p.Source] = append(bySource[p.Source], p.Version)
		}
	}
	var all []string
	for v := range seen {
		all = append(all, v)
	}
	slices.SortFunc(all, debVersionCompare)
	// dpkg takes ~1 ms a call: check a stride of the sorted list, which
	// still crosses every region of the order.
	stride := max(1, len(all)/1000)
	var pairs [][2]string
	for i := stride; i < len(all); i += stride {
		pairs = append(pairs, [2]string{all[i-stride], all[i]})
	}
	// Every pair among the versions of the sources with the most of them.
	srcs := slices.Collect(func(yield func(string) bool) {
		for s := range bySource {
			if !yield(s) {
				return
			}
		}
	})
	slices.SortFunc(srcs, func(a, b string) int {
		if c := len(bySource[b]) - len(bySource[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	within := 0
	for _, s := range srcs[:2] {
		vs := bySource[s]
		for i := range vs {
			for j := range vs {
				if i != j {
					pairs = append(pairs, [2]string{vs[i], vs[j]})
					within++
				}
			}
		}
	}
	want := dpkgCompare(t, pairs)
	for i, p := range pairs {
		if got := debVersionCompare(p[0], p[1]); got != want[i] {
			t.Errorf("compare(%q, %q) = %d, dpkg says %d", p[0], p[1], got, want[i])
		}
	}
	t.Logf("%d distinct versions; %d adjacent pairs and %d pairs within the sources %v confirmed by dpkg", len(all), len(pairs)-within, within, srcs[:2])
}

func FuzzDebVersion(f *testing.F) {
	for _, p := range debVersionLess {
		f.Add(p[0], p[1], "1.0")
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		ab, ba := debVersionCompare(a, b), debVersionCompare(b, a)
		if ab != -ba {
			t.Fatalf("not antisymmetric: %q %q: %d %d", a, b, ab, ba)
		}
		if debVersionCompare(a, a) != 0 {
			t.Fatalf("%q is not equal to itself", a)
		}
		bc, ac := debVersionCompare(b, c), debVersionCompare(a, c)
		if ab <= 0 && bc <= 0 && ac > 0 {
			t.Fatalf("not transitive: %q <= %q <= %q but %q > %q", a, b, c, a, c)
		}
		if ab == 0 && bc == 0 && ac != 0 {
			t.Fatalf("equality not transitive: %q %q %q", a, b, c)
		}
		_ = debVersionValid(a)
	})
}
