package main

// OpenPGP signature verification (RFC 4880, RFC 9580) for distribution
// archives: the clear-signed InRelease file and the detached Release.gpg.
// Verification only: no signing, no decryption, no web of trust. Every key
// in a keyring the caller passes is trusted; what is checked is that the
// signature is mathematically valid and that the key was allowed to make it
// (self-signatures, binding signatures, flags, expiry, revocation).

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	_ "embed"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"strings"
	"time"
)

// Embedded archive keyrings, the default trust roots of the bootstrap.
// keys/debian-archive-keyring.gpg comes from Debian's debian-archive-keyring
// package, keys/ubuntu-archive-keyring.gpg from Debian's ubuntu-keyring
// package; both are public keys, copied unchanged.
var (
	//go:embed keys/debian-archive-keyring.gpg
	pgpDebianArchiveKeys []byte
	//go:embed keys/ubuntu-archive-keyring.gpg
	pgpUbuntuArchiveKeys []byte
)

// defaultArchiveKeyring returns the embedded keyring that signs the archive
// of distro ("debian" or "ubuntu").
func defaultArchiveKeyring(distro string) (*pgpKeyring, error) {
	var data []byte
	switch distro {
	case "debian":
		data = pgpDebianArchiveKeys
	case "ubuntu":
		data = pgpUbuntuArchiveKeys
	default:
		return nil, fmt.Errorf("no built-in archive keyring for distribution %q (have debian, ubuntu)", distro)
	}
	k, err := readPGPKeyring(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("built-in %s archive keyring: %w", distro, err)
	}
	return k, nil
}

const (
	pgpTagSignature     = 2
	pgpTagPublicKey     = 6
	pgpTagUserID        = 13
	pgpTagPublicSubkey  = 14
	pgpTagUserAttribute = 17

	pgpAlgoRSA         = 1
	pgpAlgoRSASignOnly = 3
	pgpAlgoEdDSALegacy = 22
	pgpAlgoEd25519     = 27

	pgpSigBinary          = 0x00
	pgpSigText            = 0x01
	pgpSigSubkeyBinding   = 0x18
	pgpSigPrimaryBinding  = 0x19
	pgpSigDirectKey       = 0x1f
	pgpSigKeyRevocation   = 0x20
	pgpSigSubkeyRevoke    = 0x28
	pgpKeyFlagSign        = 0x02
	pgpMaxKeyringSize     = 64 << 20
	pgpMaxSignatureSize   = 1 << 20
	pgpSignatureClockSkew = 24 * time.Hour
)

// pgpEd25519OID is the curve OID of legacy EdDSA keys (1.3.6.1.4.1.11591.15.1).
var pgpEd25519OID = []byte{0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01}

// ---- packets ----

type pgpPacket struct {
	tag  byte
	body []byte
	off  int // offset of the packet header in its input
}

// pgpParsePackets splits data into packets (both header formats, partial
// body lengths included).
func pgpParsePackets(data []byte) ([]pgpPacket, error) {
	var pkts []pgpPacket
	for off := 0; off < len(data); {
		p, n, err := pgpNextPacket(data[off:])
		if err != nil {
			return nil, fmt.Errorf("openpgp packet at offset %d: %w", off, err)
		}
		p.off = off
		pkts = append(pkts, p)
		off += n
	}
	return pkts, nil
}

var errPGPTruncated = errors.New("truncated packet")

func pgpNextPacket(b []byte) (pgpPacket, int, error) {
	h := b[0]
	if h&0x80 == 0 {
		return pgpPacket{}, 0, fmt.Errorf("byte %#02x is not a packet header", h)
	}
	if h&0x40 == 0 { // legacy format: tag and length type in the header byte
		tag := (h >> 2) & 0x0f
		var n uint64
		hl := 1
		switch h & 3 {
		case 0:
			if len(b) < 2 {
				return pgpPacket{}, 0, errPGPTruncated
			}
			n, hl = uint64(b[1]), 2
		case 1:
			if len(b) < 3 {
				return pgpPacket{}, 0, errPGPTruncated
			}
			n, hl = uint64(binary.BigEndian.Uint16(b[1:])), 3
		case 2:
			if len(b) < 5 {
				return pgpPacket{}, 0, errPGPTruncated
			}
			n, hl = uint64(binary.BigEndian.Uint32(b[1:])), 5
		case 3: // indeterminate: to the end of the input
			n = uint64(len(b) - 1)
		}
		if n > uint64(len(b)-hl) {
			return pgpPacket{}, 0, errPGPTruncated
		}
		return pgpPacket{tag: tag, body: b[hl : hl+int(n)]}, hl + int(n), nil
	}
	tag := h & 0x3f
	pos := 1
	var body []byte
	for {
		if pos >= len(b) {
			return pgpPacket{}, 0, errPGPTruncated
		}
		var n uint64
		partial := false
		switch c := b[pos]; {
		case c < 192:
			n, pos = uint64(c), pos+1
		case c < 224:
			if pos+2 > len(b) {
				return pgpPacket{}, 0, errPGPTruncated
			}
			n, pos = (uint64(c)-192)<<8+uint64(b[pos+1])+192, pos+2
		case c == 255:
			if pos+5 > len(b) {
				return pgpPacket{}, 0, errPGPTruncated
			}
			n, pos = uint64(binary.BigEndian.Uint32(b[pos+1:])), pos+5
		default:
			n, pos, partial = 1<<(c&0x1f), pos+1, true
		}
		if n > uint64(len(b)-pos) {
			return pgpPacket{}, 0, errPGPTruncated
		}
		chunk := b[pos : pos+int(n)]
		pos += int(n)
		if !partial && body == nil {
			return pgpPacket{tag: tag, body: chunk}, pos, nil
		}
		body = append(body, chunk...)
		if !partial {
			return pgpPacket{tag: tag, body: body}, pos, nil
		}
	}
}

