package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func dbusMarshal(t *testing.T, order byte, sig string, args ...any) []byte {
	t.Helper()
	e := dbusEncoder{order: dbusOrder(order)}
	if err := e.values(sig, args); err != nil {
		t.Fatalf("encoding %q %v: %v", sig, args, err)
	}
	return e.buf
}

func dbusUnmarshal(order byte, sig string, b []byte) ([]any, error) {
	m := dbusMsg{Order: order, Signature: sig, Body: b}
	return m.args(sig)
}

// Encodings worked out by hand from the specification: alignment from
// the start, padding before the first element of an empty array, the
// length of an array not counting that padding.
func TestDBusVectors(t *testing.T) {
	for _, v := range []struct {
		order byte
		sig   string
		args  []any
		hex   string
	}{
		{'l', "yu", []any{byte(1), uint32(0x01020304)}, "01000000 04030201"},
		{'B', "yu", []any{byte(1), uint32(0x01020304)}, "01000000 01020304"},
		{'l', "nq", []any{int16(-2), uint16(0x0102)}, "feff 0201"},
		{'B', "bi", []any{true, int32(-1)}, "00000001 ffffffff"},
		{'l', "s", []any{"ab"}, "02000000 616200"},
		{'l', "yo", []any{byte(7), dbusObjectPath("/a")}, "07000000 02000000 2f6100"},
		{'l', "g", []any{dbusSignature("ai")}, "02616900"},
		{'l', "ax", []any{[]any{int64(1)}}, "08000000 00000000 0100000000000000"},
		{'l', "ax", []any{[]any{}}, "00000000 00000000"},
		{'B', "ay", []any{[]byte{1, 2, 3}}, "00000003 010203"},
		{'l', "(yd)", []any{dbusStruct{byte(1), 1.0}}, "01000000 00000000 000000000000f03f"},
		{'l', "a{sv}", []any{[]dbusDictEntry{{"k", dbusVariant{"u", uint32(7)}}}},
			"10000000 00000000 01000000 6b00 017500 000000 07000000"},
		{'B', "xt", []any{int64(-1), uint64(2)}, "ffffffffffffffff 0000000000000002"},
		{'l', "v", []any{dbusVariant{"as", []any{"x"}}}, "026173 00 06000000 0100000078 00"},
	} {
		want, _ := hex.DecodeString(strings.ReplaceAll(v.hex, " ", ""))
		got := dbusMarshal(t, v.order, v.sig, v.args...)
		if !bytes.Equal(got, want) {
			t.Errorf("%c %q %v:\n got %x\nwant %x", v.order, v.sig, v.args, got, want)
			continue
		}
		back, err := dbusUnmarshal(v.order, v.sig, want)
		if err != nil || !reflect.DeepEqual(back, v.args) {
			t.Errorf("%c %q: %x decodes as %#v, %v; want %#v", v.order, v.sig, want, back, err, v.args)
		}
	}
}

// Every type, nested, in both byte orders, comes back as it went.
func TestDBusRoundTripAllTypes(t *testing.T) {
	sig := "ybnqiuxtdsogv(ybv)a{sv}a{ia(ds)}aaya(yv)" + "a{oy}"
	args := []any{
		byte(0xfe), true, int16(math.MinInt16), uint16(math.MaxUint16), int32(math.MinInt32), uint32(math.MaxUint32),
		int64(math.MinInt64), uint64(math.MaxUint64), math.Inf(-1), "héllo", dbusObjectPath("/org/karapace/Manager1"),
		dbusSignature("a{sv}(ii)"), dbusVariant{"(sv)", dbusStruct{"x", dbusVariant{"d", 2.5}}},
		dbusStruct{byte(1), false, dbusVariant{"ay", []byte{}}},
		[]dbusDictEntry{{"a", dbusVariant{"s", "b"}}, {"c", dbusVariant{"at", []any{uint64(1), uint64(2)}}}},
		[]dbusDictEntry{{int32(-5), []any{dbusStruct{0.5, "half"}}}, {int32(9), []any{}}},
		[]any{[]byte("one"), []byte{}, []byte{0}},
		[]any{dbusStruct{byte(3), dbusVariant{"v", dbusVariant{"y", byte(4)}}}},
		[]dbusDictEntry{{dbusObjectPath("/"), byte(1)}},
	}
	for _, order := range []byte{'l', 'B'} {
		b := dbusMarshal(t, order, sig, args...)
		// After a leading byte and a leading int16, every value sits
		// elsewhere against its alignment and must be padded back.
		for _, lead := range []struct {
			sig string
			v   any
		}{{"y", byte(9)}, {"n", int16(9)}} {
			shifted := dbusMarshal(t, order, lead.sig+sig, append([]any{lead.v}, args...)...)
			back, err := dbusUnmarshal(order, lead.sig+sig, shifted)
			if err != nil || !reflect.DeepEqual(back[1:], args) {
				t.Fatalf("%c after %q: %v", order, lead.sig, err)
			}
		}
		back, err := dbusUnmarshal(order, sig, b)
		if err != nil {
			t.Fatalf("%c: %v", order, err)
		}
		if !reflect.DeepEqual(back, args) {
			t.Fatalf("%c: got\n%#v\nwant\n%#v", order, back, args)
		}
	}
	if bytes.Equal(dbusMarshal(t, 'l', sig, args...), dbusMarshal(t, 'B', sig, args...)) {
		t.Fatal("both byte orders gave the same bytes")
	}
}

