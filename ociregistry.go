package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Any registry that speaks the OCI distribution API can be the remote:
// --remote oci://HOST[:PORT]/REPO. An environment becomes an OCI
// artifact: an image manifest whose config is the environment's metadata
// and whose layers are its layer manifests and objects, each annotated
// with its kind and blake3 name.
//
// Names: NAME@TAG is the repository REPO/NAME with the tag TAG (the
// usual registry/name:tag reading, so NAME must be lowercase there). Every
// environment pushed, with --tag or without, is also in REPO itself,
// tagged with its env_id (its blobs mounted there from REPO/NAME), and is
// pulled back by that env_id or by a prefix of it that begins no other
// env_id tag of REPO (the tag list tells).
//
// Blobs are addressed by sha256 in OCI: push computes it from the local
// object (or takes it from the manifest already under the tag, which a
// pull checks again), asks HEAD whether the registry has it, and
// otherwise uploads it (POST, one streamed PATCH, PUT ?digest=). Pull
// checks every blob's sha256 and then its blake3 before it enters the
// store. Plain http is used only for loopback hosts or with
// --insecure-registry, and only when the registry does not speak https.

const (
	ociManifestType = "application/vnd.oci.image.manifest.v1+json"
	ociArtifactType = "application/vnd.karapace.env.v1+json"
	ociConfigType   = "application/vnd.karapace.env.metadata.v1+json"
	ociLayerType    = "application/vnd.karapace.layer.v1+json"
	ociObjectType   = "application/vnd.karapace.object.v1"
	ociAnnKind      = "org.karapace.kind"
	ociAnnBlake3    = "org.karapace.blake3"
	ociAnnEnvID     = "org.karapace.env_id"
	ociMaxManifest  = 4 << 20
)

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ociManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        ociDescriptor     `json:"config"`
	Layers        []ociDescriptor   `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// ociRemote is one repository of an OCI registry.
type ociRemote struct {
	display   string // the URL as given
	host      string // HOST[:PORT]
	repo      string
	allowHTTP bool
	user      string
	password  string
	hc        *http.Client
	maxObj    int64         // the largest object a pull accepts
	idle      time.Duration // how long a response may keep the client waiting for data
	out       *output

	mu     sync.Mutex
	scheme string // https, or http once the registry turned out to speak it
	authz  string // the Authorization header that works for this repository
}

// ociValidRepo checks a repository name by the distribution grammar:
// components of lowercase letters and digits joined by '.', '_', "__" or
// runs of '-', separated by '/'.
func ociValidRepo(repo string) bool {
	if repo == "" || len(repo) > 255 {
		return false
	}
	for _, c := range strings.Split(repo, "/") {
		i := 0
		alnum := func() bool {
			start := i
			for i < len(c) && ('a' <= c[i] && c[i] <= 'z' || '0' <= c[i] && c[i] <= '9') {
				i++
			}
			return i > start
		}
		if !alnum() {
			return false
		}
		for i < len(c) {
			switch {
			case strings.HasPrefix(c[i:], "__"):
				i += 2
			case c[i] == '_' || c[i] == '.':
				i++
			case c[i] == '-':
				for i < len(c) && c[i] == '-' {
					i++
				}
			default:
				return false
			}
			if !alnum() {
				return false
			}
		}
	}
	return true
}

func newOCIRemote(rs *remoteSettings) (*ociRemote, error) {
	rest := strings.TrimPrefix(rs.url, "oci://")
	host, repo, _ := strings.Cut(strings.TrimRight(rest, "/"), "/")
	u, err := url.Parse("//" + host)
	if err != nil || host == "" || u.Host != host || u.User != nil || u.Path != "" {
		return nil, usageErrorf("remote %q: expected oci://HOST[:PORT]/REPOSITORY", rs.url)
	}
	if !ociValidRepo(repo) {
		return nil, usageErrorf("remote %q: %q is not a repository name (lowercase letters, digits, '.', '_', '-', parts separated by '/')", rs.url, repo)
	}
	hc, err := remoteHTTPClient(rs.caCert)
	if err != nil {
		return nil, err
	}
	return &ociRemote{out: rs.out, display: rs.url, host: host, repo: repo, allowHTTP: rs.insecure || remoteLoopback(u.Hostname()),
		user: rs.user, password: rs.password, hc: hc, scheme: "https", maxObj: rs.maxObj, idle: rs.idle}, nil
}

// target is where an environment lives in the registry.
func (o *ociRemote) target(ref string) (repo, tag string, err error) {
	if validStoreHash(ref) {
		return o.repo, ref, nil
	}
	if !strings.Contains(ref, "@") {
		return "", "", usageErrorf("%q is neither NAME@TAG nor an env_id (or a prefix of one)", ref)
	}
	name, tag, err := splitRemoteTag(ref)
	if err != nil {
		return "", "", err
	}
	repo = o.repo + "/" + name
	if !ociValidRepo(repo) {
		return "", "", usageErrorf("%q: the name %q cannot be part of an OCI repository name (lowercase letters, digits and single separators only)", ref, name)
	}
	return repo, tag, nil
}

func (o *ociRemote) base() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.scheme + "://" + o.host
}

// settle finds out whether the registry speaks https, or plain http
// where that is allowed.
func (o *ociRemote) settle(ctx context.Context) error {
	rctx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "https://"+o.host+"/v2/", nil)
	resp, err := remoteRoundTrip(o.hc, req, cancel, o.idle)
	if err == nil {
		resp.Body.Close()
		return nil
	}
	if !strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return remoteNetError("connecting to the registry", o.display, err)
	}
	if !o.allowHTTP {
		return fmt.Errorf("the registry %s speaks plain http, which is allowed only for loopback hosts or with --insecure-registry", o.host)
	}
	o.mu.Lock()
	o.scheme = "http"
	o.mu.Unlock()
	return nil
}

// do sends a request with the credentials that work, answering a 401
// challenge once (Basic, or the Bearer token flow) and waiting out 429
// and 503. body opens the request body afresh for each attempt.
func (o *ociRemote) do(ctx context.Context, method, rawURL, scope string, hdr http.Header, body func() (io.ReadCloser, error), size int64) (*http.Response, error) {
	what := method + " " + rawURL
	challenged := false
	for attempt := 0; ; attempt++ {
		var rc io.ReadCloser
		if body != nil {
			var err error
			if rc, err = body(); err != nil {
				return nil, err
			}
		}
		rctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(rctx, method, rawURL, rc)
		if err != nil {
			cancel()
			if rc != nil {
				rc.Close()
			}
			return nil, err
		}
		if body != nil {
			req.ContentLength = size
		}
		maps.Copy(req.Header, hdr)
		req.Header.Set("User-Agent", "karapace/"+version)
		o.mu.Lock()
		if o.authz != "" {
			req.Header.Set("Authorization", o.authz)
		}
		o.mu.Unlock()
		resp, err := remoteRoundTrip(o.hc, req, cancel, o.idle)
		if err != nil {
			return nil, remoteNetError(what, o.display, err)
		}
		o.out.tracef("%s %s: %s", method, rawURL, resp.Status)
		switch {
		case resp.StatusCode == http.StatusUnauthorized && !challenged:
			challenged = true
			ch := resp.Header.Get("WWW-Authenticate")
			remoteDrop(resp)
			if err := o.authenticate(ctx, ch, scope); err != nil {
				return nil, err
			}
			continue
		case (resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests) && attempt < 30:
			if err := remoteBackOff(ctx, resp); err != nil {
				return nil, remoteNetError(what, o.display, err)
			}
			continue
		}
		return resp, nil
	}
}

func (o *ociRemote) statusError(what string, resp *http.Response) error {
	return remoteStatusError(what+" on "+o.display, resp, "KARAPACE_REGISTRY_USER and KARAPACE_REGISTRY_PASSWORD")
}

// ociParseChallenge reads a WWW-Authenticate value: a scheme, then
// comma-separated key=value pairs, values plain or quoted.
func ociParseChallenge(h string) (scheme string, params map[string]string) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	params = map[string]string{}
	for rest = strings.TrimSpace(rest); rest != ""; {
		eq := strings.IndexByte(rest, '=')
		if eq < 0 {
			break
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimSpace(rest[eq+1:])
		var val strings.Builder
		if strings.HasPrefix(rest, `"`) {
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				val.WriteByte(rest[i])
			}
			rest = rest[min(i+1, len(rest)):]
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			val.WriteString(strings.TrimSpace(rest[:end]))
			rest = rest[end:]
		}
		params[key] = val.String()
		rest = strings.TrimLeft(strings.TrimSpace(rest), ",")
		rest = strings.TrimSpace(rest)
	}
	return strings.ToLower(scheme), params
}

