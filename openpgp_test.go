package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Test material in testdata/pgp is made by testdata/pgp/gen.sh with GnuPG
// (test-only keys, created 2024-01-01, signatures dated 2024-01-01/02).
var pgpT0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func pgpTestFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "pgp", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pgpTestKeyring(t testing.TB, names ...string) *pgpKeyring {
	t.Helper()
	k := &pgpKeyring{}
	for _, n := range names {
		one, err := readPGPKeyring(bytes.NewReader(pgpTestFile(t, n)))
		if err != nil {
			t.Fatalf("reading %s: %v", n, err)
		}
		k.add(one)
	}
	return k
}

// pgpGPGV runs the real gpgv and returns its status lines and whether it
// accepted the signature.
func pgpGPGV(t *testing.T, keyring string, args ...string) (string, bool) {
	t.Helper()
	gpgv := needTool(t, "gpgv")
	home := t.TempDir()
	abs, err := filepath.Abs(keyring)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(keyring, ".asc") { // gpgv reads binary keyrings only
		gpg := needTool(t, "gpg")
		bin := filepath.Join(home, "keyring.gpg")
		cmd := exec.Command(gpg, "--batch", "--yes", "--output", bin, "--dearmor", abs)
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gpg --dearmor %s: %v\n%s", keyring, err, out)
		}
		abs = bin
	}
	cmd := exec.Command(gpgv, append([]string{"--status-fd", "1", "--keyring", abs}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	out, err := cmd.Output()
	return string(out), err == nil
}

func TestPGPGeneratedSignatures(t *testing.T) {
	msg := pgpTestFile(t, "msg.txt")
	day2 := pgpT0.Add(48 * time.Hour)
	cases := []struct {
		name, keyring, sig string
		clear              bool
		now                time.Time
		want               string // substring of the signer, or of the error when bad
		bad                bool
		gpgvStatus         string // what gpgv says on the status fd (it judges at the real time)
	}{
		{"rsa binary detached", "rsa.pub.gpg", "rsa.sig", false, day2, "Test RSA <rsa@test.invalid> (key 4C809342AA84FF34A9B5058871BCB28EA1C8B063)", false, "GOODSIG"},
		{"rsa clearsigned sha512", "rsa.pub.gpg", "rsa.clear.asc", true, day2, "Test RSA", false, "GOODSIG"},
		{"rsa text-mode armored detached sha384", "rsa.pub.gpg", "rsa.text.asc", false, day2, "Test RSA", false, "GOODSIG"},
		{"ed25519 subkey clearsigned", "ed.pub.asc", "ed.clear.asc", true, day2, "Test Ed25519 <ed@test.invalid> (key ", false, "GOODSIG"},
		{"ed25519 subkey armored detached", "ed.pub.asc", "ed.sig.asc", false, day2, ", signing subkey ", false, "GOODSIG"},
		{"sha1 refused", "rsa.pub.gpg", "rsa.sha1.sig", false, day2, "SHA-1, which is refused", true, "GOODSIG"},
		{"unknown critical subpacket", "rsa.pub.gpg", "rsa.critical.sig", false, day2, "unknown critical subpacket type 20", true, "BADSIG"},
		{"wrong key", "ed.pub.asc", "rsa.sig", false, day2, "key 4C809342AA84FF34A9B5058871BCB28EA1C8B063): no such key in the trusted keyring", true, "NO_PUBKEY"},
		{"expired key, before expiry", "expired.pub.gpg", "expired.sig", false, pgpT0.Add(12 * time.Hour), "Test Expired", false, "EXPKEYSIG"},
		{"expired key", "expired.pub.gpg", "expired.sig", false, day2, "expired on 2024-01-02", true, "EXPKEYSIG"},
		{"revoked key", "revoked.pub.gpg", "revoked.sig", false, day2, "was revoked on 2024-01-01", true, "REVKEYSIG"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := pgpTestKeyring(t, c.keyring)
			sig := pgpTestFile(t, c.sig)
			var signer string
			var err error
			if c.clear {
				var text []byte
				text, signer, err = k.verifyClearsigned(sig, c.now)
				if err == nil {
					want := regexp.MustCompile(`[ \t]+\n`).ReplaceAll(msg, []byte("\n"))
					if !bytes.Equal(text, want) {
						t.Errorf("clear-signed text:\n%q\nwant\n%q", text, want)
					}
				}
			} else {
				signer, err = k.verifyDetached(bytes.NewReader(msg), sig, c.now)
			}
			if c.bad {
				if err == nil {
					t.Fatalf("accepted (signer %s), want error containing %q", signer, c.want)
				}
				mustContain(t, "error", err.Error(), c.want)
			} else {
				if err != nil {
					t.Fatal(err)
				}
				mustContain(t, "signer", signer, c.want)
			}
			args := []string{filepath.Join("testdata", "pgp", c.sig)}
			if !c.clear {
				args = append(args, filepath.Join("testdata", "pgp", "msg.txt"))
			}
			status, _ := pgpGPGV(t, filepath.Join("testdata", "pgp", c.keyring), args...)
			mustContain(t, "gpgv status", status, "[GNUPG:] "+c.gpgvStatus)
		})
	}
}

