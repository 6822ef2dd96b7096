package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// zstdCompress runs the real zstd binary over data.
func zstdCompress(t testing.TB, data []byte, args ...string) []byte {
	t.Helper()
	bin := needTool(t, "zstd")
	cmd := exec.Command(bin, append(args, "-q", "-c")...)
	cmd.Stdin = bytes.NewReader(data)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd %v: %v\n%s", args, err, errb.String())
	}
	return out
}

func zstdDecodeAll(in []byte) ([]byte, error) {
	r, err := newZstdReader(bytes.NewReader(in))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// zstdMixed makes n bytes of deterministic mixed content: word text with
// varied vocabulary, numbers, runs and stretches of random bytes, and
// repeats at short and long distances.
func zstdMixed(n int, seed int64) []byte {
	rng := rand.New(rand.NewSource(seed))
	words := make([]string, 2000)
	for i := range words {
		w := make([]byte, 2+rng.Intn(9))
		for j := range w {
			w[j] = byte('a' + rng.Intn(26))
		}
		words[i] = string(w)
	}
	var b bytes.Buffer
	for b.Len() < n {
		switch rng.Intn(10) {
		case 0: // random bytes
			r := make([]byte, rng.Intn(3000))
			rng.Read(r)
			b.Write(r)
		case 1: // a run
			b.Write(bytes.Repeat([]byte{byte(rng.Intn(256))}, rng.Intn(5000)))
		case 2: // repeat something already written
			if b.Len() > 100 {
				start := rng.Intn(b.Len() - 50)
				l := min(rng.Intn(20000), b.Len()-start)
				b.Write(bytes.Clone(b.Bytes()[start : start+l]))
			}
		case 3:
			fmt.Fprintf(&b, "%d %x %08.3f\n", rng.Int63(), rng.Uint32(), rng.Float64()*1000)
		default: // text, Zipf-like word choice
			for i := 0; i < 200; i++ {
				b.WriteString(words[int(rng.ExpFloat64()*50)%len(words)])
				if rng.Intn(12) == 0 {
					b.WriteString(".\n")
				} else {
					b.WriteByte(' ')
				}
			}
		}
	}
	return b.Bytes()[:n]
}

func TestZstdAgainstReferenceEncoder(t *testing.T) {
	needReal(t)
	mixed := zstdMixed(3<<20, 1)
	random := make([]byte, 1<<20)
	rand.New(rand.NewSource(2)).Read(random)
	small := []byte("hello, zstd\n")
	// A short text: its few literals are Huffman-coded as one stream.
	short := []byte("The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " +
		"How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. The five boxing wizards jump quickly.\n")
	// Whole blocks of one byte become RLE blocks.
	zeros := append(make([]byte, 600<<10), mixed[:50000]...)
	inputs := map[string][]byte{"mixed": mixed, "random": random, "small": small, "short": short, "zeros": zeros, "empty": {}, "one byte": {'x'}}
	levels := [][]string{{"-1"}, {"-3"}, {"-9"}, {"-19"}, {"--ultra", "-22"}, {"-3", "--long=27"}, {"-19", "--no-check"}, {"-1", "--no-check"}}
	for name, data := range inputs {
		for _, lv := range levels {
			if (name == "random" || name == "mixed") && len(lv) > 1 && lv[0] == "--ultra" && testing.Short() {
				continue
			}
			comp := zstdCompress(t, data, lv...)
			got, err := zstdDecodeAll(comp)
			if err != nil {
				t.Errorf("%s %v: %v", name, lv, err)
				continue
			}
			if !bytes.Equal(got, data) {
				t.Errorf("%s %v: output differs (%d bytes, want %d)", name, lv, len(got), len(data))
			}
		}
	}
}

// TestZstdLongWindow has matches further back than the default window, so
// the decoder must keep a large history and slide it correctly.
func TestZstdLongWindow(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	chunk := make([]byte, 1<<20)
	rng.Read(chunk)
	filler := make([]byte, 20<<20)
	rng.Read(filler)
	data := bytes.Join([][]byte{chunk, filler, chunk, filler[:3<<20], chunk}, nil)
	comp := zstdCompress(t, data, "-3", "--long=26")
	if len(comp) > len(data)-(1<<20) {
		t.Fatalf("zstd --long found no long match (%d of %d bytes); the test data is wrong", len(comp), len(data))
	}
	r, err := newZstdReader(bytes.NewReader(comp))
	if err != nil {
		t.Fatal(err)
	}
	// Small, odd-sized reads exercise the hand-over between blocks.
	var got bytes.Buffer
	buf := make([]byte, 12345)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("long-window output differs")
	}
}

