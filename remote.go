package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// An environment on the wire is its metadata, every layer manifest it
// refers to (with their parents) and every object those and the metadata
// name. Senders send objects, then layers (parents first), then the
// metadata, so a receiver that checks references never holds metadata
// that points at nothing. Receivers check every blob against its name
// before it enters the store, and write everything under one WAL
// operation: a failed pull or import leaves nothing behind.

const (
	remoteWorkers   = 4        // blobs in flight at once
	remoteMaxMeta   = 1 << 20  // a metadata file is a few hundred bytes
	remoteMaxLayers = 64 << 20 // all the layer manifests of one environment
	remoteMaxDoc    = 16 << 20 // registry, list and index documents
)

// remoteBlob names one blob of an environment.
type remoteBlob struct {
	Kind string `json:"kind"` // object, layer, metadata
	Hash string `json:"hash"` // blake3; the env_id for metadata
	Size int64  `json:"size"`
}

const (
	blobObject   = "object"
	blobLayer    = "layer"
	blobMetadata = "metadata"
)

// envClosure is everything an environment is on the wire.
type envClosure struct {
	meta    *envMeta
	wire    []byte       // the metadata as sent
	layers  []*layer     // parents before children
	objects []remoteBlob // sorted by hash
}

// remoteWireMeta is the metadata as it travels: without the manifest
// paths, which name files on this machine only.
func remoteWireMeta(m *envMeta) []byte {
	w := *m
	w.ManifestPath, w.ManifestPaths = "", nil
	w.Checksum = storeBlake3Hex(w.canonical())
	b, _ := json.MarshalIndent(&w, "", "  ")
	return append(b, '\n')
}

// remoteParseMeta checks received metadata: strict JSON, a valid
// checksum, the expected env_id, valid fields.
func remoteParseMeta(envID string, b []byte) (*envMeta, error) {
	if len(b) > remoteMaxMeta {
		return nil, fmt.Errorf("larger than %d bytes", remoteMaxMeta)
	}
	var m envMeta
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the JSON document")
	}
	if m.Checksum == "" {
		return nil, errors.New("no checksum")
	}
	if got := storeBlake3Hex(m.canonical()); got != m.Checksum {
		return nil, fmt.Errorf("checksum mismatch (recorded %s, content hashes to %s)", m.Checksum, got)
	}
	if envID != "" && m.EnvID != envID {
		return nil, fmt.Errorf("it is the metadata of %q", m.EnvID)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return &m, nil
}

// closureOf collects an environment's blobs from the store.
func (s *store) closureOf(m *envMeta) (*envClosure, error) {
	c := &envClosure{meta: m, wire: remoteWireMeta(m)}
	seen := map[string]bool{}
	objs := map[string]bool{}
	for _, h := range m.objectRefs() {
		objs[h] = true
	}
	var visit func(h string) error
	visit = func(h string) error {
		if seen[h] {
			return nil
		}
		seen[h] = true // before the parent: a cycle cannot loop
		l, err := s.getLayer(h)
		if err != nil {
			return fmt.Errorf("environment %s: %w", m.ShortID, err)
		}
		if l.Parent != "" {
			if err := visit(l.Parent); err != nil {
				return err
			}
		}
		c.layers = append(c.layers, l)
		for _, o := range l.ObjectRefs {
			objs[o] = true
		}
		return nil
	}
	for _, h := range m.layerRefs() {
		if err := visit(h); err != nil {
			return nil, err
		}
	}
	for _, h := range slices.Sorted(maps.Keys(objs)) {
		size, err := s.objectSize(h)
		if err != nil {
			return nil, storeErrorf("environment %s needs object %s, which is missing from the store (run 'karapace verify-store'): %v", m.ShortID, h, err)
		}
		c.objects = append(c.objects, remoteBlob{blobObject, h, size})
	}
	return c, nil
}

// blobs lists the closure in sending order: objects, layers, metadata.
func (c *envClosure) blobs() []remoteBlob {
	out := slices.Clone(c.objects)
	for _, l := range c.layers {
		out = append(out, remoteBlob{blobLayer, l.Hash, int64(len(l.fileBytes()))})
	}
	return append(out, remoteBlob{blobMetadata, c.meta.EnvID, int64(len(c.wire))})
}

// envSource is where a pull or an import reads an environment from.
type envSource interface {
	// origin names where the environment comes from, for messages.
	origin() string
	// meta returns the environment's checked metadata.
	meta() (*envMeta, error)
	// layer returns a checked layer manifest.
	layer(hash string) (*layer, error)
	// objects delivers every object in need to got, which checks it
	// against its name and may be called from several goroutines.
	objects(need map[string]bool, got func(hash string, r io.Reader) error) error
}

// receiveOptions say how a received environment is stored.
type receiveOptions struct {
	kind string // the WAL operation: pull or import
	name string // --name: store it under this name
}

// receiveResult says what a pull or an import did.
type receiveResult struct {
	EnvID          string
	ShortID        string
	Name           string
	AlreadyPresent bool
	Received       int // blobs written to the store
	Skipped        int // blobs the store already had
	Bytes          int64
}

