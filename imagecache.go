package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"lukechampine.com/blake3"
)

// defaultImageServer is the LXC image server; air-gapped sites point
// KARAPACE_IMAGE_SERVER or [images] server at a mirror of it.
const defaultImageServer = "https://images.linuxcontainers.org"

// lxcAliases maps our aliases to the image server's.
var lxcAliases = map[string]string{
	"rolling": "opensuse/tumbleweed", "opensuse": "opensuse/tumbleweed", "opensuse/tumbleweed": "opensuse/tumbleweed",
	"tumbleweed": "opensuse/tumbleweed", "opensuse/leap": "opensuse/15.6", "leap": "opensuse/15.6",
	"ubuntu": "ubuntu/noble", "ubuntu/24.04": "ubuntu/noble", "ubuntu/noble": "ubuntu/noble",
	"ubuntu/24.10": "ubuntu/oracular", "ubuntu/oracular": "ubuntu/oracular",
	"ubuntu/22.04": "ubuntu/jammy", "ubuntu/jammy": "ubuntu/jammy",
	"ubuntu/20.04": "ubuntu/focal", "ubuntu/focal": "ubuntu/focal",
	"debian": "debian/bookworm", "debian/bookworm": "debian/bookworm", "debian/12": "debian/bookworm",
	"debian/trixie": "debian/trixie", "debian/13": "debian/trixie", "debian/sid": "debian/sid",
	"fedora": "fedora/42", "fedora/40": "fedora/40", "fedora/41": "fedora/41", "fedora/42": "fedora/42",
	"arch": "archlinux", "archlinux": "archlinux",
}

func knownAliases() string {
	names := make([]string, 0, len(lxcAliases))
	for a := range lxcAliases {
		names = append(names, a)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// imageSource is a base image resolved to where its bytes are.
type imageSource struct {
	Location string // http(s) URL or absolute file path
	SHA256   string // the digest the bytes must have ("" when nothing pins it)
	BLAKE3   string // alternatively pinned by blake3
}

// imageEnv is what resolving and fetching images depends on.
type imageEnv struct {
	server  string
	client  *http.Client
	idle    time.Duration // a download that sends nothing this long fails
	offline bool
	cfg     imagesConfig
	out     *output
}

func newImageEnv(getenv func(string) string, offline bool, out *output) (*imageEnv, error) {
	e := &imageEnv{server: defaultImageServer, offline: offline, out: out}
	cfg, err := loadImagesConfig(getenv)
	if err != nil {
		return nil, err
	}
	e.cfg = cfg
	if cfg.Server != "" {
		e.server = cfg.Server
	}
	e.server = strings.TrimRight(e.server, "/")
	if e.idle, err = httpIdleTimeout(getenv); err != nil {
		return nil, err
	}
	e.client = &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: e.idle}).DialContext,
		TLSHandshakeTimeout:   e.idle,
		ResponseHeaderTimeout: e.idle,
		ForceAttemptHTTP2:     true,
	}}
	return e, nil
}

// resolve turns base.image into a source. Aliases go to the image
// server's simplestreams index: the newest build for this architecture
// and the default variant, with the sha256 the index gives.
func (e *imageEnv) resolve(ref imageRef, manifestDir string) (imageSource, error) {
	src := imageSource{}
	if ref.DigestAlgo == "sha256" {
		src.SHA256 = ref.Digest
	} else if ref.DigestAlgo == "blake3" {
		src.BLAKE3 = ref.Digest
	}
	switch ref.Kind {
	case imageFile:
		src.Location = ref.Name
		if !filepath.IsAbs(src.Location) {
			src.Location = filepath.Join(manifestDir, src.Location)
		}
		return src, nil
	case imageURL:
		src.Location = ref.Name
		return src, nil
	}
	// Our aliases mean the same after images:; any other name there is
	// one of the image server's own.
	alias, known := lxcAliases[ref.Name]
	if !known {
		if ref.Kind == imageAlias {
			return src, manifestErrorf("unknown image alias %q; known aliases: %s (or images:ALIAS for any alias of the image server, or a URL or path)", ref.Name, knownAliases())
		}
		alias = ref.Name
	}
	if e.offline {
		return src, fmt.Errorf("resolving image alias %q needs the image server, and --offline forbids the network; build with the lock (karapace.lock pins the exact image) or pin the image with 'karapace pin'", ref.Name)
	}
	src, err := e.simplestreams(alias)
	var none *noImageError
	if errors.As(err, &none) && !known {
		return src, manifestErrorf("%v; known aliases: %s", err, knownAliases())
	}
	return src, err
}

