package main

import (
	"reflect"
	"strings"
	"testing"
)

// fillAll sets every field of the struct v points to, recursively, to a
// value that is not its zero value: a field the wire form forgets then
// fails the round trip.
func fillAll(t *testing.T, v reflect.Value, seed int) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillAll(t, v.Elem(), seed)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			fillAll(t, v.Field(i), seed+i)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := 0; i < 2; i++ {
			fillAll(t, v.Index(i), seed+10*i)
		}
	case reflect.String:
		v.SetString(strings.Repeat("é/", seed%5+1) + v.Type().Name())
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int:
		v.SetInt(int64(-1000 - seed))
	case reflect.Uint16:
		v.SetUint(uint64(60000 + seed))
	default:
		t.Fatalf("fillAll: no value for a %s: the wire form needs a case for it", v.Type())
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, m := range []wireMsg{&spawnRequest{}, &instanceMsg{}, &initConfig{}, &treeJob{}, &diffJob{}, &probeJob{}, &serviceConfig{}} {
		fillAll(t, reflect.ValueOf(m).Elem(), 1)
		data := marshalWire(m)
		got := reflect.New(reflect.TypeOf(m).Elem()).Interface().(wireMsg)
		if err := unmarshalWire(data, got); err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%T: round trip gave\n%+v\nwant\n%+v", m, got, m)
		}
		// Every cut short, and trailing bytes, are errors, never a panic.
		for n := 0; n < len(data); n++ {
			if err := unmarshalWire(data[:n], reflect.New(reflect.TypeOf(m).Elem()).Interface().(wireMsg)); err == nil {
				t.Fatalf("%T cut to %d of %d bytes decoded without an error", m, n, len(data))
			}
		}
		if err := unmarshalWire(append(data, 0), got); err == nil {
			t.Fatalf("%T with a trailing byte decoded without an error", m)
		}
	}
	// Zero values survive too (nil, not empty, slices; no exit status).
	for _, m := range []wireMsg{&spawnRequest{}, &instanceMsg{}, &initConfig{}, &treeJob{}, &diffJob{}, &probeJob{}, &serviceConfig{}} {
		got := reflect.New(reflect.TypeOf(m).Elem()).Interface().(wireMsg)
		if err := unmarshalWire(marshalWire(m), got); err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("%T zero value: %+v, %v", m, got, err)
		}
	}
}

// Whatever the bytes, decoding returns an error or a message that
// survives another round trip; lengths larger than the message are
// refused before anything is allocated for them.
func FuzzWireDecode(f *testing.F) {
	f.Add(marshalWire(&spawnRequest{Argv: []string{"sh", "-c", "true"}, Env: []string{"A=1"}, Dir: "/"}))
	f.Add(marshalWire(&initConfig{Binds: []bindMount{{Source: "/a", Target: "/b"}}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range []wireMsg{&spawnRequest{}, &instanceMsg{}, &initConfig{}, &treeJob{}, &diffJob{}, &probeJob{}, &serviceConfig{}} {
			if unmarshalWire(data, m) != nil {
				continue
			}
			again := reflect.New(reflect.TypeOf(m).Elem()).Interface().(wireMsg)
			if err := unmarshalWire(marshalWire(m), again); err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("%T: %x decoded as %+v, which comes back as %+v, %v", m, data, m, again, err)
			}
		}
	})
}
