package main

// Streaming Zstandard decoder (RFC 8878), for the data.tar.zst members of
// Ubuntu's .deb packages. Frames are decoded one block at a time into a
// history buffer that holds the frame's window (at most zstdMaxWindow) plus
// some slack, so memory is bounded by the window size whatever the output
// size. Dictionaries are not supported: the archive formats we read never
// use them, and a frame that names one is refused.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
)

const (
	zstdMagic         = 0xfd2fb528
	zstdSkippableMask = 0xfffffff0
	zstdSkippableBase = 0x184d2a50
	zstdMaxWindow     = 128 << 20 // largest window accepted (the format allows up to 3.75 TiB)
	zstdBlockMax      = 128 << 10 // largest block, compressed or not
	zstdMaxSlide      = 32 << 20  // history is slid down after at most this much new output
	zstdCopySlack     = 32        // room past a block's end for copies that overshoot
)

type zstdReader struct {
	r     *bufio.Reader
	inOff int64 // input bytes consumed, for error messages
	err   error // sticky: io.EOF after the last frame, or the first error
	// frames counts the frames seen, so an empty input is told apart from
	// the end of a stream.
	frames int

	// Current frame.
	inFrame     bool
	window      int
	blockMax    int
	checksum    bool
	contentSize int64 // -1 when the header does not say
	frameOut    int64
	xxh         zstdXXH64

	// History and pending output: buf[:wpos] is decoded, buf[rpos:wpos]
	// not yet handed to the caller. bufTarget is the size buf may grow to.
	buf        []byte
	rpos, wpos int
	bufTarget  int

	// Entropy tables that later blocks of a frame may repeat, and the
	// repeat offsets.
	huf                 zstdHuffTable
	ll, of, ml          zstdSeqState
	llBuf, ofBuf, mlBuf zstdSeqTable
	rep                 [3]int

	lit  []byte // decoded literals of the current block
	in   []byte // the current compressed block
	seqs []zstdSeq
	// touched sums the match-source bytes read to warm the cache, so the
	// compiler keeps those reads.
	touched byte
	fse     [1 << zstdMaxLLLog]zstdFSEEntry
	norm    [zstdMaxMLCode + 1]int16
}

// newZstdReader returns a reader of the data compressed in r, which holds
// one or more Zstandard frames (skippable frames are passed over). It
// fails at once when r does not start with a frame.
func newZstdReader(r io.Reader) (io.Reader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 32<<10)
	}
	head, err := br.Peek(4)
	if err != nil {
		if err == io.EOF {
			if len(head) == 0 {
				return nil, errors.New("zstd: empty input, no frame")
			}
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("zstd: reading the first frame header: %w", err)
	}
	if m := binary.LittleEndian.Uint32(head); m != zstdMagic && m&zstdSkippableMask != zstdSkippableBase {
		return nil, fmt.Errorf("zstd: input is not Zstandard data (magic %#08x)", m)
	}
	zstdPredefined()
	return &zstdReader{r: br}, nil
}

