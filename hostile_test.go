package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hostile suite: every way out of an environment that an attacker
// inside has been seen to try, run in a real Debian environment, as root
// and (in the suite's rootless pass) as an ordinary user with a
// subordinate range. Each attempt must be refused, and the host is read
// before and after to show it is unchanged. Nothing here is skipped.

// hostileScript runs each attempt and prints "name: refused" or
// "name: ESCAPED". A command that succeeds is an escape.
const hostileScript = `
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name: ESCAPED"; else echo "$name: refused"; fi; }
# The machine's settings, through /proc and /sys.
try umount-proc-sys umount /proc/sys
try umount-lazy-proc-sys umount -l /proc/sys
try write-sysctl sh -c 'echo 61 > /proc/sys/vm/swappiness'
try write-core-pattern sh -c 'echo "|/tmp/evil" > /proc/sys/kernel/core_pattern'
try sysrq sh -c 'echo h > /proc/sysrq-trigger'
try remount-proc-sys mount -o remount,bind,rw /proc/sys
try remount-sys mount -o remount,bind,rw /sys
try write-sys sh -c 'echo never > /sys/kernel/mm/transparent_hugepage/enabled'
try remount-cgroup sh -c 'for m in $(awk "\$9 ~ /^cgroup/ {print \$5}" /proc/self/mountinfo); do mount -o remount,bind,rw $m || exit 1; done; test -n "$m"'
try cgroup-escape sh -c 'for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/cgroup.procs; do echo $$ > $f 2>/dev/null && exit 0; done; exit 1'
try mount-cgroupfs sh -c 'mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg'
# The host's files bound in.
try umount-hosts umount /etc/hosts
try remount-hosts mount -o remount,bind,rw /etc/hosts
try write-hosts sh -c 'echo 6.6.6.6 evil >> /etc/hosts'
try umount-ro umount /ro
try remount-ro mount -o remount,bind,rw /ro
try write-ro touch /ro/planted
try bind-over-workspace mount --bind /tmp /workspace
try umount-workspace umount /workspace
try move-workspace sh -c 'mkdir -p /mnt/w && mount --move /workspace /mnt/w'
# A user namespace of one's own: its mounts are copies, locked.
try userns-umount-ro unshare -Urm umount /ro
try userns-remount-ro unshare -Urm sh -c 'mount -o remount,bind,rw /ro && touch /ro/planted'
try userns-remount-hosts unshare -Urm sh -c 'mount -o remount,bind,rw /etc/hosts && echo x >> /etc/hosts'
try userns-umount-proc-sys unshare -Urm sh -c 'umount /proc/sys && echo 61 > /proc/sys/vm/swappiness'
# init and the service: their memory leads to the host's karapace.
try ptrace-init perl -e 'exit(syscall(101, 16, 1, 0, 0) == -1 ? 1 : 0)'
try ptrace-service perl -e 'exit(syscall(101, 16, 2, 0, 0) == -1 ? 1 : 0)'
try init-exe readlink /proc/1/exe
try init-root ls /proc/1/root/
try service-exe readlink /proc/2/exe
try init-fd readlink /proc/1/fd/0
try service-fd readlink /proc/2/fd/5
try service-environ cat /proc/2/environ
kill -9 1 2>/dev/null; sleep 0.2
echo "init-after-kill: $(tr '\0' ' ' < /proc/1/cmdline)"
# Devices and the kernel's own business (refused by capability and filter).
try mknod mknod /tmp/sda b 8 0
try keyctl perl -e 'exit(syscall(250, 0, -3, 0, 0, 0) == -1 && $!{EPERM} ? 1 : 0)'
try bpf perl -e 'exit(syscall(321, 0, 0, 0) == -1 && $!{EPERM} ? 1 : 0)'
try userfaultfd perl -e 'exit(syscall(323, 0) == -1 && $!{EPERM} ? 1 : 0)'
try perf-event-open perl -e 'exit(syscall(298, 0, 0, -1, -1, 0) == -1 && $!{EPERM} ? 1 : 0)'
try open-tree perl -e 'exit(syscall(428, -100, "/", 1) == -1 && $!{EPERM} ? 1 : 0)'
try fsopen perl -e 'exit(syscall(430, "tmpfs", 0) == -1 && $!{EPERM} ? 1 : 0)'
try tiocsti perl -e 'open(my $t, "+<", "/dev/ptmx") or exit 1; exit(ioctl($t, 0x5412, "x") ? 0 : 1)'
grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status
`

// hostileWants is every attempt of hostileScript, refused.
var hostileWants = []string{
	"umount-proc-sys", "umount-lazy-proc-sys", "write-sysctl", "write-core-pattern", "sysrq", "remount-proc-sys", "remount-sys",
	"write-sys", "remount-cgroup", "cgroup-escape", "mount-cgroupfs",
	"umount-hosts", "remount-hosts", "write-hosts", "umount-ro", "remount-ro", "write-ro", "bind-over-workspace",
	"umount-workspace", "move-workspace",
	"userns-umount-ro", "userns-remount-ro", "userns-remount-hosts", "userns-umount-proc-sys",
	"ptrace-init", "ptrace-service", "init-exe", "init-root", "service-exe", "init-fd", "service-fd", "service-environ",
	"mknod", "keyctl", "bpf", "userfaultfd", "perf-event-open", "open-tree", "fsopen", "tiocsti",
}

