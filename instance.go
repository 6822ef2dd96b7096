package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// An instance is a running environment: its init (see nsrun.go) serves
// requests on a unix socket to start commands inside. The protocol is a
// few messages (see wire.go) over SOCK_SEQPACKET, with the caller's stdio
// (or the pseudo-terminal it gets back) passed as file descriptors.

// spawnRequest asks the instance to run a command.
type spawnRequest struct {
	Argv  []string
	Env   []string
	Dir   string
	TTY   bool // run on a new pseudo-terminal; its master comes back
	Login bool // no Argv: start the login shell
	Rows  uint16
	Cols  uint16
}

// instanceMsg is every message after the request, in both directions.
type instanceMsg struct {
	Pid    int    // started
	Error  string // could not start
	Status int    // with Error: the status a shell gives for it (126, 127)
	Exit   *int   // finished: status, or 128+signal
	Signal int    // client → instance: forward this signal
	Last   bool   // with Exit: the instance ends now; wait for it
}

// exitingMsg tells a client that reached an instance as it was ending to
// start a new one.
const exitingMsg = "the environment's instance is exiting"

const (
	maxInstanceMsg = 256 << 10
	// An instance nobody joins within this time after starting exits.
	instanceIdle = 30 * time.Second
	// How long init waits after SIGTERM before it kills what is left.
	instanceStopGrace = 5 * time.Second
)

// socketAddr names a socket by way of its directory's fd: a unix socket
// path may have only 107 bytes, and a store in a home directory plus an
// env_id is longer.
func socketAddr(path string) (*unix.SockaddrUnix, func(), error) {
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", filepath.Dir(path), err)
	}
	addr := &unix.SockaddrUnix{Name: fmt.Sprintf("/proc/self/fd/%d/%s", dir, filepath.Base(path))}
	return addr, func() { unix.Close(dir) }, nil
}

func listenControl(path string) (int, error) {
	os.Remove(path) // a stale socket from an instance that died
	addr, done, err := socketAddr(path)
	if err != nil {
		return -1, err
	}
	defer done()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("creating control socket: %w", err)
	}
	if err := unix.Bind(fd, addr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("binding control socket %s: %w", path, err)
	}
	if err := unix.Listen(fd, 64); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listening on %s: %w", path, err)
	}
	return fd, nil
}

func sendMsg(fd int, m wireMsg, files ...int) error {
	data := marshalWire(m)
	var oob []byte
	if len(files) > 0 {
		oob = unix.UnixRights(files...)
	}
	return unix.Sendmsg(fd, data, oob, nil, 0)
}

// recvMsg reads one message and the descriptors that came with it. At end
// of stream it returns io.EOF-like errEOF.
func recvMsg(fd int, m wireMsg) ([]int, error) {
	var oob [64]byte // room for the 4 descriptors a message may carry
	for {
		// Peek at the size first: most messages are a few bytes, and a
		// buffer of the largest size would cost more than all the rest.
		size, _, _, _, err := unix.Recvmsg(fd, make([]byte, 1), nil, unix.MSG_PEEK|unix.MSG_TRUNC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		buf := make([]byte, min(max(size, 1), maxInstanceMsg))
		n, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob[:unix.CmsgSpace(4*4)], unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if flags&unix.MSG_TRUNC != 0 {
			closeAll(parseRights(oob[:oobn]))
			return nil, fmt.Errorf("bad message: longer than %d bytes", maxInstanceMsg)
		}
		if n == 0 && oobn == 0 {
			return nil, errEOF
		}
		fds := parseRights(oob[:oobn])
		if err := unmarshalWire(buf[:n], m); err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("bad message: %w", err)
		}
		return fds, nil
	}
}

var errEOF = errors.New("connection closed")

// parseRights returns the descriptors a message's control data carries.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// instanceServer is the state of init: the connections it serves and the
// commands it runs.
type instanceServer struct {
	mu       sync.Mutex
	sessions map[int]*session // by command pid
	active   int              // connections being served
	exited   int              // of those, the ones whose command has exited
	served   bool             // a connection was ever accepted
	stopping bool
	closing  bool // the last session ended: no new ones, init exits
	ln       int
	forks    chan forkJob
	cgroups  []int // where each command starts: see cgroupLimits.open
	owner    int   // the uid the environment's owner connects as
	out      *output
	pids     int // RLIMIT_NPROC of each command, when no cgroup limits them
}

