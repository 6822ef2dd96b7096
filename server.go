package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The reference remote server speaks protocol v1 over HTTP or HTTPS:
//
//	HEAD, GET, PUT /blobs/KIND/HASH   KIND is object, layer or metadata;
//	                                  HASH is 64 lowercase hex digits (the
//	                                  env_id for metadata). Anything else: 400.
//	GET, PUT       /registry          {"NAME@TAG": "ENV_ID", ...}
//	GET            /list              {"environments": [{env_id, short_id,
//	                                  name, state, updated_at, tags}, ...]}
//
// An upload is streamed into a temporary file while it is hashed and
// becomes visible by an atomic rename only if it checks out: an object
// must hash (blake3) to its name, a layer manifest must be canonical and
// hash to its name, metadata must carry a valid checksum and its own
// env_id. Otherwise 400 and nothing is kept. A layer whose objects or
// parent the server lacks, metadata whose layers or objects it lacks, and
// a tag naming an environment it lacks are refused with 409: the server
// never holds a reference to nothing, so clients send metadata last. A
// blob the server has is answered 200 and not rewritten (201 when stored);
// metadata alone may be replaced by a newer version of the environment,
// but only one that names the same layers: an env_id's layers are fixed
// once stored, and metadata naming others is refused with 409 (which
// names the layers that differ). Tags stay movable.
// ETag: the hash for objects and layers, the blake3 of the file for
// metadata and the registry. PUT /registry honours If-Match (412 when the
// registry changed since it was read), so two pushes cannot lose a tag.
//
// Limits: --max-blob-size per object; --max-uploads uploads and registry
// writes at once (more wait a while, then 503); every read of a request
// body and every write of a response must make progress within
// --io-timeout, or the connection is dropped; an upload holding a slot
// must send --min-upload-rate bytes a second, measured over 10 s, or it
// is dropped (408); an address holding --max-client-conns connections
// has its next one closed at once.
//
// Authentication: "Authorization: Bearer TOKEN" with a token from the
// token file (one "TOKEN rw" or "TOKEN ro" a line); every request needs
// one, PUT needs rw. 401 with WWW-Authenticate without a valid token, 403
// for a read-only token writing, both before any of the body is read
// (the connection then closes). The data directory is a karapace store
// (the server holds its lock while it runs); the registry is
// DIR/registry.json.

const (
	serverDefaultMaxBlob     = 16 << 30
	serverDefaultMaxUploads  = 16
	serverDefaultIOTimeout   = 2 * time.Minute // per read or write of a body, not per body
	serverDefaultClientConns = 64              // connections one client address may hold open
	serverDefaultMinRate     = 4 << 10         // bytes a second an upload must keep up
	serverRateWindow         = 10 * time.Second
	serverUploadWait         = 30 * time.Second
	serverMinTokenLen        = 16
)

type serverToken struct {
	sum   [32]byte
	write bool
}

// kpServer serves one data directory.
type kpServer struct {
	s       *store
	out     *output
	tokens  []serverToken
	noAuth  bool
	maxBlob int64
	uploads chan struct{} // a slot per upload in progress, registry writes included
	wait    time.Duration // how long an upload waits for a slot before 503
	io      time.Duration // how long one read or write of a connection may take
	minRate int64         // bytes a second an upload holding a slot must send (0: any)
	window  time.Duration // over which the rate is measured
	regMu   sync.Mutex
	metaMu  sync.Mutex // metadata writes, one at a time
}

// loadServerTokens reads a token file; a bad line stops the server.
func loadServerTokens(path string, out *output) ([]serverToken, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the token file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		out.warnf("token file %s may be read by other users; run 'chmod 600 %s'", path, path)
	}
	var toks []serverToken
	seen := map[[32]byte]bool{}
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 || (fields[1] != "rw" && fields[1] != "ro") {
			return nil, fmt.Errorf("token file %s, line %d: expected \"TOKEN rw\" or \"TOKEN ro\"", path, n)
		}
		if len(fields[0]) < serverMinTokenLen {
			return nil, fmt.Errorf("token file %s, line %d: the token is shorter than %d characters", path, n, serverMinTokenLen)
		}
		sum := sha256.Sum256([]byte(fields[0]))
		if seen[sum] {
			return nil, fmt.Errorf("token file %s, line %d: the token appears twice", path, n)
		}
		seen[sum] = true
		toks = append(toks, serverToken{sum, fields[1] == "rw"})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the token file %s: %w", path, err)
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("token file %s holds no token", path)
	}
	return toks, nil
}

