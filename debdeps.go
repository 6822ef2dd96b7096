package main

// Package relations (Depends, Pre-Depends, Provides), the index of an
// archive's Packages file, and the resolution of a base system from it, the
// way apt does for mmdebstrap --variant=minbase.

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// debDep is one alternative of a relation: "name[:arch] [(op version)]".
type debDep struct {
	Name, ArchQual, Op, Version string
}

func (d debDep) String() string {
	s := d.Name
	if d.ArchQual != "" {
		s += ":" + d.ArchQual
	}
	if d.Op != "" {
		s += " (" + d.Op + " " + d.Version + ")"
	}
	return s
}

// debGroupString writes a disjunction back in the archive's syntax.
func debGroupString(g []debDep) string {
	parts := make([]string, len(g))
	for i, d := range g {
		parts[i] = d.String()
	}
	return strings.Join(parts, " | ")
}

// parseDebDeps parses a relation field: a comma-separated conjunction of
// "|"-separated alternatives. Architecture restrictions ("[amd64]") and
// build profiles ("<!nocheck>") belong to source packages' build relations;
// binary packages never carry them, so they are refused rather than
// silently ignored.
func parseDebDeps(field string) ([][]debDep, error) {
	return debParseDeps(field, nil)
}

// debInterner stores once the strings and alternatives that repeat across
// an archive's packages ("libc6 (>= 2.34)" appears thousands of times).
type debInterner struct {
	strs   map[string]string
	groups map[string][]debDep
}

func newDebInterner() *debInterner {
	return &debInterner{strs: map[string]string{}, groups: map[string][]debDep{}}
}

func (in *debInterner) str(s string) string {
	if in == nil {
		return s
	}
	if v, ok := in.strs[s]; ok {
		return v
	}
	s = strings.Clone(s)
	in.strs[s] = s
	return s
}

// debParseDeps parses a relation field; with an interner, equal
// disjunctions share one read-only slice.
func debParseDeps(field string, in *debInterner) ([][]debDep, error) {
	if strings.TrimSpace(field) == "" {
		return nil, nil
	}
	groups := make([][]debDep, 0, strings.Count(field, ",")+1)
	for gi, gs := range strings.Split(field, ",") {
		gs = strings.TrimSpace(gs)
		if in != nil {
			if g, ok := in.groups[gs]; ok {
				groups = append(groups, g)
				continue
			}
		}
		alts := strings.Split(gs, "|")
		g := make([]debDep, 0, len(alts))
		for _, as := range alts {
			d, err := debParseDep(as, in)
			if err != nil {
				return nil, fmt.Errorf("relation %d (%q): %w", gi+1, debClip([]byte(gs)), err)
			}
			g = append(g, d)
		}
		if in != nil {
			in.groups[in.str(gs)] = g
		}
		groups = append(groups, g)
	}
	return groups, nil
}

func debParseDep(s string, in *debInterner) (debDep, error) {
	var d debDep
	s = strings.TrimSpace(s)
	if s == "" {
		return d, errors.New("empty alternative")
	}
	end := strings.IndexAny(s, " \t\n([<")
	if end < 0 {
		end = len(s)
	}
	name := s[:end]
	if i := strings.IndexByte(name, ':'); i >= 0 {
		name, d.ArchQual = name[:i], name[i+1:]
		if !debValidArch(d.ArchQual) {
			return d, fmt.Errorf("architecture qualifier %q is not an architecture name", d.ArchQual)
		}
		d.ArchQual = in.str(d.ArchQual)
	}
	if err := debValidName(name); err != nil {
		return d, err
	}
	d.Name = in.str(name)
	rest := strings.TrimSpace(s[end:])
	if strings.HasPrefix(rest, "(") {
		close := strings.IndexByte(rest, ')')
		if close < 0 {
			return d, errors.New("version constraint without ')'")
		}
		c := strings.TrimSpace(rest[1:close])
		rest = strings.TrimSpace(rest[close+1:])
		n := 0
		for n < len(c) && strings.IndexByte("<=>", c[n]) >= 0 {
			n++
		}
		if n == 0 {
			return d, fmt.Errorf("version constraint %q has no relation (<<, <=, =, >=, >>)", c)
		}
		switch op := c[:n]; op {
		case "<<", "<=", "=", ">=", ">>":
			d.Op = op
		case "<": // obsolete spellings, meaning "<=" and ">=" (deb-control(5))
			d.Op = "<="
		case ">":
			d.Op = ">="
		default:
			return d, fmt.Errorf("%q is not a version relation (<<, <=, =, >=, >>)", op)
		}
		v := strings.TrimSpace(c[n:])
		if err := debVersionValid(v); err != nil {
			return d, err
		}
		d.Version = in.str(v)
	}
	switch {
	case rest == "":
		return d, nil
	case rest[0] == '[':
		return d, fmt.Errorf("architecture restriction %q: only source packages' build relations have them", debClip([]byte(rest)))
	case rest[0] == '<':
		return d, fmt.Errorf("build profile %q: only source packages' build relations have them", debClip([]byte(rest)))
	}
	return d, fmt.Errorf("unexpected %q after %q", debClip([]byte(rest)), name)
}