type session struct {
	done chan struct{} // closed by the reaper when the command has exited
	code int           // its exit status, or 128+signal
	last bool          // it was the last session: the instance ends
}

// The service: the process that starts and follows every command of an
// environment. init makes it, before it sets up, in a user namespace of
// its own below init's, with the same IDs (as bubblewrap runs what it
// sandboxes): the mounts init makes belong to init's namespace, so
// nothing the service or a command does (umount, remount, mount over,
// move) can change them, whatever capabilities it has in its own. It
// waits for init to finish the setup, then serves.

// serviceConfig is the serve stage's configuration. Its descriptors: 4
// closes (or brings a byte) when init's setup ends, 5 is the control
// socket, 6... the cgroups, then the first session's connection.
type serviceConfig struct {
	Owner     int // the uid the environment's owner connects as, seen from inside
	PidsLimit int // RLIMIT_NPROC of every command, where no cgroup holds a pids limit
	Cgroups   int // how many cgroup v1 descriptors (see cgroupLimits.open)
}

func init() {
	stages["serve"] = stage{func() wireMsg { return &serviceConfig{} }, serveStage}
}

// startService starts the service, listening on ln, for init to release
// once it has set up; init's descriptors it is given are closed here.
func startService(cfg *initConfig, ln int, out *output) (*stageProc, *os.File, error) {
	m, err := nestedMapping()
	if err != nil {
		return nil, nil, err
	}
	goR, goW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	defer goR.Close()
	files := []*os.File{goR, os.NewFile(uintptr(ln), "control")}
	for i := 0; i <= cfg.Cgroups; i++ { // the cgroups, then the first session
		files = append(files, os.NewFile(uintptr(6+i), "init"))
	}
	defer func() {
		for _, f := range files[1:] {
			f.Close()
		}
	}()
	sc := &serviceConfig{Owner: cfg.Owner, PidsLimit: cfg.PidsLimit, Cgroups: cfg.Cgroups}
	log := os.NewFile(5, "log") // the instance's log, init's stderr once it has set up
	p, err := startStage("serve", sc, m, stageOptions{extraFiles: files, stdout: log, stderr: log, out: out})
	if err != nil {
		goW.Close()
		return nil, nil, err
	}
	return p, goW, nil
}

// nestedMapping maps a user namespace below ours to the same IDs.
func nestedMapping() (idMapping, error) {
	var m idMapping
	var err error
	if m.uids, err = nestedIDMap("/proc/self/uid_map"); err == nil {
		m.gids, err = nestedIDMap("/proc/self/gid_map")
	}
	if err != nil {
		return m, err
	}
	sg, err := os.ReadFile("/proc/self/setgroups")
	if err != nil {
		return m, fmt.Errorf("reading /proc/self/setgroups: %w", err)
	}
	m.setgroups = strings.TrimSpace(string(sg)) == "allow"
	return m, nil
}

// nestedIDMap is the identity over the IDs a user namespace maps, read
// from its uid_map or gid_map.
func nestedIDMap(file string) ([]idRange, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	var out []idRange
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var inside, outside, count int
		if _, err := fmt.Sscan(line, &inside, &outside, &count); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", file, line, err)
		}
		out = append(out, idRange{inside, inside, count})
	}
	return out, nil
}

// serveStage is the service. Nothing inside may reach its memory,
// descriptors or executable (this binary, on the host): it is not
// dumpable, and the commands lack CAP_SYS_PTRACE (see forker), which
// would override that. It reaps what its commands leave (a subreaper),
// and ends with the last session: init then ends the environment.
func serveStage(c wireMsg, _ []int, out *output) int {
	cfg := c.(*serviceConfig)
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "karapace-serve: %s: %v\n", what, err)
		return exitFailure
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fail("making the service undumpable", err)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail("becoming the subreaper of the commands", err)
	}
	var cgroups []int
	for i := 0; i < cfg.Cgroups; i++ {
		cgroups = append(cgroups, 6+i)
	}
	srv, err := newInstanceServer(5, cgroups, cfg, out)
	if err != nil {
		return fail("starting", err)
	}
	var b [1]byte
	if n, _ := unix.Read(4, b[:]); n != 1 {
		return exitFailure // init's setup failed, and init says why
	}
	unix.Close(4)
	srv.adopt(6 + cfg.Cgroups)
	srv.serve()
	return exitOK
}