func (z *zstdReader) Read(p []byte) (int, error) {
	for {
		if z.rpos < z.wpos {
			n := copy(p, z.buf[z.rpos:z.wpos])
			z.rpos += n
			return n, nil
		}
		if z.err != nil {
			return 0, z.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		z.err = z.step()
	}
}

// errorf builds a decoding error that names the input offset.
func (z *zstdReader) errorf(format string, a ...any) error {
	return fmt.Errorf("zstd: at input offset %d: "+format, append([]any{z.inOff}, a...)...)
}

// readFull fills dst from the input.
func (z *zstdReader) readFull(dst []byte, what string) error {
	n, err := io.ReadFull(z.r, dst)
	z.inOff += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return z.errorf("input ends inside %s (%w)", what, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return z.errorf("reading %s: %w", what, err)
	}
	return nil
}

// read returns the next n (at most a few dozen) input bytes, valid until
// the next read.
func (z *zstdReader) read(n int, what string) ([]byte, error) {
	b, err := z.r.Peek(n)
	if err != nil {
		if err == io.EOF {
			return nil, z.errorf("input ends inside %s (%w)", what, io.ErrUnexpectedEOF)
		}
		return nil, z.errorf("reading %s: %w", what, err)
	}
	z.r.Discard(n)
	z.inOff += int64(n)
	return b, nil
}

// step decodes the next frame header, block or frame end.
func (z *zstdReader) step() error {
	if !z.inFrame {
		return z.startFrame()
	}
	h, err := z.read(3, "a block header")
	if err != nil {
		return err
	}
	hdr := uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16
	last, typ, size := hdr&1 != 0, (hdr>>1)&3, int(hdr>>3)
	// A block decodes to at most 128 KiB, and never past the content size
	// the header declares.
	outMax := zstdBlockMax
	if z.contentSize >= 0 {
		outMax = int(min(int64(outMax), z.contentSize-z.frameOut))
	}
	if typ < 2 && size > min(z.blockMax, outMax) {
		return z.errorf("block of %d bytes exceeds the maximum block size %d or the declared content size", size, min(z.blockMax, outMax))
	}
	z.makeRoom(outMax)
	start := z.wpos
	switch typ {
	case 0: // raw
		if err := z.readFull(z.buf[z.wpos:z.wpos+size], "a raw block"); err != nil {
			return err
		}
		z.wpos += size
	case 1: // RLE
		b, err := z.read(1, "an RLE block")
		if err != nil {
			return err
		}
		zstdFill(z.buf[z.wpos:z.wpos+size], b[0])
		z.wpos += size
	case 2:
		if size > z.blockMax {
			return z.errorf("compressed block of %d bytes exceeds the maximum block size %d", size, z.blockMax)
		}
		// The slack lets literal copies read 16 bytes at a time.
		if cap(z.in) < size+zstdCopySlack {
			z.in = make([]byte, size, max(size+zstdCopySlack, 2*cap(z.in)))
		}
		z.in = z.in[:size]
		if err := z.readFull(z.in, "a compressed block"); err != nil {
			return err
		}
		if err := z.decodeBlock(z.in, outMax); err != nil {
			return z.errorf("compressed block ending here: %v", err)
		}
	default:
		return z.errorf("block type 3 is reserved")
	}
	out := z.buf[start:z.wpos]
	z.frameOut += int64(len(out))
	if z.checksum {
		z.xxh.write(out)
	}
	if last {
		return z.endFrame()
	}
	return nil
}

func (z *zstdReader) startFrame() error {
	m, err := z.r.Peek(4)
	if len(m) == 0 && err == io.EOF {
		if z.frames == 0 {
			return errors.New("zstd: empty input, no frame")
		}
		return io.EOF
	}
	b, err := z.read(4, "a frame magic number")
	if err != nil {
		return err
	}
	magic := binary.LittleEndian.Uint32(b)
	if magic&zstdSkippableMask == zstdSkippableBase {
		b, err := z.read(4, "a skippable frame size")
		if err != nil {
			return err
		}
		n := int64(binary.LittleEndian.Uint32(b))
		skipped, err := z.r.Discard(int(n))
		z.inOff += int64(skipped)
		if err != nil {
			return z.errorf("input ends inside a skippable frame of %d bytes (%w)", n, io.ErrUnexpectedEOF)
		}
		z.frames++
		return nil
	}
	if magic != zstdMagic {
		return z.errorf("not a Zstandard frame (magic %#08x)", magic)
	}
	b, err = z.read(1, "a frame header")
	if err != nil {
		return err
	}
	fhd := b[0]
	single := fhd&0x20 != 0
	if fhd&0x08 != 0 {
		return z.errorf("frame header reserved bit is set")
	}
	dictSize := [4]int{0, 1, 2, 4}[fhd&3]
	fcsSize := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcsSize == 0 && single {
		fcsSize = 1
	}
	n := dictSize + fcsSize
	if !single {
		n++
	}
	b, err = z.read(n, "a frame header")
	if err != nil {
		return err
	}
	window := uint64(0)
	if !single {
		exp, mant := uint64(b[0]>>3), uint64(b[0]&7)
		base := uint64(1) << (10 + exp)
		window = base + base/8*mant
		b = b[1:]
	}
	var dict uint32
	for i := dictSize - 1; i >= 0; i-- {
		dict = dict<<8 | uint32(b[i])
	}
	if dict != 0 {
		return z.errorf("frame needs dictionary %d; dictionaries are not supported", dict)
	}
	b = b[dictSize:]
	z.contentSize = -1
	if fcsSize > 0 {
		var fcs uint64
		for i := fcsSize - 1; i >= 0; i-- {
			fcs = fcs<<8 | uint64(b[i])
		}
		if fcsSize == 2 {
			fcs += 256
		}
		if fcs > 1<<62 {
			return z.errorf("frame content size %d is out of range", fcs)
		}
		z.contentSize = int64(fcs)
	}
	if single {
		window = uint64(z.contentSize)
	}
	if window > zstdMaxWindow {
		return z.errorf("frame needs a window of %d MiB, more than the %d MiB this decoder allows", window>>20, zstdMaxWindow>>20)
	}
	z.window = int(window)
	z.blockMax = min(z.window, zstdBlockMax)
	z.checksum = fhd&0x04 != 0
	z.xxh.reset()
	z.frameOut = 0
	z.inFrame = true
	z.frames++
	z.huf.maxBits = 0
	z.ll, z.of, z.ml = zstdSeqState{}, zstdSeqState{}, zstdSeqState{}
	z.rep = [3]int{1, 4, 8}

	// The history starts empty: a frame cannot refer to an earlier one.
	z.rpos, z.wpos = 0, 0
	// Sliding the window down copies it: the more slack, the rarer.
	slack := min(max(2*z.window, 1<<20), zstdMaxSlide)
	z.bufTarget = z.window + slack + zstdBlockMax + zstdCopySlack
	if z.contentSize >= 0 && z.contentSize < int64(z.window) {
		z.bufTarget = int(z.contentSize) + zstdCopySlack
	}
	return nil
}

func (z *zstdReader) endFrame() error {
	if z.contentSize >= 0 && z.frameOut != z.contentSize {
		return z.errorf("frame holds %d bytes, its header declares %d", z.frameOut, z.contentSize)
	}
	if z.checksum {
		b, err := z.read(4, "a frame checksum")
		if err != nil {
			return err
		}
		if got, want := uint32(z.xxh.sum()), binary.LittleEndian.Uint32(b); got != want {
			return z.errorf("content checksum mismatch: computed %08x, frame says %08x", got, want)
		}
	}
	z.inFrame = false
	return nil
}

// makeRoom ensures n bytes (and copy slack) fit after wpos, growing the
// buffer up to its target size, then sliding the window down. It is called
// only once every decoded byte has been read.
func (z *zstdReader) makeRoom(n int) {
	need := z.wpos + n + zstdCopySlack
	if need <= len(z.buf) {
		return
	}
	if len(z.buf) < z.bufTarget {
		size := min(max(4*len(z.buf), need, 4<<10), max(z.bufTarget, need))
		nb := make([]byte, size)
		copy(nb, z.buf[:z.wpos])
		z.buf = nb
		return
	}
	keep := min(z.wpos, z.window)
	copy(z.buf, z.buf[z.wpos-keep:z.wpos])
	z.wpos, z.rpos = keep, keep
}

// ---- backward bit stream ----

// zstdBits reads a bit stream backwards, from its last byte, whose highest
// set bit marks the start. value holds in[off-8:off] (bytes before in[0]
// read as zero); its top used bits are consumed.
type zstdBits struct {
	in    []byte
	off   int
	value uint64
	used  uint
}

func (b *zstdBits) init(in []byte) error {
	if len(in) == 0 {
		return errors.New("empty bit stream")
	}
	last := in[len(in)-1]
	if last == 0 {
		return errors.New("bit stream has no end marker")
	}
	b.in, b.off = in, len(in)
	if len(in) >= 8 {
		b.value = binary.LittleEndian.Uint64(in[len(in)-8:])
	} else {
		b.value = 0
		for i, c := range in {
			b.value |= uint64(c) << (8 * (8 - len(in) + i))
		}
	}
	b.used = uint(bits.LeadingZeros8(last)) + 1
	return nil
}

// fill reloads value so that fewer than 8 of its bits are consumed, while
// input remains: then at least 57 bits can be read.
func (b *zstdBits) fill() {
	n := int(b.used >> 3)
	if b.off-n >= 8 {
		b.off -= n
		b.used &= 7
		b.value = binary.LittleEndian.Uint64(b.in[b.off-8:])
		return
	}
	b.fillSlow()
}

func (b *zstdBits) fillSlow() {
	if b.off <= 8 {
		return // value already reaches in[0]; what follows reads as zeros
	}
	n := b.off - 8
	b.used -= uint(8 * n)
	b.off = 8
	b.value = binary.LittleEndian.Uint64(b.in)
}

// get reads n bits (n <= 57 after a fill). Shift counts are masked so the
// compiler emits plain shifts; once a stream is overrun (used >= 64) the
// bits read are garbage, and left() reports the overrun.
func (b *zstdBits) get(n uint8) uint32 {
	v := b.value << (b.used & 63) >> 1 >> ((63 - n) & 63)
	b.used += uint(n)
	return uint32(v)
}

// left is the number of bits not yet read; negative once reading went past
// the start of the stream.
func (b *zstdBits) left() int { return 8*b.off - int(b.used) }

// ---- FSE ----

const (
	zstdMaxLLCode = 35
	zstdMaxMLCode = 52
	zstdMaxOFCode = 31
	zstdMaxLLLog  = 9
	zstdMaxMLLog  = 9
	zstdMaxOFLog  = 8
)

type zstdFSEEntry struct {
	sym    uint8
	nbBits uint8
	base   uint16
}

// zstdReadNCount reads an FSE table description (normalized counts) from
// the start of in, for symbols 0..maxSym and an accuracy log up to maxLog.
// It returns the accuracy log, the counts and the bytes used.
func zstdReadNCount(in []byte, norm []int16, maxSym int, maxLog uint) (uint, []int16, int, error) {
	pos := uint(0) // bit position
	peek := func(n uint) uint32 {
		i := int(pos >> 3)
		var v uint64
		if i+8 <= len(in) {
			v = binary.LittleEndian.Uint64(in[i:])
		} else {
			for j := len(in) - 1; j >= i; j-- {
				v = v<<8 | uint64(in[j])
			}
		}
		return uint32(v>>(pos&7)) & (1<<n - 1)
	}
	if len(in) < 1 {
		return 0, nil, 0, errors.New("empty FSE table description")
	}
	log := uint(peek(4)) + 5
	pos = 4
	if log > maxLog {
		return 0, nil, 0, fmt.Errorf("FSE accuracy log %d exceeds %d", log, maxLog)
	}
	remaining := int32(1)<<log + 1
	threshold := int32(1) << log
	nbBits := log + 1
	sym := 0
	norm = norm[:0]
	for remaining > 1 {
		if sym > maxSym {
			return 0, nil, 0, fmt.Errorf("FSE table description has symbols beyond %d", maxSym)
		}
		mx := 2*threshold - 1 - remaining
		v := int32(peek(nbBits))
		var count int32
		if v&(threshold-1) < mx {
			count = v & (threshold - 1)
			pos += nbBits - 1
		} else {
			count = v & (2*threshold - 1)
			if count >= threshold {
				count -= mx
			}
			pos += nbBits
		}
		prob := int16(count - 1)
		if prob < 0 {
			remaining--
		} else {
			remaining -= int32(prob)
		}
		norm = append(norm, prob)
		sym++
		if prob == 0 {
			// Zero-probability symbols are followed by 2-bit repeat counts
			// of further zeros; a count of 3 means another count follows.
			for {
				r := peek(2)
				pos += 2
				for i := uint32(0); i < r; i++ {
					norm = append(norm, 0)
				}
				sym += int(r)
				if sym > maxSym+1 || int(pos>>3) > len(in) {
					return 0, nil, 0, errors.New("corrupt FSE table description (zero run)")
				}
				if r != 3 {
					break
				}
			}
		}
		if remaining < 1 {
			break
		}
		for remaining < threshold {
			nbBits--
			threshold >>= 1
		}
		if int(pos>>3) > len(in) {
			return 0, nil, 0, errors.New("truncated FSE table description")
		}
	}
	if remaining != 1 || sym > maxSym+1 || int((pos+7)>>3) > len(in) {
		return 0, nil, 0, errors.New("corrupt FSE table description")
	}
	return log, norm, int((pos + 7) >> 3), nil
}

// zstdBuildFSE spreads the symbols of a normalized distribution over the
// 1<<log states and computes each state's successor base and bit count.
func zstdBuildFSE(norm []int16, log uint, t []zstdFSEEntry) error {
	size := 1 << log
	high := size - 1
	var next [256]uint16
	total := 0
	for s, c := range norm {
		if c == -1 {
			t[high].sym = uint8(s)
			high--
			next[s] = 1
			total++
		} else {
			next[s] = uint16(c)
			total += int(c)
		}
	}
	if total != size {
		return errors.New("FSE distribution does not add up")
	}
	step := size>>1 + size>>3 + 3
	mask := size - 1
	pos := 0
	for s, c := range norm {
		for i := 0; i < int(c); i++ {
			t[pos].sym = uint8(s)
			pos = (pos + step) & mask
			for pos > high {
				pos = (pos + step) & mask
			}
		}
	}
	if pos != 0 {
		return errors.New("FSE distribution cannot be spread")
	}
	for u := 0; u < size; u++ {
		s := t[u].sym
		ns := next[s]
		next[s]++
		nb := log - uint(bits.Len16(ns)-1)
		t[u].nbBits = uint8(nb)
		t[u].base = uint16(int(ns)<<nb - size)
	}
	return nil
}

// ---- Huffman-coded literals ----

const zstdHufMaxBits = 12 // RFC 8878 says 11; the reference decoder accepts 12

type zstdHuffTable struct {
	maxBits uint8 // 0 until a tree was read in this frame
	// dt maps the next maxBits bits of a stream to symbol | code length<<8.
	dt [1 << zstdHufMaxBits]uint16
}

// read parses a Huffman tree description at the start of in and builds
// the decoding table; it returns the bytes used.
func (h *zstdHuffTable) read(in []byte) (int, error) {
	if len(in) < 1 {
		return 0, errors.New("missing Huffman tree description")
	}
	var w [256]uint8
	nw, used := 0, 0
	if hb := int(in[0]); hb < 128 {
		if 1+hb > len(in) {
			return 0, errors.New("truncated Huffman tree description")
		}
		var err error
		if nw, err = zstdHuffWeightsFSE(in[1:1+hb], &w); err != nil {
			return 0, fmt.Errorf("Huffman weights: %w", err)
		}
		used = 1 + hb
	} else {
		nw = hb - 127
		used = 1 + (nw+1)/2
		if used > len(in) {
			return 0, errors.New("truncated Huffman weights")
		}
		for i := 0; i < nw; i++ {
			b := in[1+i/2]
			if i%2 == 0 {
				w[i] = b >> 4
			} else {
				w[i] = b & 15
			}
		}
	}
	// The weight of the last symbol is implied: it completes the sum of
	// 2^(weight-1) to a power of two.
	var rank [zstdHufMaxBits + 2]int
	sum := 0
	for i := 0; i < nw; i++ {
		if w[i] > zstdHufMaxBits {
			return 0, fmt.Errorf("Huffman weight %d too large", w[i])
		}
		rank[w[i]]++
		if w[i] > 0 {
			sum += 1 << (w[i] - 1)
		}
	}
	if sum == 0 || nw > 255 {
		return 0, errors.New("corrupt Huffman weights")
	}
	maxBits := bits.Len(uint(sum))
	if maxBits > zstdHufMaxBits {
		return 0, fmt.Errorf("Huffman codes longer than %d bits", zstdHufMaxBits)
	}
	rest := 1<<maxBits - sum
	if rest&(rest-1) != 0 {
		return 0, errors.New("Huffman weights do not complete a tree")
	}
	w[nw] = uint8(bits.Len(uint(rest)))
	rank[w[nw]]++
	nw++
	var start [zstdHufMaxBits + 2]int
	pos := 0
	for wt := 1; wt <= maxBits; wt++ {
		start[wt] = pos
		pos += rank[wt] << (wt - 1)
	}
	for s := 0; s < nw; s++ {
		wt := w[s]
		if wt == 0 {
			continue
		}
		e := uint16(s) | uint16(maxBits+1-int(wt))<<8
		n := 1 << (wt - 1)
		fill := h.dt[start[wt] : start[wt]+n]
		for i := range fill {
			fill[i] = e
		}
		start[wt] += n
	}
	h.maxBits = uint8(maxBits)
	return used, nil
}

// zstdHuffWeightsFSE decodes FSE-compressed Huffman weights: two states
// share one table and take turns until the stream runs out.
func zstdHuffWeightsFSE(in []byte, w *[256]uint8) (int, error) {
	var normBuf [256]int16
	log, norm, n, err := zstdReadNCount(in, normBuf[:], 255, 6)
	if err != nil {
		return 0, err
	}
	var t [64]zstdFSEEntry
	if err := zstdBuildFSE(norm, log, t[:]); err != nil {
		return 0, err
	}
	var br zstdBits
	if err := br.init(in[n:]); err != nil {
		return 0, err
	}
	l := uint8(log)
	s1, s2 := br.get(l), br.get(l)
	nw := 0
	for {
		if nw > 253 {
			return 0, errors.New("more than 255 Huffman weights")
		}
		e := t[s1&63]
		w[nw] = e.sym
		nw++
		br.fill()
		s1 = uint32(e.base) + br.get(e.nbBits)
		if br.left() < 0 {
			w[nw] = t[s2&63].sym
			return nw + 1, nil
		}
		e = t[s2&63]
		w[nw] = e.sym
		nw++
		br.fill()
		s2 = uint32(e.base) + br.get(e.nbBits)
		if br.left() < 0 {
			w[nw] = t[s1&63].sym
			return nw + 1, nil
		}
	}
}

// decodeLiterals decodes the literals section at the start of a block and
// returns the literals and the bytes used.
func (z *zstdReader) decodeLiterals(in []byte, outMax int) ([]byte, int, error) {
	if len(in) < 1 {
		return nil, 0, errors.New("empty block")
	}
	b0 := in[0]
	typ, sf := b0&3, (b0>>2)&3
	if typ < 2 { // raw or RLE
		var size, hl int
		switch sf {
		case 0, 2:
			size, hl = int(b0>>3), 1
		case 1:
			if len(in) < 2 {
				return nil, 0, errors.New("truncated literals header")
			}
			size, hl = int(b0>>4)|int(in[1])<<4, 2
		case 3:
			if len(in) < 3 {
				return nil, 0, errors.New("truncated literals header")
			}
			size, hl = int(b0>>4)|int(in[1])<<4|int(in[2])<<12, 3
		}
		if size > outMax {
			return nil, 0, fmt.Errorf("%d literals exceed the block size", size)
		}
		if typ == 0 {
			if hl+size > len(in) {
				return nil, 0, errors.New("truncated raw literals")
			}
			return in[hl : hl+size], hl + size, nil
		}
		if hl+1 > len(in) {
			return nil, 0, errors.New("truncated RLE literals")
		}
		lit := z.litBuf(size)
		zstdFill(lit, in[hl])
		return lit, hl + 1, nil
	}
	var regen, comp, hl int
	streams := 4
	switch sf {
	case 0, 1:
		if len(in) < 3 {
			return nil, 0, errors.New("truncated literals header")
		}
		h := uint32(in[0]) | uint32(in[1])<<8 | uint32(in[2])<<16
		regen, comp, hl = int(h>>4&0x3ff), int(h>>14&0x3ff), 3
		if sf == 0 {
			streams = 1
		}
	case 2:
		if len(in) < 4 {
			return nil, 0, errors.New("truncated literals header")
		}
		h := binary.LittleEndian.Uint32(in)
		regen, comp, hl = int(h>>4&0x3fff), int(h>>18&0x3fff), 4
	case 3:
		if len(in) < 5 {
			return nil, 0, errors.New("truncated literals header")
		}
		h := uint64(binary.LittleEndian.Uint32(in)) | uint64(in[4])<<32
		regen, comp, hl = int(h>>4&0x3ffff), int(h>>22&0x3ffff), 5
	}
	if regen > outMax {
		return nil, 0, fmt.Errorf("%d literals exceed the block size", regen)
	}
	if hl+comp > len(in) {
		return nil, 0, errors.New("truncated compressed literals")
	}
	data := in[hl : hl+comp]
	if typ == 2 {
		n, err := z.huf.read(data)
		if err != nil {
			return nil, 0, err
		}
		data = data[n:]
	} else if z.huf.maxBits == 0 {
		return nil, 0, errors.New("treeless literals with no earlier Huffman tree in the frame")
	}
	lit := z.litBuf(regen)
	if streams == 1 {
		return lit, hl + comp, zstdHuffStream(lit, data, &z.huf)
	}
	if len(data) < 6 {
		return nil, 0, errors.New("truncated literals jump table")
	}
	s1 := int(binary.LittleEndian.Uint16(data))
	s2 := int(binary.LittleEndian.Uint16(data[2:]))
	s3 := int(binary.LittleEndian.Uint16(data[4:]))
	data = data[6:]
	seg := (regen + 3) / 4
	if s1+s2+s3 > len(data) || 3*seg > regen {
		return nil, 0, errors.New("corrupt literals jump table")
	}
	if err := zstdHuffStreams(lit, [4][]byte{data[:s1], data[s1 : s1+s2], data[s1+s2 : s1+s2+s3], data[s1+s2+s3:]}, &z.huf); err != nil {
		return nil, 0, err
	}
	return lit, hl + comp, nil
}

// litBuf returns the literals buffer, n bytes long.
func (z *zstdReader) litBuf(n int) []byte {
	if cap(z.lit) < n+zstdCopySlack {
		z.lit = make([]byte, n, max(n+zstdCopySlack, 2*cap(z.lit)))
	}
	return z.lit[:n]
}

// zstdHuffStream decodes one Huffman-coded stream that must fill dst
// exactly.
func zstdHuffStream(dst, src []byte, h *zstdHuffTable) error {
	var br zstdBits
	if err := br.init(src); err != nil {
		return err
	}
	shift := (64 - uint(h.maxBits)) & 63
	i := 0
	for ; i+4 <= len(dst); i += 4 {
		br.fill()
		br.huff4(dst[i:i+4], &h.dt, shift)
	}
	return br.huffTail(dst[i:], &h.dt, shift)
}

// zstdHuffStreams decodes four streams into the four quarters of dst,
// taking turns so that the CPU works on the four at once.
func zstdHuffStreams(dst []byte, src [4][]byte, h *zstdHuffTable) error {
	var br [4]zstdBits
	for i := range br {
		if err := br[i].init(src[i]); err != nil {
			return fmt.Errorf("literals stream %d: %w", i+1, err)
		}
	}
	seg := (len(dst) + 3) / 4
	d := [4][]byte{dst[:seg], dst[seg : 2*seg], dst[2*seg : 3*seg], dst[3*seg:]}
	shift := (64 - uint(h.maxBits)) & 63
	i := 0
	for ; i+4 <= len(d[3]); i += 4 { // the last stream is the shortest
		for s := range br {
			br[s].fill()
			br[s].huff4(d[s][i:i+4], &h.dt, shift)
		}
	}
	for s := range br {
		if err := br[s].huffTail(d[s][i:], &h.dt, shift); err != nil {
			return fmt.Errorf("literals stream %d: %w", s+1, err)
		}
	}
	return nil
}

// huff4 decodes 4 symbols; after a fill there are bits enough for them.
func (b *zstdBits) huff4(dst []byte, dt *[1 << zstdHufMaxBits]uint16, shift uint) {
	v, u := b.value, b.used
	e := dt[v<<(u&63)>>shift&(1<<zstdHufMaxBits-1)]
	u += uint(e >> 8)
	e1 := dt[v<<(u&63)>>shift&(1<<zstdHufMaxBits-1)]
	u += uint(e1 >> 8)
	e2 := dt[v<<(u&63)>>shift&(1<<zstdHufMaxBits-1)]
	u += uint(e2 >> 8)
	e3 := dt[v<<(u&63)>>shift&(1<<zstdHufMaxBits-1)]
	b.used = u + uint(e3>>8)
	_ = dst[3]
	dst[0], dst[1], dst[2], dst[3] = uint8(e), uint8(e1), uint8(e2), uint8(e3)
}

// huffTail decodes the last symbols of a stream one at a time and checks
// that the stream ends exactly there.
func (b *zstdBits) huffTail(dst []byte, dt *[1 << zstdHufMaxBits]uint16, shift uint) error {
	for i := range dst {
		b.fill()
		e := dt[b.value<<(b.used&63)>>shift&(1<<zstdHufMaxBits-1)]
		dst[i] = uint8(e)
		b.used += uint(e >> 8)
	}
	if b.left() != 0 {
		return errors.New("Huffman stream size does not match its content")
	}
	return nil
}

// ---- sequences ----

// zstdSeqEntry is one state of a sequence decoding table: the value it
// codes (base plus extra bits) and how to reach the next state.
type zstdSeqEntry struct {
	base   uint32
	state  uint16
	nbBits uint8
	extra  uint8
}

type zstdSeqTable = [1 << zstdMaxLLLog]zstdSeqEntry

type zstdSeqKind struct {
	name       string
	maxSym     int
	maxLog     uint
	base       []uint32
	extra      []uint8
	predefined *zstdSeqTable
	predefLog  uint
}

var (
	zstdLLBase = []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
		16, 18, 20, 22, 24, 28, 32, 40, 48, 64, 128, 256, 512, 1024, 2048, 4096,
		8192, 16384, 32768, 65536}
	zstdLLExtra = []uint8{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	zstdMLBase = []uint32{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
		19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
		35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027, 2051,
		4099, 8195, 16387, 32771, 65539}
	zstdMLExtra = []uint8{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11,
		12, 13, 14, 15, 16}
	zstdOFBase, zstdOFExtra = func() ([]uint32, []uint8) {
		b, e := make([]uint32, zstdMaxOFCode+1), make([]uint8, zstdMaxOFCode+1)
		for i := range b {
			b[i], e[i] = 1<<i, uint8(i)
		}
		return b, e
	}()

	// The predefined distributions of RFC 8878 §3.1.1.3.2.2.
	zstdLLDefault = []int16{4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1,
		2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1}
	zstdMLDefault = []int16{1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1}
	zstdOFDefault = []int16{1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1}

	zstdLL = &zstdSeqKind{name: "literal length", maxSym: zstdMaxLLCode, maxLog: zstdMaxLLLog, base: zstdLLBase, extra: zstdLLExtra, predefLog: 6}
	zstdML = &zstdSeqKind{name: "match length", maxSym: zstdMaxMLCode, maxLog: zstdMaxMLLog, base: zstdMLBase, extra: zstdMLExtra, predefLog: 6}
	zstdOF = &zstdSeqKind{name: "offset", maxSym: zstdMaxOFCode, maxLog: zstdMaxOFLog, base: zstdOFBase, extra: zstdOFExtra, predefLog: 5}
)

// zstdPredefined builds the predefined tables, on first use rather than
// in every start of the binary.
var zstdPredefined = sync.OnceFunc(func() {
	var fse [1 << zstdMaxLLLog]zstdFSEEntry
	for _, k := range []struct {
		kind *zstdSeqKind
		norm []int16
	}{{zstdLL, zstdLLDefault}, {zstdML, zstdMLDefault}, {zstdOF, zstdOFDefault}} {
		k.kind.predefined = new(zstdSeqTable)
		// The predefined distributions are valid: building them cannot fail.
		zstdBuildFSE(k.norm, k.kind.predefLog, fse[:])
		k.kind.fill(k.kind.predefined, fse[:1<<k.kind.predefLog])
	}
})

// fill turns an FSE table over codes into a sequence table over values.
func (k *zstdSeqKind) fill(t *zstdSeqTable, fse []zstdFSEEntry) {
	for u, e := range fse {
		t[u] = zstdSeqEntry{base: k.base[e.sym], extra: k.extra[e.sym], state: e.base, nbBits: e.nbBits}
	}
}

// zstdSeqState is a table in use and its accuracy log.
type zstdSeqState struct {
	t   *zstdSeqTable
	log uint8
}

// table reads the table of one kind for a block, by its compression mode,
// from in; it returns the table and the bytes used.
func (z *zstdReader) table(k *zstdSeqKind, mode byte, in []byte, prev zstdSeqState, buf *zstdSeqTable) (zstdSeqState, int, error) {
	switch mode {
	case 0:
		return zstdSeqState{k.predefined, uint8(k.predefLog)}, 0, nil
	case 1:
		if len(in) < 1 {
			return zstdSeqState{}, 0, fmt.Errorf("missing %s RLE symbol", k.name)
		}
		if int(in[0]) > k.maxSym {
			return zstdSeqState{}, 0, fmt.Errorf("%s code %d out of range", k.name, in[0])
		}
		buf[0] = zstdSeqEntry{base: k.base[in[0]], extra: k.extra[in[0]]}
		return zstdSeqState{buf, 0}, 1, nil
	case 2:
		log, norm, n, err := zstdReadNCount(in, z.norm[:], k.maxSym, k.maxLog)
		if err != nil {
			return zstdSeqState{}, 0, fmt.Errorf("%s table: %w", k.name, err)
		}
		fse := z.fse[:1<<log]
		if err := zstdBuildFSE(norm, log, fse); err != nil {
			return zstdSeqState{}, 0, fmt.Errorf("%s table: %w", k.name, err)
		}
		k.fill(buf, fse)
		return zstdSeqState{buf, uint8(log)}, n, nil
	}
	if prev.t == nil {
		return zstdSeqState{}, 0, fmt.Errorf("%s table repeated, but no earlier block of the frame had one", k.name)
	}
	return prev, 0, nil
}

// decodeBlock decodes a compressed block into buf at wpos.
func (z *zstdReader) decodeBlock(in []byte, outMax int) error {
	lits, n, err := z.decodeLiterals(in, outMax)
	if err != nil {
		return err
	}
	in = in[n:]
	if len(in) < 1 {
		return errors.New("missing sequences section")
	}
	nSeq := int(in[0])
	switch {
	case nSeq == 0:
		if len(in) != 1 {
			return errors.New("data after an empty sequences section")
		}
		z.wpos += copy(z.buf[z.wpos:], lits)
		return nil
	case nSeq < 128:
		in = in[1:]
	case nSeq < 255:
		if len(in) < 2 {
			return errors.New("truncated sequences header")
		}
		nSeq = (nSeq-128)<<8 + int(in[1])
		in = in[2:]
	default:
		if len(in) < 3 {
			return errors.New("truncated sequences header")
		}
		nSeq = int(in[1]) + int(in[2])<<8 + 0x7f00
		in = in[3:]
	}
	if len(in) < 1 {
		return errors.New("truncated sequences header")
	}
	modes := in[0]
	if modes&3 != 0 {
		return errors.New("sequences header reserved bits are set")
	}
	in = in[1:]
	var ll, of, ml zstdSeqState
	ll, n, err = z.table(zstdLL, modes>>6, in, z.ll, &z.llBuf)
	if err != nil {
		return err
	}
	in = in[n:]
	of, n, err = z.table(zstdOF, modes>>4&3, in, z.of, &z.ofBuf)
	if err != nil {
		return err
	}
	in = in[n:]
	ml, n, err = z.table(zstdML, modes>>2&3, in, z.ml, &z.mlBuf)
	if err != nil {
		return err
	}
	in = in[n:]
	z.ll, z.of, z.ml = ll, of, ml
	return z.execSequences(in, nSeq, lits, outMax)
}

// zstdSeq is one decoded sequence: ll literals, then ml bytes copied from
// buf[src:], src being an absolute position in the history buffer.
type zstdSeq struct {
	ll, ml, src uint32
}

// execSequences decodes the sequences bit stream, then executes the
// sequences: copy literals, then copy a match from history. Decoding them
// all first lets the sources of far matches be brought into the cache
// together rather than one miss at a time.
func (z *zstdReader) execSequences(in []byte, nSeq int, lits []byte, outMax int) error {
	var br zstdBits
	if err := br.init(in); err != nil {
		return fmt.Errorf("sequences: %w", err)
	}
	llT, ofT, mlT := z.ll.t, z.of.t, z.ml.t
	br.fill()
	llS := br.get(z.ll.log)
	ofS := br.get(z.of.log)
	mlS := br.get(z.ml.log)
	start := z.wpos
	end := start + outMax // makeRoom made room for this much
	if end > len(z.buf)-zstdCopySlack {
		return errors.New("internal error: no room for the block")
	}
	rep0, rep1, rep2 := z.rep[0], z.rep[1], z.rep[2]
	window := z.window
	pos, litLeft := start, len(lits)
	seqs := z.seqs[:0]
	for i := nSeq; i > 0; i-- {
		llE, ofE, mlE := llT[llS&(1<<zstdMaxLLLog-1)], ofT[ofS&(1<<zstdMaxLLLog-1)], mlT[mlS&(1<<zstdMaxLLLog-1)]
		// A fill leaves at least 57 bits: enough for the extra bits and
		// the state updates (at most 26 bits) unless the extra bits are
		// unusually many.
		br.fill()
		ofv := int(ofE.base) + int(br.get(ofE.extra))
		ml := int(mlE.base) + int(br.get(mlE.extra))
		if ofE.extra+mlE.extra+llE.extra > 31 {
			br.fill()
		}
		ll := int(llE.base) + int(br.get(llE.extra))
		if i > 1 { // no state update after the last sequence
			llS = uint32(llE.state) + br.get(llE.nbBits)
			mlS = uint32(mlE.state) + br.get(mlE.nbBits)
			ofS = uint32(ofE.state) + br.get(ofE.nbBits)
		}

		// Offset values 1-3 pick a recent offset (shifted by one when
		// there are no literals); larger values are new offsets.
		var off int
		if ofv > 3 {
			off = ofv - 3
			rep0, rep1, rep2 = off, rep0, rep1
		} else {
			if ll == 0 {
				ofv++
			}
			switch ofv {
			case 1:
				off = rep0
			case 2:
				off = rep1
				rep0, rep1 = off, rep0
			case 3:
				off = rep2
				rep0, rep1, rep2 = off, rep0, rep1
			default:
				off = rep0 - 1
				rep0, rep1, rep2 = off, rep0, rep1
			}
		}
		if ll > litLeft {
			return fmt.Errorf("sequence needs %d literals, %d are left", ll, litLeft)
		}
		litLeft -= ll
		if ll+ml > end-pos {
			return errors.New("block output exceeds 128 KiB or the declared content size")
		}
		pos += ll
		if off > pos || off > window || off <= 0 {
			return fmt.Errorf("match offset %d reaches before the start of the frame or its window", off)
		}
		seqs = append(seqs, zstdSeq{uint32(ll), uint32(ml), uint32(pos - off)})
		pos += ml
	}
	if br.left() != 0 {
		return errors.New("sequences bit stream size does not match its content")
	}
	if litLeft > end-pos {
		return errors.New("block output exceeds 128 KiB or the declared content size")
	}
	z.seqs = seqs
	z.rep = [3]int{rep0, rep1, rep2}

	buf := z.buf[:end+zstdCopySlack]
	litsAll := lits[:cap(lits)] // readable past the end, for overshooting copies
	// Read the first byte of every match source: a loop this small keeps
	// many cache misses in flight, and the copies below then hit the cache.
	var touched byte
	for _, sq := range seqs {
		touched += buf[sq.src]
	}
	z.touched = touched
	wpos, litPos := start, 0
	for _, sq := range seqs {
		ll, ml, src := int(sq.ll), int(sq.ml), int(sq.src)
		// Short copies move 16 bytes at a time and may overshoot: the
		// literals and buf have slack past their ends for that.
		if ll <= 16 && litPos+16 <= len(litsAll) {
			zstdCopy16(buf[wpos:], litsAll[litPos:])
		} else {
			copy(buf[wpos:wpos+ll], litsAll[litPos:litPos+ll])
		}
		wpos += ll
		litPos += ll
		off := wpos - src
		switch {
		case ml <= 32 && off >= 16:
			zstdCopy16(buf[wpos:], buf[src:])
			zstdCopy16(buf[wpos+16:], buf[src+16:])
		case ml <= 32 && off >= 8:
			for n := 0; n < ml; n += 8 {
				binary.LittleEndian.PutUint64(buf[wpos+n:], binary.LittleEndian.Uint64(buf[src+n:]))
			}
		case off >= ml:
			copy(buf[wpos:wpos+ml], buf[src:src+ml])
		default:
			// The pattern repeats every off bytes; each copy doubles the
			// length available as a source.
			for n := 0; n < ml; {
				n += copy(buf[wpos+n:wpos+ml], buf[src:wpos+n])
			}
		}
		wpos += ml
	}
	z.wpos = wpos + copy(buf[wpos:], lits[litPos:])
	return nil
}

// zstdFill sets every byte of b to c, doubling the filled part each copy.
func zstdFill(b []byte, c byte) {
	if len(b) == 0 {
		return
	}
	b[0] = c
	for n := 1; n < len(b); n *= 2 {
		copy(b[n:], b[:n])
	}
}

func zstdCopy16(dst, src []byte) {
	d, s := dst[:16], src[:16]
	a, b := binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])
	binary.LittleEndian.PutUint64(d, a)
	binary.LittleEndian.PutUint64(d[8:], b)
}

