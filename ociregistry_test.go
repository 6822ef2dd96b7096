package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOCIValidRepo(t *testing.T) {
	for _, ok := range []string{"a", "team/env", "a.b/c_d/e__f/g-h/i---j", "x0/9y"} {
		if !ociValidRepo(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "A", "a/", "/a", "a//b", "-a", "a-", "a..b", "a___b", "a_.b", "a b", "a:b", "a/../b", strings.Repeat("a", 256)} {
		if ociValidRepo(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestOCIParseChallenge(t *testing.T) {
	s, p := ociParseChallenge(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/env:pull,push",error="insufficient_scope"`)
	if s != "bearer" || p["realm"] != "https://auth.example/token" || p["service"] != "registry.example" || p["scope"] != "repository:team/env:pull,push" || p["error"] != "insufficient_scope" {
		t.Fatalf("%s %v", s, p)
	}
	s, p = ociParseChallenge(`Basic realm="with \"quotes\", and comma"`)
	if s != "basic" || p["realm"] != `with "quotes", and comma` {
		t.Fatalf("%s %v", s, p)
	}
	s, p = ociParseChallenge(`Bearer realm=https://x/t, service=svc`)
	if s != "bearer" || p["realm"] != "https://x/t" || p["service"] != "svc" {
		t.Fatalf("%s %v", s, p)
	}
	for _, junk := range []string{"", "Bearer", `Bearer realm="unterminated`, "Bearer =,=,", "Bearer a=b=c"} {
		ociParseChallenge(junk) // no panic, whatever it makes of it
	}
}

func TestOCIRemoteNames(t *testing.T) {
	o, err := newOCIRemote(&remoteSettings{url: "oci://registry.example:5000/team"})
	if err != nil || o.allowHTTP || o.repo != "team" || o.host != "registry.example:5000" {
		t.Fatalf("%v %+v", err, o)
	}
	if o, _ := newOCIRemote(&remoteSettings{url: "oci://registry.example/team", insecure: true}); !o.allowHTTP {
		t.Fatal("--insecure-registry does not allow http")
	}
	if o, _ := newOCIRemote(&remoteSettings{url: "oci://[::1]:5000/team"}); !o.allowHTTP {
		t.Fatal("loopback does not allow http")
	}
	for _, bad := range []string{"oci://", "oci://host", "oci://host/", "oci://host/Team", "oci://user@host/team", "oci://host/team?x=1"} {
		if _, err := newOCIRemote(&remoteSettings{url: bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	id := strings.Repeat("ab", 32)
	for ref, want := range map[string]string{"demo@v1": "team/demo:v1", "my-env@1.0": "team/my-env:1.0", id: "team:" + id} {
		repo, tag, err := o.target(ref)
		if err != nil || repo+":"+tag != want {
			t.Errorf("%s: %s:%s %v, want %s", ref, repo, tag, err, want)
		}
	}
	for _, bad := range []string{"Demo@v1", "demo", id[:12], "_x@v1"} {
		if _, _, err := o.target(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A registry that speaks only plain http is refused unless allowed.
func TestOCIPlainHTTPRefused(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }))
	defer ts.Close()
	hc, _ := remoteHTTPClient("")
	host := strings.TrimPrefix(ts.URL, "http://")
	o := &ociRemote{display: "oci://" + host + "/x", host: host, repo: "x", hc: hc, scheme: "https"}
	if err := o.settle(t.Context()); err == nil || !strings.Contains(err.Error(), "speaks plain http, which is allowed only for loopback hosts or with --insecure-registry") {
		t.Fatalf("settle: %v", err)
	}
	o.allowHTTP = true
	if err := o.settle(t.Context()); err != nil || o.base() != ts.URL {
		t.Fatalf("settle with http allowed: %v %s", err, o.base())
	}
}

// A prefix is looked up in every page of the tag list.
func TestOCITagPages(t *testing.T) {
	a, b := strings.Repeat("ab", 32), strings.Repeat("ac", 32)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/team/tags/list" {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("last") == "" {
			w.Header().Set("Link", `</v2/team/tags/list?last=`+a+`&n=1>; rel="next"`)
			fmt.Fprintf(w, `{"name": "team", "tags": [%q]}`, a)
			return
		}
		fmt.Fprintf(w, `{"name": "team", "tags": [%q, "latest"]}`, b)
	}))
	defer ts.Close()
	hc, _ := remoteHTTPClient("")
	host := strings.TrimPrefix(ts.URL, "http://")
	o := &ociRemote{display: "oci://" + host + "/team", host: host, repo: "team", hc: hc, scheme: "http", allowHTTP: true}
	if repo, tag, err := o.resolve(t.Context(), "ac"); err != nil || repo != "team" || tag != b {
		t.Fatalf("resolve ac: %s:%s %v", repo, tag, err)
	}
	if _, _, err := o.resolve(t.Context(), "a"); err == nil || !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), b) {
		t.Fatalf("resolve a: %v", err)
	}
	if _, _, err := o.resolve(t.Context(), "ad"); err == nil || !strings.Contains(err.Error(), "holds no environment ad") {
		t.Fatalf("resolve ad: %v", err)
	}
}

// ociStallingReader gives its bytes, then waits for release before its
// io.EOF.
type ociStallingReader struct {
	r       io.Reader
	release chan struct{}
}

func (s *ociStallingReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err == io.EOF {
		<-s.release
	}
	return n, err
}

// An upload is judged by the bytes the registry took, even while the
// transport, in its own goroutine, still waits to see the body end.
func TestOCIUploadHashesWhatWasSent(t *testing.T) {
	data := bytes.Repeat([]byte("karapace"), 1<<17) // beyond the transport's write buffer
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && r.URL.Path == "/v2/x/blobs/uploads/":
			w.Header().Set("Location", "/v2/x/blobs/uploads/1")
			w.WriteHeader(http.StatusAccepted)
		case r.Method == "PATCH" && r.URL.Path == "/v2/x/blobs/uploads/1":
			if b, err := io.ReadAll(r.Body); err != nil || !bytes.Equal(b, data) {
				http.Error(w, "bad upload", http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusAccepted)
		case r.Method == "PUT" && r.URL.Path == "/v2/x/blobs/uploads/1" && r.URL.Query().Get("digest") == digest:
			w.WriteHeader(http.StatusCreated)
		default:
			http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusBadRequest)
		}
	}))
	defer ts.Close()
	hc, _ := remoteHTTPClient("")
	host := strings.TrimPrefix(ts.URL, "http://")
	o := &ociRemote{display: "oci://" + host + "/x", host: host, repo: "x", hc: hc, scheme: "http", allowHTTP: true}
	release := make(chan struct{})
	defer close(release)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // only so that a hang fails
	defer cancel()
	sent, err := o.upload(ctx, "x", ociScope("x", true), "", ociDescriptor{Digest: digest, Size: int64(len(data))}, func() (io.ReadCloser, error) {
		return io.NopCloser(&ociStallingReader{bytes.NewReader(data), release}), nil
	})
	if err != nil || !sent {
		t.Fatalf("upload: %v (sent %v)", err, sent)
	}
}

