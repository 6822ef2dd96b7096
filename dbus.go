package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The D-Bus service org.karapace.Manager1: the engine's main operations
// for desktop front ends, on the session bus, over dbuswire.go. Every call
// runs in its own goroutine, so a build, gc or verify does not hold up a
// listing; what changes the store waits for the store's lock as the
// command line does (KARAPACE_LOCK_WAIT) and then fails StoreBusy. Only
// the user the service runs as may call it. Results are JSON strings with
// the field names of the commands' --json.

const (
	dbusName          = "org.karapace.Manager1"
	dbusPath          = dbusObjectPath("/org/karapace/Manager1")
	dbusIface         = "org.karapace.Manager1"
	dbusAPIVersion    = uint32(1)
	dbusIdleDefault   = 30 * time.Second
	dbusMaxCalls      = 64 // calls in flight at once; more are refused
	dbusNotifyWait    = 5 * time.Second
	dbusBusName       = "org.freedesktop.DBus"
	dbusBusPath       = dbusObjectPath("/org/freedesktop/DBus")
	dbusPropsIface    = "org.freedesktop.DBus.Properties"
	dbusIntroIface    = "org.freedesktop.DBus.Introspectable"
	dbusPeerIface     = "org.freedesktop.DBus.Peer"
	dbusErrUnknown    = "org.freedesktop.DBus.Error.UnknownMethod"
	dbusErrArgs       = "org.freedesktop.DBus.Error.InvalidArgs"
	dbusErrDenied     = "org.freedesktop.DBus.Error.AccessDenied"
	dbusNotifications = "org.freedesktop.Notifications"
)

// The service's own error names; each says which exit code the command
// line would have given.
const (
	dbusErrNotFound        = "org.karapace.Error.NotFound"        // exit 1: no such environment, or no store yet
	dbusErrManifestInvalid = "org.karapace.Error.ManifestInvalid" // exit 2: the manifest or the lock is wrong
	dbusErrStoreBusy       = "org.karapace.Error.StoreBusy"       // exit 3: another operation holds the store
	dbusErrStore           = "org.karapace.Error.Store"           // exit 3: the store is damaged or of another version
	dbusErrInvalidArgument = "org.karapace.Error.InvalidArgument" // exit 1: a bad name, a relative path
	dbusErrFailed          = "org.karapace.Error.Failed"          // exit 1: anything else (a running environment, a failed build)
)

// dbusIntrospection is the object's interface; TestDBusIntrospect checks
// it against what busctl reads and against the dispatch table.
const dbusIntrospection = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.karapace.Manager1">
    <method name="ListEnvironments"><arg name="environments_json" type="s" direction="out"/></method>
    <method name="GetEnvironmentStatus"><arg name="id_or_name" type="s" direction="in"/><arg name="status_json" type="s" direction="out"/></method>
    <method name="GetEnvironmentHash"><arg name="id_or_name" type="s" direction="in"/><arg name="env_id" type="s" direction="out"/></method>
    <method name="BuildEnvironment"><arg name="manifest_path" type="s" direction="in"/><arg name="result_json" type="s" direction="out"/></method>
    <method name="BuildNamedEnvironment"><arg name="manifest_path" type="s" direction="in"/><arg name="name" type="s" direction="in"/><arg name="result_json" type="s" direction="out"/></method>
    <method name="DestroyEnvironment"><arg name="id_or_name" type="s" direction="in"/><arg name="result_json" type="s" direction="out"/></method>
    <method name="RunEnvironment"><arg name="id_or_name" type="s" direction="in"/><arg name="result_json" type="s" direction="out"/></method>
    <method name="StopEnvironment"><arg name="id_or_name" type="s" direction="in"/><arg name="result_json" type="s" direction="out"/></method>
    <method name="RenameEnvironment"><arg name="id_or_name" type="s" direction="in"/><arg name="new_name" type="s" direction="in"/><arg name="result_json" type="s" direction="out"/></method>
    <method name="ListPresets"><arg name="presets_json" type="s" direction="out"/></method>
    <method name="GarbageCollect"><arg name="dry_run" type="b" direction="in"/><arg name="report_json" type="s" direction="out"/></method>
    <method name="VerifyStore"><arg name="report_json" type="s" direction="out"/></method>
    <signal name="EnvironmentChanged"><arg name="env_id" type="s"/><arg name="state" type="s"/></signal>
    <signal name="BuildProgress"><arg name="job" type="s"/><arg name="phase" type="s"/><arg name="done" type="t"/><arg name="total" type="t"/></signal>
    <property name="ApiVersion" type="u" access="read"><annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/></property>
    <property name="StoreRoot" type="s" access="read"><annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/></property>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg name="interface_name" type="s" direction="in"/><arg name="property_name" type="s" direction="in"/><arg name="value" type="v" direction="out"/></method>
    <method name="GetAll"><arg name="interface_name" type="s" direction="in"/><arg name="properties" type="a{sv}" direction="out"/></method>
    <method name="Set"><arg name="interface_name" type="s" direction="in"/><arg name="property_name" type="s" direction="in"/><arg name="value" type="v" direction="in"/></method>
    <signal name="PropertiesChanged"><arg name="interface_name" type="s"/><arg name="changed_properties" type="a{sv}"/><arg name="invalidated_properties" type="as"/></signal>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