// ---- XXH64, the content checksum ----

const (
	zstdP1 uint64 = 0x9e3779b185ebca87
	zstdP2 uint64 = 0xc2b2ae3d27d4eb4f
	zstdP3 uint64 = 0x165667b19e3779f9
	zstdP4 uint64 = 0x85ebca77c2b2ae63
	zstdP5 uint64 = 0x27d4eb2f165667c5
)

// zstdXXH64 is a streaming XXH64 with seed 0.
type zstdXXH64 struct {
	v     [4]uint64
	mem   [32]byte
	n     int
	total uint64
}

func (x *zstdXXH64) reset() {
	*x = zstdXXH64{}
	x.v[0] = zstdP1
	x.v[0] += zstdP2
	x.v[1] = zstdP2
	x.v[3] -= zstdP1
}

func zstdRound(acc, in uint64) uint64 {
	return bits.RotateLeft64(acc+in*zstdP2, 31) * zstdP1
}

func (x *zstdXXH64) write(p []byte) {
	x.total += uint64(len(p))
	if x.n > 0 {
		c := copy(x.mem[x.n:], p)
		x.n += c
		p = p[c:]
		if x.n < 32 {
			return
		}
		x.stripes(x.mem[:])
		x.n = 0
	}
	if len(p) >= 32 {
		n := len(p) &^ 31
		x.stripes(p[:n])
		p = p[n:]
	}
	x.n = copy(x.mem[:], p)
}

