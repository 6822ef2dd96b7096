package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The service is tested on a private dbus-daemon of each test, with
// busctl, dbus-send and dbus-monitor as its clients.

type testBus struct {
	t    *testing.T
	addr string
}

const testBusPolicy = `<policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>%s
  </policy>`

// startTestBus starts dbus-daemon with a configuration of its own:
// listening on listen (unix:dir=... when empty), activating from
// servicedir, extra policy lines, and env as its (and so its activated
// services') environment.
func startTestBus(t *testing.T, listen, servicedir, policy string, env []string) *testBus {
	t.Helper()
	daemon := needTool(t, "dbus-daemon")
	needTool(t, "busctl")
	dir := t.TempDir()
	if listen == "" {
		listen = "unix:dir=" + dir
	}
	sd := ""
	if servicedir != "" {
		sd = "<servicedir>" + servicedir + "</servicedir>"
	}
	conf := fmt.Sprintf(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>%s</listen>
  %s
  <auth>EXTERNAL</auth>
  %s
</busconfig>
`, listen, sd, fmt.Sprintf(testBusPolicy, policy))
	confPath := writeFile(t, dir, "bus.conf", conf)
	cmd := exec.Command(daemon, "--config-file="+confPath, "--nofork", "--print-address=1")
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v\n%s", err, errb.String())
	}
	return &testBus{t: t, addr: strings.TrimSpace(line)}
}

// busctl runs busctl on the bus; its JSON output for calls.
func (b *testBus) busctl(args ...string) (string, error) {
	cmd := exec.Command("busctl", append([]string{"--address=" + b.addr}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("busctl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// call calls a method of the service with busctl and returns its
// string result.
func (b *testBus) call(method, sig string, args ...string) string {
	b.t.Helper()
	s, err := b.tryCall(method, sig, args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

func (b *testBus) tryCall(method, sig string, args ...string) (string, error) {
	a := []string{"--json=short", "--timeout=600", "call", dbusName, string(dbusPath), dbusIface, method}
	if sig != "" {
		a = append(a, sig)
	}
	out, err := b.busctl(append(a, args...)...)
	if err != nil {
		return "", err
	}
	var r struct {
		Type string `json:"type"`
		Data []any  `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Type != "s" || len(r.Data) != 1 {
		return "", fmt.Errorf("%s: busctl printed %q", method, out)
	}
	return r.Data[0].(string), nil
}

// callJSON calls a method and decodes its JSON result into v.
func (b *testBus) callJSON(v any, method, sig string, args ...string) {
	b.t.Helper()
	s := b.call(method, sig, args...)
	if err := json.Unmarshal([]byte(s), v); err != nil {
		b.t.Fatalf("%s: %v: %q", method, err, s)
	}
}

// send runs dbus-send with a reply; it returns the error name (and
// message) that dbus-send printed, if any.
func (b *testBus) send(iface, method string, args ...string) (string, string) {
	b.t.Helper()
	dbusSend := needTool(b.t, "dbus-send")
	cmd := exec.Command(dbusSend, append([]string{"--bus=" + b.addr, "--print-reply", "--reply-timeout=60000", "--dest=" + dbusName,
		string(dbusPath), iface + "." + method}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run()
	return out.String(), errb.String()
}

// mustFail calls with dbus-send and wants the error name and a message.
func (b *testBus) mustFail(name, want, iface, method string, args ...string) {
	b.t.Helper()
	out, errOut := b.send(iface, method, args...)
	if !strings.Contains(errOut, "Error "+name+": ") || !strings.Contains(errOut, want) {
		b.t.Fatalf("%s.%s %v: stdout %q stderr %q; want error %s saying %q", iface, method, args, out, errOut, name, want)
	}
}

func (b *testBus) hasOwner(name string) bool {
	out, err := b.busctl("call", dbusBusName, string(dbusBusPath), dbusBusName, "NameHasOwner", "s", name)
	return err == nil && strings.TrimSpace(out) == "b true"
}

func (b *testBus) ownerPid(name string) string {
	out, _ := b.busctl("call", dbusBusName, string(dbusBusPath), dbusBusName, "GetConnectionUnixProcessID", "s", name)
	return strings.TrimSpace(out)
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 1500; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// serve starts 'karapace dbus' of the test binary on the bus for k's
// store and waits for its name.
func (b *testBus) serve(k *kpRun, args ...string) (*exec.Cmd, *bytes.Buffer) {
	b.t.Helper()
	cmd := k.cmd("", append([]string{"dbus"}, args...)...)
	cmd.Env = append(cmd.Env, "DBUS_SESSION_BUS_ADDRESS="+b.addr, "KARAPACE_LOG=debug")
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if b.t.Failed() {
			b.t.Logf("the service's log:\n%s", logb.String())
		}
	})
	waitFor(b.t, "the service's name", func() bool {
		select {
		case <-exited:
			b.t.Fatalf("karapace dbus exited: %v\n%s", cmd.ProcessState, logb.String())
		default:
		}
		return b.hasOwner(dbusName)
	})
	return cmd, &logb
}

// monitor records the service's signals with dbus-monitor.
type busMonitor struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out bytes.Buffer
}

func (m *busMonitor) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.Write(p)
}

