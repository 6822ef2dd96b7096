package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"
	"unicode/utf8"
)

// Image reference kinds, chosen by prefix like LXD/Incus remotes.
const (
	imageAlias = "alias" // debian/bookworm: the distribution's archive or the LXC image server
	imageLXC   = "lxc"   // images:ALIAS: always the LXC image server
	imageURL   = "url"   // http(s)://... tarball
	imageFile  = "file"  // file:///... or a path to a tarball
)

// imageRef is a parsed base.image value.
type imageRef struct {
	Kind       string
	Name       string // alias, URL or path, without the digest fragment
	DigestAlgo string // "sha256" or "blake3" when pinned
	Digest     string // lowercase hex
}

// pinned reports whether the reference names exact bytes.
func (r imageRef) pinned() bool { return r.Digest != "" }

// parseImageRef checks the syntax of a base.image value. A URL or path may
// carry "#sha256=HEX" or "#blake3=HEX" to pin the exact bytes.
func parseImageRef(s string) (imageRef, error) {
	var r imageRef
	if s == "" {
		return r, fmt.Errorf("empty image reference")
	}
	if strings.ContainsAny(s, " \t\n\r\x00") {
		return r, fmt.Errorf("image reference %q contains whitespace", s)
	}
	ref, frag, hasFrag := strings.Cut(s, "#")
	switch {
	case strings.HasPrefix(ref, "images:"):
		r.Kind, r.Name = imageLXC, strings.TrimPrefix(ref, "images:")
		if !validAlias(r.Name) {
			return r, fmt.Errorf("invalid image alias %q after images:", r.Name)
		}
	case strings.HasPrefix(ref, "http://"), strings.HasPrefix(ref, "https://"):
		u, err := url.Parse(ref)
		if err != nil || u.Host == "" {
			return r, fmt.Errorf("invalid image URL %q", ref)
		}
		r.Kind, r.Name = imageURL, ref
	case strings.HasPrefix(ref, "file://"):
		u, err := url.Parse(ref)
		if err != nil || u.Path == "" || (u.Host != "" && u.Host != "localhost") {
			return r, fmt.Errorf("invalid file URL %q (expected file:///absolute/path)", ref)
		}
		r.Kind, r.Name = imageFile, u.Path
	case strings.HasPrefix(ref, "/"), strings.HasPrefix(ref, "./"), strings.HasPrefix(ref, "../"):
		r.Kind, r.Name = imageFile, ref
	case strings.Contains(ref, "://"):
		return r, fmt.Errorf("unsupported image URL scheme in %q (use http, https or file)", ref)
	default:
		if !validAlias(ref) {
			return r, fmt.Errorf("invalid image alias %q (for example debian/bookworm, or a URL or path to a tarball)", ref)
		}
		r.Kind, r.Name = imageAlias, ref
	}
	if r.Kind == imageFile {
		base := path.Base(r.Name)
		if strings.HasSuffix(r.Name, "/") || base == "." || base == ".." {
			return r, fmt.Errorf("image path %q does not name a tarball file", r.Name)
		}
	}
	if hasFrag {
		if r.Kind == imageAlias || r.Kind == imageLXC {
			return r, fmt.Errorf("an alias cannot carry a digest; run 'karapace pin' to pin %q", ref)
		}
		algo, digest, ok := strings.Cut(frag, "=")
		if !ok || (algo != "sha256" && algo != "blake3") {
			return r, fmt.Errorf("image digest %q: expected #sha256=HEX or #blake3=HEX", frag)
		}
		if b, err := hex.DecodeString(digest); err != nil || len(b) != 32 || digest != strings.ToLower(digest) {
			return r, fmt.Errorf("image digest %q: expected 64 lowercase hex digits", frag)
		}
		r.DigestAlgo, r.Digest = algo, digest
	}
	return r, nil
}