// ociTestRegistry is docker-registry serving on loopback.
type ociTestRegistry struct {
	host string // 127.0.0.1:PORT
	data string
}

func ociFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startOCIRegistry runs Debian's docker-registry with auth (YAML under
// "auth:", or "" for none).
func startOCIRegistry(t *testing.T, auth string) *ociTestRegistry {
	t.Helper()
	bin := needTool(t, "docker-registry")
	dir := t.TempDir()
	r := &ociTestRegistry{host: fmt.Sprintf("127.0.0.1:%d", ociFreePort(t)), data: filepath.Join(dir, "data")}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: karapace-test-secret\n", r.data, r.host)
	if auth != "" {
		cfg += "auth:\n" + auth
	}
	cmd := exec.Command(bin, "serve", writeFile(t, dir, "config.yml", cfg))
	var out remoteSyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + r.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 || resp.StatusCode == 401 {
				return r
			}
		}
		select {
		case <-done:
			t.Fatalf("docker-registry exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not answer on %s:\n%s", r.host, out.String())
		}
	}
}

// blobFile is where the registry keeps a blob.
func (r *ociTestRegistry) blobFile(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.data, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}

// ociTokenServer issues registry tokens (JWT, ES256, with the certificate
// chain in x5c) to one user, the way a registry's auth service does.
type ociTokenServer struct {
	url, cert string
	mu        sync.Mutex
	scopes    []string
}