func TestDBusSignatures(t *testing.T) {
	for _, ok := range []string{"", "y", "a{sv}", "(i(ii))", "aai", "a(yv)", "ha{ss}", strings.Repeat("a", 32) + "y",
		strings.Repeat("(", 32) + "y" + strings.Repeat(")", 32)} {
		if _, err := dbusSplitSig(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"a", "(", ")", "()", "(y", "a{}", "a{s}", "a{vs}", "a{sss}", "{sv}", "a{(i)s}", "z", "i)",
		strings.Repeat("a", 33) + "y", strings.Repeat("(", 33) + "y" + strings.Repeat(")", 33), strings.Repeat("y", 256)} {
		if _, err := dbusSplitSig(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDBusDecodeRefuses(t *testing.T) {
	le := binary.LittleEndian
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	for _, c := range []struct {
		sig  string
		body []byte
		want string
	}{
		{"b", u32(2), "boolean"},
		{"yu", []byte{1, 0, 1, 0, 5, 0, 0, 0}, "padding"},
		{"s", append(u32(2), 'a', 'b', 'c'), "NUL-terminated"},
		{"s", append(u32(2), 0xff, 0xfe, 0), "UTF-8"},
		{"s", append(u32(3), 'a', 0, 'b', 0), "contains NUL"},
		{"s", u32(1 << 30), "ends inside"},
		{"o", append(u32(2), '/', '/', 0), "object path"},
		{"g", []byte{1, 'z', 0}, "not a type"},
		{"v", []byte{2, 'y', 'y', 0, 1, 2}, "one complete type"},
		{"ay", u32(dbusMaxArray + 1), "at most"},
		{"ai", append(u32(6), 1, 0, 0, 0, 2, 0, 0, 0), "ends inside"},
		{"h", u32(0), "file descriptors"},
		{"av", append(u32(4), 1, 'h', 0, 0, 0, 0, 0, 0), "file descriptors"},
		{"y", []byte{1, 2}, "after the arguments"},
	} {
		_, err := dbusUnmarshal('l', c.sig, c.body)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %x: %v, want an error saying %q", c.sig, c.body, err, c.want)
		}
	}
	// Variants inside variants count towards the depth limit.
	var deep []byte
	for i := 0; i < dbusMaxTotalDepth; i++ {
		deep = append(deep, 1, 'v', 0)
	}
	deep = append(deep, 1, 'y', 0, 7)
	if _, err := dbusUnmarshal('l', "v", deep); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Errorf("%d nested variants: %v", dbusMaxTotalDepth+1, err)
	}
	e := dbusEncoder{order: dbusOrder('l')}
	if err := e.values("h", []any{int32(0)}); err != errDBusUnixFD {
		t.Errorf("encoding a unix fd: %v", err)
	}
}

func testDBusMsg() *dbusMsg {
	return &dbusMsg{Type: dbusMethodCall, Flags: dbusNoReplyExpected, Path: "/org/karapace/Manager1", Interface: "org.karapace.Manager1",
		Member: "RenameEnvironment", Destination: "org.karapace.Manager1", Sender: ":1.7", Signature: "ss"}
}

func TestDBusMessageRoundTrip(t *testing.T) {
	for _, order := range []byte{'l', 'B'} {
		m := testDBusMsg()
		m.Order, m.Serial = order, 42
		b, err := m.encode("abc", "new-name")
		if err != nil {
			t.Fatal(err)
		}
		if len(b)%8 != len(m.Body)%8 || b[0] != order {
			t.Fatalf("%c: header not padded to 8: %d bytes, body %d", order, len(b), len(m.Body))
		}
		got, err := readDBusMsg(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%c: %v", order, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%c: got %+v\nwant %+v", order, got, m)
		}
		args, err := got.args("ss")
		if err != nil || args[0] != "abc" || args[1] != "new-name" {
			t.Fatalf("%c: args %v %v", order, args, err)
		}
		if _, err := got.args("s"); err == nil {
			t.Fatalf("%c: arguments decoded against the wrong signature", order)
		}
	}
}

// rawDBusMsg builds a message from header fields given as they are, to
// make ones an encoder would refuse.
func rawDBusMsg(t *testing.T, typ byte, serial uint32, fields []any, body []byte) []byte {
	e := dbusEncoder{order: dbusOrder('l'), buf: []byte{'l', typ, 0, 1}}
	e.u32(uint32(len(body)))
	e.u32(serial)
	if err := e.value("a(yv)", fields); err != nil {
		t.Fatal(err)
	}
	e.align(8)
	return append(e.buf, body...)
}

func field(code byte, sig string, v any) any { return dbusStruct{code, dbusVariant{sig, v}} }

func TestDBusMessageRefuses(t *testing.T) {
	path := field(dbusFieldPath, "o", dbusObjectPath("/a"))
	member := field(dbusFieldMember, "s", "M")
	for _, c := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"serial 0", rawDBusMsg(t, dbusMethodCall, 0, []any{path, member}, nil), "serial 0"},
		{"no member", rawDBusMsg(t, dbusMethodCall, 1, []any{path}, nil), "without a path or a member"},
		{"signal without interface", rawDBusMsg(t, dbusSignal, 1, []any{path, member}, nil), "without a path, an interface"},
		{"error without name", rawDBusMsg(t, dbusError, 1, []any{field(dbusFieldReplySerial, "u", uint32(1))}, nil), "without a name"},
		{"return without serial", rawDBusMsg(t, dbusMethodReturn, 1, nil, nil), "without a reply serial"},
		{"type 9", rawDBusMsg(t, 9, 1, []any{path, member}, nil), "message type"},
		{"twice", rawDBusMsg(t, dbusMethodCall, 1, []any{path, member, member}, nil), "twice"},
		{"member typed u", rawDBusMsg(t, dbusMethodCall, 1, []any{path, field(dbusFieldMember, "u", uint32(1))}, nil), "of type"},
		{"bad member", rawDBusMsg(t, dbusMethodCall, 1, []any{path, field(dbusFieldMember, "s", "9x")}, nil), "member name"},
		{"bad interface", rawDBusMsg(t, dbusMethodCall, 1, []any{path, member, field(dbusFieldInterface, "s", "nodot")}, nil), "interface name"},
		{"bad sender", rawDBusMsg(t, dbusMethodCall, 1, []any{path, member, field(dbusFieldSender, "s", "a..b")}, nil), "bus name"},
		{"fds", rawDBusMsg(t, dbusMethodCall, 1, []any{path, member, field(dbusFieldUnixFDs, "u", uint32(1))}, nil), "file descriptors"},
		{"body without signature", rawDBusMsg(t, dbusMethodCall, 1, []any{path, member}, []byte{1}), "after the arguments"},
		{"body short", rawDBusMsg(t, dbusMethodCall, 1, []any{path, member, field(dbusFieldSignature, "g", dbusSignature("u"))}, []byte{1}), "ends inside"},
	} {
		_, err := readDBusMsg(bytes.NewReader(c.msg))
		var bad *dbusBadMsg
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		} else if !asBadMsg(err, &bad) {
			t.Errorf("%s: framed right, yet %v ends the stream", c.name, err)
		}
	}
	// Unknown header fields are skipped, as the specification asks.
	if m, err := decodeDBusMsg(rawDBusMsg(t, dbusMethodCall, 1, []any{path, member, field(200, "as", []any{"x"})}, nil)); err != nil || m.Member != "M" {
		t.Errorf("an unknown header field: %v", err)
	}

	// The fixed part alone refuses what the stream cannot carry: more
	// than 128 MiB is never read.
	fixed := func(order byte, version byte, body, fields uint32) []byte {
		b := []byte{order, dbusMethodCall, 0, version}
		o := dbusOrder('l')
		if order == 'B' {
			o = dbusOrder('B')
		}
		b = o.AppendUint32(b, body)
		b = o.AppendUint32(b, 1)
		return o.AppendUint32(b, fields)
	}
	for _, c := range []struct {
		b    []byte
		want string
	}{
		{fixed('l', 1, dbusMaxMessage, 8), "at most"},
		{fixed('B', 1, 0, dbusMaxArray+8), "at most"},
		{fixed('x', 1, 0, 0), "byte order"},
		{fixed('l', 2, 0, 0), "protocol version"},
	} {
		r := &countingReader{r: bytes.NewReader(append(c.b, make([]byte, 64)...))}
		_, err := readDBusMsg(r)
		if err == nil || !strings.Contains(err.Error(), c.want) || r.n != 16 {
			t.Errorf("%x: %v after reading %d bytes, want an error saying %q after 16", c.b, err, r.n, c.want)
		}
	}
}