func zstdSkippable(magicLow byte, payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, zstdSkippableBase|uint32(magicLow))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func TestZstdFrames(t *testing.T) {
	a, b := zstdMixed(200<<10, 4), []byte(strings.Repeat("second frame ", 1000))
	za, zb := zstdCompress(t, a, "-3"), zstdCompress(t, b, "-19", "--no-check")
	empty := zstdCompress(t, nil)
	stream := bytes.Join([][]byte{zstdSkippable(0, []byte("meta")), za, empty, zstdSkippable(15, nil), zb, zstdSkippable(7, bytes.Repeat([]byte{1}, 300))}, nil)
	got, err := zstdDecodeAll(stream)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(bytes.Clone(a), b...)) {
		t.Fatal("concatenated frames decode wrong")
	}
	if got, err := zstdDecodeAll(zstdSkippable(1, []byte("only"))); err != nil || len(got) != 0 {
		t.Fatalf("skippable frame alone: %q %v", got, err)
	}

	for name, c := range map[string]struct {
		in   []byte
		want string
	}{
		"empty input":         {nil, "empty input, no frame"},
		"not zstd":            {[]byte("hello world"), "not Zstandard data"},
		"trailing garbage":    {append(bytes.Clone(za), "junk"...), "not a Zstandard frame"},
		"truncated magic":     {append(bytes.Clone(za), 0x28, 0xb5), "input ends inside a frame magic number"},
		"truncated skippable": {zstdSkippable(0, []byte("meta"))[:10], "input ends inside a skippable frame"},
		"truncated frame":     {za[:len(za)/2], "unexpected EOF"},
	} {
		_, err := zstdDecodeAll(c.in)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		mustContain(t, name, err.Error(), c.want)
	}
	_, err = zstdDecodeAll(za[:len(za)/2])
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame error does not wrap io.ErrUnexpectedEOF: %v", err)
	}
}

// zstdFrame builds a frame from a header and raw blocks.
func zstdFrame(fhd byte, header []byte, blocks ...[]byte) []byte {
	f := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	f = append(f, fhd)
	f = append(f, header...)
	for i, b := range blocks {
		h := uint32(len(b)) << 3
		if i == len(blocks)-1 {
			h |= 1
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16))
		f = append(f, b...)
	}
	return f
}

// zstdCompressedFrame is a frame with a 1 KiB window and one compressed
// block holding content.
func zstdCompressedFrame(content ...byte) []byte {
	f := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	h := uint32(len(content))<<3 | 2<<1 | 1
	f = append(f, 0x00, 0x00, byte(h), byte(h>>8), byte(h>>16))
	return append(f, content...)
}

// TestZstdTableModes decodes a hand-made frame whose first block codes
// its sequence tables in RLE mode and whose second block repeats them and
// has RLE literals; the reference decoder must agree.
func TestZstdTableModes(t *testing.T) {
	f := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	f = append(f, 0x00, 0x00) // no content size, 1 KiB window
	block := func(last bool, content ...byte) {
		h := uint32(len(content))<<3 | 2<<1
		if last {
			h |= 1
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16))
		f = append(f, content...)
	}
	// Raw literals "abc"; one sequence; all three tables RLE (literal
	// length code 3, offset code 2, match length code 3 = 6 bytes); the
	// bit stream holds the 2 extra offset bits "10": offset value 6,
	// offset 3.
	block(false, 0x18, 'a', 'b', 'c', 0x01, 0x54, 3, 2, 3, 0x06)
	// RLE literals "zzz"; one sequence repeating all three tables; extra
	// offset bits "00": offset value 4, offset 1.
	block(true, 0x19, 'z', 0x01, 0xfc, 0x04)
	const want = "abcabcabczzzzzzzzz"
	got, err := zstdDecodeAll(f)
	if err != nil || string(got) != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	cmd := exec.Command(needTool(t, "zstd"), "-dc")
	cmd.Stdin = bytes.NewReader(f)
	ref, err := cmd.Output()
	if err != nil || string(ref) != want {
		t.Fatalf("zstd -dc says %q, %v", ref, err)
	}
}