func (k *kpServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blobs/{kind}/{hash}", k.getBlob) // and HEAD
	mux.HandleFunc("PUT /blobs/{kind}/{hash}", k.putBlob)
	mux.HandleFunc("GET /registry", k.getRegistry)
	mux.HandleFunc("PUT /registry", k.putRegistry)
	mux.HandleFunc("GET /list", k.list)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Deadlines are per read and per write, not per request: a
		// client that stalls is dropped, a slow one that keeps going is
		// served. A connection keeps its deadlines from one request to
		// the next, so each request starts its own: every read of a body
		// (whoever reads it: a handler, or net/http discarding what one
		// left) has k.io, writes have what the handler sets.
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Time{})
		if r.Body != http.NoBody {
			rc.SetReadDeadline(time.Now().Add(k.io))
			r.Body = serverBody{r.Body, rc, k.io}
		}
		if k.authorize(w, r) {
			mux.ServeHTTP(w, r)
		}
	})
}

// serverBody refreshes the read deadline before every read of a body.
type serverBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
}

func (b serverBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	return b.ReadCloser.Read(p)
}

// writeDeadline gives the response's next writes k.io: a client that
// stops reading is dropped.
func (k *kpServer) writeDeadline(w http.ResponseWriter) {
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(k.io))
}

// fail answers with an error. A request with a body gets its answer at
// once and its connection closes, what is left of the body unread:
// net/http would otherwise read up to 256 KiB of it, before answering
// and after, for a client that sends it as slowly as it likes.
func (k *kpServer) fail(w http.ResponseWriter, r *http.Request, code int, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	k.out.debugf("server: %s %s: %d %s", r.Method, r.URL.Path, code, msg)
	k.writeDeadline(w)
	if r.Body != http.NoBody {
		w.Header().Set("Connection", "close")
		http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	http.Error(w, msg, code)
}

// authorize checks the bearer token in constant time: every token is
// compared, whichever matches.
func (k *kpServer) authorize(w http.ResponseWriter, r *http.Request) bool {
	if k.noAuth {
		return true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="karapace"`)
		k.fail(w, r, http.StatusUnauthorized, "authentication required: send Authorization: Bearer TOKEN")
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	found, canWrite := 0, 0
	for _, t := range k.tokens {
		eq := subtle.ConstantTimeCompare(sum[:], t.sum[:])
		found |= eq
		if t.write {
			canWrite |= eq
		}
	}
	if found == 0 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="karapace", error="invalid_token"`)
		k.fail(w, r, http.StatusUnauthorized, "invalid token")
		return false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && canWrite == 0 {
		k.fail(w, r, http.StatusForbidden, "this token is read-only")
		return false
	}
	return true
}

// blobPath maps a blob name to its file; nothing but a known kind and 64
// hex digits gets through, so no name leaves the data directory.
func (k *kpServer) blobPath(kind, hash string) (string, bool) {
	if !validStoreHash(hash) {
		return "", false
	}
	switch kind {
	case blobObject:
		return k.s.path("objects", hash), true
	case blobLayer:
		return k.s.path("layers", hash), true
	case blobMetadata:
		return k.s.path("metadata", hash), true
	}
	return "", false
}

const serverBadName = "invalid blob name: expected /blobs/object|layer|metadata/HASH with 64 lowercase hex digits"

func (k *kpServer) getBlob(w http.ResponseWriter, r *http.Request) {
	kind, hash := r.PathValue("kind"), r.PathValue("hash")
	p, ok := k.blobPath(kind, hash)
	if !ok {
		k.fail(w, r, http.StatusBadRequest, serverBadName)
		return
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			k.fail(w, r, http.StatusNotFound, "no %s %s", kind, hash)
		} else {
			k.fail(w, r, http.StatusInternalServerError, "opening %s %s failed", kind, hash)
			k.out.warnf("server: %v", err)
		}
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		k.fail(w, r, http.StatusNotFound, "no %s %s", kind, hash)
		return
	}
	k.writeDeadline(w)
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
	if kind == blobMetadata {
		b, err := io.ReadAll(io.LimitReader(f, remoteMaxMeta+1))
		if err != nil {
			k.fail(w, r, http.StatusInternalServerError, "reading metadata %s failed", hash)
			return
		}
		h.Set("Content-Length", strconv.Itoa(len(b)))
		h.Set("ETag", `"`+storeBlake3Hex(b)+`"`)
		if r.Method != http.MethodHead {
			w.Write(b)
		}
		return
	}
	h.Set("ETag", `"`+hash+`"`)
	if r.Method == http.MethodHead {
		return
	}
	// In chunks, each with its own deadline: a client that stops reading
	// is dropped, a slow one that keeps reading is not.
	for {
		if _, err := io.CopyN(w, f, 8<<20); err != nil {
			return
		}
		k.writeDeadline(w)
	}
}