// newInstanceServer is the environment's service, ready to start
// commands: its reaper hears of every child that exits from then on.
func newInstanceServer(ln int, cgroups []int, cfg *serviceConfig, out *output) (*instanceServer, error) {
	s := &instanceServer{sessions: map[int]*session{}, ln: ln, cgroups: cgroups, forks: make(chan forkJob), out: out,
		owner: cfg.Owner, pids: cfg.PidsLimit}
	ready := make(chan error)
	go s.forker(ready)
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	go func() {
		for sig := range sigs {
			if sig == unix.SIGCHLD {
				s.reap()
			} else {
				s.stop()
			}
		}
	}()
	return s, <-ready
}

// serve runs the service loop until the last connection ends.
func (s *instanceServer) serve() {
	ln := s.ln
	time.AfterFunc(instanceIdle, func() { s.maybeExit(true) })
	for {
		conn, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if errors.Is(err, unix.EINVAL) {
			select {} // the listener was shut down: maybeExit is ending the process
		}
		if err != nil {
			// Out of descriptors or memory for now: the client waits in
			// the backlog until a session ends and frees some.
			s.out.warnf("accepting a connection: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.adopt(conn)
	}
}

// adopt serves conn, a connection made before init started.
func (s *instanceServer) adopt(conn int) {
	s.mu.Lock()
	s.active++
	s.served = true
	s.mu.Unlock()
	go s.handle(conn)
}

// handle serves one connection: one command, from start to exit status.
func (s *instanceServer) handle(conn int) {
	exited := false
	defer func() { s.finish(conn, exited) }()
	cred, err := unix.GetsockoptUcred(conn, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil || int(cred.Uid) != s.owner {
		// Only the environment's owner, who is root in here, may run commands.
		sendMsg(conn, &instanceMsg{Error: "permission denied: not the owner of this environment"})
		return
	}
	var req spawnRequest
	fds, err := recvMsg(conn, &req)
	if errors.Is(err, errOlderPeer) {
		// Answered in its own terms, an older client says why it failed.
		msg, _ := json.Marshal(map[string]string{"error": "this environment's instance was started by a newer karapace; stop it ('karapace stop') or use that version"})
		unix.Sendmsg(conn, msg, nil, nil, 0)
	}
	if err != nil {
		return
	}
	pid, sess, master, err := s.spawn(&req, fds)
	closeAll(fds)
	if err != nil {
		msg := instanceMsg{Error: err.Error()}
		var ce *codedError
		if errors.As(err, &ce) {
			msg.Status = ce.code
		}
		sendMsg(conn, &msg)
		return
	}
	if master >= 0 {
		sendMsg(conn, &instanceMsg{Pid: pid}, master)
		unix.Close(master)
	} else {
		sendMsg(conn, &instanceMsg{Pid: pid})
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			var m instanceMsg
			got, err := recvMsg(conn, &m)
			closeAll(got)
			if err != nil {
				select {
				case <-sess.done:
				default:
					// The client went away: hang up on its command as a
					// terminal would, and make sure it ends.
					unix.Kill(-pid, unix.SIGHUP)
					time.AfterFunc(instanceStopGrace, func() { unix.Kill(-pid, unix.SIGKILL) })
				}
				return
			}
			if m.Signal > 0 {
				unix.Kill(-pid, unix.Signal(m.Signal))
			}
		}
	}()
	<-sess.done
	exited = true
	// Only this goroutine writes to conn, so the exit status always
	// follows the start message.
	code := sess.code
	sendMsg(conn, &instanceMsg{Exit: &code, Last: sess.last})
	unix.Shutdown(conn, unix.SHUT_RDWR) // wakes the reader
	<-readerDone
}

// finish closes a served connection and ends init if it was the last.
func (s *instanceServer) finish(conn int, exited bool) {
	unix.Close(conn)
	s.mu.Lock()
	s.active--
	if exited {
		s.exited--
	}
	s.mu.Unlock()
	s.maybeExit(false)
}

// spawn starts the command of req in a new session, on the caller's stdio
// or on a new pseudo-terminal, and registers it before the reaper can see
// it exit.
func (s *instanceServer) spawn(req *spawnRequest, fds []int) (int, *session, int, error) {
	path, argv, err := commandFor(req)
	if err != nil {
		return 0, nil, -1, commandErr(127, err)
	}
	// A cgroup namespace of its own: the command sees its cgroups, on
	// cgroup v1 the environment's, as the root (it cannot leave them:
	// cgroupfs is read-only and locked).
	attr := &syscall.ProcAttr{Dir: req.Dir, Env: req.Env, Sys: &syscall.SysProcAttr{Setsid: true, Cloneflags: unix.CLONE_NEWCGROUP}}
	master := -1
	if req.TTY {
		m, slave, err := openPTYInside(req.Rows, req.Cols)
		if err != nil {
			return 0, nil, -1, err
		}
		defer unix.Close(slave)
		master = m
		attr.Files = []uintptr{uintptr(slave), uintptr(slave), uintptr(slave)}
		attr.Sys.Setctty = true
		attr.Sys.Ctty = 0
	} else {
		if len(fds) != 3 {
			return 0, nil, -1, fmt.Errorf("expected 3 file descriptors (stdin, stdout, stderr), got %d", len(fds))
		}
		attr.Files = []uintptr{uintptr(fds[0]), uintptr(fds[1]), uintptr(fds[2])}
	}
	fail := func(err error) (int, *session, int, error) {
		if master >= 0 {
			unix.Close(master)
		}
		return 0, nil, -1, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return fail(errors.New("the environment is stopping"))
	}
	if s.closing {
		return fail(errors.New(exitingMsg))
	}
	if len(s.cgroups) > 0 {
		// cgroup v1: fork from inside the environment's cgroups, then go
		// back home. (s.mu keeps spawns from overlapping.)
		for i := 0; i < len(s.cgroups); i += 2 {
			if _, err := unix.Write(s.cgroups[i], []byte("0")); err != nil {
				return fail(fmt.Errorf("entering the environment's cgroup: %w", err))
			}
		}
		defer func() {
			for i := 1; i < len(s.cgroups); i += 2 {
				if _, err := unix.Write(s.cgroups[i], []byte("0")); err != nil {
					s.out.warnf("leaving the environment's cgroup: %v", err)
				}
			}
		}()
	}
	pid, err := s.fork(path, argv, attr)
	if err != nil {
		err = fmt.Errorf("starting %s: %w", path, err)
		if errors.Is(err, unix.ENOENT) {
			return fail(commandErr(127, err))
		}
		return fail(commandErr(126, err))
	}
	sess := &session{done: make(chan struct{})}
	s.sessions[pid] = sess
	return pid, sess, master, nil
}

// forkJob is a command for the forker to start.
type forkJob struct {
	path string
	argv []string
	attr *syscall.ProcAttr
	done chan forkResult
}

type forkResult struct {
	pid int
	err error
}

// forker starts every command, from one OS thread set up as commands
// must be: a forked child inherits the credentials and filter of the
// thread that forked it. That thread has no inheritable or ambient
// capabilities and a bounding set of only what a container's root needs
// (commandCapabilities: no CAP_SYS_PTRACE, so no command may trace init
// or reach its executable, see initStage), no_new_privs and the seccomp
// filter. With a pids limit and no cgroup to hold it, the thread raises
// RLIMIT_NPROC for the fork alone: the limit counts processes of the
// command's new user namespace, and init itself stays free to make threads.
func (s *instanceServer) forker(ready chan<- error) {
	runtime.LockOSThread() // for good: this thread is never reused
	if err := dropInheritedCapabilities(); err != nil {
		ready <- err
		return
	}
	if err := limitBoundingSet(); err != nil {
		ready <- err
		return
	}
	if err := installSeccomp(); err != nil {
		ready <- err
		return
	}
	var open unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_NPROC, nil, &open); err != nil {
		ready <- fmt.Errorf("reading RLIMIT_NPROC: %w", err)
		return
	}
	limited := unix.Rlimit{Cur: uint64(s.pids), Max: uint64(s.pids)}
	close(ready)
	for j := range s.forks {
		if s.pids > 0 {
			if err := unix.Prlimit(0, unix.RLIMIT_NPROC, &limited, nil); err != nil {
				j.done <- forkResult{0, fmt.Errorf("setting RLIMIT_NPROC: %w", err)}
				continue
			}
		}
		pid, err := syscall.ForkExec(j.path, j.argv, j.attr)
		if s.pids > 0 {
			unix.Prlimit(0, unix.RLIMIT_NPROC, &open, nil)
		}
		j.done <- forkResult{pid, err}
	}
}

// commandCapabilities are the capabilities a command may hold, in its own
// user namespace: those container runtimes leave root by default.
var commandCapabilities = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID, unix.CAP_KILL,
	unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_NET_BIND_SERVICE, unix.CAP_NET_RAW,
	unix.CAP_SYS_CHROOT, unix.CAP_MKNOD, unix.CAP_AUDIT_WRITE, unix.CAP_SETFCAP,
}

