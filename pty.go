package main

import (
	"io"
	"os"

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

// relayTerminal copies our terminal to the pseudo-terminal's master and
// back. The returned channel closes once all output is out: reading the
// master fails (EIO) when every process holding its slave has exited.
func relayTerminal(master, in, out *os.File) chan struct{} {
	done := make(chan struct{})
	go io.Copy(master, in)
	go func() {
		io.Copy(out, master)
		close(done)
	}()
	return done
}

// resizeFrom gives the pseudo-terminal master the size of our terminal.
func resizeFrom(term *os.File, master int) {
	if ws, err := unix.IoctlGetWinsize(int(term.Fd()), unix.TIOCGWINSZ); err == nil {
		unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, ws)
	}
}
