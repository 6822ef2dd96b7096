package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

func init() {
	// xzcat decodes stdin to stdout; bench/xz.sh times it against xz -dc.
	testHelpers["xzcat"] = func() {
		r, err := newXZReader(os.Stdin)
		if err == nil {
			w := bufio.NewWriterSize(os.Stdout, 1<<16)
			_, err = io.Copy(w, r)
			if err == nil {
				err = w.Flush()
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

func xzDecodeAll(data []byte) ([]byte, error) {
	r, err := newXZReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// xzCompress runs the real xz on data.
func xzCompress(t testing.TB, data []byte, args ...string) []byte {
	t.Helper()
	needTool(t, "xz")
	cmd := exec.Command("xz", append([]string{"-c"}, args...)...)
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz %v: %v: %s", args, err, stderr.String())
	}
	return out
}

func xzMustEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: decoded %d bytes, want %d; first difference at byte %d", what, len(got), len(want), i)
}

// xzMixed returns n deterministic bytes that mix text, noise, runs, long
// repeats and counters, so that every kind of LZMA symbol occurs.
func xzMixed(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x785a))
	words := strings.Fields("the of and to in is was for on that with by as at from package install " +
		"debian usr lib share bin root config version amd64 linux kernel file system image layer")
	b := make([]byte, 0, n+70000)
	for len(b) < n {
		switch r.IntN(6) {
		case 0, 1:
			for range 50 + r.IntN(2000) {
				b = append(b, words[r.IntN(len(words))]...)
				b = append(b, " \n"[min(r.IntN(12), 1)])
			}
		case 2:
			for range 100 + r.IntN(20000) {
				b = append(b, byte(r.Uint32()))
			}
		case 3:
			c := byte(r.IntN(3) * 0x7F)
			for range 10 + r.IntN(30000) {
				b = append(b, c)
			}
		case 4:
			if len(b) > 0 {
				from := r.IntN(len(b))
				b = append(b, b[from:from+min(len(b)-from, 1+r.IntN(60000))]...)
			}
		case 5:
			v := r.Uint32()
			for range 100 + r.IntN(3000) {
				v += uint32(r.IntN(300))
				b = binary.LittleEndian.AppendUint32(b, v)
			}
		}
	}
	return b[:n]
}

// xzELF returns up to n bytes of x86 machine code: the executables in
// /usr/bin, in name order.
func xzELF(t testing.TB, n int) []byte {
	t.Helper()
	names, _ := filepath.Glob("/usr/bin/*")
	var b []byte
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil || !bytes.HasPrefix(data, []byte("\x7fELF\x02\x01\x01")) || binary.LittleEndian.Uint16(data[18:]) != 62 {
			continue
		}
		b = append(b, data...)
		if len(b) >= n {
			return b[:n]
		}
	}
	need(t, len(b) > 0, "x86-64 ELF executables in /usr/bin")
	return b
}