func (m *busMonitor) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.String()
}

func (b *testBus) monitor() *busMonitor {
	b.t.Helper()
	mon := &busMonitor{cmd: exec.Command(needTool(b.t, "dbus-monitor"), "--address", b.addr, "type='signal',interface='"+dbusIface+"'")}
	mon.cmd.Stdout = mon
	if err := mon.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { mon.cmd.Process.Kill(); mon.cmd.Wait() })
	// dbus-monitor has become a monitor when its own NameLost arrives;
	// until then a signal could pass unseen.
	waitFor(b.t, "dbus-monitor", func() bool { return strings.Contains(mon.String(), "NameLost") })
	return mon
}

// signals parses dbus-monitor's output into "Member arg arg..." lines.
func (m *busMonitor) signals() []string {
	var out []string
	cur := -1
	for _, line := range strings.Split(m.String(), "\n") {
		if strings.HasPrefix(line, "signal ") {
			member, iface := "", ""
			for _, f := range strings.Fields(line) {
				f = strings.TrimSuffix(f, ";")
				if v, ok := strings.CutPrefix(f, "member="); ok {
					member = v
				}
				if v, ok := strings.CutPrefix(f, "interface="); ok {
					iface = v
				}
			}
			cur = -1
			if iface == dbusIface { // not the monitor's own NameAcquired and NameLost
				out = append(out, member)
				cur = len(out) - 1
			}
			continue
		}
		f := strings.Fields(line)
		switch {
		case cur < 0 || len(f) < 2:
		case f[0] == "string": // a phase may have spaces: joined by '_'
			out[cur] += " " + strings.ReplaceAll(strings.Trim(strings.TrimSpace(line)[len("string "):], `"`), " ", "_")
		case f[0] == "uint64" && len(f) == 2:
			out[cur] += " " + f[1]
		}
	}
	return out
}

// phases is signals without the BuildProgress of a build's steps: only
// its started, finished and failed. steps counts those left out.
func phases(signals []string) (kept []string, steps int) {
	for _, s := range signals {
		if f := strings.Fields(s); len(f) == 5 && f[0] == "BuildProgress" && f[2] != "started" && f[2] != "finished" && f[2] != "failed" {
			steps++
			continue
		}
		kept = append(kept, s)
	}
	return kept, steps
}

