package main

// Debian version numbers ([epoch:]upstream[-revision]) and dpkg's ordering
// of them, written from deb-version(7): the bootstrap must pick the same
// versions and check the same versioned dependencies as dpkg and apt.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// debVersionParts splits a version into epoch, upstream and revision. An
// epoch that is not all digits is not an epoch: the text stays in upstream,
// so any string splits and compares (validity is debVersionValid's job).
func debVersionParts(v string) (epoch, upstream, revision string) {
	upstream = v
	if i := strings.IndexByte(v, ':'); i > 0 && debAllDigits(v[:i]) {
		epoch, upstream = v[:i], v[i+1:]
	}
	if i := strings.LastIndexByte(upstream, '-'); i >= 0 {
		upstream, revision = upstream[:i], upstream[i+1:]
	}
	return epoch, upstream, revision
}

func debAllDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// debVersionValid applies dpkg's syntax rules, counting as errors what dpkg
// only warns about (a version not starting with a digit, characters outside
// the allowed set): an archive that ships such a version is broken.
func debVersionValid(v string) error {
	if v == "" {
		return errors.New("empty version")
	}
	if strings.ContainsAny(v, " \t\n\r") {
		return fmt.Errorf("version %q contains white space", v)
	}
	if i := strings.IndexByte(v, ':'); i >= 0 {
		e := v[:i]
		if e == "" || !debAllDigits(e) {
			return fmt.Errorf("version %q: epoch %q is not a number", v, e)
		}
		if _, err := strconv.ParseInt(e, 10, 32); err != nil { // dpkg keeps epochs in an int
			return fmt.Errorf("version %q: epoch %s is too big", v, e)
		}
	}
	_, up, rev := debVersionParts(v)
	if up == "" {
		return fmt.Errorf("version %q has an empty upstream part", v)
	}
	if up[0] < '0' || up[0] > '9' {
		return fmt.Errorf("version %q: upstream part %q does not start with a digit", v, up)
	}
	if strings.HasSuffix(v, "-") {
		return fmt.Errorf("version %q has an empty revision", v)
	}
	for i := 0; i < len(up); i++ {
		if c := up[i]; !debAlnum(c) && !strings.ContainsRune(".+~-:", rune(c)) {
			return fmt.Errorf("version %q: character %q is not allowed in the upstream part", v, c)
		}
	}
	for i := 0; i < len(rev); i++ {
		if c := rev[i]; !debAlnum(c) && !strings.ContainsRune(".+~", rune(c)) {
			return fmt.Errorf("version %q: character %q is not allowed in the revision", v, c)
		}
	}
	return nil
}

func debAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// debVersionCompare orders two versions as dpkg does: by epoch numerically,
// then upstream, then revision. It returns -1, 0 or 1.
func debVersionCompare(a, b string) int {
	ea, ua, ra := debVersionParts(a)
	eb, ub, rb := debVersionParts(b)
	if c := debNumCompare(ea, eb); c != 0 {
		return c
	}
	if c := debVerrevCompare(ua, ub); c != 0 {
		return c
	}
	return debVerrevCompare(ra, rb)
}

// debNumCompare compares two digit strings numerically, at any length (dpkg
// uses machine integers; the archive never gets near their limit).
func debNumCompare(a, b string) int {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		if len(a) < len(b) {
			return -1
		}
		return 1
	}
	return strings.Compare(a, b)
}

// debOrder is the weight of one character in a non-digit run: '~' sorts
// before everything, even the end of the string; letters before all other
// characters.
func debOrder(s string, i int) int {
	if i >= len(s) {
		return 0
	}
	c := s[i]
	switch {
	case c == '~':
		return -1
	case c >= '0' && c <= '9':
		return 0
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		return int(c)
	}
	return int(c) + 256
}

func debIsDigit(s string, i int) bool { return i < len(s) && s[i] >= '0' && s[i] <= '9' }

// debVerrevCompare compares an upstream or revision part: alternating runs
// of non-digits (compared by debOrder) and digits (compared numerically).
func debVerrevCompare(a, b string) int {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		for i < len(a) && !debIsDigit(a, i) || j < len(b) && !debIsDigit(b, j) {
			oa, ob := debOrder(a, i), debOrder(b, j)
			if oa != ob {
				if oa < ob {
					return -1
				}
				return 1
			}
			if i < len(a) && !debIsDigit(a, i) {
				i++
			}
			if j < len(b) && !debIsDigit(b, j) {
				j++
			}
		}
		si, sj := i, j
		for debIsDigit(a, i) {
			i++
		}
		for debIsDigit(b, j) {
			j++
		}
		if c := debNumCompare(a[si:i], b[sj:j]); c != 0 {
			return c
		}
	}
	return 0
}
