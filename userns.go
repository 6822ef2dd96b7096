package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Inside an environment, root is the invoking user and 1..65536 are the
// user's subordinate IDs: package managers chown files to system users,
// and those owners must survive on disk.
const subordinateIDs = 65536

// rootRangeStart is where an environment's IDs lie on the host when root
// runs it and /etc/subuid gives root no range of its own: above every
// range systemd hands out to containers (which end at 1879048191), far
// from any distribution's users.
const rootRangeStart = 1879048192

// idRange is one line of /proc/PID/uid_map or gid_map.
type idRange struct{ inside, outside, count int }

// idMapping is how a user namespace maps IDs to the host.
type idMapping struct {
	uids, gids []idRange
	helper     bool   // written by newuidmap/newgidmap (setuid helpers)
	reduced    string // why only root is mapped, with the fix; empty when fully mapped
	setgroups  bool   // the namespace may allow setgroups (see user_namespaces(7))
	rootRange  string // root only: where its range comes from, for doctor
}

// planIDMapping decides the mapping for the current user: root inside is
// the user, 1..65536 the subordinate range through newuidmap/newgidmap,
// or root alone when those are missing. Root itself is no exception: its
// environments' IDs 0..65536 lie in root's /etc/subuid range, or in a
// fixed one, so that no capability inside is one on the host and no file
// inside is owned by the host's root.
func planIDMapping() idMapping {
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		m := idMapping{rootRange: fmt.Sprintf("the fixed range %d-%d (root has none in /etc/subuid)", rootRangeStart, rootRangeStart+subordinateIDs)}
		u := idRange{0, rootRangeStart, 1 + subordinateIDs}
		g := u
		subU, okU := subordinateRange("/etc/subuid", "root", 0)
		subG, okG := subordinateRange("/etc/subgid", "root", 0)
		if okU && okG {
			u = idRange{0, subU.outside, min(subU.count, 1+subordinateIDs)}
			g = idRange{0, subG.outside, min(subG.count, 1+subordinateIDs)}
			m.rootRange = fmt.Sprintf("root's range in /etc/subuid, %d-%d", u.outside, u.outside+u.count-1)
		}
		m.uids, m.gids, m.setgroups = []idRange{u}, []idRange{g}, true
		return m
	}
	m := idMapping{uids: []idRange{{0, uid, 1}}, gids: []idRange{{0, gid, 1}}}
	name := strconv.Itoa(uid)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	// Read only for a mapping that needs fixing: every exec plans one.
	fix := func() string {
		free := freeSubordinateStart("/etc/subuid", "/etc/subgid")
		return fmt.Sprintf("to fix: sudo apt install uidmap && sudo usermod --add-subuids %d-%d --add-subgids %d-%d %s (a range no entry of /etc/subuid or /etc/subgid uses)",
			free, free+subordinateIDs-1, free, free+subordinateIDs-1, name)
	}
	subU, okU := subordinateRange("/etc/subuid", name, uid)
	subG, okG := subordinateRange("/etc/subgid", name, uid)
	_, errU := exec.LookPath("newuidmap")
	_, errG := exec.LookPath("newgidmap")
	switch {
	case !okU || !okG:
		m.reduced = fmt.Sprintf("user %s has no subordinate ID range in /etc/subuid and /etc/subgid; only root is mapped inside, so package managers cannot create files for system users (%s)", name, fix())
	case errU != nil || errG != nil:
		m.reduced = fmt.Sprintf("newuidmap/newgidmap are not installed; only root is mapped inside, so package managers cannot create files for system users (%s)", fix())
	default:
		m.helper = true
		m.uids = append(m.uids, idRange{1, subU.outside, min(subU.count, subordinateIDs)})
		m.gids = append(m.gids, idRange{1, subG.outside, min(subG.count, subordinateIDs)})
	}
	return m
}

// ownTree is own for every file of a tree that the host's root owns.
func (m idMapping) ownTree(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Uid != 0 {
			return nil
		}
		return m.own(p)
	})
}

// own gives the directories a stage writes in to the environment's root,
// when that is not the caller: as root, the stage runs as the first ID of
// the range, and a directory made by the host's root is closed to it.
func (m idMapping) own(paths ...string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	for _, p := range paths {
		if err := os.Lchown(p, m.uids[0].outside, m.gids[0].outside); err != nil {
			return fmt.Errorf("giving %s to the environment's root: %w", p, err)
		}
	}
	return nil
}

