package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// findEnv names an environment by full env_id, name, short_id or any
// unique prefix of its env_id. An ambiguous prefix lists the candidates.
func (e *engine) findEnv(ref string) (*envMeta, error) {
	if ref == "" {
		return nil, usageErrorf("no environment given")
	}
	if validStoreHash(ref) {
		m, err := e.s.getMeta(ref)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, notFoundError{fmt.Errorf("no environment %s in the store (see 'karapace list')", ref)}
		}
		return m, err
	}
	ids, err := e.s.listDir("metadata")
	if err != nil {
		return nil, err
	}
	// A name: only files that spell it are read in full and checked.
	var named *envMeta
	if validEnvName(ref) == nil {
		needle, _ := json.Marshal(ref)
		for _, id := range ids {
			data, err := os.ReadFile(e.s.path("metadata", id))
			if err != nil || !bytes.Contains(data, needle) {
				continue
			}
			if m, err := e.s.parseMeta(id, data); err == nil && m.Name == ref {
				named = m
				break
			} else if err != nil {
				return nil, err
			}
		}
	}
	// A prefix of env_ids: the file names are the env_ids. A name that is
	// also the prefix of another environment's env_id is ambiguous too.
	var found []string
	for _, id := range ids {
		if isHexPrefix(ref) && strings.HasPrefix(id, ref) && validStoreHash(id) && (named == nil || id != named.EnvID) {
			found = append(found, id)
		}
	}
	switch {
	case named != nil && len(found) == 0:
		return named, nil
	case named == nil && len(found) == 1:
		return e.s.getMeta(found[0])
	case named == nil && len(found) == 0:
		return nil, notFoundError{fmt.Errorf("no environment %q: it is neither a name nor a prefix of an env_id in the store (see 'karapace list')", ref)}
	}
	sort.Strings(found)
	var lines []string
	if named != nil {
		lines = append(lines, "  "+named.EnvID+" "+named.Name+" (by name)")
	}
	for _, id := range found {
		name := ""
		if m, err := e.s.getMeta(id); err == nil {
			name = m.Name
		}
		lines = append(lines, strings.TrimRight("  "+id+" "+name, " "))
	}
	return nil, usageErrorf("%q is ambiguous; it could be any of:\n%s\nuse more of the env_id", ref, strings.Join(lines, "\n"))
}

func isHexPrefix(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != ""
}

// state is an environment's state as the user sees it: running while its
// instance runs, which the metadata does not need to record.
func (e *engine) state(m *envMeta) envState {
	if _, ok := e.running(m); ok {
		return stateRunning
	}
	return m.State
}

// backend is the backend of that name, in the engine's environment.
func (e *engine) backend(name string) (backend, error) { return backendFor(name, e.getenv, e.out) }

// instanceOf is the backend running m's instance, when one runs (its
// marker names it), with the little a backend needs to reach it.
func (e *engine) instanceOf(m *envMeta) (backend, *runSpec, bool) {
	dir := e.s.envs().env(m.EnvID)
	name := dir.run().markerBackend()
	if name == "" {
		return nil, nil, false
	}
	b, err := e.backend(name)
	if err != nil {
		return nil, nil, false
	}
	return b, &runSpec{ID: m.EnvID, ShortID: m.ShortID, Dir: dir}, true
}

// running asks the backend of m's instance, if any, for its pid.
func (e *engine) running(m *envMeta) (int, bool) {
	b, r, ok := e.instanceOf(m)
	if !ok {
		return 0, false
	}
	return b.status(r)
}

// stop ends an environment's instance through its backend: SIGTERM to
// every session, SIGKILL after timeout.
func (e *engine) stop(ref string, timeout time.Duration) (*envMeta, stopResult, error) {
	m, err := e.findEnv(ref)
	if err != nil {
		return nil, stopResult{}, err
	}
	b, r, ok := e.instanceOf(m)
	if !ok {
		return m, stopResult{}, nil
	}
	res, err := b.stop(r, timeout)
	return m, res, err
}

// lockOf reads the lock an environment was built from, kept in the store.
func (e *engine) lockOf(m *envMeta) (*lockFile, error) {
	rc, err := e.s.openObject(m.LockHash)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	if err != nil {
		return nil, storeErrorf("reading the lock of %s (object %s): %v", m.ShortID, m.LockHash, err)
	}
	l, err := parseLock("lock of "+m.ShortID, data)
	if err != nil {
		return nil, storeErrorf("%v", err)
	}
	return l, nil
}