// debValidName follows Debian policy §5.6.1: lower-case letters, digits and
// "+-.", starting with a letter or digit.
func debValidName(n string) error {
	if n == "" {
		return errors.New("missing package name")
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '+' || c == '-' || c == '.')
		if !ok {
			return fmt.Errorf("%q is not a package name", debClip([]byte(n)))
		}
	}
	return nil
}

func debValidArch(a string) bool {
	if a == "" {
		return false
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// debPackage is what the bootstrap keeps of one binary package.
type debPackage struct {
	Name, Version, Arch, Filename, SHA256, Priority, MultiArch string
	Source                                                     string // source package name; the package's own name when the field is absent
	Size                                                       int64
	Essential                                                  bool
	Depends, PreDepends                                        [][]debDep // conjunction of disjunctions
	Provides                                                   []debDep   // Name and optional "= version"
}

// debIndex holds the newest version of each package of one architecture
// (and "all") from an archive's Packages files. What repeats across
// packages (names, versions, whole alternatives in relations) is stored
// once: the relations of a package are shared and read-only.
type debIndex struct {
	arch      string
	pkgs      map[string]*debPackage
	providers map[string][]*debPackage // by provided name, in the order tried
}

func newDebIndex(arch string) *debIndex {
	return &debIndex{arch: arch, pkgs: map[string]*debPackage{}}
}

// The fields of a Packages paragraph the index keeps.
const (
	debFPackage = iota
	debFVersion
	debFArchitecture
	debFFilename
	debFSHA256
	debFSize
	debFPriority
	debFMultiArch
	debFSource
	debFEssential
	debFDepends
	debFPreDepends
	debFProvides
	debFCount
)

var debPackageFields = map[string]int{
	"package": debFPackage, "version": debFVersion, "architecture": debFArchitecture,
	"filename": debFFilename, "sha256": debFSHA256, "size": debFSize, "priority": debFPriority,
	"multi-arch": debFMultiArch, "source": debFSource, "essential": debFEssential,
	"depends": debFDepends, "pre-depends": debFPreDepends, "provides": debFProvides,
}

// debPick gets the index's fields from a paragraph in one pass over it
// (get would scan the whole paragraph for each field a package lacks).
func debPick(st debStanza) (f [debFCount]string) {
	var buf [16]byte
	for k, v := range st {
		if len(k) > len(buf) {
			continue
		}
		b := buf[:len(k)]
		for i := 0; i < len(k); i++ {
			c := k[i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			b[i] = c
		}
		if i, ok := debPackageFields[string(b)]; ok {
			f[i] = v
		}
	}
	return f
}

// readPackages adds a (decompressed) Packages file to the index.
func (ix *debIndex) readPackages(r io.Reader) error {
	in := newDebInterner()
	err := readDebStanzas(r, func(st debStanza) error {
		f := debPick(st)
		name, arch := f[debFPackage], f[debFArchitecture]
		if err := debValidName(name); err != nil {
			return fmt.Errorf("Package: %w", err)
		}
		if arch == "" {
			return fmt.Errorf("package %s: no Architecture", name)
		}
		if arch != ix.arch && arch != "all" {
			return nil
		}
		version := f[debFVersion]
		if err := debVersionValid(version); err != nil {
			return fmt.Errorf("package %s: Version: %w", name, err)
		}
		if old := ix.pkgs[name]; old != nil && debVersionCompare(version, old.Version) <= 0 {
			return nil
		}
		p, err := parseDebPackage(&f, in)
		if err != nil {
			return fmt.Errorf("package %s %s: %w", name, version, err)
		}
		ix.pkgs[p.Name] = p
		return nil
	})
	ix.indexProviders()
	return err
}

func parseDebPackage(f *[debFCount]string, in *debInterner) (*debPackage, error) {
	p := &debPackage{
		Name:      in.str(f[debFPackage]),
		Version:   in.str(f[debFVersion]),
		Arch:      in.str(f[debFArchitecture]),
		Filename:  strings.Clone(f[debFFilename]),
		SHA256:    strings.Clone(strings.ToLower(f[debFSHA256])),
		Priority:  in.str(f[debFPriority]),
		MultiArch: in.str(f[debFMultiArch]),
		Essential: strings.EqualFold(f[debFEssential], "yes"),
	}
	p.Source = p.Name
	if src := f[debFSource]; src != "" {
		src, _, _ = strings.Cut(src, " ")
		p.Source = in.str(src)
	}
	if p.Filename == "" || strings.HasPrefix(p.Filename, "/") || slices.Contains(strings.Split(p.Filename, "/"), "..") {
		return nil, fmt.Errorf("Filename %q is not a path inside the archive", p.Filename)
	}
	if !debIsSHA256(p.SHA256) {
		return nil, fmt.Errorf("SHA256 %q is not a SHA-256 in hex", p.SHA256)
	}
	var err error
	if p.Size, err = strconv.ParseInt(f[debFSize], 10, 64); err != nil || p.Size < 0 {
		return nil, fmt.Errorf("Size %q is not a number of bytes", f[debFSize])
	}
	if p.Depends, err = debParseDeps(f[debFDepends], in); err != nil {
		return nil, fmt.Errorf("Depends: %w", err)
	}
	if p.PreDepends, err = debParseDeps(f[debFPreDepends], in); err != nil {
		return nil, fmt.Errorf("Pre-Depends: %w", err)
	}
	prov, err := debParseDeps(f[debFProvides], in)
	if err != nil {
		return nil, fmt.Errorf("Provides: %w", err)
	}
	if len(prov) > 0 {
		p.Provides = make([]debDep, 0, len(prov))
	}
	for _, g := range prov {
		if len(g) != 1 || g[0].Op != "" && g[0].Op != "=" || g[0].ArchQual != "" {
			return nil, fmt.Errorf("Provides: %q: a provided name takes no alternatives, no architecture and only \"= version\"", debGroupString(g))
		}
		p.Provides = append(p.Provides, g[0])
	}
	return p, nil
}

// lookup returns the package of that name, nil when the archive has none.
func (ix *debIndex) lookup(name string) *debPackage { return ix.pkgs[name] }

// indexProviders maps each provided name to its providers, in the order
// they are tried. After it, the index is only read: lookups and
// resolutions may run concurrently.
func (ix *debIndex) indexProviders() {
	ix.providers = map[string][]*debPackage{}
	for _, p := range ix.pkgs {
		for _, pr := range p.Provides {
			ix.providers[pr.Name] = append(ix.providers[pr.Name], p)
		}
	}
	for _, ps := range ix.providers {
		slices.SortFunc(ps, debProviderOrder)
	}
}

var debPriorityRank = map[string]int{"required": 0, "important": 1, "standard": 2, "optional": 3, "extra": 4}

// debProviderOrder is the order in which providers of a virtual package are
// tried: by priority, as apt does, then by name, for determinism.
func debProviderOrder(a, b *debPackage) int {
	ra, oka := debPriorityRank[a.Priority]
	rb, okb := debPriorityRank[b.Priority]
	if !oka {
		ra = 5
	}
	if !okb {
		rb = 5
	}
	if ra != rb {
		return ra - rb
	}
	return strings.Compare(a.Name, b.Name)
}

// debArchOK tells whether p may satisfy a relation with that architecture
// qualifier. The index holds one architecture, so an unqualified relation
// always matches; ":any" needs a Multi-Arch: allowed package.
func (ix *debIndex) debArchOK(qual string, p *debPackage) bool {
	switch qual {
	case "", "native", ix.arch:
		return true
	case "any":
		return p.MultiArch == "allowed"
	}
	return false
}

func debVersionSatisfies(v, op, want string) bool {
	c := debVersionCompare(v, want)
	switch op {
	case "":
		return true
	case "<<":
		return c < 0
	case "<=":
		return c <= 0
	case "=":
		return c == 0
	case ">=":
		return c >= 0
	case ">>":
		return c > 0
	}
	return false
}

// satisfies tells whether p satisfies d, itself or by what it provides. For a
// versioned relation only a versioned Provides counts, as in apt and dpkg.
func (ix *debIndex) satisfies(p *debPackage, d debDep) bool {
	if p.Name == d.Name && ix.debArchOK(d.ArchQual, p) && debVersionSatisfies(p.Version, d.Op, d.Version) {
		return true
	}
	for _, pr := range p.Provides {
		if pr.Name != d.Name || !ix.debArchOK(d.ArchQual, p) {
			continue
		}
		if d.Op == "" || pr.Op == "=" && debVersionSatisfies(pr.Version, d.Op, d.Version) {
			return true
		}
	}
	return false
}

// candidate picks the package that satisfies a disjunction when nothing
// chosen does: the first alternative a real package satisfies; failing
// that, the first alternative some provider satisfies.
func (ix *debIndex) candidate(g []debDep, within map[string]*debPackage) *debPackage {
	ok := func(p *debPackage) bool { return within == nil || within[p.Name] == p }
	for _, d := range g {
		if p := ix.pkgs[d.Name]; p != nil && ok(p) && ix.satisfies(p, d) {
			return p
		}
	}
	provs := ix.providers
	for _, d := range g {
		for _, p := range provs[d.Name] {
			if ok(p) && ix.satisfies(p, d) {
				return p
			}
		}
	}
	return nil
}

// resolve closes seed over Depends and Pre-Depends and returns the packages
// sorted by name.
func (ix *debIndex) resolve(seed []string) ([]*debPackage, error) {
	return ix.resolveWithin(seed, nil)
}

// resolveWithin resolves choosing only packages of within (all of the index
// when nil). Relations with a single alternative are followed first, and a
// choice among alternatives is made only when no chosen package satisfies
// them: so a package that something else pulls in anyway is preferred over
// an earlier alternative, as apt's result shows. Pending choices are taken
// in a fixed order (package name, then position), so the result does not
// depend on map order.
func (ix *debIndex) resolveWithin(seed []string, within map[string]*debPackage) ([]*debPackage, error) {
	chosen := map[string]*debPackage{}
	var queue []*debPackage
	add := func(p *debPackage) {
		if chosen[p.Name] == nil {
			chosen[p.Name] = p
			queue = append(queue, p)
		}
	}
	for _, s := range slices.Sorted(slices.Values(seed)) {
		p := ix.candidate([]debDep{{Name: s}}, within)
		if p == nil {
			return nil, fmt.Errorf("package %q is not in the archive", s)
		}
		add(p)
	}
	type pending struct {
		pkg  *debPackage
		verb string
		g    []debDep
	}
	satisfied := func(g []debDep) bool {
		for _, d := range g {
			if p := chosen[d.Name]; p != nil && ix.satisfies(p, d) {
				return true
			}
			for _, p := range ix.providers[d.Name] {
				if chosen[p.Name] == p && ix.satisfies(p, d) {
					return true
				}
			}
		}
		return false
	}
	choose := func(pd pending) error {
		p := ix.candidate(pd.g, within)
		if p == nil {
			return fmt.Errorf("%s %s on %q, which no package in the archive satisfies", pd.pkg.Name, pd.verb, debGroupString(pd.g))
		}
		add(p)
		return nil
	}
	var choices []pending
	for {
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, rel := range []struct {
				verb   string
				groups [][]debDep
			}{{"pre-depends", p.PreDepends}, {"depends", p.Depends}} {
				for _, g := range rel.groups {
					pd := pending{p, rel.verb, g}
					switch {
					case satisfied(g):
					case len(g) == 1:
						if err := choose(pd); err != nil {
							return nil, err
						}
					default:
						choices = append(choices, pd)
					}
				}
			}
		}
		slices.SortStableFunc(choices, func(a, b pending) int { return strings.Compare(a.pkg.Name, b.pkg.Name) })
		i := slices.IndexFunc(choices, func(pd pending) bool { return !satisfied(pd.g) })
		if i < 0 {
			break
		}
		if err := choose(choices[i]); err != nil {
			return nil, err
		}
		choices = choices[i+1:]
	}
	out := make([]*debPackage, 0, len(chosen))
	for _, p := range chosen {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *debPackage) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// minbaseSeed is what mmdebstrap's minbase variant asks apt for: the
// Essential: yes and Priority: required packages, and apt.
func (ix *debIndex) minbaseSeed() []string {
	seed := []string{"apt"}
	for _, p := range ix.pkgs {
		if p.Essential || p.Priority == "required" {
			seed = append(seed, p.Name)
		}
	}
	return seed
}

// minbase is the base system: minbaseSeed closed over its dependencies.
func (ix *debIndex) minbase() ([]*debPackage, error) {
	return ix.resolve(ix.minbaseSeed())
}

// essential is what the first dpkg pass unpacks and configures: the
// Essential: yes packages and their dependency closure, chosen among the
// minbase packages so the two passes agree on alternatives.
func (ix *debIndex) essential() ([]*debPackage, error) {
	base, err := ix.minbase()
	if err != nil {
		return nil, err
	}
	within := make(map[string]*debPackage, len(base))
	for _, p := range base {
		within[p.Name] = p
	}
	var seed []string
	for _, p := range ix.pkgs {
		if p.Essential {
			seed = append(seed, p.Name)
		}
	}
	return ix.resolveWithin(seed, within)
}