// subordinateRange finds the first range of name (or its numeric uid) in
// an /etc/subuid-style file.
func subordinateRange(file, name string, uid int) (idRange, bool) {
	f, err := os.Open(file)
	if err != nil {
		return idRange{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(fields) != 3 || (fields[0] != name && fields[0] != strconv.Itoa(uid)) {
			continue
		}
		start, err1 := strconv.Atoi(fields[1])
		count, err2 := strconv.Atoi(fields[2])
		if err1 == nil && err2 == nil && count > 0 {
			return idRange{1, start, count}, true
		}
	}
	return idRange{}, false
}

// freeSubordinateStart is where a new range of 65536 IDs can begin: at
// 100000 or the next multiple of 65536 after every range the files give.
func freeSubordinateStart(files ...string) int {
	end := 100000
	for _, file := range files {
		data, _ := os.ReadFile(file)
		for line := range strings.Lines(string(data)) {
			fields := strings.Split(strings.TrimSpace(line), ":")
			if len(fields) != 3 {
				continue
			}
			start, err1 := strconv.Atoi(fields[1])
			count, err2 := strconv.Atoi(fields[2])
			if err1 == nil && err2 == nil && count > 0 {
				end = max(end, start+count)
			}
		}
	}
	return (end + 65535) / 65536 * 65536
}

// apply maps the user namespace of process pid with newuidmap and
// newgidmap, the setuid helpers that may write subordinate ranges.
func (m idMapping) apply(pid int) error {
	run := func(prog string, rs []idRange) error {
		args := []string{strconv.Itoa(pid)}
		for _, r := range rs {
			args = append(args, strconv.Itoa(r.inside), strconv.Itoa(r.outside), strconv.Itoa(r.count))
		}
		if out, err := exec.Command(prog, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("mapping IDs with %s %s: %v: %s", prog, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	// The two helpers are independent: run them side by side.
	gidErr := make(chan error, 1)
	go func() { gidErr <- run("newgidmap", m.gids) }()
	uidErr := run("newuidmap", m.uids)
	if err := <-gidErr; err != nil {
		return err
	}
	return uidErr
}

// A stage is this binary started again inside new namespaces to do one
// job there: be an environment's init, or pack, unpack or remove a tree
// with the full ID mapping. The child reads its configuration from fd 3, a
// socket that also brings descriptors made for it once it runs (its
// directories, mounts in its namespace); the parent writes it only after
// the ID mapping is in place, so the child's first read doubles as the
// wait for the mapping.
const stageEnv = "_KARAPACE_STAGE"

// stage is a job a stage can do, registered by the file that implements it.
type stage struct {
	config func() wireMsg                                // a new, empty configuration
	run    func(cfg wireMsg, fds []int, out *output) int // fds: those made for it (stageOptions.made)
}

var stages = map[string]stage{}

// stageDirs is a configuration naming directories its stage works in. As
// root, a stage runs as an ID of the range, which may not search the
// directories above them (root's store is under /root, mode 0700): the
// parent opens them, inside the stage's mount namespace, and the stage
// reaches them through those descriptors.
type stageDirs interface{ dirs() []*string }

// stagePaths turns a stage's names of its directories back into the
// host's, for its messages.
var stagePaths = strings.NewReplacer()

// maxStageFDs bounds the descriptors that come with a configuration.
const maxStageFDs = 64

// stageProc is a started stage.
type stageProc struct {
	cmd *exec.Cmd
}

// stageOptions says how to start a stage.
type stageOptions struct {
	cloneFlags     uintptr // namespaces besides the user namespace
	stdin          io.Reader
	stdout, stderr io.Writer
	extraFiles     []*os.File // become fds 4, 5, ...
	detach         bool       // new session, survives its starter (an environment's init)
	out            *output    // whose level the stage logs at
	cgroup         *os.File   // a cgroup v2 directory to start the stage in, if set
	// made, if set, makes descriptors for the started child, in its mount
	// namespace, before it is sent its configuration (they go with it).
	made func(pid int) ([]int, error)
}

// startStage starts stage name in a new user namespace with mapping m.
func startStage(name string, cfg wireMsg, m idMapping, o stageOptions) (*stageProc, error) {
	data := marshalWire(cfg)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	pw, pr := os.NewFile(uintptr(pair[0]), "stage-config"), os.NewFile(uintptr(pair[1]), "stage-config")
	defer pw.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"karapace-" + name}
	cmd.Env = []string{stageEnv + "=" + name, "KARAPACE_LOG=" + o.out.levelName()}
	// Limits set on Go's runtime hold for our own processes too.
	for _, k := range []string{"GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.stdin, o.stdout, o.stderr
	cmd.ExtraFiles = append([]*os.File{pr}, o.extraFiles...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER | o.cloneFlags}
	switch {
	case m.helper:
		// The child execs before newuidmap has mapped it, and an exec by
		// an unmapped user keeps only its ambient capabilities: raising
		// them all keeps the child root of its namespace across that exec.
		// They are per thread, and every thread of the stage has them: a
		// stage that starts programs clears them on the thread that forks
		// (see instanceServer.forker), or the programs keep them all.
		caps, err := allCapabilities()
		if err != nil {
			pr.Close()
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
		cmd.SysProcAttr.AmbientCaps = caps
	default:
		// Go writes these maps before the child execs.
		for _, r := range m.uids {
			cmd.SysProcAttr.UidMappings = append(cmd.SysProcAttr.UidMappings, syscall.SysProcIDMap{ContainerID: r.inside, HostID: r.outside, Size: r.count})
		}
		for _, r := range m.gids {
			cmd.SysProcAttr.GidMappings = append(cmd.SysProcAttr.GidMappings, syscall.SysProcIDMap{ContainerID: r.inside, HostID: r.outside, Size: r.count})
		}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = m.setgroups
		if os.Getuid() == 0 {
			// Root of the host is not mapped inside: the child becomes
			// the namespace's root before its exec, or it would exec as
			// nobody, with no capabilities.
			cmd.SysProcAttr.Credential = &syscall.Credential{}
		}
	}
	if o.cgroup != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(o.cgroup.Fd())
	}
	if o.detach {
		cmd.SysProcAttr.Setsid = true
	} else {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	err = startOnStarter(cmd)
	pr.Close()
	if err != nil {
		return nil, fmt.Errorf("stage %s: starting a process in new namespaces: %w (are user namespaces enabled? see 'karapace doctor')", name, err)
	}
	p := &stageProc{cmd: cmd}
	fail := func(err error) (*stageProc, error) {
		pw.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	if m.helper {
		if err := m.apply(cmd.Process.Pid); err != nil {
			return fail(err)
		}
	}
	var dirs []string
	if d, ok := cfg.(stageDirs); ok && os.Geteuid() == 0 {
		for _, p := range d.dirs() {
			dirs = append(dirs, *p)
		}
	}
	fds, err := stageFDsFor(cmd.Process.Pid, o.cloneFlags&unix.CLONE_NEWNS != 0, dirs, o.made)
	if err != nil {
		return fail(err)
	}
	defer closeAll(fds)
	if err := sendStageConfig(pw, len(dirs), data, fds); err != nil {
		return fail(fmt.Errorf("sending configuration: %w", err))
	}
	return p, nil
}

// stageStarter is the one OS thread every stage is started from, which
// never exits: a stage's parent-death signal comes when the thread that
// forked it exits, and threads that change namespace (see stageFDsFor)
// do exit, wherever Go's scheduler had a stage started before.
var stageStarter = sync.OnceValue(func() chan func() {
	starts := make(chan func())
	go func() {
		runtime.LockOSThread()
		for start := range starts {
			start()
		}
	}()
	return starts
})

func startOnStarter(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	stageStarter() <- func() { done <- cmd.Start() }
	return <-done
}

// stageFDsFor opens the directories of a started stage and makes what
// made makes for it, in the stage's own mount namespace when it has one
// (a mount needs its mount point there), on a thread of our own that dies
// with it.
func stageFDsFor(pid int, newNS bool, dirs []string, made func(int) ([]int, error)) ([]int, error) {
	if len(dirs) == 0 && made == nil {
		return nil, nil
	}
	work := func() ([]int, error) {
		var fds []int
		for _, d := range dirs {
			fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				closeAll(fds)
				return nil, fmt.Errorf("opening %s: %w", d, err)
			}
			fds = append(fds, fd)
		}
		if made != nil {
			more, err := made(pid)
			if err != nil {
				closeAll(fds)
				return nil, err
			}
			fds = append(fds, more...)
		}
		return fds, nil
	}
	if !newNS {
		return work()
	}
	type result struct {
		fds []int
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, whose namespace changes, ends with
		// this goroutine.
		runtime.LockOSThread()
		ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- result{err: fmt.Errorf("opening the stage's mount namespace: %w", err)}
			return
		}
		defer unix.Close(ns)
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- result{err: fmt.Errorf("unsharing a thread's filesystem attributes: %w", err)}
			return
		}
		if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
			done <- result{err: fmt.Errorf("entering the stage's mount namespace: %w", err)}
			return
		}
		fds, err := work()
		done <- result{fds, err}
	}()
	r := <-done
	return r.fds, r.err
}

// sendStageConfig writes the number of directory descriptors and a
// stage's configuration, the descriptors going with the first bytes.
func sendStageConfig(w *os.File, ndirs int, data []byte, fds []int) error {
	msg := append(binary.AppendUvarint(nil, uint64(ndirs)), data...)
	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}
	n, err := unix.SendmsgN(int(w.Fd()), msg, rights, nil, 0)
	if err != nil {
		return err
	}
	_, err = w.Write(msg[n:])
	return err
}

// readStageConfig reads what the parent sends on fd 3 until it closes its
// end: the configuration, the directories' descriptors, and the rest.
func readStageConfig() (data []byte, dirs, fds []int, err error) {
	defer unix.Close(3)
	buf := make([]byte, 16<<10)
	for {
		oob := make([]byte, unix.CmsgSpace(maxStageFDs*4))
		n, oobn, flags, _, err := unix.Recvmsg(3, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			closeAll(fds)
			return nil, nil, nil, err
		}
		fds = append(fds, parseRights(oob[:oobn])...)
		if flags&unix.MSG_CTRUNC != 0 {
			closeAll(fds)
			return nil, nil, nil, fmt.Errorf("more than %d descriptors", maxStageFDs)
		}
		if n == 0 && oobn == 0 {
			break
		}
		data = append(data, buf[:n]...)
	}
	ndirs, k := binary.Uvarint(data)
	if k <= 0 || ndirs > uint64(len(fds)) {
		closeAll(fds)
		return nil, nil, nil, errors.New("bad count of directories")
	}
	return data[k:], fds[:ndirs], fds[ndirs:], nil
}

// wait waits for the stage and turns a failure into an error.
func (p *stageProc) wait() error {
	err := p.cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		return fmt.Errorf("%s failed (%s)", p.cmd.Args[0], ee.ProcessState)
	}
	return err
}