// checkImageSource refuses, before any work, an image that cannot be
// read safely: bytes fetched over plain http that no digest pins (the
// manifest's, the lock's or the image server's index), which anyone on
// the way could swap, unless allowInsecure; and a local path that is not
// a regular file (a device or a FIFO never ends, a directory is no
// tarball).
func checkImageSource(src imageSource, image string, allowInsecure bool) error {
	switch {
	case strings.HasPrefix(src.Location, "http://"):
		if src.SHA256 == "" && src.BLAKE3 == "" && !allowInsecure {
			return fmt.Errorf("base.image %q is downloaded over plain http and pinned to no digest, so anyone on the way could swap it: pin it (URL#sha256=DIGEST, see 'karapace pin --allow-insecure'), use https, or pass --allow-insecure", image)
		}
	case isHTTPURL(src.Location):
	default:
		if fi, err := os.Stat(src.Location); err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("base.image %q: %s is %s, not an image file", image, src.Location, fileKind(fi.Mode()))
		}
	}
	return nil
}

func validAlias(s string) bool {
	if s == "" || len(s) > 64 || strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/") || strings.Contains(s, "..") {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '/' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// cmdPin checks (--check) or pins base.image to exact bytes.
func cmdPin(c *cli) error {
	path := "karapace.toml"
	if len(c.args) > 0 {
		path = c.args[0]
	}
	m, err := loadManifest(path)
	if err != nil {
		return err
	}
	ref, _ := parseImageRef(m.BaseImage) // loadManifest checked it
	cfg, err := loadImagesConfig(c.getenv)
	if err != nil {
		return err
	}
	spec, err := archiveFor(ref, cfg)
	if err != nil {
		return err
	}
	if c.has("check") {
		if spec != nil {
			return fmt.Errorf("%s: base.image %q is not pinned to a digest; it is bootstrapped from the %s archive, which 'karapace pin' cannot pin (see 'karapace pin --help')", path, m.BaseImage, spec.Distro)
		}
		if !ref.pinned() {
			return fmt.Errorf("%s: base.image %q is not pinned to a digest; run 'karapace pin %s'", path, m.BaseImage, path)
		}
		if c.json {
			return writeJSON(c.stdout, map[string]any{"manifest": m.Path, "pinned": true, "base_image": m.BaseImage})
		}
		fmt.Fprintf(c.stdout, "%s: base.image is pinned (%s:%s)\n", path, ref.DigestAlgo, ref.Digest)
		return nil
	}
	if spec != nil {
		return archivePinError(path, m.BaseImage, spec)
	}
	e, err := c.engine()
	if err != nil {
		return err
	}
	pinned, err := e.pinImage(m.BaseImage, m.Dir, c.has("allow-insecure"))
	if err != nil {
		var c *codedError
		if errors.As(err, &c) && c.code == exitManifest {
			return manifestErrorf("%s: %v", path, err)
		}
		return err
	}
	if pinned != m.BaseImage {
		if err := rewriteBaseImage(m.Path, pinned); err != nil {
			return err
		}
	}
	result := map[string]any{"manifest": m.Path, "pinned": true, "base_image": pinned}
	if c.has("write-lock") {
		res, err := e.build(m.Path, buildOptions{})
		if err != nil {
			return err
		}
		result["env_id"], result["lock"] = res.EnvID, res.Lock
	}
	if c.json {
		return writeJSON(c.stdout, result)
	}
	fmt.Fprintf(c.stdout, "%s: base.image = %q\n", path, pinned)
	return nil
}

// archivePinError refuses to pin a base bootstrapped from a distribution
// archive: there is no image file to pin, and pinning the image server's
// image of the same name would switch the source behind the user's back.
func archivePinError(path, image string, spec *archiveSpec) error {
	snapshot := map[string]string{
		"debian": "https://snapshot.debian.org/archive/debian/20250101T000000Z",
		"ubuntu": "https://snapshot.ubuntu.com/ubuntu/20250101T000000Z",
	}[spec.Distro]
	return manifestErrorf(`%s: base.image %q is bootstrapped from the %s archive (%s, suite %s), which has no image file to pin; pin does not switch it to another source. Instead:
  - image = "images:%s" builds from the LXC image server's image; 'karapace pin' then pins its URL and sha256
  - image = the URL or path of a root filesystem tarball, pinned the same way
  - or keep the alias: karapace.lock records the mirror and the exact base resolved, 'karapace build --locked' insists on them, and a snapshot mirror ([images] %s_mirror = %q) keeps that base reproducible`,
		path, image, spec.Distro, spec.Mirror, spec.Suite, image, spec.Distro, snapshot)
}

// pinImage returns the reference with the sha256 of the image's bytes:
// an alias resolves on the image server, whose index gives the digest; a
// URL is downloaded into the image cache; a file is read. A URL or path
// keeps the form it was given in (file://, relative).
func (e *engine) pinImage(image, dir string, allowInsecure bool) (string, error) {
	ref, err := parseImageRef(image)
	if err != nil {
		return "", err
	}
	images, err := newImageEnv(e.getenv, false, e.out)
	if err != nil {
		return "", err
	}
	src, err := images.resolve(ref, dir)
	if err != nil {
		return "", err
	}
	if err := checkImageSource(src, image, allowInsecure); err != nil {
		return "", manifestErrorf("%v", err)
	}
	if ref.Kind == imageAlias || ref.Kind == imageLXC {
		return src.Location + "#sha256=" + src.SHA256, nil
	}
	// A download lands in the image cache, which gc --images empties.
	sl, err := e.s.lock("pin")
	if err != nil {
		return "", err
	}
	defer sl.unlock()
	var sha string
	err = images.readImage(e.s, src, func(img *imageReader) error {
		err := img.drain()
		sha = img.sha256
		return err
	})
	if err != nil {
		if ref.pinned() {
			return "", fmt.Errorf("pin: %w (the manifest pins %s:%s)", err, ref.DigestAlgo, ref.Digest)
		}
		return "", fmt.Errorf("pin: %w", err)
	}
	given, _, _ := strings.Cut(image, "#")
	return given + "#sha256=" + sha, nil
}

// rewriteBaseImage replaces the value of base.image in the manifest's text,
// keeping every comment and all other formatting, and checks the result.
func rewriteBaseImage(path, value string) error {
	data, err := readLimited(path, maxManifestSize)
	if err != nil {
		return err
	}
	_, pos, err := decodeTOMLPos(data)
	if err != nil {
		return manifestErrorf("%s: %v", path, err)
	}
	p, ok := pos[tomlPath("base", "image")]
	if !ok {
		return manifestErrorf("%s: base.image not found", path)
	}
	start, end, ok := stringValueSpan(data, p)
	if !ok {
		return fmt.Errorf("%s: cannot rewrite base.image in place (not a one-line string); set it by hand to %q", path, value)
	}
	quoted, err := encodeTOML([]tomlKV{{"v", value}})
	if err != nil {
		return err
	}
	q := strings.TrimSpace(strings.TrimPrefix(string(quoted), "v = "))
	out := append(append(append([]byte{}, data[:start]...), q...), data[end:]...)
	m, err := parseManifest(path, path, out)
	if err != nil || m.BaseImage != value {
		return fmt.Errorf("%s: rewriting base.image did not give the expected manifest; set it by hand to %q", path, value)
	}
	return writeFileAtomic(path, out, 0o644)
}

// stringValueSpan finds the byte span of the one-line string value that
// follows the key at p (1-based line and code-point column).
func stringValueSpan(data []byte, p tomlPos) (int, int, bool) {
	off := 0
	for line := 1; line < p.Line; line++ {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			return 0, 0, false
		}
		off += i + 1
	}
	for col := 1; col < p.Col && off < len(data); col++ {
		_, size := utf8.DecodeRune(data[off:])
		off += size
	}
	eq := bytes.IndexByte(data[off:], '=')
	nl := bytes.IndexByte(data[off:], '\n')
	if eq < 0 || (nl >= 0 && nl < eq) {
		return 0, 0, false
	}
	i := off + eq + 1
	for i < len(data) && (data[i] == ' ' || data[i] == '\t') {
		i++
	}
	if i >= len(data) || (data[i] != '"' && data[i] != '\'') {
		return 0, 0, false
	}
	q := data[i]
	if bytes.HasPrefix(data[i:], []byte{q, q, q}) {
		return 0, 0, false
	}
	for j := i + 1; j < len(data) && data[j] != '\n'; j++ {
		if q == '"' && data[j] == '\\' {
			j++
			continue
		}
		if data[j] == q {
			return i, j + 1, true
		}
	}
	return 0, 0, false
}
