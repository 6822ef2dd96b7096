package main

import (
	"strconv"
	"unicode/utf8"
)

// canonJSON writes the canonical JSON that identities hash: what
// encoding/json writes for maps (keys sorted) without HTML escaping and
// without space. Callers write object keys in sorted order; writing by
// hand is several times faster than marshaling maps.
type canonJSON struct{ b []byte }

// sep writes the comma a value or key needs after a previous one.
func (j *canonJSON) sep() {
	if n := len(j.b); n > 0 && j.b[n-1] != '{' && j.b[n-1] != '[' && j.b[n-1] != ':' {
		j.b = append(j.b, ',')
	}
}

func (j *canonJSON) open(c byte)  { j.sep(); j.b = append(j.b, c) }
func (j *canonJSON) close(c byte) { j.b = append(j.b, c) }

func (j *canonJSON) key(k string) *canonJSON {
	j.str(k)
	j.b = append(j.b, ':')
	return j
}

func (j *canonJSON) int(n int64) { j.sep(); j.b = strconv.AppendInt(j.b, n, 10) }

func (j *canonJSON) bool(v bool) { j.sep(); j.b = strconv.AppendBool(j.b, v) }

func (j *canonJSON) strs(list []string) {
	j.open('[')
	for _, s := range list {
		j.str(s)
	}
	j.close(']')
}

// str escapes as encoding/json does: quote, backslash and control
// characters; U+2028 and U+2029; invalid UTF-8 becomes U+FFFD.
func (j *canonJSON) str(s string) {
	const hex = "0123456789abcdef"
	j.sep()
	b := append(j.b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[start:i]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[start:i]...), '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	j.b = append(append(b, s[start:]...), '"')
}
