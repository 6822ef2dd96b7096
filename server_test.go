package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	testTokenRW = "rw-token-0123456789abcdef"
	testTokenRO = "ro-token-0123456789abcdef"
)

// testRemoteEnv makes an environment in s through the store's own API:
// a base layer shared by every environment of the same baseSeed, a
// dependency layer of its own, a manifest object and the lock its env_id
// is computed from. The layers' objects are random bytes; nothing here
// runs them.
func testRemoteEnv(t testing.TB, s *store, baseSeed, seed int64, baseSize, depSize int) *envMeta {
	t.Helper()
	l, err := s.lock("test")
	if err != nil {
		t.Fatal(err)
	}
	defer l.unlock()
	put := func(seed int64, n int) string {
		h, _, err := s.putObject(io.LimitReader(rand.New(rand.NewSource(seed)), int64(n)))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	layerOf := func(kind layerKind, parent, obj string) string {
		h, err := s.putLayer(&layer{Kind: kind, Parent: parent, ObjectRefs: []string{obj}, ReadOnly: true, TarHash: obj})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	base := layerOf(layerBase, "", put(1000000+baseSeed, baseSize))
	dep := layerOf(layerDependency, base, put(seed, depSize))
	lock, id := testLock(t, seed)
	lh, _, err := s.putObject(bytes.NewReader(lock))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	m := &envMeta{EnvID: id, ShortID: id[:12], State: stateBuilt, ManifestHash: put(2000000+seed, 300), LockHash: lh,
		BaseLayer: base, DependencyLayers: []string{dep}, Snapshots: []string{}, CreatedAt: now, UpdatedAt: now, RefCount: 1}
	if err := s.putMeta(m); err != nil {
		t.Fatal(err)
	}
	return m
}

// testLock is a lock of its own for every seed, and its env_id.
func testLock(t testing.TB, seed int64) ([]byte, string) {
	t.Helper()
	l := &lockFile{BaseImage: "./image.tar", BaseImageDigest: "sha256:" + strings.Repeat("0", 64), Backend: "mock", Requested: []string{"pkg"},
		Packages: []lockedPackage{{"pkg", fmt.Sprint(seed)}}}
	l.EnvID, l.ShortID = l.computeID()
	b, err := l.encode()
	if err != nil {
		t.Fatal(err)
	}
	return b, l.EnvID
}

// newTestKP makes a server of a fresh store, holding its lock until the
// test ends.
func newTestKP(t *testing.T, maxUploads int) *kpServer {
	t.Helper()
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.acquire("server", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.unlock)
	must(t, s.markServed())
	return &kpServer{s: s, maxBlob: 1 << 20, uploads: make(chan struct{}, maxUploads), wait: 300 * time.Millisecond, io: time.Minute,
		tokens: []serverToken{{sha256.Sum256([]byte(testTokenRW)), true}, {sha256.Sum256([]byte(testTokenRO)), false}}}
}

// newTestKPServer serves a fresh store in-process.
func newTestKPServer(t *testing.T, maxUploads int) (*kpServer, *httptest.Server) {
	t.Helper()
	k := newTestKP(t, maxUploads)
	ts := httptest.NewServer(k.handler())
	t.Cleanup(ts.Close)
	return k, ts
}

type serverReq struct {
	method, path, token string
	body                io.Reader
	hdr                 map[string]string
}

func (r serverReq) do(t *testing.T, base string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(r.method, base+r.path, r.body)
	if err != nil {
		t.Fatal(err)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range r.hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func serverExpect(t *testing.T, base string, r serverReq, code int, want string) *http.Response {
	t.Helper()
	resp, body := r.do(t, base)
	if resp.StatusCode != code || !strings.Contains(body, want) {
		t.Fatalf("%s %s: %d %q, want %d with %q", r.method, r.path, resp.StatusCode, body, code, want)
	}
	return resp
}

// serverRawExpect sends req in one write and reads the answer.
func serverRawExpect(t *testing.T, base, req string, code int, want string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	c.Write([]byte(req)) // the server may close before the last bytes: its answer is what counts
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%.40q: %v", req, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code || !strings.Contains(string(body), want) {
		t.Fatalf("%.40q: %d %q, want %d with %q", req, resp.StatusCode, body, code, want)
	}
}

func TestServerTokenFile(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good", "# team tokens\n\n"+testTokenRW+" rw\n  "+testTokenRO+"   ro  \n")
	os.Chmod(good, 0o600)
	toks, err := loadServerTokens(good, nil)
	if err != nil || len(toks) != 2 || !toks[0].write || toks[1].write {
		t.Fatalf("tokens: %v %+v", err, toks)
	}
	for _, c := range []struct{ body, want string }{
		{testTokenRW + " rw\n" + testTokenRO + " admin\n", "line 2: expected"},
		{"# c\n" + testTokenRW + "\n", "line 2: expected"},
		{"short rw\n", "line 1: the token is shorter than 16"},
		{testTokenRW + " rw\n" + testTokenRW + " ro\n", "line 2: the token appears twice"},
		{"# nothing\n", "holds no token"},
	} {
		p := writeFile(t, dir, "bad", c.body)
		if _, err := loadServerTokens(p, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.body, err, c.want)
		}
	}
}

func TestServerProtocol(t *testing.T) {
	k, ts := newTestKPServer(t, 4)
	u := ts.URL
	data := []byte("hello, remote\n")
	h := storeBlake3Hex(data)
	objPath := "/blobs/object/" + h

	// Authentication: none, wrong, read-only writing.
	resp := serverExpect(t, u, serverReq{method: "GET", path: "/list"}, 401, "authentication required")
	if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
		t.Fatalf("WWW-Authenticate: %q", resp.Header.Get("WWW-Authenticate"))
	}
	serverExpect(t, u, serverReq{method: "PUT", path: objPath, token: testTokenRW + "x", body: bytes.NewReader(data)}, 401, "invalid token")
	serverExpect(t, u, serverReq{method: "PUT", path: objPath, token: testTokenRO, body: bytes.NewReader(data)}, 403, "read-only")
	serverExpect(t, u, serverReq{method: "GET", path: objPath, token: testTokenRO}, 404, "no object")

	// Names: a known kind and 64 lowercase hex digits, nothing else.
	for _, p := range []string{"/blobs/tree/" + h, "/blobs/object/" + strings.ToUpper(h), "/blobs/object/" + h[:63], "/blobs/object/%2e%2e%2fversion", "/blobs/metadata/..%2f..%2fx"} {
		serverExpect(t, u, serverReq{method: "PUT", path: p, token: testTokenRW, body: bytes.NewReader(data)}, 400, "invalid blob name")
		serverExpect(t, u, serverReq{method: "GET", path: p, token: testTokenRW}, 400, "invalid blob name")
	}

	// Content that does not hash to its name is refused and not kept.
	other := storeBlake3Hex([]byte("something else"))
	serverExpect(t, u, serverReq{method: "PUT", path: "/blobs/object/" + other, token: testTokenRW, body: bytes.NewReader(data)}, 400, "hash to "+h)
	if n := dirNames(t, k.s.path("objects")); len(n) != 0 {
		t.Fatalf("a refused upload left %v", n)
	}
	serverExpect(t, u, serverReq{method: "PUT", path: objPath, token: testTokenRW, body: bytes.NewReader(data)}, 201, "")
	serverExpect(t, u, serverReq{method: "PUT", path: objPath, token: testTokenRW, body: bytes.NewReader(data)}, 200, "")
	resp = serverExpect(t, u, serverReq{method: "HEAD", path: objPath, token: testTokenRO}, 200, "")
	if resp.Header.Get("ETag") != `"`+h+`"` || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD: %v", resp.Header)
	}
	serverExpect(t, u, serverReq{method: "GET", path: objPath, token: testTokenRO}, 200, string(data))
	serverExpect(t, u, serverReq{method: "DELETE", path: objPath, token: testTokenRW}, 405, "")

	// Size limits: by Content-Length, and for a body without one.
	big := bytes.Repeat([]byte("x"), 1<<20+1)
	bh := storeBlake3Hex(big)
	// Written on a connection of our own: a refusing server closes it
	// with the body unread, and a client still writing would see the reset
	// instead of the answer.
	head := "PUT /blobs/object/" + bh + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testTokenRW + "\r\n"
	serverRawExpect(t, u, head+fmt.Sprintf("Content-Length: %d\r\n\r\n", len(big)), 413, "limit")
	serverRawExpect(t, u, head+fmt.Sprintf("Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(big), big), 413, "limit")
	if n := dirNames(t, k.s.path("objects")); len(n) != 1 || len(dirNames(t, k.s.path("staging"))) != 0 {
		t.Fatalf("objects %v, staging %v", n, dirNames(t, k.s.path("staging")))
	}

	// Layers and metadata: checked whole, references first.
	src, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := testRemoteEnv(t, src, 1, 1, 5000, 3000)
	cl, err := src.closureOf(m)
	if err != nil {
		t.Fatal(err)
	}
	base, dep := cl.layers[0], cl.layers[1]
	if dep.Parent != base.Hash || len(cl.objects) != 4 {
		t.Fatalf("closure: %+v %+v", cl.layers, cl.objects)
	}
	put := func(kind, hash string, b []byte, code int, want string) {
		t.Helper()
		serverExpect(t, u, serverReq{method: "PUT", path: "/blobs/" + kind + "/" + hash, token: testTokenRW, body: bytes.NewReader(b)}, code, want)
	}
	put(blobMetadata, m.EnvID, cl.wire, 409, "which the server does not hold")
	put(blobLayer, base.Hash, base.fileBytes(), 409, "object "+base.TarHash)
	for _, o := range cl.objects {
		rc, _ := src.openObject(o.Hash)
		b, _ := io.ReadAll(rc)
		rc.Close()
		put(blobObject, o.Hash, b, 201, "")
	}
	put(blobLayer, dep.Hash, dep.fileBytes(), 409, "layer "+base.Hash)
	put(blobLayer, base.Hash, bytes.Replace(base.fileBytes(), []byte(`"read_only":true`), []byte(`"read_only":false`), 1), 400, "hashes to")
	put(blobLayer, base.Hash, append(base.fileBytes(), ' '), 400, "not in canonical form")
	put(blobLayer, base.Hash, base.fileBytes(), 201, "")
	put(blobLayer, dep.Hash, dep.fileBytes(), 201, "")
	put(blobMetadata, m.EnvID, bytes.Replace(cl.wire, []byte(`"built"`), []byte(`"frozen"`), 1), 400, "checksum mismatch")
	put(blobMetadata, strings.Repeat("0", 64), cl.wire, 400, "is the metadata of")
	put(blobMetadata, m.EnvID, cl.wire, 201, "")
	put(blobMetadata, m.EnvID, cl.wire, 200, "")
	resp = serverExpect(t, u, serverReq{method: "HEAD", path: "/blobs/metadata/" + m.EnvID, token: testTokenRO}, 200, "")
	if resp.Header.Get("ETag") != `"`+storeBlake3Hex(cl.wire)+`"` {
		t.Fatalf("metadata ETag %q", resp.Header.Get("ETag"))
	}
	if rep, err := k.s.verifyLocked(t.Context()); err != nil || len(rep.Bad) != 0 || rep.Metadata != 1 {
		t.Fatalf("server store: %v %+v", err, rep)
	}

	// The registry: validated, and If-Match keeps two writers from losing a tag.
	resp = serverExpect(t, u, serverReq{method: "GET", path: "/registry", token: testTokenRO}, 200, "{}")
	etag := resp.Header.Get("ETag")
	reg := func(body, match string, code int, want string) *http.Response {
		t.Helper()
		r := serverReq{method: "PUT", path: "/registry", token: testTokenRW, body: strings.NewReader(body), hdr: map[string]string{}}
		if match != "" {
			r.hdr["If-Match"] = match
		}
		return serverExpect(t, u, r, code, want)
	}
	reg(`{"demo@v1": "`+strings.Repeat("1", 64)+`"}`, etag, 409, "does not hold")
	reg(`{"bad name@v1": "`+m.EnvID+`"}`, etag, 400, "invalid environment name")
	reg(`{"demo@.v1": "`+m.EnvID+`"}`, etag, 400, "after @")
	reg(`["demo@v1"]`, etag, 400, "expected one JSON object")
	resp = reg(`{"demo@v1": "`+m.EnvID+`"}`, etag, 200, "")
	reg(`{"demo@v2": "`+m.EnvID+`"}`, etag, 412, "changed since it was read")
	reg(`{"demo@v1": "`+m.EnvID+`", "demo@v2": "`+m.EnvID+`"}`, resp.Header.Get("ETag"), 200, "")
	serverExpect(t, u, serverReq{method: "GET", path: "/list", token: testTokenRO}, 200, `"demo@v1",`)
	if b, _ := os.ReadFile(filepath.Join(k.s.root, "registry.json")); !strings.Contains(string(b), `"demo@v2": "`+m.EnvID) {
		t.Fatalf("registry.json: %s", b)
	}
}

// Uploads and registry writes beyond the limit wait for a slot, then get
// 503 with Retry-After.
func TestServerUploadSlots(t *testing.T) {
	k, ts := newTestKPServer(t, 1)
	pr, pw := io.Pipe()
	data := bytes.Repeat([]byte("y"), 64<<10)
	done := make(chan int)
	go func() {
		req, _ := http.NewRequest("PUT", ts.URL+"/blobs/object/"+storeBlake3Hex(data), pr)
		req.ContentLength = int64(len(data))
		req.Header.Set("Authorization", "Bearer "+testTokenRW)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	pw.Write(data[:1000])
	for len(k.uploads) == 0 { // until the upload holds the only slot
		time.Sleep(time.Millisecond)
	}
	small := []byte("small")
	resp := serverExpect(t, ts.URL, serverReq{method: "PUT", path: "/blobs/object/" + storeBlake3Hex(small), token: testTokenRW, body: bytes.NewReader(small)}, 503, "too many uploads")
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	serverExpect(t, ts.URL, serverReq{method: "PUT", path: "/registry", token: testTokenRW, body: strings.NewReader("{}")}, 503, "too many uploads")
	pw.Write(data[1000:])
	pw.Close()
	if code := <-done; code != 201 {
		t.Fatalf("the first upload: %d", code)
	}
	serverExpect(t, ts.URL, serverReq{method: "PUT", path: "/blobs/object/" + storeBlake3Hex(small), token: testTokenRW, body: bytes.NewReader(small)}, 201, "")
}

func TestServerParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1048576": 1 << 20, "512K": 512 << 10, "64M": 64 << 20, "16G": 16 << 30, "2t": 2 << 40} {
		if got, err := serverParseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0", "-1", "1.5G", "G", "12X", "99999999999T"} {
		if _, err := serverParseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// serverTCPState is the state of the TCP socket from local to remote as
// /proc/net/tcp tells it ("01" is established), or "" without one.
func serverTCPState(t *testing.T, local, remote net.Addr) string {
	t.Helper()
	hexAddr := func(a net.Addr) string {
		ta := a.(*net.TCPAddr)
		return fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ta.IP.To4()), ta.Port)
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	l, r := hexAddr(local), hexAddr(remote)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[1] == l && f[2] == r {
			return f[3]
		}
	}
	return ""
}

// A client that stalls, sending or reading, is dropped after --io-timeout
// whatever it asked for; one that keeps going slowly is served.
func TestServerIOTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	data := filepath.Join(t.TempDir(), "data")
	// A registry too big for the socket buffers, so a client that does
	// not read it keeps the server writing.
	var reg bytes.Buffer
	reg.WriteString("{")
	for i := 0; i < 150000; i++ {
		fmt.Fprintf(&reg, "%q: %q,\n", fmt.Sprintf("env%d@v1", i), storeBlake3Hex([]byte(strconv.Itoa(i))))
	}
	reg.WriteString(`"last@v1": "` + strings.Repeat("0", 64) + `"}`)
	writeFile(t, data, "registry.json", reg.String())
	srv := startRemoteServer(t, data, "--no-auth", "--io-timeout", timeout.String())
	addr := strings.TrimPrefix(srv.url, "http://")
	obj := []byte("an object the server has")
	serverExpect(t, srv.url, serverReq{method: "PUT", path: "/blobs/object/" + storeBlake3Hex(obj), body: bytes.NewReader(obj)}, 201, "")

	// Requests whose bodies stop coming: those that need the body fail,
	// those that do not are answered; either way the connection closes.
	// The deadline on reading the answer only keeps a broken server from
	// hanging the test.
	stalled := []struct {
		name, req string
		needsBody bool
	}{
		{"registry", "PUT /registry HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"demo", true},
		{"new object", "PUT /blobs/object/" + strings.Repeat("a", 64) + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", true},
		{"metadata", "PUT /blobs/metadata/" + strings.Repeat("b", 64) + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", true},
		{"existing object", "PUT /blobs/object/" + storeBlake3Hex(obj) + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", false},
		{"list with a body", "GET /list HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", false},
	}
	var wg sync.WaitGroup
	for _, c := range stalled {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			io.WriteString(conn, c.req)
			conn.SetReadDeadline(time.Now().Add(30 * timeout))
			answer, err := io.ReadAll(conn)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("%s: the server kept a stalled request open (answered %q)", c.name, answer)
			} else if c.needsBody && strings.HasPrefix(string(answer), "HTTP/1.1 2") {
				t.Errorf("%s: a stalled request succeeded: %q", c.name, answer)
			}
		}()
	}

	// A client that stops reading a response.
	wg.Add(1)
	go func() {
		defer wg.Done()
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		io.WriteString(conn, "GET /registry HTTP/1.1\r\nHost: x\r\n\r\n")
		// The server's end of the connection is closed once its write
		// timed out, with most of the registry unsent.
		for deadline := time.Now().Add(30 * timeout); serverTCPState(t, conn.RemoteAddr(), conn.LocalAddr()) == "01"; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("the server kept writing to a client that does not read")
				return
			}
		}
		got, _ := io.Copy(io.Discard, conn)
		if got >= int64(reg.Len()) {
			t.Errorf("a client that did not read got all %d bytes", got)
		}
	}()

	// A slow client that keeps sending is not dropped, though the whole
	// request takes longer than the timeout.
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("{"))
		for i := 0; i < 10; i++ {
			time.Sleep(timeout / 6)
			pw.Write([]byte(" "))
		}
		pw.Write([]byte("}"))
		pw.Close()
	}()
	req, _ := http.NewRequest("PUT", srv.url+"/registry", pr)
	req.ContentLength = 12
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("a slow client: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("a slow client: %s", resp.Status)
	}
	wg.Wait()
}