// receive stores the environment src holds, verified, under one WAL
// operation. An environment already in the store is left as it is; one
// whose layers differ from those the store binds its env_id to is
// refused (see binding.go).
func (e *engine) receive(src envSource, o receiveOptions) (*receiveResult, error) {
	m, err := src.meta()
	if err != nil {
		return nil, err
	}
	if o.name != "" {
		if err := validEnvName(o.name); err != nil {
			return nil, usageErrorf("--name: %v", err)
		}
	}
	sl, err := e.s.lock(o.kind)
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	r := &reception{e: e, src: src, o: o, m: m, res: &receiveResult{EnvID: m.EnvID, ShortID: m.ShortID}}
	present, err := r.checkBinding()
	if err != nil {
		return nil, err
	}
	if present {
		return r.res, nil
	}
	if err := r.pickName(); err != nil {
		return nil, err
	}
	if err := r.fetchLayers(); err != nil {
		return nil, err
	}
	r.listObjects()
	if err := r.clearLeftovers(); err != nil {
		return nil, err
	}
	op, err := e.s.beginOp(o.kind, m.EnvID)
	if err != nil {
		return nil, err
	}
	if err := r.store(op); err != nil {
		return nil, op.abandon(err)
	}
	if err := op.done(); err != nil {
		return nil, err
	}
	r.res.Name = r.name
	return r.res, nil
}

// reception is one receive in progress.
type reception struct {
	e       *engine
	src     envSource
	o       receiveOptions
	m       *envMeta
	res     *receiveResult
	name    string
	fetched []*layer        // the layer manifests the store lacks, parents first
	need    map[string]bool // the objects the store lacks
}

// checkBinding refuses an environment whose layers are not those the
// store binds its env_id to, and reports whether it is here already.
func (r *reception) checkBinding() (bool, error) {
	known, err := r.e.s.knownLayers(r.m.EnvID)
	if err != nil || known == nil {
		return false, err
	}
	if d := layerDiff(*known, layersOf(r.m), "here", "in "+r.src.origin()); d != "" {
		return false, fmt.Errorf("environment %s in %s is bound to other layers than this store knows it by, and an env_id's layers never change once published: %s; refusing it", r.m.EnvID, r.src.origin(), d)
	}
	old, err := r.e.s.getMeta(r.m.EnvID)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r.res.AlreadyPresent, r.res.Name = true, old.Name
	return true, nil
}

// pickName is the name the environment gets: --name, else its own, which
// must be free.
func (r *reception) pickName() error {
	r.name = r.m.Name
	if r.o.name != "" {
		r.name = r.o.name
	}
	if r.name == "" {
		return nil
	}
	if err := r.e.nameFree(r.name, r.m.EnvID); err != nil {
		if r.o.name == "" {
			return usageErrorf("environment %s is named %q, a name taken here by another environment; %s it with --name NEW", r.m.ShortID, r.name, r.o.kind)
		}
		return err
	}
	return nil
}

// fetchLayers gets and checks every layer manifest the store lacks,
// parents first, before a single object byte is written: they are small.
// A layer already here has its parents and objects here too.
func (r *reception) fetchLayers() error {
	seen := map[string]bool{}
	total := 0
	var visit func(h string) error
	visit = func(h string) error {
		if seen[h] {
			return nil
		}
		seen[h] = true
		if r.e.s.hasLayer(h) {
			r.res.Skipped++
			return nil
		}
		l, err := r.src.layer(h)
		if err != nil {
			return err
		}
		if total += len(l.fileBytes()); total > remoteMaxLayers {
			return fmt.Errorf("environment %s: its layer manifests exceed %d bytes", r.m.ShortID, remoteMaxLayers)
		}
		if l.Parent != "" {
			if err := visit(l.Parent); err != nil {
				return err
			}
		}
		r.fetched = append(r.fetched, l)
		return nil
	}
	for _, h := range r.m.layerRefs() {
		if err := visit(h); err != nil {
			return err
		}
	}
	return nil
}

// listObjects finds the objects the metadata and the fetched layers name
// that the store lacks.
func (r *reception) listObjects() {
	r.need = map[string]bool{}
	for _, h := range r.m.objectRefs() {
		r.need[h] = true
	}
	for _, l := range r.fetched {
		for _, h := range l.ObjectRefs {
			r.need[h] = true
		}
	}
	for h := range r.need {
		if r.e.s.hasObject(h) {
			delete(r.need, h)
			r.res.Skipped++
		}
	}
}

// clearLeftovers removes a directory of the environment that no metadata
// names: what a failed operation left, gc's to take.
func (r *reception) clearLeftovers() error {
	dir := string(r.e.s.envs().env(r.m.EnvID))
	if _, err := os.Lstat(dir); err != nil {
		return nil
	}
	if err := r.e.s.removeTree(dir); err != nil {
		return fmt.Errorf("removing the leftover %s: %w", dir, err)
	}
	return nil
}

// store writes the environment within op. Every rollback step is known
// before anything is written: one WAL write records them all, undone
// newest first (metadata, directory, layers, objects). Nothing they name
// is in the store yet, and under the lock nothing else can put it there.
func (r *reception) store(op *walOp) error {
	var steps []walStep
	for _, h := range slices.Sorted(maps.Keys(r.need)) {
		steps = append(steps, walStep{Op: walRemoveObject, Hash: h})
	}
	for _, l := range r.fetched {
		steps = append(steps, walStep{Op: walRemoveLayer, Hash: l.Hash})
	}
	steps = append(steps, walStep{Op: walRemovePath, Path: string(r.e.s.envs().env(r.m.EnvID))}, walStep{Op: walRemoveMeta, EnvID: r.m.EnvID})
	if err := op.add(steps...); err != nil {
		return err
	}
	if err := r.receiveObjects(); err != nil {
		return err
	}
	if err := r.checkLock(); err != nil {
		return err
	}
	if err := r.putLayers(); err != nil {
		return err
	}
	r.res.Received = len(r.need) + len(r.fetched) + 1
	r.res.Bytes += int64(len(remoteWireMeta(r.m)))
	return r.putEnv()
}