// runStageIfChild runs the stage this process was started as, if any, and
// exits. It is the first thing main does.
func runStageIfChild() {
	name := os.Getenv(stageEnv)
	if name == "" {
		return
	}
	os.Unsetenv(stageEnv)
	// Nothing a stage was given passes on to what it starts (commands,
	// fuse-overlayfs).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "karapace-%s: marking inherited descriptors close-on-exec: %v\n", name, err)
		os.Exit(exitFailure)
	}
	out := newOutput(os.Getenv("KARAPACE_LOG"), false, false, os.Stderr)
	st, ok := stages[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "karapace: unknown stage %q\n", name)
		os.Exit(exitFailure)
	}
	data, dirs, fds, err := readStageConfig()
	cfg := st.config()
	if err == nil {
		err = unmarshalWire(data, cfg)
	}
	if d, ok := cfg.(stageDirs); ok && err == nil && len(dirs) > 0 {
		err = useStageDirs(d, dirs)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "karapace-%s: reading configuration: %v\n", name, err)
		os.Exit(exitFailure)
	}
	os.Exit(st.run(cfg, fds, out))
}

// useStageDirs points the configuration's directories at the descriptors
// the parent opened for them.
func useStageDirs(d stageDirs, fds []int) error {
	ps := d.dirs()
	if len(ps) != len(fds) {
		return fmt.Errorf("%d directories, %d descriptors", len(ps), len(fds))
	}
	var names []string
	for i, p := range ps {
		fdPath := "/proc/self/fd/" + strconv.Itoa(fds[i])
		names = append(names, fdPath+"/", *p+"/")
		*p = fdPath + "/."
	}
	stagePaths = strings.NewReplacer(names...)
	return nil
}