// keepingUp fails an upload body that sends less than k.minRate bytes a
// second over a span of k.window: it holds an upload slot, which a few
// slow clients would otherwise keep from everyone else.
func (k *kpServer) keepingUp(r io.Reader) io.Reader {
	if k.minRate <= 0 {
		return r
	}
	return &serverRateReader{r: r, min: k.minRate, window: k.window, start: time.Now()}
}

type serverRateReader struct {
	r      io.Reader
	min    int64
	window time.Duration
	start  time.Time
	n      int64 // bytes since start
}

// serverSlowUpload is an upload dropped for its rate.
type serverSlowUpload struct {
	n    int64
	took time.Duration
	min  int64
}

func (e *serverSlowUpload) Error() string {
	return fmt.Sprintf("%d bytes in %s, slower than the %s a second an upload must keep up; dropped", e.n, e.took.Round(time.Millisecond), humanBytes(e.min))
}

func (s *serverRateReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if took := time.Since(s.start); took >= s.window {
		if float64(s.n) < float64(s.min)*took.Seconds() {
			return n, &serverSlowUpload{s.n, took, s.min}
		}
		s.start, s.n = time.Now(), 0
	}
	return n, err
}

// serverConnLimit closes a new connection from an address that holds
// max open already: one client cannot take every connection the server
// can keep.
type serverConnLimit struct {
	net.Listener
	out  *output
	max  int
	mu   sync.Mutex
	open map[string]int
}

func (l *serverConnLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.mu.Lock()
		ok := l.open[host] < l.max
		if ok {
			l.open[host]++
		}
		l.mu.Unlock()
		if ok {
			return &serverConn{Conn: c, l: l, host: host}, nil
		}
		l.out.debugf("server: %s holds %d connections already; closing a new one", host, l.max)
		c.Close()
	}
}

// serverConn gives its place back to its limit when it closes.
type serverConn struct {
	net.Conn
	l    *serverConnLimit
	host string
	once sync.Once
}