// runSpecFor assembles what a backend needs to run an environment.
func (e *engine) runSpecFor(m *envMeta) (*runSpec, *lockFile, error) {
	l, err := e.lockOf(m)
	if err != nil {
		return nil, nil, err
	}
	lower, err := e.layerTrees(m)
	if err != nil {
		return nil, nil, err
	}
	dir := ""
	if m.ManifestPath != "" {
		dir = filepath.Dir(m.ManifestPath)
	}
	return &runSpec{
		ID: m.EnvID, ShortID: m.ShortID, Dir: e.s.envs().env(m.EnvID), Lower: lower, ReadOnly: m.State == stateFrozen,
		Mounts: l.Mounts, ManifestDir: dir, GPU: l.GPU, Audio: l.Audio, Isolated: l.NetworkIsolation,
		CPUShares: l.CPUShares, MemoryMB: l.MemoryLimitMB, PidsLimit: l.PidsLimit,
		Sockets: hostSocketsOf(l), GUI: len(l.Apps) > 0,
	}, l, nil
}

// run starts a command (or the login shell) in an environment.
func (e *engine) run(ref string, es *execSpec) (int, error) {
	m, err := e.findEnv(ref)
	if err != nil {
		return 0, err
	}
	switch m.State {
	case stateArchived:
		return 0, fmt.Errorf("environment %s is archived and cannot be entered; 'karapace unarchive %s' first", m.ShortID, ref)
	case stateDefined:
		return 0, fmt.Errorf("environment %s is not built yet", m.ShortID)
	}
	r, l, err := e.runSpecFor(m)
	if err != nil {
		return 0, err
	}
	b, err := e.backend(l.Backend)
	if err != nil {
		return 0, err
	}
	return b.exec(r, es)
}

// stoppedEnv takes the store lock for op and finds an environment that is
// not running; the caller unlocks.
func (e *engine) stoppedEnv(ref, op string) (*envMeta, *storeLock, error) {
	sl, err := e.s.lock(op)
	if err != nil {
		return nil, nil, err
	}
	m, err := e.findEnv(ref)
	if err == nil && e.state(m) == stateRunning {
		err = fmt.Errorf("environment %s is running; 'karapace stop %s' first", m.ShortID, ref)
	}
	if err != nil {
		sl.unlock()
		return nil, nil, err
	}
	return m, sl, nil
}

// setState moves an environment to another stored state under the lock.
// from, when set, is the state it must leave (unfreeze leaves frozen).
func (e *engine) setState(ref string, to, from envState) (*envMeta, error) {
	m, sl, err := e.stoppedEnv(ref, string(to))
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	if from != "" && m.State != from {
		return nil, fmt.Errorf("environment %s is not %s (it is %s)", m.ShortID, from, m.State)
	}
	if err := m.canTransition(to); err != nil {
		return nil, err
	}
	m.State = to
	m.UpdatedAt = time.Now().UTC().Format(time.RFC3339)
	return m, e.s.putMeta(m)
}

// destroy removes an environment: its metadata, directory and launchers.
// What it shared with others stays; gc frees what nothing uses.
func (e *engine) destroy(ref string) (*envMeta, error) {
	m, sl, err := e.stoppedEnv(ref, "destroy")
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	if err := m.canTransition(stateDestroyed); err != nil {
		return nil, err
	}
	op, err := e.s.beginOp("destroy", m.EnvID)
	if err != nil {
		return nil, err
	}
	if err := op.saveMeta(m.EnvID); err != nil {
		return nil, op.abandon(err)
	}
	if err := e.s.deleteMeta(m.EnvID); err != nil {
		return nil, op.abandon(err)
	}
	if err := op.finish(string(e.s.envs().env(m.EnvID))); err != nil {
		return nil, err
	}
	removeLaunchers(e.getenv, m.ShortID, e.out)
	return m, nil
}

// rename gives an environment a unique name.
func (e *engine) rename(ref, name string) (*envMeta, error) {
	if err := validEnvName(name); err != nil {
		return nil, usageErrorf("%v", err)
	}
	sl, err := e.s.lock("rename")
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	m, err := e.findEnv(ref)
	if err != nil {
		return nil, err
	}
	if err := e.nameFree(name, m.EnvID); err != nil {
		return nil, err
	}
	m.Name = name
	m.UpdatedAt = time.Now().UTC().Format(time.RFC3339)
	if err := e.s.putMeta(m); err != nil {
		return nil, err
	}
	relabelLaunchers(e.getenv, m.ShortID, name, e.out)
	return m, nil
}