func TestXZVectors(t *testing.T) {
	sums, err := os.ReadFile("testdata/xz/SHA256SUMS")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		want, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("bad SHA256SUMS line %q", line)
		}
		data, err := os.ReadFile(filepath.Join("testdata/xz", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := xzDecodeAll(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != want {
			t.Fatalf("%s: decoded sha256 %x, want %s", name, sum, want)
		}
		n++
	}
	if n < 8 {
		t.Fatalf("only %d vectors", n)
	}
}

func TestXZAgainstXZ(t *testing.T) {
	needReal(t)
	needTool(t, "xz")
	mixed := xzMixed(3<<20, 1)
	text := xzMixed(1<<20, 2)
	for i := range text { // printable only, highly compressible
		text[i] = 'a' + text[i]%7
	}
	random := make([]byte, 300<<10)
	rnd := rand.New(rand.NewPCG(3, 3))
	for i := range random {
		random[i] = byte(rnd.Uint32())
	}
	zeros := make([]byte, 5<<20)
	elf := xzELF(t, 2<<20)
	cases := []struct {
		name string
		data []byte
		args []string
	}{
		{"empty", nil, nil},
		{"one byte", []byte("x"), nil},
		{"hello", []byte("hello, world\n"), nil},
		{"mixed -0", mixed, []string{"-0"}},
		{"mixed -1", mixed, []string{"-1"}},
		{"mixed -6", mixed, []string{"-6"}},
		{"mixed -9", mixed[:1<<20], []string{"-9"}},
		{"mixed -9e", mixed[:1<<20], []string{"-9e"}},
		{"text -6", text, []string{"-6"}},
		{"check none", mixed[:500<<10], []string{"--check=none"}},
		{"check crc32", mixed[:500<<10], []string{"--check=crc32"}},
		{"check crc64", mixed[:500<<10], []string{"--check=crc64"}},
		{"check sha256", mixed[:500<<10], []string{"--check=sha256"}},
		{"random", random, nil},
		{"zeros", zeros, nil},
		{"zeros -0", zeros, []string{"-0"}},
		{"blocks", mixed, []string{"--block-size=100KiB"}},
		{"threads", mixed, []string{"-T2", "--block-size=256KiB"}},
		{"small dict wraps", mixed, []string{"--lzma2=preset=1,dict=4KiB"}},
		{"dict 1MiB wraps", append(slices.Clip(mixed), mixed...), []string{"--lzma2=preset=1,dict=1MiB"}},
		{"lc0 lp4 pb4", mixed[:1<<20], []string{"--lzma2=preset=6,lc=0,lp=4,pb=4"}},
		{"lc4 lp0 pb0", mixed[:1<<20], []string{"--lzma2=preset=6,lc=4,lp=0,pb=0"}},
		{"lc1 lp3 pb2", mixed[:1<<20], []string{"--lzma2=preset=6,lc=1,lp=3,pb=2"}},
		{"nice 273 bt4", mixed[:1<<20], []string{"--lzma2=preset=6,nice=273,mf=bt4,depth=0"}},
		{"delta 1", mixed[:1<<20], []string{"--delta=dist=1", "--lzma2"}},
		{"delta 4", mixed[:1<<20], []string{"--delta=dist=4", "--lzma2"}},
		{"delta 256", mixed[:1<<20], []string{"--delta=dist=256", "--lzma2"}},
		{"x86", elf, []string{"--x86", "--lzma2"}},
		{"x86 start", elf[:1<<20], []string{"--x86=start=4096", "--lzma2"}},
		{"x86 mixed", mixed[:1<<20], []string{"--x86", "--lzma2"}},
		{"x86 delta chain", elf[:1<<20], []string{"--x86", "--delta=dist=3", "--lzma2=preset=1"}},
		{"x86 blocks", elf[:1<<20], []string{"--x86", "--lzma2", "--block-size=100000"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			xz := xzCompress(t, c.data, c.args...)
			got, err := xzDecodeAll(xz)
			if err != nil {
				t.Fatal(err)
			}
			xzMustEqual(t, c.name, got, c.data)
		})
	}
}

func TestXZConcatenatedAndPadding(t *testing.T) {
	a, b := xzMixed(100<<10, 4), []byte("second stream\n")
	xa := xzCompress(t, a, "--check=crc32")
	xb := xzCompress(t, b, "--check=sha256")
	xe := xzCompress(t, nil, "--check=none")
	pad := make([]byte, 8)
	want := append(slices.Clip(a), b...)
	for _, c := range []struct {
		name string
		in   [][]byte
		want []byte
	}{
		{"two streams", [][]byte{xa, xb}, want},
		{"padding between and after", [][]byte{xa, pad, xb, pad[:4]}, want},
		{"empty streams", [][]byte{xe, pad[:4], xa, xe, xb, xe}, want},
	} {
		got, err := xzDecodeAll(bytes.Join(c.in, nil))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		xzMustEqual(t, c.name, got, c.want)
	}
	for _, c := range []struct {
		name, err string
		in        [][]byte
	}{
		{"padding of 3", "not a multiple of four", [][]byte{xa, pad[:3]}},
		{"padding of 6", "not a multiple of four", [][]byte{xa, pad[:6]}},
		{"garbage after", "bad header magic", [][]byte{xa, []byte("garbage!")}},
		{"non-null padding", "non-null", [][]byte{xa, {0, 0, 1, 0}}},
		{"padding first", "bad header magic", [][]byte{pad[:4], xa}},
		{"truncated second", "truncated", [][]byte{xa, xb[:20]}},
	} {
		_, err := xzDecodeAll(bytes.Join(c.in, nil))
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Fatalf("%s: error %v, want %q", c.name, err, c.err)
		}
	}
}