// limitBoundingSet drops every other capability from the calling thread's
// bounding set, so no program it starts can gain them.
func limitBoundingSet() error {
	all, err := allCapabilities()
	if err != nil {
		return err
	}
	for _, c := range all {
		if slices.Contains(commandCapabilities, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("dropping capability %d from the commands' bounding set: %w", c, err)
		}
	}
	return nil
}

func (s *instanceServer) fork(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	done := make(chan forkResult, 1)
	s.forks <- forkJob{path, argv, attr, done}
	r := <-done
	return r.pid, r.err
}

// reap collects every exited child; a session's status goes to its client.
func (s *instanceServer) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		s.mu.Lock()
		sess, ok := s.sessions[pid]
		delete(s.sessions, pid)
		// The last session, with no connection left that may still start
		// one (the others are only being told their status): stop
		// accepting now, and let its client wait for our exit, so that
		// when it returns the environment is no longer running.
		if ok {
			s.exited++
		}
		last := ok && len(s.sessions) == 0 && s.active == s.exited
		if last {
			s.closing = true
			unix.Shutdown(s.ln, unix.SHUT_RDWR)
		}
		s.mu.Unlock()
		if !ok {
			continue // an orphan that init inherited
		}
		sess.code = ws.ExitStatus()
		if ws.Signaled() {
			sess.code = 128 + int(ws.Signal())
		}
		sess.last = last
		close(sess.done)
	}
}