// pgpMPI reads a multiprecision integer (bit count, then big-endian bytes).
func pgpMPI(b []byte) (v, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, errors.New("truncated MPI")
	}
	n := (int(binary.BigEndian.Uint16(b)) + 7) / 8
	if len(b)-2 < n {
		return nil, nil, errors.New("truncated MPI")
	}
	return b[2 : 2+n], b[2+n:], nil
}

// ---- ASCII armor ----

// pgpDearmor decodes every armored block of the given kind ("PUBLIC KEY
// BLOCK", "SIGNATURE") in data, checking the CRC24 when one is present.
func pgpDearmor(data []byte, kind string) ([][]byte, error) {
	begin, end := "-----BEGIN PGP "+kind+"-----", "-----END PGP "+kind+"-----"
	lines := strings.Split(string(data), "\n")
	var blocks [][]byte
	for i := 0; i < len(lines); i++ {
		if pgpTrimLine(lines[i]) != begin {
			continue
		}
		startLine := i + 1
		// Armor headers ("Key: value") end at the first blank line.
		for i++; i < len(lines) && pgpTrimLine(lines[i]) != ""; i++ {
			if !strings.Contains(lines[i], ": ") {
				return nil, fmt.Errorf("armored %s at line %d: malformed armor header %q", strings.ToLower(kind), i+1, pgpTrimLine(lines[i]))
			}
		}
		var b64 strings.Builder
		var crc []byte
		closed := false
		for i++; i < len(lines); i++ {
			l := pgpTrimLine(lines[i])
			if l == end {
				closed = true
				break
			}
			if strings.HasPrefix(l, "=") && len(l) == 5 {
				c, err := base64.StdEncoding.DecodeString(l[1:])
				if err != nil {
					return nil, fmt.Errorf("armored %s at line %d: bad checksum line: %v", strings.ToLower(kind), i+1, err)
				}
				crc = c
				continue
			}
			if crc != nil && l != "" {
				return nil, fmt.Errorf("armored %s at line %d: data after the checksum line", strings.ToLower(kind), i+1)
			}
			b64.WriteString(l)
		}
		if !closed {
			return nil, fmt.Errorf("armored %s starting at line %d: no %q line", strings.ToLower(kind), startLine, end)
		}
		body, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(b64.String()), ""))
		if err != nil {
			return nil, fmt.Errorf("armored %s starting at line %d: bad base64: %v", strings.ToLower(kind), startLine, err)
		}
		if crc != nil {
			got := pgpCRC24(body)
			if want := uint32(crc[0])<<16 | uint32(crc[1])<<8 | uint32(crc[2]); got != want {
				return nil, fmt.Errorf("armored %s starting at line %d: CRC24 mismatch (computed %06x, armor says %06x)", strings.ToLower(kind), startLine, got, want)
			}
		}
		blocks = append(blocks, body)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("no %q block found", begin)
	}
	return blocks, nil
}

func pgpTrimLine(s string) string { return strings.TrimRight(s, " \t\r") }

func pgpCRC24(b []byte) uint32 {
	crc := uint32(0xb704ce)
	for _, c := range b {
		crc ^= uint32(c) << 16
		for i := 0; i < 8; i++ {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864cfb
			}
		}
	}
	return crc & 0xffffff
}

// ---- keys ----

type pgpPublicKey struct {
	created time.Time
	algo    byte
	fpr     []byte // v4 fingerprint (SHA-1 of the key packet)
	id      uint64 // low 64 bits of the fingerprint
	body    []byte // the key packet body, hashed by key signatures
	rsa     *rsa.PublicKey
	ed      ed25519.PublicKey
	// unusable says why this key cannot verify signatures ("" when it can).
	unusable string
}

func (k *pgpPublicKey) fprHex() string { return strings.ToUpper(hex.EncodeToString(k.fpr)) }

// errPGPKeyVersion marks a key packet of a version this code skips.
type errPGPKeyVersion int

func (v errPGPKeyVersion) Error() string { return fmt.Sprintf("unsupported key version %d", int(v)) }

func pgpParsePublicKey(body []byte) (*pgpPublicKey, error) {
	if len(body) < 1 {
		return nil, errors.New("empty key packet")
	}
	if body[0] != 4 {
		return nil, errPGPKeyVersion(body[0])
	}
	if len(body) < 6 {
		return nil, errors.New("truncated v4 key packet")
	}
	if len(body) > 0xffff {
		return nil, errors.New("v4 key packet longer than 65535 bytes")
	}
	h := sha1.New()
	h.Write([]byte{0x99, byte(len(body) >> 8), byte(len(body))})
	h.Write(body)
	k := &pgpPublicKey{
		created: time.Unix(int64(binary.BigEndian.Uint32(body[1:])), 0).UTC(),
		algo:    body[5],
		fpr:     h.Sum(nil),
		body:    body,
	}
	k.id = binary.BigEndian.Uint64(k.fpr[12:])
	rest := body[6:]
	switch k.algo {
	case pgpAlgoRSA, pgpAlgoRSASignOnly:
		n, rest, err := pgpMPI(rest)
		if err != nil {
			return nil, fmt.Errorf("RSA key %s: modulus: %w", k.fprHex(), err)
		}
		e, _, err := pgpMPI(rest)
		if err != nil {
			return nil, fmt.Errorf("RSA key %s: exponent: %w", k.fprHex(), err)
		}
		ev := new(big.Int).SetBytes(e)
		if !ev.IsInt64() || ev.Int64() < 3 || ev.Int64() > 1<<31-1 {
			k.unusable = "RSA public exponent out of range"
			break
		}
		k.rsa = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(ev.Int64())}
	case pgpAlgoEdDSALegacy:
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return nil, fmt.Errorf("EdDSA key %s: truncated curve OID", k.fprHex())
		}
		oid := rest[1 : 1+int(rest[0])]
		if !bytes.Equal(oid, pgpEd25519OID) {
			k.unusable = fmt.Sprintf("EdDSA curve OID %x is not Ed25519", oid)
			break
		}
		p, _, err := pgpMPI(rest[1+len(oid):])
		if err != nil {
			return nil, fmt.Errorf("EdDSA key %s: point: %w", k.fprHex(), err)
		}
		if len(p) != 33 || p[0] != 0x40 {
			k.unusable = "Ed25519 point is not in the 0x40-prefixed native form"
			break
		}
		k.ed = ed25519.PublicKey(p[1:])
	case pgpAlgoEd25519:
		if len(rest) < ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 key %s: truncated key", k.fprHex())
		}
		k.ed = ed25519.PublicKey(rest[:ed25519.PublicKeySize])
	default:
		k.unusable = fmt.Sprintf("public-key algorithm %d is not supported", k.algo)
	}
	return k, nil
}

