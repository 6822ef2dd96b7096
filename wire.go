package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire format of what karapace's own processes pass each other: the
// configuration of every stage (userns.go) and the messages of an
// instance's socket. Both ends are this binary, so the format is its own:
// the fields of a message in a fixed order, each a varint or a
// length-prefixed string. It is here because every exec pays for its
// messages: encoding/json, on its first use in a process, costs more than
// setting up the sandbox's /dev. Decoding checks every length; a
// malformed message is an error.

// wireMsg is a message with a wire form.
type wireMsg interface {
	encode(w *wireWriter)
	decode(r *wireReader)
}

// wireVersion opens every message: a running instance outlives upgrades
// of karapace, and either end then says so instead of misreading.
const wireVersion = 1

// errOlderPeer is a message in the JSON of karapace before wireVersion.
var errOlderPeer = errors.New("a message from an older karapace")

func marshalWire(m wireMsg) []byte {
	w := wireWriter{b: []byte{wireVersion}}
	m.encode(&w)
	return w.b
}

func unmarshalWire(data []byte, m wireMsg) error {
	switch {
	case len(data) > 0 && data[0] == '{':
		return errOlderPeer
	case len(data) == 0:
		return errWireShort
	case data[0] != wireVersion:
		return fmt.Errorf("a message of another karapace (protocol %d; this one speaks %d)", data[0], wireVersion)
	}
	r := wireReader{b: data[1:]}
	m.decode(&r)
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("%d bytes after the end", len(r.b))
	}
	return r.err
}

type wireWriter struct{ b []byte }

func (w *wireWriter) int(v int) { w.b = binary.AppendVarint(w.b, int64(v)) }

func (w *wireWriter) bool(v bool) {
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

func (w *wireWriter) str(s string) {
	w.int(len(s))
	w.b = append(w.b, s...)
}

func (w *wireWriter) strs(ss []string) {
	w.int(len(ss))
	for _, s := range ss {
		w.str(s)
	}
}

// wireReader reads fields until the first error, which it keeps; the
// fields after it read as zero.
type wireReader struct {
	b   []byte
	err error
}

var errWireShort = errors.New("message ends early")

func (r *wireReader) int() int {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 || v != int64(int(v)) {
		r.err = errWireShort
		return 0
	}
	r.b = r.b[n:]
	return int(v)
}

func (r *wireReader) uint16() uint16 {
	v := r.int()
	if v < 0 || v > 0xffff {
		r.err = fmt.Errorf("%d is out of range", v)
		return 0
	}
	return uint16(v)
}

func (r *wireReader) bool() bool {
	if r.err != nil {
		return false
	}
	if len(r.b) == 0 || r.b[0] > 1 {
		r.err = errors.New("bad boolean")
		return false
	}
	v := r.b[0] == 1
	r.b = r.b[1:]
	return v
}

// count reads a length, which cannot exceed what is left: every element
// takes a byte at least.
func (r *wireReader) count() int {
	n := r.int()
	if r.err == nil && (n < 0 || n > len(r.b)) {
		r.err = errWireShort
		return 0
	}
	return n
}

func (r *wireReader) str() string {
	n := r.count()
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *wireReader) strs() []string {
	n := r.count()
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = r.str()
	}
	return ss
}

func (q *spawnRequest) encode(w *wireWriter) {
	w.strs(q.Argv)
	w.strs(q.Env)
	w.str(q.Dir)
	w.bool(q.TTY)
	w.bool(q.Login)
	w.int(int(q.Rows))
	w.int(int(q.Cols))
}

func (q *spawnRequest) decode(r *wireReader) {
	q.Argv, q.Env, q.Dir = r.strs(), r.strs(), r.str()
	q.TTY, q.Login = r.bool(), r.bool()
	q.Rows, q.Cols = r.uint16(), r.uint16()
}

