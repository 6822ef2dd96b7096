package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// storeWatch tells, as it happens and without polling, which
// environments of a store changed: their metadata written, renamed in or
// removed (inotify on store/metadata), an instance's marker made or
// removed (inotify on each env/<id>/run), and a running instance's init
// gone (a pidfd, readable when the process exits: the marker outlives
// it). Whoever hears of a change asks the engine what the environment is
// now; the watch only says which one to ask about.
type storeWatch struct {
	s     *store
	pidOf func(envID string) (int, bool) // the running instance's init, if any
	fd    int                            // inotify
	c     chan string
	lost  bool // changes were dropped on a full channel: say "" next
	wake  *os.File
	done  chan struct{}

	wds       map[int32]watchTarget
	following map[string]bool // env_ids whose run/ is watched
	pidfds    map[string]int  // env_id → pidfd of its instance's init
}

// What a watch descriptor watches.
type watchTarget struct {
	env  string
	what int
}

const (
	watchMetadata = iota // store/metadata: its names are env_ids
	watchEnvs            // env/, while an environment's directory is missing
	watchEnvDir          // env/<id>, while its run/ is missing
	watchRun             // env/<id>/run
)

const watchDirEvents = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ONLYDIR

// watchStore starts watching s; pidOf reports an environment's running
// init. The metadata directory must exist.
func watchStore(s *store, pidOf func(envID string) (int, bool)) (*storeWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watching the store: %w", err)
	}
	w := &storeWatch{s: s, pidOf: pidOf, fd: fd, c: make(chan string, 64), done: make(chan struct{}),
		wds: map[int32]watchTarget{}, following: map[string]bool{}, pidfds: map[string]int{}}
	meta := s.path("metadata")
	if err := w.add(meta, watchTarget{what: watchMetadata}, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_DELETE|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", meta, err)
	}
	r, wake, err := os.Pipe()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	w.wake = wake
	// Before it returns, so that whatever happens after is heard.
	w.scan()
	go w.run(r)
	return w, nil
}

// changes delivers the env_id of each environment that changed, and ""
// when changes were lost (any may have changed).
func (w *storeWatch) changes() <-chan string { return w.c }

// close stops the watch.
func (w *storeWatch) close() {
	w.wake.Write([]byte{0})
	<-w.done
	w.wake.Close()
}

func (w *storeWatch) add(path string, t watchTarget, mask uint32) error {
	wd, err := unix.InotifyAddWatch(w.fd, path, mask)
	if err != nil {
		return err
	}
	w.wds[int32(wd)] = t
	return nil
}

// follow watches an environment's run directory; while it is missing,
// what will hold it, added top down so that nothing made meanwhile goes
// unseen.
func (w *storeWatch) follow(id string) {
	if w.following[id] {
		return
	}
	dir := w.s.envs().env(id)
	run := string(dir.run())
	runEvents := uint32(unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE | unix.IN_ONLYDIR)
	if w.add(run, watchTarget{id, watchRun}, runEvents) == nil {
		w.following[id] = true
		return
	}
	w.add(string(w.s.envs()), watchTarget{what: watchEnvs}, watchDirEvents)
	if w.add(string(dir), watchTarget{id, watchEnvDir}, watchDirEvents) == nil && w.add(run, watchTarget{id, watchRun}, runEvents) == nil {
		w.following[id] = true
	}
}

// arrived follows an environment whose directories were made: an
// instance may have started before its run/ was watched.
func (w *storeWatch) arrived(id string) {
	if w.follow(id); w.following[id] {
		w.track(id)
		w.send(id)
	}
}

// track holds a pidfd on the environment's running init, if any, so that
// its exit is heard.
func (w *storeWatch) track(id string) {
	if _, ok := w.pidfds[id]; ok {
		return
	}
	if _, err := os.Lstat(w.s.envs().env(id).run().marker()); err != nil {
		return // nothing runs: no need to ask
	}
	pid, ok := w.pidOf(id)
	if !ok {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	// The pid may have been reused before the pidfd was opened: the
	// instance must still be the one asked about.
	if again, ok := w.pidOf(id); !ok || again != pid {
		unix.Close(fd)
		return
	}
	w.pidfds[id] = fd
}

// scan follows every environment there is and the instances running.
func (w *storeWatch) scan() {
	ids, _ := w.s.listDir("metadata")
	for _, id := range ids {
		if validStoreHash(id) {
			w.follow(id)
			w.track(id)
		}
	}
}

func (w *storeWatch) send(id string) {
	if w.lost {
		select {
		case w.c <- "":
			w.lost = false
		default:
			return
		}
	}
	select {
	case w.c <- id:
	default:
		w.lost = true
	}
}

func (w *storeWatch) run(wake *os.File) {
	defer close(w.done)
	defer wake.Close()
	defer func() {
		unix.Close(w.fd)
		for _, fd := range w.pidfds {
			unix.Close(fd)
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		fds := []unix.PollFd{{Fd: int32(wake.Fd()), Events: unix.POLLIN}, {Fd: int32(w.fd), Events: unix.POLLIN}}
		var ids []string
		for id, fd := range w.pidfds {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
			ids = append(ids, id)
		}
		// A lost change is said as soon as there is room, not with the
		// next one.
		timeout := -1
		if w.lost {
			timeout = 50
		}
		if _, err := unix.Poll(fds, timeout); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if fds[0].Revents != 0 {
			return
		}
		if w.lost {
			w.send("")
		}
		for i, id := range ids {
			if fds[i+2].Revents != 0 { // the init exited
				unix.Close(w.pidfds[id])
				delete(w.pidfds, id)
				w.send(id)
			}
		}
		if fds[1].Revents != 0 {
			n, err := unix.Read(w.fd, buf)
			if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				return
			}
			w.events(buf[:max(n, 0)])
		}
	}
}

// events handles what one read of the inotify descriptor brought.
func (w *storeWatch) events(b []byte) {
	for len(b) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(b[0:]))
		mask := binary.NativeEndian.Uint32(b[4:])
		n := int(binary.NativeEndian.Uint32(b[12:]))
		end := min(unix.SizeofInotifyEvent+n, len(b))
		name := string(bytes.TrimRight(b[unix.SizeofInotifyEvent:end], "\x00"))
		b = b[end:]
		if mask&unix.IN_Q_OVERFLOW != 0 {
			w.scan()
			w.send("")
			continue
		}
		t, ok := w.wds[wd]
		if !ok {
			continue
		}
		if mask&unix.IN_IGNORED != 0 { // the directory is gone
			delete(w.wds, wd)
			if t.what == watchRun {
				delete(w.following, t.env)
			}
			continue
		}
		switch t.what {
		case watchMetadata:
			if !validStoreHash(name) {
				continue // a file being written, or a stray one
			}
			if mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) == 0 {
				w.follow(name)
				w.track(name)
			}
			w.send(name)
		case watchEnvs:
			if validStoreHash(name) {
				w.arrived(name)
			}
		case watchEnvDir:
			if name == filepath.Base(string(w.s.envs().env(t.env).run())) {
				w.arrived(t.env)
			}
		case watchRun:
			if name == filepath.Base(w.s.envs().env(t.env).run().marker()) {
				w.track(t.env)
				w.send(t.env)
			}
		}
	}
}