func TestZstdHeaderChecks(t *testing.T) {
	ok := zstdFrame(0x20, []byte{5}, []byte("hello")) // single segment, 1-byte content size
	if got, err := zstdDecodeAll(ok); err != nil || string(got) != "hello" {
		t.Fatalf("hand-made frame: %q %v", got, err)
	}
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"dictionary":       {zstdFrame(0x21, []byte{7, 5}, []byte("hello")), "needs dictionary 7; dictionaries are not supported"},
		"huge window":      {zstdFrame(0x00, []byte{18 << 3}, []byte("hello")), "window of 256 MiB, more than the 128 MiB"},
		"reserved bit":     {zstdFrame(0x28, []byte{5}, []byte("hello")), "reserved bit"},
		"size mismatch":    {zstdFrame(0x20, []byte{6}, []byte("hello")), "frame holds 5 bytes, its header declares 6"},
		"size exceeded":    {zstdFrame(0x80, []byte{0, 4, 0, 0, 0}, []byte("hello")), "exceeds the maximum block size 4 or the declared content size"},
		"block too large":  {zstdFrame(0x20, []byte{3}, []byte("hello")), "exceeds the maximum block size 3"},
		"reserved block":   {append(zstdFrame(0x20, []byte{0}), 7, 0, 0), "block type 3 is reserved"},
		"repeat no table":  {zstdCompressedFrame(0x00, 0x01, 0xfc, 0x80), "literal length table repeated, but no earlier block"},
		"treeless first":   {zstdCompressedFrame(0x03, 0x00, 0x00, 0x00), "treeless literals with no earlier Huffman tree"},
		"sequences junk":   {zstdCompressedFrame(0x00, 0x00, 0x00), "data after an empty sequences section"},
		"missing checksum": {zstdFrame(0x24, []byte{5}, []byte("hello")), "input ends inside a frame checksum"},
	}
	for name, c := range cases {
		_, err := zstdDecodeAll(c.in)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		mustContain(t, name, err.Error(), c.want)
	}
	comp := zstdCompress(t, []byte(strings.Repeat("checksum me ", 100)), "-3")
	bad := bytes.Clone(comp)
	bad[len(bad)-1] ^= 1
	_, err := zstdDecodeAll(bad)
	mustContain(t, "checksum", fmt.Sprint(err), "content checksum mismatch")
}

// TestZstdCorruption flips bits of small frames (every bit of the headers
// and tables at the start and of the end, every third bit between) and
// cuts them at every length: the decoder must return an error or, where the flipped bit
// does not matter, the original data, and never panic. With a checksum, no
// corruption may go unnoticed.
func TestZstdCorruption(t *testing.T) {
	data := zstdMixed(8<<10, 5)
	fromFile := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(fromFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// From a file the frame declares its content size; from a pipe not.
	for _, lv := range [][]string{{"-19", fromFile}, {"-1"}, {"-19", "--no-check"}} {
		comp := zstdCompress(t, data, lv...)
		checked := len(lv) != 2 || lv[1] != "--no-check"
		for i := 0; i < len(comp)*8; i++ {
			if i > 2048 && i < (len(comp)-16)*8 && (i%3 != 0 || testing.Short() && i%21 != 0) {
				continue
			}
			bad := bytes.Clone(comp)
			bad[i/8] ^= 1 << (i % 8)
			got, err := zstdDecodeAll(bad)
			if err == nil && checked && !bytes.Equal(got, data) {
				t.Fatalf("%v: bit %d flipped: wrong output with no error", lv, i)
			}
		}
		for n := 0; n < len(comp); n++ {
			if _, err := zstdDecodeAll(comp[:n]); err == nil {
				t.Fatalf("%v: cut to %d of %d bytes: no error", lv, n, len(comp))
			}
		}
	}
}

func TestZstdXXH64(t *testing.T) {
	for in, want := range map[string]uint64{
		"":    0xef46db3751d8e999,
		"a":   0xd24ec4f1a98c6e5b,
		"abc": 0x44bc2cf5ad770999,
	} {
		var x zstdXXH64
		x.reset()
		x.write([]byte(in))
		if got := x.sum(); got != want {
			t.Errorf("XXH64(%q) = %016x, want %016x", in, got, want)
		}
	}
	// Any split of the input hashes the same.
	data := zstdMixed(1000, 6)
	var one zstdXXH64
	one.reset()
	one.write(data)
	for step := 1; step < 70; step += 3 {
		var x zstdXXH64
		x.reset()
		for i := 0; i < len(data); i += step {
			x.write(data[i:min(i+step, len(data))])
		}
		if x.sum() != one.sum() {
			t.Fatalf("XXH64 in chunks of %d differs", step)
		}
	}
}

// zstdVectors reads testdata/zstd: each vector made by the zstd CLI, by
// name, and the sha256 of what it decodes to.
func zstdVectors(t testing.TB) map[string]string {
	t.Helper()
	sums, err := os.ReadFile("testdata/zstd/SHA256SUMS")
	if err != nil {
		t.Fatal(err)
	}
	vectors := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		want, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("bad SHA256SUMS line %q", line)
		}
		vectors[name] = want
	}
	return vectors
}