func (m *instanceMsg) encode(w *wireWriter) {
	w.int(m.Pid)
	w.str(m.Error)
	w.int(m.Status)
	w.bool(m.Exit != nil)
	if m.Exit != nil {
		w.int(*m.Exit)
	}
	w.int(m.Signal)
	w.bool(m.Last)
}

func (m *instanceMsg) decode(r *wireReader) {
	m.Pid, m.Error, m.Status = r.int(), r.str(), r.int()
	if r.bool() {
		code := r.int()
		m.Exit = &code
	}
	m.Signal, m.Last = r.int(), r.bool()
}

func (c *initConfig) encode(w *wireWriter) {
	w.strs(c.Lower)
	w.str(c.Dir)
	w.bool(c.Writable)
	w.str(c.Hostname)
	w.int(len(c.Binds))
	for _, b := range c.Binds {
		w.str(b.Source)
		w.str(b.Target)
		w.bool(b.ReadOnly)
		w.bool(b.Dir)
		w.bool(b.Tmpfs)
		w.str(b.Why)
		w.bool(b.Resolved)
		w.bool(b.Idmap)
	}
	w.bool(c.Isolated)

	w.str(c.FuseOverlay)
	w.bool(c.OnlyFuse)
	w.bool(c.FullIDMap)
	w.bool(c.Direct)
	w.str(c.User)
	w.int(c.Cgroups)
	w.int(c.Owner)
	w.int(c.PidsLimit)
	w.bool(c.BindsMade)
}

func (c *initConfig) decode(r *wireReader) {
	c.Lower, c.Dir, c.Writable, c.Hostname = r.strs(), r.str(), r.bool(), r.str()
	for range r.count() {
		var b bindMount
		b.Source, b.Target = r.str(), r.str()
		b.ReadOnly, b.Dir, b.Tmpfs = r.bool(), r.bool(), r.bool()
		b.Why, b.Resolved, b.Idmap = r.str(), r.bool(), r.bool()
		c.Binds = append(c.Binds, b)
	}
	c.Isolated, c.FuseOverlay = r.bool(), r.str()
	c.OnlyFuse, c.FullIDMap, c.Direct = r.bool(), r.bool(), r.bool()
	c.User, c.Cgroups = r.str(), r.int()
	c.Owner, c.PidsLimit, c.BindsMade = r.int(), r.int(), r.bool()
}

func (c *serviceConfig) encode(w *wireWriter) {
	w.int(c.Owner)
	w.int(c.PidsLimit)
	w.int(c.Cgroups)
}

func (c *serviceConfig) decode(r *wireReader) {
	c.Owner, c.PidsLimit, c.Cgroups = r.int(), r.int(), r.int()
}

// diffJob is the diff stage's configuration (see snapshot.go).
type diffJob struct {
	Upper string
	Lower []string
}

// probeJob is the overlay probe's configuration (see doctor.go).
type probeJob struct{ Dir string }

func (j *treeJob) encode(w *wireWriter) {
	w.str(j.Op)
	w.str(j.Dir)
	w.strs(j.Paths)
	w.bool(j.Overlay)
	w.bool(j.Image)
	w.int(j.Clamp)
	w.int(j.MaxSize)
	w.int(j.MaxEntries)
	w.str(j.Config)
}

func (j *treeJob) decode(r *wireReader) {
	j.Op, j.Dir, j.Paths = r.str(), r.str(), r.strs()
	j.Overlay, j.Image, j.Clamp = r.bool(), r.bool(), r.int()
	j.MaxSize, j.MaxEntries, j.Config = r.int(), r.int(), r.str()
}

func (j *diffJob) encode(w *wireWriter) {
	w.str(j.Upper)
	w.strs(j.Lower)
}

func (j *diffJob) decode(r *wireReader) { j.Upper, j.Lower = r.str(), r.strs() }

func (j *probeJob) encode(w *wireWriter) { w.str(j.Dir) }

func (j *probeJob) decode(r *wireReader) { j.Dir = r.str() }
