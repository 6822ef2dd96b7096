package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// remoteSyncBuffer collects a child's output while the test reads it.
type remoteSyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *remoteSyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *remoteSyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// remoteTestServer is 'karapace server' running as a process of its own.
type remoteTestServer struct {
	t    *testing.T
	cmd  *exec.Cmd
	url  string
	data string
	errb remoteSyncBuffer
	done chan struct{}
}

func startRemoteServer(t *testing.T, data string, args ...string) *remoteTestServer {
	t.Helper()
	s := &remoteTestServer{t: t, data: data, done: make(chan struct{})}
	s.cmd = exec.Command(os.Args[0], append([]string{"server", "--listen", "127.0.0.1:0", "--data", data}, args...)...)
	s.cmd.Env = []string{"KARAPACE_TEST_CLI=1", "PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "KARAPACE_LOCK_WAIT=10s"}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = &s.errb
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, out)
	}()
	go func() { s.cmd.Wait(); close(s.done) }()
	select {
	case s.url = <-line:
	case <-time.After(30 * time.Second):
	}
	if !strings.HasPrefix(s.url, "http") {
		s.cmd.Process.Kill()
		<-s.done
		t.Fatalf("the server did not start: stdout %q, stderr:\n%s", s.url, s.errb.String())
	}
	t.Cleanup(func() { s.stop() })
	return s
}

// stop sends SIGTERM and returns the exit code.
func (s *remoteTestServer) stop() int {
	select {
	case <-s.done:
		return s.cmd.ProcessState.ExitCode()
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		s.t.Errorf("the server did not stop on SIGTERM; stderr:\n%s", s.errb.String())
	}
	return s.cmd.ProcessState.ExitCode()
}

// remoteTokenFile writes a token file readable only by its owner.
func remoteTokenFile(t *testing.T, dir string) string {
	t.Helper()
	p := writeFile(t, dir, "tokens", "# test tokens\n"+testTokenRW+" rw\n"+testTokenRO+" ro\n")
	os.Chmod(p, 0o600)
	return p
}