// envInfo is an environment in list and inspect output (stable names).
type envInfo struct {
	EnvID            string   `json:"env_id"`
	ShortID          string   `json:"short_id"`
	Name             string   `json:"name"`
	State            envState `json:"state"`
	Pid              int      `json:"pid,omitempty"`
	BaseLayer        string   `json:"base_layer"`
	DependencyLayers []string `json:"dependency_layers"`
	Snapshots        []string `json:"snapshots"`
	UpperLayer       string   `json:"upper_layer,omitempty"`
	ManifestPath     string   `json:"manifest_path,omitempty"`
	ManifestPaths    []string `json:"manifest_paths"`
	CreatedAt        string   `json:"created_at"`
	UpdatedAt        string   `json:"updated_at"`
	RefCount         int      `json:"ref_count"`
}

func (e *engine) info(m *envMeta) envInfo {
	state := m.State
	pid, running := e.running(m)
	if running {
		state = stateRunning
	}
	return envInfo{
		EnvID: m.EnvID, ShortID: m.ShortID, Name: m.Name, State: state, Pid: pid,
		BaseLayer: m.BaseLayer, DependencyLayers: m.DependencyLayers, Snapshots: m.Snapshots, UpperLayer: m.UpperLayer,
		ManifestPath: m.ManifestPath, ManifestPaths: m.manifests(), CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt, RefCount: m.RefCount,
	}
}