func startOCITokenServer(t *testing.T, user, password string) *ociTokenServer {
	t.Helper()
	certFile, _, key, der := remoteTestCert(t, t.TempDir())
	ts := &ociTokenServer{cert: certFile}
	b64 := base64.RawURLEncoding.EncodeToString
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != password {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		type access struct {
			Type    string   `json:"type"`
			Name    string   `json:"name"`
			Actions []string `json:"actions"`
		}
		var acc []access
		for _, s := range r.URL.Query()["scope"] {
			ts.mu.Lock()
			ts.scopes = append(ts.scopes, s)
			ts.mu.Unlock()
			if f := strings.Split(s, ":"); len(f) == 3 {
				acc = append(acc, access{f[0], f[1], strings.Split(f[2], ",")})
			}
		}
		now := time.Now().Unix()
		hdr, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(der)}})
		claims, _ := json.Marshal(map[string]any{"iss": "karapace-test-issuer", "sub": u, "aud": r.URL.Query().Get("service"),
			"exp": now + 300, "nbf": now - 10, "iat": now, "jti": fmt.Sprint(now, time.Now().UnixNano()), "access": acc})
		input := b64(hdr) + "." + b64(claims)
		sum := sha256.Sum256([]byte(input))
		rr, ss, err := ecdsa.Sign(rand.Reader, key, sum[:])
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		sig := make([]byte, 64)
		rr.FillBytes(sig[:32])
		ss.FillBytes(sig[32:])
		tok := input + "." + b64(sig)
		json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": 300})
	}))
	t.Cleanup(srv.Close)
	ts.url = srv.URL + "/token"
	return ts
}