// authenticate answers a challenge: Basic with the credentials, or
// Bearer by fetching a token from the realm for the scope.
func (o *ociRemote) authenticate(ctx context.Context, challenge, scope string) error {
	scheme, p := ociParseChallenge(challenge)
	hint := "set KARAPACE_REGISTRY_USER and KARAPACE_REGISTRY_PASSWORD (or registry_user and registry_password in [remote])"
	switch scheme {
	case "basic":
		if o.user == "" {
			return fmt.Errorf("the registry %s requires authentication: %s", o.host, hint)
		}
		o.mu.Lock()
		o.authz = "Basic " + base64.StdEncoding.EncodeToString([]byte(o.user+":"+o.password))
		o.mu.Unlock()
		return nil
	case "bearer":
	default:
		return fmt.Errorf("the registry %s asks for authentication of a kind karapace does not know (%q)", o.host, challenge)
	}
	realm, err := url.Parse(p["realm"])
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") || realm.Host == "" {
		return fmt.Errorf("the registry %s sent an invalid token realm %q", o.host, p["realm"])
	}
	if realm.Scheme == "http" && o.user != "" && !o.allowHTTP && !remoteLoopback(realm.Hostname()) {
		return fmt.Errorf("the registry %s wants credentials sent in clear text to %s; refusing (--insecure-registry allows it)", o.host, realm)
	}
	q := realm.Query()
	if s := p["service"]; s != "" {
		q.Set("service", s)
	}
	scopes := strings.Fields(scope)
	if s := p["scope"]; s != "" && !slices.Contains(scopes, s) {
		scopes = append(scopes, s)
	}
	q["scope"] = scopes
	realm.RawQuery = q.Encode()
	rctx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, realm.String(), nil)
	req.Header.Set("User-Agent", "karapace/"+version)
	if o.user != "" {
		req.SetBasicAuth(o.user, o.password)
	}
	resp, err := remoteRoundTrip(o.hc, req, cancel, o.idle)
	if err != nil {
		return remoteNetError("getting a registry token", realm.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if o.user == "" {
			return remoteStatusError("getting a token from "+realm.Host, resp, "KARAPACE_REGISTRY_USER and KARAPACE_REGISTRY_PASSWORD (none are set)")
		}
		return remoteStatusError("getting a token from "+realm.Host, resp, "KARAPACE_REGISTRY_USER and KARAPACE_REGISTRY_PASSWORD")
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tok); err != nil {
		return fmt.Errorf("getting a token from %s: %w", realm.Host, err)
	}
	t := tok.Token
	if t == "" {
		t = tok.AccessToken
	}
	if t == "" {
		return fmt.Errorf("getting a token from %s: the answer holds no token", realm.Host)
	}
	o.mu.Lock()
	o.authz = "Bearer " + t
	o.mu.Unlock()
	return nil
}