func asBadMsg(err error, bad **dbusBadMsg) bool {
	b, ok := err.(*dbusBadMsg)
	*bad = b
	return ok
}

type countingReader struct {
	r interface{ Read([]byte) (int, error) }
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestDBusNames(t *testing.T) {
	for _, c := range []struct {
		valid func(string) bool
		ok    []string
		bad   []string
	}{
		{validObjectPath, []string{"/", "/a", "/org/karapace/Manager1", "/a_b/C9"}, []string{"", "a", "/a/", "//", "/a-b", "/a//b", "/é"}},
		{validInterfaceName, []string{"org.karapace.Manager1", "a._b"}, []string{"org", "org.", ".org.x", "org.9x", "org.a-b", strings.Repeat("a.", 128) + "a"}},
		{validMemberName, []string{"Hello", "_x9"}, []string{"", "9x", "a.b", "a-b"}},
		{validBusName, []string{":1.42", "org.karapace.Manager1", "a-b.c", ":a.9"}, []string{"", ":1", "org", "9a.b", "a..b", "a.b.", "a b.c"}},
	} {
		for _, s := range c.ok {
			if !c.valid(s) {
				t.Errorf("%q refused", s)
			}
		}
		for _, s := range c.bad {
			if c.valid(s) {
				t.Errorf("%q accepted", s)
			}
		}
	}
}

func TestDBusAddresses(t *testing.T) {
	for addr, want := range map[string]string{
		"unix:path=/run/user/1000/bus":            "/run/user/1000/bus",
		"unix:path=/tmp/a%20b,guid=0123":          "/tmp/a b",
		"unix:abstract=/tmp/dbus-X,guid=abcdef":   "@/tmp/dbus-X",
		"unix:guid=1,abstract=%2ftmp%2fx":         "@/tmp/x",
		"tcp:host=localhost,port=1":               "",
		"unix:tmpdir=/tmp":                        "",
		"unix:path":                               "",
		"unix:path=%zz":                           "",
		"nonsense":                                "",
		"unix:path=" + dbusEscape("/tmp/ä b,c;d"): "/tmp/ä b,c;d",
	} {
		got, err := dbusSocketOf(addr)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%q: %q, %v; want %q", addr, got, err, want)
		}
	}
	env := map[string]string{"XDG_RUNTIME_DIR": t.TempDir()}
	getenv := func(k string) string { return env[k] }
	if _, err := sessionBusAddress(getenv); err == nil {
		t.Error("a session bus found where there is none")
	}
	os.WriteFile(filepath.Join(env["XDG_RUNTIME_DIR"], "bus"), nil, 0o600)
	if a, err := sessionBusAddress(getenv); err != nil || a != "unix:path="+dbusEscape(env["XDG_RUNTIME_DIR"])+"/bus" {
		t.Errorf("$XDG_RUNTIME_DIR/bus: %q %v", a, err)
	}
	env["DBUS_SESSION_BUS_ADDRESS"] = "unix:abstract=x"
	if a, _ := sessionBusAddress(getenv); a != "unix:abstract=x" {
		t.Errorf("DBUS_SESSION_BUS_ADDRESS not preferred: %q", a)
	}
}

