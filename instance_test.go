package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Concurrent commands join one instance: one pid namespace, one mount.
// Each waits until all have started, so none can end before the last has
// joined (or, were joining broken, started an instance of its own).
func TestNSConcurrentExecsShareOneInstance(t *testing.T) {
	r := testEnvSpec(t)
	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	script := fmt.Sprintf(`mkdir -p /tmp/barrier; touch /tmp/barrier/$$; i=0
while [ "$(ls /tmp/barrier | wc -l)" -lt %d ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "only $(ls /tmp/barrier | wc -l) sessions started" >&2; exit 1; }; sleep 0.05; done
readlink /proc/self/ns/pid; grep -c ' - overlay ' /proc/self/mountinfo`, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, out, errOut, err := nsRunErr(r, baseEnv(), "", "/bin/sh", "-c", script)
			if err == nil && code != 0 {
				err = fmt.Errorf("status %d: %s", code, errOut)
			}
			results[i], errs[i] = out, err
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("exec %d: %v", i, errs[i])
		}
		if results[i] != results[0] || !strings.HasSuffix(results[i], "\n1\n") {
			t.Fatalf("exec %d saw %q, exec 0 saw %q", i, results[i], results[0])
		}
	}
	// The client of the last session waits for init to exit.
	if _, ok := r.runDir().running(); ok {
		t.Fatal("the instance is still running after its last session")
	}
}

// nsStart starts argv in the environment and returns once it has printed
// its first line (its way of saying it is ready); the channel gives its
// status and error when it ends.
func nsStart(t *testing.T, r *runSpec, argv ...string) <-chan error {
	t.Helper()
	outR, outW, _ := os.Pipe()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		b := nsBackend{getenv: os.Getenv, out: testOutput}
		code, err := b.exec(r, &execSpec{Argv: argv, Stdio: [3]*os.File{null, outW, os.Stderr}, Env: baseEnv()})
		outW.Close()
		null.Close()
		if err == nil {
			err = exitStatus(code)
		}
		done <- err
	}()
	line := make([]byte, 1)
	for {
		if _, err := outR.Read(line); err != nil {
			t.Fatalf("%v never said it was ready: %v", argv, <-done)
		}
		if line[0] == '\n' {
			break
		}
	}
	go io.Copy(io.Discard, outR)
	return done
}

func TestNSStopAndStaleMarker(t *testing.T) {
	r := testEnvSpec(t)
	b := nsBackend{getenv: os.Getenv, out: testOutput}
	// SIGTERM first: the session's TERM trap runs.
	done := nsStart(t, r, "/bin/sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done")
	if _, ok := b.status(r); !ok {
		t.Fatal("not running while a session runs")
	}
	if res, err := b.stop(r, 5*time.Second); err != nil || res != (stopResult{WasRunning: true}) {
		t.Fatal(res, err)
	}
	if code := exitCodeOf(<-done); code != 42 {
		t.Fatalf("the session ended with %d, want 42 from its TERM trap", code)
	}
	if _, ok := b.status(r); ok {
		t.Fatal("still running after stop")
	}
	// SIGKILL after the timeout, for a session that ignores SIGTERM.
	done = nsStart(t, r, "/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done")
	if res, err := b.stop(r, 200*time.Millisecond); err != nil || res != (stopResult{WasRunning: true, Killed: true}) {
		t.Fatal(res, err)
	}
	// Its client says how it ended, as a shell would: 128+9, not a lost
	// connection's 1.
	if err := <-done; exitCodeOf(err) != 128+9 {
		t.Fatalf("the killed session ended with %v (exit code %d), want 137", err, exitCodeOf(err))
	}
	if _, ok := b.status(r); ok {
		t.Fatal("still running after stop's SIGKILL")
	}
	// A marker left by an instance that died is detected and cleared.
	os.WriteFile(r.runDir().marker(), []byte(`{"pid": 999999, "start_time": 1}`), 0o600)
	if _, ok := b.status(r); ok {
		t.Fatal("a dead pid counted as running")
	}
	if _, err := os.Stat(r.runDir().marker()); !os.IsNotExist(err) {
		t.Fatal("the stale marker was not removed")
	}
}

// An instance holds no stream of the caller that started it: with a
// second session still running, the first one's stderr ends with it.
func TestNSInstanceHoldsNoCallerStream(t *testing.T) {
	r := testEnvSpec(t)
	first := helperCmd(t, r, "/bin/sh", "-c", "echo ready; read x")
	stdin, _ := first.StdinPipe()
	stdout, _ := first.StdoutPipe()
	errR, errW, _ := os.Pipe()
	first.Stderr = errW
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	errW.Close()
	if _, err := io.ReadFull(stdout, make([]byte, 6)); err != nil {
		t.Fatalf("first session: %v", err)
	}
	second := nsStart(t, r, "/bin/sh", "-c", "echo ready; sleep 1000")
	stdin.Write([]byte("\n"))
	if err := first.Wait(); err != nil {
		t.Fatalf("first session: %v", err)
	}
	// Were the instance holding it, this read would wait for the second
	// session; the deadline only bounds such a hang.
	errR.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadAll(errR); err != nil {
		t.Fatalf("the first session's stderr is still open after it ended: %v", err)
	}
	if _, ok := r.runDir().running(); !ok {
		t.Fatal("the second session's instance is gone")
	}
	nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
	<-second
}