// ociScope is the token scope of a request on repo; one that needs
// several (a mount) names them separated by spaces.
func ociScope(repo string, push bool) string {
	if push {
		return "repository:" + repo + ":pull,push"
	}
	return "repository:" + repo + ":pull"
}

// manifest fetches the manifest under tag; nil if there is none.
func (o *ociRemote) manifest(ctx context.Context, repo, tag, scope string) (*ociManifest, error) {
	hdr := http.Header{"Accept": {ociManifestType}}
	resp, err := o.do(ctx, http.MethodGet, o.base()+"/v2/"+repo+"/manifests/"+tag, scope, hdr, nil, 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, o.statusError("fetching the manifest "+repo+":"+tag, resp)
	}
	var m ociManifest
	if err := json.NewDecoder(io.LimitReader(resp.Body, ociMaxManifest)).Decode(&m); err != nil {
		return nil, fmt.Errorf("reading the manifest %s:%s from %s: %w", repo, tag, o.host, err)
	}
	if m.SchemaVersion != 2 || (m.MediaType != "" && m.MediaType != ociManifestType) || m.Config.MediaType != ociConfigType {
		return nil, fmt.Errorf("%s:%s on %s is not a karapace environment (its config is %q)", repo, tag, o.host, m.Config.MediaType)
	}
	return &m, nil
}