func cmdBuild(c *cli) error {
	path := "karapace.toml"
	if len(c.args) > 0 {
		path = c.args[0]
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	o := buildOptions{name: c.flag("name"), locked: c.has("locked"), offline: c.has("offline"), requirePinned: c.has("require-pinned-image"),
		allowInsecure: c.has("allow-insecure")}
	res, err := e.build(path, o)
	if err != nil {
		return err
	}
	return c.reportBuild(e, res)
}

// contents says what a build holds: the base and what it brought, and the
// packages asked for with what they brought.
func (res *buildResult) contents() string {
	s := res.BaseImage
	if res.BasePackages > 0 {
		s += fmt.Sprintf(" (%d packages)", res.BasePackages)
	}
	switch extra := res.Packages - len(res.Requested); {
	case len(res.Requested) == 0:
		s += ", no packages added"
	case extra > 0:
		s += fmt.Sprintf(", + %s and %d dependencies", strings.Join(res.Requested, ", "), extra)
	default:
		s += ", + " + strings.Join(res.Requested, ", ")
	}
	return s
}

func (c *cli) reportBuild(e *engine, res *buildResult) error {
	if c.json {
		return writeJSON(c.stdout, res)
	}
	what := "built"
	if !res.Created {
		what = "already built"
	}
	name := ""
	if res.Name != "" {
		name = " (" + res.Name + ")"
	}
	fmt.Fprintf(c.stderr, "%s %s%s: %s; lock %s\n", what, res.ShortID, name, res.contents(), res.Lock)
	fmt.Fprintln(c.stdout, res.EnvID)
	return nil
}

// cmdRebuild builds the manifest and, in the same operation, destroys the
// environment its lock named, whose name moves to the new one. A failed
// build leaves the old environment as it was.
func cmdRebuild(c *cli) error {
	path := "karapace.toml"
	if len(c.args) > 0 {
		path = c.args[0]
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	o := buildOptions{name: c.flag("name"), locked: c.has("locked"), offline: c.has("offline"), requirePinned: c.has("require-pinned-image"),
		allowInsecure: c.has("allow-insecure"), rebuild: true}
	res, err := e.build(path, o)
	if err != nil {
		return err
	}
	return c.reportBuild(e, res)
}

func (c *cli) execSpec(argv []string, login, tty bool) *execSpec {
	cwd, _ := os.Getwd()
	var env []string
	for _, k := range envNames(c.getenv) {
		env = append(env, k+"="+c.getenv(k))
	}
	stdout, _ := c.stdout.(*os.File)
	stderr, _ := c.stderr.(*os.File)
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	stdin := c.stdin
	if stdin == nil {
		stdin = os.Stdin
	}
	return &execSpec{Argv: argv, Login: login, TTY: tty, Stdio: [3]*os.File{stdin, stdout, stderr}, Env: env, Cwd: cwd}
}

// envNames lists the host variables there are; getenv alone cannot, so
// the process environment supplies the names.
func envNames(getenv func(string) string) []string {
	var names []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if getenv(k) != "" {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}

func cmdExec(c *cli) error {
	sigs := catchSignals(false)
	defer sigs.stop()
	e, err := c.engine()
	if err != nil {
		return err
	}
	es := c.execSpec(c.rest, false, false)
	es.Signals = sigs
	code, err := e.run(c.args[0], es)
	if err != nil {
		return err
	}
	return exitStatus(code)
}

func cmdEnter(c *cli) error {
	tty := isTerminal(c.stdin) || (c.stdin == nil && isTerminal(os.Stdin))
	sigs := catchSignals(tty)
	defer sigs.stop()
	e, err := c.engine()
	if err != nil {
		return err
	}
	es := c.execSpec(c.rest, len(c.rest) == 0, tty)
	es.Signals = sigs
	code, err := e.run(c.args[0], es)
	if err != nil {
		return err
	}
	return exitStatus(code)
}

func cmdStop(c *cli) error {
	timeout := 10 * time.Second
	if v := c.flag("timeout"); v != "" {
		var err error
		if timeout, err = time.ParseDuration(v); err != nil || timeout < 0 {
			return usageErrorf("--timeout %q: not a duration like 10s", v)
		}
	}
	e, err := c.engine()
	if errors.Is(err, errNoStore) {
		return fmt.Errorf("no environment %q: %w", c.args[0], err)
	}
	if err != nil {
		return err
	}
	m, res, err := e.stop(c.args[0], timeout)
	if err != nil {
		return err
	}
	return c.report(map[string]any{"env_id": m.EnvID, "stopped": res.WasRunning, "killed": res.Killed}, func() string {
		switch {
		case !res.WasRunning:
			return m.ShortID + " was not running"
		case res.Killed:
			return "stopped " + m.ShortID + " (killed after " + timeout.String() + ")"
		}
		return "stopped " + m.ShortID
	})
}

// report prints v as JSON, or the human line.
func (c *cli) report(v any, human func() string) error {
	if c.json {
		return writeJSON(c.stdout, v)
	}
	fmt.Fprintln(c.stdout, human())
	return nil
}

func cmdDestroy(c *cli) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	m, err := e.destroy(c.args[0])
	if err != nil {
		return err
	}
	// Every project whose manifest built it has lost it.
	ms := m.manifests()
	if !c.json && len(ms) > 1 {
		fmt.Fprintf(c.stderr, "karapace: %s was built from %d manifests, which now need 'karapace build' again: %s\n",
			m.ShortID, len(ms), strings.Join(ms, ", "))
	}
	return c.report(map[string]any{"env_id": m.EnvID, "destroyed": true, "ref_count": m.RefCount, "manifest_paths": ms}, func() string {
		return "destroyed " + m.ShortID + " (run 'karapace gc' to free the space it alone used)"
	})
}

// cmdState is freeze, unfreeze, archive and unarchive.
func cmdState(to envState, verb string) func(*cli) error {
	return stateCommand(to, "", verb)
}

// cmdUndoState is unfreeze and unarchive: back to built, from that state.
func cmdUndoState(from envState, verb string) func(*cli) error {
	return stateCommand(stateBuilt, from, verb)
}

func stateCommand(to, from envState, verb string) func(*cli) error {
	return func(c *cli) error {
		e, err := c.engine()
		if err != nil {
			return err
		}
		m, err := e.setState(c.args[0], to, from)
		if err != nil {
			return err
		}
		return c.report(map[string]any{"env_id": m.EnvID, "state": m.State}, func() string {
			return verb + " " + m.ShortID
		})
	}
}

func cmdRename(c *cli) error {
	e, err := c.engine()
	if err != nil {
		return err
	}
	m, err := e.rename(c.args[0], c.args[1])
	if err != nil {
		return err
	}
	return c.report(map[string]any{"env_id": m.EnvID, "name": m.Name}, func() string {
		return "renamed " + m.ShortID + " to " + m.Name
	})
}

func cmdList(c *cli) error {
	var metas []*envMeta
	var errs []error
	e, err := c.engine()
	switch {
	case errors.Is(err, errNoStore): // nothing built yet: an empty list
	case err != nil:
		return err
	default:
		metas, errs = e.s.listMeta()
	}
	infos := make([]envInfo, 0, len(metas))
	for _, m := range metas {
		infos = append(infos, e.info(m))
	}
	for _, err := range errs {
		c.out.warnf("%v", err)
	}
	if c.has("quiet") {
		// For scripts and shell completion: every way to name each one.
		for _, i := range infos {
			if i.Name != "" {
				fmt.Fprintln(c.stdout, i.Name)
			}
			fmt.Fprintln(c.stdout, i.ShortID)
		}
		return nil
	}
	if c.json {
		return writeJSON(c.stdout, infos)
	}
	rows := make([][]string, 0, len(infos))
	for _, i := range infos {
		name := i.Name
		if name == "" {
			name = "-"
		}
		rows = append(rows, []string{i.ShortID, name, string(i.State), i.EnvID})
	}
	writeTable(c.stdout, []string{"SHORT_ID", "NAME", "STATE", "ENV_ID"}, rows)
	if len(errs) > 0 {
		return storeErrorf("%d metadata file(s) are damaged; run 'karapace verify-store'", len(errs))
	}
	return nil
}

func cmdInspect(c *cli) error {
	e, m, err := c.envArg()
	if err != nil {
		return err
	}
	i := e.info(m)
	l, lerr := e.lockOf(m)
	var prot [][2]string
	if lerr == nil {
		prot = protections(l, e.getenv)
	}
	if c.json {
		v := map[string]any{"environment": i}
		if lerr == nil {
			v["lock"] = lockSummary(l)
			p := map[string]string{}
			for _, r := range prot {
				p[r[0]] = r[1]
			}
			v["protections"] = p
		}
		return writeJSON(c.stdout, v)
	}
	rows := [][]string{
		{"env_id", i.EnvID}, {"short_id", i.ShortID}, {"name", i.Name}, {"state", string(i.State)},
		{"base_layer", i.BaseLayer}, {"dependency_layers", strings.Join(i.DependencyLayers, ", ")},
		{"snapshots", fmt.Sprint(len(i.Snapshots))}, {"manifest", i.ManifestPath},
		{"created", i.CreatedAt}, {"updated", i.UpdatedAt}, {"ref_count", fmt.Sprint(i.RefCount)},
	}
	if i.Pid != 0 {
		rows = append(rows, []string{"pid", fmt.Sprint(i.Pid)})
	}
	if lerr == nil {
		rows = append(rows, []string{"base_image", l.BaseImage}, []string{"image_digest", l.BaseImageDigest},
			[]string{"backend", l.Backend}, []string{"packages", fmt.Sprint(len(l.Packages))})
		for _, r := range prot {
			rows = append(rows, []string{r[0], r[1]})
		}
	}
	writeTable(c.stdout, nil, rows)
	return lerr
}

// protections say how the sandbox holds an environment on this machine:
// what its IDs are on the host, what limits it and how, what of the host
// it reaches.
func protections(l *lockFile, getenv func(string) string) [][2]string {
	m := planIDMapping()
	ids := "root inside is you; the other IDs are your subordinate range"
	switch {
	case os.Geteuid() == 0:
		ids = "IDs 0-65536 are " + m.rootRange
	case m.reduced != "":
		ids = "only root is mapped (you): " + m.reduced
	}
	pol, _ := loadPolicy(getenv)
	pids := l.PidsLimit
	if pids == 0 {
		pids = pol.DefaultPids
	}
	mech, _ := pidsMechanism()
	limits := "none"
	if l.MemoryLimitMB > 0 || l.CPUShares > 0 {
		limits = fmt.Sprintf("memory %d MB, cpu shares %d", l.MemoryLimitMB, l.CPUShares)
		if _, why := cgroup2Parent(cgroupLimits{CPUShares: l.CPUShares, MemoryMB: l.MemoryLimitMB}.controllers()); why != "" && os.Geteuid() != 0 {
			limits += " (not applied here: " + why + ")"
		}
	}
	network := "shared with the host"
	if l.NetworkIsolation {
		network = "isolated (loopback only)"
	}
	sockets := strings.Join(hostSocketsOf(l), ", ")
	if sockets == "" {
		sockets = "none"
	}
	var mounts []string
	for _, mt := range l.Mounts {
		mounts = append(mounts, mt.String())
	}
	if mounts == nil {
		mounts = []string{"none"}
	}
	return [][2]string{
		{"ids", ids},
		{"commands", fmt.Sprintf("nested user namespace, %d capabilities, no_new_privs, seccomp", len(commandCapabilities))},
		{"pids_limit", fmt.Sprintf("%d (%s)", pids, mech)},
		{"resource_limits", limits},
		{"network", network},
		{"host_sockets", sockets},
		{"mounts", strings.Join(mounts, "; ")},
	}
}

func lockSummary(l *lockFile) map[string]any {
	pkgs := make([]map[string]string, 0, len(l.Packages))
	for _, p := range l.Packages {
		pkgs = append(pkgs, map[string]string{"name": p.Name, "version": p.Version})
	}
	sum := map[string]any{
		"base_image": l.BaseImage, "base_image_digest": l.BaseImageDigest, "base_image_url": l.BaseImageURL,
		"resolved_packages": pkgs,
	}
	fieldSummary(l, sum)
	return sum
}
