package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The D-Bus wire protocol, as the D-Bus specification defines it: the
// marshalling of its types in either byte order, the message and its
// header, and a client connection to a bus (address, SASL EXTERNAL,
// Hello). Everything a bus sends is checked against the specification's
// rules before use; nothing malformed panics or reaches a handler. Unix
// file descriptors are never negotiated and a message carrying one is
// refused.

// Limits of the specification: a message, an array, a signature, and the
// nesting of containers.
const (
	dbusMaxMessage    = 128 << 20
	dbusMaxArray      = 64 << 20
	dbusMaxSignature  = 255
	dbusMaxNesting    = 32 // arrays, and separately structs
	dbusMaxTotalDepth = 64 // arrays, structs, dict entries and variants together
	dbusMaxName       = 255
)

// Message types and flags.
const (
	dbusMethodCall   = 1
	dbusMethodReturn = 2
	dbusError        = 3
	dbusSignal       = 4

	dbusNoReplyExpected = 0x1
)

// Header field codes.
const (
	dbusFieldPath        = 1
	dbusFieldInterface   = 2
	dbusFieldMember      = 3
	dbusFieldErrorName   = 4
	dbusFieldReplySerial = 5
	dbusFieldDestination = 6
	dbusFieldSender      = 7
	dbusFieldSignature   = 8
	dbusFieldUnixFDs     = 9
)

// The Go form of D-Bus values: y byte, b bool, n int16, q uint16, i int32,
// u uint32, x int64, t uint64, d float64, s string, o dbusObjectPath,
// g dbusSignature, v dbusVariant, (…) dbusStruct, ay []byte, a{…}
// []dbusDictEntry, any other array []any. The encoder also takes a plain
// string for o and g, and []string for as.
type (
	dbusObjectPath string
	dbusSignature  string
	dbusStruct     []any
	dbusVariant    struct {
		Sig   string
		Value any
	}
	dbusDictEntry struct{ Key, Value any }
)

var errDBusUnixFD = errors.New("unix file descriptors are not accepted (none was negotiated)")

// dbusAlign is the alignment of the type a signature begins with.
func dbusAlign(c byte) int {
	switch c {
	case 'n', 'q':
		return 2
	case 'b', 'i', 'u', 'a', 'h':
		return 4
	case 'x', 't', 'd', '(', '{':
		return 8
	}
	return 1 // y s o g v: s, o and g begin with a uint32 but their length is aligned by itself
}

// dbusAlignOf: strings, object paths and signatures.
func dbusAlignOf(c byte) int {
	if c == 's' || c == 'o' {
		return 4
	}
	return dbusAlign(c)
}

func isDBusBasic(c byte) bool { return strings.IndexByte("ybnqiuxtdsogh", c) >= 0 }

// dbusSplitSig checks a signature and splits it into its complete types.
func dbusSplitSig(sig string) ([]string, error) {
	if len(sig) > dbusMaxSignature {
		return nil, fmt.Errorf("signature of %d bytes; at most %d", len(sig), dbusMaxSignature)
	}
	var types []string
	for pos := 0; pos < len(sig); {
		end, err := dbusCompleteType(sig, pos, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("signature %q: %w", sig, err)
		}
		types = append(types, sig[pos:end])
		pos = end
	}
	return types, nil
}

// dbusCompleteType returns where the complete type at sig[pos] ends.
func dbusCompleteType(sig string, pos, arrays, structs int) (int, error) {
	if pos >= len(sig) {
		return 0, errors.New("ends inside a type")
	}
	switch c := sig[pos]; {
	case isDBusBasic(c) || c == 'v':
		return pos + 1, nil
	case c == 'a':
		if arrays++; arrays > dbusMaxNesting {
			return 0, fmt.Errorf("arrays nested deeper than %d", dbusMaxNesting)
		}
		if pos+1 < len(sig) && sig[pos+1] == '{' {
			p := pos + 2
			if p >= len(sig) || !isDBusBasic(sig[p]) {
				return 0, errors.New("a dict entry's key must be a basic type")
			}
			if structs+1 > dbusMaxNesting {
				return 0, fmt.Errorf("structs nested deeper than %d", dbusMaxNesting)
			}
			end, err := dbusCompleteType(sig, p+1, arrays, structs+1)
			if err != nil {
				return 0, err
			}
			if end >= len(sig) || sig[end] != '}' {
				return 0, errors.New("a dict entry has exactly two types")
			}
			return end + 1, nil
		}
		return dbusCompleteType(sig, pos+1, arrays, structs)
	case c == '(':
		if structs++; structs > dbusMaxNesting {
			return 0, fmt.Errorf("structs nested deeper than %d", dbusMaxNesting)
		}
		p := pos + 1
		if p < len(sig) && sig[p] == ')' {
			return 0, errors.New("an empty struct")
		}
		for p < len(sig) && sig[p] != ')' {
			end, err := dbusCompleteType(sig, p, arrays, structs)
			if err != nil {
				return 0, err
			}
			p = end
		}
		if p >= len(sig) {
			return 0, errors.New("a struct is not closed")
		}
		return p + 1, nil
	default:
		return 0, fmt.Errorf("%q is not a type here", c)
	}
}