// ---- signatures ----

type pgpSignature struct {
	sigType, pubAlgo, hashAlgo byte
	hashed                     []byte // version through hashed subpackets: hashed again in the trailer
	prefix                     [2]byte
	rsaSig                     []byte
	edSig                      []byte // r || s, 64 bytes

	created      time.Time
	hasCreated   bool
	sigExpires   uint32 // seconds after creation, 0 = never
	keyExpires   uint32 // seconds after key creation, 0 = never
	flags        byte
	hasFlags     bool
	issuerID     uint64
	hasIssuerID  bool
	issuerFpr    []byte
	primaryUID   bool
	revReason    byte
	hasRevReason bool
	embedded     []byte // embedded signature packet body (subpacket 32)
	invalid      string // why the signature must not be accepted, e.g. an unknown critical subpacket
	keyID        string // issuer, as printed in messages
}

// pgpKnownSubpackets are the subpacket types whose meaning this code knows
// (or that carry only advice); an unknown one marked critical voids the
// signature, as RFC 4880 §5.2.3.1 says.
var pgpKnownSubpackets = map[byte]bool{
	2: true, 3: true, 4: true, 5: true, 7: true, 9: true, 11: true, 12: true, 16: true,
	21: true, 22: true, 23: true, 24: true, 25: true, 26: true, 27: true, 28: true,
	29: true, 30: true, 31: true, 32: true, 33: true, 34: true, 35: true, 39: true,
}

func pgpParseSignature(body []byte) (*pgpSignature, error) {
	if len(body) < 1 {
		return nil, errors.New("empty signature packet")
	}
	if body[0] != 4 {
		return nil, fmt.Errorf("signature version %d is not supported (only version 4)", body[0])
	}
	if len(body) < 6 {
		return nil, errors.New("truncated signature packet")
	}
	s := &pgpSignature{sigType: body[1], pubAlgo: body[2], hashAlgo: body[3]}
	hl := int(binary.BigEndian.Uint16(body[4:]))
	if len(body) < 6+hl+2 {
		return nil, errors.New("truncated signature packet (hashed subpackets)")
	}
	s.hashed = body[:6+hl]
	if err := s.parseSubpackets(body[6:6+hl], true); err != nil {
		return nil, err
	}
	rest := body[6+hl:]
	ul := int(binary.BigEndian.Uint16(rest))
	if len(rest) < 2+ul+2 {
		return nil, errors.New("truncated signature packet (unhashed subpackets)")
	}
	if err := s.parseSubpackets(rest[2:2+ul], false); err != nil {
		return nil, err
	}
	rest = rest[2+ul:]
	copy(s.prefix[:], rest)
	rest = rest[2:]
	var err error
	switch s.pubAlgo {
	case pgpAlgoRSA, pgpAlgoRSASignOnly:
		s.rsaSig, _, err = pgpMPI(rest)
	case pgpAlgoEdDSALegacy:
		var r, sv []byte
		r, rest, err = pgpMPI(rest)
		if err == nil {
			sv, _, err = pgpMPI(rest)
		}
		if err == nil && (len(r) > 32 || len(sv) > 32) {
			err = errors.New("EdDSA signature value longer than 32 bytes")
		}
		if err == nil {
			s.edSig = make([]byte, 64)
			copy(s.edSig[32-len(r):], r)
			copy(s.edSig[64-len(sv):], sv)
		}
	case pgpAlgoEd25519:
		if len(rest) < ed25519.SignatureSize {
			err = errors.New("truncated Ed25519 signature")
		} else {
			s.edSig = rest[:ed25519.SignatureSize]
		}
	default:
		s.invalid = fmt.Sprintf("public-key algorithm %d is not supported", s.pubAlgo)
	}
	if err != nil {
		return nil, fmt.Errorf("signature value: %w", err)
	}
	if !s.hasCreated && s.invalid == "" {
		s.invalid = "no creation time in the hashed subpackets"
	}
	switch {
	case s.issuerFpr != nil:
		s.keyID = strings.ToUpper(hex.EncodeToString(s.issuerFpr))
	case s.hasIssuerID:
		s.keyID = fmt.Sprintf("%016X", s.issuerID)
	default:
		s.keyID = "(no issuer)"
	}
	return s, nil
}