// remoteCountFiles counts the regular files under dir.
func remoteCountFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// emptyStore fails unless the store at root holds no environment, layer
// or object and verifies clean.
func (k *kpRun) emptyStore() {
	k.t.Helper()
	for _, d := range []string{"objects", "layers", "metadata", "wal", "staging"} {
		if n := remoteCountFiles(k.t, filepath.Join(k.store, "store", d)); n != 0 {
			k.t.Fatalf("store/%s holds %d file(s) after a refused transfer", d, n)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(k.store, "env"))
	for _, e := range ents {
		if validStoreHash(e.Name()) {
			k.t.Fatalf("env/%s was left behind", e.Name())
		}
	}
	k.ok("verify-store")
}

func TestSplitRemoteTag(t *testing.T) {
	for _, ok := range []string{"demo@v1", "my_env-2@1.0.0-rc.1", "D@latest", "x@_a"} {
		if _, _, err := splitRemoteTag(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"demo", "@v1", "demo@", "de mo@v1", "demo@v 1", "demo@.v1", "demo@-v1", "demo@a/b", "a@b@c", "demo@" + strings.Repeat("x", 129)} {
		if _, _, err := splitRemoteTag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRemoteWireMeta(t *testing.T) {
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := testRemoteEnv(t, s, 1, 1, 100, 100)
	m.ManifestPath = "/home/someone/project/karapace.toml"
	w := remoteWireMeta(m)
	if bytes.Contains(w, []byte("someone")) {
		t.Fatalf("the wire form carries the manifest path:\n%s", w)
	}
	got, err := remoteParseMeta(m.EnvID, w)
	if err != nil || got.BaseLayer != m.BaseLayer || got.ManifestPath != "" {
		t.Fatalf("round trip: %v %+v", err, got)
	}
	for name, c := range map[string]struct {
		id   string
		b    []byte
		want string
	}{
		"other id":      {strings.Repeat("a", 64), w, "is the metadata of"},
		"changed":       {m.EnvID, bytes.Replace(w, []byte(`"built"`), []byte(`"archived"`), 1), "checksum mismatch"},
		"unknown field": {m.EnvID, bytes.Replace(w, []byte(`{`), []byte(`{"x": 1,`), 1), "unknown field"},
		"trailing":      {m.EnvID, append(w, []byte("{}")...), "after the JSON"},
		"no checksum":   {m.EnvID, []byte(`{"env_id": "` + m.EnvID + `"}`), "no checksum"},
		"too large":     {m.EnvID, bytes.Repeat([]byte(" "), remoteMaxMeta+1), "larger than"},
		"not json":      {m.EnvID, []byte("nope"), "invalid character"},
		"empty":         {"", nil, "EOF"},
	} {
		if _, err := remoteParseMeta(c.id, c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestRemoteSettings(t *testing.T) {
	home := t.TempDir()
	env := map[string]string{"XDG_CONFIG_HOME": home}
	c := &cli{getenv: func(k string) string { return env[k] }, opts: map[string]string{}}
	if _, err := c.remoteSettings(); err == nil || !strings.Contains(err.Error(), "no remote given") {
		t.Fatalf("no remote: %v", err)
	}
	cfg := writeFile(t, home, "karapace/config.toml", "[remote]\nurl = \"https://cfg.example:8700\"\ntoken = \"cfg-token\"\nca_cert = \"/etc/ca.pem\"\nregistry_user = \"u\"\nregistry_password = \"p\"\n")
	os.Chmod(cfg, 0o600)
	rs, err := c.remoteSettings()
	if err != nil || rs.url != "https://cfg.example:8700" || rs.token != "cfg-token" || rs.caCert != "/etc/ca.pem" || rs.user != "u" || rs.password != "p" {
		t.Fatalf("from the file: %v %+v", err, rs)
	}
	env["KARAPACE_REMOTE"], env["KARAPACE_TOKEN"], env["KARAPACE_REGISTRY_USER"] = "http://env.example", "env-token", "eu"
	c.opts["remote"] = "oci://flag.example/repo"
	if rs, err = c.remoteSettings(); err != nil || rs.url != "oci://flag.example/repo" || rs.token != "env-token" || rs.user != "eu" || rs.password != "p" {
		t.Fatalf("precedence: %v %+v", err, rs)
	}
	writeFile(t, home, "karapace/config.toml", "[remote]\nurl = \"https://x\"\npassword = \"oops\"\n")
	if _, err := c.remoteSettings(); err == nil || !strings.Contains(err.Error(), "password") || exitCodeOf(err) != exitManifest {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := openRemote(&remoteSettings{url: "ftp://x"}); err == nil || !strings.Contains(err.Error(), "expected an http://") {
		t.Fatalf("ftp: %v", err)
	}
}

// remoteTestCert makes a self-signed certificate for 127.0.0.1 and localhost.
func remoteTestCert(t *testing.T, dir string) (certFile, keyFile string, key *ecdsa.PrivateKey, der []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "karapace test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile = writeFile(t, dir, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeFile(t, dir, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	return certFile, keyFile, key, der
}

// remoteMockEnv builds a mock environment named name in k and returns its id.
func remoteMockEnv(t *testing.T, k *kpRun, name, pkgs string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(k.dir, "image.tar.gz")); err != nil {
		tinyImage(t, filepath.Join(k.dir, "image.tar.gz"))
	}
	k.writeManifest(mockManifest(pkgs))
	return strings.TrimSpace(k.ok("build", "--name", name))
}

func TestRemotePushPullMock(t *testing.T) {
	dir := t.TempDir()
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir))
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	// A restored snapshot is the writable layer a pull gets; changes
	// made since are not part of the environment.
	upper := filepath.Join(a.store, "env", id, "upper")
	writeFile(t, upper, "etc/pulled.conf", "from a\n")
	snap := strings.TrimSpace(a.ok("commit", "demo"))
	a.ok("restore", "demo", snap)
	writeFile(t, upper, "uncommitted", "local only\n")
	a.env = append(a.env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRW)

	raw := a.ok("--json", "push", "demo", "--tag", "demo@v1")
	var p1, p2 pushResult
	json.Unmarshal([]byte(raw), &p1)
	mustContain(t, "push --json", raw, `"blobs_uploaded": `, `"blobs_skipped": 0`, `"bytes_uploaded": `, `"tag": "demo@v1"`)
	if p1.EnvID != id || p1.BlobsUploaded < 7 || p1.BytesUploaded == 0 {
		t.Fatalf("first push: %+v", p1)
	}
	a.jsonOut(&p2, "push", "demo", "--tag", "demo@v1")
	if p2.BlobsUploaded != 0 || p2.BytesUploaded != 0 || p2.BlobsSkipped != p1.BlobsUploaded {
		t.Fatalf("second push sent blobs: %+v (first %+v)", p2, p1)
	}
	// A new snapshot changes the environment's layers, which the server
	// holds fixed: the push is refused, naming them, and sends nothing.
	writeFile(t, upper, "etc/second.conf", "later\n")
	snap2 := strings.TrimSpace(a.ok("commit", "demo"))
	held := remoteCountFiles(t, srv.data)
	errOut := a.fails(1, "environment "+id+" is on "+srv.url+" with other layers", "push", "demo", "--tag", "demo@v1")
	mustContain(t, "refused push", errOut, "snapshots "+snap+" (on "+srv.url+") vs "+snap+" "+snap2+" (here)")
	if n := remoteCountFiles(t, srv.data); n != held {
		t.Fatalf("a refused push changed the server's data: %d files, then %d", held, n)
	}

	// Pulled with a read-only token into another store: same id, runs,
	// the snapshot is its writable layer, the machine-specific path gone.
	b := newKP(t)
	b.env = append(b.env, "KARAPACE_TOKEN="+testTokenRO)
	if out := b.ok("pull", "demo@v1", "--remote", srv.url); out != id+"\n" {
		t.Fatalf("pull printed %q, want %s", out, id)
	}
	if out := b.ok("exec", "demo", "--", "echo", "hi"); out != "mock["+id[:12]+"]: echo hi\n" {
		t.Fatalf("exec of the pulled environment: %q", out)
	}
	bUpper := filepath.Join(b.store, "env", id, "upper")
	if got, err := os.ReadFile(filepath.Join(bUpper, "etc/pulled.conf")); err != nil || string(got) != "from a\n" {
		t.Fatalf("the restored snapshot: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(bUpper, "uncommitted")); err == nil {
		t.Fatal("an uncommitted change travelled")
	}
	var insp struct {
		Environment envInfo `json:"environment"`
	}
	b.jsonOut(&insp, "inspect", "demo")
	if insp.Environment.ManifestPath != "" || insp.Environment.UpperLayer != snap || len(insp.Environment.Snapshots) != 1 {
		t.Fatalf("pulled metadata: %+v", insp.Environment)
	}
	b.ok("verify-store")
	var pr pullResult
	b.jsonOut(&pr, "pull", id[:10], "--remote", srv.url)
	if !pr.AlreadyPresent || pr.EnvID != id || pr.Name != "demo" {
		t.Fatalf("pull of a present environment by prefix: %+v", pr)
	}
	b.fails(1, "has no tag demo@v9", "pull", "demo@v9", "--remote", srv.url)
	b.fails(1, "holds no environment", "pull", "ffffff", "--remote", srv.url)
	b.fails(1, "neither NAME@TAG nor an env_id", "pull", "demo", "--remote", srv.url)

	// Names stay unique: a taken name stops the pull, --name renames.
	c := newKP(t)
	cid := remoteMockEnv(t, c, "demo", `"other"`)
	c.env = append(c.env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRW)
	c.fails(1, `is named "demo", a name taken here`, "pull", "demo@v1")
	if n := remoteCountFiles(t, filepath.Join(c.store, "store", "wal")); n != 0 {
		t.Fatalf("a refused pull left %d WAL entries", n)
	}
	var cr pullResult
	c.jsonOut(&cr, "pull", "demo@v1", "--name", "demo-a")
	if cr.Name != "demo-a" || cr.BlobsDownloaded == 0 || cr.BlobsSkipped == 0 {
		t.Fatalf("pull --name: %+v (the tiny image's base layer is shared)", cr)
	}
	c.jsonOut(&cr, "pull", "demo@v1", "--name", "other")
	if !cr.AlreadyPresent || cr.Name != "demo-a" {
		t.Fatalf("pull of a present environment: %+v", cr)
	}

	// Credentials: none, wrong, read-only. Nothing gets written.
	before := remoteCountFiles(t, srv.data)
	noTok := append([]string{}, c.env[:len(c.env)-1]...)
	c.env = append(noTok, "KARAPACE_TOKEN="+testTokenRW+"x")
	c.fails(1, "authentication failed: check KARAPACE_TOKEN", "push", cid)
	c.env = noTok
	c.fails(1, "authentication failed: check KARAPACE_TOKEN", "push", cid)
	c.fails(1, "authentication failed", "pull", "demo@v1")
	c.env = append(noTok, "KARAPACE_TOKEN="+testTokenRO)
	c.fails(1, "not allowed with these credentials", "push", cid, "--tag", "demo@v2")
	if after := remoteCountFiles(t, srv.data); after != before {
		t.Fatalf("refused pushes changed the server's data: %d files, then %d", before, after)
	}

	// SIGTERM stops the server cleanly; its data is a store that verifies.
	if code := srv.stop(); code != 0 {
		t.Fatalf("server exit %d:\n%s", code, srv.errb.String())
	}
	var rep verifyReport
	a.jsonOut(&rep, "--store", srv.data, "verify-store")
	if len(rep.Bad) != 0 || rep.Metadata != 1 {
		t.Fatalf("the server's store: %+v", rep)
	}
}

func TestRemoteServerRefusals(t *testing.T) {
	dir := t.TempDir()
	k := newKP(t)
	k.fails(1, "refusing to serve without authentication", "server", "--listen", "127.0.0.1:0", "--data", dir+"/d")
	bad := writeFile(t, dir, "tokens", testTokenRW+" rw\n"+testTokenRO+" admin\n")
	k.fails(1, "line 2: expected", "server", "--listen", "127.0.0.1:0", "--data", dir+"/d", "--tokens", bad)
	k.fails(1, "--tls-cert and --tls-key go together", "server", "--listen", "127.0.0.1:0", "--data", dir+"/d", "--no-auth", "--tls-cert", bad)
	k.fails(1, "contradict", "server", "--listen", "127.0.0.1:0", "--data", dir+"/d", "--no-auth", "--tokens", bad)
	srv := startRemoteServer(t, dir+"/d", "--no-auth")
	for i := 0; i < 100 && !strings.Contains(srv.errb.String(), "no authentication (--no-auth)"); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	mustContain(t, "stderr", srv.errb.String(), "no authentication (--no-auth)")
	// One server per store.
	k.env = append(k.env, "KARAPACE_LOCK_WAIT=100ms")
	k.fails(3, "(server)", "server", "--listen", "127.0.0.1:0", "--data", dir+"/d", "--no-auth")
}

// A blob changed on the server is refused by the pull, which leaves the
// local store as it was.
func TestRemoteTamperedBlob(t *testing.T) {
	dir := t.TempDir()
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--no-auth")
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	a.ok("push", "demo", "--remote", srv.url)
	var biggest string
	var size int64
	for _, n := range dirNames(t, filepath.Join(srv.data, "store", "objects")) {
		if fi, _ := os.Stat(filepath.Join(srv.data, "store", "objects", n)); fi.Size() > size {
			biggest, size = n, fi.Size()
		}
	}
	p := filepath.Join(srv.data, "store", "objects", biggest)
	data, _ := os.ReadFile(p)
	data[len(data)/2] ^= 1
	os.WriteFile(p, data, 0o600)
	b := newKP(t)
	b.fails(1, "object "+biggest+" is corrupt", "pull", id, "--remote", srv.url)
	b.emptyStore()

	// A layer manifest rewritten on the server is refused too.
	c := newKP(t)
	var m envMeta
	mb, _ := os.ReadFile(filepath.Join(a.store, "store", "metadata", id))
	json.Unmarshal(mb, &m)
	lp := filepath.Join(srv.data, "store", "layers", m.DependencyLayers[0])
	lb, _ := os.ReadFile(lp)
	os.WriteFile(lp, bytes.Replace(lb, []byte(`"read_only":true`), []byte(`"read_only":false`), 1), 0o600)
	c.fails(1, "layer "+m.DependencyLayers[0]+" on "+srv.url+" is corrupt", "pull", id, "--remote", srv.url)
	c.emptyStore()
}

func TestRemoteTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key, _, _ := remoteTestCert(t, dir)
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir), "--tls-cert", cert, "--tls-key", key)
	if !strings.HasPrefix(srv.url, "https://127.0.0.1:") {
		t.Fatalf("url %s", srv.url)
	}
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", "")
	a.env = append(a.env, "KARAPACE_TOKEN="+testTokenRW)
	a.fails(1, "not signed by a trusted authority: set KARAPACE_CA_CERT", "push", "demo", "--remote", srv.url)
	a.env = append(a.env, "KARAPACE_CA_CERT="+cert)
	a.ok("push", "demo", "--remote", srv.url, "--tag", "demo@tls")
	// Everything from the configuration file this time.
	b := newKP(t)
	cfg := writeFile(t, b.home, ".config/karapace/config.toml", fmt.Sprintf("[remote]\nurl = %q\ntoken = %q\nca_cert = %q\n", srv.url, testTokenRO, cert))
	os.Chmod(cfg, 0o600)
	if out := b.ok("pull", "demo@tls"); out != id+"\n" {
		t.Fatalf("pull over TLS: %q", out)
	}
	os.Chmod(cfg, 0o644)
	_, _, errOut := b.run("pull", "demo@tls")
	mustContain(t, "stderr", errOut, "other users may read it")
}

// remoteBigMockEnv builds a mock environment whose base layer carries size
// random bytes, from an uncompressed image.
func remoteBigMockEnv(t *testing.T, k *kpRun, size int64) string {
	t.Helper()
	f, err := os.Create(filepath.Join(k.dir, "image.tar"))
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "big.bin", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
	io.Copy(tw, io.LimitReader(mrand.New(mrand.NewSource(size)), size))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	k.writeManifest("manifest_version = 1\n[base]\nimage = \"./image.tar\"\n[runtime]\nbackend = \"mock\"\n")
	return strings.TrimSpace(k.ok("build", "--name", "big"))
}

// A server that sends more of an object than a pull accepts, streaming
// or by its Content-Length, is cut off at the limit, and nothing is kept.
func TestRemotePullBoundsObjects(t *testing.T) {
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := testRemoteEnv(t, s, 1, 1, 64<<10, 32<<10)
	k := &kpServer{s: s, noAuth: true, maxBlob: 1 << 20, uploads: make(chan struct{}, 4), wait: time.Second, io: time.Minute}
	const guard = 64 << 20 // what a server sends at most, so that a pull without a bound fails, not fills the disk
	var declare atomic.Bool
	h := k.handler()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/blobs/object/") {
			h.ServeHTTP(w, r)
			return
		}
		if declare.Load() {
			w.Header().Set("Content-Length", strconv.Itoa(guard))
		}
		junk := bytes.Repeat([]byte("more "), 1<<12)
		for n := 0; n < guard; n += len(junk) {
			if _, err := w.Write(junk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(ts.Close)
	for _, decl := range []bool{false, true} {
		declare.Store(decl)
		b := newKP(t)
		b.fails(1, "is larger than 1.0 MiB, the most a pull accepts (--max-object-size); refusing it", "pull", m.EnvID, "--remote", ts.URL, "--max-object-size", "1M")
		b.emptyStore()
	}
	b := newKP(t)
	b.fails(1, `--max-object-size: "lots" is not a size`, "pull", m.EnvID, "--remote", ts.URL, "--max-object-size", "lots")
}

// A client killed in the middle of an upload leaves no partial blob on
// the server; a server stopped during one finishes it first.
func TestRemoteInterruptedUploads(t *testing.T) {
	dir := t.TempDir()
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir))
	a := newKP(t)
	id := remoteBigMockEnv(t, a, 256<<20)
	a.env = append(a.env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRW)
	var m envMeta
	mb, _ := os.ReadFile(filepath.Join(a.store, "store", "metadata", id))
	json.Unmarshal(mb, &m)
	l, err := (&store{dir: filepath.Join(a.store, "store")}).getLayer(m.BaseLayer)
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(srv.data, "store", "staging")
	killed := false
	for attempt := 0; attempt < 3 && !killed; attempt++ {
		cmd := a.cmd("", "push", "big")
		killed = signalMidObject(t, cmd, staging, syscall.SIGKILL)
		if !killed {
			t.Logf("attempt %d: the push finished before it could be killed", attempt+1)
			srv.stop()
			os.RemoveAll(srv.data)
			srv = startRemoteServer(t, srv.data, "--tokens", filepath.Join(dir, "tokens"))
			a.env[len(a.env)-2] = "KARAPACE_REMOTE=" + srv.url
		}
	}
	if !killed {
		t.Fatal("could not kill a push in the middle of an upload")
	}
	// The server notices the dead connection and drops the partial file.
	for deadline := time.Now().Add(20 * time.Second); len(dirNames(t, staging)) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("staging still holds %v", dirNames(t, staging))
		}
	}
	if _, err := os.Stat(filepath.Join(srv.data, "store", "objects", l.TarHash)); err == nil {
		t.Fatal("the interrupted object is visible on the server")
	}
	var p pushResult
	a.jsonOut(&p, "push", "big")
	if p.BytesUploaded < 256<<20 {
		t.Fatalf("the push after the kill: %+v", p)
	}

	// A pull interrupted or killed in the middle of an object leaves
	// nothing behind (after a kill, once the next command recovered).
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		b := newKP(t)
		b.env = append(b.env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRO)
		cmd := b.cmd("", "pull", id)
		if !signalMidObject(t, cmd, filepath.Join(b.store, "store", "staging"), sig) {
			t.Logf("the pull finished before %v", sig)
			continue
		}
		if cmd.ProcessState.Success() {
			t.Fatalf("the pull succeeded after %v", sig)
		}
		b.ok("verify-store")
		b.emptyStore()
	}

	// SIGTERM while a request streams its body: the request completes,
	// its blob is committed, then the server exits.
	blob := bytes.Repeat([]byte("graceful "), 1<<17)
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /blobs/object/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", storeBlake3Hex(blob), testTokenRW, len(blob))
	conn.Write(blob[:len(blob)/2])
	// Once the server is writing the body to staging, it is in flight.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if names, _ := filepath.Glob(filepath.Join(srv.data, "store", "staging", "object.*.tmp")); len(names) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never started writing the request's body")
		}
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond) // time enough to exit, were it to exit wrongly
	select {
	case <-srv.done:
		t.Fatal("the server exited with a request in flight")
	default:
	}
	conn.Write(blob[len(blob)/2:])
	status, _ := bufio.NewReader(conn).ReadString('\n')
	if !strings.Contains(status, "201") {
		t.Fatalf("the request in flight got %q", status)
	}
	if code := srv.stop(); code != 0 {
		t.Fatalf("server exit %d:\n%s", code, srv.errb.String())
	}
	var rep verifyReport
	a.jsonOut(&rep, "--store", srv.data, "verify-store")
	if len(rep.Bad) != 0 || remoteCountFiles(t, filepath.Join(srv.data, "store", "objects", storeBlake3Hex(blob))) != 1 {
		t.Fatalf("the server's store after shutdown: %+v", rep)
	}
}