// TestPGPTampered changes the data, the signature and the keyring of
// signatures that verify, one thing at a time.
func TestPGPTampered(t *testing.T) {
	msg := pgpTestFile(t, "msg.txt")
	now := pgpT0.Add(48 * time.Hour)
	k := pgpTestKeyring(t, "rsa.pub.gpg", "ed.pub.asc")
	sig := pgpTestFile(t, "rsa.sig")
	if _, err := k.verifyDetached(bytes.NewReader(msg), sig, now); err != nil {
		t.Fatal(err)
	}
	for i := range msg {
		bad := bytes.Clone(msg)
		bad[i] ^= 0x01
		if _, err := k.verifyDetached(bytes.NewReader(bad), sig, now); err == nil {
			t.Fatalf("data with byte %d changed verifies", i)
		}
	}
	// The last bytes are the RSA value: the hash prefix still matches, so
	// this reaches the RSA check itself.
	bad := bytes.Clone(sig)
	bad[len(bad)-5] ^= 0x40
	_, err := k.verifyDetached(bytes.NewReader(msg), bad, now)
	if err == nil {
		t.Fatal("flipped signature byte verifies")
	}
	mustContain(t, "error", err.Error(), "RSA signature does not verify")
	for _, n := range []int{1, 10, len(sig) / 2, len(sig) - 1} {
		if _, err := k.verifyDetached(bytes.NewReader(msg), sig[:n], now); err == nil {
			t.Fatalf("signature truncated to %d bytes verifies", n)
		}
	}
	_, err = k.verifyDetached(bytes.NewReader(msg), sig[:len(sig)-1], now)
	mustContain(t, "error", fmt.Sprint(err), "truncated packet")

	clear := pgpTestFile(t, "ed.clear.asc")
	if _, _, err := k.verifyClearsigned(clear, now); err != nil {
		t.Fatal(err)
	}
	changed := bytes.Replace(clear, []byte("last line"), []byte("last linE"), 1)
	_, _, err = k.verifyClearsigned(changed, now)
	mustContain(t, "error", fmt.Sprint(err), "hash prefix mismatch")
	// Whitespace at line ends and LF versus CRLF are not part of what is signed.
	crlf := bytes.ReplaceAll(clear, []byte("\n"), []byte("\r\n"))
	crlf = bytes.Replace(crlf, []byte("Origin: Test"), []byte("Origin: Test \t"), 1)
	if text, _, err := k.verifyClearsigned(crlf, now); err != nil || !bytes.HasPrefix(text, []byte("Origin: Test\n-----BEGIN")) {
		t.Fatalf("CRLF and trailing blanks: %v %q", err, text)
	}
	// Armor checksum.
	armored := pgpTestFile(t, "ed.sig.asc")
	crc := regexp.MustCompile(`(?m)^=....$`).FindIndex(armored)
	badCRC := bytes.Clone(armored)
	badCRC[crc[0]+1] ^= 0x01
	_, err = k.verifyDetached(bytes.NewReader(msg), badCRC, now)
	mustContain(t, "error", fmt.Sprint(err), "CRC24 mismatch")
}