</node>
`

// dbusMethod is one method of org.karapace.Manager1: its arguments'
// signature and what it does with them, returning the JSON result.
type dbusMethod struct {
	in  string
	run func(s *dbusService, call *dbusCall, args []any) (any, error)
}

// dbusCall is a method call being served.
type dbusCall struct {
	msg *dbusMsg
	job string // names the call in BuildProgress: the caller's unique name and the call's serial
}

var dbusMethods = map[string]dbusMethod{
	"ListEnvironments":      {"", (*dbusService).listEnvironments},
	"GetEnvironmentStatus":  {"s", (*dbusService).environmentStatus},
	"GetEnvironmentHash":    {"s", (*dbusService).environmentHash},
	"BuildEnvironment":      {"s", (*dbusService).buildEnvironment},
	"BuildNamedEnvironment": {"ss", (*dbusService).buildEnvironment},
	"DestroyEnvironment":    {"s", (*dbusService).destroyEnvironment},
	"RunEnvironment":        {"s", (*dbusService).runEnvironment},
	"StopEnvironment":       {"s", (*dbusService).stopEnvironment},
	"RenameEnvironment":     {"ss", (*dbusService).renameEnvironment},
	"ListPresets":           {"", (*dbusService).listPresets},
	"GarbageCollect":        {"b", (*dbusService).garbageCollect},
	"VerifyStore":           {"", (*dbusService).verifyStore},
}

// dbusService is the running service.
type dbusService struct {
	conn   *dbusConn
	root   string // the store root, absolute
	getenv func(string) string
	out    *output
	idle   time.Duration // 0: never exit when idle
	ctx    context.Context

	mu       sync.Mutex
	st       *store // opened on first use: there may be no store yet
	calls    int    // calls in flight
	lastBusy time.Time
	callers  map[string]bool         // unique names checked to be our user
	held     map[string]*dbusHeldRun // RunEnvironment's instances, by env_id
	calling  sync.WaitGroup          // calls in flight, for a clean exit
	watch    *storeWatch             // other processes' changes to the store

	sigMu    sync.Mutex
	seen     map[string]string // what EnvironmentChanged last said of each: state and name
	building int               // builds in flight
	unseen   map[string]bool   // new environments the watch saw during a build
}

// dbusHeldRun is an environment RunEnvironment holds running.
type dbusHeldRun struct {
	stop *signalCatch // SIGHUP through it ends the held session
	done chan struct{}
}

func cmdDBus(c *cli) error {
	if c.has("install") {
		return c.installDBusService()
	}
	idle := dbusIdleDefault
	if v := c.flag("idle-timeout"); v != "" {
		var err error
		if idle, err = time.ParseDuration(v); err != nil || idle < 0 {
			return usageErrorf("--idle-timeout %q: not a duration like 30s (0: never)", v)
		}
	}
	root, err := c.storeRoot()
	if err != nil {
		return err
	}
	addr, err := sessionBusAddress(c.getenv)
	if err != nil {
		return err
	}
	conn, err := dialDBus(addr, c.out)
	if err != nil {
		return err
	}
	defer conn.close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &dbusService{conn: conn, root: root, getenv: c.getenv, out: c.out, idle: idle, ctx: ctx, lastBusy: time.Now(),
		callers: map[string]bool{}, held: map[string]*dbusHeldRun{}, unseen: map[string]bool{}}
	if err := s.requestName(); err != nil {
		return err
	}
	// Opening the store starts watching it for other processes' changes;
	// with no store yet, the first build does.
	if _, err := s.store(false); err != nil && !errors.Is(err, errNoStore) {
		s.out.warnf("the store %s: %v", root, err)
	}
	s.out.infof("serving %s on the session bus as %s (store %s)", dbusName, conn.name, root)
	return s.serve()
}

// requestName takes the service's name, or says who has it.
func (s *dbusService) requestName() error {
	const doNotQueue = 4
	r, err := s.conn.call(dbusBusName, dbusBusPath, dbusBusName, "RequestName", "su", dbusName, uint32(doNotQueue))
	if err != nil {
		return fmt.Errorf("requesting the bus name %s: %w", dbusName, err)
	}
	vs, err := r.args("u")
	if err != nil {
		return fmt.Errorf("requesting the bus name %s: %w", dbusName, err)
	}
	switch vs[0].(uint32) {
	case 1, 4: // the primary owner, or already it
		return nil
	}
	who := "another process"
	if r, err := s.conn.call(dbusBusName, dbusBusPath, dbusBusName, "GetNameOwner", "s", dbusName); err == nil {
		if vs, err := r.args("s"); err == nil {
			who = "connection " + vs[0].(string)
			if r, err := s.conn.call(dbusBusName, dbusBusPath, dbusBusName, "GetConnectionUnixProcessID", "s", vs[0]); err == nil {
				if vs, err := r.args("u"); err == nil {
					who = fmt.Sprintf("process %d (%s)", vs[0].(uint32), who)
				}
			}
		}
	}
	return fmt.Errorf("the bus name %s is already taken by %s: a karapace dbus service is running on this bus already", dbusName, who)
}

// serve answers calls until the service has been idle for s.idle, or a
// signal ends it; either way it gives up its name first and answers what
// was already sent to it.
func (s *dbusService) serve() error {
	tick := time.Second
	if s.idle > 0 && s.idle/4 < tick {
		tick = max(s.idle/4, 10*time.Millisecond)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case m, ok := <-s.conn.incoming:
			if !ok {
				return fmt.Errorf("the bus connection ended: %v", s.conn.err)
			}
			s.dispatch(m)
		case <-t.C:
			if s.idle > 0 && s.idleFor() >= s.idle {
				s.out.debugf("idle for %s: exiting", s.idle)
				return s.shutdown()
			}
		case <-s.ctx.Done():
			return s.shutdown()
		}
	}
}

func (s *dbusService) idleFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls > 0 || len(s.held) > 0 {
		return 0
	}
	return time.Since(s.lastBusy)
}

// shutdown releases the name, so that the bus starts a new service for
// the next call, serves what arrived before that, and waits for the calls
// in flight.
func (s *dbusService) shutdown() error {
	s.conn.call(dbusBusName, dbusBusPath, dbusBusName, "ReleaseName", "s", dbusName)
	for drained := false; !drained; {
		select {
		case m, ok := <-s.conn.incoming:
			if !ok {
				drained = true
				break
			}
			s.dispatch(m)
		case <-time.After(100 * time.Millisecond):
			drained = true
		}
	}
	s.calling.Wait()
	s.mu.Lock()
	held, w := s.held, s.watch
	s.mu.Unlock()
	if w != nil {
		w.close()
	}
	for _, h := range held {
		h.stop.c <- syscall.SIGHUP
		<-h.done
	}
	return nil
}

// dispatch starts serving a method call; signals to us are of no interest.
func (s *dbusService) dispatch(m *dbusMsg) {
	if m.Type != dbusMethodCall {
		return
	}
	s.mu.Lock()
	if s.calls >= dbusMaxCalls {
		s.mu.Unlock()
		s.replyError(m, "org.freedesktop.DBus.Error.LimitsExceeded", fmt.Sprintf("%d calls are in flight already", dbusMaxCalls))
		return
	}
	s.calls++
	s.mu.Unlock()
	s.calling.Add(1)
	go func() {
		defer func() {
			s.mu.Lock()
			s.calls--
			s.lastBusy = time.Now()
			s.mu.Unlock()
			s.calling.Done()
		}()
		sig, v, err := s.serveCall(m)
		if m.Flags&dbusNoReplyExpected != 0 {
			return
		}
		if err != nil {
			name, msg := dbusErrorOf(err)
			s.replyError(m, name, msg)
			return
		}
		r := &dbusMsg{Type: dbusMethodReturn, ReplySerial: m.Serial, Destination: m.Sender, Signature: sig}
		var args []any
		if sig != "" {
			args = []any{v}
		}
		if _, err := s.conn.send(r, args...); err != nil {
			s.out.warnf("D-Bus: answering %s: %v", m.Member, err)
		}
	}()
}

func (s *dbusService) replyError(m *dbusMsg, name, msg string) {
	if m.Flags&dbusNoReplyExpected != 0 {
		return
	}
	r := &dbusMsg{Type: dbusError, ErrorName: name, ReplySerial: m.Serial, Destination: m.Sender, Signature: "s"}
	if _, err := s.conn.send(r, msg); err != nil {
		s.out.warnf("D-Bus: answering %s: %v", m.Member, err)
	}
}

// dbusReplyErr is an error with a D-Bus name of its own.
type dbusReplyErr struct{ name, msg string }

func (e *dbusReplyErr) Error() string { return e.msg }

// dbusErrorOf names an error of the engine as the service reports it.
func dbusErrorOf(err error) (string, string) {
	var re *dbusReplyErr
	var nf notFoundError
	var busy storeBusyError
	var ce *codedError
	switch {
	case errors.As(err, &re):
		return re.name, re.msg
	case errors.As(err, &nf) || errors.Is(err, errNoStore):
		return dbusErrNotFound, err.Error()
	case errors.As(err, &busy):
		return dbusErrStoreBusy, err.Error()
	case errors.As(err, &ce) && ce.code == exitManifest:
		return dbusErrManifestInvalid, err.Error()
	case errors.As(err, &ce) && ce.code == exitStore:
		return dbusErrStore, err.Error()
	case errors.As(err, &ce) && ce.kind == "usage":
		return dbusErrInvalidArgument, err.Error()
	}
	return dbusErrFailed, err.Error()
}

// serveCall checks the caller and runs the method; it returns the reply's
// signature and value.
func (s *dbusService) serveCall(m *dbusMsg) (string, any, error) {
	if err := s.checkCaller(m.Sender); err != nil {
		return "", nil, err
	}
	switch m.Path {
	case dbusPath:
	case "/", "/org", "/org/karapace":
		// The way down to the object, for tools that walk the tree.
		if (m.Interface == "" || m.Interface == dbusIntroIface) && m.Member == "Introspect" {
			child := strings.Split(strings.TrimPrefix(string(dbusPath), string(m.Path)), "/")
			if child[0] == "" {
				child = child[1:]
			}
			return "s", `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node><node name="` + child[0] + `"/></node>