// maybeExit ends init once no connection is left, after the first one or
// when nobody came. Closing the listener first means a client is either
// served or finds the instance gone and starts a new one.
func (s *instanceServer) maybeExit(idle bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active > 0 || !(s.served || idle || s.stopping || s.closing) {
		return
	}
	unix.Shutdown(s.ln, unix.SHUT_RDWR)
	os.Exit(0)
}

// stop terminates every session: SIGTERM, then SIGKILL after the grace
// time. init then ends, and its exit takes the whole namespace with it.
func (s *instanceServer) stop() {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.stopping = true
	for pid := range s.sessions {
		unix.Kill(-pid, unix.SIGTERM)
	}
	s.mu.Unlock()
	s.maybeExit(false)
	// What outlives the grace is killed; its sessions still hear how it
	// ended (128+9), as the reaper reports it, and the last one's end
	// ends the service, or this, if a client does not take its status.
	time.AfterFunc(instanceStopGrace, func() {
		unix.Kill(-1, unix.SIGKILL)
		time.AfterFunc(time.Second, func() { os.Exit(0) })
	})
}

// commandFor finds the program of a request: its command, or for a login
// shell the first of bash and sh, with the "-" that tells it to log in.
func commandFor(req *spawnRequest) (string, []string, error) {
	if len(req.Argv) > 0 {
		path, err := lookPathIn(req.Argv[0], req.Env)
		return path, req.Argv, err
	}
	if !req.Login {
		return "", nil, errors.New("no command")
	}
	for _, sh := range []string{"/bin/bash", "/bin/sh"} {
		if unix.Access(sh, unix.X_OK) == nil {
			return sh, []string{"-" + sh[strings.LastIndexByte(sh, '/')+1:]}, nil
		}
	}
	return "", nil, errors.New("no shell in the environment (/bin/bash, /bin/sh)")
}