func (c *serverConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.open[c.host]--; c.l.open[c.host] == 0 {
			delete(c.l.open, c.host)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// slot waits for an upload slot; false (and 503, or nothing for a client
// that went away) when none came free in k.wait. release gives it back.
func (k *kpServer) slot(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	t := time.NewTimer(k.wait)
	defer t.Stop()
	select {
	case k.uploads <- struct{}{}:
		return func() { <-k.uploads }, true
	case <-t.C:
		w.Header().Set("Retry-After", "2")
		k.fail(w, r, http.StatusServiceUnavailable, "too many uploads at once; try again")
	case <-r.Context().Done():
	}
	return nil, false
}

func (k *kpServer) putBlob(w http.ResponseWriter, r *http.Request) {
	kind, hash := r.PathValue("kind"), r.PathValue("hash")
	if _, ok := k.blobPath(kind, hash); !ok {
		k.fail(w, r, http.StatusBadRequest, serverBadName)
		return
	}
	limit := k.maxBlob
	switch kind {
	case blobLayer:
		limit = maxLayerFile
	case blobMetadata:
		limit = remoteMaxMeta
	}
	if r.ContentLength > limit {
		k.fail(w, r, http.StatusRequestEntityTooLarge, "%s %s: %d bytes is more than the limit of %d", kind, hash, r.ContentLength, limit)
		return
	}
	if kind == blobObject && k.s.hasObject(hash) {
		w.WriteHeader(http.StatusOK) // the body is left unread: nothing to do with it
		return
	}
	release, ok := k.slot(w, r)
	if !ok {
		return
	}
	defer release()
	body := k.keepingUp(http.MaxBytesReader(w, r.Body, limit))
	switch kind {
	case blobObject:
		k.putObject(w, r, hash, body)
	default:
		k.putSmall(w, r, kind, hash, body)
	}
}

func (k *kpServer) readError(w http.ResponseWriter, r *http.Request, what string, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		k.fail(w, r, http.StatusRequestEntityTooLarge, "%s: more than the limit of %d bytes", what, tooBig.Limit)
		return
	}
	var slow *serverSlowUpload
	if errors.As(err, &slow) {
		k.fail(w, r, http.StatusRequestTimeout, "%s: %v", what, err)
		return
	}
	k.fail(w, r, http.StatusBadRequest, "%s: reading the upload: %v", what, err)
}

func (k *kpServer) putObject(w http.ResponseWriter, r *http.Request, hash string, body io.Reader) {
	what := "object " + hash
	ow, err := k.s.newObjectWriter()
	if err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "%s: cannot store it", what)
		return
	}
	defer ow.abort()
	n, err := ow.ReadFrom(body)
	if err != nil {
		k.readError(w, r, what, err)
		return
	}
	got, err := ow.sum()
	if err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "%s: cannot store it", what)
		return
	}
	if got != hash {
		k.fail(w, r, http.StatusBadRequest, "%s: its %d bytes hash to %s; refused", what, n, got)
		return
	}
	existed := k.s.hasObject(hash)
	if _, _, err := ow.commit(); err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "%s: cannot store it", what)
		return
	}
	if existed {
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

// putSmall stores a layer manifest or metadata, checked whole.
func (k *kpServer) putSmall(w http.ResponseWriter, r *http.Request, kind, hash string, body io.Reader) {
	what := kind + " " + hash
	b, err := io.ReadAll(body)
	if err != nil {
		k.readError(w, r, what, err)
		return
	}
	var missing []string
	dir := "layers"
	switch kind {
	case blobLayer:
		l, err := parseLayer(hash, b)
		if err != nil {
			k.fail(w, r, http.StatusBadRequest, "%s is invalid: %v; refused", what, err)
			return
		}
		for _, o := range l.ObjectRefs {
			if !k.s.hasObject(o) {
				missing = append(missing, "object "+o)
			}
		}
		if l.Parent != "" && !k.s.hasLayer(l.Parent) {
			missing = append(missing, "layer "+l.Parent)
		}
	case blobMetadata:
		dir = "metadata"
		m, err := remoteParseMeta(hash, b)
		if err != nil {
			k.fail(w, r, http.StatusBadRequest, "%s is invalid: %v; refused", what, err)
			return
		}
		for _, l := range m.layerRefs() {
			if !k.s.hasLayer(l) {
				missing = append(missing, "layer "+l)
			}
		}
		for _, o := range m.objectRefs() {
			if !k.s.hasObject(o) {
				missing = append(missing, "object "+o)
			}
		}
	}
	if len(missing) > 0 {
		k.fail(w, r, http.StatusConflict, "%s refers to %s, which the server does not hold; upload it first", what, strings.Join(missing, ", "))
		return
	}
	if kind == blobMetadata {
		// The check and the write go together: of two pushes of one
		// env_id with other layers, one gets 409.
		k.metaMu.Lock()
		defer k.metaMu.Unlock()
		if !k.sameLayers(w, r, hash, b) {
			return
		}
	}
	if old, err := os.ReadFile(k.s.path(dir, hash)); err == nil && bytes.Equal(old, b) {
		w.WriteHeader(http.StatusOK)
		return
	}
	if _, err := k.s.writeAtomic(k.s.path(dir), hash, bytes.NewReader(b)); err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "%s: cannot store it", what)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

// sameLayers refuses (409) metadata of an environment the server holds
// with other layers: an env_id's layers never change once stored, though
// the rest of its metadata (state, name, times) may.
func (k *kpServer) sameLayers(w http.ResponseWriter, r *http.Request, envID string, b []byte) bool {
	old, err := k.s.getMeta(envID)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	if err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "metadata %s: cannot read the stored one", envID)
		return false
	}
	m, _ := remoteParseMeta(envID, b) // checked by the caller
	if d := layerDiff(layersOf(old), layersOf(m), "stored", "pushed"); d != "" {
		k.fail(w, r, http.StatusConflict, "metadata %s: the server holds environment %s with other layers, and an env_id's layers never change once stored: %s", envID, envID, d)
		return false
	}
	return true
}