func ociKey(kind, b3 string) string { return kind + "/" + b3 }

func ociDigest(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func (o *ociRemote) push(ctx context.Context, s *store, c *envClosure, tag string, res *pushResult) error {
	repo, otag := o.repo, c.meta.EnvID
	if tag != "" {
		var err error
		if repo, otag, err = o.target(tag); err != nil {
			return err
		}
	}
	if err := o.settle(ctx); err != nil {
		return err
	}
	scope := ociScope(repo, true)
	old, err := o.checkPublished(ctx, c)
	if err != nil {
		return err
	}
	if repo != o.repo || otag != c.meta.EnvID { // the manifest under the tag gives the hints
		if old, err = o.manifest(ctx, repo, otag, scope); err != nil {
			return err
		}
	}
	blobs, descs, small, err := ociDescribe(ctx, s, c, old)
	if err != nil {
		return err
	}
	man := ociManifest{SchemaVersion: 2, MediaType: ociManifestType, ArtifactType: ociArtifactType,
		Config: descs[len(descs)-1], Layers: descs[:len(descs)-1], Annotations: map[string]string{ociAnnEnvID: c.meta.EnvID}}
	p := &ociPush{o: o, out: o.out, s: s, short: c.meta.ShortID, blobs: blobs, descs: descs, small: small, sent: make([]bool, len(blobs))}
	p.manifest, _ = json.Marshal(&man)
	if err := p.to(ctx, repo, otag, scope, ""); err != nil {
		return err
	}
	// Every environment is also tagged by its env_id in the repository
	// itself, where a pull by env_id (or a prefix of one) finds it; its
	// blobs are mounted there from the tag's repository, not sent again.
	if repo != o.repo {
		if err := p.to(ctx, o.repo, c.meta.EnvID, ociScope(o.repo, true)+" "+ociScope(repo, false), repo); err != nil {
			return err
		}
	}
	for i, sent := range p.sent {
		if sent {
			res.BlobsUploaded++
			res.BytesUploaded += blobs[i].Size
		} else {
			res.BlobsSkipped++
		}
	}
	return nil
}

// ociDescribe makes the descriptors of the closure's blobs, in sending
// order, and keeps the small ones (layer manifests, metadata) by digest.
// The manifest already under the tag (old, if any) knows the sha256 of
// what it shares with this environment: those objects are not read twice.
func ociDescribe(ctx context.Context, s *store, c *envClosure, old *ociManifest) ([]remoteBlob, []ociDescriptor, map[string][]byte, error) {
	hints := map[string]ociDescriptor{}
	if old != nil {
		for _, d := range old.Layers {
			hints[ociKey(d.Annotations[ociAnnKind], d.Annotations[ociAnnBlake3])] = d
		}
	}
	blobs := c.blobs()
	descs := make([]ociDescriptor, len(blobs))
	small := map[string][]byte{}
	for i, b := range blobs {
		descs[i] = ociDescriptor{Size: b.Size, Annotations: map[string]string{ociAnnKind: b.Kind, ociAnnBlake3: b.Hash}}
		var data []byte
		switch b.Kind {
		case blobObject:
			descs[i].MediaType = ociObjectType
			if h, ok := hints[ociKey(b.Kind, b.Hash)]; ok && h.Size == b.Size && strings.HasPrefix(h.Digest, "sha256:") {
				descs[i].Digest = h.Digest
			}
			continue
		case blobLayer:
			descs[i].MediaType = ociLayerType
			data = c.layers[i-len(c.objects)].fileBytes()
		case blobMetadata:
			descs[i].MediaType = ociConfigType
			descs[i].Annotations = nil
			data = c.wire
		}
		sum := sha256.Sum256(data)
		descs[i].Digest = "sha256:" + hex.EncodeToString(sum[:])
		small[descs[i].Digest] = data
	}
	err := remoteParallel(ctx, len(c.objects), func(ctx context.Context, i int) error {
		if descs[i].Digest != "" {
			return nil
		}
		rc, err := s.openObject(blobs[i].Hash)
		if err != nil {
			return err
		}
		defer rc.Close()
		h := sha256.New()
		bp := storeBufPool.Get().(*[]byte)
		defer storeBufPool.Put(bp)
		if _, err := io.CopyBuffer(h, rc, *bp); err != nil {
			return err
		}
		descs[i].Digest = ociDigest(h)
		return nil
	})
	return blobs, descs, small, err
}

// checkPublished returns the manifest under the environment's env_id in
// the repository, if there is one, and refuses to push when it names
// other layers. A registry moves any tag it is told to: the pushing
// client keeps the rule a karapace server keeps for itself (see
// binding.go).
func (o *ociRemote) checkPublished(ctx context.Context, c *envClosure) (*ociManifest, error) {
	scope := ociScope(o.repo, false)
	man, err := o.manifest(ctx, o.repo, c.meta.EnvID, scope)
	if err != nil || man == nil {
		return nil, err
	}
	b, err := (&ociSource{o: o, ctx: ctx, repo: o.repo, scope: scope}).get(man.Config, remoteMaxMeta)
	if err != nil {
		return nil, err
	}
	theirs, err := remoteParseMeta(c.meta.EnvID, b)
	if err != nil {
		return nil, fmt.Errorf("the metadata in %s:%s on %s is invalid: %v; refusing to replace it", o.repo, c.meta.EnvID, o.host, err)
	}
	return man, remoteLayersPublished(c.meta, theirs, o.display)
}

// ociPush puts one environment, its manifest made, into repositories.
type ociPush struct {
	o        *ociRemote
	out      *output
	s        *store
	short    string // the environment's short id
	blobs    []remoteBlob
	descs    []ociDescriptor
	small    map[string][]byte // layer manifests and metadata by digest
	manifest []byte
	mu       sync.Mutex
	sent     []bool // the blobs whose bytes went to the registry
}

// to gives repo every blob the registry says it lacks, mounted from the
// repository from where that works, and then the manifest under tag.
func (p *ociPush) to(ctx context.Context, repo, tag, scope, from string) error {
	o := p.o
	missing := make([]bool, len(p.blobs))
	if err := remoteParallel(ctx, len(p.blobs), func(ctx context.Context, i int) error {
		resp, err := o.do(ctx, http.MethodHead, o.base()+"/v2/"+repo+"/blobs/"+p.descs[i].Digest, scope, nil, nil, 0)
		if err != nil {
			return err
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			missing[i] = true
		default:
			return o.statusError("checking blob "+p.descs[i].Digest, resp)
		}
		return nil
	}); err != nil {
		return err
	}
	var todo []int
	var total int64
	for i := range p.blobs {
		if missing[i] {
			todo = append(todo, i)
			total += p.blobs[i].Size
		}
	}
	sort.SliceStable(todo, func(a, b int) bool { return p.blobs[todo[a]].Size > p.blobs[todo[b]].Size })
	label := "pushing " + p.short
	if from != "" {
		label, total = "tagging "+p.short+" by its env_id", 0 // mounted, unless the registry cannot
	}
	prog := p.out.progress(label, total, true)
	defer prog.finish()
	if err := remoteParallel(ctx, len(todo), func(ctx context.Context, k int) error {
		i := todo[k]
		body := func() (io.ReadCloser, error) {
			if b, ok := p.small[p.descs[i].Digest]; ok {
				return io.NopCloser(bytes.NewReader(b)), nil
			}
			rc, err := p.s.openObject(p.blobs[i].Hash)
			if err != nil {
				return nil, err
			}
			return remoteReadCloser{prog.reader(rc), rc}, nil
		}
		sent, err := o.upload(ctx, repo, scope, from, p.descs[i], body)
		if err != nil {
			return err
		}
		if sent {
			p.mu.Lock()
			p.sent[i] = true
			p.mu.Unlock()
		}
		return nil
	}); err != nil {
		return err
	}
	hdr := http.Header{"Content-Type": {ociManifestType}}
	resp, err := o.do(ctx, http.MethodPut, o.base()+"/v2/"+repo+"/manifests/"+tag, scope, hdr, remoteBytesBody(p.manifest), int64(len(p.manifest)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return o.statusError("putting the manifest "+repo+":"+tag, resp)
	}
	return nil
}

// upload sends one blob: POST opens an upload, one PATCH streams the
// whole body (its sha256 computed on the way), PUT ?digest= closes it.
// With from, the POST asks to mount the blob from that repository of the
// registry instead; a registry that cannot opens an upload as usual. It
// reports whether the bytes were sent.
func (o *ociRemote) upload(ctx context.Context, repo, scope, from string, d ociDescriptor, body func() (io.ReadCloser, error)) (bool, error) {
	what := "uploading blob " + d.Digest
	post := o.base() + "/v2/" + repo + "/blobs/uploads/"
	if from != "" {
		post += "?" + url.Values{"mount": {d.Digest}, "from": {from}}.Encode()
	}
	resp, err := o.do(ctx, http.MethodPost, post, scope, nil, nil, 0)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if from != "" && resp.StatusCode == http.StatusCreated {
		return false, nil
	}
	if resp.StatusCode != http.StatusAccepted {
		return false, o.statusError(what, resp)
	}
	loc, err := o.location(resp)
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	var hr *ociHashReader // of the last attempt
	hashed := func() (io.ReadCloser, error) {
		rc, err := body()
		if err != nil {
			return nil, err
		}
		hr = &ociHashReader{r: rc, h: sha256.New()}
		return remoteReadCloser{hr, rc}, nil
	}
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err = o.do(ctx, http.MethodPatch, loc.String(), scope, hdr, hashed, d.Size)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusCreated {
		return false, o.statusError(what, resp)
	}
	if got := hr.sum(); got != d.Digest {
		return false, fmt.Errorf("%s: the bytes sent hash to %s; the object changed while it was read", what, got)
	}
	if resp.Header.Get("Location") != "" {
		if loc, err = o.location(resp); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
	}
	q := loc.Query()
	q.Set("digest", d.Digest)
	loc.RawQuery = q.Encode()
	resp, err = o.do(ctx, http.MethodPut, loc.String(), scope, nil, nil, 0)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return false, o.statusError(what, resp)
	}
	return true, nil
}

// location resolves an upload's Location, which may be relative.
func (o *ociRemote) location(resp *http.Response) (*url.URL, error) {
	l := resp.Header.Get("Location")
	u, err := url.Parse(l)
	if err != nil || l == "" {
		return nil, fmt.Errorf("the registry sent no usable upload location (%q)", l)
	}
	return resp.Request.URL.ResolveReference(u), nil
}

// ociHashReader hashes what is read through it. The transport reads a
// request body in a goroutine of its own, which may still be at it (to
// see the end after the last byte) when the response is in: reads and
// sum take turns.
type ociHashReader struct {
	r  io.Reader
	mu sync.Mutex
	h  hash.Hash
}

func (r *ociHashReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.mu.Lock()
	r.h.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// sum is the digest of the bytes read so far: of all of them once the
// registry has taken the upload, for it cannot have more than was read.
func (r *ociHashReader) sum() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ociDigest(r.h)
}

// ociVerifyReader fails at the end, instead of returning io.EOF, when the
// bytes are not the descriptor's.
type ociVerifyReader struct {
	r io.Reader
	h hash.Hash
	d ociDescriptor
	n int64
}

func (v *ociVerifyReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.d.Size {
		return n, fmt.Errorf("blob %s is longer than the %d bytes its manifest says", v.d.Digest, v.d.Size)
	}
	if err == io.EOF {
		if got := ociDigest(v.h); got != v.d.Digest || v.n != v.d.Size {
			return n, fmt.Errorf("blob %s is corrupt: its %d bytes hash to %s; refusing it", v.d.Digest, v.n, got)
		}
	}
	return n, err
}

// resolve turns a pull reference into where the environment is: NAME@TAG
// and env_ids by target, a prefix of an env_id by the tags of the
// repository, of which it must begin exactly one env_id.
func (o *ociRemote) resolve(ctx context.Context, ref string) (repo, tag string, err error) {
	if validStoreHash(ref) || !isHexPrefix(ref) {
		return o.target(ref)
	}
	tags, err := o.tags(ctx, o.repo)
	if err != nil {
		return "", "", err
	}
	var found []string
	for _, t := range tags {
		if validStoreHash(t) && strings.HasPrefix(t, ref) {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return "", "", fmt.Errorf("%s holds no environment %s", o.display, ref)
	case 1:
		return o.repo, found[0], nil
	}
	slices.Sort(found)
	return "", "", usageErrorf("%q is ambiguous on %s; it could be any of:\n  %s", ref, o.display, strings.Join(found, "\n  "))
}

// tags lists the tags of repo (none if the registry does not know it),
// page after page as the Link headers lead.
func (o *ociRemote) tags(ctx context.Context, repo string) ([]string, error) {
	var all []string
	next := o.base() + "/v2/" + repo + "/tags/list"
	for pages := 0; next != ""; pages++ {
		if pages == 10000 {
			return nil, fmt.Errorf("listing the tags of %s on %s: more than %d pages", repo, o.host, pages)
		}
		resp, err := o.do(ctx, http.MethodGet, next, ociScope(repo, false), nil, nil, 0)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusNotFound && pages == 0 {
			resp.Body.Close()
			return nil, nil
		}
		if resp.StatusCode != http.StatusOK {
			defer resp.Body.Close()
			return nil, o.statusError("listing the tags of "+repo, resp)
		}
		var page struct {
			Tags []string `json:"tags"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, remoteMaxDoc)).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the tags of %s on %s: %w", repo, o.host, err)
		}
		all = append(all, page.Tags...)
		if next, err = ociNextPage(resp); err != nil {
			return nil, fmt.Errorf("listing the tags of %s on %s: %w", repo, o.host, err)
		}
	}
	return all, nil
}

// ociNextPage is the URL a Link header with rel="next" names, resolved
// against the request's, or "" on the last page.
func ociNextPage(resp *http.Response) (string, error) {
	for _, v := range resp.Header.Values("Link") {
		for _, link := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(link, ";")
			target = strings.TrimSpace(target)
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
				continue
			}
			u, err := url.Parse(target[1 : len(target)-1])
			if err != nil {
				return "", fmt.Errorf("an invalid Link %q", link)
			}
			return resp.Request.URL.ResolveReference(u).String(), nil
		}
	}
	return "", nil
}

func (o *ociRemote) source(ctx context.Context, ref string, prog *progress) (envSource, error) {
	if err := o.settle(ctx); err != nil {
		return nil, err
	}
	repo, tag, err := o.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	src := &ociSource{o: o, ctx: ctx, repo: repo, scope: ociScope(repo, false), prog: prog, byKey: map[string]ociDescriptor{}}
	man, err := o.manifest(ctx, repo, tag, src.scope)
	if err != nil {
		return nil, err
	}
	if man == nil {
		return nil, fmt.Errorf("%s has no %s:%s", o.display, repo, tag)
	}
	for _, d := range man.Layers {
		kind, b3 := d.Annotations[ociAnnKind], d.Annotations[ociAnnBlake3]
		if (kind == blobObject || kind == blobLayer) && validStoreHash(b3) && strings.HasPrefix(d.Digest, "sha256:") && d.Size >= 0 {
			src.byKey[ociKey(kind, b3)] = d
		}
	}
	if man.Config.Size > remoteMaxMeta {
		return nil, fmt.Errorf("%s:%s: the metadata is larger than %d bytes", repo, tag, remoteMaxMeta)
	}
	b, err := src.get(man.Config, remoteMaxMeta)
	if err != nil {
		return nil, err
	}
	want := "" // what a tag names is whatever it names
	if repo == o.repo {
		want = tag
	}
	if src.m, err = remoteParseMeta(want, b); err != nil {
		return nil, fmt.Errorf("the metadata in %s:%s on %s is invalid: %v; refusing it", repo, tag, o.host, err)
	}
	if id := man.Annotations[ociAnnEnvID]; id != "" && id != src.m.EnvID {
		return nil, fmt.Errorf("%s:%s on %s is annotated as environment %s but holds the metadata of %s; refusing it", repo, tag, o.host, id, src.m.EnvID)
	}
	return src, nil
}

// ociSource reads an environment from a registry.
type ociSource struct {
	o     *ociRemote
	ctx   context.Context
	repo  string
	scope string
	prog  *progress
	m     *envMeta
	byKey map[string]ociDescriptor
}

// open starts reading a blob, checked against the descriptor as it goes.
func (s *ociSource) open(ctx context.Context, d ociDescriptor) (io.ReadCloser, error) {
	resp, err := s.o.do(ctx, http.MethodGet, s.o.base()+"/v2/"+s.repo+"/blobs/"+d.Digest, s.scope, nil, nil, 0)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, s.o.statusError("fetching blob "+d.Digest, resp)
	}
	if resp.ContentLength > d.Size {
		resp.Body.Close()
		return nil, fmt.Errorf("blob %s on %s comes as %d bytes, more than the %d its manifest says; refusing it", d.Digest, s.o.host, resp.ContentLength, d.Size)
	}
	return remoteReadCloser{&ociVerifyReader{r: resp.Body, h: sha256.New(), d: d}, resp.Body}, nil
}

func (s *ociSource) get(d ociDescriptor, limit int64) ([]byte, error) {
	if d.Size > limit {
		return nil, fmt.Errorf("blob %s: %d bytes is more than the %d expected", d.Digest, d.Size, limit)
	}
	rc, err := s.open(s.ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("fetching blob %s from %s: %w", d.Digest, s.o.host, err)
	}
	return b, nil
}

func (s *ociSource) origin() string { return s.o.display }

func (s *ociSource) meta() (*envMeta, error) { return s.m, nil }

func (s *ociSource) layer(hash string) (*layer, error) {
	d, ok := s.byKey[ociKey(blobLayer, hash)]
	if !ok {
		return nil, fmt.Errorf("%s on %s lacks layer %s, which the environment needs", s.repo, s.o.host, hash)
	}
	b, err := s.get(d, maxLayerFile)
	if err != nil {
		return nil, err
	}
	l, err := parseLayer(hash, b)
	if err != nil {
		return nil, fmt.Errorf("layer %s in %s on %s is corrupt: %v; refusing it", hash, s.repo, s.o.host, err)
	}
	return l, nil
}

func (s *ociSource) objects(need map[string]bool, got func(string, io.Reader) error) error {
	hashes := slices.Sorted(maps.Keys(need))
	for _, h := range hashes {
		d, ok := s.byKey[ociKey(blobObject, h)]
		if !ok {
			return fmt.Errorf("%s on %s lacks object %s, which the environment needs", s.repo, s.o.host, h)
		}
		if d.Size > s.o.maxObj {
			return remoteTooBig("object "+h+" in "+s.repo+" on "+s.o.host, s.o.maxObj)
		}
	}
	return remoteParallel(s.ctx, len(hashes), func(ctx context.Context, i int) error {
		h := hashes[i]
		rc, err := s.open(ctx, s.byKey[ociKey(blobObject, h)])
		if err != nil {
			return err
		}
		defer rc.Close()
		if err := got(h, s.prog.reader(rc)); err != nil {
			return fmt.Errorf("%v (from %s)", err, s.o.display)
		}
		return nil
	})
}
