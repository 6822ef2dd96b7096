package main

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The seccomp filter every command inside an environment runs under. It
// refuses what container runtimes refuse by default: the kernel's own
// business, which a sandbox never needs and whose bugs are the ways out of
// one. The capability checks behind these calls already refuse them (no
// command holds a capability on the host); the filter keeps their code out
// of reach. A refusal is EPERM, as a missing capability would give, which
// programs handle. System calls of another ABI (i386, x32) have other
// numbers than the ones below and are refused whole, with ENOSYS: a 32-bit
// program does not run inside.

// seccompRule is one system call the filter refuses, and why.
type seccompRule struct {
	name string
	nr   uint32
	why  string
}

// seccompDenied is the filter's list: what every architecture has, then
// what only this one does (seccompArchDenied, beside seccompArch).
var seccompDenied = append([]seccompRule{
	{"kexec_load", unix.SYS_KEXEC_LOAD, "replaces the running kernel"},
	{"kexec_file_load", unix.SYS_KEXEC_FILE_LOAD, "replaces the running kernel"},
	{"init_module", unix.SYS_INIT_MODULE, "loads kernel code"},
	{"finit_module", unix.SYS_FINIT_MODULE, "loads kernel code"},
	{"delete_module", unix.SYS_DELETE_MODULE, "unloads kernel code"},
	{"reboot", unix.SYS_REBOOT, "restarts or stops the machine"},
	{"swapon", unix.SYS_SWAPON, "changes the machine's swap"},
	{"swapoff", unix.SYS_SWAPOFF, "changes the machine's swap"},
	{"acct", unix.SYS_ACCT, "switches the machine's process accounting"},
	{"settimeofday", unix.SYS_SETTIMEOFDAY, "sets the machine's clock"},
	{"clock_settime", unix.SYS_CLOCK_SETTIME, "sets the machine's clock"},
	{"clock_adjtime", unix.SYS_CLOCK_ADJTIME, "adjusts the machine's clock"},
	{"syslog", unix.SYS_SYSLOG, "reads and clears the kernel's log"},
	{"quotactl", unix.SYS_QUOTACTL, "manages the host's disk quotas"},
	{"lookup_dcookie", unix.SYS_LOOKUP_DCOOKIE, "names host paths for profilers"},
	{"keyctl", unix.SYS_KEYCTL, "the kernel keyrings are not namespaced: they hold the host's keys"},
	{"add_key", unix.SYS_ADD_KEY, "the kernel keyrings are not namespaced"},
	{"request_key", unix.SYS_REQUEST_KEY, "the kernel keyrings are not namespaced"},
	{"bpf", unix.SYS_BPF, "loads programs into the kernel"},
	{"perf_event_open", unix.SYS_PERF_EVENT_OPEN, "observes the whole machine; a long record of kernel bugs"},
	{"userfaultfd", unix.SYS_USERFAULTFD, "stalls the kernel at will: the usual tool of kernel exploits"},
	{"open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT, "opens files by number, past every mount and directory"},
	{"fsopen", unix.SYS_FSOPEN, "new mount API: makes filesystems outside the sandbox's mount rules"},
	{"fsconfig", unix.SYS_FSCONFIG, "new mount API"},
	{"fsmount", unix.SYS_FSMOUNT, "new mount API"},
	{"fspick", unix.SYS_FSPICK, "new mount API: reconfigures the filesystem behind a path"},
	{"open_tree", unix.SYS_OPEN_TREE, "new mount API: copies mounts as descriptors"},
	{"move_mount", unix.SYS_MOVE_MOUNT, "new mount API: attaches mounts from descriptors"},
	{"mount_setattr", unix.SYS_MOUNT_SETATTR, "new mount API: changes mounts' attributes (read-only, idmapping)"},
}, seccompArchDenied...)

// seccompIoctls are terminal requests refused: both make a terminal do
// what its user did not type.
var seccompIoctls = []seccompRule{
	{"TIOCSTI", unix.TIOCSTI, "pushes input into the terminal, which runs on the host after the command ends"},
	{"TIOCLINUX", unix.TIOCLINUX, "pastes the console's selection as input"},
}

// seccompData's fields, as the filter reads them (struct seccomp_data).
const (
	seccompNr     = 0
	seccompArchOf = 4
	seccompArg1Lo = 16 + 8 // the low half of args[1], on a little-endian machine
)

// seccompFilter is the filter's program: denied system calls return
// deny, those of another ABI foreign, the rest run.
func seccompFilter(deny, foreign unix.Errno) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jump := func(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	const (
		load  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		allow = unix.SECCOMP_RET_ALLOW
	)
	refuse := stmt(ret, unix.SECCOMP_RET_ERRNO|uint32(deny))
	prog := []unix.SockFilter{
		stmt(load, seccompArchOf),
		jump(jeq, seccompArch, 1, 0),
		stmt(ret, unix.SECCOMP_RET_ERRNO|uint32(foreign)),
		stmt(load, seccompNr),
	}
	if seccompX32 {
		// x32 system calls share the architecture, with this bit set.
		prog = append(prog, jump(jge, 0x40000000, 0, 1), stmt(ret, unix.SECCOMP_RET_ERRNO|uint32(foreign)))
	}
	for _, r := range seccompDenied {
		prog = append(prog, jump(jeq, r.nr, 0, 1), refuse)
	}
	prog = append(prog, jump(jeq, unix.SYS_IOCTL, 1, 0), stmt(ret, allow), stmt(load, seccompArg1Lo))
	for _, r := range seccompIoctls {
		prog = append(prog, jump(jeq, r.nr, 0, 1), refuse)
	}
	return append(prog, stmt(ret, allow))
}

// installSeccomp puts the filter on the calling thread, which must not
// gain privileges by exec from then on (no_new_privs, set here first).
// Whatever the thread starts inherits both.
func installSeccomp() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	prog := seccompFilter(unix.EPERM, unix.ENOSYS)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("installing the seccomp filter: %w", err)
	}
	return nil
}