// receiveObjects streams the objects the store lacks into it, each
// checked against its name.
func (r *reception) receiveObjects() error {
	var bytesIn atomic.Int64
	err := r.src.objects(r.need, func(hash string, in io.Reader) error {
		if !r.need[hash] {
			return fmt.Errorf("object %s was not asked for", hash)
		}
		w, err := r.e.s.newObjectWriter()
		if err != nil {
			return err
		}
		defer w.abort()
		n, err := w.ReadFrom(in)
		if err != nil {
			return fmt.Errorf("receiving object %s: %w", hash, err)
		}
		got, err := w.sum()
		if err != nil {
			return err
		}
		if got != hash {
			return fmt.Errorf("object %s is corrupt: its %d bytes hash to %s; refusing it", hash, n, got)
		}
		if _, _, err := w.commit(); err != nil {
			return err
		}
		bytesIn.Add(n)
		return nil
	})
	if err != nil {
		return err
	}
	for _, h := range slices.Sorted(maps.Keys(r.need)) {
		if !r.e.s.hasObject(h) {
			return fmt.Errorf("object %s of environment %s was not received", h, r.m.ShortID)
		}
	}
	r.res.Bytes += bytesIn.Load()
	return nil
}

// checkLock makes sure the environment's lock, now in the store, is the
// lock of its env_id: its fields give that identity again. Metadata that
// came with another lock would pass off other inputs as this env_id.
func (r *reception) checkLock() error {
	m := r.m
	if m.LockHash == "" {
		return fmt.Errorf("environment %s in %s carries no lock; refusing it", m.EnvID, r.src.origin())
	}
	rc, err := r.e.s.openObject(m.LockHash)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return fmt.Errorf("reading the lock of %s (object %s): %w", m.ShortID, m.LockHash, err)
	}
	l, err := parseLock("lock", data)
	if err == nil && len(data) > maxManifestSize {
		err = fmt.Errorf("larger than %d bytes", maxManifestSize)
	}
	if err == nil {
		if id, _ := l.computeID(); id != l.EnvID {
			err = fmt.Errorf("its fields give env_id %s, not the %s it states", id, l.EnvID)
		} else if l.EnvID != m.EnvID {
			err = fmt.Errorf("it is the lock of environment %s", l.EnvID)
		}
	}
	if err != nil {
		return fmt.Errorf("the lock of environment %s in %s (object %s) is not its lock: %v; refusing it", m.EnvID, r.src.origin(), m.LockHash, err)
	}
	return nil
}

// putLayers stores the fetched layer manifests, parents first.
func (r *reception) putLayers() error {
	for _, l := range r.fetched {
		want := l.Hash
		h, err := r.e.s.putLayer(l)
		if err != nil {
			return err
		}
		if h != want {
			return fmt.Errorf("layer %s was stored as %s", want, h)
		}
		r.res.Bytes += int64(len(l.fileBytes()))
	}
	return nil
}

// putEnv makes the environment's directory and writes its metadata, last.
func (r *reception) putEnv() error {
	m := r.m
	if err := r.e.makeEnvDir(m); err != nil {
		return err
	}
	m.Name, m.ManifestPath, m.ManifestPaths, m.RefCount = r.name, "", nil, 0 // no manifest here built it
	if m.State == stateRunning {
		m.State = stateBuilt // its instance runs elsewhere, if anywhere
	}
	m.UpdatedAt = time.Now().UTC().Format(time.RFC3339)
	return r.e.s.putMeta(m)
}

// makeEnvDir creates a received environment's directory, its writable
// layer the snapshot upper_layer names, else empty.
func (e *engine) makeEnvDir(m *envMeta) error {
	dir := string(e.s.envs().env(m.EnvID))
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	for _, d := range []string{dir, dir + "/upper", dir + "/work", dir + "/merged", dir + "/run"} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	upper := filepath.Join(dir, "upper")
	if err := os.Chmod(upper, 0o755); err != nil {
		return err
	}
	if m.UpperLayer == "" {
		return nil
	}
	l, err := e.s.getLayer(m.UpperLayer)
	if err != nil {
		return err
	}
	rc, err := e.s.openObject(l.TarHash)
	if err != nil {
		return err
	}
	defer rc.Close()
	job, err := e.unpackJob(upper)
	if err != nil {
		return err
	}
	if err := treeInNS(job, rc, nil); err != nil {
		return fmt.Errorf("unpacking snapshot %s as the writable layer: %w", m.UpperLayer, err)
	}
	_, err = io.Copy(io.Discard, rc) // the object's hash is checked at its end
	return err
}

// remoteSettings are where the remote is and how to talk to it.
type remoteSettings struct {
	url      string
	token    string // protocol v1 bearer token
	caCert   string // extra CA certificate (PEM) to trust
	user     string // OCI registry credentials
	password string
	insecure bool          // OCI: plain http allowed for any host
	maxObj   int64         // pull: the largest object accepted
	idle     time.Duration // how long a response may keep the client waiting for data
	out      *output
}