func TestPGPClearsignedFraming(t *testing.T) {
	k := pgpTestKeyring(t, "ed.pub.asc")
	good := string(pgpTestFile(t, "ed.clear.asc"))
	now := pgpT0.Add(48 * time.Hour)
	cases := map[string]string{
		"text before":       "unsigned\n" + good,
		"extra header":      strings.Replace(good, "Hash: SHA256\n", "Hash: SHA256\nComment: hello\n", 1),
		"hash not declared": strings.Replace(good, "Hash: SHA256", "Hash: SHA512", 1),
		"unescaped dash":    strings.Replace(good, "- From", "-From", 1),
		"data after":        good + "\nOrigin: Evil\n",
		"second block":      good + "\n" + good,
		"no signature":      good[:strings.Index(good, "-----BEGIN PGP SIGNATURE-----")],
		"no end":            strings.Replace(good, "-----END PGP SIGNATURE-----", "", 1),
	}
	wants := map[string]string{
		"text before":       "does not start with",
		"extra header":      `unexpected header "Comment: hello"`,
		"hash not declared": "hash SHA256 is not declared in the Hash header (SHA512)",
		"unescaped dash":    "not dash-escaped",
		"data after":        "data after the signature",
		"second block":      "data after the signature",
		"no signature":      "no -----BEGIN PGP SIGNATURE----- line",
		"no end":            "no -----END PGP SIGNATURE----- line",
	}
	for name, msg := range cases {
		_, _, err := k.verifyClearsigned([]byte(msg), now)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		mustContain(t, name, err.Error(), wants[name])
	}
	if _, _, err := k.verifyClearsigned([]byte(good+"\n\n"), now); err != nil {
		t.Errorf("blank lines after the signature: %v", err)
	}
}

func TestPGPCRLFWriter(t *testing.T) {
	in := "a\nb\r\nc\r\r\n\n\rd\n"
	want := "a\r\nb\r\nc\r\r\n\r\n\rd\r\n"
	for step := 1; step <= len(in); step++ {
		var out bytes.Buffer
		w := &pgpCRLFWriter{w: &out}
		for i := 0; i < len(in); i += step {
			w.Write([]byte(in[i:min(i+step, len(in))]))
		}
		if out.String() != want {
			t.Fatalf("chunks of %d: %q, want %q", step, out.String(), want)
		}
	}
}

// ---- keys and signatures made here, for cases GnuPG will not produce ----

type pgpTestKey struct {
	algo byte
	body []byte
	fpr  []byte
	priv ed25519.PrivateKey
}

func pgpTestNewKey(seed byte, created time.Time, algo byte) *pgpTestKey {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	b := binary.BigEndian.AppendUint32([]byte{4}, uint32(created.Unix()))
	b = append(b, algo)
	if algo == pgpAlgoEdDSALegacy {
		b = append(b, byte(len(pgpEd25519OID)))
		b = append(b, pgpEd25519OID...)
		b = append(b, 0x01, 0x07, 0x40) // 263 bits: the 0x40 prefix and 32 bytes
	}
	b = append(b, priv.Public().(ed25519.PublicKey)...)
	h := sha1.New()
	h.Write([]byte{0x99, byte(len(b) >> 8), byte(len(b))})
	h.Write(b)
	return &pgpTestKey{algo: algo, body: b, fpr: h.Sum(nil), priv: priv}
}

func pgpTestSub(typ byte, critical bool, data ...byte) []byte {
	if critical {
		typ |= 0x80
	}
	return append([]byte{byte(len(data) + 1), typ}, data...)
}

func pgpTestU32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func pgpTestPacket(tag byte, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{0xc0 | tag, 255}, uint32(len(body))), body...)
}

func pgpTestMPI(b []byte) []byte {
	b = bytes.TrimLeft(b, "\x00")
	bits := 0
	if len(b) > 0 {
		bits = (len(b)-1)*8 + len(fmt.Sprintf("%b", b[0]))
	}
	return append([]byte{byte(bits >> 8), byte(bits)}, b...)
}

// sign makes a v4 signature packet (SHA-256) by k over what feed writes,
// with creation time and issuer fingerprint plus the given subpackets.
func (k *pgpTestKey) sign(sigType byte, created time.Time, hashed, unhashed []byte, feed func(io.Writer)) []byte {
	hs := append(pgpTestSub(2, false, pgpTestU32(uint32(created.Unix()))...), pgpTestSub(33, false, append([]byte{4}, k.fpr...)...)...)
	hs = append(hs, hashed...)
	body := append([]byte{4, sigType, k.algo, 8, byte(len(hs) >> 8), byte(len(hs))}, hs...)
	h := sha256.New()
	feed(h)
	h.Write(body)
	h.Write(append([]byte{4, 0xff}, pgpTestU32(uint32(len(body)))...))
	d := h.Sum(nil)
	sig := ed25519.Sign(k.priv, d)
	body = append(body, byte(len(unhashed)>>8), byte(len(unhashed)))
	body = append(body, unhashed...)
	body = append(body, d[0], d[1])
	if k.algo == pgpAlgoEdDSALegacy {
		body = append(body, pgpTestMPI(sig[:32])...)
		return pgpTestPacket(pgpTagSignature, append(body, pgpTestMPI(sig[32:])...))
	}
	return pgpTestPacket(pgpTagSignature, append(body, sig...))
}