// Push, push again, pull, run, and a tampered blob, against a real
// registry: anonymous, with basic auth (htpasswd), and with the bearer
// token flow.
func TestOCIRegistry(t *testing.T) {
	needReal(t)
	const user, password = "karapace", "registry-test-password" // testdata/remote/htpasswd
	htpasswd, err := filepath.Abs("testdata/remote/htpasswd")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"anonymous", "basic", "bearer"} {
		t.Run(mode, func(t *testing.T) {
			auth := ""
			var tokens *ociTokenServer
			switch mode {
			case "basic":
				auth = fmt.Sprintf("  htpasswd:\n    realm: karapace-test\n    path: %s\n", htpasswd)
			case "bearer":
				tokens = startOCITokenServer(t, user, password)
				auth = fmt.Sprintf("  token:\n    realm: %s\n    service: karapace-test\n    issuer: karapace-test-issuer\n    rootcertbundle: %s\n", tokens.url, tokens.cert)
			}
			reg := startOCIRegistry(t, auth)
			remote := "oci://" + reg.host + "/team"
			a := newKP(t)
			id := remoteMockEnv(t, a, "demo", `"git"`)
			upper := filepath.Join(a.store, "env", id, "upper")
			writeFile(t, upper, "etc/pulled.conf", "over oci\n")
			a.ok("restore", "demo", strings.TrimSpace(a.ok("commit", "demo")))
			creds := []string{"KARAPACE_REMOTE=" + remote}
			a.env = append(a.env, creds...)
			if mode != "anonymous" {
				a.fails(1, "KARAPACE_REGISTRY_USER", "push", "demo", "--tag", "demo@v1")
				a.env = append(a.env, "KARAPACE_REGISTRY_USER="+user, "KARAPACE_REGISTRY_PASSWORD=wrong")
				a.fails(1, "authentication failed", "push", "demo", "--tag", "demo@v1")
				creds = append(creds, "KARAPACE_REGISTRY_USER="+user, "KARAPACE_REGISTRY_PASSWORD="+password)
				a.env = append(a.env, creds...)
			}
			var p1, p2 pushResult
			a.jsonOut(&p1, "push", "demo", "--tag", "demo@v1")
			if p1.BlobsUploaded < 7 || p1.BlobsSkipped != 0 || p1.BytesUploaded == 0 {
				t.Fatalf("first push: %+v", p1)
			}
			a.jsonOut(&p2, "push", "demo", "--tag", "demo@v1")
			if p2.BlobsUploaded != 0 || p2.BlobsSkipped != p1.BlobsUploaded {
				t.Fatalf("second push: %+v", p2)
			}

			// A tagged push tags the environment by its env_id as well:
			// pulled by that, or by a prefix of it the tag list makes unique.
			c := newKP(t)
			c.env = append(c.env, creds...)
			if out := c.ok("pull", id); out != id+"\n" {
				t.Fatalf("pull by env_id: %q", out)
			}
			c.fails(1, "has no team/demo:v2", "pull", "demo@v2")
			e := newKP(t)
			e.env = append(e.env, creds...)
			if out := e.ok("pull", id[:10]); out != id+"\n" {
				t.Fatalf("pull by a prefix: %q", out)
			}
			e.ok("verify-store")
			other := "0"
			if id[0] == '0' {
				other = "1"
			}
			e.fails(1, "holds no environment "+other, "pull", other)
			last := "0"
			if id[63] == '0' {
				last = "1"
			}
			twin := id[:63] + last // another env_id tag with the same first 63 digits
			ociTestDo(t, reg, a, "PUT", "/v2/team/manifests/"+twin, ociTestDo(t, reg, a, "GET", "/v2/team/manifests/"+id, nil))
			mustContain(t, "ambiguous prefix", e.fails(1, "is ambiguous", "pull", id[:10]), id, twin)

			var p3 pushResult
			a.jsonOut(&p3, "push", "demo") // untagged: team:<env_id>, there already
			if p3.BlobsUploaded != 0 || p3.BlobsSkipped != p1.BlobsUploaded {
				t.Fatalf("untagged push: %+v", p3)
			}
			if tokens != nil {
				tokens.mu.Lock()
				scopes := strings.Join(tokens.scopes, " ")
				tokens.mu.Unlock()
				mustContain(t, "token scopes", scopes, "repository:team/demo:pull,push", "repository:team:pull,push")
			}

			b := newKP(t)
			b.env = append(b.env, creds...)
			if out := b.ok("pull", "demo@v1"); out != id+"\n" {
				t.Fatalf("pull: %q", out)
			}
			if out := b.ok("exec", "demo", "--", "echo", "hi"); out != "mock["+id[:12]+"]: echo hi\n" {
				t.Fatalf("exec of the pulled environment: %q", out)
			}
			if got, _ := os.ReadFile(filepath.Join(b.store, "env", id, "upper", "etc/pulled.conf")); string(got) != "over oci\n" {
				t.Fatalf("the writable layer: %q", got)
			}
			b.ok("verify-store")

			// Change one byte of the biggest object in the registry's storage.
			var man ociManifest
			resp := ociTestDo(t, reg, b, "GET", "/v2/team/demo/manifests/v1", nil)
			json.Unmarshal(resp, &man)
			var big ociDescriptor
			for _, d := range man.Layers {
				if d.Size > big.Size {
					big = d
				}
			}
			if man.ArtifactType != ociArtifactType || man.Config.MediaType != ociConfigType || big.Annotations[ociAnnKind] != blobObject {
				t.Fatalf("manifest: %+v", man)
			}
			data, err := os.ReadFile(reg.blobFile(big.Digest))
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 1
			os.WriteFile(reg.blobFile(big.Digest), data, 0o644)
			d := newKP(t)
			d.env = append(d.env, creds...)
			d.fails(1, "blob "+big.Digest+" is corrupt", "pull", "demo@v1")
			d.emptyStore()
		})
	}
}