// noImageError is an alias the image server has no image of.
type noImageError struct{ server, arch, alias string }

func (e *noImageError) Error() string {
	return fmt.Sprintf("image server %s has no %s image of %q (variant default)", e.server, e.arch, e.alias)
}

type ssIndex struct {
	Index map[string]struct {
		Path     string   `json:"path"`
		Datatype string   `json:"datatype"`
		Products []string `json:"products"`
	} `json:"index"`
}

type ssProducts struct {
	Products map[string]struct {
		Aliases  string `json:"aliases"`
		Arch     string `json:"arch"`
		Variant  string `json:"variant"`
		Versions map[string]struct {
			Items map[string]struct {
				Ftype  string `json:"ftype"`
				Path   string `json:"path"`
				SHA256 string `json:"sha256"`
				Size   int64  `json:"size"`
			} `json:"items"`
		} `json:"versions"`
	} `json:"products"`
}

// simplestreams finds the root tarball of alias on the image server.
func (e *imageEnv) simplestreams(alias string) (imageSource, error) {
	var idx ssIndex
	if err := e.getJSON(e.server+"/streams/v1/index.json", &idx); err != nil {
		return imageSource{}, err
	}
	var productsPath string
	for _, ent := range idx.Index {
		if ent.Datatype == "image-downloads" {
			productsPath = ent.Path
		}
	}
	if productsPath == "" || strings.Contains(productsPath, "..") || strings.HasPrefix(productsPath, "/") {
		return imageSource{}, fmt.Errorf("image server %s: index.json names no usable image-downloads stream", e.server)
	}
	var prods ssProducts
	if err := e.getJSON(e.server+"/"+productsPath, &prods); err != nil {
		return imageSource{}, err
	}
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64", "386": "i386", "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}[runtime.GOARCH]
	bestVersion, best := "", imageSource{}
	for _, p := range prods.Products {
		if p.Arch != arch || (p.Variant != "" && p.Variant != "default") {
			continue
		}
		matched := false
		for _, a := range strings.Split(p.Aliases, ",") {
			a = strings.TrimSpace(a)
			matched = matched || a == alias || a == alias+"/default"
		}
		if !matched {
			continue
		}
		for v, ver := range p.Versions {
			for _, it := range ver.Items {
				if it.Ftype != "root.tar.xz" || v <= bestVersion {
					continue
				}
				if strings.Contains(it.Path, "..") || !isHexID(it.SHA256, 64) {
					return imageSource{}, fmt.Errorf("image server %s: bad item for %s version %s", e.server, alias, v)
				}
				bestVersion = v
				best = imageSource{Location: e.server + "/" + strings.TrimPrefix(it.Path, "/"), SHA256: it.SHA256}
			}
		}
	}
	if best.Location == "" {
		return imageSource{}, &noImageError{e.server, arch, alias}
	}
	e.out.debugf("alias %s resolved to %s (version %s)", alias, best.Location, bestVersion)
	return best, nil
}

func (e *imageEnv) getJSON(url string, v any) error {
	resp, err := e.get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	return nil
}

// get starts a download. The body fails if the server stays silent for
// the idle timeout, however long the whole transfer takes.
func (e *imageEnv) get(url string) (*http.Response, error) {
	return e.getContext(context.Background(), url)
}

// getContext is get that gives up when parent is done.
func (e *imageEnv) getContext(parent context.Context, url string) (*http.Response, error) {
	ctx, cancel := context.WithCancel(parent)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("User-Agent", "karapace/"+version)
	resp, err := e.client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("downloading %s: %w", url, err)
	}
	e.out.tracef("GET %s: %s", url, resp.Status)
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, &httpStatusError{url, resp.StatusCode, resp.Status}
	}
	resp.Body = newIdleReader(resp.Body, e.idle, cancel, url)
	return resp, nil
}