// TestXZStreaming decodes with one-byte input reads and odd output reads,
// which must not change the result.
func TestXZStreaming(t *testing.T) {
	data := xzMixed(600<<10, 5)
	elf := xzELF(t, 300<<10)
	for _, c := range []struct {
		data []byte
		args []string
	}{
		{data, []string{"-T2", "--block-size=50KiB"}},
		{elf, []string{"--x86", "--delta=dist=2", "--lzma2=preset=0"}},
	} {
		xz := xzCompress(t, c.data, c.args...)
		r, err := newXZReader(iotest.OneByteReader(bytes.NewReader(xz)))
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, 7)
		for i := 0; ; i++ {
			n, err := r.Read(buf[:1+i%len(buf)])
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		xzMustEqual(t, fmt.Sprint(c.args), got, c.data)
		// A reader that fails mid-stream passes the error on.
		failing := io.MultiReader(bytes.NewReader(xz[:len(xz)/2]), iotest.ErrReader(errors.New("disk on fire")))
		r, err = newXZReader(failing)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("error %v, want the reader's error", err)
		}
	}
}

// xzBlockHeader builds a block header from its flags and fields, with the
// header size byte, padding and CRC32.
func xzBlockHeader(size int, flags byte, fields ...byte) []byte {
	h := make([]byte, size)
	h[0] = byte(size/4 - 1)
	h[1] = flags
	copy(h[2:], fields)
	binary.LittleEndian.PutUint32(h[size-4:], crc32.ChecksumIEEE(h[:size-4]))
	return h
}

func xzFixCRC(b []byte, from, to, at int) {
	binary.LittleEndian.PutUint32(b[at:], crc32.ChecksumIEEE(b[from:to]))
}