// ociTestDo sends a request (a manifest, if any) to the registry with the
// credentials k would use, and returns the answer.
func ociTestDo(t *testing.T, reg *ociTestRegistry, k *kpRun, method, path string, manifest []byte) []byte {
	t.Helper()
	rs := &remoteSettings{url: "oci://" + reg.host + "/team"}
	for _, kv := range k.env {
		if v, ok := strings.CutPrefix(kv, "KARAPACE_REGISTRY_USER="); ok {
			rs.user = v
		}
		if v, ok := strings.CutPrefix(kv, "KARAPACE_REGISTRY_PASSWORD="); ok {
			rs.password = v
		}
	}
	o, err := newOCIRemote(rs)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.settle(t.Context()); err != nil {
		t.Fatal(err)
	}
	var body func() (io.ReadCloser, error)
	if manifest != nil {
		body = remoteBytesBody(manifest)
	}
	hdr := http.Header{"Accept": {ociManifestType}, "Content-Type": {ociManifestType}}
	resp, err := o.do(t.Context(), method, o.base()+path, ociScope("team/demo", false), hdr, body, int64(len(manifest)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, buf.String())
	}
	return buf.Bytes()
}

// A registry moves any tag it is told to, so the clients keep an env_id's
// layers fixed: push refuses to replace what the registry holds under the
// env_id with other layers, and a pull refuses what another writer put
// there, both for a client that holds the environment and for one that
// held it once.
func TestOCILayersFixed(t *testing.T) {
	reg := startOCIRegistry(t, "")
	team, elsewhere := "oci://"+reg.host+"/team", "oci://"+reg.host+"/elsewhere"
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	a.ok("push", "demo", "--remote", team)
	b := newKP(t)
	b.ok("pull", id, "--remote", team)
	c := newKP(t)
	c.ok("pull", id, "--remote", team)
	c.ok("destroy", id)
	c.ok("gc")

	writeFile(t, filepath.Join(a.store, "env", id, "upper"), "etc/changed", "x\n")
	snap := strings.TrimSpace(a.ok("commit", "demo"))
	before := ociTestDo(t, reg, a, "GET", "/v2/team/manifests/"+id, nil)
	mustContain(t, "refused push", a.fails(1, "environment "+id+" is on "+team+" with other layers", "push", "demo", "--remote", team, "--tag", "demo@v2"),
		"snapshots none (on "+team+") vs "+snap+" (here)")
	if after := ociTestDo(t, reg, a, "GET", "/v2/team/manifests/"+id, nil); !bytes.Equal(after, before) {
		t.Fatal("a refused push replaced the manifest")
	}

	// Another writer, without these checks, puts the changed environment
	// under the env_id: its blobs mounted from a repository where it was
	// pushed, then its manifest.
	a.ok("push", "demo", "--remote", elsewhere)
	man := ociTestDo(t, reg, a, "GET", "/v2/elsewhere/manifests/"+id, nil)
	var m ociManifest
	if err := json.Unmarshal(man, &m); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(m.Layers, m.Config) {
		ociTestDo(t, reg, a, "POST", "/v2/team/blobs/uploads/?mount="+d.Digest+"&from=elsewhere", nil)
	}
	ociTestDo(t, reg, a, "PUT", "/v2/team/manifests/"+id, man)

	for _, cl := range []*kpRun{b, c} {
		state := remoteStoreState(t, cl)
		cl.fails(1, "snapshots none (here) vs "+snap+" (in "+team+")", "pull", id, "--remote", team)
		if remoteStoreState(t, cl) != state {
			t.Fatal("a refused pull changed the store")
		}
		cl.ok("verify-store")
	}
}

