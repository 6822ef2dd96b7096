package main

// Debian control files (deb822 paragraphs: Packages, Release, a package's
// control file) and the Release file that lists an archive's indexes.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// debStanza is one paragraph: field name as the file spells it → value.
// A multi-line value keeps its continuation lines, each after a "\n", with
// their leading white space (Description's layout depends on it).
type debStanza map[string]string

// get looks a field up by name regardless of case, as field names are
// case-insensitive.
func (s debStanza) get(name string) string {
	if v, ok := s[name]; ok {
		return v
	}
	for k, v := range s {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// Limits that keep hostile input from costing unbounded memory. The largest
// real paragraphs are Release files' hash lists (Ubuntu's: about 1 MiB).
const (
	debMaxLine      = 1 << 20
	debMaxParagraph = 16 << 20
)

// readDebStanzas calls fn with each paragraph of r in order. Only one
// paragraph is held in memory at a time. Lines starting with '#' are
// comments; blank lines (or only spaces and tabs) separate paragraphs.
func readDebStanzas(r io.Reader, fn func(debStanza) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		st        debStanza
		fields    []debFieldLine // this paragraph's, to find repeated names
		last      string         // field continuation lines go to
		lastBuf   []byte
		start     int
		size      int
		line      int
		truncated bool
	)
	flush := func() error {
		if st == nil {
			return nil
		}
		if last != "" {
			st[last] = string(lastBuf)
		}
		s := st
		st, fields, last, size = nil, fields[:0], "", 0
		if err := fn(s); err != nil {
			return fmt.Errorf("paragraph at line %d: %w", start, err)
		}
		return nil
	}
	for {
		raw, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long line: gather it up to the limit.
			buf := append([]byte(nil), raw...)
			for err == bufio.ErrBufferFull {
				if len(buf) > debMaxLine {
					return fmt.Errorf("line %d is longer than %d bytes", line+1, debMaxLine)
				}
				raw, err = br.ReadSlice('\n')
				buf = append(buf, raw...)
			}
			if len(buf) > debMaxLine {
				return fmt.Errorf("line %d is longer than %d bytes", line+1, debMaxLine)
			}
			raw = buf
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("reading line %d: %w", line+1, err)
		}
		if len(raw) == 0 && err == io.EOF {
			break
		}
		line++
		truncated = err == io.EOF
		text := bytes.TrimRight(raw, "\r\n")
		switch {
		case len(bytes.Trim(text, " \t")) == 0:
			if err := flush(); err != nil {
				return err
			}
		case text[0] == '#':
		case text[0] == ' ' || text[0] == '\t':
			if last == "" {
				return fmt.Errorf("line %d: continuation line outside a field", line)
			}
			size += len(text)
			if size > debMaxParagraph {
				return fmt.Errorf("line %d: paragraph starting at line %d is larger than %d bytes", line, start, debMaxParagraph)
			}
			lastBuf = append(append(lastBuf, '\n'), text...)
		default:
			colon := bytes.IndexByte(text, ':')
			if colon < 0 {
				return fmt.Errorf("line %d: %q is neither a field (no colon) nor a continuation line", line, debClip(text))
			}
			name := string(text[:colon])
			if err := debFieldName(name); err != nil {
				return fmt.Errorf("line %d: %v", line, err)
			}
			if st == nil {
				st, start = make(debStanza, 24), line
			}
			// A linear scan: paragraphs have a few dozen fields at most.
			for _, f := range fields {
				if strings.EqualFold(f.name, name) {
					return fmt.Errorf("line %d: field %q repeats the one at line %d", line, name, f.line)
				}
			}
			fields = append(fields, debFieldLine{name, line})
			if last != "" {
				st[last] = string(lastBuf)
			}
			size += len(text)
			if size > debMaxParagraph {
				return fmt.Errorf("line %d: paragraph starting at line %d is larger than %d bytes", line, start, debMaxParagraph)
			}
			last = name
			lastBuf = append(lastBuf[:0], bytes.Trim(text[colon+1:], " \t")...)
		}
		if truncated {
			break
		}
	}
	return flush()
}

type debFieldLine struct {
	name string
	line int
}