`, nil
		}
		fallthrough
	default:
		return "", nil, &dbusReplyErr{"org.freedesktop.DBus.Error.UnknownObject", fmt.Sprintf("no object %s here; the service is at %s", m.Path, dbusPath)}
	}
	iface := m.Interface
	if iface == "" { // a call without an interface names a member of any
		switch m.Member {
		case "Get", "GetAll", "Set":
			iface = dbusPropsIface
		case "Introspect":
			iface = dbusIntroIface
		case "Ping", "GetMachineId":
			iface = dbusPeerIface
		default:
			iface = dbusIface
		}
	}
	switch iface {
	case dbusIface:
		meth, ok := dbusMethods[m.Member]
		if !ok {
			break
		}
		args, err := m.args(meth.in)
		if err != nil {
			return "", nil, &dbusReplyErr{dbusErrArgs, fmt.Sprintf("%s: %v", m.Member, err)}
		}
		v, err := meth.run(s, &dbusCall{msg: m, job: fmt.Sprintf("%s/%d", m.Sender, m.Serial)}, args)
		if err != nil {
			return "", nil, err
		}
		if id, ok := v.(string); ok { // GetEnvironmentHash: the env_id as it is
			return "s", id, nil
		}
		b, err := json.Marshal(v)
		return "s", string(b), err
	case dbusPropsIface:
		return s.properties(m)
	case dbusIntroIface:
		if m.Member == "Introspect" {
			if _, err := m.args(""); err != nil {
				return "", nil, &dbusReplyErr{dbusErrArgs, err.Error()}
			}
			return "s", dbusIntrospection, nil
		}
	case dbusPeerIface:
		if _, err := m.args(""); err != nil && (m.Member == "Ping" || m.Member == "GetMachineId") {
			return "", nil, &dbusReplyErr{dbusErrArgs, err.Error()}
		}
		switch m.Member {
		case "Ping":
			return "", nil, nil
		case "GetMachineId":
			for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
				if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) == 32 {
					return "s", strings.TrimSpace(string(b)), nil
				}
			}
			return "", nil, &dbusReplyErr{dbusErrFailed, "this machine has no machine ID (/etc/machine-id)"}
		}
	default:
		return "", nil, &dbusReplyErr{"org.freedesktop.DBus.Error.UnknownInterface", fmt.Sprintf("no interface %s at %s", iface, dbusPath)}
	}
	return "", nil, &dbusReplyErr{dbusErrUnknown, fmt.Sprintf("no method %s in %s", m.Member, iface)}
}

// checkCaller allows only the service's own user: on a bus that others
// can reach, the service would otherwise act for them with its rights.
func (s *dbusService) checkCaller(sender string) error {
	s.mu.Lock()
	ok := s.callers[sender]
	s.mu.Unlock()
	if ok {
		return nil
	}
	deny := &dbusReplyErr{dbusErrDenied, "only the user this service runs as may call it"}
	if sender == "" {
		return deny
	}
	r, err := s.conn.call(dbusBusName, dbusBusPath, dbusBusName, "GetConnectionUnixUser", "s", sender)
	if err != nil {
		return deny
	}
	vs, err := r.args("u")
	if err != nil || vs[0].(uint32) != uint32(os.Geteuid()) {
		return deny
	}
	s.mu.Lock()
	s.callers[sender] = true // unique names are never reused
	s.mu.Unlock()
	return nil
}

func (s *dbusService) properties(m *dbusMsg) (string, any, error) {
	props := map[string]dbusVariant{"ApiVersion": {"u", dbusAPIVersion}, "StoreRoot": {"s", s.root}}
	checkIface := func(iface string) error {
		if iface != dbusIface {
			return &dbusReplyErr{"org.freedesktop.DBus.Error.UnknownInterface", fmt.Sprintf("no properties of interface %q here", iface)}
		}
		return nil
	}
	switch m.Member {
	case "Get":
		vs, err := m.args("ss")
		if err != nil {
			return "", nil, &dbusReplyErr{dbusErrArgs, err.Error()}
		}
		if err := checkIface(vs[0].(string)); err != nil {
			return "", nil, err
		}
		v, ok := props[vs[1].(string)]
		if !ok {
			return "", nil, &dbusReplyErr{"org.freedesktop.DBus.Error.UnknownProperty", fmt.Sprintf("no property %q", vs[1])}
		}
		return "v", v, nil
	case "GetAll":
		vs, err := m.args("s")
		if err != nil {
			return "", nil, &dbusReplyErr{dbusErrArgs, err.Error()}
		}
		if err := checkIface(vs[0].(string)); err != nil {
			return "", nil, err
		}
		return "a{sv}", sortedDict(props), nil
	case "Set":
		// Refused before the value is decoded: it could be anything.
		return "", nil, &dbusReplyErr{"org.freedesktop.DBus.Error.PropertyReadOnly", "the properties of " + dbusIface + " are read-only"}
	}
	return "", nil, &dbusReplyErr{dbusErrUnknown, fmt.Sprintf("no method %s in %s", m.Member, dbusPropsIface)}
}

// emit sends a signal of the service's interface.
func (s *dbusService) emit(member, sig string, args ...any) {
	m := &dbusMsg{Type: dbusSignal, Path: dbusPath, Interface: dbusIface, Member: member, Signature: sig}
	if _, err := s.conn.send(m, args...); err != nil {
		s.out.warnf("D-Bus: signal %s: %v", member, err)
	}
}

// changed signals EnvironmentChanged(env_id, state) when an environment's
// state or name is not what was last signalled: for the service's own
// calls and, through the store watch, for what other processes do, each
// change once whichever hears of it first.
func (s *dbusService) changed(envID string) {
	s.signalChange(envID, false)
}

// signalChange is changed; the watch's news of an environment not seen
// before waits while a build runs: it is most likely that build's, whose
// BuildProgress "finished" comes first.
func (s *dbusService) signalChange(envID string, watched bool) {
	if watched {
		s.sigMu.Lock()
		_, known := s.seen[envID]
		if !known && s.building > 0 {
			s.unseen[envID] = true
			s.sigMu.Unlock()
			return
		}
		s.sigMu.Unlock()
	}
	e, err := s.engine(false)
	if err != nil {
		return
	}
	state, name := string(stateDestroyed), ""
	m, err := e.s.getMeta(envID)
	switch {
	case err == nil:
		state, name = string(e.state(m)), m.Name
	case !errors.Is(err, fs.ErrNotExist):
		return
	}
	s.sigMu.Lock()
	defer s.sigMu.Unlock()
	if s.seen == nil {
		s.seen = map[string]string{}
	}
	if s.seen[envID] == state+"\x00"+name {
		return
	}
	if state == string(stateDestroyed) {
		delete(s.seen, envID)
	} else {
		s.seen[envID] = state + "\x00" + name
	}
	s.emit("EnvironmentChanged", "ss", envID, state)
}

// watchStore hears of the changes other processes make to the store (a
// karapace in a terminal, an instance ending) and signals them.
func (s *dbusService) watchStore(st *store) {
	e := newEngine(st, s.getenv, s.out)
	w, err := watchStore(st, func(id string) (int, bool) {
		m, err := st.getMeta(id)
		if err != nil {
			return 0, false
		}
		return e.running(m)
	})
	if err != nil {
		s.out.warnf("D-Bus: changes made outside the service will not be signalled: %v", err)
		return
	}
	s.mu.Lock()
	s.watch = w
	s.mu.Unlock()
	s.sigMu.Lock()
	s.seen = map[string]string{}
	metas, _ := st.listMeta()
	for _, m := range metas {
		s.seen[m.EnvID] = string(e.state(m)) + "\x00" + m.Name
	}
	s.sigMu.Unlock()
	for id := range w.changes() {
		if id != "" {
			s.signalChange(id, true)
			continue
		}
		// Changes were lost: any environment may have changed.
		s.sigMu.Lock()
		ids := make([]string, 0, len(s.seen))
		for id := range s.seen {
			ids = append(ids, id)
		}
		s.sigMu.Unlock()
		metas, _ := st.listMeta()
		for _, m := range metas {
			ids = append(ids, m.EnvID)
		}
		for _, id := range ids {
			s.changed(id)
		}
	}
}

// buildProgress is where a build's progress goes: BuildProgress(job,
// phase, done, total). The phases are "started", then what the build is
// doing ("downloading 96 packages") with how far it is (bytes or items, a
// total of 0 if unknown), then "finished" or "failed".
func (s *dbusService) buildProgress(job, phase string, done, total uint64) {
	s.emit("BuildProgress", "sstt", job, phase, done, total)
}

// desktopNotify shows a notification through org.freedesktop.Notifications,
// when a notification server is there; nothing happens otherwise.
func (s *dbusService) desktopNotify(summary, body string) {
	_, err := s.conn.callTimeout(dbusNotifyWait, dbusNotifications, "/org/freedesktop/Notifications", dbusNotifications, "Notify", "susssasa{sv}i",
		"Karapace", uint32(0), "", summary, body, []string{}, []dbusDictEntry{}, int32(-1))
	if err != nil {
		s.out.debugf("desktop notification not shown: %v", err)
	}
}

// store opens the store the first time it is needed; create: a build may
// make it.
func (s *dbusService) store(create bool) (*store, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st != nil {
		return s.st, nil
	}
	st, v, err := openStoreAnyVersion(s.root, create)
	if err == nil {
		err = st.openVersion(v)
	}
	if err != nil {
		return nil, err
	}
	st.lockWait = storeLockWait(s.getenv, s.out)
	s.st = st
	go s.watchStore(st)
	return st, nil
}

func (s *dbusService) engine(create bool) (*engine, error) {
	return s.engineTo(create, s.out)
}

// engineTo is an engine reporting to out: a build's own, whose progress
// becomes its job's signals.
func (s *dbusService) engineTo(create bool, out *output) (*engine, error) {
	st, err := s.store(create)
	if err != nil {
		return nil, err
	}
	return newEngine(st, s.getenv, out), nil
}

func (s *dbusService) listEnvironments(_ *dbusCall, _ []any) (any, error) {
	infos := []envInfo{}
	e, err := s.engine(false)
	if errors.Is(err, errNoStore) {
		return infos, nil
	}
	if err != nil {
		return nil, err
	}
	metas, errs := e.s.listMeta()
	for _, m := range metas {
		infos = append(infos, e.info(m))
	}
	if len(errs) > 0 {
		return nil, storeErrorf("%d metadata file(s) are damaged (%v); run 'karapace verify-store'", len(errs), errs[0])
	}
	return infos, nil
}

func (s *dbusService) find(ref string) (*engine, *envMeta, error) {
	e, err := s.engine(false)
	if err != nil {
		return nil, nil, err
	}
	m, err := e.findEnv(ref)
	return e, m, err
}

func (s *dbusService) environmentStatus(_ *dbusCall, args []any) (any, error) {
	e, m, err := s.find(args[0].(string))
	if err != nil {
		return nil, err
	}
	return e.info(m), nil
}

func (s *dbusService) environmentHash(_ *dbusCall, args []any) (any, error) {
	_, m, err := s.find(args[0].(string))
	if err != nil {
		return nil, err
	}
	return m.EnvID, nil
}

// buildEnvironment is BuildEnvironment(manifest_path) and
// BuildNamedEnvironment(manifest_path, name). The path must be absolute:
// the service's working directory means nothing to the caller.
func (s *dbusService) buildEnvironment(call *dbusCall, args []any) (any, error) {
	path := args[0].(string)
	var o buildOptions
	if len(args) > 1 {
		o.name = args[1].(string)
	}
	if !filepath.IsAbs(path) {
		return nil, usageErrorf("manifest path %q is not absolute", path)
	}
	e, err := s.engineTo(true, s.out.withEvents(func(ev progressEvent) {
		phase := ev.Label
		if ev.Line != "" {
			phase += ": " + ev.Line
		}
		s.buildProgress(call.job, phase, uint64(max(ev.Done, 0)), uint64(max(ev.Total, 0)))
	}))
	if err != nil {
		return nil, err
	}
	s.sigMu.Lock()
	s.building++
	s.sigMu.Unlock()
	defer func() {
		s.sigMu.Lock()
		s.building--
		var ids []string
		if s.building == 0 {
			for id := range s.unseen {
				ids = append(ids, id)
			}
			clear(s.unseen)
		}
		s.sigMu.Unlock()
		for _, id := range ids {
			s.changed(id)
		}
	}()
	s.buildProgress(call.job, "started", 0, 0)
	res, err := e.build(path, o)
	if err != nil {
		s.buildProgress(call.job, "failed", 0, 0)
		go s.desktopNotify("Build failed", err.Error())
		return nil, err
	}
	if m, err := loadManifest(res.Manifest); err == nil && len(m.Apps) > 0 {
		if err := writeLaunchers(s.getenv, e.s.root, res, m.Apps); err != nil {
			s.out.warnf("desktop launchers: %v", err)
		}
	}
	s.buildProgress(call.job, "finished", 0, 0)
	name := res.ShortID
	if res.Name != "" {
		name = res.Name + " (" + res.ShortID + ")"
	}
	go s.desktopNotify("Build finished", "Environment "+name+" is built")
	if res.Replaced != "" {
		s.changed(res.Replaced)
	}
	s.changed(res.EnvID)
	return res, nil
}

func (s *dbusService) destroyEnvironment(_ *dbusCall, args []any) (any, error) {
	e, err := s.engine(false)
	if err != nil {
		return nil, err
	}
	m, err := e.destroy(args[0].(string))
	if err != nil {
		return nil, err
	}
	s.changed(m.EnvID)
	return map[string]any{"env_id": m.EnvID, "destroyed": true, "ref_count": m.RefCount, "manifest_paths": m.manifests()}, nil
}

// runEnvironment is RunEnvironment: a D-Bus caller has no terminal to
// enter with, so the service starts the environment and holds it running
// (its login shell, without a terminal, reading from the service), and
// answers once it runs. Launchers, 'karapace exec' and 'enter' then join
// that instance. It runs until StopEnvironment or 'karapace stop', or
// until the service exits, which stays while it holds one. A backend that
// keeps nothing running (mock) runs the shell and answers when it ends.
func (s *dbusService) runEnvironment(_ *dbusCall, args []any) (any, error) {
	e, m, err := s.find(args[0].(string))
	if err != nil {
		return nil, err
	}
	// exit_code only when the shell has ended already.
	result := func(code *int) any {
		i := e.info(m)
		r := map[string]any{"env_id": m.EnvID, "entered": m.EnvID, "state": i.State, "pid": i.Pid}
		if code != nil {
			r["exit_code"] = *code
		}
		return r
	}
	s.mu.Lock()
	_, held := s.held[m.EnvID]
	s.mu.Unlock()
	if held {
		return result(nil), nil
	}
	in, hold, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		in.Close()
		hold.Close()
		return nil, err
	}
	ready := make(chan struct{})
	close(ready)
	h := &dbusHeldRun{stop: &signalCatch{c: make(chan os.Signal, 1), ready: ready}, done: make(chan struct{})}
	var env []string
	for _, k := range envNames(s.getenv) {
		env = append(env, k+"="+s.getenv(k))
	}
	es := &execSpec{Login: true, Stdio: [3]*os.File{in, null, null}, Env: env, Cwd: "/", Signals: h.stop}
	type ended struct {
		code int
		err  error
	}
	end := make(chan ended, 1)
	s.mu.Lock()
	s.held[m.EnvID] = h
	s.mu.Unlock()
	go func() {
		code, err := e.run(m.EnvID, es)
		in.Close()
		hold.Close()
		null.Close()
		s.mu.Lock()
		delete(s.held, m.EnvID)
		s.lastBusy = time.Now()
		s.mu.Unlock()
		s.changed(m.EnvID)
		end <- ended{code, err}
		close(h.done)
	}()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case r := <-end:
			if r.err != nil {
				return nil, r.err
			}
			return result(&r.code), nil
		case <-t.C:
			if _, ok := e.running(m); ok {
				s.changed(m.EnvID)
				return result(nil), nil
			}
		}
	}
}

func (s *dbusService) stopEnvironment(_ *dbusCall, args []any) (any, error) {
	e, err := s.engine(false)
	if err != nil {
		return nil, err
	}
	m, res, err := e.stop(args[0].(string), 10*time.Second)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	h := s.held[m.EnvID]
	s.mu.Unlock()
	if h != nil {
		<-h.done // its end signals the change
	} else if res.WasRunning {
		s.changed(m.EnvID)
	}
	return map[string]any{"env_id": m.EnvID, "stopped": res.WasRunning, "killed": res.Killed}, nil
}

func (s *dbusService) renameEnvironment(_ *dbusCall, args []any) (any, error) {
	e, err := s.engine(false)
	if err != nil {
		return nil, err
	}
	m, err := e.rename(args[0].(string), args[1].(string))
	if err != nil {
		return nil, err
	}
	s.changed(m.EnvID)
	return map[string]any{"env_id": m.EnvID, "name": m.Name}, nil
}

// listPresets lists the templates of 'karapace new', each with the
// comment that opens it.
func (s *dbusService) listPresets(_ *dbusCall, _ []any) (any, error) {
	type preset struct {
		Name        string `json:"name"`
		Description string `json:"description"`
	}
	out := []preset{}
	for _, name := range templateNames() {
		src, err := templateSource(name)
		if err != nil {
			return nil, err
		}
		var desc []string
		for _, line := range strings.Split(string(src), "\n") {
			if !strings.HasPrefix(line, "#") {
				break
			}
			desc = append(desc, strings.TrimSpace(strings.TrimPrefix(line, "#")))
		}
		out = append(out, preset{name, strings.Join(desc, " ")})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *dbusService) garbageCollect(_ *dbusCall, args []any) (any, error) {
	dry := args[0].(bool)
	st, err := s.store(false)
	if errors.Is(err, errNoStore) {
		return gcReport{DryRun: dry}, nil
	}
	if err != nil {
		return nil, err
	}
	return st.gc(s.ctx, gcOptions{DryRun: dry})
}

// verifyStore reports the damage it finds in its result ("bad"), as
// verify-store --json does; an error is a check that could not run.
func (s *dbusService) verifyStore(_ *dbusCall, _ []any) (any, error) {
	st, err := s.store(false)
	if err != nil {
		return nil, err
	}
	rep, err := st.verify(s.ctx)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(rep.Bad, func(i, j int) bool { return rep.Bad[i].Kind < rep.Bad[j].Kind })
	return rep, nil
}

// dbusActivationFile is the bus's activation file: the bus starts the
// service on the first call to its name, through the systemd unit where
// the bus activates through systemd.
func dbusActivationFile(exec string) string {
	return "[D-BUS Service]\nName=" + dbusName + "\nExec=" + exec + "\nSystemdService=karapace-dbus.service\n"
}

// dbusUnitFile is the systemd user unit. It has no systemd sandboxing, on
// purpose: in a user unit every such setting implies PrivateUsers= (only
// the user's own ID mapped) or NoNewPrivileges= (the set-user-ID newuidmap
// cannot map the subordinate range), and with either, package managers in
// the environments the service builds fail as they do under the
// single-ID mapping. The service does nothing the user's own karapace
// could not, answers only the user, and the environments are sandboxed
// by karapace itself.
func dbusUnitFile(exec string) string {
	return `[Unit]