// httpStatusError is a download the server answered with an error.
type httpStatusError struct {
	url    string
	code   int
	status string
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("downloading %s: server answered %s", e.url, e.status)
}

// isNotFound tells a 404, for files that have an alternative to try.
func isNotFound(err error) bool {
	var se *httpStatusError
	return errors.As(err, &se) && se.code == http.StatusNotFound
}

// httpIdleTimeout is how long a download may wait for data:
// KARAPACE_HTTP_TIMEOUT, else a minute.
func httpIdleTimeout(getenv func(string) string) (time.Duration, error) {
	v := getenv("KARAPACE_HTTP_TIMEOUT")
	if v == "" {
		return time.Minute, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, usageErrorf("KARAPACE_HTTP_TIMEOUT=%q: not a duration like 30s", v)
	}
	return d, nil
}

// idleReader cancels a download when one read waits for data longer
// than idle. Only the waits count: a reader that takes its time between
// reads is not the server's fault.
type idleReader struct {
	rc     io.ReadCloser
	timer  *time.Timer
	idle   time.Duration
	url    string
	fired  atomic.Bool
	cancel func()
}

func newIdleReader(rc io.ReadCloser, idle time.Duration, cancel func(), url string) *idleReader {
	r := &idleReader{rc: rc, idle: idle, url: url, cancel: cancel}
	r.timer = time.AfterFunc(idle, func() { r.fired.Store(true); cancel() })
	r.timer.Stop()
	return r
}

func (r *idleReader) Read(p []byte) (int, error) {
	r.timer.Reset(r.idle)
	n, err := r.rc.Read(p)
	r.timer.Stop()
	if err != nil && err != io.EOF {
		if r.fired.Load() {
			return n, fmt.Errorf("downloading %s: no data for %s", r.url, r.idle)
		}
		return n, fmt.Errorf("downloading %s: %w", r.url, err)
	}
	return n, err
}

func (r *idleReader) Close() error {
	r.timer.Stop()
	r.cancel()
	return r.rc.Close()
}

// imagesDir is the image cache: <root>/images/sha256-HEX/{image,info.json,base-layer}.
func imagesDir(s *store) string { return filepath.Join(s.root, "images") }

// openImage opens the bytes of a source: the cached copy of a URL when
// there is one, downloading it into the cache otherwise, or the file. The
// reader checks every byte against the pinned digest (if any) and fails
// at the end when they differ; its digests are known after EOF.
func (e *imageEnv) openImage(s *store, src imageSource) (*imageReader, error) {
	if !isHTTPURL(src.Location) {
		f, err := openImageFile(src.Location)
		if err != nil {
			return nil, fmt.Errorf("opening image %s: %w", src.Location, err)
		}
		st, _ := f.Stat()
		return newImageReader(f, src, st.Size()), nil
	}
	if src.SHA256 != "" {
		if img, err := openCached(s, src); err == nil {
			e.out.debugf("image %s from the cache %s", src.Location, img.entry)
			return img, nil
		}
	}
	if e.offline {
		return nil, fmt.Errorf("image %s is not in the cache, and --offline forbids downloading it", src.Location)
	}
	sha, err := e.download(s, src)
	if err != nil {
		return nil, err
	}
	src.SHA256 = sha
	return openCached(s, src)
}

// openImageFile opens a local image, which must be a regular file: a
// device or a FIFO would never end, or never begin. It opens without
// waiting (a FIFO without a writer would block the open) and checks what
// it opened, not what the path named a moment before.
func openImageFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is %s, not an image file", path, fileKind(fi.Mode()))
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// fileKind names what a file that is not a regular file is.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "not a regular file"
}

func isHTTPURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// openCached opens the image cache's copy of a source, to be checked
// against the digest it is filed under as it is read.
func openCached(s *store, src imageSource) (*imageReader, error) {
	dir := filepath.Join(imagesDir(s), "sha256-"+src.SHA256)
	f, err := os.Open(filepath.Join(dir, "image"))
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	r := newImageReader(f, imageSource{Location: f.Name(), SHA256: src.SHA256, BLAKE3: src.BLAKE3}, st.Size())
	r.entry = dir
	return r, nil
}