// signalMidObject starts cmd and sends it sig once an object of more
// than a megabyte is being written into staging; it reports whether it
// did before cmd ended, and waits for cmd.
func signalMidObject(t *testing.T, cmd *exec.Cmd, staging string, sig syscall.Signal) bool {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { <-exited }()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		names, _ := filepath.Glob(filepath.Join(staging, "object.*.tmp"))
		if len(names) > 0 {
			if fi, err := os.Stat(names[0]); err == nil && fi.Size() > 1<<20 {
				cmd.Process.Signal(sig)
				return true
			}
		}
		select {
		case <-exited:
			return false
		default:
		}
	}
	return false
}

// A push holds the store's lock shared: an export may run beside it, a
// destroy or a gc may not take the environment from under it.
func TestRemotePushHoldsSharedLock(t *testing.T) {
	k := newTestKP(t, 4)
	inPush, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h := k.handler()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/blobs/object/") {
			once.Do(func() { close(inPush); <-release }) // the first upload waits for the test
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo)

	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	a.env = append(a.env, "KARAPACE_REMOTE="+ts.URL, "KARAPACE_TOKEN="+testTokenRW)
	push := a.cmd("", "push", "demo", "--tag", "demo@v1")
	var pushOut remoteSyncBuffer
	push.Stdout, push.Stderr = &pushOut, &pushOut
	if err := push.Start(); err != nil {
		t.Fatal(err)
	}
	pushDone := make(chan error, 1)
	go func() { pushDone <- push.Wait() }()
	select {
	case <-inPush:
	case err := <-pushDone:
		t.Fatalf("the push ended before its first upload: %v\n%s", err, pushOut.String())
	}

	// Writers are refused at once (no wait), naming the push.
	holder := fmt.Sprintf("locked by pid %d (push)", push.Process.Pid)
	a.env = append(a.env, "KARAPACE_LOCK_WAIT=0s")
	a.fails(exitStore, holder, "destroy", "demo")
	a.fails(exitStore, holder, "gc")
	// A reader is not.
	a.ok("export", "demo", filepath.Join(a.base, "demo.tar"))

	letGo()
	if err := <-pushDone; err != nil {
		t.Fatalf("push: %v\n%s", err, pushOut.String())
	}
	a.ok("destroy", "demo")
	a.ok("gc")
	if rep, err := k.s.verifyLocked(t.Context()); err != nil || len(rep.Bad) != 0 || rep.Metadata != 1 {
		t.Fatalf("the server's store after the push: %v %+v", err, rep)
	}
	b := newKP(t)
	if out := b.ok("import", filepath.Join(a.base, "demo.tar")); out != id+"\n" {
		t.Fatalf("import of the export made beside the push: %q", out)
	}
}