func pgpTestFeed(uid string, keys ...*pgpTestKey) func(io.Writer) {
	return func(w io.Writer) {
		for _, k := range keys {
			w.Write([]byte{0x99, byte(len(k.body) >> 8), byte(len(k.body))})
			w.Write(k.body)
		}
		if uid != "" {
			w.Write(append([]byte{0xb4}, pgpTestU32(uint32(len(uid)))...))
			w.Write([]byte(uid))
		}
	}
}

func pgpTestData(data []byte) func(io.Writer) { return func(w io.Writer) { w.Write(data) } }

// cert is a primary key packet, a user ID and its self-signature.
func (k *pgpTestKey) cert(uid string, hashed []byte) []byte {
	out := pgpTestPacket(pgpTagPublicKey, k.body)
	out = append(out, pgpTestPacket(pgpTagUserID, []byte(uid))...)
	return append(out, k.sign(0x13, pgpT0, hashed, nil, pgpTestFeed(uid, k))...)
}

// subkey is a subkey packet and its binding signature, with a
// back-signature when backsig is set.
func (k *pgpTestKey) subkey(sk *pgpTestKey, hashed []byte, backsig bool) []byte {
	out := pgpTestPacket(pgpTagPublicSubkey, sk.body)
	var unhashed []byte
	if backsig {
		bs := sk.sign(pgpSigPrimaryBinding, pgpT0, nil, nil, pgpTestFeed("", k, sk))
		bs = bs[6:] // the packet body
		unhashed = append([]byte{255}, pgpTestU32(uint32(len(bs)+1))...)
		unhashed = append(unhashed, 32)
		unhashed = append(unhashed, bs...)
	}
	return append(out, k.sign(pgpSigSubkeyBinding, pgpT0, hashed, unhashed, pgpTestFeed("", k, sk))...)
}