func (s *pgpSignature) parseSubpackets(b []byte, hashed bool) error {
	for len(b) > 0 {
		var n, hl int
		switch c := b[0]; {
		case c < 192:
			n, hl = int(c), 1
		case c < 255:
			if len(b) < 2 {
				return errors.New("truncated subpacket length")
			}
			n, hl = (int(c)-192)<<8+int(b[1])+192, 2
		default:
			if len(b) < 5 {
				return errors.New("truncated subpacket length")
			}
			n64 := uint64(binary.BigEndian.Uint32(b[1:]))
			if n64 > uint64(len(b)) {
				return errors.New("truncated subpacket")
			}
			n, hl = int(n64), 5
		}
		if n < 1 || n > len(b)-hl {
			return errors.New("truncated or empty subpacket")
		}
		typ, data := b[hl]&0x7f, b[hl+1:hl+n]
		critical := b[hl]&0x80 != 0
		b = b[hl+n:]
		if critical && !pgpKnownSubpackets[typ] && s.invalid == "" {
			s.invalid = fmt.Sprintf("unknown critical subpacket type %d", typ)
		}
		// Only the issuer and an embedded signature are taken from the
		// unhashed area: they are checked by the verification itself.
		if !hashed && typ != 16 && typ != 33 && typ != 32 {
			continue
		}
		if err := s.subpacket(typ, data); err != nil {
			return err
		}
	}
	return nil
}

func (s *pgpSignature) subpacket(typ byte, d []byte) error {
	need := func(n int) error {
		if len(d) < n {
			return fmt.Errorf("subpacket type %d: %d bytes, want %d", typ, len(d), n)
		}
		return nil
	}
	switch typ {
	case 2:
		if err := need(4); err != nil {
			return err
		}
		s.created, s.hasCreated = time.Unix(int64(binary.BigEndian.Uint32(d)), 0).UTC(), true
	case 3:
		if err := need(4); err != nil {
			return err
		}
		s.sigExpires = binary.BigEndian.Uint32(d)
	case 9:
		if err := need(4); err != nil {
			return err
		}
		s.keyExpires = binary.BigEndian.Uint32(d)
	case 16:
		if err := need(8); err != nil {
			return err
		}
		if !s.hasIssuerID {
			s.issuerID, s.hasIssuerID = binary.BigEndian.Uint64(d), true
		}
	case 25:
		s.primaryUID = len(d) > 0 && d[0] != 0
	case 27:
		if len(d) > 0 {
			s.flags, s.hasFlags = d[0], true
		} else {
			s.hasFlags = true
		}
	case 29:
		if len(d) > 0 {
			s.revReason, s.hasRevReason = d[0], true
		}
	case 32:
		if s.embedded == nil {
			s.embedded = d
		}
	case 33:
		if err := need(1); err != nil {
			return err
		}
		if d[0] == 4 && len(d) == 21 && s.issuerFpr == nil {
			s.issuerFpr = d[1:]
		}
	}
	return nil
}

// pgpHashFor maps an OpenPGP hash algorithm ID to a hash. keySig allows
// SHA-1, still found on old self-signatures; data signatures refuse it.
func pgpHashFor(id byte, keySig bool) (crypto.Hash, error) {
	switch id {
	case 2:
		if keySig {
			return crypto.SHA1, nil
		}
		return 0, errors.New("made with SHA-1, which is refused for data signatures (collisions are practical)")
	case 8:
		return crypto.SHA256, nil
	case 9:
		return crypto.SHA384, nil
	case 10:
		return crypto.SHA512, nil
	case 11:
		return crypto.SHA224, nil
	case 1:
		return 0, errors.New("made with MD5, which is refused")
	}
	return 0, fmt.Errorf("hash algorithm %d is not supported", id)
}

func pgpNewHash(h crypto.Hash) hash.Hash {
	switch h {
	case crypto.SHA1:
		return sha1.New()
	case crypto.SHA224:
		return sha256.New224()
	case crypto.SHA256:
		return sha256.New()
	case crypto.SHA384:
		return sha512.New384()
	}
	return sha512.New()
}

// verifyHashed finishes h (already fed with the signed data) with the
// signature trailer and checks the signature against key k.
func (k *pgpPublicKey) verifyHashed(s *pgpSignature, ch crypto.Hash, h hash.Hash) error {
	if k.unusable != "" {
		return errors.New(k.unusable)
	}
	h.Write(s.hashed)
	var tr [6]byte
	tr[0], tr[1] = 4, 0xff
	binary.BigEndian.PutUint32(tr[2:], uint32(len(s.hashed)))
	h.Write(tr[:])
	digest := h.Sum(nil)
	if digest[0] != s.prefix[0] || digest[1] != s.prefix[1] {
		return errors.New("hash prefix mismatch: the signed data or the signature was altered")
	}
	switch {
	case k.rsa != nil:
		if s.pubAlgo != pgpAlgoRSA && s.pubAlgo != pgpAlgoRSASignOnly {
			return fmt.Errorf("signature algorithm %d does not match the RSA key", s.pubAlgo)
		}
		size := (k.rsa.N.BitLen() + 7) / 8
		if len(s.rsaSig) > size {
			return errors.New("RSA signature longer than the modulus")
		}
		sig := make([]byte, size)
		copy(sig[size-len(s.rsaSig):], s.rsaSig)
		if err := rsa.VerifyPKCS1v15(k.rsa, ch, digest, sig); err != nil {
			return fmt.Errorf("RSA signature does not verify: %v", err)
		}
	case k.ed != nil:
		if s.pubAlgo != k.algo {
			return fmt.Errorf("signature algorithm %d does not match the Ed25519 key (algorithm %d)", s.pubAlgo, k.algo)
		}
		if !ed25519.Verify(k.ed, digest, s.edSig) {
			return errors.New("Ed25519 signature does not verify")
		}
	default:
		return errors.New("key has no usable key material")
	}
	return nil
}