// dbusEncoder appends values to a message whose first byte is buf[0]:
// alignment is from there.
type dbusEncoder struct {
	buf   []byte
	order dbusByteOrder
	depth int
}

// dbusByteOrder reads and appends in one byte order.
type dbusByteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

func dbusOrder(endian byte) dbusByteOrder {
	if endian == 'B' {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

func (e *dbusEncoder) align(n int) {
	for len(e.buf)%n != 0 {
		e.buf = append(e.buf, 0)
	}
}

func (e *dbusEncoder) u32(v uint32) { e.align(4); e.buf = e.order.AppendUint32(e.buf, v) }

func (e *dbusEncoder) str(s string) error {
	if err := dbusCheckString(s); err != nil {
		return err
	}
	e.u32(uint32(len(s)))
	e.buf = append(append(e.buf, s...), 0)
	return nil
}

func (e *dbusEncoder) sig(s string) error {
	if _, err := dbusSplitSig(s); err != nil {
		return err
	}
	e.buf = append(append(append(e.buf, byte(len(s))), s...), 0)
	return nil
}

// values encodes args as the complete types of sig.
func (e *dbusEncoder) values(sig string, args []any) error {
	types, err := dbusSplitSig(sig)
	if err != nil {
		return err
	}
	if len(types) != len(args) {
		return fmt.Errorf("signature %q has %d types, but %d values were given", sig, len(types), len(args))
	}
	for i, t := range types {
		if err := e.value(t, args[i]); err != nil {
			return err
		}
	}
	return nil
}

func dbusTypeErr(sig string, v any) error { return fmt.Errorf("a %T cannot be encoded as %q", v, sig) }

// value encodes v as the complete type sig.
func (e *dbusEncoder) value(sig string, v any) error {
	if e.depth++; e.depth > dbusMaxTotalDepth {
		return fmt.Errorf("values nested deeper than %d", dbusMaxTotalDepth)
	}
	defer func() { e.depth-- }()
	ok := true
	switch sig[0] {
	case 'y':
		var x byte
		if x, ok = v.(byte); ok {
			e.buf = append(e.buf, x)
		}
	case 'b':
		var x bool
		if x, ok = v.(bool); ok {
			b := uint32(0)
			if x {
				b = 1
			}
			e.u32(b)
		}
	case 'n', 'q':
		var x uint16
		switch y := v.(type) {
		case int16:
			x, ok = uint16(y), sig[0] == 'n'
		case uint16:
			x, ok = y, sig[0] == 'q'
		default:
			ok = false
		}
		if ok {
			e.align(2)
			e.buf = e.order.AppendUint16(e.buf, x)
		}
	case 'i', 'u':
		var x uint32
		switch y := v.(type) {
		case int32:
			x, ok = uint32(y), sig[0] == 'i'
		case uint32:
			x, ok = y, sig[0] == 'u'
		default:
			ok = false
		}
		if ok {
			e.u32(x)
		}
	case 'x', 't', 'd':
		var x uint64
		switch y := v.(type) {
		case int64:
			x, ok = uint64(y), sig[0] == 'x'
		case uint64:
			x, ok = y, sig[0] == 't'
		case float64:
			x, ok = math.Float64bits(y), sig[0] == 'd'
		default:
			ok = false
		}
		if ok {
			e.align(8)
			e.buf = e.order.AppendUint64(e.buf, x)
		}
	case 's':
		var x string
		if x, ok = v.(string); ok {
			return e.str(x)
		}
	case 'o':
		var x string
		switch y := v.(type) {
		case dbusObjectPath:
			x = string(y)
		case string:
			x = y
		default:
			ok = false
		}
		if ok {
			if !validObjectPath(x) {
				return fmt.Errorf("%q is not an object path", x)
			}
			return e.str(x)
		}
	case 'g':
		var x string
		switch y := v.(type) {
		case dbusSignature:
			x = string(y)
		case string:
			x = y
		default:
			ok = false
		}
		if ok {
			return e.sig(x)
		}
	case 'h':
		return errDBusUnixFD
	case 'v':
		var x dbusVariant
		if x, ok = v.(dbusVariant); ok {
			if types, err := dbusSplitSig(x.Sig); err != nil || len(types) != 1 {
				return fmt.Errorf("a variant holds one complete type, not %q", x.Sig)
			}
			if err := e.sig(x.Sig); err != nil {
				return err
			}
			return e.value(x.Sig, x.Value)
		}
	case '(':
		var x dbusStruct
		if x, ok = v.(dbusStruct); ok {
			e.align(8)
			return e.values(sig[1:len(sig)-1], x)
		}
	case 'a':
		return e.array(sig, v)
	default:
		return fmt.Errorf("%q is not a complete type", sig)
	}
	if !ok {
		return dbusTypeErr(sig, v)
	}
	return nil
}

func (e *dbusEncoder) array(sig string, v any) error {
	elem := sig[1:]
	e.u32(0)
	lenAt := len(e.buf) - 4
	e.align(dbusAlign(elem[0])) // padding to the first element is not counted
	start := len(e.buf)
	var err error
	switch x := v.(type) {
	case []byte:
		if elem != "y" {
			return dbusTypeErr(sig, v)
		}
		e.buf = append(e.buf, x...)
	case []string:
		for _, s := range x {
			if err = e.value(elem, s); err != nil {
				break
			}
		}
	case []any:
		for _, item := range x {
			if err = e.value(elem, item); err != nil {
				break
			}
		}
	case []dbusDictEntry:
		if elem[0] != '{' {
			return dbusTypeErr(sig, v)
		}
		types, _ := dbusSplitSig(elem[1 : len(elem)-1])
		for _, d := range x {
			e.align(8)
			if err = e.value(types[0], d.Key); err == nil {
				err = e.value(types[1], d.Value)
			}
			if err != nil {
				break
			}
		}
	default:
		return dbusTypeErr(sig, v)
	}
	if err != nil {
		return err
	}
	n := len(e.buf) - start
	if n > dbusMaxArray {
		return fmt.Errorf("an array of %d bytes; at most %d", n, dbusMaxArray)
	}
	e.order.PutUint32(e.buf[lenAt:], uint32(n))
	return nil
}

// dbusDecoder reads values from a message; positions count from its
// first byte.
type dbusDecoder struct {
	b     []byte
	pos   int
	order dbusByteOrder
	depth int
}

var errDBusShort = errors.New("the message ends inside a value")

func (d *dbusDecoder) align(n int) error {
	for d.pos%n != 0 {
		if d.pos >= len(d.b) {
			return errDBusShort
		}
		if d.b[d.pos] != 0 {
			return fmt.Errorf("non-zero padding at byte %d", d.pos)
		}
		d.pos++
	}
	return nil
}

func (d *dbusDecoder) take(n int) ([]byte, error) {
	if n < 0 || n > len(d.b)-d.pos {
		return nil, errDBusShort
	}
	p := d.b[d.pos : d.pos+n]
	d.pos += n
	return p, nil
}

func (d *dbusDecoder) u32() (uint32, error) {
	if err := d.align(4); err != nil {
		return 0, err
	}
	p, err := d.take(4)
	if err != nil {
		return 0, err
	}
	return d.order.Uint32(p), nil
}

// text reads the bytes of a string, object path or signature and its
// terminating NUL.
func (d *dbusDecoder) text(n int) (string, error) {
	p, err := d.take(n + 1)
	if err != nil {
		return "", err
	}
	if p[n] != 0 {
		return "", errors.New("a string is not NUL-terminated")
	}
	s := string(p[:n])
	return s, dbusCheckString(s)
}

func dbusCheckString(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("a string is not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("a string contains NUL")
	}
	return nil
}

func (d *dbusDecoder) signature() (string, error) {
	p, err := d.take(1)
	if err != nil {
		return "", err
	}
	s, err := d.text(int(p[0]))
	if err != nil {
		return "", err
	}
	if _, err := dbusSplitSig(s); err != nil {
		return "", err
	}
	return s, nil
}

// values decodes the complete types of a checked signature.
func (d *dbusDecoder) values(sig string) ([]any, error) {
	types, err := dbusSplitSig(sig)
	if err != nil {
		return nil, err
	}
	out := make([]any, 0, len(types))
	for _, t := range types {
		v, err := d.value(t)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (d *dbusDecoder) value(sig string) (any, error) {
	if d.depth++; d.depth > dbusMaxTotalDepth {
		return nil, fmt.Errorf("values nested deeper than %d", dbusMaxTotalDepth)
	}
	defer func() { d.depth-- }()
	c := sig[0]
	if err := d.align(dbusAlignOf(c)); err != nil {
		return nil, err
	}
	var size int
	switch c {
	case 'y':
		size = 1
	case 'n', 'q':
		size = 2
	case 'b', 'i', 'u':
		size = 4
	case 'x', 't', 'd':
		size = 8
	}
	if size > 0 {
		p, err := d.take(size)
		if err != nil {
			return nil, err
		}
		switch c {
		case 'y':
			return p[0], nil
		case 'b':
			switch d.order.Uint32(p) {
			case 0:
				return false, nil
			case 1:
				return true, nil
			}
			return nil, errors.New("a boolean other than 0 or 1")
		case 'n':
			return int16(d.order.Uint16(p)), nil
		case 'q':
			return d.order.Uint16(p), nil
		case 'i':
			return int32(d.order.Uint32(p)), nil
		case 'u':
			return d.order.Uint32(p), nil
		case 'x':
			return int64(d.order.Uint64(p)), nil
		case 't':
			return d.order.Uint64(p), nil
		default:
			return math.Float64frombits(d.order.Uint64(p)), nil
		}
	}
	switch c {
	case 's', 'o':
		n, err := d.u32()
		if err != nil {
			return nil, err
		}
		if int64(n) > int64(len(d.b)) {
			return nil, errDBusShort
		}
		s, err := d.text(int(n))
		if err != nil {
			return nil, err
		}
		if c == 'o' {
			if !validObjectPath(s) {
				return nil, fmt.Errorf("%q is not an object path", s)
			}
			return dbusObjectPath(s), nil
		}
		return s, nil
	case 'g':
		s, err := d.signature()
		return dbusSignature(s), err
	case 'h':
		return nil, errDBusUnixFD
	case 'v':
		s, err := d.signature()
		if err != nil {
			return nil, err
		}
		if types, _ := dbusSplitSig(s); len(types) != 1 {
			return nil, fmt.Errorf("a variant of signature %q: it must hold one complete type", s)
		}
		v, err := d.value(s)
		return dbusVariant{Sig: s, Value: v}, err
	case '(':
		vs, err := d.values(sig[1 : len(sig)-1])
		return dbusStruct(vs), err
	case 'a':
		return d.array(sig[1:])
	}
	return nil, fmt.Errorf("%q is not a complete type", sig)
}

func (d *dbusDecoder) array(elem string) (any, error) {
	n, err := d.u32()
	if err != nil {
		return nil, err
	}
	if n > dbusMaxArray {
		return nil, fmt.Errorf("an array of %d bytes; at most %d", n, dbusMaxArray)
	}
	if err := d.align(dbusAlign(elem[0])); err != nil {
		return nil, err
	}
	if int(n) > len(d.b)-d.pos {
		return nil, errDBusShort
	}
	end := d.pos + int(n)
	if elem == "y" {
		p, _ := d.take(int(n))
		return append([]byte{}, p...), nil
	}
	// The array's own bytes bound every element read below.
	whole := d.b
	d.b = d.b[:end]
	defer func() { d.b = whole }()
	if elem[0] == '{' {
		types, _ := dbusSplitSig(elem[1 : len(elem)-1])
		out := []dbusDictEntry{}
		for d.pos < end {
			if err := d.align(8); err != nil {
				return nil, err
			}
			k, err := d.value(types[0])
			if err != nil {
				return nil, err
			}
			v, err := d.value(types[1])
			if err != nil {
				return nil, err
			}
			out = append(out, dbusDictEntry{k, v})
		}
		return out, nil
	}
	out := []any{}
	for d.pos < end {
		v, err := d.value(elem)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Names (see the specification's "Valid names").

func validObjectPath(p string) bool {
	if p == "/" {
		return true
	}
	if len(p) < 2 || p[0] != '/' || p[len(p)-1] == '/' {
		return false
	}
	for _, el := range strings.Split(p[1:], "/") {
		if el == "" || !dbusNameChars(el, false) {
			return false
		}
	}
	return true
}

func dbusNameChars(s string, dash bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || dash && c == '-') {
			return false
		}
	}
	return true
}

// validInterfaceName is also the rule for error names.
func validInterfaceName(s string) bool {
	if len(s) > dbusMaxName {
		return false
	}
	els := strings.Split(s, ".")
	if len(els) < 2 {
		return false
	}
	for _, el := range els {
		if el == "" || el[0] >= '0' && el[0] <= '9' || !dbusNameChars(el, false) {
			return false
		}
	}
	return true
}

func validMemberName(s string) bool {
	return s != "" && len(s) <= dbusMaxName && !(s[0] >= '0' && s[0] <= '9') && dbusNameChars(s, false)
}

func validBusName(s string) bool {
	if len(s) > dbusMaxName || s == "" {
		return false
	}
	unique := s[0] == ':'
	els := strings.Split(strings.TrimPrefix(s, ":"), ".")
	if len(els) < 2 {
		return false
	}
	for _, el := range els {
		if el == "" || !unique && el[0] >= '0' && el[0] <= '9' || !dbusNameChars(el, true) {
			return false
		}
	}
	return true
}

// dbusMsg is one message. Body stays encoded until args decodes it
// against the signature its receiver expects.
type dbusMsg struct {
	Order       byte // 'l' or 'B'
	Type        byte
	Flags       byte
	Serial      uint32
	Path        dbusObjectPath
	Interface   string
	Member      string
	ErrorName   string
	ReplySerial uint32
	Destination string
	Sender      string
	Signature   string
	Body        []byte
}

// encode gives the message's bytes with these body values (nil: keep
// Body as it is, which must be in m.Order).
func (m *dbusMsg) encode(args ...any) ([]byte, error) {
	if m.Order == 0 {
		m.Order = 'l'
	}
	order := dbusOrder(m.Order)
	if args != nil {
		be := dbusEncoder{order: order}
		if err := be.values(m.Signature, args); err != nil {
			return nil, err
		}
		m.Body = be.buf
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	e := dbusEncoder{order: order, buf: []byte{m.Order, m.Type, m.Flags, 1}}
	e.u32(uint32(len(m.Body)))
	e.u32(m.Serial)
	var fields []any
	add := func(code byte, sig string, v any) {
		fields = append(fields, dbusStruct{code, dbusVariant{sig, v}})
	}
	if m.Path != "" {
		add(dbusFieldPath, "o", m.Path)
	}
	for _, f := range []struct {
		code byte
		v    string
	}{{dbusFieldInterface, m.Interface}, {dbusFieldMember, m.Member}, {dbusFieldErrorName, m.ErrorName},
		{dbusFieldDestination, m.Destination}, {dbusFieldSender, m.Sender}} {
		if f.v != "" {
			add(f.code, "s", f.v)
		}
	}
	if m.ReplySerial != 0 {
		add(dbusFieldReplySerial, "u", m.ReplySerial)
	}
	if m.Signature != "" {
		add(dbusFieldSignature, "g", dbusSignature(m.Signature))
	}
	if err := e.value("a(yv)", fields); err != nil {
		return nil, err
	}
	e.align(8)
	if len(e.buf)+len(m.Body) > dbusMaxMessage {
		return nil, fmt.Errorf("a message of %d bytes; at most %d", len(e.buf)+len(m.Body), dbusMaxMessage)
	}
	return append(e.buf, m.Body...), nil
}

// check applies the specification's rules for a message's header.
func (m *dbusMsg) check() error {
	if m.Serial == 0 {
		return errors.New("a message with serial 0")
	}
	if m.Path != "" && !validObjectPath(string(m.Path)) {
		return fmt.Errorf("%q is not an object path", m.Path)
	}
	if m.Interface != "" && !validInterfaceName(m.Interface) {
		return fmt.Errorf("%q is not an interface name", m.Interface)
	}
	if m.Member != "" && !validMemberName(m.Member) {
		return fmt.Errorf("%q is not a member name", m.Member)
	}
	if m.ErrorName != "" && !validInterfaceName(m.ErrorName) {
		return fmt.Errorf("%q is not an error name", m.ErrorName)
	}
	for _, n := range []string{m.Destination, m.Sender} {
		if n != "" && !validBusName(n) {
			return fmt.Errorf("%q is not a bus name", n)
		}
	}
	switch m.Type {
	case dbusMethodCall:
		if m.Path == "" || m.Member == "" {
			return errors.New("a method call without a path or a member")
		}
	case dbusSignal:
		if m.Path == "" || m.Interface == "" || m.Member == "" {
			return errors.New("a signal without a path, an interface or a member")
		}
	case dbusError:
		if m.ErrorName == "" || m.ReplySerial == 0 {
			return errors.New("an error without a name or a reply serial")
		}
	case dbusMethodReturn:
		if m.ReplySerial == 0 {
			return errors.New("a method return without a reply serial")
		}
	default:
		return fmt.Errorf("message type %d", m.Type)
	}
	return nil
}

// args decodes the body, which must have signature sig exactly.
func (m *dbusMsg) args(sig string) ([]any, error) {
	if m.Signature != sig {
		return nil, fmt.Errorf("arguments of signature %q, expected %q", m.Signature, sig)
	}
	// The body starts 8-aligned, so its alignment is its own.
	d := dbusDecoder{b: m.Body, order: dbusOrder(m.Order)}
	vs, err := d.values(sig)
	if err == nil && d.pos != len(m.Body) {
		err = fmt.Errorf("%d bytes after the arguments", len(m.Body)-d.pos)
	}
	return vs, err
}

// dbusFrameLen reads a message's fixed part (its first 16 bytes) and
// returns the whole message's length.
func dbusFrameLen(fixed []byte) (int, error) {
	if fixed[0] != 'l' && fixed[0] != 'B' {
		return 0, fmt.Errorf("byte order %q", fixed[0])
	}
	if fixed[3] != 1 {
		return 0, fmt.Errorf("protocol version %d", fixed[3])
	}
	order := dbusOrder(fixed[0])
	body, fields := uint64(order.Uint32(fixed[4:])), uint64(order.Uint32(fixed[12:]))
	if fields > dbusMaxArray {
		return 0, fmt.Errorf("header fields of %d bytes; at most %d", fields, dbusMaxArray)
	}
	n := (16+fields+7)&^7 + body
	if n > dbusMaxMessage {
		return 0, fmt.Errorf("a message of %d bytes; at most %d", n, dbusMaxMessage)
	}
	return int(n), nil
}

// decodeDBusMsg parses one whole message; the body is checked to decode
// against its signature.
func decodeDBusMsg(b []byte) (*dbusMsg, error) {
	if len(b) < 16 {
		return nil, errDBusShort
	}
	n, err := dbusFrameLen(b)
	if err != nil {
		return nil, err
	}
	if n != len(b) {
		return nil, fmt.Errorf("a message of %d bytes whose header says %d", len(b), n)
	}
	m := &dbusMsg{Order: b[0], Type: b[1], Flags: b[2]}
	d := dbusDecoder{b: b, pos: 8, order: dbusOrder(b[0])}
	m.Serial, _ = d.u32()
	fv, err := d.value("a(yv)")
	if err != nil {
		return nil, fmt.Errorf("header fields: %w", err)
	}
	seen := map[byte]bool{}
	for _, f := range fv.([]any) {
		st := f.(dbusStruct)
		code, v := st[0].(byte), st[1].(dbusVariant)
		if seen[code] {
			return nil, fmt.Errorf("header field %d appears twice", code)
		}
		seen[code] = true
		want := map[byte]string{dbusFieldPath: "o", dbusFieldInterface: "s", dbusFieldMember: "s", dbusFieldErrorName: "s",
			dbusFieldReplySerial: "u", dbusFieldDestination: "s", dbusFieldSender: "s", dbusFieldSignature: "g", dbusFieldUnixFDs: "u"}[code]
		if want == "" {
			continue // unknown fields are ignored
		}
		if v.Sig != want {
			return nil, fmt.Errorf("header field %d of type %q, not %q", code, v.Sig, want)
		}
		switch code {
		case dbusFieldPath:
			m.Path = v.Value.(dbusObjectPath)
		case dbusFieldInterface:
			m.Interface = v.Value.(string)
		case dbusFieldMember:
			m.Member = v.Value.(string)
		case dbusFieldErrorName:
			m.ErrorName = v.Value.(string)
		case dbusFieldReplySerial:
			m.ReplySerial = v.Value.(uint32)
		case dbusFieldDestination:
			m.Destination = v.Value.(string)
		case dbusFieldSender:
			m.Sender = v.Value.(string)
		case dbusFieldSignature:
			m.Signature = string(v.Value.(dbusSignature))
		case dbusFieldUnixFDs:
			if v.Value.(uint32) != 0 {
				return nil, errDBusUnixFD
			}
		}
	}
	if err := d.align(8); err != nil {
		return nil, err
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	m.Body = b[d.pos:]
	if _, err := m.args(m.Signature); err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	return m, nil
}

// dbusBadMsg is a message that was framed right but is otherwise
// malformed: the stream can go on after it.
type dbusBadMsg struct{ err error }

func (e *dbusBadMsg) Error() string { return "a malformed message: " + e.err.Error() }

// readDBusMsg reads one message from a stream.
func readDBusMsg(r io.Reader) (*dbusMsg, error) {
	fixed := make([]byte, 16)
	if _, err := io.ReadFull(r, fixed); err != nil {
		return nil, err
	}
	n, err := dbusFrameLen(fixed)
	if err != nil {
		return nil, err // the stream cannot be followed any further
	}
	// Memory grows as the bytes arrive, not as a header claims.
	buf := bytes.NewBuffer(make([]byte, 0, min(n, 64<<10)))
	buf.Write(fixed)
	if _, err := io.CopyN(buf, r, int64(n-16)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	m, err := decodeDBusMsg(buf.Bytes())
	if err != nil {
		return nil, &dbusBadMsg{err}
	}
	return m, nil
}

// dbusError is an error a peer answered with.
type dbusErrorReply struct {
	Name, Message string
}

func (e *dbusErrorReply) Error() string {
	if e.Message == "" {
		return e.Name
	}
	return e.Name + ": " + e.Message
}

// dbusConn is a connection to a message bus.
type dbusConn struct {
	conn   net.Conn
	r      *bufio.Reader
	wmu    sync.Mutex
	serial atomic.Uint32
	name   string // the unique name Hello gave

	mu      sync.Mutex
	pending map[uint32]chan *dbusMsg
	err     error         // why the connection ended
	done    chan struct{} // closed when it ends

	// Incoming receives every method call and signal; calls' replies go
	// to their callers.
	incoming chan *dbusMsg
	out      *output // where a message not understood is reported
}

// sessionBusAddress is where the session bus listens, as libdbus finds it.
func sessionBusAddress(getenv func(string) string) (string, error) {
	if a := getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
		return a, nil
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		p := d + "/bus"
		if _, err := os.Stat(p); err == nil {
			return "unix:path=" + dbusEscape(p), nil
		}
	}
	return "", errors.New("no session bus: DBUS_SESSION_BUS_ADDRESS is not set and there is no $XDG_RUNTIME_DIR/bus")
}

func dbusEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_/.\\*", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02x", c)
		}
	}
	return b.String()
}

// dbusSocketOf parses one address of a server address list into the
// socket to dial ("@name" for an abstract one).
func dbusSocketOf(addr string) (string, error) {
	transport, params, ok := strings.Cut(addr, ":")
	if !ok {
		return "", fmt.Errorf("%q: no transport", addr)
	}
	if transport != "unix" {
		return "", fmt.Errorf("%q: transport %q is not supported (only unix)", addr, transport)
	}
	kv := map[string]string{}
	for _, p := range strings.Split(params, ",") {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return "", fmt.Errorf("%q: %q is not key=value", addr, p)
		}
		u, err := dbusUnescape(v)
		if err != nil {
			return "", fmt.Errorf("%q: %v", addr, err)
		}
		kv[k] = u
	}
	switch {
	case kv["path"] != "":
		return kv["path"], nil
	case kv["abstract"] != "":
		return "@" + kv["abstract"], nil
	}
	return "", fmt.Errorf("%q: neither path= nor abstract= (a client cannot connect to it)", addr)
}

func dbusUnescape(v string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+2 >= len(v) {
			return "", fmt.Errorf("%q: a bad escape", v)
		}
		x, err := strconv.ParseUint(v[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("%q: a bad escape", v)
		}
		b.WriteByte(byte(x))
		i += 2
	}
	return b.String(), nil
}

// dialDBus connects to the first address of the list that answers,
// authenticates and says Hello.
func dialDBus(addrs string, out *output) (*dbusConn, error) {
	var errs []string
	for _, a := range strings.Split(addrs, ";") {
		if a == "" {
			continue
		}
		sock, err := dbusSocketOf(a)
		if err == nil {
			var conn net.Conn
			if conn, err = net.DialTimeout("unix", sock, 10*time.Second); err == nil {
				c, err := newDBusConn(conn, out)
				if err == nil {
					return c, nil
				}
				errs = append(errs, err.Error())
				continue
			}
		}
		errs = append(errs, err.Error())
	}
	if errs == nil {
		return nil, fmt.Errorf("bus address %q names no server", addrs)
	}
	return nil, fmt.Errorf("connecting to the bus: %s", strings.Join(errs, "; "))
}

func newDBusConn(conn net.Conn, out *output) (*dbusConn, error) {
	c := &dbusConn{conn: conn, out: out, r: bufio.NewReaderSize(conn, 64<<10), pending: map[uint32]chan *dbusMsg{},
		done: make(chan struct{}), incoming: make(chan *dbusMsg, 64)}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.auth(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("authenticating to the bus: %w", err)
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop()
	reply, err := c.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", "")
	if err == nil {
		var vs []any
		if vs, err = reply.args("s"); err == nil {
			c.name = vs[0].(string)
		}
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("Hello: %w", err)
	}
	return c, nil
}

// auth is SASL EXTERNAL: the bus knows who we are from the socket.
func (c *dbusConn) auth() error {
	uid := hex.EncodeToString([]byte(strconv.Itoa(os.Geteuid())))
	if _, err := c.conn.Write([]byte("\x00AUTH EXTERNAL " + uid + "\r\n")); err != nil {
		return err
	}
	line, err := c.saslLine()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "OK ") {
		return fmt.Errorf("the bus refused EXTERNAL: %q", line)
	}
	_, err = c.conn.Write([]byte("BEGIN\r\n"))
	return err
}

func (c *dbusConn) saslLine() (string, error) {
	var b []byte
	for len(b) < 1024 {
		ch, err := c.r.ReadByte()
		if err != nil {
			return "", err
		}
		if ch == '\n' {
			return strings.TrimSuffix(string(b), "\r"), nil
		}
		b = append(b, ch)
	}
	return "", errors.New("an over-long line from the bus")
}

func (c *dbusConn) readLoop() {
	defer close(c.incoming)
	for {
		m, err := readDBusMsg(c.r)
		var bad *dbusBadMsg
		if errors.As(err, &bad) {
			c.out.warnf("D-Bus: ignoring %v", err)
			continue
		}
		if err != nil {
			c.fail(err)
			return
		}
		if m.Type == dbusMethodReturn || m.Type == dbusError {
			c.mu.Lock()
			ch := c.pending[m.ReplySerial]
			delete(c.pending, m.ReplySerial)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		select {
		case c.incoming <- m:
		case <-c.done:
			return
		}
	}
}

func (c *dbusConn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
}

func (c *dbusConn) close() {
	c.fail(errors.New("connection closed"))
	c.conn.Close()
}

// send writes a message with the next serial, which it returns.
func (c *dbusConn) send(m *dbusMsg, args ...any) (uint32, error) {
	return c.sendAwaiting(m, nil, args...)
}

// sendAwaiting is send, with reply registered to receive the answer
// before the message can be answered.
func (c *dbusConn) sendAwaiting(m *dbusMsg, reply chan *dbusMsg, args ...any) (uint32, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	m.Serial = c.serial.Add(1)
	if m.Serial == 0 {
		m.Serial = c.serial.Add(1)
	}
	b, err := m.encode(args...)
	if err != nil {
		return 0, err
	}
	if reply != nil {
		c.mu.Lock()
		c.pending[m.Serial] = reply
		c.mu.Unlock()
	}
	if _, err = c.conn.Write(b); err != nil && reply != nil {
		c.mu.Lock()
		delete(c.pending, m.Serial)
		c.mu.Unlock()
	}
	return m.Serial, err
}

// call sends a method call and waits (25 s at most, as libdbus) for its reply.
func (c *dbusConn) call(dest string, path dbusObjectPath, iface, member, sig string, args ...any) (*dbusMsg, error) {
	return c.callTimeout(25*time.Second, dest, path, iface, member, sig, args...)
}

func (c *dbusConn) callTimeout(timeout time.Duration, dest string, path dbusObjectPath, iface, member, sig string, args ...any) (*dbusMsg, error) {
	ch := make(chan *dbusMsg, 1)
	m := &dbusMsg{Type: dbusMethodCall, Destination: dest, Path: path, Interface: iface, Member: member, Signature: sig}
	serial, err := c.sendAwaiting(m, ch, args...)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.Type == dbusError {
			e := &dbusErrorReply{Name: r.ErrorName}
			if vs, err := r.args(r.Signature); err == nil && len(vs) > 0 {
				e.Message, _ = vs[0].(string)
			}
			return nil, e
		}
		return r, nil
	case <-c.done:
		return nil, c.err
	case <-t.C:
		c.mu.Lock()
		delete(c.pending, serial)
		c.mu.Unlock()
		return nil, fmt.Errorf("%s.%s: no reply within %s", iface, member, timeout)
	}
}

// sortedDict is a{sv} with its keys in order, for stable output.
func sortedDict(m map[string]dbusVariant) []dbusDictEntry {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]dbusDictEntry, len(keys))
	for i, k := range keys {
		out[i] = dbusDictEntry{k, m[k]}
	}
	return out
}