func TestZstdVectors(t *testing.T) {
	vectors := zstdVectors(t)
	for name, want := range vectors {
		data, err := os.ReadFile(filepath.Join("testdata/zstd", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := zstdDecodeAll(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != want {
			t.Fatalf("%s: decoded sha256 %x, want %s", name, sum, want)
		}
	}
	if len(vectors) < 10 {
		t.Fatalf("only %d vectors", len(vectors))
	}
}

// zstdReference decodes in with the zstd binary, up to limit bytes; ok
// is whether it accepted what it decoded.
func zstdReference(t *testing.T, bin string, in []byte, limit int64) (out []byte, ok bool) {
	cmd := exec.Command(bin, "-d", "-c", "-q")
	cmd.Stdin = bytes.NewReader(in)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out, err = io.ReadAll(io.LimitReader(pipe, limit))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(out)) == limit {
		cmd.Process.Kill()
		cmd.Wait()
		return out, true // as far as we look
	}
	return out, cmd.Wait() == nil
}

// FuzzZstd decodes its input. Whole and small reads must agree; a
// vector of testdata/zstd must give its known content; and outside
// fuzzing (an exec per input would slow it a hundredfold) every corpus
// entry must decode as the zstd binary does: the same bytes, and accepted
// or refused alike.
func FuzzZstd(f *testing.F) {
	known := map[string]string{} // sha256 of a vector → sha256 of its content
	vectors := zstdVectors(f)
	for _, name := range slices.Sorted(maps.Keys(vectors)) {
		want := vectors[name]
		data, err := os.ReadFile(filepath.Join("testdata/zstd", name))
		if err != nil {
			f.Fatal(err)
		}
		sum := sha256.Sum256(data)
		known[hex.EncodeToString(sum[:])] = want
		f.Add(data)
	}
	f.Add(zstdFrame(0x20, []byte{5}, []byte("hello")))
	f.Add(zstdSkippable(0x50, []byte("skip")))
	reference := ""
	if fz := flag.Lookup("test.fuzz"); fz == nil || fz.Value.String() == "" {
		reference = needTool(f, "zstd")
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// Bound the output: a few bytes of RLE blocks can ask for a lot,
		// and coverage instrumentation makes every byte slow.
		const limit = 256 << 10
		var all, piecewise []byte
		r, err1 := newZstdReader(bytes.NewReader(in))
		if err1 == nil {
			all, err1 = io.ReadAll(io.LimitReader(r, limit))
		}
		// The same input a byte at a time, read out in small pieces.
		r, err2 := newZstdReader(iotest.OneByteReader(bytes.NewReader(in)))
		if err2 == nil {
			piecewise, err2 = io.ReadAll(io.LimitReader(iotest.HalfReader(r), limit))
		}
		if (err1 == nil) != (err2 == nil) || !bytes.Equal(all, piecewise) {
			t.Fatalf("whole reads: %d bytes, %v; small reads: %d bytes, %v", len(all), err1, len(piecewise), err2)
		}
		sum := sha256.Sum256(in)
		if want, ok := known[hex.EncodeToString(sum[:])]; ok && len(all) < limit {
			if got := sha256.Sum256(all); err1 != nil || hex.EncodeToString(got[:]) != want {
				t.Fatalf("a vector decoded to sha256 %x (%v), want %s", got, err1, want)
			}
		}
		if reference == "" {
			return
		}
		ref, ok := zstdReference(t, reference, in, limit)
		if ok != (err1 == nil) || ok && !bytes.Equal(ref, all) {
			t.Fatalf("zstd -d: %d bytes, accepted %v; ours: %d bytes, %v", len(ref), ok, len(all), err1)
		}
	})
}

// BenchmarkZstdDecode decodes mixed content compressed at level 19, or the
// file named by KARAPACE_ZSTD_BENCH_FILE (bench/zstd.sh sets it).
func BenchmarkZstdDecode(b *testing.B) {
	var comp []byte
	if p := os.Getenv("KARAPACE_ZSTD_BENCH_FILE"); p != "" {
		var err error
		if comp, err = os.ReadFile(p); err != nil {
			b.Fatal(err)
		}
	} else {
		comp = zstdCompress(b, zstdMixed(16<<20, 9), "-19")
	}
	n, err := io.Copy(io.Discard, zstdMust(b, comp))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(n)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := io.Copy(io.Discard, zstdMust(b, comp)); err != nil {
			b.Fatal(err)
		}
	}
}

func zstdMust(b *testing.B, comp []byte) io.Reader {
	r, err := newZstdReader(bytes.NewReader(comp))
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// TestZstdFileRoundTrip decodes a file compressed by the zstd binary from
// disk (the way .deb members arrive), through an *os.File.
func TestZstdFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	data := zstdMixed(1<<20, 10)
	src := filepath.Join(dir, "data.tar")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(needTool(t, "zstd"), "-q", "-19", src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zstd: %v\n%s", err, out)
	}
	f, err := os.Open(src + ".zst")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := newZstdReader(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file round trip: %v", err)
	}
}