// recordingConn is a connection that keeps what it reads.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recordingConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// messages splits what was read after the authentication into messages.
func (r *recordingConn) messages(t *testing.T) [][]byte {
	r.mu.Lock()
	b := append([]byte{}, r.buf.Bytes()...)
	r.mu.Unlock()
	i := bytes.Index(b, []byte("\r\n"))
	if !bytes.HasPrefix(b, []byte("OK ")) || i < 0 {
		t.Fatalf("no OK from the bus: %q", b)
	}
	b = b[i+2:]
	var out [][]byte
	for len(b) >= 16 {
		n, err := dbusFrameLen(b)
		if err != nil || n > len(b) {
			t.Fatalf("the stream from the bus: %v", err)
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func dialRecorded(t *testing.T, addr string) (*dbusConn, *recordingConn) {
	sock, err := dbusSocketOf(addr)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rc := &recordingConn{Conn: nc}
	c, err := newDBusConn(rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c, rc
}

func nextIncoming(t *testing.T, c *dbusConn, member string) *dbusMsg {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m := <-c.incoming:
			if m.Member == member {
				return m
			}
		case <-timeout:
			t.Fatalf("no %s arrived", member)
		}
	}
}

// What dbus-daemon and busctl send decodes to what was meant; what we
// send in either byte order passes dbus-daemon's own validation and
// arrives unchanged. The messages are kept as the fuzz target's seeds.
func TestDBusCapturedMessages(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	rx, rec := dialRecorded(t, bus.addr)
	tx, _ := dialRecorded(t, bus.addr)
	if !strings.HasPrefix(rx.name, ":") || rx.name == tx.name {
		t.Fatalf("Hello gave %q and %q", rx.name, tx.name)
	}
	nextIncoming(t, rx, "NameAcquired") // the bus's signal after Hello

	// busctl (sd-bus) marshals; we decode.
	out, err := bus.busctl("--expect-reply=no", "--", "call", rx.name, "/x/y", "org.example.Test", "Typed",
		"ybnqiuxtdsogvas(iy)a{sv}", "255", "true", "-3", "4", "-5", "6", "-7", "8", "0.25", "héllo", "/o/p", "a{sv}",
		"u", "9", "2", "a", "b", "10", "11", "2", "k", "s", "v", "n", "i", "-12")
	if err != nil {
		t.Fatal(out, err)
	}
	m := nextIncoming(t, rx, "Typed")
	args, err := m.args("ybnqiuxtdsogvas(iy)a{sv}")
	if err != nil {
		t.Fatal(err)
	}
	want := []any{byte(255), true, int16(-3), uint16(4), int32(-5), uint32(6), int64(-7), uint64(8), 0.25, "héllo",
		dbusObjectPath("/o/p"), dbusSignature("a{sv}"), dbusVariant{"u", uint32(9)}, []any{"a", "b"}, dbusStruct{int32(10), byte(11)},
		[]dbusDictEntry{{"k", dbusVariant{"s", "v"}}, {"n", dbusVariant{"i", int32(-12)}}}}
	if !reflect.DeepEqual(args, want) || m.Sender == "" || m.Path != "/x/y" {
		t.Fatalf("busctl's message decoded as %+v\n%#v", m, args)
	}

	// We marshal, in both orders; dbus-daemon checks and forwards.
	sig := "a{sv}(ybnqiuxtd)aayvoga(ss)"
	vals := []any{sortedDict(map[string]dbusVariant{"list": {"at", []any{uint64(1), uint64(1 << 60)}}, "s": {"s", "x"}}),
		dbusStruct{byte(1), false, int16(-1), uint16(2), int32(-3), uint32(4), int64(-5), uint64(6), -7.5},
		[]any{[]byte("ab"), []byte{}}, dbusVariant{"(sv)", dbusStruct{"in", dbusVariant{"ay", []byte{0, 1}}}},
		dbusObjectPath("/a/b"), dbusSignature("(ii)"), []any{}}
	for _, order := range []byte{'l', 'B'} {
		sent := &dbusMsg{Order: order, Type: dbusSignal, Path: "/t", Interface: "org.example.Test", Member: "Order" + string(order),
			Destination: rx.name, Signature: sig}
		if _, err := tx.send(sent, vals...); err != nil {
			t.Fatal(err)
		}
		got := nextIncoming(t, rx, sent.Member)
		if got.Order != order || got.Sender != tx.name {
			t.Fatalf("%c: arrived as %+v", order, got)
		}
		back, err := got.args(sig)
		if err != nil || !reflect.DeepEqual(back, vals) {
			t.Fatalf("%c: %v\n%#v", order, err, back)
		}
	}
	// A call with the wrong body for its signature never reaches us: the
	// daemon drops the sender, which is how the daemon judges a message.
	if _, err := tx.call(dbusBusName, dbusBusPath, dbusBusName, "GetId", ""); err != nil {
		t.Fatalf("after our messages the daemon still answers: %v", err)
	}

	msgs := rec.messages(t)
	if len(msgs) < 5 {
		t.Fatalf("captured %d messages", len(msgs))
	}
	for i, b := range msgs {
		if _, err := decodeDBusMsg(b); err != nil {
			t.Fatalf("captured message %d: %v", i, err)
		}
	}
	if *updateGolden {
		os.MkdirAll("testdata/dbus", 0o755)
		old, _ := filepath.Glob("testdata/dbus/captured-*.msg")
		for _, p := range old {
			os.Remove(p)
		}
		for i, b := range msgs {
			if err := os.WriteFile(fmt.Sprintf("testdata/dbus/captured-%02d.msg", i), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The kept seeds still decode, as they did when captured.
	kept, _ := filepath.Glob("testdata/dbus/captured-*.msg")
	if len(kept) < 5 {
		t.Fatalf("testdata/dbus has %d captured messages (go test -run TestDBusCapturedMessages -update)", len(kept))
	}
	for _, p := range kept {
		b, _ := os.ReadFile(p)
		if _, err := decodeDBusMsg(b); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

type introNode struct {
	Interfaces []struct {
		Name    string `xml:"name,attr"`
		Methods []struct {
			Name string `xml:"name,attr"`
			Args []struct {
				Type      string `xml:"type,attr"`
				Direction string `xml:"direction,attr"`
			} `xml:"arg"`
		} `xml:"method"`
		Signals []struct {
			Name string `xml:"name,attr"`
		} `xml:"signal"`
		Properties []struct {
			Name   string `xml:"name,attr"`
			Type   string `xml:"type,attr"`
			Access string `xml:"access,attr"`
		} `xml:"property"`
	} `xml:"interface"`
}

// The introspection data is valid XML that busctl reads, and says what
// the service serves: every method of the table with its signature.
func TestDBusIntrospect(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	k := newKP(t)
	bus.serve(k)
	xmlOut, err := bus.busctl("introspect", "--xml-interface", dbusName, string(dbusPath))
	if err != nil {
		t.Fatal(err)
	}
	var n introNode
	if err := xml.Unmarshal([]byte(xmlOut), &n); err != nil {
		t.Fatalf("the introspection data is not XML: %v", err)
	}
	methods := map[string]string{}
	var props []string
	for _, i := range n.Interfaces {
		for _, m := range i.Methods {
			in, out := "", ""
			for _, a := range m.Args {
				if a.Direction == "out" {
					out += a.Type
				} else {
					in += a.Type
				}
			}
			methods[i.Name+"."+m.Name] = in + "->" + out
		}
		for _, p := range i.Properties {
			props = append(props, i.Name+"."+p.Name+" "+p.Type+" "+p.Access)
		}
	}
	for name, m := range dbusMethods {
		if got := methods[dbusIface+"."+name]; got != m.in+"->s" {
			t.Errorf("%s: introspected as %q, served as %q", name, got, m.in+"->s")
		}
		delete(methods, dbusIface+"."+name)
	}
	sort.Strings(props)
	if want := []string{dbusIface + ".ApiVersion u read", dbusIface + ".StoreRoot s read"}; !reflect.DeepEqual(props, want) {
		t.Errorf("properties %v, want %v", props, want)
	}
	// busctl's table, from the same XML, holds every member and the values.
	table, err := bus.busctl("introspect", dbusName, string(dbusPath))
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, "busctl introspect", table, ".EnvironmentChanged", ".BuildProgress", "sstt", ".ApiVersion", `"`+k.store+`"`, "const")
	// The standard interfaces answer as introspected.
	for name := range methods {
		iface, member := name[:strings.LastIndex(name, ".")], name[strings.LastIndex(name, ".")+1:]
		if !strings.HasPrefix(iface, "org.freedesktop.DBus.") || strings.Contains(member, "Set") || member == "Get" || member == "GetAll" {
			continue
		}
		if out, errOut := bus.send(iface, member); errOut != "" || !strings.Contains(out, "method return") {
			t.Errorf("%s: %q %q", name, out, errOut)
		}
	}
	out, err := bus.busctl("tree", dbusName)
	if err != nil || !strings.Contains(out, string(dbusPath)) {
		t.Errorf("busctl tree: %q %v", out, err)
	}
}

// Every method on a real store (the mock backend): results with the
// field names of the commands' --json, errors with our names.
func TestDBusServiceMock(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	k := newMockKP(t, `"alpha"`)
	bus.serve(k)
	manifest := filepath.Join(k.dir, "karapace.toml")

	if got := bus.call("ListEnvironments", ""); got != "[]" {
		t.Fatalf("ListEnvironments before any build: %q", got)
	}
	bus.mustFail(dbusErrNotFound, "there is no store", dbusIface, "GetEnvironmentStatus", "string:demo")
	var br buildResult
	bus.callJSON(&br, "BuildNamedEnvironment", "ss", manifest, "demo")
	if !validStoreHash(br.EnvID) || br.Name != "demo" || !br.Created || br.Packages != 1 || br.Manifest != manifest {
		t.Fatalf("BuildNamedEnvironment: %+v", br)
	}
	if _, err := os.Stat(filepath.Join(k.dir, "karapace.lock")); err != nil {
		t.Fatalf("no lock beside the manifest: %v", err)
	}
	if _, err := os.Stat(filepath.Join(k.home, ".local/share/applications")); err != nil {
		t.Fatalf("the build's launchers: %v", err)
	}
	// The same JSON as the command line's.
	var viaBus, viaCLI []map[string]any
	bus.callJSON(&viaBus, "ListEnvironments", "")
	k.jsonOut(&viaCLI, "list")
	if len(viaBus) != 1 || !reflect.DeepEqual(viaBus, viaCLI) {
		t.Fatalf("ListEnvironments %v, list --json %v", viaBus, viaCLI)
	}
	var st envInfo
	bus.callJSON(&st, "GetEnvironmentStatus", "s", "demo")
	if st.EnvID != br.EnvID || st.State != stateBuilt || st.Name != "demo" {
		t.Fatalf("GetEnvironmentStatus: %+v", st)
	}
	if got := bus.call("GetEnvironmentHash", "s", br.ShortID); got != br.EnvID {
		t.Fatalf("GetEnvironmentHash: %q", got)
	}
	var again buildResult
	bus.callJSON(&again, "BuildEnvironment", "s", manifest)
	if again.EnvID != br.EnvID || again.Created {
		t.Fatalf("BuildEnvironment of the same manifest: %+v", again)
	}
	var ren map[string]string
	bus.callJSON(&ren, "RenameEnvironment", "ss", "demo", "other")
	if ren["env_id"] != br.EnvID || ren["name"] != "other" {
		t.Fatalf("RenameEnvironment: %v", ren)
	}
	var run map[string]any
	bus.callJSON(&run, "RunEnvironment", "s", "other")
	if run["env_id"] != br.EnvID || run["entered"] != br.EnvID || run["exit_code"] != 0.0 || run["state"] != "built" {
		t.Fatalf("RunEnvironment on the mock backend: %v", run)
	}
	var stop map[string]any
	bus.callJSON(&stop, "StopEnvironment", "s", "other")
	if stop["env_id"] != br.EnvID || stop["stopped"] != false {
		t.Fatalf("StopEnvironment: %v", stop)
	}
	var presets []map[string]string
	bus.callJSON(&presets, "ListPresets", "")
	var names []string
	for _, p := range presets {
		names = append(names, p["name"])
		if p["description"] == "" {
			t.Errorf("preset %s has no description", p["name"])
		}
	}
	if !reflect.DeepEqual(names, templateNames()) {
		t.Fatalf("ListPresets: %v, templates %v", names, templateNames())
	}
	var vr verifyReport
	bus.callJSON(&vr, "VerifyStore", "")
	if vr.Objects == 0 || vr.Metadata != 1 || len(vr.Bad) != 0 {
		t.Fatalf("VerifyStore: %+v", vr)
	}
	var gr gcReport
	bus.callJSON(&gr, "GarbageCollect", "b", "true")
	if !gr.DryRun || gr.Objects != 0 {
		t.Fatalf("GarbageCollect(true) on a store in use: %+v", gr)
	}
	var des map[string]any
	bus.callJSON(&des, "DestroyEnvironment", "s", "other")
	if des["env_id"] != br.EnvID || des["destroyed"] != true {
		t.Fatalf("DestroyEnvironment: %v", des)
	}
	bus.callJSON(&gr, "GarbageCollect", "b", "false")
	if gr.DryRun || gr.Objects == 0 || gr.Layers == 0 {
		t.Fatalf("GarbageCollect(false) after destroy: %+v", gr)
	}

	// Errors: ours, and the bus's standard ones.
	bus.mustFail(dbusErrNotFound, "no environment", dbusIface, "GetEnvironmentStatus", "string:other")
	bus.mustFail(dbusErrNotFound, "no environment", dbusIface, "DestroyEnvironment", "string:"+br.EnvID)
	bus.mustFail(dbusErrInvalidArgument, "not absolute", dbusIface, "BuildEnvironment", "string:karapace.toml")
	bad := writeFile(t, k.dir, "bad/karapace.toml", "manifest_version = 1\n[base]\nimage = 7\n")
	bus.mustFail(dbusErrManifestInvalid, "base", dbusIface, "BuildEnvironment", "string:"+bad)
	bus.mustFail(dbusErrManifestInvalid, "no such manifest", dbusIface, "BuildEnvironment", "string:"+filepath.Join(k.dir, "none.toml"))
	bus.callJSON(&br, "BuildNamedEnvironment", "ss", manifest, "demo")
	bus.mustFail(dbusErrInvalidArgument, "", dbusIface, "RenameEnvironment", "string:demo", "string:bad/name")
	bus.mustFail(dbusErrArgs, "expected", dbusIface, "GetEnvironmentStatus", "int32:1")
	bus.mustFail(dbusErrArgs, "expected", dbusIface, "GarbageCollect")
	bus.mustFail(dbusErrUnknown, "no method", dbusIface, "Explode")
	bus.mustFail("org.freedesktop.DBus.Error.UnknownInterface", "", "org.example.Nothing", "Ping")
	bus.mustFail("org.freedesktop.DBus.Error.PropertyReadOnly", "read-only", dbusPropsIface, "Set",
		"string:"+dbusIface, "string:StoreRoot", "variant:string:/tmp")
	bus.mustFail("org.freedesktop.DBus.Error.UnknownProperty", "", dbusPropsIface, "Get", "string:"+dbusIface, "string:Nope")
	out, err := bus.busctl("--json=short", "get-property", dbusName, string(dbusPath), dbusIface, "ApiVersion", "StoreRoot")
	if err != nil || !strings.Contains(out, `{"type":"u","data":1}`) || !strings.Contains(out, `{"type":"s","data":"`+k.store+`"}`) {
		t.Fatalf("properties: %q %v", out, err)
	}
	all, _ := bus.send(dbusPropsIface, "GetAll", "string:"+dbusIface)
	mustContain(t, "GetAll", all, `string "ApiVersion"`, "uint32 1", `string "StoreRoot"`, k.store)
	if out, errOut := bus.send(dbusPeerIface, "GetMachineId"); errOut != "" || len(strings.Trim(strings.Fields(out)[len(strings.Fields(out))-1], `"`)) != 32 {
		t.Errorf("GetMachineId: %q %q", out, errOut)
	}
	if out, err := bus.busctl("call", dbusName, "/org/other", dbusPeerIface, "Ping"); err == nil {
		t.Errorf("a call to another object path: %q", out)
	}
}

// Signals during a build, the desktop notification at its end, and a
// fake notification server standing for the desktop's.
func TestDBusSignalsAndNotification(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	k := newMockKP(t, "")
	bus.serve(k)
	mon := bus.monitor()

	notifier, _ := dialRecorded(t, bus.addr)
	if r, err := notifier.call(dbusBusName, dbusBusPath, dbusBusName, "RequestName", "su", dbusNotifications, uint32(4)); err != nil {
		t.Fatal(err)
	} else if vs, _ := r.args("u"); vs[0] != uint32(1) {
		t.Fatalf("RequestName for the notifier: %v", vs)
	}
	var br buildResult
	bus.callJSON(&br, "BuildNamedEnvironment", "ss", filepath.Join(k.dir, "karapace.toml"), "demo")
	n := nextIncoming(t, notifier, "Notify")
	args, err := n.args("susssasa{sv}i")
	if err != nil {
		t.Fatal(err)
	}
	if args[0] != "Karapace" || args[3] != "Build finished" || !strings.Contains(args[4].(string), "demo ("+br.ShortID+")") {
		t.Fatalf("the notification: %v", args)
	}
	notifier.send(&dbusMsg{Type: dbusMethodReturn, ReplySerial: n.Serial, Destination: n.Sender, Signature: "u"}, uint32(1))

	bad := writeFile(t, k.dir, "bad/karapace.toml", "manifest_version = 1\n")
	bus.mustFail(dbusErrManifestInvalid, "", dbusIface, "BuildEnvironment", "string:"+bad)
	n = nextIncoming(t, notifier, "Notify")
	if args, _ := n.args("susssasa{sv}i"); args[3] != "Build failed" {
		t.Fatalf("the failure's notification: %v", args)
	}
	bus.call("RenameEnvironment", "ss", "demo", "renamed")
	bus.call("DestroyEnvironment", "s", "renamed")

	var got []string
	for i := 0; i < 500 && len(got) < 7; i++ {
		time.Sleep(20 * time.Millisecond)
		got, _ = phases(mon.signals())
	}
	if len(got) < 7 {
		t.Fatalf("signals seen:\n%s\ndbus-monitor:\n%s", strings.Join(got, "\n"), mon.String())
	}
	job := ""
	if f := strings.Fields(got[0]); len(f) == 5 && f[0] == "BuildProgress" {
		job = f[1]
	}
	if !strings.HasPrefix(job, ":") || !strings.Contains(job, "/") {
		t.Fatalf("the job of the first signal, %q, is not SENDER/SERIAL", got[0])
	}
	want := []string{
		"BuildProgress " + job + " started 0 0", "BuildProgress " + job + " finished 0 0", "EnvironmentChanged " + br.EnvID + " built",
		"BuildProgress", "BuildProgress", // the failed build's job: started, failed
		"EnvironmentChanged " + br.EnvID + " built", "EnvironmentChanged " + br.EnvID + " destroyed",
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Fatalf("signal %d is %q, want %q; all:\n%s", i, got[i], w, strings.Join(got, "\n"))
		}
	}
	if !strings.HasSuffix(got[4], " failed 0 0") || strings.Fields(got[3])[1] == job {
		t.Fatalf("the failed build's signals: %q %q", got[3], got[4])
	}
}

// A call waiting for the store does not hold up the others; one that
// waits too long fails StoreBusy, and the store is as it was.
func TestDBusConcurrentAndBusy(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	k := newMockKP(t, "")
	k.ok("build", "--name", "demo")
	k.env = append(k.env, "KARAPACE_LOCK_WAIT=3s")
	bus.serve(k)
	s, err := openStore(k.store)
	if err != nil {
		t.Fatal(err)
	}
	held, err := s.lock("test holds the store")
	if err != nil {
		t.Fatal(err)
	}
	destroy := exec.Command("dbus-send", "--bus="+bus.addr, "--print-reply", "--reply-timeout=60000", "--dest="+dbusName, string(dbusPath),
		dbusIface+".DestroyEnvironment", "string:demo")
	var errb bytes.Buffer
	destroy.Stderr = &errb
	if err := destroy.Start(); err != nil {
		t.Fatal(err)
	}
	destroyed := make(chan struct{})
	go func() { destroy.Wait(); close(destroyed) }()
	var st envInfo
	bus.callJSON(&st, "GetEnvironmentStatus", "s", "demo")
	select {
	case <-destroyed:
		t.Fatalf("DestroyEnvironment ended before the status call while the store was locked: %s", errb.String())
	default:
	}
	if st.Name != "demo" {
		t.Fatalf("status during the destroy: %+v", st)
	}
	<-destroyed
	held.unlock()
	if !strings.Contains(errb.String(), "Error "+dbusErrStoreBusy+": ") || !strings.Contains(errb.String(), "test holds the store") {
		t.Fatalf("DestroyEnvironment on a locked store: %q", errb.String())
	}
	bus.callJSON(&st, "GetEnvironmentStatus", "s", "demo")
	k.ok("verify-store")
}

func TestDBusNameTaken(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	k := newKP(t)
	first, _ := bus.serve(k)
	cmd := k.cmd("", "dbus")
	cmd.Env = append(cmd.Env, "DBUS_SESSION_BUS_ADDRESS="+bus.addr)
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "is already taken by process "+fmt.Sprint(first.Process.Pid)) {
		t.Fatalf("a second service: %v %s", err, out)
	}
	if !bus.hasOwner(dbusName) {
		t.Fatal("the first service lost its name")
	}
	// No bus at all, and a bus address that is not one.
	for _, addr := range []string{"unix:path=" + filepath.Join(t.TempDir(), "none"), "tcp:host=127.0.0.1,port=1"} {
		cmd := k.cmd("", "dbus")
		cmd.Env = append(cmd.Env, "DBUS_SESSION_BUS_ADDRESS="+addr)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "connecting to the bus") {
			t.Errorf("bus %s: %s", addr, out)
		}
	}
}

// The bus starts the service from the installed activation file on the
// first call; the service exits when idle, and the next call starts it
// again. The bus listens on an abstract socket here.
func TestDBusActivationAndIdleExit(t *testing.T) {
	k := newMockKP(t, "")
	k.ok("build", "--name", "demo")
	k.ok("dbus", "--install")
	svcFile := filepath.Join(k.home, ".local/share/dbus-1/services", dbusName+".service")
	data, err := os.ReadFile(svcFile)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := filepath.EvalSymlinks(os.Args[0])
	mustContain(t, "activation file", string(data), "Name="+dbusName+"\n", "Exec="+exe+" --store "+k.store+" dbus\n")
	os.WriteFile(svcFile, bytes.Replace(data, []byte(" dbus\n"), []byte(" dbus --idle-timeout 1s\n"), 1), 0o644)

	abstract := fmt.Sprintf("unix:abstract=/karapace-test/%d-%d", os.Getpid(), time.Now().UnixNano())
	bus := startTestBus(t, abstract, filepath.Dir(svcFile), "", k.env)
	if !strings.HasPrefix(bus.addr, "unix:abstract=") {
		t.Fatalf("the bus listens on %s", bus.addr)
	}
	if bus.hasOwner(dbusName) {
		t.Fatal("the service runs before any call")
	}
	var st envInfo
	bus.callJSON(&st, "GetEnvironmentStatus", "s", "demo")
	if st.Name != "demo" {
		t.Fatalf("status through activation: %+v", st)
	}
	pid := bus.ownerPid(dbusName)
	waitFor(t, "the idle service to exit", func() bool { return !bus.hasOwner(dbusName) })
	bus.callJSON(&st, "GetEnvironmentStatus", "s", "demo")
	if again := bus.ownerPid(dbusName); again == pid || again == "" {
		t.Fatalf("the second call was served by %q, the first by %q", again, pid)
	}
}

// The unit passes systemd-analyze; --install refuses paths a unit would
// misread.
func TestDBusInstallUnit(t *testing.T) {
	k := newKP(t)
	k.ok("dbus", "--install")
	unit := filepath.Join(k.home, ".config/systemd/user/karapace-dbus.service")
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, "unit", string(data), "Type=dbus\n", "BusName="+dbusName+"\n", "ExecStart=")
	// Each of these would take the subordinate range from the builds.
	for _, key := range []string{"\nNoNewPrivileges=", "\nProtect", "\nPrivate", "\nRestrict", "\nLockPersonality=", "\nReadWritePaths=", "\nSystemCall"} {
		if strings.Contains(string(data), key) {
			t.Errorf("the unit sets %s", strings.TrimSpace(key))
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	need(t, err == nil, "systemd-analyze")
	rt := t.TempDir()
	cmd := exec.Command(analyze, "--user", "verify", unit)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: a misspelt key is reported.
	bad := writeFile(t, t.TempDir(), "bad.service", strings.Replace(string(data), "TimeoutStopSec", "TimeoutStopSek", 1))
	cmd = exec.Command(analyze, "--user", "verify", bad)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
	if out, _ := cmd.CombinedOutput(); !strings.Contains(string(out), "TimeoutStopSek") {
		t.Fatalf("systemd-analyze took a misspelt key: %s", out)
	}

	for _, store := range []string{k.base + "/st%h", k.base + "/a\"b", k.base + "/a\nb"} {
		code, _, errOut := k.run("--store", store, "dbus", "--install")
		if code != exitFailure || !strings.Contains(errOut, "cannot go into a service file") {
			t.Errorf("--store %q --install: %d %s", store, code, errOut)
		}
	}
	code, out, _ := k.run("--store", k.base+"/with space", "--json", "dbus", "--install")
	if code != 0 || !strings.Contains(out, "activation_file") {
		t.Fatalf("a store path with a space: %d %s", code, out)
	}
	data, _ = os.ReadFile(unit)
	mustContain(t, "unit", string(data), `--store "`+k.base+`/with space" dbus`)
}

// On a bus that lets other users in, they cannot use the service.
func TestDBusOtherUserDenied(t *testing.T) {
	needRoot(t, "runs busctl as another user")
	u, err := user.Lookup("karapace-test")
	need(t, err == nil, "the user karapace-test")
	runuser := needTool(t, "runuser")
	k := newMockKP(t, "")
	// The socket in a directory the other user reaches.
	dir := filepath.Join(k.base, "bus")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bus := startTestBus(t, "unix:dir="+dir, "", "\n    <allow user=\"*\"/>", nil)
	bus.serve(k)
	// dbus-send prints the error's name: the service's refusal, not the bus's.
	out, err := exec.Command(runuser, "-u", u.Username, "--", "dbus-send", "--bus="+bus.addr, "--print-reply", "--dest="+dbusName,
		string(dbusPath), dbusIface+".ListEnvironments").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Error "+dbusErrDenied+": only the user this service runs as") {
		t.Fatalf("another user's call: %v %s", err, out)
	}
	if got := bus.call("ListEnvironments", ""); got != "[]" {
		t.Fatalf("our own call after: %q", got)
	}
}

// BuildEnvironment and RunEnvironment with the namespace backend on the
// Debian root filesystem: the environment runs, commands join it, the
// signals say so.
func TestDBusRealBuildAndRun(t *testing.T) {
	rootfs := testRootfsTar(t)
	bus := startTestBus(t, "", "", "", nil)
	k := newKP(t)
	manifest := k.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	bus.serve(k)
	mon := bus.monitor()
	var br buildResult
	bus.callJSON(&br, "BuildEnvironment", "s", manifest)
	if !br.Created || br.BaseLayer == "" {
		t.Fatalf("BuildEnvironment: %+v", br)
	}
	var run map[string]any
	bus.callJSON(&run, "RunEnvironment", "s", br.ShortID)
	if run["state"] != "running" || run["pid"].(float64) <= 0 || run["exit_code"] != nil {
		t.Fatalf("RunEnvironment: %v", run)
	}
	var st envInfo
	bus.callJSON(&st, "GetEnvironmentStatus", "s", br.EnvID)
	if st.State != stateRunning || st.Pid != int(run["pid"].(float64)) {
		t.Fatalf("status of the running environment: %+v", st)
	}
	// A command joins the instance the service holds.
	if out := k.ok("exec", br.ShortID, "--", "sh", "-c", "cat /etc/debian_version; echo $$"); !strings.HasPrefix(out, "12.") {
		t.Fatalf("exec in the held environment: %q", out)
	}
	bus.mustFail(dbusErrFailed, "is running", dbusIface, "DestroyEnvironment", "string:"+br.EnvID)
	var stop map[string]any
	bus.callJSON(&stop, "StopEnvironment", "s", br.EnvID)
	if stop["stopped"] != true {
		t.Fatalf("StopEnvironment: %v", stop)
	}
	bus.callJSON(&st, "GetEnvironmentStatus", "s", br.EnvID)
	if st.State != stateBuilt {
		t.Fatalf("after StopEnvironment: %+v", st)
	}
	var got []string
	var steps int
	waitFor(t, "the signals", func() bool {
		got, steps = phases(mon.signals())
		return len(got) >= 5
	})
	if steps < 2 || !strings.Contains(mon.String(), `string "importing `) {
		t.Fatalf("a real build's BuildProgress has %d steps between started and finished, want its import's; all:\n%s", steps, strings.Join(mon.signals(), "\n"))
	}
	want := []string{"BuildProgress", "BuildProgress", "EnvironmentChanged " + br.EnvID + " built",
		"EnvironmentChanged " + br.EnvID + " running", "EnvironmentChanged " + br.EnvID + " built"}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Fatalf("signal %d: %q, want %q; all:\n%s", i, got[i], w, strings.Join(got, "\n"))
		}
	}
	// A command run from a terminal, not through the service, is seen
	// too: its instance starting, and ending.
	k.ok("exec", br.EnvID, "--", "sleep", "1")
	waitFor(t, "the signals of an exec from outside", func() bool {
		got, _ = phases(mon.signals())
		return len(got) >= 7
	})
	if got[5] != "EnvironmentChanged "+br.EnvID+" running" || got[6] != "EnvironmentChanged "+br.EnvID+" built" {
		t.Fatalf("an exec from outside: %q", got[5:])
	}
	bus.call("DestroyEnvironment", "s", br.EnvID)
}

// What other processes do to the store is signalled once each, and what
// the service does itself is not signalled twice though the watch sees it
// as well.
func TestDBusSignalsOthersChanges(t *testing.T) {
	bus := startTestBus(t, "", "", "", nil)
	k := newMockKP(t, "")
	var br buildResult
	k.jsonOut(&br, "build", "--name", "demo")
	bus.serve(k)
	mon := bus.monitor()
	k.ok("rename", "demo", "other")
	k.ok("freeze", "other")
	k.ok("unfreeze", "other")
	bus.call("RenameEnvironment", "ss", "other", "third")
	k.ok("destroy", "third")
	want := []string{"built", "frozen", "built", "built", "destroyed"}
	var got []string
	waitFor(t, "the signals", func() bool {
		got = mon.signals()
		return len(got) >= len(want)
	})
	time.Sleep(300 * time.Millisecond) // a double would come now
	got = mon.signals()
	if len(got) != len(want) {
		t.Fatalf("signals:\n%s\nwant EnvironmentChanged %v", strings.Join(got, "\n"), want)
	}
	for i, w := range want {
		if got[i] != "EnvironmentChanged "+br.EnvID+" "+w {
			t.Fatalf("signal %d: %q, want %s; all:\n%s", i, got[i], w, strings.Join(got, "\n"))
		}
	}
}