// allCapabilities lists every capability the running kernel knows.
func allCapabilities() ([]uintptr, error) {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return nil, fmt.Errorf("reading the kernel's last capability: %w", err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || last < 0 || last > 63 {
		return nil, fmt.Errorf("/proc/sys/kernel/cap_last_cap: unexpected %q", data)
	}
	caps := make([]uintptr, last+1)
	for i := range caps {
		caps[i] = uintptr(i)
	}
	return caps, nil
}

// dropInheritedCapabilities clears, for the calling thread, the ambient
// and inheritable sets a stage mapped by newuidmap was given to survive
// its exec: the programs it forks get the capabilities root of the
// namespace gets from the bounding set, never through those sets.
func dropInheritedCapabilities() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	if data[0].Inheritable == 0 && data[1].Inheritable == 0 {
		return nil
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clearing inheritable capabilities: %w", err)
	}
	return nil
}

// treeJob is work on a tree whose files belong to the environment's IDs:
// only a process with the full mapping may create them with their owners,
// read every one of them, or remove them.
type treeJob struct {
	Op      string   // "unpack" (stdin → Dir), "pack" (Dir → stdout), "remove", "clean"
	Dir     string   //
	Paths   []string // clean: globs under Dir to remove
	Overlay bool     // unpack whiteouts as overlay whiteouts
	Image   bool     // a base image: leave out its device nodes
	Clamp   int      // pack: the latest file time, in seconds since 1970 (0: every time is 0)
	// unpack: what the stream may create at most, 0 for the default, and
	// the configuration file that sets it, for messages.
	MaxSize, MaxEntries int
	Config              string
}