func TestPGPKeyPolicy(t *testing.T) {
	data := []byte("Origin: Test\n")
	at := pgpT0.Add(time.Hour)
	now := pgpT0.Add(24 * time.Hour)
	flags := func(f byte) []byte { return pgpTestSub(27, false, f) }
	keyExp := func(d time.Duration) []byte { return pgpTestSub(9, false, pgpTestU32(uint32(d.Seconds()))...) }

	primary := pgpTestNewKey(1, pgpT0, pgpAlgoEdDSALegacy)
	signSub := pgpTestNewKey(2, pgpT0, pgpAlgoEdDSALegacy)
	encSub := pgpTestNewKey(3, pgpT0, pgpAlgoEdDSALegacy)
	noBacksig := pgpTestNewKey(4, pgpT0, pgpAlgoEdDSALegacy)
	shortSub := pgpTestNewKey(5, pgpT0, pgpAlgoEdDSALegacy)
	revokedSub := pgpTestNewKey(6, pgpT0, pgpAlgoEdDSALegacy)
	certOnly := pgpTestNewKey(7, pgpT0, pgpAlgoEdDSALegacy)
	modern := pgpTestNewKey(8, pgpT0, pgpAlgoEd25519)
	retired := pgpTestNewKey(9, pgpT0, pgpAlgoEd25519)
	unsigned := pgpTestNewKey(10, pgpT0, pgpAlgoEd25519)

	var ring []byte
	ring = append(ring, primary.cert("Primary <p@test.invalid>", flags(0x03))...)
	ring = append(ring, pgpTestPacket(12, []byte{0, 0})...) // a trust packet, ignored
	ring = append(ring, pgpTestPacket(pgpTagUserAttribute, []byte{1, 2, 3})...)
	ring = append(ring, primary.subkey(signSub, flags(0x02), true)...)
	ring = append(ring, primary.subkey(encSub, flags(0x0c), false)...)
	ring = append(ring, primary.subkey(noBacksig, flags(0x02), false)...)
	ring = append(ring, primary.subkey(shortSub, append(flags(0x02), keyExp(2*time.Hour)...), true)...)
	ring = append(ring, primary.subkey(revokedSub, flags(0x02), true)...)
	ring = append(ring, primary.sign(pgpSigSubkeyRevoke, pgpT0.Add(2*time.Hour), nil, nil, pgpTestFeed("", primary, revokedSub))...)
	ring = append(ring, certOnly.cert("Cert only <c@test.invalid>", flags(0x01))...)
	// A version 6 key is skipped with a note, the keys around it stay.
	ring = append(ring, pgpTestPacket(pgpTagPublicKey, []byte{6, 0, 0, 0, 0, 27, 0, 0, 0, 32})...)
	ring = append(ring, pgpTestPacket(pgpTagUserID, []byte("v6 <v6@test.invalid>"))...)
	ring = append(ring, modern.cert("Modern <m@test.invalid>", nil)...)
	ring = append(ring, retired.cert("Retired <r@test.invalid>", nil)...)
	ring = append(ring, retired.sign(pgpSigKeyRevocation, pgpT0.Add(2*time.Hour), pgpTestSub(29, false, 3), nil, pgpTestFeed("", retired))...)
	ring = append(ring, pgpTestPacket(pgpTagPublicKey, unsigned.body)...)
	// A self-signature with an unknown critical subpacket does not count.
	ring = append(ring, pgpTestPacket(pgpTagUserID, []byte("U"))...)
	ring = append(ring, unsigned.sign(0x13, pgpT0, pgpTestSub(100, true), nil, pgpTestFeed("U", unsigned))...)

	k, err := readPGPKeyring(bytes.NewReader(ring))
	if err != nil {
		t.Fatal(err)
	}
	if len(k.notes) != 1 || !strings.Contains(k.notes[0], "unsupported key version 6") {
		t.Fatalf("notes: %q", k.notes)
	}
	fpr := func(k *pgpTestKey) string { return fmt.Sprintf("%X", k.fpr) }
	cases := []struct {
		name   string
		signer *pgpTestKey
		when   time.Time
		hashed []byte
		now    time.Time
		want   string
		ok     bool
	}{
		{"primary", primary, at, nil, now, "Primary <p@test.invalid> (key " + fpr(primary) + ")", true},
		{"signing subkey", signSub, at, nil, now, "signing subkey " + fpr(signSub), true},
		{"encryption subkey", encSub, at, nil, now, "subkey " + fpr(encSub) + " of key " + fpr(primary) + " cannot be used: it has no signing capability", false},
		{"subkey without back-signature", noBacksig, at, nil, now, "without a primary key binding signature (back-signature)", false},
		{"subkey before expiry", shortSub, at, nil, pgpT0.Add(90 * time.Minute), "Primary", true},
		{"expired subkey", shortSub, at, nil, now, "subkey " + fpr(shortSub) + " of key " + fpr(primary) + " expired on 2024-01-01", false},
		{"revoked subkey", revokedSub, at, nil, now, "was revoked on 2024-01-01", false},
		{"certification-only primary", certOnly, at, nil, now, "key " + fpr(certOnly) + " has no signing capability", false},
		{"ed25519 algorithm 27", modern, at, nil, now, "Modern", true},
		{"retired key, signature before retirement", retired, at, nil, now, "Retired", true},
		{"retired key, signature after retirement", retired, pgpT0.Add(3 * time.Hour), nil, now, "was revoked on 2024-01-01 (retired)", false},
		{"no valid self-signature", unsigned, at, nil, now, "no valid self-signature", false},
		{"unknown critical subpacket", primary, at, pgpTestSub(99, true, 1), now, "unknown critical subpacket type 99", false},
		{"unknown non-critical subpacket", primary, at, pgpTestSub(99, false, 1), now, "Primary", true},
		{"signature expired", primary, at, pgpTestSub(3, false, pgpTestU32(3600)...), now, "signature expired", false},
		{"signature in the future", primary, now.Add(48 * time.Hour), nil, now, "in the future", false},
		{"signature before its key", primary, pgpT0.Add(-time.Hour), nil, now, "before its key", false},
	}
	for _, c := range cases {
		sig := c.signer.sign(pgpSigBinary, c.when, c.hashed, nil, pgpTestData(data))
		signer, err := k.verifyDetached(bytes.NewReader(data), sig, c.now)
		if c.ok {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			} else {
				mustContain(t, c.name, signer, c.want)
			}
		} else if err == nil {
			t.Errorf("%s: accepted (%s), want %q", c.name, signer, c.want)
		} else {
			mustContain(t, c.name, err.Error(), c.want)
		}
	}

	// Several signatures: one good one is enough, and each is reported.
	good := primary.sign(pgpSigBinary, at, nil, nil, pgpTestData(data))
	bad := encSub.sign(pgpSigBinary, at, nil, nil, pgpTestData(data))
	unknown := pgpTestNewKey(11, pgpT0, pgpAlgoEd25519).sign(pgpSigBinary, at, nil, nil, pgpTestData(data))
	signer, err := k.verifyDetached(bytes.NewReader(data), bytes.Join([][]byte{bad, unknown, good}, nil), now)
	if err != nil || strings.Count(signer, "(key ") != 1 {
		t.Fatalf("mixed signatures: %q %v", signer, err)
	}
	signer, err = k.verifyDetached(bytes.NewReader(data), bytes.Join([][]byte{good, modern.sign(pgpSigBinary, at, nil, nil, pgpTestData(data))}, nil), now)
	if err != nil || !strings.Contains(signer, "Primary") || !strings.Contains(signer, "Modern") {
		t.Fatalf("two good signatures: %q %v", signer, err)
	}
	_, err = k.verifyDetached(bytes.NewReader(data), bytes.Join([][]byte{bad, unknown}, nil), now)
	mustContain(t, "no good signature", fmt.Sprint(err), "signature 1 (key "+fpr(encSub)+")", "signature 2 (key ", "no such key in the trusted keyring")
}