// verifyKeySig checks a signature by k over key packets (and a user ID),
// as self-signatures, bindings and revocations are made.
func (k *pgpPublicKey) verifyKeySig(s *pgpSignature, keys []*pgpPublicKey, uid []byte) error {
	if s.invalid != "" {
		return errors.New(s.invalid)
	}
	ch, err := pgpHashFor(s.hashAlgo, true)
	if err != nil {
		return err
	}
	h := pgpNewHash(ch)
	for _, key := range keys {
		h.Write([]byte{0x99, byte(len(key.body) >> 8), byte(len(key.body))})
		h.Write(key.body)
	}
	if uid != nil {
		var l [5]byte
		l[0] = 0xb4
		binary.BigEndian.PutUint32(l[1:], uint32(len(uid)))
		h.Write(l[:])
		h.Write(uid)
	}
	return k.verifyHashed(s, ch, h)
}

// ---- keyring ----

// pgpKeyring is a set of trusted public keys.
//
// Its verify methods take the time now: key and signature expiry are
// judged at now, not at the clock, so the bootstrap can pass the Date of an
// archive snapshot and get the same answer when it re-verifies an old
// snapshot years later. A signature may be dated up to a day after now,
// because an archive signs its Release file a little after the Date
// written in it. Revocations for compromise apply whatever the date.
type pgpKeyring struct {
	entities []*pgpEntity
	// notes lists the keys skipped while reading (unsupported versions,
	// malformed packets), one line each.
	notes []string
}

// pgpEntity is a primary key with what its self-signatures say about it.
type pgpEntity struct {
	primary     *pgpPublicKey
	uid         string        // primary user ID, for messages
	selfSig     *pgpSignature // newest valid self-signature
	revocations []*pgpSignature
	subkeys     []*pgpSubkey
	problem     string // why no signature is accepted from this key at all
}

type pgpSubkey struct {
	key         *pgpPublicKey
	binding     *pgpSignature // newest valid binding signature
	revocations []*pgpSignature
	problem     string
}