// remotePeakRSS is a process's peak resident set, from /proc.
func remotePeakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	n, err := peakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Sixteen clients push 200 environments and pull each other's at the
// same time. Every blob arrives verified, nothing is lost, and the
// server's memory stays flat.
func TestRemoteLoad(t *testing.T) {
	needReal(t)
	const clients, envs = 16, 200
	dir := t.TempDir()
	// Sixteen clients, all on 127.0.0.1: one address with the connections
	// of many.
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir), "--max-client-conns", "1024")
	src := newKP(t)
	s, err := openStore(src.store)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, envs)
	var total int64
	for i := range ids {
		// 20 shared bases of 1 MiB, each environment 64-320 KiB of its own.
		m := testRemoteEnv(t, s, int64(i%20), int64(i), 1<<20, 64<<10+(i%5)*64<<10)
		ids[i] = m.EnvID
		total += int64(64<<10 + (i%5)*64<<10)
	}
	src.env = append(src.env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRW)
	pulled := make([]*kpRun, clients)
	for i := range pulled {
		pulled[i] = newKP(t)
		pulled[i].env = append(pulled[i].env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRO)
	}
	start := time.Now()
	pushedBy := make([]chan struct{}, clients)
	for i := range pushedBy {
		pushedBy[i] = make(chan struct{})
	}
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run := func(k *kpRun, args ...string) error {
				cmd := k.cmd("", args...)
				out, err := cmd.CombinedOutput()
				if err != nil {
					return fmt.Errorf("client %d: karapace %s: %v\n%s", c, strings.Join(args, " "), err, out)
				}
				return nil
			}
			for i := c; i < envs; i += clients {
				if err := run(src, "push", ids[i], "--tag", fmt.Sprintf("env%d@v1", i)); err != nil {
					errs <- err
					close(pushedBy[c])
					return
				}
			}
			close(pushedBy[c])
			other := (c + clients/2) % clients
			<-pushedBy[other]
			for i := other; i < envs; i += clients {
				if err := run(pulled[c], "pull", fmt.Sprintf("env%d@v1", i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	took := time.Since(start)
	rss := remotePeakRSS(t, srv.cmd.Process.Pid)
	t.Logf("%d clients moved %d environments (%s of their own, 20 MiB shared) up and down in %v; server peak RSS %s",
		clients, envs, humanBytes(total), took.Round(time.Millisecond), humanBytes(rss))
	if rss > 256<<20 {
		t.Errorf("server peak RSS %s", humanBytes(rss))
	}
	got := 0
	for c, k := range pulled {
		var envsGot []envInfo
		k.jsonOut(&envsGot, "list")
		other := (c + clients/2) % clients
		want := map[string]bool{}
		for i := other; i < envs; i += clients {
			want[ids[i]] = true
		}
		for _, e := range envsGot {
			if !want[e.EnvID] {
				t.Errorf("client %d pulled %s, which it did not ask for", c, e.EnvID)
			}
			delete(want, e.EnvID)
			got++
		}
		if len(want) > 0 {
			t.Errorf("client %d lacks %d environments", c, len(want))
		}
		var rep verifyReport
		k.jsonOut(&rep, "verify-store")
		if len(rep.Bad) != 0 {
			t.Errorf("client %d's store: %+v", c, rep.Bad)
		}
	}
	if got != envs {
		t.Errorf("%d environments pulled, want %d", got, envs)
	}
	if code := srv.stop(); code != 0 {
		t.Fatalf("server exit %d", code)
	}
	var rep verifyReport
	src.jsonOut(&rep, "--store", srv.data, "verify-store")
	if len(rep.Bad) != 0 || rep.Metadata != envs {
		t.Fatalf("the server's store: %d metadata, bad %+v", rep.Metadata, rep.Bad)
	}
	reg, _ := os.ReadFile(filepath.Join(srv.data, "registry.json"))
	var tags map[string]string
	if json.Unmarshal(reg, &tags); len(tags) != envs {
		t.Fatalf("the registry holds %d tags, want %d: concurrent pushes lost some", len(tags), envs)
	}
}

// A real environment (Debian, namespace backend) travels three ways, a
// server, a registry and an archive, and runs where it lands, with its
// restored snapshot as its writable layer.
func TestRemoteRealEnvironment(t *testing.T) {
	rootfs := testRootfsTar(t)
	dir := t.TempDir()
	a := newKP(t)
	a.writeManifest(fmt.Sprintf("manifest_version = 1\n[base]\nimage = %q\n", rootfs))
	id := strings.TrimSpace(a.ok("build", "--name", "real"))
	a.ok("exec", "real", "--", "sh", "-c", "echo shipped > /root/shipped.txt && rm /etc/issue")
	a.ok("restore", "real", strings.TrimSpace(a.ok("commit", "real")))
	check := func(k *kpRun) {
		t.Helper()
		if out := k.ok("exec", "real", "--", "cat", "/etc/debian_version", "/root/shipped.txt"); !strings.HasPrefix(out, "12.") || !strings.HasSuffix(out, "shipped\n") {
			t.Fatalf("exec in the received environment: %q", out)
		}
		k.fails(1, "", "exec", "real", "--", "test", "-e", "/etc/issue")
		mustContain(t, "diff", k.ok("diff", "real"), "A /root/shipped.txt\n", "D /etc/issue\n")
		k.ok("verify-store")
	}

	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir))
	a.env = append(a.env, "KARAPACE_TOKEN="+testTokenRW)
	var p1, p2 pushResult
	a.jsonOut(&p1, "push", "real", "--tag", "real@v1", "--remote", srv.url)
	a.jsonOut(&p2, "push", "real", "--tag", "real@v1", "--remote", srv.url)
	if p1.BytesUploaded < 50<<20 || p2.BlobsUploaded != 0 || p2.BytesUploaded != 0 {
		t.Fatalf("pushes: %+v then %+v", p1, p2)
	}
	b := newKP(t)
	b.env = append(b.env, "KARAPACE_TOKEN="+testTokenRO)
	if out := b.ok("pull", "real@v1", "--remote", srv.url); out != id+"\n" {
		t.Fatalf("pull: %q", out)
	}
	check(b)

	htpasswd, _ := filepath.Abs("testdata/remote/htpasswd")
	reg := startOCIRegistry(t, fmt.Sprintf("  htpasswd:\n    realm: karapace-test\n    path: %s\n", htpasswd))
	creds := []string{"KARAPACE_REMOTE=oci://" + reg.host + "/team", "KARAPACE_REGISTRY_USER=karapace", "KARAPACE_REGISTRY_PASSWORD=registry-test-password"}
	a.env = append(a.env, creds...)
	a.ok("push", "real", "--tag", "real@v1")
	c := newKP(t)
	c.env = append(c.env, creds...)
	if out := c.ok("pull", "real@v1"); out != id+"\n" {
		t.Fatalf("pull from the registry: %q", out)
	}
	check(c)

	file := filepath.Join(dir, "real.tar")
	a.ok("export", "real", file)
	d := newKP(t)
	if out := d.ok("import", file); out != id+"\n" {
		t.Fatalf("import: %q", out)
	}
	check(d)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	one := make([]byte, 1)
	f.ReadAt(one, fi.Size()/2)
	one[0] ^= 0x10
	f.WriteAt(one, fi.Size()/2)
	f.Close()
	e := newKP(t)
	e.fails(1, "is corrupt", "import", file)
	e.emptyStore()
}