func TestNSSignalsForwarded(t *testing.T) {
	r := testEnvSpec(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		cmd := helperCmd(t, r, "/bin/sh", "-c", "echo ready; exec sleep 100")
		out, _ := cmd.StdoutPipe()
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
			t.Fatalf("%v: %q %v %s", sig, buf, err, errb.String())
		}
		cmd.Process.Signal(sig)
		err := cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 128+int(sig) {
			t.Fatalf("%v: exit %d (%v), want %d; stderr %s", sig, code, err, 128+int(sig), errb.String())
		}
	}
}

// Messages come out as they went in, descriptors with them, each read
// with a buffer of its own size; one over the limit is refused whole.
func TestInstanceMessages(t *testing.T) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	if err := unix.SetsockoptInt(pair[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 2*maxInstanceMsg); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	big := strings.Repeat("x", maxInstanceMsg/2)
	if err := sendMsg(pair[0], &spawnRequest{Argv: []string{"echo", big}, Dir: "/"}, int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	code := 3
	if err := sendMsg(pair[0], &instanceMsg{Exit: &code, Last: true}); err != nil {
		t.Fatal(err)
	}
	var req spawnRequest
	fds, err := recvMsg(pair[1], &req)
	if err != nil || len(req.Argv) != 2 || req.Argv[1] != big || len(fds) != 1 {
		t.Fatalf("request: %d fds, %v", len(fds), err)
	}
	// The descriptor that came is the pipe's write end.
	if _, err := unix.Write(fds[0], []byte("ok")); err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[0])
	buf := make([]byte, 2)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q, %v through the passed descriptor", buf, err)
	}
	var m instanceMsg
	if fds, err := recvMsg(pair[1], &m); err != nil || len(fds) != 0 || m.Exit == nil || *m.Exit != 3 || !m.Last {
		t.Fatalf("exit message: %+v, %d fds, %v", m, len(fds), err)
	}
	if err := unix.Sendmsg(pair[0], make([]byte, maxInstanceMsg+1), unix.UnixRights(int(w.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := recvMsg(pair[1], &m); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("an oversized message: %v", err)
	}
	unix.Close(pair[0])
	if _, err := recvMsg(pair[1], &m); !errors.Is(err, errEOF) {
		t.Fatalf("at the end: %v, want errEOF", err)
	}
}

// On one processor (GOMAXPROCS=1, which Go picks under a one-CPU quota)
// a command that exits at once still has its status delivered: init
// hears of its children from before it starts the first one.
func TestNSOneProcessor(t *testing.T) {
	r := testEnvSpec(t)
	t.Setenv("GOMAXPROCS", "1")
	for i := 0; i < 100; i++ {
		done := make(chan error, 1)
		go func() {
			code, _, _, err := nsRunErr(r, baseEnv(), "", "true")
			if err == nil && code != 0 {
				err = fmt.Errorf("exit status %d", code)
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d: %v", i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("run %d: no exit status after 20 s", i)
		}
	}
}

// A running instance and a client of another karapace version (one
// upgraded while an environment runs) tell the user so: an older client
// reads the instance's refusal in its own JSON, and this client, dropped
// by an instance that goes on running, says what to do.
func TestNSInstanceOfAnotherVersion(t *testing.T) {
	r := testEnvSpec(t)
	started := make(chan error, 1)
	go func() {
		_, _, _, err := nsRunErr(r, baseEnv(), "", "/bin/sh", "-c", "touch /tmp/up; sleep 30")
		started <- err
	}()
	defer func() {
		nsBackend{getenv: os.Getenv, out: testOutput}.stop(r, time.Second)
		<-started
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(r.Dir.upper(), "tmp/up")); err == nil {
			break
		}
		if i == 400 {
			t.Fatal("the first session did not start")
		}
		time.Sleep(25 * time.Millisecond)
	}
	d := r.runDir()
	fd, err := d.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendmsg(fd, []byte(`{"argv":["true"],"env":[],"dir":"/"}`), nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
	var reply struct{ Error string }
	if err != nil || json.Unmarshal(buf[:n], &reply) != nil || !strings.Contains(reply.Error, "started by a newer karapace") {
		t.Fatalf("an older client's request got %q, %v", buf[:n], err)
	}

	// This client, facing an instance that drops it and runs on.
	dir := t.TempDir()
	fake := instanceDir(dir)
	ln, err := listenControl(fake.socket())
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	st, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "instance.json", fmt.Sprintf(`{"pid":%d,"start_time":%d}`, os.Getpid(), st))
	go func() {
		// As an older init does: read the request, fail to decode it, hang up.
		if c, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC); err == nil {
			unix.Recvmsg(c, make([]byte, 4096), nil, 0)
			unix.Close(c)
		}
	}()
	null, _ := os.Open(os.DevNull)
	defer null.Close()
	conn, err := fake.join(&spawnRequest{Argv: []string{"true"}}, [3]*os.File{null, null, null})
	if err != nil {
		t.Fatal(err)
	}
	_, err = fake.spawnIn(conn, false, [3]*os.File{null, null, null}, nil)
	if err == nil || !strings.Contains(err.Error(), "started by another version of karapace?") {
		t.Fatalf("an instance that drops the request: %v", err)
	}
}