// TestPGPDebianArchive verifies today's bookworm InRelease and Release.gpg
// from Debian's archive and compares with gpgv.
func TestPGPDebianArchive(t *testing.T) {
	files := pgpFetchBookworm(t)
	k, err := defaultArchiveKeyring("debian")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	text, signer, err := k.verifyClearsigned(files["InRelease"], now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(text, files["Release"]) {
		t.Fatal("InRelease text differs from Release")
	}
	mustContain(t, "InRelease signer", signer, "Debian Archive Automatic Signing Key (12/bookworm) <ftpmaster@debian.org>")
	signer2, err := k.verifyDetached(bytes.NewReader(files["Release"]), files["Release.gpg"], now)
	if err != nil {
		t.Fatal(err)
	}

	// gpgv must find the same good signatures.
	dir := t.TempDir()
	for name, b := range files {
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	keyring := filepath.Join("keys", "debian-archive-keyring.gpg")
	for _, run := range []struct {
		ours string
		args []string
	}{
		{signer, []string{filepath.Join(dir, "InRelease")}},
		{signer2, []string{filepath.Join(dir, "Release.gpg"), filepath.Join(dir, "Release")}},
	} {
		status, ok := pgpGPGV(t, keyring, run.args...)
		if !ok {
			t.Fatalf("gpgv refuses what we accept:\n%s", status)
		}
		valid := regexp.MustCompile(`(?m)^\[GNUPG:\] VALIDSIG ([0-9A-F]{40})`).FindAllStringSubmatch(status, -1)
		if len(valid) == 0 || len(valid) != strings.Count(run.ours, "(key ") {
			t.Fatalf("gpgv found %d good signatures, we found: %s", len(valid), run.ours)
		}
		for _, v := range valid {
			mustContain(t, "our signers", run.ours, v[1])
		}
	}

	// Tampering.
	in := files["InRelease"]
	i := bytes.Index(in, []byte("\nSuite: bookworm"))
	bad := bytes.Clone(in)
	bad[i+9] = 'B'
	if _, _, err := k.verifyClearsigned(bad, now); err == nil {
		t.Fatal("InRelease with one byte of text changed verifies")
	}
	if _, err := k.verifyDetached(bytes.NewReader(bad), files["Release.gpg"], now); err == nil {
		t.Fatal("Release.gpg verifies other data")
	}
	ubuntu, err := defaultArchiveKeyring("ubuntu")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ubuntu.verifyClearsigned(in, now)
	mustContain(t, "wrong keyring", fmt.Sprint(err), "no such key in the trusted keyring")
	_, _, err = k.verifyClearsigned(in, time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC))
	mustContain(t, "in 2040", fmt.Sprint(err), "expired on 20")

	// Release.gpg holds several signatures: spoiling all but one still
	// verifies; spoiling all does not.
	blocks, err := pgpDearmor(files["Release.gpg"], "SIGNATURE")
	if err != nil {
		t.Fatal(err)
	}
	pkts, err := pgpParsePackets(blocks[0])
	if err != nil || len(pkts) < 2 {
		t.Fatalf("Release.gpg: %d packets, %v", len(pkts), err)
	}
	raw := bytes.Clone(blocks[0])
	for j := 0; j+1 < len(pkts); j++ {
		raw[pkts[j+1].off-3] ^= 0x10 // inside the signature value
	}
	signer, err = k.verifyDetached(bytes.NewReader(files["Release"]), raw, now)
	if err != nil || strings.Count(signer, "(key ") != 1 {
		t.Fatalf("one good signature of %d: %q %v", len(pkts), signer, err)
	}
	raw[len(raw)-3] ^= 0x10
	if _, err := k.verifyDetached(bytes.NewReader(files["Release"]), raw, now); err == nil {
		t.Fatal("Release.gpg with every signature spoiled verifies")
	}
	if _, err := k.verifyDetached(bytes.NewReader(files["Release"]), blocks[0][:pkts[1].off-20], now); err == nil {
		t.Fatal("truncated Release.gpg verifies")
	}
}

// pgpFetchBookworm fetches bookworm's InRelease, Release and Release.gpg,
// keeping them for a few hours in a cache directory so repeated runs do
// not hit the archive.
func pgpFetchBookworm(t *testing.T) map[string][]byte {
	t.Helper()
	names := []string{"InRelease", "Release", "Release.gpg"}
	cache := filepath.Join(os.TempDir(), "karapace-test-cache", "debian-bookworm")
	files := map[string][]byte{}
	fresh := true
	for _, n := range names {
		st, err := os.Stat(filepath.Join(cache, n))
		if err != nil || time.Since(st.ModTime()) > 6*time.Hour {
			fresh = false
			break
		}
		files[n], _ = os.ReadFile(filepath.Join(cache, n))
	}
	if fresh {
		return files
	}
	client := &http.Client{Timeout: 60 * time.Second}
	for try := 0; try < 2; try++ {
		for _, n := range names {
			resp, err := client.Get("http://deb.debian.org/debian/dists/bookworm/" + n)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("HTTP %s", resp.Status)
			}
			var b []byte
			if err == nil {
				b, err = io.ReadAll(resp.Body)
			}
			if resp != nil {
				resp.Body.Close()
			}
			need(t, err == nil, fmt.Sprintf("bookworm %s from deb.debian.org (%v)", n, err))
			files[n] = b
		}
		// The archive may update between the requests: fetch again then.
		if bytes.Contains(files["InRelease"], files["Release"]) {
			break
		}
	}
	os.MkdirAll(cache, 0o755)
	for n, b := range files {
		os.WriteFile(filepath.Join(cache, n), b, 0o644)
	}
	return files
}