// remoteSettings reads --remote, the environment and [remote] of the
// configuration. Secrets come only from the environment or the file:
// a flag would show in ps.
func (c *cli) remoteSettings() (*remoteSettings, error) {
	doc, sc, err := loadConfig(c.getenv)
	if err != nil {
		return nil, err
	}
	cfg := map[string]string{}
	if v, ok := doc["remote"]; ok {
		keys := []string{"url", "token", "ca_cert", "registry_user", "registry_password"}
		t, err := sc.table([]string{"remote"}, v, keys...)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if v, ok := t[k]; ok {
				if cfg[k], err = sc.str([]string{"remote", k}, v); err != nil {
					return nil, err
				}
			}
		}
		if cfg["token"] != "" || cfg["registry_password"] != "" {
			if fi, err := os.Stat(sc.file); err == nil && fi.Mode().Perm()&0o077 != 0 {
				c.out.warnf("%s holds a secret but other users may read it; run 'chmod 600 %s'", sc.file, sc.file)
			}
		}
	}
	first := func(vals ...string) string {
		for _, v := range vals {
			if v != "" {
				return v
			}
		}
		return ""
	}
	rs := &remoteSettings{out: c.out,
		url:      first(c.flag("remote"), c.getenv("KARAPACE_REMOTE"), cfg["url"]),
		token:    first(c.getenv("KARAPACE_TOKEN"), cfg["token"]),
		caCert:   first(c.getenv("KARAPACE_CA_CERT"), cfg["ca_cert"]),
		user:     first(c.getenv("KARAPACE_REGISTRY_USER"), cfg["registry_user"]),
		password: first(c.getenv("KARAPACE_REGISTRY_PASSWORD"), cfg["registry_password"]),
		insecure: c.has("insecure-registry"),
		maxObj:   serverDefaultMaxBlob,
	}
	if v := c.flag("max-object-size"); v != "" {
		n, err := serverParseSize(v)
		if err != nil {
			return nil, usageErrorf("--max-object-size: %v", err)
		}
		rs.maxObj = n
	}
	if rs.url == "" {
		return nil, usageErrorf("no remote given: pass --remote URL, set KARAPACE_REMOTE, or set url in [remote] of %s", configPath(c.getenv))
	}
	if rs.idle, err = httpIdleTimeout(c.getenv); err != nil {
		return nil, err
	}
	return rs, nil
}

// remoteStore is a remote: a protocol v1 server or an OCI registry.
type remoteStore interface {
	push(ctx context.Context, s *store, c *envClosure, tag string, res *pushResult) error
	source(ctx context.Context, ref string, prog *progress) (envSource, error)
}

func openRemote(rs *remoteSettings) (remoteStore, error) {
	switch {
	case strings.HasPrefix(rs.url, "oci://"):
		return newOCIRemote(rs)
	case strings.HasPrefix(rs.url, "http://"), strings.HasPrefix(rs.url, "https://"):
		return newV1Remote(rs)
	}
	return nil, usageErrorf("remote %q: expected an http://, https:// or oci:// URL", rs.url)
}

// remoteHTTPClient is the client of both kinds of remote: streaming
// bodies, long waits for a server that fsyncs a big upload, and the
// extra CA certificate if there is one.
func remoteHTTPClient(caCert string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caCert != "" {
		pem, err := readLimited(caCert, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("reading the CA certificate %s: %w", caCert, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading the CA certificate %s: no PEM certificate in it", caCert)
		}
		tc.RootCAs = pool
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 10 * time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2 * remoteWorkers,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        256 << 10,
	}
	return &http.Client{Transport: tr, CheckRedirect: remoteRedirect}, nil
}

// remoteRedirect follows a redirect without the credentials when it
// leads to another origin or from https to http: a server may send the
// client elsewhere (a registry to its storage), but not its token.
// net/http itself keeps them for another port of the same host.
func remoteRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	prev := via[len(via)-1].URL
	if remoteOrigin(req.URL) != remoteOrigin(via[0].URL) || (prev.Scheme == "https" && req.URL.Scheme != "https") {
		req.Header.Del("Authorization")
	}
	return nil
}

// remoteOrigin is a URL's scheme, host and port.
func remoteOrigin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// remoteRoundTrip sends req, whose context cancel ends, so that a
// stalled server fails it instead of hanging it: the answer to a GET or
// a HEAD must begin within idle (an upload may keep a server busy longer),
// and every read of the response's body must see data within idle (a
// minute if unset).
func remoteRoundTrip(hc *http.Client, req *http.Request, cancel context.CancelFunc, idle time.Duration) (*http.Response, error) {
	if idle <= 0 {
		idle = time.Minute
	}
	var stalled atomic.Bool
	var t *time.Timer
	if req.Method == http.MethodGet || req.Method == http.MethodHead {
		t = time.AfterFunc(idle, func() { stalled.Store(true); cancel() })
	}
	resp, err := hc.Do(req)
	if t != nil {
		t.Stop()
	}
	if err == nil && stalled.Load() {
		resp.Body.Close()
		err = context.Canceled
	}
	if err != nil {
		cancel()
		if stalled.Load() {
			return nil, fmt.Errorf("no answer for %s", idle)
		}
		return nil, err
	}
	resp.Body = newIdleReader(resp.Body, idle, cancel, req.URL.Redacted())
	return resp, nil
}

// remoteNetError explains a request that got no answer.
func remoteNetError(what, where string, err error) error {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return fmt.Errorf("%s: the certificate of %s is not signed by a trusted authority: set KARAPACE_CA_CERT (or ca_cert in [remote]) to the CA certificate that signed it (%v)", what, where, err)
	case errors.As(err, &he):
		return fmt.Errorf("%s: the certificate of %s is for another host (%v)", what, where, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: interrupted", what)
	}
	return fmt.Errorf("%s: cannot reach %s: %v", what, where, err)
}

