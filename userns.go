package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Inside an environment, root is the invoking user and 1..65536 are the
// user's subordinate IDs: package managers chown files to system users,
// and those owners must survive on disk.
const subordinateIDs = 65536

// idRange is one line of /proc/PID/uid_map or gid_map.
type idRange struct{ inside, outside, count int }

// idMapping is how a user namespace maps IDs to the host.
type idMapping struct {
	uids, gids []idRange
	helper     bool   // written by newuidmap/newgidmap (setuid helpers)
	reduced    string // why only root is mapped, with the fix; empty when fully mapped
}

// planIDMapping decides the mapping for the current user: for root, IDs
// 0..65536 as themselves; for everyone else, root as the user and the
// subordinate range through newuidmap/newgidmap, or root alone when those
// are missing. Root gets a user namespace too: its capabilities then hold
// only over the environment, so nothing inside can make device nodes,
// write the host's sysctls or remount /sys.
func planIDMapping() idMapping {
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		return idMapping{uids: []idRange{{0, 0, 1 + subordinateIDs}}, gids: []idRange{{0, 0, 1 + subordinateIDs}}}
	}
	m := idMapping{uids: []idRange{{0, uid, 1}}, gids: []idRange{{0, gid, 1}}}
	name := strconv.Itoa(uid)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	fix := fmt.Sprintf("to fix: sudo apt install uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s", name)
	subU, okU := subordinateRange("/etc/subuid", name, uid)
	subG, okG := subordinateRange("/etc/subgid", name, uid)
	_, errU := exec.LookPath("newuidmap")
	_, errG := exec.LookPath("newgidmap")
	switch {
	case !okU || !okG:
		m.reduced = fmt.Sprintf("user %s has no subordinate ID range in /etc/subuid and /etc/subgid; only root is mapped inside, so package managers cannot create files for system users (%s)", name, fix)
	case errU != nil || errG != nil:
		m.reduced = fmt.Sprintf("newuidmap/newgidmap are not installed; only root is mapped inside, so package managers cannot create files for system users (%s)", fix)
	default:
		m.helper = true
		m.uids = append(m.uids, idRange{1, subU.outside, min(subU.count, subordinateIDs)})
		m.gids = append(m.gids, idRange{1, subG.outside, min(subG.count, subordinateIDs)})
	}
	return m
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
// with the full ID mapping. The child reads its configuration from fd 3;
// the parent writes it only after the ID mapping is in place, so the
// child's first read doubles as the wait for the mapping.
const stageEnv = "_KARAPACE_STAGE"

// stageFuncs are the stages by name, registered by the files that
// implement them.
var stageFuncs = map[string]func(cfg []byte) int{}

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
}

// startStage starts stage name in a new user namespace with mapping m.
func startStage(name string, cfg wireMsg, m idMapping, o stageOptions) (*stageProc, error) {
	data := marshalWire(cfg)
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"karapace-" + name}
	cmd.Env = []string{stageEnv + "=" + name, "KARAPACE_LOG=" + logLevelName()}
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
			pw.Close()
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
		cmd.SysProcAttr.GidMappingsEnableSetgroups = os.Getuid() == 0
	}
	if o.detach {
		cmd.SysProcAttr.Setsid = true
	} else {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("stage %s: starting a process in new namespaces: %w (are user namespaces enabled? see 'karapace doctor')", name, err)
	}
	pr.Close()
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
	if _, err := pw.Write(data); err != nil {
		return fail(fmt.Errorf("sending configuration: %w", err))
	}
	pw.Close()
	return p, nil
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
	setLogLevel(os.Getenv("KARAPACE_LOG"), false, false, os.Stderr)
	f, ok := stageFuncs[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "karapace: unknown stage %q\n", name)
		os.Exit(exitFailure)
	}
	cfgFile := os.NewFile(3, "stage-config")
	cfg, err := io.ReadAll(cfgFile)
	cfgFile.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "karapace-%s: reading configuration: %v\n", name, err)
		os.Exit(exitFailure)
	}
	os.Exit(f(cfg))
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
	// unpack: what the stream may create at most, 0 for the default, and
	// the configuration file that sets it, for messages.
	MaxSize, MaxEntries int
	Config              string
}

func init() { stageFuncs["tree"] = treeStage }

func treeStage(raw []byte) int {
	var job treeJob
	err := unmarshalWire(raw, &job)
	if err == nil {
		switch job.Op {
		case "unpack":
			_, err = unpackLayer(bufio.NewReaderSize(os.Stdin, 256<<10), job.Dir, unpackOptions{overlay: job.Overlay, chown: true, skipDevices: job.Image, limits: job.limits()})
		case "pack":
			w := bufio.NewWriterSize(os.Stdout, 256<<10)
			if _, err = packLayer(job.Dir, w); err == nil {
				err = w.Flush()
			}
		case "remove":
			err = os.RemoveAll(job.Dir)
		case "clean":
			err = cleanTree(job.Dir, job.Paths)
		default:
			err = fmt.Errorf("unknown tree operation %q", job.Op)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	return exitOK
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
func treeInNS(job treeJob, stdin io.Reader, stdout io.Writer) error {
	var errb strings.Builder
	p, err := startStage("tree", &job, planIDMapping(), stageOptions{stdin: stdin, stdout: stdout, stderr: &errb})
	if err != nil {
		return err
	}
	if err := p.wait(); err != nil {
		if msg := strings.TrimSpace(errb.String()); msg != "" {
			return errors.New(msg)
		}
		return fmt.Errorf("%s %s: %w", job.Op, job.Dir, err)
	}
	return nil
}