// On a terminal, push and pull show their bytes and rate; piped, nothing.
func TestRemoteProgress(t *testing.T) {
	srv := startRemoteServer(t, filepath.Join(t.TempDir(), "data"), "--no-auth")
	a := newKP(t)
	remoteBigMockEnv(t, a, 8<<20)
	for _, args := range [][]string{{"push", "big", "--remote", srv.url, "--tag", "big@x"}, {"pull", "big@x", "--remote", srv.url, "--store", a.base + "/other"}} {
		master, slave := openPTY(t)
		cmd := a.cmd("", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, slave
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		slave.Close()
		var seen bytes.Buffer
		io.Copy(&seen, master) // ends with EIO once the slave is closed
		mustContain(t, "terminal", seen.String(), args[0]+"ing ", "B/s", "\r\x1b[K")
		if args[0] == "push" {
			mustContain(t, "terminal", seen.String(), " / 8.0 MiB ", "%")
		}
	}
	_, _, errOut := a.run("push", "big", "--remote", srv.url)
	if strings.Contains(errOut, "/s") {
		t.Fatalf("progress on a pipe: %q", errOut)
	}
}

// remoteStoreState lists every file of a store with a hash of its
// content: two equal states are the same store.
func remoteStoreState(t *testing.T, k *kpRun) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(k.store, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == ".lock" {
			return nil
		}
		data, _ := os.ReadFile(p)
		fmt.Fprintf(&b, "%s %s\n", strings.TrimPrefix(p, k.store), storeBlake3Hex(data))
		return nil
	})
	return b.String()
}