// TestPGPSystemKeyrings reads every keyring apt uses on this machine and
// compares the primary keys found with GnuPG's view.
func TestPGPSystemKeyrings(t *testing.T) {
	gpg := needTool(t, "gpg")
	var paths []string
	for _, pat := range []string{"/usr/share/keyrings/*.gpg", "/etc/apt/trusted.gpg.d/*.gpg", "/etc/apt/trusted.gpg.d/*.asc", "keys/*.gpg"} {
		m, _ := filepath.Glob(pat)
		paths = append(paths, m...)
	}
	need(t, len(paths) > 2, "apt keyrings in /usr/share/keyrings")
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		k, err := readPGPKeyring(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		cmd := exec.Command(gpg, "--show-keys", "--with-colons", p)
		cmd.Env = append(os.Environ(), "GNUPGHOME="+t.TempDir())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("gpg --show-keys %s: %v", p, err)
		}
		var want []string
		lines := strings.Split(string(out), "\n")
		inPub := false // the first fpr line after pub is the primary key's
		for _, l := range lines {
			if strings.HasPrefix(l, "pub:") {
				inPub = true
			} else if inPub && strings.HasPrefix(l, "fpr:") {
				want = append(want, strings.Split(l, ":")[9])
				inPub = false
			}
		}
		var got []string
		for _, e := range k.entities {
			got = append(got, e.primary.fprHex())
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: keys %v, gpg says %v", p, got, want)
		}
	}
}