// commandErr is a command that could not start, with the exit status a
// shell gives for it: 127 not found, 126 found but not executable.
func commandErr(status int, err error) error {
	return &codedError{status, "command", err}
}

// lookPathIn finds a command the way a shell inside would, using the
// PATH of the command's own environment.
func lookPathIn(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			continue
		}
		p := dir + "/" + name
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in the environment (PATH=%s)", name, path)
}

// openPTYInside opens a new pseudo-terminal on the environment's devpts.
func openPTYInside(rows, cols uint16) (int, int, error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("opening /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		return -1, -1, fmt.Errorf("unlocking pseudo-terminal: %w", err)
	}
	n, err := unix.IoctlGetInt(m, unix.TIOCGPTN)
	if err != nil {
		unix.Close(m)
		return -1, -1, fmt.Errorf("pseudo-terminal number: %w", err)
	}
	if rows > 0 && cols > 0 {
		unix.IoctlSetWinsize(m, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}
	sl, err := unix.Open("/dev/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(m)
		return -1, -1, fmt.Errorf("opening /dev/pts/%d: %w", n, err)
	}
	return m, sl, nil
}

// instanceDir is the run-time state of an environment: <env dir>/run.
type instanceDir string

func (d instanceDir) socket() string    { return string(d) + "/ctl.sock" }
func (d instanceDir) marker() string    { return string(d) + "/instance.json" }
func (d instanceDir) startLock() string { return string(d) + "/start.lock" }
func (d instanceDir) log() string       { return string(d) + "/init.log" }

// instanceMarker records a running init, by host pid and start time so a
// reused pid is never mistaken for it.
type instanceMarker struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	Backend   string `json:"backend,omitempty"` // the backend running it; none: namespace
}

// markerBackend names the backend whose instance the marker records, or
// "" when there is no marker: nothing runs.
func (d instanceDir) markerBackend() string {
	data, err := os.ReadFile(d.marker())
	if err != nil {
		return ""
	}
	var m instanceMarker
	if json.Unmarshal(data, &m) != nil || m.Backend == "" {
		return "namespace"
	}
	return m.Backend
}

// running reports the live init of the environment, if any. A marker of
// a dead instance is stale and removed.
func (d instanceDir) running() (int, bool) {
	data, err := os.ReadFile(d.marker())
	if err != nil {
		return 0, false
	}
	var m instanceMarker
	if json.Unmarshal(data, &m) == nil && m.Pid > 0 {
		if st, err := procStartTime(m.Pid); err == nil && st == m.StartTime {
			return m.Pid, true
		}
	}
	d.clearStale(data)
	return 0, false
}

// clearStale removes a marker that names a dead instance, holding the
// start lock so that it cannot remove the marker of an instance being
// started; if somebody holds it, that starter replaces the marker anyway.
func (d instanceDir) clearStale(stale []byte) {
	lock, err := os.OpenFile(d.startLock(), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return
	}
	defer lock.Close()
	if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return
	}
	if data, err := os.ReadFile(d.marker()); err == nil && string(data) == string(stale) {
		os.Remove(d.marker())
	}
}

// waitGone waits up to timeout for the instance's init to exit and
// reports whether it has.
func (d instanceDir) waitGone(timeout time.Duration) bool {
	pid, ok := d.running()
	if !ok {
		return true
	}
	// A pidfd becomes readable when the process exits: no polling loop.
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		defer unix.Close(fd)
		// The pidfd may name a newer process if the pid was reused
		// before we opened it; the marker check settles that.
		if _, ok := d.running(); !ok {
			return true
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for end := time.Now().Add(timeout); ; {
			left := time.Until(end)
			if left <= 0 {
				break
			}
			if _, err := unix.Poll(fds, int(left.Milliseconds())+1); !errors.Is(err, unix.EINTR) {
				break
			}
		}
		_, ok := d.running()
		return !ok
	}
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, ok := d.running(); !ok {
			return true
		}
	}
	_, ok = d.running()
	return !ok
}