func (k *kpServer) registryPath() string { return filepath.Join(k.s.root, "registry.json") }

// readRegistry returns the registry file's bytes ("{}" when there is
// none yet) and its map.
func (k *kpServer) readRegistry() ([]byte, map[string]string, error) {
	b, err := readLimited(k.registryPath(), remoteMaxDoc)
	if errors.Is(err, fs.ErrNotExist) {
		b, err = []byte("{}\n"), nil
	}
	if err != nil {
		return nil, nil, err
	}
	reg := map[string]string{}
	if err := json.Unmarshal(b, &reg); err != nil {
		return nil, nil, fmt.Errorf("registry %s is corrupt: %w", k.registryPath(), err)
	}
	return b, reg, nil
}

func (k *kpServer) getRegistry(w http.ResponseWriter, r *http.Request) {
	k.regMu.Lock()
	b, _, err := k.readRegistry()
	k.regMu.Unlock()
	if err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "cannot read the registry")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("ETag", `"`+storeBlake3Hex(b)+`"`)
	k.writeDeadline(w)
	w.Write(b)
}

func (k *kpServer) putRegistry(w http.ResponseWriter, r *http.Request) {
	release, ok := k.slot(w, r)
	if !ok {
		return
	}
	defer release()
	body, err := io.ReadAll(k.keepingUp(http.MaxBytesReader(w, r.Body, remoteMaxDoc)))
	if err != nil {
		k.readError(w, r, "registry", err)
		return
	}
	var reg map[string]string
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&reg); err != nil || dec.More() || reg == nil {
		k.fail(w, r, http.StatusBadRequest, "registry: expected one JSON object of NAME@TAG to env_id")
		return
	}
	for _, tag := range slices.Sorted(maps.Keys(reg)) {
		if _, _, err := splitRemoteTag(tag); err != nil {
			k.fail(w, r, http.StatusBadRequest, "registry: %v", err)
			return
		}
		id := reg[tag]
		if !validStoreHash(id) {
			k.fail(w, r, http.StatusBadRequest, "registry: tag %s: %q is not an env_id", tag, id)
			return
		}
		if _, err := os.Stat(k.s.path("metadata", id)); err != nil {
			k.fail(w, r, http.StatusConflict, "registry: tag %s names environment %s, which the server does not hold; push it first", tag, id)
			return
		}
	}
	k.regMu.Lock()
	defer k.regMu.Unlock()
	cur, _, err := k.readRegistry()
	if err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "cannot read the registry")
		return
	}
	etag := `"` + storeBlake3Hex(cur) + `"`
	if im := r.Header.Get("If-Match"); im != "" && im != "*" && im != etag {
		k.fail(w, r, http.StatusPreconditionFailed, "registry: changed since it was read (ETag %s, not %s); read it again", etag, im)
		return
	}
	out, _ := json.MarshalIndent(reg, "", "  ")
	out = append(out, '\n')
	if _, err := k.s.writeAtomic(k.s.root, "registry.json", bytes.NewReader(out)); err != nil {
		k.out.warnf("server: %v", err)
		k.fail(w, r, http.StatusInternalServerError, "cannot write the registry")
		return
	}
	w.Header().Set("ETag", `"`+storeBlake3Hex(out)+`"`)
	w.WriteHeader(http.StatusOK)
}