// remoteStatusError explains a failed response; authHint says which
// credentials to check.
func remoteStatusError(what string, resp *http.Response, authHint string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	msg := strings.TrimSpace(string(b))
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if msg == "" {
		msg = resp.Status
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%s: authentication failed: check %s (the server said: %s)", what, authHint, msg)
	case http.StatusForbidden:
		return fmt.Errorf("%s: not allowed with these credentials (a read-only token?); the server said: %s", what, msg)
	case http.StatusRequestEntityTooLarge:
		return fmt.Errorf("%s: larger than the server accepts (%s)", what, msg)
	}
	return fmt.Errorf("%s: %s (HTTP %d)", what, msg, resp.StatusCode)
}

// remoteRetryAfter is how long a 503 asks to wait, within reason.
func remoteRetryAfter(resp *http.Response) time.Duration {
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && n >= 0 {
		return min(time.Duration(n)*time.Second, 10*time.Second)
	}
	return time.Second
}

// remoteDrop reads a little of a response's body and closes it, so that
// its connection can serve the retry.
func remoteDrop(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
}

// remoteBackOff drops a busy server's response and waits as its
// Retry-After asks; it fails only when ctx ends first.
func remoteBackOff(ctx context.Context, resp *http.Response) error {
	wait := remoteRetryAfter(resp)
	remoteDrop(resp)
	select {
	case <-time.After(wait):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// remoteParallel runs fn for 0..n-1 on a few workers; the first error
// cancels the rest.
func remoteParallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < min(remoteWorkers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// splitRemoteTag splits name@tag. Names are environment names; tags
// follow the OCI tag grammar, so either kind of remote can hold them.
func splitRemoteTag(ref string) (name, tag string, err error) {
	name, tag, ok := strings.Cut(ref, "@")
	if !ok {
		return "", "", usageErrorf("tag %q: expected NAME@TAG", ref)
	}
	if err := validEnvName(name); err != nil {
		return "", "", usageErrorf("tag %q: %v", ref, err)
	}
	if !validRemoteTagPart(tag) {
		return "", "", usageErrorf("tag %q: the part after @ must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", ref)
	}
	return name, tag, nil
}

func validRemoteTagPart(t string) bool {
	if len(t) == 0 || len(t) > 128 || t[0] == '.' || t[0] == '-' {
		return false
	}
	for _, c := range []byte(t) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// pushResult is what push reports (its --json, with stable names).
type pushResult struct {
	EnvID         string  `json:"env_id"`
	ShortID       string  `json:"short_id"`
	Remote        string  `json:"remote"`
	Tag           string  `json:"tag,omitempty"`
	BlobsUploaded int     `json:"blobs_uploaded"`
	BlobsSkipped  int     `json:"blobs_skipped"`
	BytesUploaded int64   `json:"bytes_uploaded"`
	Seconds       float64 `json:"seconds"`
}

// v1Remote is a server speaking protocol v1 (see server.go).
type v1Remote struct {
	base   string // without a trailing slash
	token  string
	hc     *http.Client
	maxObj int64
	idle   time.Duration
	out    *output
}

func newV1Remote(rs *remoteSettings) (*v1Remote, error) {
	u, err := url.Parse(rs.url)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usageErrorf("remote %q is not a URL like https://HOST[:PORT][/PATH]", rs.url)
	}
	hc, err := remoteHTTPClient(rs.caCert)
	if err != nil {
		return nil, err
	}
	if rs.token != "" && u.Scheme == "http" && !remoteLoopback(u.Hostname()) {
		rs.out.warnf("sending the token to %s in clear text: use https", u.Host)
	}
	return &v1Remote{base: strings.TrimRight(rs.url, "/"), token: rs.token, hc: hc, maxObj: rs.maxObj, idle: rs.idle, out: rs.out}, nil
}

// remoteLoopback reports whether host is this machine.
func remoteLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// do sends a request, again while the server says 503 (busy). body
// opens the request body afresh for each attempt.
func (r *v1Remote) do(ctx context.Context, method, path string, hdr http.Header, body func() (io.ReadCloser, error), size int64) (*http.Response, error) {
	what := method + " " + path
	for attempt := 0; ; attempt++ {
		var rc io.ReadCloser
		if body != nil {
			var err error
			if rc, err = body(); err != nil {
				return nil, err
			}
		}
		rctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(rctx, method, r.base+path, rc)
		if err != nil {
			cancel()
			if rc != nil {
				rc.Close()
			}
			return nil, err
		}
		if body != nil {
			req.ContentLength = size
			if size == 0 {
				req.Body = http.NoBody
				rc.Close()
			}
		}
		maps.Copy(req.Header, hdr)
		req.Header.Set("User-Agent", "karapace/"+version)
		if r.token != "" {
			req.Header.Set("Authorization", "Bearer "+r.token)
		}
		resp, err := remoteRoundTrip(r.hc, req, cancel, r.idle)
		if err != nil {
			return nil, remoteNetError(what, r.base, err)
		}
		r.out.tracef("%s %s%s: %s", method, r.base, path, resp.Status)
		if resp.StatusCode == http.StatusServiceUnavailable && attempt < 30 {
			if err := remoteBackOff(ctx, resp); err != nil {
				return nil, remoteNetError(what, r.base, err)
			}
			continue
		}
		return resp, nil
	}
}

func (r *v1Remote) statusError(what string, resp *http.Response) error {
	return remoteStatusError(what+" on "+r.base, resp, "KARAPACE_TOKEN")
}

// head says whether the server has a blob, and its ETag.
func (r *v1Remote) head(ctx context.Context, kind, hash string) (bool, string, error) {
	resp, err := r.do(ctx, http.MethodHead, "/blobs/"+kind+"/"+hash, nil, nil, 0)
	if err != nil {
		return false, "", err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, resp.Header.Get("ETag"), nil
	case http.StatusNotFound:
		return false, "", nil
	}
	return false, "", r.statusError("checking "+kind+" "+hash, resp)
}

// put uploads a blob; it reports whether the server stored it (201) or
// had it already (200).
func (r *v1Remote) put(ctx context.Context, kind, hash string, size int64, body func() (io.ReadCloser, error)) (bool, error) {
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err := r.do(ctx, http.MethodPut, "/blobs/"+kind+"/"+hash, hdr, body, size)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated:
		return true, nil
	case http.StatusOK:
		return false, nil
	}
	return false, r.statusError("uploading "+kind+" "+hash, resp)
}

func (r *v1Remote) push(ctx context.Context, s *store, c *envClosure, tag string, res *pushResult) error {
	blobs := c.blobs()
	meta := blobs[len(blobs)-1]
	blobs = blobs[:len(blobs)-1]
	missing := make([]bool, len(blobs))
	if err := remoteParallel(ctx, len(blobs), func(ctx context.Context, i int) error {
		ok, _, err := r.head(ctx, blobs[i].Kind, blobs[i].Hash)
		missing[i] = !ok
		return err
	}); err != nil {
		return err
	}
	ok, etag, err := r.head(ctx, blobMetadata, meta.Hash)
	if err != nil {
		return err
	}
	metaMissing := !ok || etag != `"`+storeBlake3Hex(c.wire)+`"`
	if ok && metaMissing {
		// Other metadata: the server refuses it if it names other
		// layers, so say so before sending any.
		if err := r.sameLayers(ctx, c); err != nil {
			return err
		}
	}
	var objs []remoteBlob
	var layers []*layer
	var total int64
	for i, b := range blobs {
		switch {
		case !missing[i]:
			res.BlobsSkipped++
		case b.Kind == blobObject:
			objs = append(objs, b)
			total += b.Size
		default:
			layers = append(layers, c.layers[i-len(c.objects)])
		}
	}
	// Big objects first: the last minutes are not spent on one upload.
	sort.SliceStable(objs, func(i, j int) bool { return objs[i].Size > objs[j].Size })
	prog := r.out.progress("pushing "+c.meta.ShortID, total, true)
	defer prog.finish()
	var mu sync.Mutex
	count := func(stored bool, n int64) {
		mu.Lock()
		defer mu.Unlock()
		if stored {
			res.BlobsUploaded++
			res.BytesUploaded += n
		} else {
			res.BlobsSkipped++
		}
	}
	if err := remoteParallel(ctx, len(objs), func(ctx context.Context, i int) error {
		b := objs[i]
		stored, err := r.put(ctx, blobObject, b.Hash, b.Size, func() (io.ReadCloser, error) {
			rc, err := s.openObject(b.Hash)
			if err != nil {
				return nil, err
			}
			return remoteReadCloser{prog.reader(rc), rc}, nil
		})
		if err != nil {
			return err
		}
		count(stored, b.Size)
		return nil
	}); err != nil {
		return err
	}
	// Parents first: the server refuses a layer whose parent it lacks.
	for _, l := range layers {
		b := l.fileBytes()
		stored, err := r.put(ctx, blobLayer, l.Hash, int64(len(b)), remoteBytesBody(b))
		if err != nil {
			return err
		}
		count(stored, int64(len(b)))
	}
	if metaMissing {
		stored, err := r.put(ctx, blobMetadata, meta.Hash, int64(len(c.wire)), remoteBytesBody(c.wire))
		if err != nil {
			return err
		}
		count(stored, int64(len(c.wire)))
	} else {
		res.BlobsSkipped++
	}
	if tag != "" {
		return r.setTag(ctx, tag, c.meta.EnvID)
	}
	return nil
}

// sameLayers fails when the server holds the environment with other
// layers than the closure's.
func (r *v1Remote) sameLayers(ctx context.Context, c *envClosure) error {
	theirs, err := (&v1Source{r: r, ctx: ctx, envID: c.meta.EnvID}).meta()
	if err != nil {
		return err
	}
	return remoteLayersPublished(c.meta, theirs, r.base)
}

// remoteLayersPublished refuses to push an environment that the remote
// holds with other layers.
func remoteLayersPublished(ours, theirs *envMeta, where string) error {
	if d := layerDiff(layersOf(theirs), layersOf(ours), "on "+where, "here"); d != "" {
		return fmt.Errorf("environment %s is on %s with other layers, and an env_id's layers never change once published: %s; refusing to push it", ours.EnvID, where, d)
	}
	return nil
}

type remoteReadCloser struct {
	io.Reader
	io.Closer
}

func remoteBytesBody(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

// registry fetches the tag map and its ETag.
func (r *v1Remote) registry(ctx context.Context) (map[string]string, string, error) {
	resp, err := r.do(ctx, http.MethodGet, "/registry", nil, nil, 0)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", r.statusError("reading the registry", resp)
	}
	reg := map[string]string{}
	if err := json.NewDecoder(io.LimitReader(resp.Body, remoteMaxDoc)).Decode(&reg); err != nil {
		return nil, "", fmt.Errorf("reading the registry of %s: %w", r.base, err)
	}
	return reg, resp.Header.Get("ETag"), nil
}

// setTag points tag at envID. The registry is replaced only if nobody
// changed it since it was read (If-Match), so concurrent pushes of
// different tags both land.
func (r *v1Remote) setTag(ctx context.Context, tag, envID string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		reg, etag, err := r.registry(ctx)
		if err != nil {
			return err
		}
		if reg[tag] == envID {
			return nil
		}
		reg[tag] = envID
		b, _ := json.Marshal(reg)
		hdr := http.Header{"Content-Type": {"application/json"}}
		if etag != "" {
			hdr.Set("If-Match", etag)
		}
		resp, err := r.do(ctx, http.MethodPut, "/registry", hdr, remoteBytesBody(b), int64(len(b)))
		if err != nil {
			return err
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK, http.StatusCreated, http.StatusNoContent:
			return nil
		case http.StatusPreconditionFailed:
			// Someone else's tag landed first: back off a random while,
			// so that a crowd of pushes does not retry in step.
			time.Sleep(rand.N(time.Duration(min(1000, 10<<min(attempt, 7))) * time.Millisecond))
			continue
		}
		return r.statusError("setting the tag "+tag, resp)
	}
	return fmt.Errorf("setting the tag %s on %s: the registry kept changing; try again", tag, r.base)
}

// resolve turns a pull reference into an env_id: NAME@TAG through the
// registry, else an env_id or a unique prefix of one the server holds.
func (r *v1Remote) resolve(ctx context.Context, ref string) (string, error) {
	if strings.Contains(ref, "@") {
		if _, _, err := splitRemoteTag(ref); err != nil {
			return "", err
		}
		reg, _, err := r.registry(ctx)
		if err != nil {
			return "", err
		}
		id, ok := reg[ref]
		if !ok {
			return "", fmt.Errorf("%s has no tag %s", r.base, ref)
		}
		return id, nil
	}
	if validStoreHash(ref) {
		return ref, nil
	}
	if !isHexPrefix(ref) {
		return "", usageErrorf("%q is neither NAME@TAG nor an env_id (or a prefix of one)", ref)
	}
	resp, err := r.do(ctx, http.MethodGet, "/list", nil, nil, 0)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", r.statusError("listing environments", resp)
	}
	var list serverList
	if err := json.NewDecoder(io.LimitReader(resp.Body, remoteMaxDoc)).Decode(&list); err != nil {
		return "", fmt.Errorf("reading the list of %s: %w", r.base, err)
	}
	var found []string
	for _, e := range list.Environments {
		if strings.HasPrefix(e.EnvID, ref) {
			found = append(found, e.EnvID)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%s holds no environment %s", r.base, ref)
	case 1:
		return found[0], nil
	}
	return "", usageErrorf("%q is ambiguous on %s; it could be any of:\n  %s", ref, r.base, strings.Join(found, "\n  "))
}

func (r *v1Remote) source(ctx context.Context, ref string, prog *progress) (envSource, error) {
	id, err := r.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &v1Source{r: r, ctx: ctx, envID: id, prog: prog}, nil
}

// v1Source reads an environment from a protocol v1 server.
type v1Source struct {
	r     *v1Remote
	ctx   context.Context
	envID string
	prog  *progress
}

// get fetches a small blob whole.
func (v *v1Source) get(kind, hash string, limit int64) ([]byte, error) {
	resp, err := v.r.do(v.ctx, http.MethodGet, "/blobs/"+kind+"/"+hash, nil, nil, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s holds no %s %s", v.r.base, kind, hash)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, v.r.statusError("fetching "+kind+" "+hash, resp)
	}
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%s %s on %s is %d bytes, more than the %d a %s may be; refusing it", kind, hash, v.r.base, resp.ContentLength, limit, kind)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, remoteNetError("fetching "+kind+" "+hash, v.r.base, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s %s on %s is more than the %d bytes a %s may be; refusing it", kind, hash, v.r.base, limit, kind)
	}
	return b, nil
}