// procStartTime is field 22 of /proc/PID/stat: when the process started,
// in clock ticks since boot.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may contain spaces and parentheses; fields
	// restart after the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("bad stat")
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, errors.New("process has exited")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// ensureInstance starts the environment's init unless one is running.
// Concurrent callers serialize on a lock in the run directory. The init it
// starts runs req as its first session, on a connection made beforehand:
// it returns our end, or -1 when an instance was running after all.
// o says how to start init (its namespaces, what to make for it, where
// it reports); cgroups are from cgroupLimits.open.
func (d instanceDir) ensureInstance(cfg *initConfig, m idMapping, o stageOptions, cgroups []*os.File, cgroupDir bool, req *spawnRequest, stdio [3]*os.File) (int, error) {
	if _, ok := d.running(); ok {
		return -1, nil
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return -1, fmt.Errorf("creating %s: %w", d, err)
	}
	lock, err := os.OpenFile(d.startLock(), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", d.startLock(), err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return -1, fmt.Errorf("locking %s: %w", d.startLock(), err)
	}
	if _, ok := d.running(); ok {
		return -1, nil
	}
	// The request waits in the connection while init sets up, which then
	// starts the command at once, while we write the marker.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("making the first session's connection: %w", err)
	}
	conn, peer := pair[0], os.NewFile(uintptr(pair[1]), "session")
	defer peer.Close()
	ok := false
	defer func() {
		if !ok {
			unix.Close(conn)
		}
	}()
	if err := sendRequest(conn, req, stdio); err != nil {
		return -1, err
	}
	rr, rw, err := os.Pipe()
	if err != nil {
		return -1, err
	}
	defer rr.Close()
	log, err := os.OpenFile(d.log(), os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", d.log(), err)
	}
	defer log.Close()
	o.stderr, o.detach = os.Stderr, true
	if cgroupDir {
		// cgroup v2: init starts in the environment's cgroup, and all it
		// starts stays there, with no move that needs a permission.
		o.cgroup, cgroups = cgroups[0], nil
	}
	cfg.Cgroups = len(cgroups)
	o.extraFiles = append(append([]*os.File{rw, log}, cgroups...), peer)
	p, err := startStage("init", cfg, m, o)
	rw.Close()
	peer.Close()
	if err != nil {
		return -1, err
	}
	// init writes one zero byte when it is ready, or its error.
	msg, _ := readAllLimited(rr, 64<<10)
	if len(msg) != 1 || msg[0] != 0 {
		p.wait()
		if len(msg) == 0 {
			return -1, errors.New("the environment's init exited during setup")
		}
		return -1, fmt.Errorf("setting up the environment: %s", msg)
	}
	// init is our child: until we reap it, its pid is not reused. If the
	// first session ended it already, there is nothing to mark.
	ok = true
	pid := p.cmd.Process.Pid
	if st, err := procStartTime(pid); err == nil {
		if err := d.mark(instanceMarker{Pid: pid, StartTime: st, Backend: "namespace"}); err != nil {
			// Nobody could join it: our session runs, but say why.
			o.out.warnf("recording the running environment in %s: %v", d.marker(), err)
		}
	}
	// init may outlive us (other sessions join it); while we live, we
	// reap it, so a long-running caller leaves no zombie behind.
	go p.cmd.Wait()
	return conn, nil
}

// mark writes the marker of a running instance. It is checked against
// the live process on every read, so it needs no fsync: a rename keeps
// readers from seeing half of it.
func (d instanceDir) mark(m instanceMarker) error {
	data, _ := json.Marshal(m)
	tmp := d.marker() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.marker())
}

// errInstanceGone means the instance ended before it served us; the
// caller may start a new one and try again.
var errInstanceGone = errors.New("the environment's instance exited")

// signalCatch holds the signals a session forwards to its command. One
// that arrives while the command is starting is forwarded once it runs,
// never lost or fatal to us.
type signalCatch struct {
	c     chan os.Signal
	ready chan struct{}
}

// catchSignals starts catching them. signal.Notify starts a thread and
// waits for it, so it runs beside the rest of our start-up.
func catchSignals(tty bool) *signalCatch {
	sc := &signalCatch{c: make(chan os.Signal, 8), ready: make(chan struct{})}
	forwarded := []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT}
	if tty {
		forwarded = append(forwarded, unix.SIGWINCH)
	}
	go func() {
		signal.Notify(sc.c, forwarded...)
		close(sc.ready)
	}()
	return sc
}

func (sc *signalCatch) stop() {
	<-sc.ready
	signal.Stop(sc.c)
}