// The seeds are messages captured from dbus-daemon (see
// TestDBusCapturedMessages) and ones of our own in both byte orders.
func FuzzDBusMessage(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/dbus/*.msg")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, order := range []byte{'l', 'B'} {
		m := testDBusMsg()
		m.Order, m.Serial, m.Signature = order, 3, "a{sv}(ybnqiuxtd)aayvog"
		b, err := m.encode([]dbusDictEntry{{"k", dbusVariant{"as", []any{"v"}}}},
			dbusStruct{byte(1), true, int16(-1), uint16(2), int32(-3), uint32(4), int64(-5), uint64(6), 7.5},
			[]any{[]byte("x")}, dbusVariant{"(ss)", dbusStruct{"a", "b"}}, dbusObjectPath("/x"), dbusSignature("a{ss}"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := readDBusMsg(bytes.NewReader(data))
		if err != nil {
			return
		}
		args, err := m.args(m.Signature)
		if err != nil {
			t.Fatalf("a decoded message's body does not decode: %v", err)
		}
		// What decodes encodes back to a message that decodes the same.
		again := *m
		b, err := again.encode(args...)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", m, err)
		}
		m2, err := decodeDBusMsg(b)
		if err != nil {
			t.Fatalf("re-encoded message: %v", err)
		}
		args2, _ := m2.args(m2.Signature)
		m2.Body, again.Body = nil, nil
		if !reflect.DeepEqual(m2, &again) || !reflect.DeepEqual(args, args2) {
			t.Fatalf("round trip changed the message:\n%+v %#v\n%+v %#v", again, args, m2, args2)
		}
	})
}