func init() {
	stages["tree"] = stage{func() wireMsg { return &treeJob{} }, treeStage}
}

// dirs: removing needs the directory's parent, which is the user's own
// (root removes trees itself).
func (j *treeJob) dirs() []*string {
	if j.Op == "remove" {
		return nil
	}
	return []*string{&j.Dir}
}

func treeStage(cfg wireMsg, _ []int, _ *output) int {
	job := cfg.(*treeJob)
	var err error
	switch job.Op {
	case "unpack":
		_, err = unpackLayer(bufio.NewReaderSize(os.Stdin, 256<<10), job.Dir, unpackOptions{overlay: job.Overlay, chown: true, skipDevices: job.Image, limits: job.limits()})
	case "pack":
		w := bufio.NewWriterSize(os.Stdout, 256<<10)
		if _, err = packLayerClamped(job.Dir, w, int64(job.Clamp)); err == nil {
			err = w.Flush()
		}
	case "remove":
		err = os.RemoveAll(job.Dir)
	case "clean":
		err = cleanTree(filepath.Clean(job.Dir), job.Paths)
	default:
		err = fmt.Errorf("unknown tree operation %q", job.Op)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, stagePaths.Replace(err.Error()))
		return exitFailure
	}
	return exitOK
}

// removeOwnedTree removes a file or a tree that may hold files of an
// environment's IDs: what the user may remove goes at once, and, rootless,
// a directory of a subordinate ID (apt's partial/ is _apt's, mode 0700)
// needs a stage with the full mapping.
func removeOwnedTree(p string) error {
	err := os.RemoveAll(p)
	if err == nil || os.Geteuid() == 0 || !(errors.Is(err, fs.ErrPermission)) {
		return err
	}
	return treeInNS(treeJob{Op: "remove", Dir: p}, nil, nil)
}

// cleanTree removes what the globs match under dir. Matches are checked
// to stay under dir.
func cleanTree(dir string, globs []string) error {
	for _, g := range globs {
		if filepath.IsAbs(g) || strings.Contains(g, "..") {
			return fmt.Errorf("cleaning %s: bad pattern %q", dir, g)
		}
		matches, err := filepath.Glob(filepath.Join(dir, g))
		if err != nil {
			return fmt.Errorf("cleaning %s: %w", dir, err)
		}
		for _, m := range matches {
			if !pathWithin(m, dir) {
				continue
			}
			if err := os.RemoveAll(m); err != nil {
				return fmt.Errorf("cleaning %s: %w", dir, err)
			}
		}
	}
	return nil
}

// treeInNS runs a tree job in a new user namespace with the full mapping.
// Root removes a tree itself: every file of the range is root's to remove.
func treeInNS(job treeJob, stdin io.Reader, stdout io.Writer) error {
	if job.Op == "remove" && os.Geteuid() == 0 {
		return os.RemoveAll(job.Dir)
	}
	m := planIDMapping()
	o := stageOptions{stdin: stdin, stdout: stdout}
	if job.Op == "unpack" {
		if err := m.own(job.Dir); err != nil {
			return err
		}
	}
	var errb strings.Builder
	o.stderr = &errb
	what := job.Op + " " + job.Dir
	p, err := startStage("tree", &job, m, o)
	if err != nil {
		return err
	}
	if err := p.wait(); err != nil {
		if msg := strings.TrimSpace(errb.String()); msg != "" {
			return errors.New(msg)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