Description=Karapace environment manager (D-Bus service ` + dbusName + `)

[Service]
Type=dbus
BusName=` + dbusName + `
ExecStart=` + exec + `
# It exits after 30 s idle; the next call starts it again.
Restart=on-failure
TimeoutStopSec=30
UMask=0077
# No ProtectSystem=, NoNewPrivileges= or other sandboxing: in a user unit
# they take the subordinate ID range away from the environments it builds.
`
}

// unitArg quotes a path for an Exec line of both file formats, refusing
// what either would read otherwise.
func unitArg(p string) (string, error) {
	for _, r := range p {
		if r < ' ' || strings.ContainsRune("\"'\\%$`;", r) {
			return "", usageErrorf("%q: a path with %q cannot go into a service file", p, r)
		}
	}
	if strings.ContainsRune(p, ' ') {
		return `"` + p + `"`, nil
	}
	return p, nil
}

// installDBusService writes the activation file and the unit into the
// user's XDG directories, for this binary and this store.
func (c *cli) installDBusService() error {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return fmt.Errorf("finding this program's path: %w", err)
	}
	root, err := c.storeRoot()
	if err != nil {
		return err
	}
	qexe, err := unitArg(exe)
	if err != nil {
		return err
	}
	qroot, err := unitArg(root)
	if err != nil {
		return err
	}
	dataHome, configHome := c.getenv("XDG_DATA_HOME"), c.getenv("XDG_CONFIG_HOME")
	home := c.getenv("HOME")
	if !filepath.IsAbs(dataHome) {
		dataHome = filepath.Join(home, ".local", "share")
	}
	if !filepath.IsAbs(configHome) {
		configHome = filepath.Join(home, ".config")
	}
	if !filepath.IsAbs(dataHome) || !filepath.IsAbs(configHome) {
		return errors.New("cannot tell where to install: set HOME, or XDG_DATA_HOME and XDG_CONFIG_HOME")
	}
	exec := qexe + " --store " + qroot + " dbus"
	files := []struct{ path, body string }{
		{filepath.Join(dataHome, "dbus-1", "services", dbusName+".service"), dbusActivationFile(exec)},
		{filepath.Join(configHome, "systemd", "user", "karapace-dbus.service"), dbusUnitFile(exec)},
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return fmt.Errorf("installing %s: %w", f.path, err)
		}
		if err := writeFileAtomic(f.path, []byte(f.body), 0o644); err != nil {
			return fmt.Errorf("installing %s: %w", f.path, err)
		}
	}
	return c.report(map[string]any{"activation_file": files[0].path, "systemd_unit": files[1].path}, func() string {
		return "wrote " + files[0].path + "\nwrote " + files[1].path +
			"\nthe session bus starts 'karapace dbus' on the first call (after 'systemctl --user daemon-reload' where systemd starts it)"
	})
}