// remoteMeta reads an environment's metadata from k's store.
func remoteMeta(t *testing.T, k *kpRun, id string) *envMeta {
	t.Helper()
	s, err := openStore(k.store)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.getMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A real server holds an env_id's layers fixed: a push of other layers
// is refused, by the client before it sends anything and by the server
// (409) when a client sends them anyway; the same layers again are
// fine, and tags still move to other environments.
func TestRemoteLayersFixed(t *testing.T) {
	dir := t.TempDir()
	srv := startRemoteServer(t, filepath.Join(dir, "data"), "--tokens", remoteTokenFile(t, dir))
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	a.env = append(a.env, "KARAPACE_REMOTE="+srv.url, "KARAPACE_TOKEN="+testTokenRW)
	a.ok("push", "demo", "--tag", "demo@v1")
	pushed := remoteWireMeta(remoteMeta(t, a, id))

	writeFile(t, filepath.Join(a.store, "env", id, "upper"), "etc/changed", "x\n")
	snap := strings.TrimSpace(a.ok("commit", "demo"))
	held := remoteCountFiles(t, srv.data)
	errOut := a.fails(1, "environment "+id+" is on "+srv.url+" with other layers", "push", "demo")
	mustContain(t, "refused push", errOut, "snapshots none (on "+srv.url+") vs "+snap+" (here)", "refusing to push it")
	if n := remoteCountFiles(t, srv.data); n != held {
		t.Fatalf("a refused push changed the server's data: %d files, then %d", held, n)
	}

	// A client that sends them anyway: the blobs are taken, the metadata
	// is not.
	s, err := openStore(a.store)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.getMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := s.closureOf(m)
	if err != nil {
		t.Fatal(err)
	}
	put := func(kind, hash string, b []byte, code int, want string) {
		t.Helper()
		req := serverReq{method: "PUT", path: "/blobs/" + kind + "/" + hash, token: testTokenRW, body: bytes.NewReader(b)}
		if code == 0 { // stored, or there already
			if resp, body := req.do(t, srv.url); resp.StatusCode/100 != 2 {
				t.Fatalf("PUT %s: %s %s", req.path, resp.Status, body)
			}
			return
		}
		serverExpect(t, srv.url, req, code, want)
	}
	for _, o := range cl.objects {
		rc, err := s.openObject(o.Hash)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		put(blobObject, o.Hash, b, 0, "")
	}
	for _, l := range cl.layers {
		put(blobLayer, l.Hash, l.fileBytes(), 0, "")
	}
	put(blobMetadata, id, cl.wire, 409, "the server holds environment "+id+" with other layers")
	put(blobMetadata, id, cl.wire, 409, "snapshots none (stored) vs "+snap+" (pushed)")
	put(blobMetadata, id, pushed, 200, "") // the same layers: fine
	renamed := remoteMeta(t, a, id)
	renamed.Snapshots, renamed.Name = nil, "renamed"
	put(blobMetadata, id, remoteWireMeta(renamed), 201, "") // other metadata, the same layers

	// Tags move: demo@v1 now names another environment.
	a.writeManifest(mockManifest(`"other"`))
	other := strings.TrimSpace(a.ok("build", "--name", "other"))
	a.ok("push", "other", "--tag", "demo@v1")
	b := newKP(t)
	b.env = append(b.env, "KARAPACE_TOKEN="+testTokenRO)
	if out := b.ok("pull", "demo@v1", "--remote", srv.url); out != other+"\n" {
		t.Fatalf("pull of the moved tag: %q, want %s", out, other)
	}
	if out := b.ok("pull", id, "--remote", srv.url); out != id+"\n" {
		t.Fatalf("pull of the first environment: %q", out)
	}
	if got := remoteMeta(t, b, id); len(got.Snapshots) != 0 || got.Name != "renamed" {
		t.Fatalf("pulled %+v", got)
	}
	b.ok("verify-store")
	a.ok("verify-store")
	if code := srv.stop(); code != 0 {
		t.Fatalf("server exit %d:\n%s", code, srv.errb.String())
	}
	var rep verifyReport
	a.jsonOut(&rep, "--store", srv.data, "verify-store")
	if len(rep.Bad) != 0 || rep.Metadata != 2 {
		t.Fatalf("the server's store: %+v", rep)
	}
}

// A hostile server serves, for an env_id a client knows, metadata that
// binds it to other layers, or to the lock of another environment. The
// client refuses either, whether the environment is in its store or was
// destroyed and collected, and its store stays as it was.
func TestRemotePullRefusesSwappedLayers(t *testing.T) {
	k := newTestKP(t, 4)
	k.noAuth = true
	ts := httptest.NewServer(k.handler())
	t.Cleanup(ts.Close)
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	other := remoteMockEnv(t, a, "other", `"vim"`)
	a.ok("push", "demo", "--remote", ts.URL)
	a.ok("push", "other", "--remote", ts.URL)
	mine, theirs := remoteMeta(t, a, id), remoteMeta(t, a, other)

	// Clients that know demo: one holds it, one held it once.
	b := newKP(t)
	b.ok("pull", id, "--remote", ts.URL)
	c := newKP(t)
	c.ok("pull", id, "--remote", ts.URL)
	c.ok("destroy", id)
	c.ok("gc")

	serve := func(m *envMeta) {
		t.Helper()
		if _, err := k.s.writeAtomic(k.s.path("metadata"), id, bytes.NewReader(remoteWireMeta(m))); err != nil {
			t.Fatal(err)
		}
	}
	swapped := *mine
	swapped.DependencyLayers = theirs.DependencyLayers
	serve(&swapped)
	for _, cl := range []*kpRun{b, c} {
		before := remoteStoreState(t, cl)
		errOut := cl.fails(1, "environment "+id+" in "+ts.URL+" is bound to other layers than this store knows it by", "pull", id, "--remote", ts.URL)
		mustContain(t, "refusal", errOut, "dependency_layers "+mine.DependencyLayers[0]+" (here) vs "+theirs.DependencyLayers[0]+" (in "+ts.URL+")")
		if after := remoteStoreState(t, cl); after != before {
			t.Fatalf("a refused pull changed the store:\n%s\nthen\n%s", before, after)
		}
		cl.ok("verify-store")
	}

	// The lock of another environment: refused by a client that has
	// never seen demo, which keeps nothing.
	lockSwapped := *mine
	lockSwapped.LockHash = theirs.LockHash
	serve(&lockSwapped)
	d := newKP(t)
	d.fails(1, "the lock of environment "+id+" in "+ts.URL+" (object "+theirs.LockHash+") is not its lock: it is the lock of environment "+other, "pull", id, "--remote", ts.URL)
	d.emptyStore()
	// A lock whose fields do not give the env_id it states.
	rc, err := k.s.openObject(mine.LockHash)
	if err != nil {
		t.Fatal(err)
	}
	lock, _ := io.ReadAll(rc)
	rc.Close()
	edited := bytes.Replace(lock, []byte(`"git"`), []byte(`"gti"`), 1)
	if bytes.Equal(edited, lock) {
		t.Fatalf("the lock names no git:\n%s", lock)
	}
	eh, _, err := k.s.putObject(bytes.NewReader(edited))
	if err != nil {
		t.Fatal(err)
	}
	lockSwapped.LockHash = eh
	serve(&lockSwapped)
	d.fails(1, "is not its lock: its fields give env_id ", "pull", id, "--remote", ts.URL)
	d.emptyStore()

	// The genuine metadata again: the clients take it.
	serve(mine)
	c.ok("pull", id, "--remote", ts.URL)
	c.ok("verify-store")
	var pr pullResult
	b.jsonOut(&pr, "pull", id, "--remote", ts.URL)
	if !pr.AlreadyPresent {
		t.Fatalf("pull of the genuine environment: %+v", pr)
	}
}

// A server that stops sending, before its answer or in the middle of a
// body, fails the pull after KARAPACE_HTTP_TIMEOUT instead of hanging
// it; one that declares more than a blob may be is refused before it
// sends it. Nothing of the environment is kept.
func TestRemotePullStalls(t *testing.T) {
	k := newTestKP(t, 4)
	k.noAuth = true
	var mode atomic.Value
	h := k.handler()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m, _ := mode.Load().(string)
		switch {
		case m == "answer" && strings.HasPrefix(r.URL.Path, "/blobs/object/"):
			<-r.Context().Done() // never answers
			return
		case m == "body" && strings.HasPrefix(r.URL.Path, "/blobs/object/"):
			w.Header().Set("Content-Length", "1000000")
			w.Write(bytes.Repeat([]byte("x"), 1000))
			w.(http.Flusher).Flush()
			<-r.Context().Done() // sends no more
			return
		case m == "metadata" && strings.HasPrefix(r.URL.Path, "/blobs/metadata/"):
			w.Header().Set("Content-Length", strconv.Itoa(remoteMaxMeta+1))
			w.Write(bytes.Repeat([]byte(" "), remoteMaxMeta+1))
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	a.ok("push", "demo", "--remote", ts.URL)
	for _, c := range []struct{ mode, want string }{
		{"answer", "cannot reach " + ts.URL + ": no answer for 1s"},
		{"body", ": no data for 1s"},
		{"metadata", "metadata " + id + " on " + ts.URL + " is 1048577 bytes, more than the 1048576 a metadata may be; refusing it"},
	} {
		mode.Store(c.mode)
		b := newKP(t)
		b.env = append(b.env, "KARAPACE_HTTP_TIMEOUT=1s")
		b.fails(1, c.want, "pull", id, "--remote", ts.URL)
		b.emptyStore()
	}
}

// A server may send a pull elsewhere, but the token does not follow to
// another origin (another port of the same host included) or from https
// to http.
func TestRemoteRedirectDropsToken(t *testing.T) {
	k := newTestKP(t, 4)
	h := k.handler()
	var mu sync.Mutex
	var leaked, served int
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served++
		if r.Header.Get("Authorization") != "" {
			leaked++
		}
		mu.Unlock()
		r.Header.Set("Authorization", "Bearer "+testTokenRO) // it serves the blob all the same
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(elsewhere.Close)
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/blobs/object/") {
			http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		h.ServeHTTP(w, r)
	})
	plain := httptest.NewServer(front)
	t.Cleanup(plain.Close)
	tlsSrv := httptest.NewTLSServer(front)
	t.Cleanup(tlsSrv.Close)
	ca := writeFile(t, t.TempDir(), "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})))

	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	a.env = append(a.env, "KARAPACE_TOKEN="+testTokenRW)
	a.ok("push", "demo", "--remote", plain.URL)
	for _, u := range []string{plain.URL, tlsSrv.URL} {
		b := newKP(t)
		b.env = append(b.env, "KARAPACE_TOKEN="+testTokenRO, "KARAPACE_CA_CERT="+ca)
		if out := b.ok("pull", id, "--remote", u); out != id+"\n" {
			t.Fatalf("pull from %s: %q", u, out)
		}
		b.ok("verify-store")
	}
	mu.Lock()
	defer mu.Unlock()
	if served == 0 || leaked != 0 {
		t.Fatalf("the other origin served %d requests, %d of them with the token", served, leaked)
	}

	// The rule itself, for what a loopback test cannot show: a downgrade
	// on the same host and port.
	for _, c := range []struct {
		from, to string
		keep     bool
	}{
		{"https://reg.example/a", "https://reg.example:443/b", true},
		{"http://reg.example/a", "http://reg.example:80/b", true},
		{"https://reg.example/a", "http://reg.example:443/b", false},
		{"https://reg.example/a", "https://reg.example:8443/b", false},
		{"https://reg.example/a", "https://cdn.reg.example/b", false},
		{"https://REG.example/a", "https://reg.example/b", true},
	} {
		from, _ := http.NewRequest("GET", c.from, nil)
		to, _ := http.NewRequest("GET", c.to, nil)
		to.Header.Set("Authorization", "Bearer x")
		if err := remoteRedirect(to, []*http.Request{from}); err != nil {
			t.Fatal(err)
		}
		if kept := to.Header.Get("Authorization") != ""; kept != c.keep {
			t.Errorf("%s -> %s: token kept %v", c.from, c.to, kept)
		}
	}
}

// A pulled layer is unpacked within the [limits] of the puller: a
// writable layer with more entries than tree_max_entries is refused,
// naming the setting, and nothing of the environment is kept.
func TestRemotePullTreeLimits(t *testing.T) {
	k := newTestKP(t, 4)
	k.noAuth = true
	ts := httptest.NewServer(k.handler())
	t.Cleanup(ts.Close)
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	for i := range 12 {
		writeFile(t, filepath.Join(a.store, "env", id, "upper"), fmt.Sprintf("etc/f%02d", i), "x\n")
	}
	a.ok("restore", "demo", strings.TrimSpace(a.ok("commit", "demo")))
	a.ok("push", "demo", "--remote", ts.URL)
	b := newKP(t)
	config := writeFile(t, b.home, ".config/karapace/config.toml", "[limits]\ntree_max_entries = 8\n")
	b.fails(1, "more than 8 entries, the most one unpack may create ([limits] tree_max_entries in "+config+")", "pull", id, "--remote", ts.URL)
	b.emptyStore()
	writeFile(t, b.home, ".config/karapace/config.toml", "[limits]\ntree_max_entries = 100\n")
	if out := b.ok("pull", id, "--remote", ts.URL); out != id+"\n" {
		t.Fatalf("pull within the limits: %q", out)
	}
}