// readPGPKeyring reads an OpenPGP keyring, binary (as in
// /usr/share/keyrings/*.gpg) or ASCII-armored (*.asc), detected from the
// content. Keys it cannot use are skipped and listed in notes.
func readPGPKeyring(r io.Reader) (*pgpKeyring, error) {
	data, err := io.ReadAll(io.LimitReader(r, pgpMaxKeyringSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading keyring: %w", err)
	}
	if len(data) > pgpMaxKeyringSize {
		return nil, fmt.Errorf("keyring larger than %d MiB", pgpMaxKeyringSize>>20)
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	var blocks [][]byte
	switch {
	case len(trimmed) == 0:
		return nil, errors.New("keyring is empty")
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN PGP")):
		if blocks, err = pgpDearmor(trimmed, "PUBLIC KEY BLOCK"); err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
	case len(data) >= 12 && string(data[8:12]) == "KBXf":
		return nil, errors.New("keyring is in GnuPG's keybox format, which is not supported: export it with gpg --export")
	case data[0]&0x80 != 0:
		blocks = [][]byte{data}
	default:
		return nil, fmt.Errorf("keyring is neither binary OpenPGP (first byte %#02x) nor ASCII-armored", data[0])
	}
	k := &pgpKeyring{}
	for _, b := range blocks {
		pkts, err := pgpParsePackets(b)
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		k.addPackets(pkts)
	}
	if len(k.entities) == 0 {
		msg := "keyring holds no usable public key"
		if len(k.notes) > 0 {
			msg += ": " + strings.Join(k.notes, "; ")
		}
		return nil, errors.New(msg)
	}
	return k, nil
}

// add merges the keys of other into k.
func (k *pgpKeyring) add(other *pgpKeyring) {
	k.entities = append(k.entities, other.entities...)
	k.notes = append(k.notes, other.notes...)
}

// addPackets builds one entity per primary key packet and the packets
// that follow it; packets before the first key are ignored.
func (k *pgpKeyring) addPackets(pkts []pgpPacket) {
	start := -1
	for i := 0; i <= len(pkts); i++ {
		if i < len(pkts) && pkts[i].tag != pgpTagPublicKey {
			continue
		}
		if start >= 0 {
			e, err := pgpBuildEntity(pkts[start:i])
			if err != nil {
				k.notes = append(k.notes, fmt.Sprintf("key at offset %d skipped: %v", pkts[start].off, err))
			} else {
				k.entities = append(k.entities, e)
			}
		}
		start = i
	}
}

func pgpBuildEntity(pkts []pgpPacket) (*pgpEntity, error) {
	pk, err := pgpParsePublicKey(pkts[0].body)
	if err != nil {
		return nil, err
	}
	e := &pgpEntity{primary: pk}
	if pk.unusable != "" {
		e.problem = pk.unusable
	}
	isSelf := func(s *pgpSignature) bool {
		if s.issuerFpr != nil {
			return bytes.Equal(s.issuerFpr, pk.fpr)
		}
		return !s.hasIssuerID || s.issuerID == pk.id
	}
	newer := func(old, s *pgpSignature) bool { return old == nil || !s.created.Before(old.created) }
	var uid []byte     // current user ID packet, nil outside one
	inAttr := false    // inside a user attribute: its signatures are ignored
	var sub *pgpSubkey // current subkey
	var primaryUID *pgpSignature
	for _, p := range pkts[1:] {
		switch p.tag {
		case pgpTagUserID:
			uid, inAttr, sub = p.body, false, nil
			continue
		case pgpTagUserAttribute:
			uid, inAttr, sub = nil, true, nil
			continue
		case pgpTagPublicSubkey:
			uid, inAttr = nil, false
			skey, err := pgpParsePublicKey(p.body)
			if err != nil {
				sub = nil // an unsupported subkey: skip it and its signatures
				continue
			}
			sub = &pgpSubkey{key: skey}
			e.subkeys = append(e.subkeys, sub)
			continue
		case pgpTagSignature:
		default:
			continue // trust packets and anything unknown
		}
		s, err := pgpParseSignature(p.body)
		if err != nil || !isSelf(s) || pk.unusable != "" || inAttr {
			continue
		}
		// Signatures about the primary key count wherever they stand;
		// the others belong to the user ID or subkey they follow.
		switch t := s.sigType; {
		case t == pgpSigDirectKey:
			if pk.verifyKeySig(s, []*pgpPublicKey{pk}, nil) == nil && newer(e.selfSig, s) {
				e.selfSig = s
			}
		case t == pgpSigKeyRevocation:
			if pk.verifyKeySig(s, []*pgpPublicKey{pk}, nil) == nil {
				e.revocations = append(e.revocations, s)
			}
		case t == pgpSigSubkeyBinding && sub != nil:
			if pk.verifyKeySig(s, []*pgpPublicKey{pk, sub.key}, nil) == nil && newer(sub.binding, s) {
				sub.binding = s
			}
		case t == pgpSigSubkeyRevoke && sub != nil:
			if pk.verifyKeySig(s, []*pgpPublicKey{pk, sub.key}, nil) == nil {
				sub.revocations = append(sub.revocations, s)
			}
		case t >= 0x10 && t <= 0x13 && uid != nil:
			if pk.verifyKeySig(s, []*pgpPublicKey{pk}, uid) != nil {
				continue
			}
			if newer(e.selfSig, s) {
				e.selfSig = s
			}
			if e.uid == "" || (s.primaryUID && newer(primaryUID, s)) {
				e.uid = pgpPrintable(string(uid))
				if s.primaryUID {
					primaryUID = s
				}
			}
		}
	}
	if e.problem == "" && e.selfSig == nil {
		e.problem = "it has no valid self-signature"
	}
	for _, sk := range e.subkeys {
		sk.check(pk)
	}
	return e, nil
}

// check decides once whether a subkey may sign data, apart from expiry and
// revocation, which depend on the time of use.
func (sk *pgpSubkey) check(pk *pgpPublicKey) {
	switch {
	case sk.key.unusable != "":
		sk.problem = sk.key.unusable
	case sk.binding == nil:
		sk.problem = "it has no valid binding signature from its primary key"
	case !sk.binding.hasFlags || sk.binding.flags&pgpKeyFlagSign == 0:
		sk.problem = "it has no signing capability (key flags in its binding signature)"
	default:
		// A signing subkey must certify its primary key in turn (the
		// back-signature), so that nobody can attach someone else's
		// signing key to their own primary key.
		if sk.binding.embedded == nil {
			sk.problem = "it is a signing subkey without a primary key binding signature (back-signature)"
			return
		}
		bs, err := pgpParseSignature(sk.binding.embedded)
		if err == nil && bs.sigType != pgpSigPrimaryBinding {
			err = fmt.Errorf("embedded signature has type %#02x", bs.sigType)
		}
		if err == nil {
			err = sk.key.verifyKeySig(bs, []*pgpPublicKey{pk, sk.key}, nil)
		}
		if err != nil {
			sk.problem = "its primary key binding signature (back-signature) is invalid: " + err.Error()
		}
	}
}

func pgpPrintable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// pgpRevoked reports whether one of revs, made by the key itself, voids a
// signature created at t. A revocation that says the key was superseded or
// retired (reasons 1 and 3) leaves earlier signatures valid; any other
// (compromise, or no reason) voids every signature.
func pgpRevoked(revs []*pgpSignature, t time.Time) (*pgpSignature, bool) {
	for _, r := range revs {
		soft := r.hasRevReason && (r.revReason == 1 || r.revReason == 3)
		if !soft || !t.Before(r.created) {
			return r, true
		}
	}
	return nil, false
}

// pgpExpired reports whether a key created at created, with a lifetime of
// secs seconds (0 = no expiry), is expired at t.
func pgpExpired(created time.Time, secs uint32, t time.Time) (time.Time, bool) {
	if secs == 0 {
		return time.Time{}, false
	}
	end := created.Add(time.Duration(secs) * time.Second)
	return end, !t.Before(end)
}

// signerFor finds the keys a data signature names as its issuer.
func (k *pgpKeyring) signerFor(s *pgpSignature) (*pgpEntity, *pgpSubkey, bool) {
	match := func(key *pgpPublicKey) bool {
		if s.issuerFpr != nil {
			return bytes.Equal(s.issuerFpr, key.fpr)
		}
		return s.hasIssuerID && s.issuerID == key.id
	}
	for _, e := range k.entities {
		if match(e.primary) {
			return e, nil, true
		}
		for _, sk := range e.subkeys {
			if match(sk.key) {
				return e, sk, true
			}
		}
	}
	return nil, nil, false
}

// allowed decides whether the key (the primary, or sub) may have made s,
// judged at now for expiry and at the signature's time for revocations
// that leave older signatures valid.
func (e *pgpEntity) allowed(sub *pgpSubkey, s *pgpSignature, now time.Time) error {
	pfpr := e.primary.fprHex()
	if e.problem != "" {
		return fmt.Errorf("key %s cannot be used: %s", pfpr, e.problem)
	}
	if r, ok := pgpRevoked(e.revocations, s.created); ok {
		return fmt.Errorf("key %s was revoked on %s%s", pfpr, r.created.Format(time.DateOnly), pgpReason(r))
	}
	for _, t := range []time.Time{s.created, now} {
		if end, ok := pgpExpired(e.primary.created, e.selfSig.keyExpires, t); ok {
			return fmt.Errorf("key %s expired on %s", pfpr, end.Format(time.DateOnly))
		}
	}
	key := e.primary
	if sub == nil {
		if e.selfSig.hasFlags && e.selfSig.flags&pgpKeyFlagSign == 0 {
			return fmt.Errorf("key %s has no signing capability (key flags %#02x)", pfpr, e.selfSig.flags)
		}
	} else {
		key = sub.key
		sfpr := fmt.Sprintf("subkey %s of key %s", sub.key.fprHex(), pfpr)
		if sub.problem != "" {
			return fmt.Errorf("%s cannot be used: %s", sfpr, sub.problem)
		}
		if r, ok := pgpRevoked(sub.revocations, s.created); ok {
			return fmt.Errorf("%s was revoked on %s%s", sfpr, r.created.Format(time.DateOnly), pgpReason(r))
		}
		for _, t := range []time.Time{s.created, now} {
			if end, ok := pgpExpired(sub.key.created, sub.binding.keyExpires, t); ok {
				return fmt.Errorf("%s expired on %s", sfpr, end.Format(time.DateOnly))
			}
		}
	}
	if s.created.Before(key.created) {
		return fmt.Errorf("signature is dated %s, before its key %s was created", s.created.Format(time.RFC3339), key.fprHex())
	}
	return nil
}

func pgpReason(r *pgpSignature) string {
	if !r.hasRevReason {
		return ""
	}
	switch r.revReason {
	case 1:
		return " (superseded)"
	case 2:
		return " (compromised)"
	case 3:
		return " (retired)"
	}
	return fmt.Sprintf(" (reason %d)", r.revReason)
}

// ---- data signatures ----

// pgpDataSig is one data signature being checked: its hash is fed with the
// signed data while it streams.
type pgpDataSig struct {
	sig   *pgpSignature
	ch    crypto.Hash
	h     hash.Hash
	w     io.Writer // h, or a line-ending canonicaliser in front of it
	err   error     // set when the signature is already known to fail
	entry *pgpEntity
	sub   *pgpSubkey
}

// readDataSigs parses the signature packets of a detached or clear-signed
// signature and prepares a hash for each one this keyring can check.
func (k *pgpKeyring) readDataSigs(raw []byte, clearsigned bool) ([]*pgpDataSig, error) {
	pkts, err := pgpParsePackets(raw)
	if err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	var sigs []*pgpDataSig
	for _, p := range pkts {
		if p.tag != pgpTagSignature {
			continue
		}
		d := &pgpDataSig{}
		sigs = append(sigs, d)
		d.sig, d.err = pgpParseSignature(p.body)
		if d.err != nil {
			d.sig = &pgpSignature{keyID: fmt.Sprintf("at offset %d", p.off)}
			continue
		}
		s := d.sig
		switch {
		case s.invalid != "":
			d.err = errors.New(s.invalid)
		case s.sigType != pgpSigBinary && s.sigType != pgpSigText:
			d.err = fmt.Errorf("signature type %#02x is not a document signature", s.sigType)
		case clearsigned && s.sigType != pgpSigText:
			d.err = errors.New("clear-signed message carries a binary-document signature")
		}
		if d.err != nil {
			continue
		}
		if d.ch, d.err = pgpHashFor(s.hashAlgo, false); d.err != nil {
			continue
		}
		var ok bool
		if d.entry, d.sub, ok = k.signerFor(s); !ok {
			d.err = errors.New("no such key in the trusted keyring")
			continue
		}
		d.h = pgpNewHash(d.ch)
		d.w = d.h
		if s.sigType == pgpSigText && !clearsigned {
			d.w = &pgpCRLFWriter{w: d.h}
		}
	}
	if len(sigs) == 0 {
		return nil, errors.New("signature: no signature packet found")
	}
	return sigs, nil
}

// finish completes the checks once all data has been hashed and returns
// who signed, or why no signature counts.
func pgpFinish(sigs []*pgpDataSig, now time.Time) (string, error) {
	var signers, failures []string
	for i, d := range sigs {
		if d.err == nil {
			d.err = d.check(now)
		}
		if d.err != nil {
			failures = append(failures, fmt.Sprintf("signature %d (key %s): %v", i+1, d.sig.keyID, d.err))
			continue
		}
		signer := d.entry.uid + " (key " + d.entry.primary.fprHex()
		if d.sub != nil {
			signer += ", signing subkey " + d.sub.key.fprHex()
		}
		signers = append(signers, signer+")")
	}
	if len(signers) == 0 {
		return "", errors.New("no valid signature from a trusted key: " + strings.Join(failures, "; "))
	}
	return strings.Join(signers, ", "), nil
}

func (d *pgpDataSig) check(now time.Time) error {
	key := d.entry.primary
	if d.sub != nil {
		key = d.sub.key
	}
	if err := key.verifyHashed(d.sig, d.ch, d.h); err != nil {
		return err
	}
	s := d.sig
	if s.created.After(now.Add(pgpSignatureClockSkew)) {
		return fmt.Errorf("signature is dated %s, in the future", s.created.Format(time.RFC3339))
	}
	if end, ok := pgpExpired(s.created, s.sigExpires, now); ok {
		return fmt.Errorf("signature expired on %s", end.Format(time.RFC3339))
	}
	return d.entry.allowed(d.sub, s, now)
}

// verifyDetached checks a detached signature (armored or binary, as in
// Release.gpg) over data, which is streamed once through the hashes.
func (k *pgpKeyring) verifyDetached(data io.Reader, sig []byte, now time.Time) (string, error) {
	if len(sig) > pgpMaxSignatureSize {
		return "", fmt.Errorf("signature file larger than %d bytes", pgpMaxSignatureSize)
	}
	raw := sig
	if t := bytes.TrimLeft(sig, " \t\r\n"); len(t) > 0 && t[0]&0x80 == 0 {
		blocks, err := pgpDearmor(t, "SIGNATURE")
		if err != nil {
			return "", fmt.Errorf("signature: %w", err)
		}
		raw = bytes.Join(blocks, nil)
	}
	sigs, err := k.readDataSigs(raw, false)
	if err != nil {
		return "", err
	}
	var ws []io.Writer
	for _, d := range sigs {
		if d.err == nil {
			ws = append(ws, d.w)
		}
	}
	if _, err := io.Copy(io.MultiWriter(ws...), data); err != nil {
		return "", fmt.Errorf("reading signed data: %w", err)
	}
	return pgpFinish(sigs, now)
}

// pgpCRLFWriter turns LF line endings into CR LF on the way to w, as
// canonical text signatures are computed.
type pgpCRLFWriter struct {
	w      io.Writer
	lastCR bool
}

func (c *pgpCRLFWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.lastCR = p[len(p)-1] == '\r'
			_, err := c.w.Write(p)
			return n, err
		}
		prevCR := c.lastCR
		if i > 0 {
			prevCR = p[i-1] == '\r'
		}
		seg := p[:i]
		if _, err := c.w.Write(seg); err != nil {
			return 0, err
		}
		eol := "\r\n"
		if prevCR {
			eol = "\n"
		}
		if _, err := io.WriteString(c.w, eol); err != nil {
			return 0, err
		}
		c.lastCR = false
		p = p[i+1:]
	}
	return n, nil
}