// A request without valid credentials, or a read-only token writing, is
// answered before any of its body is read, and the connection closes:
// a client cannot make the server wait for a body it will refuse.
func TestServerRefusesBeforeBody(t *testing.T) {
	dir := t.TempDir()
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir), "--io-timeout", "1h")
	addr := strings.TrimPrefix(srv.url, "http://")
	put := "PUT /blobs/object/" + strings.Repeat("a", 64) + " HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
	for _, c := range []struct{ name, req, want string }{
		{"no token", put + "\r\n", "HTTP/1.1 401 "},
		{"wrong token", put + "Authorization: Bearer " + testTokenRW + "x\r\n\r\n", "HTTP/1.1 401 "},
		{"read-only token", put + "Authorization: Bearer " + testTokenRO + "\r\n\r\n", "HTTP/1.1 403 "},
		{"expecting 100-continue", put + "Expect: 100-continue\r\n\r\n", "HTTP/1.1 401 "},
		{"registry", "PUT /registry HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", "HTTP/1.1 401 "},
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, c.req) // and not a byte of the body
		// The deadline only keeps a server that waits for the body (an
		// hour) from hanging the test.
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		answer, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: the server kept the connection open waiting (%v), having answered %q", c.name, err, answer)
		}
		if !strings.HasPrefix(string(answer), c.want) || strings.Contains(string(answer), "100 Continue") {
			t.Fatalf("%s: answered %q", c.name, answer)
		}
	}
	if names := dirNames(t, filepath.Join(srv.data, "store", "staging")); len(names) != 0 {
		t.Fatalf("staging holds %v", names)
	}
	if code := srv.stop(); code != 0 {
		t.Fatalf("server exit %d", code)
	}
	k := newKP(t)
	var rep verifyReport
	k.jsonOut(&rep, "--store", srv.data, "verify-store")
	if len(rep.Bad) != 0 || rep.Objects != 0 {
		t.Fatalf("the server's store: %+v", rep)
	}
}