func TestXZCorrupt(t *testing.T) {
	// Some cases need block padding: pick a data length that makes the
	// compressed size not a multiple of four.
	var xz []byte
	var footer, index int
	for n := 4000; ; n++ {
		xz = xzCompress(t, []byte(strings.Repeat("karapace xz test data; ", 200)[:n]), "-6", "--check=crc64")
		footer = len(xz) - 12
		index = footer - (int(binary.LittleEndian.Uint32(xz[footer+4:]))+1)*4
		if unpadded, _ := xzUvarint(xz[index+2:]); unpadded%4 != 0 {
			break
		}
	}
	// xz -6 writes a 12-byte block header after the 12-byte stream header:
	// size byte, flags 0 (one filter), LZMA2 ID 0x21, one property byte.
	if !bytes.Equal(xz[12:15], []byte{2, 0, 0x21}) {
		t.Fatalf("unexpected block header % x", xz[12:24])
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(slices.Clone(xz)) }
	header := func(h []byte) []byte { return slices.Concat(xz[:12], h, xz[24:]) }
	for _, c := range []struct {
		name, err string
		in        []byte
	}{
		{"empty input", "truncated in stream header", nil},
		{"not xz", "bad header magic", []byte("this is not an xz file at all")},
		{"magic", "bad header magic", mutate(func(b []byte) []byte { b[1] = '8'; return b })},
		{"stream header crc", "stream header CRC32", mutate(func(b []byte) []byte { b[8] ^= 1; return b })},
		{"stream flags reserved", "reserved flags", mutate(func(b []byte) []byte { b[7] |= 0x40; xzFixCRC(b, 6, 8, 8); return b })},
		{"stream flags first byte", "reserved flags", mutate(func(b []byte) []byte { b[6] = 1; xzFixCRC(b, 6, 8, 8); return b })},
		{"check type", "unsupported check type 0x2", mutate(func(b []byte) []byte { b[7] = 2; xzFixCRC(b, 6, 8, 8); return b })},
		{"block header crc", "block header CRC32 mismatch", mutate(func(b []byte) []byte { b[16] ^= 0x80; return b })},
		{"block flags reserved", "reserved flags", header(xzBlockHeader(12, 0x04, 0x21, 1, 0x16))},
		{"bad varint", "bad compressed size", header(xzBlockHeader(12, 0x40, 0x80, 0x00, 0x21, 1, 0x16))},
		{"overlong varint", "bad compressed size", header(xzBlockHeader(16, 0x40, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01))},
		{"zero compressed size", "invalid compressed size 0", header(xzBlockHeader(12, 0x40, 0x00, 0x21, 1, 0x16))},
		{"wrong compressed size", "differs from its header", header(xzBlockHeader(12, 0x40, 0x05, 0x21, 1, 0x16))},
		{"wrong uncompressed size", "more than its declared uncompressed size 3", header(xzBlockHeader(12, 0x80, 0x03, 0x21, 1, 0x16))},
		{"short uncompressed size", "differs from its header", header(xzBlockHeader(16, 0x80, 0xFF, 0x7F, 0x21, 1, 0x16))},
		{"dictionary too large", "exceeds the limit of 256 MiB", header(xzBlockHeader(12, 0x00, 0x21, 1, 38))},
		{"dictionary props", "invalid LZMA2 properties", header(xzBlockHeader(12, 0x00, 0x21, 1, 41))},
		{"lzma2 props size", "invalid LZMA2 properties", header(xzBlockHeader(12, 0x00, 0x21, 2, 0x16, 0))},
		{"unsupported filter", "unsupported filter ID 0xa", header(xzBlockHeader(12, 0x01, 0x0A, 0, 0x21, 1, 0x16))},
		{"unsupported last filter", "unsupported filter ID 0x7", header(xzBlockHeader(12, 0x00, 0x07, 0))},
		{"delta last", "cannot be the last filter", header(xzBlockHeader(12, 0x00, 0x03, 1, 0))},
		{"lzma2 not last", "only allowed as the last filter", header(xzBlockHeader(12, 0x01, 0x21, 1, 0x16, 0x21, 1, 0x16))},
		{"delta props", "invalid delta filter properties", header(xzBlockHeader(12, 0x01, 0x03, 0, 0x21, 1, 0x16))},
		{"x86 props", "invalid x86 filter properties", header(xzBlockHeader(12, 0x01, 0x04, 1, 0, 0x21, 1, 0x16))},
		{"props overrun", "overrun the header", header(xzBlockHeader(12, 0x00, 0x21, 9, 0x16))},
		{"header padding", "padding is not null", header(xzBlockHeader(12, 0x00, 0x21, 1, 0x16, 0, 1))},
		{"lzma2 control", "invalid LZMA2 control byte 0x3", mutate(func(b []byte) []byte { b[24] = 3; return b })},
		{"lzma2 no dict reset", "does not start with a dictionary reset", mutate(func(b []byte) []byte { b[24] = 0x80; return b })},
		{"lzma2 first byte", "does not start with a null byte", mutate(func(b []byte) []byte { b[30] = 1; return b })},
		{"lzma props", "invalid LZMA properties", mutate(func(b []byte) []byte { b[29] = 225; return b })},
		{"lc+lp", "exceed lc+lp=4", mutate(func(b []byte) []byte { b[29] = 4 + 9*1; return b })},
		{"block padding", "block padding is not null", mutate(func(b []byte) []byte { b[index-9] = 1; return b })},
		{"check", "block check (CRC64) mismatch", mutate(func(b []byte) []byte { b[index-1] ^= 4; return b })},
		{"index crc", "index CRC32 mismatch", mutate(func(b []byte) []byte { b[footer-1] ^= 1; return b })},
		{"index count", "index lists 2 blocks, the stream has 1", mutate(func(b []byte) []byte { b[index+1] = 2; return b })},
		{"index record", "index records do not match", mutate(func(b []byte) []byte {
			b[index+2] ^= 1
			xzFixCRC(b, index, footer-4, footer-4)
			return b
		})},
		{"footer magic", "bad stream footer magic", mutate(func(b []byte) []byte { b[len(b)-1] = 'X'; return b })},
		{"footer crc", "stream footer CRC32 mismatch", mutate(func(b []byte) []byte { b[footer] ^= 1; return b })},
		{"footer flags", "flags differ", mutate(func(b []byte) []byte { b[footer+9] = 1; xzFixCRC(b, footer+4, footer+10, footer); return b })},
		{"backward size", "stream footer gives index size", mutate(func(b []byte) []byte { b[footer+4]++; xzFixCRC(b, footer+4, footer+10, footer); return b })},
	} {
		_, err := xzDecodeAll(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "compressed offset") {
			t.Errorf("%s: error %v, want %q and an offset", c.name, err, c.err)
		}
	}
	// The LZMA2 sanity checks above rely on this layout.
	if xz[24] != 0xE0 || xz[29] != 0x5D {
		t.Fatalf("unexpected LZMA2 chunk header % x", xz[24:30])
	}
}