func (v *v1Source) origin() string { return v.r.base }

func (v *v1Source) meta() (*envMeta, error) {
	b, err := v.get(blobMetadata, v.envID, remoteMaxMeta)
	if err != nil {
		return nil, err
	}
	m, err := remoteParseMeta(v.envID, b)
	if err != nil {
		return nil, fmt.Errorf("the metadata of %s on %s is invalid: %v; refusing it", v.envID, v.r.base, err)
	}
	return m, nil
}

func (v *v1Source) layer(hash string) (*layer, error) {
	b, err := v.get(blobLayer, hash, maxLayerFile)
	if err != nil {
		return nil, err
	}
	l, err := parseLayer(hash, b)
	if err != nil {
		return nil, fmt.Errorf("layer %s on %s is corrupt: %v; refusing it", hash, v.r.base, err)
	}
	return l, nil
}

func (v *v1Source) objects(need map[string]bool, got func(string, io.Reader) error) error {
	hashes := slices.Sorted(maps.Keys(need))
	return remoteParallel(v.ctx, len(hashes), func(ctx context.Context, i int) error {
		h := hashes[i]
		resp, err := v.r.do(ctx, http.MethodGet, "/blobs/object/"+h, nil, nil, 0)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%s holds no object %s", v.r.base, h)
		}
		if resp.StatusCode != http.StatusOK {
			return v.r.statusError("fetching object "+h, resp)
		}
		// Nothing says how big an object is until it has all come: a
		// server that sends too much is cut off at the limit, not when
		// the disk is full.
		if resp.ContentLength > v.r.maxObj {
			return remoteTooBig("object "+h+" on "+v.r.base, v.r.maxObj)
		}
		body := &limitReader{r: resp.Body, max: v.r.maxObj, over: func() error { return remoteTooBig("object "+h, v.r.maxObj) }}
		if err := got(h, v.prog.reader(body)); err != nil {
			return fmt.Errorf("%v (from %s)", err, v.r.base)
		}
		return nil
	})
}