// sendRequest sends req on conn: without a TTY, the command gets our
// stdio itself; with one, it runs on a new pseudo-terminal of our size.
func sendRequest(conn int, req *spawnRequest, stdio [3]*os.File) error {
	var fds []int
	if !req.TTY {
		fds = []int{int(stdio[0].Fd()), int(stdio[1].Fd()), int(stdio[2].Fd())}
	} else if ws, err := unix.IoctlGetWinsize(int(stdio[0].Fd()), unix.TIOCGWINSZ); err == nil {
		req.Rows, req.Cols = ws.Row, ws.Col
	}
	if err := sendMsg(conn, req, fds...); err != nil {
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			return errInstanceGone
		}
		return fmt.Errorf("sending the command: %w", err)
	}
	return nil
}

// dial connects to the running instance.
func (d instanceDir) dial() (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	addr, done, err := socketAddr(d.socket())
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENOENT) {
			return -1, errInstanceGone
		}
		return -1, err
	}
	err = unix.Connect(fd, addr)
	done()
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT) {
			return -1, errInstanceGone
		}
		return -1, fmt.Errorf("connecting to %s: %w", d.socket(), err)
	}
	return fd, nil
}

// join connects to the running instance and sends it req.
func (d instanceDir) join(req *spawnRequest, stdio [3]*os.File) (int, error) {
	fd, err := d.dial()
	if err != nil {
		return -1, err
	}
	if err := sendRequest(fd, req, stdio); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// spawnIn follows the command a request on fd started to its exit
// status, which it returns; it closes fd. With tty, the command runs on
// the pseudo-terminal that comes back, relayed to stdio. Signals that sigs
// receives go to the command.
func (d instanceDir) spawnIn(fd int, tty bool, stdio [3]*os.File, sigs <-chan os.Signal) (int, error) {
	defer unix.Close(fd)
	var started instanceMsg
	got, err := recvMsg(fd, &started)
	if err != nil {
		closeAll(got)
		if errors.Is(err, errEOF) || errors.Is(err, unix.ECONNRESET) {
			// An instance that is ending drops us; one that goes on
			// running did not understand us.
			if d.waitGone(time.Second) {
				return 0, errInstanceGone
			}
			return 0, errors.New("the environment's running instance did not take the command (started by another version of karapace?); 'karapace stop' the environment and try again")
		}
		return 0, fmt.Errorf("waiting for the command to start: %w", err)
	}
	if started.Error != "" {
		closeAll(got)
		if started.Error == exitingMsg {
			return 0, errInstanceGone
		}
		if started.Status != 0 {
			return 0, commandErr(started.Status, errors.New(started.Error))
		}
		return 0, errors.New(started.Error)
	}
	var relay *termRelay
	if tty {
		if len(got) != 1 {
			closeAll(got)
			return 0, errors.New("the instance sent no pseudo-terminal")
		}
		restore := makeRaw(stdio[0])
		defer restore()
		if relay, err = relayTerminal(got[0], stdio[0], stdio[1]); err != nil {
			return 0, err
		}
		defer relay.finish()
	}
	// Signals go to the command from beside us; we wait for its status.
	done := make(chan struct{})
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for {
			select {
			case sig := <-sigs:
				if sig == unix.SIGWINCH {
					// relayTerminal's master gets the new size; see resizeFrom.
					resizeFrom(stdio[0], got[0])
					continue
				}
				sendMsg(fd, &instanceMsg{Signal: int(sig.(unix.Signal))})
			case <-done:
				return
			}
		}
	}()
	defer func() {
		close(done)
		<-forwarded // fd stays open for as long as signals may go out on it
	}()
	for {
		var m instanceMsg
		fds, err := recvMsg(fd, &m)
		closeAll(fds)
		if err != nil {
			// The instance ended under the command: 'karapace stop'
			// killed it, and the command with it, as SIGKILL would.
			if d.waitGone(time.Second) {
				return 128 + int(unix.SIGKILL), nil
			}
			return 0, errors.New("lost the connection to the environment before the command finished")
		}
		if m.Exit == nil {
			continue
		}
		if relay != nil {
			relay.finish()
		}
		if m.Last {
			d.waitGone(5 * time.Second)
		}
		return *m.Exit, nil
	}
}