func TestXZTruncated(t *testing.T) {
	data := xzMixed(24<<10, 6)
	xz := xzCompress(t, data, "-T2", "--block-size=8KiB", "--check=sha256")
	for n := range len(xz) {
		// Every length near the headers and the end, a sample between.
		if n > 300 && n < len(xz)-300 && n%7 != 0 {
			continue
		}
		got, err := xzDecodeAll(xz[:n])
		if err == nil {
			t.Fatalf("no error for input truncated to %d of %d bytes", n, len(xz))
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("truncated to %d: output is not a prefix of the data", n)
		}
	}
}

// TestXZBitFlips flips bits all over small files, one at a time: each flip
// must be reported as an error, never panic or go unnoticed.
func TestXZBitFlips(t *testing.T) {
	data := xzMixed(12<<10, 7)
	elf := xzELF(t, 12<<10)
	for _, c := range []struct {
		data []byte
		args []string
	}{
		{data, []string{"-T2", "--block-size=4KiB", "--check=crc64"}},
		{data, []string{"--check=crc32"}},
		{elf, []string{"--x86", "--delta=dist=2", "--lzma2=preset=1", "--check=sha256"}},
	} {
		xz := xzCompress(t, c.data, c.args...)
		b := slices.Clone(xz)
		for i := range len(b) * 8 {
			// Every bit of the stream header and of the index and
			// footer; one bit of each byte elsewhere (of every seventh
			// with -short, the race detector's pass).
			if i/8 >= 64 && i/8 < len(b)-96 && (i%8 != i/8%8 || testing.Short() && i/8%7 != 0) {
				continue
			}
			b[i/8] ^= 1 << (i % 8)
			if _, err := xzDecodeAll(b); err == nil {
				t.Fatalf("%v: flipping bit %d of byte %d went unnoticed", c.args, i%8, i/8)
			}
			b[i/8] ^= 1 << (i % 8)
		}
	}
}

// TestXZMemory checks that the window is the only large allocation and that
// it is sized by the output, not by the declared dictionary.
func TestXZMemory(t *testing.T) {
	measure := func(xz []byte) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r, err := newXZReader(bytes.NewReader(xz))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small := xzCompress(t, []byte("tiny"), "-9") // declares a 64 MiB dictionary
	if n := measure(small); n > 1<<20 {
		t.Errorf("decoding 4 bytes with a 64 MiB dictionary allocated %d bytes", n)
	}
	big := xzCompress(t, xzMixed(24<<20, 8), "--lzma2=preset=0,dict=1MiB")
	// The window doubles up to 1 MiB plus one 2 MiB chunk: less than
	// twice that in total.
	if n := measure(big); n > 2*(1<<20+xzMaxChunk)+1<<20 {
		t.Errorf("decoding 24 MiB with a 1 MiB dictionary allocated %d bytes", n)
	}
}

// TestXZRootfs decodes a real root filesystem tarball compressed by xz.
func TestXZRootfs(t *testing.T) {
	path := testRootfsTar(t)
	xzPath := testRootfsTarXZ(t)
	want := sha256.New()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(want, f); err != nil {
		t.Fatal(err)
	}
	zf, err := os.Open(xzPath)
	if err != nil {
		t.Fatal(err)
	}
	defer zf.Close()
	r, err := newXZReader(zf)
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	if _, err := io.Copy(got, r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("decoded sha256 %x, want %x", got.Sum(nil), want.Sum(nil))
	}
}