// readImage opens a source and hands it to use. When the bytes are not
// what they should be, that is the error, whatever use made of them: a
// damaged image cache entry is removed and, for a URL when the network
// may be used, downloaded once more.
func (e *imageEnv) readImage(s *store, src imageSource, use func(*imageReader) error) error {
	for retried := false; ; retried = true {
		img, err := e.openImage(s, src)
		if err != nil {
			return err
		}
		err = img.failed(use(img))
		img.Close()
		var damaged *cacheDamageError
		if !errors.As(err, &damaged) {
			return err
		}
		dropCachedImage(s, damaged.entry)
		if retried || e.offline || !isHTTPURL(src.Location) {
			return err
		}
		e.out.warnf("%v; downloading %s again", err, src.Location)
	}
}

// cacheDamageError is an image cache entry whose bytes no longer have
// the digest it is filed under.
type cacheDamageError struct{ entry, got string }

func (e *cacheDamageError) Error() string {
	return fmt.Sprintf("image cache entry %s is damaged: its image has sha256 %s, not the %s it is filed under; removing it",
		e.entry, e.got, strings.TrimPrefix(filepath.Base(e.entry), "sha256-"))
}

// dropCachedImage removes a damaged download from the image cache, and
// the entry's base-layer index with it unless that names a layer still
// in the store (made from the right bytes, it stays right).
func dropCachedImage(s *store, dir string) {
	for _, f := range []string{"image", "info.json"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.out.warnf("removing the damaged image cache entry: %v", err)
		}
	}
	index := filepath.Join(dir, "base-layer")
	if data, err := os.ReadFile(index); err == nil {
		if l := strings.TrimSpace(string(data)); !validStoreHash(l) || !s.hasLayer(l) {
			os.Remove(index)
		}
	}
	os.Remove(dir) // only once empty
}

// download fetches a URL into the cache, verified against the pinned
// digest; only a complete, matching download becomes visible. It returns
// the sha256 the download is cached under.
func (e *imageEnv) download(s *store, src imageSource) (string, error) {
	resp, err := e.get(src.Location)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	tmpDir := filepath.Join(imagesDir(s), ".partial")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(tmpDir, "download-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	prog := e.out.progress("downloading "+path.Base(src.Location), resp.ContentLength, true)
	r := newImageReader(io.NopCloser(prog.reader(resp.Body)), src, resp.ContentLength)
	w := bufio.NewWriterSize(f, 1<<20)
	_, err = io.Copy(w, r)
	prog.finish()
	if err == nil {
		err = w.Flush()
	}
	if err == nil && resp.ContentLength >= 0 && r.n != resp.ContentLength {
		err = fmt.Errorf("downloading %s: got %d of %d bytes", src.Location, r.n, resp.ContentLength)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return "", err
	}
	dir := filepath.Join(imagesDir(s), "sha256-"+r.sha256)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	info, _ := json.Marshal(map[string]any{"url": src.Location, "sha256": r.sha256, "blake3": r.blake3, "size": r.n})
	if err := writeFileAtomic(filepath.Join(dir, "info.json"), info, 0o600); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, "image")); err != nil {
		return "", fmt.Errorf("caching %s: %w", src.Location, err)
	}
	return r.sha256, syncDir(dir)
}