// verifyClearsigned checks an InRelease-style message and returns its text
// and who signed it. The text is what the signature covers: dash-escapes
// removed and trailing blanks stripped, each line ended by LF. Headers
// other than Hash and anything outside the signed block are refused, so
// no unsigned byte can reach the caller as if it were signed.
func (k *pgpKeyring) verifyClearsigned(msg []byte, now time.Time) ([]byte, string, error) {
	lines := strings.Split(string(msg), "\n")
	if len(lines) == 0 || pgpTrimLine(lines[0]) != "-----BEGIN PGP SIGNED MESSAGE-----" {
		return nil, "", errors.New("clear-signed message: does not start with -----BEGIN PGP SIGNED MESSAGE-----")
	}
	i := 1
	var hashes []string
	for ; i < len(lines) && pgpTrimLine(lines[i]) != ""; i++ {
		l := pgpTrimLine(lines[i])
		name, val, ok := strings.Cut(l, ": ")
		if !ok || name != "Hash" {
			return nil, "", fmt.Errorf("clear-signed message line %d: unexpected header %q (only Hash is allowed)", i+1, l)
		}
		for _, h := range strings.Split(val, ",") {
			hashes = append(hashes, strings.TrimSpace(h))
		}
	}
	if i >= len(lines) {
		return nil, "", errors.New("clear-signed message: no blank line after the headers")
	}
	var text, signed bytes.Buffer
	end := -1
	for i++; i < len(lines); i++ {
		raw := strings.TrimSuffix(lines[i], "\r")
		if pgpTrimLine(raw) == "-----BEGIN PGP SIGNATURE-----" {
			end = i
			break
		}
		if strings.HasPrefix(raw, "-") {
			if !strings.HasPrefix(raw, "- ") {
				return nil, "", fmt.Errorf("clear-signed message line %d: line starting with a dash is not dash-escaped", i+1)
			}
			raw = raw[2:]
		}
		l := pgpTrimLine(raw)
		if text.Len() > 0 {
			signed.WriteString("\r\n")
		}
		signed.WriteString(l)
		text.WriteString(l)
		text.WriteByte('\n')
	}
	if end < 0 {
		return nil, "", errors.New("clear-signed message: no -----BEGIN PGP SIGNATURE----- line")
	}
	last := -1
	for j := end + 1; j < len(lines); j++ {
		l := pgpTrimLine(lines[j])
		if last >= 0 && l != "" {
			return nil, "", fmt.Errorf("clear-signed message line %d: data after the signature", j+1)
		}
		if l == "-----END PGP SIGNATURE-----" {
			last = j
		}
	}
	if last < 0 {
		return nil, "", errors.New("clear-signed message: no -----END PGP SIGNATURE----- line")
	}
	armor := strings.Join(lines[end:last+1], "\n")
	blocks, err := pgpDearmor([]byte(armor), "SIGNATURE")
	if err != nil {
		return nil, "", fmt.Errorf("clear-signed message: %w", err)
	}
	if len(blocks) != 1 {
		return nil, "", errors.New("clear-signed message: more than one signature block")
	}
	sigs, err := k.readDataSigs(blocks[0], true)
	if err != nil {
		return nil, "", fmt.Errorf("clear-signed message: %w", err)
	}
	for _, d := range sigs {
		if d.err != nil {
			continue
		}
		if name := pgpHashName(d.sig.hashAlgo); len(hashes) > 0 && !pgpContains(hashes, name) {
			d.err = fmt.Errorf("hash %s is not declared in the Hash header (%s)", name, strings.Join(hashes, ", "))
			continue
		}
		d.w.Write(signed.Bytes())
	}
	signer, err := pgpFinish(sigs, now)
	if err != nil {
		return nil, "", fmt.Errorf("clear-signed message: %w", err)
	}
	return text.Bytes(), signer, nil
}

func pgpHashName(id byte) string {
	switch id {
	case 8:
		return "SHA256"
	case 9:
		return "SHA384"
	case 10:
		return "SHA512"
	case 11:
		return "SHA224"
	}
	return fmt.Sprintf("hash-%d", id)
}

func pgpContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