// serverList is GET /list.
type serverList struct {
	Environments []serverListEntry `json:"environments"`
}

type serverListEntry struct {
	EnvID     string   `json:"env_id"`
	ShortID   string   `json:"short_id"`
	Name      string   `json:"name,omitempty"`
	State     envState `json:"state"`
	UpdatedAt string   `json:"updated_at"`
	Tags      []string `json:"tags"`
}

func (k *kpServer) list(w http.ResponseWriter, r *http.Request) {
	metas, errs := k.s.listMeta()
	for _, err := range errs {
		k.out.warnf("server: %v", err)
	}
	k.regMu.Lock()
	_, reg, err := k.readRegistry()
	k.regMu.Unlock()
	if err != nil {
		k.out.warnf("server: %v", err)
	}
	tags := map[string][]string{}
	for t, id := range reg {
		tags[id] = append(tags[id], t)
	}
	out := serverList{Environments: []serverListEntry{}}
	for _, m := range metas {
		t := tags[m.EnvID]
		slices.Sort(t)
		if t == nil {
			t = []string{}
		}
		out.Environments = append(out.Environments, serverListEntry{m.EnvID, m.ShortID, m.Name, m.State, m.UpdatedAt, t})
	}
	w.Header().Set("Content-Type", "application/json")
	k.writeDeadline(w)
	writeJSON(w, out)
}

// serverParseSize reads 1234, 512K, 64M, 16G or 1T (binary units).
func serverParseSize(s string) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		if i := strings.IndexByte("KMGT", s[n-1]&^0x20); i >= 0 {
			mult = 1 << (10 * (i + 1))
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size like 1048576, 512M or 16G", s)
	}
	return v * mult, nil
}

// serverConfig is how cmdServer serves, besides its kpServer.
type serverConfig struct {
	listen, data string
	tls          *tls.Config // nil: plain http
	clientConns  int         // connections one address may hold open
}

// cmdServer serves a store: its settings from the flags, then the store
// taken over, then the listener, until SIGTERM or SIGINT.
func cmdServer(c *cli) error {
	k, sc, err := serverSettings(c)
	if err != nil {
		return err
	}
	sl, err := k.openData(c, sc.data)
	if err != nil {
		return err
	}
	defer sl.unlock()
	ln, url, err := serverListen(sc, c.out)
	if err != nil {
		return err
	}
	if k.noAuth {
		c.out.warnf("server: no authentication (--no-auth): anyone who can connect to %s can read and write", url)
	}
	fmt.Fprintf(c.stderr, "karapace server: serving %s on %s\n", k.s.root, url)
	fmt.Fprintln(c.stdout, url)
	return k.serve(c, ln)
}

// serverSettings reads the flags; every mistake in them is found before
// the store is touched.
func serverSettings(c *cli) (*kpServer, *serverConfig, error) {
	sc := &serverConfig{listen: c.flag("listen"), data: c.flag("data"), clientConns: serverDefaultClientConns}
	if sc.listen == "" || sc.data == "" {
		return nil, nil, usageErrorf("server: --listen ADDR and --data DIR are required")
	}
	k := &kpServer{out: c.out, noAuth: c.has("no-auth"), maxBlob: serverDefaultMaxBlob, wait: serverUploadWait, io: serverDefaultIOTimeout,
		minRate: serverDefaultMinRate, window: serverRateWindow}
	if err := k.limitFlags(c, sc); err != nil {
		return nil, nil, err
	}
	if err := k.authFlags(c); err != nil {
		return nil, nil, err
	}
	var err error
	if sc.tls, err = serverTLSFlags(c); err != nil {
		return nil, nil, err
	}
	return k, sc, nil
}