// xzWrapLZMA2 puts raw LZMA2 data into a stream and block header, so that
// fuzzing reaches the LZMA2 decoder past the CRC32-protected headers. The
// stream ends there: decoding can at best fail at the block's end.
func xzWrapLZMA2(dictProp byte, lzma2 []byte) []byte {
	b := append(slices.Clone(xzMagic), 0, 0)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b[6:8]))
	b = append(b, xzBlockHeader(12, 0x00, 0x21, 1, dictProp%41)...)
	return append(b, lzma2...)
}

// FuzzXZ decodes its input as an .xz file (first byte even) or as LZMA2
// data in a valid header (first byte odd). Whole and one-byte reads must
// agree; panics fail by themselves.
func FuzzXZ(f *testing.F) {
	vectors, _ := filepath.Glob("testdata/xz/*.xz")
	for _, name := range vectors {
		if data, err := os.ReadFile(name); err == nil && len(data) < 8192 {
			f.Add(append([]byte{0}, data...))
			if len(data) > 24 && data[12] == 2 {
				f.Add(append([]byte{1, data[16]}, data[24:]...)) // the first block's LZMA2 data
			}
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 2 {
			return
		}
		data := in[1:]
		if in[0]&1 == 1 {
			data = xzWrapLZMA2(in[1], in[2:])
		}
		const limit = 256 << 10
		var all, bytewise []byte
		r, err1 := newXZReader(bytes.NewReader(data))
		if err1 == nil {
			all, err1 = io.ReadAll(io.LimitReader(r, limit))
		}
		r, err2 := newXZReader(iotest.OneByteReader(bytes.NewReader(data)))
		if err2 == nil {
			bytewise, err2 = io.ReadAll(io.LimitReader(iotest.OneByteReader(r), limit))
		}
		if (err1 == nil) != (err2 == nil) || !bytes.Equal(all, bytewise) {
			t.Fatalf("whole reads: %d bytes, %v; one-byte reads: %d bytes, %v", len(all), err1, len(bytewise), err2)
		}
	})
}

// xzBenchCorpus is about 50 MB of tar: the start of the rootfs tarball
// given by KARAPACE_TEST_ROOTFS_TAR, else files from /usr/share and /usr/lib
// in name order. Compressing it with xz -6 takes a while, so the result is
// kept in the temporary directory for later runs.
var xzBenchCorpus = sync.OnceValues(func() (string, error) {
	const size = 50 << 20
	src := os.Getenv("KARAPACE_TEST_ROOTFS_TAR")
	key := sha256.Sum256([]byte(src))
	path := filepath.Join(os.TempDir(), fmt.Sprintf("karapace-xz-bench-%x.tar.xz", key[:6]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	var corpus bytes.Buffer
	if src != "" {
		f, err := os.Open(src)
		if err != nil {
			return "", err
		}
		_, err = io.CopyN(&corpus, f, size)
		f.Close()
		if err != nil {
			return "", err
		}
	} else {
		tw := tar.NewWriter(&corpus)
		errFull := errors.New("full")
		for _, root := range []string{"/usr/share", "/usr/lib"} {
			err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil
				}
				data, err := os.ReadFile(p)
				if err != nil {
					return nil
				}
				hdr := &tar.Header{Name: p[1:], Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}
				if err := tw.WriteHeader(hdr); err != nil {
					return err
				}
				if _, err := tw.Write(data); err != nil {
					return err
				}
				if corpus.Len() >= size {
					return errFull
				}
				return nil
			})
			if err == errFull {
				break
			}
			if err != nil {
				return "", err
			}
		}
		if err := tw.Close(); err != nil {
			return "", err
		}
	}
	cmd := exec.Command("xz", "-6", "-T1", "-c")
	cmd.Stdin = &corpus
	xz, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("xz: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, xz, 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
})

func BenchmarkXZDecode(b *testing.B) {
	needTool(b, "xz")
	path, err := xzBenchCorpus()
	if err != nil {
		b.Fatal(err)
	}
	xz, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for b.Loop() {
		r, err := newXZReader(bytes.NewReader(xz))
		if err != nil {
			b.Fatal(err)
		}
		if n, err = io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(n)
}
