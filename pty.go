package main

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// makeRaw puts a terminal in raw mode, so keys such as Ctrl-C reach the
// program inside instead of signalling us, and returns how to undo it.
func makeRaw(f *os.File) func() {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return func() {}
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}

// termRelay copies our terminal to a pseudo-terminal's master and back.
type termRelay struct {
	master *os.File
	done   chan struct{} // closed when the output copy has ended
	cancel *os.File      // written to end the input copy
	linger atomic.Int64  // once the command has exited: when relaying ends at the latest (unix ns)
	once   sync.Once
}

// Once the command has exited, the relay still forwards its last output,
// and ends when output pauses for relayQuiet, after relayLinger at most,
// even if a background job still holds the terminal (as a terminal
// emulator does when its shell exits).
const (
	relayQuiet  = 100 * time.Millisecond
	relayLinger = 2 * time.Second
)

// relayTerminal starts relaying between our terminal and the master fd,
// which it takes over.
func relayTerminal(masterFd int, in, out *os.File) (*termRelay, error) {
	// Non-blocking, the master is pollable, so its reads can time out.
	if err := unix.SetNonblock(masterFd, true); err != nil {
		unix.Close(masterFd)
		return nil, fmt.Errorf("relaying the terminal: %w", err)
	}
	cr, cw, err := os.Pipe()
	if err != nil {
		unix.Close(masterFd)
		return nil, fmt.Errorf("relaying the terminal: %w", err)
	}
	r := &termRelay{master: os.NewFile(uintptr(masterFd), "pty"), done: make(chan struct{}), cancel: cw}
	go r.input(in, cr)
	go r.output(out)
	return r, nil
}

func (r *termRelay) output(out *os.File) {
	defer close(r.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.master.Read(buf)
		if n > 0 {
			out.Write(buf[:n])
		}
		if err != nil {
			return // EIO: every process holding the terminal has exited; or the linger ran out
		}
		if end := r.linger.Load(); end != 0 {
			r.master.SetReadDeadline(minTime(time.Now().Add(relayQuiet), time.Unix(0, end)))
		}
	}
}

// input copies in to the master until cancelled. It waits with poll, so
// that no keystroke typed after the session is taken from the terminal.
func (r *termRelay) input(in, cancel *os.File) {
	defer cancel.Close()
	fds := []unix.PollFd{{Fd: int32(in.Fd()), Events: unix.POLLIN}, {Fd: int32(cancel.Fd()), Events: unix.POLLIN}}
	buf := make([]byte, 4096)
	for {
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		n, err := unix.Read(int(in.Fd()), buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
		if _, err := r.master.Write(buf[:n]); err != nil {
			return
		}
	}
}

// finish ends the relay once the command has exited: output that is
// still coming is forwarded, then the master is closed.
func (r *termRelay) finish() {
	r.once.Do(func() {
		r.cancel.Write([]byte{0})
		r.linger.Store(time.Now().Add(relayLinger).UnixNano())
		r.master.SetReadDeadline(time.Now().Add(relayQuiet))
		<-r.done
		r.cancel.Close()
		r.master.Close()
	})
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// resizeFrom gives the pseudo-terminal master the size of our terminal.
func resizeFrom(term *os.File, master int) {
	if ws, err := unix.IoctlGetWinsize(int(term.Fd()), unix.TIOCGWINSZ); err == nil {
		unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, ws)
	}
}