// limitFlags reads what bounds the clients: blob sizes, uploads at once,
// the I/O timeout, the upload rate and the connections of one address.
func (k *kpServer) limitFlags(c *cli, sc *serverConfig) error {
	maxUploads := serverDefaultMaxUploads
	if v := c.flag("max-blob-size"); v != "" {
		n, err := serverParseSize(v)
		if err != nil {
			return usageErrorf("--max-blob-size: %v", err)
		}
		k.maxBlob = n
	}
	if v := c.flag("max-uploads"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 4096 {
			return usageErrorf("--max-uploads %q: expected a number from 1 to 4096", v)
		}
		maxUploads = n
	}
	if v := c.flag("io-timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return usageErrorf("--io-timeout %q: expected a duration like 30s or 2m", v)
		}
		k.io = d
	}
	if v := c.flag("min-upload-rate"); v != "" {
		n, err := serverParseSize(v)
		if err != nil {
			return usageErrorf("--min-upload-rate: %v", err)
		}
		k.minRate = n
	}
	if v := c.flag("max-client-conns"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65536 {
			return usageErrorf("--max-client-conns %q: expected a number from 1 to 65536", v)
		}
		sc.clientConns = n
	}
	k.uploads = make(chan struct{}, maxUploads)
	return nil
}

// authFlags reads the token file, or --no-auth, which must be said.
func (k *kpServer) authFlags(c *cli) error {
	switch tokens := c.flag("tokens"); {
	case tokens != "" && k.noAuth:
		return usageErrorf("server: --tokens and --no-auth contradict each other")
	case tokens != "":
		var err error
		k.tokens, err = loadServerTokens(tokens, c.out)
		return err
	case !k.noAuth:
		return usageErrorf("server: refusing to serve without authentication: pass --tokens FILE (lines of \"TOKEN rw\" or \"TOKEN ro\"), or --no-auth to let anyone who can connect read and write")
	}
	return nil
}

// serverTLSFlags loads --tls-cert and --tls-key; nil without them.
func serverTLSFlags(c *cli) (*tls.Config, error) {
	cert, key := c.flag("tls-cert"), c.flag("tls-key")
	if (cert == "") != (key == "") {
		return nil, usageErrorf("server: --tls-cert and --tls-key go together")
	}
	if cert == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("loading the TLS certificate %s and key %s: %w", cert, key, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// openData opens the data directory as a store and keeps its lock while
// the server runs: uploads stream into staging, which another process's
// recovery would clear.
func (k *kpServer) openData(c *cli, data string) (*storeLock, error) {
	s, err := openStore(data)
	if err != nil {
		return nil, err
	}
	s.lockWait = storeLockWait(c.getenv, c.out)
	sl, err := s.acquire("server", s.lockWait)
	if err != nil {
		return nil, err
	}
	if _, err := s.recoverLocked(); err != nil {
		sl.unlock()
		return nil, err
	}
	if err := s.markServed(); err != nil {
		sl.unlock()
		return nil, err
	}
	k.s = s
	return sl, nil
}

// serverListen opens the listener, each address's connections bounded,
// TLS over it if configured, and returns it with the URL it serves.
func serverListen(sc *serverConfig, out *output) (net.Listener, string, error) {
	ln, err := net.Listen("tcp", sc.listen)
	if err != nil {
		return nil, "", fmt.Errorf("server: %w", err)
	}
	ln = &serverConnLimit{Listener: ln, out: out, max: sc.clientConns, open: map[string]int{}}
	scheme := "http"
	if sc.tls != nil {
		scheme = "https"
		ln = tls.NewListener(ln, sc.tls)
	}
	return ln, scheme + "://" + ln.Addr().String(), nil
}

// serve answers on ln until SIGTERM or SIGINT, then finishes the
// requests in flight.
func (k *kpServer) serve(c *cli, ln net.Listener) error {
	srv := &http.Server{
		Handler:           k.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(c.stderr, "karapace server: ", 0),
		// HTTP/1.1 only: one request a connection, deadlines per read.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	fmt.Fprintf(c.stderr, "karapace server: shutting down; finishing the requests in flight\n")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("server: shutting down: %w", err)
	}
	return nil
}