// One address may hold --max-client-conns connections; the next one is
// closed at once, until one of them closes. Other addresses are served.
func TestServerClientConns(t *testing.T) {
	srv := startRemoteServer(t, filepath.Join(t.TempDir(), "data"), "--no-auth", "--max-client-conns", "3")
	addr := strings.TrimPrefix(srv.url, "http://")
	const list = "GET /list HTTP/1.1\r\nHost: x\r\n"
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	answer := func(conn net.Conn) string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		status, _ := bufio.NewReader(conn).ReadString('\n')
		return status
	}
	var held []net.Conn
	for range 3 {
		conn := dial("127.0.0.1")
		io.WriteString(conn, list) // a request begun, not ended
		held = append(held, conn)
	}
	extra := dial("127.0.0.1")
	io.WriteString(extra, list+"\r\n")
	if got := answer(extra); got != "" {
		t.Fatalf("a fourth connection was served: %q", got)
	}
	other := dial("127.0.0.2")
	io.WriteString(other, list+"\r\n")
	if got := answer(other); !strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Fatalf("another address: %q", got)
	}
	io.WriteString(held[0], "\r\n")
	if got := answer(held[0]); !strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Fatalf("a held connection: %q", got)
	}
	held[1].Close()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		conn := dial("127.0.0.1")
		io.WriteString(conn, list+"\r\n")
		if got := answer(conn); strings.HasPrefix(got, "HTTP/1.1 200") {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("no connection was served after one of the held ones closed")
		}
	}
	k := newKP(t)
	k.fails(exitFailure, `--max-client-conns "0": expected a number`, "server", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--no-auth", "--max-client-conns", "0")
	k.fails(exitFailure, `--min-upload-rate: "slow" is not a size`, "server", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--no-auth", "--min-upload-rate", "slow")
}

// An upload slower than the minimum rate is dropped (408), and the slot
// it held goes to an upload that was waiting for it; nothing of the slow
// one is kept.
func TestServerSlowUpload(t *testing.T) {
	k := newTestKP(t, 1)
	k.minRate, k.window, k.wait = 64<<10, time.Second, time.Minute
	ts := httptest.NewServer(k.handler())
	t.Cleanup(ts.Close)
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /blobs/object/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", strings.Repeat("a", 64), testTokenRW, 1<<20)
	go func() { // 1 KiB a second: it never stalls, but it is slow
		for {
			if _, err := conn.Write(bytes.Repeat([]byte("s"), 100)); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	for len(k.uploads) == 0 { // until the slow upload holds the only slot
		time.Sleep(time.Millisecond)
	}
	data := bytes.Repeat([]byte("fast"), 64<<10)
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := serverReq{method: "PUT", path: "/blobs/object/" + storeBlake3Hex(data), token: testTokenRW, body: bytes.NewReader(data)}.do(t, ts.URL)
		done <- resp
	}()
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	answer, _ := io.ReadAll(conn)
	if !strings.HasPrefix(string(answer), "HTTP/1.1 408 ") || !strings.Contains(string(answer), "slower than the 64.0 KiB a second an upload must keep up; dropped") {
		t.Fatalf("the slow upload: %q", answer)
	}
	if resp := <-done; resp.StatusCode != 201 {
		t.Fatalf("the upload that waited: %s", resp.Status)
	}
	if objs, staging := dirNames(t, k.s.path("objects")), dirNames(t, k.s.path("staging")); len(objs) != 1 || len(staging) != 0 {
		t.Fatalf("objects %v, staging %v", objs, staging)
	}
}