func TestPGPKeyringFormats(t *testing.T) {
	for name, want := range map[string]string{
		"":                                     "keyring is empty",
		"hello":                                "neither binary OpenPGP",
		"\x00\x00\x00\x20\x01\x01\x00\x00KBXf": "keybox format",
		"\x99\x00\x10abc":                      "truncated packet",
		"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n":                                   "no \"-----END PGP PUBLIC KEY BLOCK-----\" line",
		"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ==\n-----END PGP PUBLIC KEY BLOCK-----": "truncated packet",
		"\xb4\x00": "no usable public key",
	} {
		_, err := readPGPKeyring(strings.NewReader(name))
		if err == nil {
			t.Errorf("%q: accepted", name)
			continue
		}
		mustContain(t, fmt.Sprintf("%q", name), err.Error(), want)
	}
	// Armored and binary forms of one key read the same; several armored
	// blocks in one file are all read.
	bin := pgpTestKeyring(t, "rsa.pub.gpg")
	two, err := readPGPKeyring(io.MultiReader(bytes.NewReader(pgpTestFile(t, "ed.pub.asc")), strings.NewReader("\n"), bytes.NewReader(pgpTestFile(t, "ed.pub.asc"))))
	if err != nil || len(two.entities) != 2 || len(bin.entities) != 1 {
		t.Fatalf("entities: %v %v", two, err)
	}
	if _, err := defaultArchiveKeyring("fedora"); err == nil {
		t.Fatal("keyring for fedora")
	}
	u, err := defaultArchiveKeyring("ubuntu")
	if err != nil {
		t.Fatal(err)
	}
	var fprs []string
	for _, e := range u.entities {
		fprs = append(fprs, e.primary.fprHex()+" "+e.uid)
	}
	mustContain(t, "ubuntu keys", strings.Join(fprs, "\n"), "F6ECB3762474EDA9D21B7022871920D1991BC93C Ubuntu Archive Automatic Signing Key (2018) <ftpmaster@ubuntu.com>")
}

func FuzzPGPKeyring(f *testing.F) {
	for _, n := range []string{"rsa.pub.gpg", "ed.pub.asc", "expired.pub.gpg", "revoked.pub.gpg"} {
		f.Add(pgpTestFile(f, n))
	}
	msg := pgpTestFile(f, "msg.txt")
	sig := pgpTestFile(f, "ed.sig.asc")
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := readPGPKeyring(bytes.NewReader(b))
		if err != nil {
			return
		}
		k.verifyDetached(bytes.NewReader(msg), sig, pgpT0.Add(48*time.Hour))
	})
}

func FuzzPGPClearsigned(f *testing.F) {
	k := pgpTestKeyring(f, "rsa.pub.gpg", "ed.pub.asc")
	f.Add(pgpTestFile(f, "rsa.clear.asc"))
	f.Add(pgpTestFile(f, "ed.clear.asc"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k.verifyClearsigned(b, pgpT0.Add(48*time.Hour))
		k.verifyDetached(bytes.NewReader(b), b, pgpT0)
	})
}

// TestPGPPacketHeaders reads one body under every header encoding.
func TestPGPPacketHeaders(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 40) // 640 bytes
	tag := byte(pgpTagUserID)
	n := len(body)
	partial := append([]byte{0xc0 | tag, 0xe9}, body[:512]...) // 2^9 bytes, then the rest
	partial = append(partial, byte(n-512))
	partial = append(partial, body[512:]...)
	encodings := map[string][]byte{
		"legacy 2-byte length": append([]byte{0x80 | tag<<2 | 1, byte(n >> 8), byte(n)}, body...),
		"legacy 4-byte length": append([]byte{0x80 | tag<<2 | 2, 0, 0, byte(n >> 8), byte(n)}, body...),
		"legacy indeterminate": append([]byte{0x80 | tag<<2 | 3}, body...),
		"new 2-byte length":    append([]byte{0xc0 | tag, byte((n-192)>>8 + 192), byte(n - 192)}, body...),
		"new 5-byte length":    pgpTestPacket(tag, body),
		"new partial lengths":  partial,
	}
	for name, enc := range encodings {
		pkts, err := pgpParsePackets(enc)
		if err != nil || len(pkts) != 1 || pkts[0].tag != tag || !bytes.Equal(pkts[0].body, body) {
			t.Errorf("%s: %v", name, err)
		}
		for cut := 0; cut < len(enc)-1; cut += 7 {
			if name == "legacy indeterminate" {
				break
			}
			if _, err := pgpParsePackets(enc[:cut+1]); err == nil {
				t.Errorf("%s cut to %d bytes: no error", name, cut+1)
			}
		}
	}
	short := []byte{0x80 | tag<<2, 3, 'a', 'b', 'c', 0xc0 | tag, 2, 'd', 'e'}
	pkts, err := pgpParsePackets(short)
	if err != nil || len(pkts) != 2 || string(pkts[1].body) != "de" || pkts[1].off != 5 {
		t.Fatalf("two short packets: %v %v", pkts, err)
	}
}