// ociServeEnv serves the environment m of s as a registry would hold it
// in the repository team under its env_id, after edit changed what the
// registry says (the manifest) or sends (the blobs, by digest); blobs
// come with their Content-Length unless chunked.
func ociServeEnv(t *testing.T, s *store, m *envMeta, chunked bool, edit func(man *ociManifest, blobs map[string][]byte)) *httptest.Server {
	t.Helper()
	cl, err := s.closureOf(m)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	var descs []ociDescriptor
	for i, b := range cl.blobs() {
		var data []byte
		d := ociDescriptor{MediaType: ociObjectType, Annotations: map[string]string{ociAnnKind: b.Kind, ociAnnBlake3: b.Hash}}
		switch b.Kind {
		case blobObject:
			rc, err := s.openObject(b.Hash)
			if err != nil {
				t.Fatal(err)
			}
			data, _ = io.ReadAll(rc)
			rc.Close()
		case blobLayer:
			d.MediaType, data = ociLayerType, cl.layers[i-len(cl.objects)].fileBytes()
		case blobMetadata:
			d.MediaType, d.Annotations, data = ociConfigType, nil, cl.wire
		}
		sum := sha256.Sum256(data)
		d.Digest, d.Size = "sha256:"+hex.EncodeToString(sum[:]), int64(len(data))
		blobs[d.Digest] = data
		descs = append(descs, d)
	}
	man := &ociManifest{SchemaVersion: 2, MediaType: ociManifestType, ArtifactType: ociArtifactType,
		Config: descs[len(descs)-1], Layers: descs[:len(descs)-1], Annotations: map[string]string{ociAnnEnvID: m.EnvID}}
	edit(man, blobs)
	mb, _ := json.Marshal(man)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/v2/":
		case p == "/v2/team/manifests/"+m.EnvID:
			w.Header().Set("Content-Type", ociManifestType)
			w.Write(mb)
		case strings.HasPrefix(p, "/v2/team/blobs/"):
			b, ok := blobs[strings.TrimPrefix(p, "/v2/team/blobs/")]
			if !ok {
				http.NotFound(w, r)
				return
			}
			if !chunked {
				w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			}
			for i := 0; i < len(b); i += 1000 {
				w.Write(b[i:min(i+1000, len(b))])
				w.(http.Flusher).Flush()
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A registry's manifest declares every blob's size: a blob that comes
// longer than that, or a declaration above --max-object-size, is refused,
// and nothing is kept.
func TestOCIPullDeclaredSizes(t *testing.T) {
	a := newKP(t)
	id := remoteMockEnv(t, a, "demo", `"git"`)
	s, err := openStore(a.store)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.getMeta(id)
	if err != nil {
		t.Fatal(err)
	}
	biggest := func(man *ociManifest) *ociDescriptor {
		var big *ociDescriptor
		for i, d := range man.Layers {
			if d.Annotations[ociAnnKind] == blobObject && (big == nil || d.Size > big.Size) {
				big = &man.Layers[i]
			}
		}
		return big
	}
	for _, c := range []struct {
		chunked bool
		edit    func(man *ociManifest, blobs map[string][]byte)
		want    string
	}{
		{true, func(man *ociManifest, blobs map[string][]byte) { // more bytes than declared
			d := biggest(man)
			blobs[d.Digest] = append(blobs[d.Digest], "and more"...)
		}, "is longer than the "},
		{false, func(man *ociManifest, blobs map[string][]byte) { // said so in advance
			d := biggest(man)
			blobs[d.Digest] = append(blobs[d.Digest], "and more"...)
		}, "its manifest says; refusing it"},
		{false, func(man *ociManifest, blobs map[string][]byte) { // declared above the cap
			biggest(man).Size = 2 << 20
		}, "is larger than 1.0 MiB, the most a pull accepts (--max-object-size); refusing it"},
	} {
		srv := ociServeEnv(t, s, m, c.chunked, c.edit)
		b := newKP(t)
		b.fails(1, c.want, "pull", id, "--remote", "oci://"+strings.TrimPrefix(srv.URL, "http://")+"/team", "--max-object-size", "1M")
		b.emptyStore()
	}
	// Unchanged, it is pulled.
	srv := ociServeEnv(t, s, m, false, func(*ociManifest, map[string][]byte) {})
	b := newKP(t)
	if out := b.ok("pull", id, "--remote", "oci://"+strings.TrimPrefix(srv.URL, "http://")+"/team"); out != id+"\n" {
		t.Fatalf("pull: %q", out)
	}
	b.ok("verify-store")
}