// verifyImageCache re-hashes every image in the image cache against the
// digest it is filed under, reporting each one that differs; it returns
// how many it checked.
func (s *store) verifyImageCache(ctx context.Context, bad func(name, problem string)) (int, error) {
	entries, err := filepath.Glob(filepath.Join(imagesDir(s), "sha256-*", "image"))
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range entries {
		if st, err := os.Stat(p); err == nil {
			total += st.Size()
		}
	}
	prog := s.out.progress("verifying cached images", total, true)
	defer prog.finish()
	for _, p := range entries {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("verify-store interrupted: %w", err)
		}
		dir := filepath.Dir(p)
		name := "images/" + filepath.Base(dir)
		want := strings.TrimPrefix(filepath.Base(dir), "sha256-")
		f, err := os.Open(p)
		if err != nil {
			bad(name, err.Error())
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, prog.reader(f))
		f.Close()
		if got := hex.EncodeToString(h.Sum(nil)); err != nil {
			bad(name, fmt.Sprintf("reading: %v", err))
		} else if got != want {
			bad(name, fmt.Sprintf("corrupt: the image has sha256 %s; remove %s (the next build downloads it again)", got, dir))
		}
	}
	return len(entries), nil
}

// imageReader hashes every byte it passes with sha256 and blake3 and, at
// the end, refuses bytes that do not match the pinned digest.
type imageReader struct {
	rc             io.ReadCloser
	src            imageSource
	entry          string // the image cache entry it reads, if any
	size           int64
	n              int64
	sh             hash.Hash
	b3             *blake3.Hasher
	sha256, blake3 string // set at EOF
}

func newImageReader(rc io.ReadCloser, src imageSource, size int64) *imageReader {
	return &imageReader{rc: rc, src: src, size: size, sh: sha256.New(), b3: blake3.New(32, nil)}
}

func (r *imageReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n += int64(n)
	r.sh.Write(p[:n])
	r.b3.Write(p[:n])
	if err == io.EOF {
		r.sha256 = hex.EncodeToString(r.sh.Sum(nil))
		r.blake3 = hex.EncodeToString(r.b3.Sum(nil))
		if r.src.SHA256 != "" && r.sha256 != r.src.SHA256 {
			if r.entry != "" {
				return n, &cacheDamageError{r.entry, r.sha256}
			}
			return n, fmt.Errorf("image %s has sha256 %s, but %s was expected: refusing it", r.src.Location, r.sha256, r.src.SHA256)
		}
		if r.src.BLAKE3 != "" && r.blake3 != r.src.BLAKE3 {
			return n, fmt.Errorf("image %s has blake3 %s, but %s was expected: refusing it", r.src.Location, r.blake3, r.src.BLAKE3)
		}
	}
	return n, err
}

func (r *imageReader) Close() error { return r.rc.Close() }

// drain reads what a consumer left (a tar's end-of-archive blocks, the
// compression's trailer), so the digest covers every byte.
func (r *imageReader) drain() error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// failed explains a failure to use the image: bytes that are not the
// pinned ones are the cause of anything a decoder or unpacker then said,
// so the rest is read to find out.
func (r *imageReader) failed(err error) error {
	if err == nil || (r.src.SHA256 == "" && r.src.BLAKE3 == "") {
		return err
	}
	if derr := r.drain(); derr != nil && r.sha256 != "" {
		return derr
	}
	return err
}

// errRecorder keeps the first error its reader returned: when a stage
// fails because its input broke off, that error is the cause.
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// decompress recognizes gzip, xz and zstd by their magic bytes; anything
// else must be a plain tar.
func decompress(r io.Reader, name string) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	if compressed, err := uncompress(br, name); compressed != nil || err != nil {
		return compressed, err
	}
	head, _ := br.Peek(512)
	if len(head) < 512 || string(head[257:262]) != "ustar" {
		return nil, errors.New(name + " is not a tar archive (plain, gzip, xz or zstd)")
	}
	return br, nil
}

// uncompress returns a decompressing reader when br starts like gzip, xz
// or zstd data, and nil for anything else (plain data).
func uncompress(br *bufio.Reader, name string) (io.Reader, error) {
	magic, _ := br.Peek(6)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return gzip.NewReader(br)
	case len(magic) >= 6 && string(magic) == "\xfd7zXZ\x00":
		return newXZReader(br)
	case len(magic) >= 4 && string(magic[:4]) == "\x28\xb5\x2f\xfd":
		return newZstdReader(br)
	case len(magic) >= 3 && string(magic[:3]) == "BZh":
		return nil, fmt.Errorf("%s is bzip2-compressed; recompress it with xz, gzip or zstd", name)
	}
	return nil, nil
}