func debFieldName(name string) error {
	if name == "" {
		return errors.New("empty field name")
	}
	if name[0] == '-' {
		return fmt.Errorf("field name %q starts with '-'", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("field name %q contains %q", debClip([]byte(name)), c)
		}
	}
	return nil
}

// debClip shortens text quoted in an error message.
func debClip(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "…"
	}
	return string(b)
}

// debFileHash is one entry of a Release file's SHA256 list.
type debFileHash struct {
	SHA256 string
	Size   int64
}

// debRelease is what the bootstrap needs from a Release file.
type debRelease struct {
	Origin, Suite, Codename   string
	Date, ValidUntil          time.Time // ValidUntil zero when absent
	Architectures, Components []string
	SHA256                    map[string]debFileHash // by path relative to dists/SUITE/
	AcquireByHash             bool
}

// parseDebRelease reads a Release file, or InRelease's text once its
// signature is verified.
func parseDebRelease(text []byte) (*debRelease, error) {
	var st debStanza
	err := readDebStanzas(bytes.NewReader(text), func(s debStanza) error {
		if st != nil {
			return errors.New("a Release file has a single paragraph")
		}
		st = s
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("Release: %w", err)
	}
	if st == nil {
		return nil, errors.New("Release: empty file")
	}
	rel := &debRelease{
		Origin:        st.get("Origin"),
		Suite:         st.get("Suite"),
		Codename:      st.get("Codename"),
		Architectures: strings.Fields(st.get("Architectures")),
		Components:    strings.Fields(st.get("Components")),
		AcquireByHash: strings.EqualFold(st.get("Acquire-By-Hash"), "yes"),
		SHA256:        map[string]debFileHash{},
	}
	if rel.Suite == "" && rel.Codename == "" {
		return nil, errors.New("Release: neither Suite nor Codename is set")
	}
	if rel.Date, err = debParseDate(st.get("Date")); err != nil {
		return nil, fmt.Errorf("Release: Date: %w", err)
	}
	if v := st.get("Valid-Until"); v != "" {
		if rel.ValidUntil, err = debParseDate(v); err != nil {
			return nil, fmt.Errorf("Release: Valid-Until: %w", err)
		}
	}
	list := st.get("SHA256")
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("Release: no SHA256 list")
	}
	for i, l := range strings.Split(list, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("Release: SHA256 line %d: want \"hash size path\", got %q", i, debClip([]byte(l)))
		}
		if !debIsSHA256(f[0]) {
			return nil, fmt.Errorf("Release: SHA256 line %d: %q is not a SHA-256 in hex", i, f[0])
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 {
			return nil, fmt.Errorf("Release: SHA256 line %d: size %q is not a number of bytes", i, f[1])
		}
		p := f[2]
		if strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
			return nil, fmt.Errorf("Release: SHA256 line %d: path %q leaves the suite's directory", i, p)
		}
		if _, dup := rel.SHA256[p]; dup {
			return nil, fmt.Errorf("Release: SHA256 line %d: %s is listed twice", i, p)
		}
		rel.SHA256[p] = debFileHash{SHA256: strings.ToLower(f[0]), Size: size}
	}
	return rel, nil
}

func debIsSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// debParseDate reads the RFC 2822 dates of Release files ("Sat, 10 Jun
// 2023 08:50:48 UTC"); apt accepts single-digit days and numeric zones too.
func debParseDate(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing")
	}
	for _, layout := range []string{
		"Mon, _2 Jan 2006 15:04:05 -0700",
		"Mon, 02 Jan 2006 15:04:05 -0700",
		"Mon, _2 Jan 2006 15:04:05 MST",
		"Mon, 02 Jan 2006 15:04:05 MST",
	} {
		t, err := time.Parse(layout, s)
		if err != nil {
			continue
		}
		if strings.HasSuffix(layout, "MST") {
			if z, _ := t.Zone(); z != "UTC" && z != "GMT" {
				return time.Time{}, fmt.Errorf("%q: time zone %s is not UTC", s, z)
			}
		}
		return t.UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a date like \"Sat, 10 Jun 2023 08:50:48 UTC\"", s)
}