// remoteTooBig refuses an object larger than a pull accepts.
func remoteTooBig(what string, limit int64) error {
	return fmt.Errorf("%s is larger than %s, the most a pull accepts (--max-object-size); refusing it", what, humanBytes(limit))
}

// limitReader fails, with the error over gives, once more than max
// bytes come through it.
type limitReader struct {
	r      io.Reader
	n, max int64
	over   func() error
}

func (l *limitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p[:min(int64(len(p)), l.max-l.n+1)])
	if l.n += int64(n); l.n > l.max {
		return 0, l.over()
	}
	return n, err
}

// remoteContext is cancelled by SIGINT or SIGTERM: a transfer stops, and
// a pull rolls back what it wrote.
func remoteContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func cmdPush(c *cli) error {
	tag := c.flag("tag")
	if c.has("tag") {
		if _, _, err := splitRemoteTag(tag); err != nil {
			return err
		}
	}
	rs, err := c.remoteSettings()
	if err != nil {
		return err
	}
	rem, err := openRemote(rs)
	if err != nil {
		return err
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	ctx, stop := remoteContext()
	defer stop()
	res, err := e.push(ctx, c.args[0], rem, rs.url, tag)
	if err != nil {
		return err
	}
	return c.report(res, func() string {
		to := rs.url
		if tag != "" {
			to += " as " + tag
		}
		return fmt.Sprintf("pushed %s to %s: %d blob(s) uploaded (%s), %d already there, in %.1fs",
			res.ShortID, to, res.BlobsUploaded, humanBytes(res.BytesUploaded), res.BlobsSkipped, res.Seconds)
	})
}

// push sends an environment to a remote: the blobs it lacks of the
// environment's closure, under the store's shared lock (nothing it sends
// can be collected meanwhile), then tag, when given.
func (e *engine) push(ctx context.Context, ref string, rem remoteStore, url, tag string) (*pushResult, error) {
	sl, err := e.s.lockShared("push")
	if err != nil {
		return nil, err
	}
	defer sl.unlock()
	m, err := e.findEnv(ref)
	if err != nil {
		return nil, err
	}
	cl, err := e.s.closureOf(m)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res := &pushResult{EnvID: m.EnvID, ShortID: m.ShortID, Remote: url, Tag: tag}
	if err := rem.push(ctx, e.s, cl, tag, res); err != nil {
		return nil, err
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// pullResult is what pull reports (its --json, with stable names).
type pullResult struct {
	EnvID           string  `json:"env_id"`
	ShortID         string  `json:"short_id"`
	Name            string  `json:"name,omitempty"`
	Remote          string  `json:"remote"`
	Ref             string  `json:"ref"`
	AlreadyPresent  bool    `json:"already_present"`
	BlobsDownloaded int     `json:"blobs_downloaded"`
	BlobsSkipped    int     `json:"blobs_skipped"`
	BytesDownloaded int64   `json:"bytes_downloaded"`
	Seconds         float64 `json:"seconds"`
}

// pull receives an environment from a remote by name@tag or env_id,
// every blob checked before it enters the store.
func (e *engine) pull(ctx context.Context, ref string, rem remoteStore, url, name string) (*pullResult, *receiveResult, error) {
	start := time.Now()
	prog := e.out.progress("pulling "+ref, 0, true)
	src, err := rem.source(ctx, ref, prog)
	if err != nil {
		prog.finish()
		return nil, nil, err
	}
	r, err := e.receive(src, receiveOptions{kind: "pull", name: name})
	prog.finish()
	if err != nil {
		return nil, nil, err
	}
	return &pullResult{EnvID: r.EnvID, ShortID: r.ShortID, Name: r.Name, Remote: url, Ref: ref, AlreadyPresent: r.AlreadyPresent,
		BlobsDownloaded: r.Received, BlobsSkipped: r.Skipped, BytesDownloaded: r.Bytes, Seconds: time.Since(start).Seconds()}, r, nil
}

func cmdPull(c *cli) error {
	rs, err := c.remoteSettings()
	if err != nil {
		return err
	}
	rem, err := openRemote(rs)
	if err != nil {
		return err
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	ctx, stop := remoteContext()
	defer stop()
	res, r, err := e.pull(ctx, c.args[0], rem, rs.url, c.flag("name"))
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, res)
	}
	name := ""
	if r.Name != "" {
		name = " (" + r.Name + ")"
	}
	if r.AlreadyPresent {
		fmt.Fprintf(c.stderr, "%s%s is already in the store\n", r.ShortID, name)
	} else {
		fmt.Fprintf(c.stderr, "pulled %s%s from %s: %d blob(s) (%s), %d already here, in %.1fs\n",
			r.ShortID, name, rs.url, r.Received, humanBytes(r.Bytes), r.Skipped, res.Seconds)
	}
	fmt.Fprintln(c.stdout, r.EnvID)
	return nil
}