// stripes hashes whole 32-byte stripes.
func (x *zstdXXH64) stripes(p []byte) {
	v1, v2, v3, v4 := x.v[0], x.v[1], x.v[2], x.v[3]
	for ; len(p) >= 32; p = p[32:] {
		v1 = zstdRound(v1, binary.LittleEndian.Uint64(p))
		v2 = zstdRound(v2, binary.LittleEndian.Uint64(p[8:]))
		v3 = zstdRound(v3, binary.LittleEndian.Uint64(p[16:]))
		v4 = zstdRound(v4, binary.LittleEndian.Uint64(p[24:]))
	}
	x.v = [4]uint64{v1, v2, v3, v4}
}

func (x *zstdXXH64) sum() uint64 {
	var h uint64
	if x.total >= 32 {
		v := x.v
		h = bits.RotateLeft64(v[0], 1) + bits.RotateLeft64(v[1], 7) + bits.RotateLeft64(v[2], 12) + bits.RotateLeft64(v[3], 18)
		for _, vi := range v {
			h ^= zstdRound(0, vi)
			h = h*zstdP1 + zstdP4
		}
	} else {
		h = zstdP5
	}
	h += x.total
	p := x.mem[:x.n]
	for ; len(p) >= 8; p = p[8:] {
		h ^= zstdRound(0, binary.LittleEndian.Uint64(p))
		h = bits.RotateLeft64(h, 27)*zstdP1 + zstdP4
	}
	if len(p) >= 4 {
		h ^= uint64(binary.LittleEndian.Uint32(p)) * zstdP1
		h = bits.RotateLeft64(h, 23)*zstdP2 + zstdP3
		p = p[4:]
	}
	for _, c := range p {
		h ^= uint64(c) * zstdP5
		h = bits.RotateLeft64(h, 11) * zstdP1
	}
	h ^= h >> 33
	h *= zstdP2
	h ^= h >> 29
	h *= zstdP3
	h ^= h >> 32
	return h
}