// hostState is what an escape would change on the host.
type hostState struct {
	swappiness, corePattern, thp, hosts, mounts string
	ro                                          []string
}

func readHostState(t *testing.T, roDir string) hostState {
	t.Helper()
	read := func(p string) string {
		data, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatalf("reading %s on the host: %v", p, err)
		}
		return string(data)
	}
	var s hostState
	s.swappiness, s.corePattern = read("/proc/sys/vm/swappiness"), read("/proc/sys/kernel/core_pattern")
	s.thp, s.hosts = read("/sys/kernel/mm/transparent_hugepage/enabled"), read("/etc/hosts")
	// The host's mount table, as this process sees it: an escape adds,
	// removes or changes a line.
	var lines []string
	for _, l := range strings.Split(read("/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(l); len(f) > 5 {
			lines = append(lines, strings.Join(f[4:6], " ")) // mount point and its options
		}
	}
	s.mounts = strings.Join(lines, "\n")
	entries, err := os.ReadDir(roDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		s.ro = append(s.ro, e.Name())
	}
	return s
}

func TestHostileSandbox(t *testing.T) {
	r := testEnvSpec(t)
	roDir, wsDir := t.TempDir(), t.TempDir()
	writeFile(t, roDir, "keep", "original\n")
	r.Mounts = []lockMount{{Label: "ro", Source: roDir, Container: "/ro", ReadOnly: true}, {Label: "ws", Source: wsDir, Container: "/workspace"}}
	// The host's session bus, which must not be reachable unless asked for.
	bus := filepath.Join(t.TempDir(), "bus")
	ln, err := net.Listen("unix", bus)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	env := append(baseEnv(), "DBUS_SESSION_BUS_ADDRESS=unix:path="+bus, "XDG_RUNTIME_DIR="+filepath.Dir(bus))

	before := readHostState(t, roDir)
	code, out, errOut := nsRun(t, r, env, "", "/bin/bash", "-c", hostileScript)
	after := readHostState(t, roDir)
	if code != 0 {
		t.Fatalf("the script failed: status %d\n%s\n%s", code, out, errOut)
	}
	for _, name := range hostileWants {
		if !strings.Contains(out, "\n"+name+": refused\n") && !strings.HasPrefix(out, name+": refused\n") {
			t.Errorf("%s: not refused", name)
		}
	}
	if strings.Contains(out, "ESCAPED") {
		t.Errorf("escapes:\n%s", out)
	}
	if !strings.Contains(out, "init-after-kill: karapace-init \n") {
		t.Errorf("init did not survive kill -9 1:\n%s", out)
	}
	if before.swappiness != after.swappiness || before.corePattern != after.corePattern || before.thp != after.thp || before.hosts != after.hosts {
		t.Errorf("the host's settings changed: before %+v, after %+v", before, after)
	}
	if before.mounts != after.mounts {
		t.Errorf("the host's mount table changed:\nbefore:\n%s\nafter:\n%s", before.mounts, after.mounts)
	}
	if fmt.Sprint(after.ro) != "[keep]" {
		t.Errorf("the read-only mount's host directory changed: %v", after.ro)
	}
	if data, _ := os.ReadFile(filepath.Join(roDir, "keep")); string(data) != "original\n" {
		t.Errorf("the read-only file changed: %q", data)
	}
	// What a command holds: the capabilities container runtimes leave,
	// no_new_privs, a seccomp filter.
	var bnd, eff uint64
	var nnp, filter int
	i := strings.Index(out, "CapEff:")
	if i < 0 {
		t.Fatalf("no capabilities in:\n%s", out)
	}
	if _, err := fmt.Sscanf(out[i:], "CapEff:\t%x\nCapBnd:\t%x\nNoNewPrivs:\t%d\nSeccomp:\t%d", &eff, &bnd, &nnp, &filter); err != nil {
		t.Fatalf("reading the command's status: %v\n%s", err, out[i:])
	}
	var want uint64
	for _, c := range commandCapabilities {
		want |= 1 << c
	}
	if bnd != want || eff != want || nnp != 1 || filter != 2 {
		t.Errorf("command: CapBnd %x CapEff %x (want %x), NoNewPrivs %d, Seccomp %d", bnd, eff, want, nnp, filter)
	}

	// Not asked for, the host's session bus is not there, nor its variable.
	code, out, _ = nsRun(t, r, env, "", "/bin/sh", "-c", "env | grep -c DBUS_SESSION_BUS_ADDRESS; ls /run/host-session 2>&1")
	if code == 0 || !strings.HasPrefix(out, "0\n") || !strings.Contains(out, "No such file") {
		t.Errorf("the session bus without asking: %d %q", code, out)
	}

	// The workspace is written as the caller: root's files as root's,
	// the user's as the user's, whatever the IDs inside.
	if code, out, errOut := nsRun(t, r, env, "", "/bin/sh", "-c", "echo hi > /workspace/made && stat -c %u:%g /workspace/made"); code != 0 || out != "0:0\n" {
		t.Fatalf("writing the workspace: %d %q %s", code, out, errOut)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(wsDir, "made"), &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) != os.Getuid() || int(st.Gid) != os.Getgid() {
		t.Errorf("a file made in the workspace belongs to %d:%d on the host, not the caller %d:%d", st.Uid, st.Gid, os.Getuid(), os.Getgid())
	}

	// The package manager still works beside all this: the nested
	// namespace and the filter must not break dpkg.
	need(t, planIDMapping().reduced == "", "a subordinate ID range and newuidmap/newgidmap for this user")
	code, out, errOut = nsRun(t, r, env, "", "/bin/sh", "-c",
		"apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends hello >/dev/null && hello")
	if code != 0 || out != "Hello, world!\n" {
		t.Fatalf("apt-get install in the hostile environment: status %d\n%s\n%s", code, out, errOut)
	}
}

// A fork bomb stops at the pids limit, with the cgroup pids controller
// where karapace may use one, else RLIMIT_NPROC in the environment's user
// namespace; the environment and the host go on.
func TestHostileForkBomb(t *testing.T) {
	r := testEnvSpec(t)
	r.PidsLimit = 64
	bomb := `perl -e 'my @kids; for (1..400) { my $p = fork; if (!defined $p) { print "stopped at ", scalar(@kids), "\n"; last } if (!$p) { sleep 60; exit } push @kids, $p } kill "KILL", @kids; waitpid($_, 0) for @kids; print "done\n"'`
	code, out, errOut := nsRun(t, r, baseEnv(), "", "/bin/sh", "-c", bomb)
	if code != 0 {
		t.Fatalf("status %d: %q %s", code, out, errOut)
	}
	var n int
	if _, err := fmt.Sscanf(out, "stopped at %d\ndone\n", &n); err != nil || n >= 64 || n < 16 {
		t.Fatalf("the bomb was not stopped by the limit of 64 (%v): %q", err, out)
	}
	if code, out, _ := nsRun(t, r, baseEnv(), "", "echo", "alive"); code != 0 || out != "alive\n" {
		t.Fatalf("after the bomb: %d %q", code, out)
	}
}

// The filter's list, entry by entry: each refused with the filter's own
// errno (the test uses one no kernel path returns, so the filter, not a
// missing capability, refused), the rest untouched.
func TestSeccompFilterTable(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KARAPACE_TEST_HELPER=seccomp-probe")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, errno, _ := strings.Cut(line, " ")
		got[name] = errno
	}
	for _, r := range append(append([]seccompRule{}, seccompDenied...), seccompIoctls...) {
		t.Run(r.name, func(t *testing.T) {
			if r.why == "" {
				t.Errorf("no reason given")
			}
			if got[r.name] != strconv.Itoa(int(seccompTestErrno)) {
				t.Errorf("%s: errno %s, want the filter's %d", r.name, got[r.name], seccompTestErrno)
			}
		})
	}
	if got["getpid"] != "0" || got["tcgets"] == strconv.Itoa(int(seccompTestErrno)) {
		t.Errorf("allowed calls were refused: getpid %s, ioctl TCGETS %s", got["getpid"], got["tcgets"])
	}
	if seccompX32 && got["x32-getpid"] != strconv.Itoa(int(unix.ENOSYS)) {
		t.Errorf("an x32 system call: errno %s, want ENOSYS", got["x32-getpid"])
	}
}

// seccompTestErrno marks the filter's refusals in TestSeccompFilterTable.
const seccompTestErrno = unix.EHWPOISON

func init() {
	testHelpers["seccomp-probe"] = func() {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			panic(err)
		}
		prog := seccompFilter(seccompTestErrno, unix.ENOSYS)
		// Every thread gets the filter, so the calls below meet it
		// wherever Go runs them.
		fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		if _, _, e := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
			panic(e)
		}
		for _, r := range seccompDenied {
			_, _, e := unix.RawSyscall6(uintptr(r.nr), 0, 0, 0, 0, 0, 0)
			fmt.Printf("%s %d\n", r.name, int(e))
		}
		for _, r := range seccompIoctls {
			_, _, e := unix.RawSyscall(unix.SYS_IOCTL, 0, uintptr(r.nr), 0)
			fmt.Printf("%s %d\n", r.name, int(e))
		}
		_, _, e := unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
		fmt.Printf("getpid %d\n", int(e))
		_, _, e = unix.RawSyscall(unix.SYS_IOCTL, 0, unix.TCGETS, 0)
		fmt.Printf("tcgets %d\n", int(e))
		_, _, e = unix.RawSyscall(0x40000000|unix.SYS_GETPID, 0, 0, 0)
		fmt.Printf("x32-getpid %d\n", int(e))
	}
}
