package main

// A streaming decoder for the .xz format (file format 1.x) with the LZMA2,
// delta and x86 BCJ filters, written from the format descriptions: base
// images and Debian indexes are xz-compressed and the standard library has
// no decoder.
//
// Speed comes from three choices: an LZMA2 chunk's compressed bytes (at
// most 64 KiB) are read into a fixed array indexed with a mask, so the range
// decoder needs no bounds checks or I/O calls; the range decoder state is a
// small struct passed by value through inlined functions, so it lives in
// registers; and bits are decoded without branches, which the processor
// could not predict anyway.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"slices"
	"sync"
)

// xzMaxDict bounds the dictionary a block may ask for (xz -9 uses 64 MiB).
// The window grows with the output up to this size, so a small file with a
// large declared dictionary costs little.
const xzMaxDict = 256 << 20

const (
	xzMaxChunk = 1 << 21 // largest uncompressed LZMA2 chunk
	xzInSize   = 1 << 16 // largest compressed LZMA2 chunk
	xzInMask   = xzInSize - 1
)

var (
	xzMagic       = []byte{0xFD, '7', 'z', 'X', 'Z', 0}
	xzFooterMagic = []byte{'Y', 'Z'}
	// Made on first use: every start of the binary, an environment's
	// init among them, would pay for it otherwise.
	xzCRC64Table = sync.OnceValue(func() *crc64.Table { return crc64.MakeTable(crc64.ECMA) })
)

func xzErrorf(off int64, format string, a ...any) error {
	return fmt.Errorf("xz: %s at compressed offset %d", fmt.Sprintf(format, a...), off)
}

// xzInput is the compressed input; off counts the bytes consumed so errors
// can name where they happened.
type xzInput struct {
	br  *bufio.Reader
	off int64
}

func (in *xzInput) full(p []byte, what string) error {
	n, err := io.ReadFull(in.br, p)
	in.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return xzErrorf(in.off, "input truncated in %s", what)
	}
	if err != nil {
		return fmt.Errorf("xz: reading %s at compressed offset %d: %w", what, in.off, err)
	}
	return nil
}

func (in *xzInput) byte(what string) (byte, error) {
	var b [1]byte
	err := in.full(b[:], what)
	return b[0], err
}

// xzReader decodes one or more concatenated .xz streams.
type xzReader struct {
	in    xzInput
	flags byte      // check type and reserved bits of the current stream
	check hash.Hash // nil for check type None

	// Current block; out is nil between blocks.
	out        io.Reader
	lz         *xzLZMA2
	hdrSize    int64
	dataStart  int64
	compSize   int64 // declared, -1 if absent
	uncompSize int64 // declared, -1 if absent
	produced   int64

	// Blocks seen in this stream, compared with its index at the end.
	nblocks uint64
	records hash.Hash
	err     error
}

// newXZReader reads the first stream header of r and returns a reader of the
// decompressed bytes of all streams in r. Checks, block sizes, the index
// and the footer are verified; errors name the compressed offset.
func newXZReader(r io.Reader) (*xzReader, error) {
	x := &xzReader{in: xzInput{br: bufio.NewReaderSize(r, 16<<10)}, records: sha256.New()}
	if err := x.streamHeader(); err != nil {
		return nil, err
	}
	return x, nil
}

func (x *xzReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, x.err
	}
	for x.err == nil {
		if x.out == nil {
			x.err = x.next()
			continue
		}
		n, err := x.out.Read(p)
		if n > 0 {
			if x.check != nil {
				x.check.Write(p[:n])
			}
			x.produced += int64(n)
			if x.uncompSize >= 0 && x.produced > x.uncompSize {
				x.err = xzErrorf(x.in.off, "block produces more than its declared uncompressed size %d", x.uncompSize)
				return 0, x.err
			}
			return n, nil
		}
		if err == io.EOF {
			x.err = x.endBlock()
		} else if err != nil {
			x.err = err
		}
	}
	return 0, x.err
}

func (x *xzReader) streamHeader() error {
	var h [12]byte
	start := x.in.off
	err := x.in.full(h[:], "stream header")
	if n := int(x.in.off - start); !bytes.Equal(h[:min(n, 6)], xzMagic[:min(n, 6)]) {
		return xzErrorf(start, "not an xz stream (bad header magic)")
	}
	if err != nil {
		return err
	}
	if crc32.ChecksumIEEE(h[6:8]) != binary.LittleEndian.Uint32(h[8:]) {
		return xzErrorf(start, "stream header CRC32 mismatch")
	}
	if h[6] != 0 || h[7]&0xF0 != 0 {
		return xzErrorf(start, "stream header has reserved flags %#02x%02x set", h[6], h[7])
	}
	switch h[7] {
	case 0x00:
		x.check = nil
	case 0x01:
		x.check = crc32.NewIEEE()
	case 0x04:
		x.check = crc64.New(xzCRC64Table())
	case 0x0A:
		x.check = sha256.New()
	default:
		return xzErrorf(start, "unsupported check type %#x", h[7])
	}
	x.flags = h[7]
	x.nblocks = 0
	x.records.Reset()
	return nil
}

func (x *xzReader) checkSize() int64 {
	if x.check == nil {
		return 0
	}
	return int64(x.check.Size())
}

// next starts the next block, or reads the index and footer and moves on to
// the next stream; it returns io.EOF after the last stream.
func (x *xzReader) next() error {
	b, err := x.in.byte("block header")
	if err != nil {
		return err
	}
	if b != 0 {
		return x.blockHeader(b)
	}
	indexSize, err := x.index()
	if err != nil {
		return err
	}
	if err := x.footer(indexSize); err != nil {
		return err
	}
	// Stream padding (groups of four null bytes), then EOF or another stream.
	for {
		peek, err := x.in.br.Peek(4)
		if len(peek) == 0 && err == io.EOF {
			return io.EOF
		}
		if len(peek) > 0 && peek[0] != 0 {
			return x.streamHeader()
		}
		if len(peek) < 4 {
			if err == io.EOF {
				return xzErrorf(x.in.off, "stream padding is not a multiple of four bytes")
			}
			return fmt.Errorf("xz: reading stream padding at compressed offset %d: %w", x.in.off, err)
		}
		if binary.LittleEndian.Uint32(peek) != 0 {
			return xzErrorf(x.in.off, "stream padding contains non-null bytes")
		}
		x.in.br.Discard(4)
		x.in.off += 4
	}
}

// xzUvarint decodes a multibyte integer of at most nine bytes; n is 0 when
// the encoding is invalid or does not fit in p.
func xzUvarint(p []byte) (v uint64, n int) {
	for i := 0; i < 9 && i < len(p); i++ {
		b := p[i]
		if i > 0 && b == 0 {
			return 0, 0 // a needless trailing zero byte
		}
		v |= uint64(b&0x7F) << (7 * i)
		if b&0x80 == 0 {
			return v, i + 1
		}
	}
	return 0, 0
}

const (
	xzFilterDelta = 0x03
	xzFilterX86   = 0x04
	xzFilterLZMA2 = 0x21
)

func (x *xzReader) blockHeader(sizeByte byte) error {
	start := x.in.off - 1
	var buf [1024]byte
	size := (int(sizeByte) + 1) * 4
	h := buf[:size]
	h[0] = sizeByte
	if err := x.in.full(h[1:], "block header"); err != nil {
		return err
	}
	if crc32.ChecksumIEEE(h[:size-4]) != binary.LittleEndian.Uint32(h[size-4:]) {
		return xzErrorf(start, "block header CRC32 mismatch")
	}
	flags := h[1]
	if flags&0x3C != 0 {
		return xzErrorf(start, "block header has reserved flags %#02x set", flags&0x3C)
	}
	p := h[2 : size-4]
	field := func(what string) (uint64, error) {
		v, n := xzUvarint(p)
		if n == 0 {
			return 0, xzErrorf(start, "block header: bad %s", what)
		}
		p = p[n:]
		return v, nil
	}
	x.compSize, x.uncompSize = -1, -1
	if flags&0x40 != 0 {
		v, err := field("compressed size")
		if err != nil {
			return err
		}
		if v == 0 || v > 1<<62 {
			return xzErrorf(start, "block header: invalid compressed size %d", v)
		}
		x.compSize = int64(v)
	}
	if flags&0x80 != 0 {
		v, err := field("uncompressed size")
		if err != nil {
			return err
		}
		if v > 1<<62 {
			return xzErrorf(start, "block header: invalid uncompressed size %d", v)
		}
		x.uncompSize = int64(v)
	}
	nf := int(flags&3) + 1
	type filter struct {
		id    uint64
		props []byte
	}
	var filters [4]filter
	for i := range nf {
		id, err := field("filter ID")
		if err != nil {
			return err
		}
		n, err := field("filter properties size")
		if err != nil {
			return err
		}
		if n > uint64(len(p)) {
			return xzErrorf(start, "block header: filter properties overrun the header")
		}
		filters[i] = filter{id, p[:n]}
		p = p[n:]
	}
	for _, b := range p {
		if b != 0 {
			return xzErrorf(start, "block header padding is not null")
		}
	}

	// The last filter decodes the compressed data; the others undo, in
	// reverse order, what the encoder did before it.
	last := filters[nf-1]
	if last.id != xzFilterLZMA2 {
		if last.id == xzFilterDelta || last.id == xzFilterX86 {
			return xzErrorf(start, "filter %#x cannot be the last filter", last.id)
		}
		return xzErrorf(start, "unsupported filter ID %#x", last.id)
	}
	if len(last.props) != 1 || last.props[0]&0xC0 != 0 || last.props[0] > 40 {
		return xzErrorf(start, "invalid LZMA2 properties %x", last.props)
	}
	dict := xzDictSize(last.props[0])
	if dict > xzMaxDict {
		return xzErrorf(start, "LZMA2 dictionary of %d MiB exceeds the limit of %d MiB", dict>>20, xzMaxDict>>20)
	}
	if x.lz == nil {
		x.lz = new(xzLZMA2)
		x.lz.in = &x.in
	}
	x.lz.reset(int(dict))
	var r io.Reader = x.lz
	for i := nf - 2; i >= 0; i-- {
		f := filters[i]
		switch f.id {
		case xzFilterDelta:
			if len(f.props) != 1 {
				return xzErrorf(start, "invalid delta filter properties %x", f.props)
			}
			r = &xzDelta{r: r, dist: int(f.props[0]) + 1}
		case xzFilterX86:
			var pos uint32
			switch len(f.props) {
			case 0:
			case 4:
				pos = binary.LittleEndian.Uint32(f.props)
			default:
				return xzErrorf(start, "invalid x86 filter properties %x", f.props)
			}
			r = newXZX86(r, pos)
		case xzFilterLZMA2:
			return xzErrorf(start, "LZMA2 is only allowed as the last filter")
		default:
			return xzErrorf(start, "unsupported filter ID %#x", f.id)
		}
	}
	x.out = r
	x.hdrSize = int64(size)
	x.dataStart = x.in.off
	x.produced = 0
	if x.check != nil {
		x.check.Reset()
	}
	return nil
}

func xzDictSize(b byte) uint64 {
	if b == 40 {
		return 1<<32 - 1
	}
	return uint64(2|b&1) << (b/2 + 11)
}

// endBlock checks the sizes, padding and check of the block just decoded
// and records it for the index.
func (x *xzReader) endBlock() error {
	x.out = nil
	comp := x.in.off - x.dataStart
	if x.compSize >= 0 && comp != x.compSize {
		return xzErrorf(x.in.off, "block compressed size %d differs from its header (%d)", comp, x.compSize)
	}
	if x.uncompSize >= 0 && x.produced != x.uncompSize {
		return xzErrorf(x.in.off, "block uncompressed size %d differs from its header (%d)", x.produced, x.uncompSize)
	}
	var buf [64]byte
	pad := buf[:(4-(x.hdrSize+comp)%4)%4]
	if err := x.in.full(pad, "block padding"); err != nil {
		return err
	}
	for _, b := range pad {
		if b != 0 {
			return xzErrorf(x.in.off-int64(len(pad)), "block padding is not null")
		}
	}
	if x.check != nil {
		off := x.in.off
		got := x.check.Sum(buf[32:32])
		if x.flags != 0x0A {
			slices.Reverse(got) // CRCs are stored little-endian
		}
		want := buf[:len(got)]
		if err := x.in.full(want, "block check"); err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return xzErrorf(off, "block check (%s) mismatch: stored %x, computed %x", xzCheckName(x.flags), want, got)
		}
	}
	var rec [16]byte
	binary.LittleEndian.PutUint64(rec[:], uint64(x.hdrSize+comp+x.checkSize()))
	binary.LittleEndian.PutUint64(rec[8:], uint64(x.produced))
	x.records.Write(rec[:])
	x.nblocks++
	return nil
}

func xzCheckName(t byte) string {
	switch t {
	case 0x01:
		return "CRC32"
	case 0x04:
		return "CRC64"
	case 0x0A:
		return "SHA-256"
	}
	return "none"
}

// index reads the index (its indicator byte is already consumed) and
// compares its records with the blocks decoded; it returns the index size.
func (x *xzReader) index() (int64, error) {
	start := x.in.off - 1
	crc := crc32.NewIEEE()
	crc.Write([]byte{0})
	readVarint := func(what string) (uint64, error) {
		var b [9]byte
		for i := range b {
			c, err := x.in.byte("index")
			if err != nil {
				return 0, err
			}
			b[i] = c
			if c&0x80 == 0 {
				v, n := xzUvarint(b[:i+1])
				if n == 0 {
					break
				}
				crc.Write(b[:n])
				return v, nil
			}
		}
		return 0, xzErrorf(x.in.off, "index: bad %s", what)
	}
	n, err := readVarint("number of records")
	if err != nil {
		return 0, err
	}
	if n != x.nblocks {
		return 0, xzErrorf(start, "index lists %d blocks, the stream has %d", n, x.nblocks)
	}
	records := sha256.New()
	var rec [16]byte
	for range n {
		unpadded, err := readVarint("unpadded size")
		if err != nil {
			return 0, err
		}
		uncomp, err := readVarint("uncompressed size")
		if err != nil {
			return 0, err
		}
		binary.LittleEndian.PutUint64(rec[:], unpadded)
		binary.LittleEndian.PutUint64(rec[8:], uncomp)
		records.Write(rec[:])
	}
	if !bytes.Equal(records.Sum(nil), x.records.Sum(nil)) {
		return 0, xzErrorf(start, "index records do not match the blocks")
	}
	var tail [7]byte
	size := x.in.off - start
	pad := tail[:(4-size%4)%4]
	if err := x.in.full(pad, "index padding"); err != nil {
		return 0, err
	}
	for _, b := range pad {
		if b != 0 {
			return 0, xzErrorf(x.in.off, "index padding is not null")
		}
	}
	crc.Write(pad)
	off := x.in.off
	if err := x.in.full(tail[3:], "index CRC32"); err != nil {
		return 0, err
	}
	if crc.Sum32() != binary.LittleEndian.Uint32(tail[3:]) {
		return 0, xzErrorf(off, "index CRC32 mismatch")
	}
	return x.in.off - start, nil
}

func (x *xzReader) footer(indexSize int64) error {
	var f [12]byte
	start := x.in.off
	if err := x.in.full(f[:], "stream footer"); err != nil {
		return err
	}
	if !bytes.Equal(f[10:], xzFooterMagic) {
		return xzErrorf(start, "bad stream footer magic")
	}
	if crc32.ChecksumIEEE(f[4:10]) != binary.LittleEndian.Uint32(f[:4]) {
		return xzErrorf(start, "stream footer CRC32 mismatch")
	}
	if f[8] != 0 || f[9] != x.flags {
		return xzErrorf(start, "stream footer flags differ from the header")
	}
	if back := (int64(binary.LittleEndian.Uint32(f[4:])) + 1) * 4; back != indexSize {
		return xzErrorf(start, "stream footer gives index size %d, the index has %d", back, indexSize)
	}
	return nil
}

// xzDelta undoes the delta filter: each byte was stored as its difference
// to the byte dist positions earlier.
type xzDelta struct {
	r    io.Reader
	dist int
	hist [256]byte
	pos  uint8
}

func (d *xzDelta) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	for i, b := range p[:n] {
		b += d.hist[uint8(d.dist+int(d.pos))]
		d.hist[d.pos] = b
		d.pos--
		p[i] = b
	}
	return n, err
}

// xzX86 undoes the x86 branch converter: the 32-bit operands of E8 (call)
// and E9 (jmp) opcodes were turned from relative into absolute addresses,
// skipping candidates that look like they are not instructions.
type xzX86 struct {
	r        io.Reader
	buf      []byte
	start    int    // buf[start:done] is decoded and not yet read
	done     int    // buf[done:end] awaits more lookahead
	end      int    //
	pos      uint32 // stream position of buf[done]
	prevPos  uint32 // stream position of the last E8/E9 examined
	prevMask uint32 // which of the bytes before it were skipped E8/E9
	eof      bool
}

func newXZX86(r io.Reader, start uint32) *xzX86 {
	return &xzX86{r: r, buf: make([]byte, 1<<16), pos: start, prevPos: start - 5}
}

func (f *xzX86) Read(p []byte) (int, error) {
	for f.start == f.done {
		if f.eof {
			if f.done == f.end {
				return 0, io.EOF
			}
			f.done = f.end // the last few bytes cannot hold an operand
			break
		}
		copy(f.buf, f.buf[f.done:f.end])
		f.end -= f.done
		f.start, f.done = 0, 0
		n, err := f.r.Read(f.buf[f.end:])
		f.end += n
		if err == io.EOF {
			f.eof = true
		} else if err != nil {
			return 0, err
		}
		k := f.convert(f.buf[:f.end])
		f.done = k
		f.pos += uint32(k)
	}
	n := copy(p, f.buf[f.start:f.done])
	f.start += n
	return n, nil
}

var (
	xzX86Allowed = [8]bool{true, true, true, false, true, false, false, false}
	xzX86Byte    = [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
)

// convert decodes b, which starts at stream position f.pos, and returns how
// many bytes are final; the rest needs the following bytes to decide.
func (f *xzX86) convert(b []byte) int {
	if len(b) < 5 {
		return 0
	}
	if f.pos-f.prevPos > 5 {
		f.prevPos = f.pos - 5
	}
	mask := f.prevMask
	i := 0
	for ; i+5 <= len(b); i++ {
		if b[i]&0xFE != 0xE8 {
			continue
		}
		at := f.pos + uint32(i)
		if gap := at - f.prevPos; gap > 5 {
			mask = 0
		} else {
			for range gap {
				mask = (mask & 0x77) << 1
			}
		}
		f.prevPos = at
		hi := b[i+4]
		msb := hi == 0 || hi == 0xFF
		if !msb || !xzX86Allowed[(mask>>1)&7] || mask>>1 >= 0x10 {
			mask |= 1
			if msb {
				mask |= 0x10
			}
			continue
		}
		src := binary.LittleEndian.Uint32(b[i+1:])
		var dst uint32
		for {
			dst = src - (at + 5)
			if mask == 0 {
				break
			}
			sh := 24 - 8*xzX86Byte[mask>>1&7]
			if t := uint8(dst >> sh); t != 0 && t != 0xFF {
				break
			}
			src = dst ^ (1<<(sh+8) - 1)
		}
		// Bit 24 of the address is sign-extended into the top byte.
		dst = dst&0x01FFFFFF | -(dst>>24&1)<<24
		binary.LittleEndian.PutUint32(b[i+1:], dst)
		i += 4
		mask = 0
	}
	f.prevMask = mask
	return i
}

// xzLZMA2 decodes LZMA2 chunks into a window that is both the LZMA
// dictionary and the output buffer. Read hands out each chunk before the
// next one is decoded, so the window needs room for the dictionary plus
// one chunk.
type xzLZMA2 struct {
	in   *xzInput
	dict int // dictionary size of the current block

	// Writes within a chunk are linear: a chunk that does not fit before the
	// end of buf starts again at 0, and wend remembers where the data ended.
	// buf grows with the output, up to limit.
	buf   []byte
	limit int
	pos   int   // where the next byte is written
	rpos  int   // next byte Read hands out
	wend  int   // end of the data before pos wrapped; 0 if it has not
	total int64 // bytes since the last dictionary reset

	needDict, needProps, eof bool

	lc, lp, pb uint
	state      uint32
	rep        [4]uint32
	probs      xzProbs
	cin        [xzInSize]byte // compressed bytes of the current chunk
}

const xzStates = 12

type xzLenProbs struct {
	choice, choice2 uint16
	low, mid        [16][8]uint16
	high            [256]uint16
}

type xzProbs struct {
	isMatch    [xzStates << 4]uint16
	isRep      [xzStates]uint16
	isRepG0    [xzStates]uint16
	isRepG1    [xzStates]uint16
	isRepG2    [xzStates]uint16
	isRep0Long [xzStates << 4]uint16
	slot       [4][64]uint16
	special    [115]uint16 // low distance bits of slots 4 to 13
	align      [16]uint16
	matchLen   xzLenProbs
	repLen     xzLenProbs
	literal    [0x300 << 4]uint16
}

// reset starts a block with dictionary size dict.
func (z *xzLZMA2) reset(dict int) {
	z.dict = dict
	z.limit = dict + xzMaxChunk
	z.needDict, z.needProps, z.eof = true, true, false
	z.resetDict()
}

func (z *xzLZMA2) resetDict() {
	z.pos, z.rpos, z.wend, z.total = 0, 0, 0, 0
}

func (z *xzLZMA2) resetState() {
	p := &z.probs
	for _, s := range [][]uint16{
		p.isMatch[:], p.isRep[:], p.isRepG0[:], p.isRepG1[:], p.isRepG2[:], p.isRep0Long[:],
		p.slot[0][:], p.slot[1][:], p.slot[2][:], p.slot[3][:], p.special[:], p.align[:],
		p.literal[:0x300<<(z.lc+z.lp)],
	} {
		for i := range s {
			s[i] = 1024
		}
	}
	for _, l := range []*xzLenProbs{&p.matchLen, &p.repLen} {
		l.choice, l.choice2 = 1024, 1024
		for i := range l.low {
			for j := range l.low[i] {
				l.low[i][j], l.mid[i][j] = 1024, 1024
			}
		}
		for i := range l.high {
			l.high[i] = 1024
		}
	}
	z.state = 0
	z.rep = [4]uint32{}
}

// reserve makes room for a chunk of u bytes at pos, growing or wrapping the
// window. Everything before pos has been read out.
func (z *xzLZMA2) reserve(u int) {
	if z.pos+u <= len(z.buf) {
		return
	}
	if len(z.buf) < z.limit {
		// The window has not wrapped since the dictionary reset: grow
		// it, in few steps since each copies and touches new memory.
		n := max(4*len(z.buf), z.pos+u, 4<<10)
		if n > z.limit/4 {
			n = z.limit
		}
		nb := make([]byte, n)
		copy(nb, z.buf[:z.pos])
		z.buf = nb
		if z.pos+u <= n {
			return
		}
	}
	// pos > limit-u >= dict: the dictionary's bytes before wend survive
	// while the chunk is written from 0.
	z.wend = z.pos
	z.pos, z.rpos = 0, 0
}

func (z *xzLZMA2) Read(p []byte) (int, error) {
	for z.rpos == z.pos {
		if z.eof {
			return 0, io.EOF
		}
		if err := z.chunk(); err != nil {
			return 0, err
		}
	}
	n := copy(p, z.buf[z.rpos:z.pos])
	z.rpos += n
	return n, nil
}

// chunk decodes the next LZMA2 chunk into the window.
func (z *xzLZMA2) chunk() error {
	off := z.in.off
	c, err := z.in.byte("LZMA2 chunk header")
	if err != nil {
		return err
	}
	if c == 0 {
		z.eof = true
		return nil
	}
	if c > 2 && c < 0x80 {
		return xzErrorf(off, "invalid LZMA2 control byte %#x", c)
	}
	if c >= 0xE0 || c == 1 {
		z.needProps, z.needDict = true, false
		z.resetDict()
	} else if z.needDict {
		return xzErrorf(off, "LZMA2 data does not start with a dictionary reset")
	}
	var h [5]byte
	if c < 0x80 {
		if err := z.in.full(h[:2], "LZMA2 chunk header"); err != nil {
			return err
		}
		u := int(binary.BigEndian.Uint16(h[:])) + 1
		z.reserve(u)
		if err := z.in.full(z.buf[z.pos:z.pos+u], "uncompressed LZMA2 chunk"); err != nil {
			return err
		}
		z.pos += u
		z.total += int64(u)
		return nil
	}
	hn := 4
	if c >= 0xC0 {
		hn = 5
	}
	if err := z.in.full(h[:hn], "LZMA2 chunk header"); err != nil {
		return err
	}
	u := int(c&0x1F)<<16 | int(binary.BigEndian.Uint16(h[:])) + 1
	csize := int(binary.BigEndian.Uint16(h[2:])) + 1
	if c >= 0xC0 {
		props := uint(h[4])
		if props >= 9*5*5 {
			return xzErrorf(off, "invalid LZMA properties %#x", props)
		}
		lc, lp := props%9, props/9%5
		if lc+lp > 4 {
			return xzErrorf(off, "LZMA properties lc=%d lp=%d exceed lc+lp=4", lc, lp)
		}
		z.lc, z.lp, z.pb = lc, lp, props/45
		z.needProps = false
	} else if z.needProps {
		return xzErrorf(off, "LZMA2 chunk lacks properties after a dictionary reset")
	}
	if c >= 0xA0 {
		z.resetState()
	}
	if csize < 5 {
		return xzErrorf(off, "LZMA2 chunk of %d compressed bytes is too short", csize)
	}
	if err := z.in.full(z.cin[:csize], "LZMA2 chunk"); err != nil {
		return err
	}
	z.reserve(u)
	return z.decode(csize, u, off)
}

// xzRC is the range decoder state, passed by value so that it stays in
// registers in the decoding loop. ip indexes the chunk's compressed bytes;
// it is masked, so a corrupt chunk reads garbage rather than out of bounds,
// and is compared with the chunk size at the end.
type xzRC struct {
	rng, code, ip uint32
}

// xzNorm and xzBit decode one bit: callers write xzBit(p, xzNorm(rc, in)).
// They are split so that both inline (the budget does not fit them as one).
func xzNorm(rc xzRC, in *[xzInSize]byte) xzRC {
	if rc.rng < 1<<24 {
		rc.rng <<= 8
		rc.code = rc.code<<8 | uint32(in[rc.ip&xzInMask])
		rc.ip++
	}
	return rc
}

// xzBit decodes with probability *p (of a 0, in 1/2048) and adapts it. The
// compare becomes a mask that selects between both outcomes.
func xzBit(p *uint16, rc xzRC) (xzRC, uint32) {
	v := uint32(*p)
	bound := (rc.rng >> 11) * v
	m := uint32((uint64(rc.code) - uint64(bound)) >> 32) // all ones if code < bound
	rc.code -= bound &^ m
	rc.rng = bound&m | (rc.rng-bound)&^m
	*p = uint16((v+(2048-v)>>5)&m | (v-v>>5)&^m)
	return rc, m + 1
}

// xzTree decodes len(p)'s bits, most significant first.
func xzTree(p []uint16, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	m, bit := uint32(1), uint32(0)
	for m < uint32(len(p)) {
		rc, bit = xzBit(&p[m], xzNorm(rc, in))
		m = m<<1 | bit
	}
	return rc, m - uint32(len(p))
}

// xzRevTree decodes n bits, least significant first.
func xzRevTree(p []uint16, n uint32, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	m, sym, bit := uint32(1), uint32(0), uint32(0)
	for i := range n {
		rc, bit = xzBit(&p[m], xzNorm(rc, in))
		m = m<<1 | bit
		sym |= bit << i
	}
	return rc, sym
}

// xzDirect decodes n bits of probability one half.
func xzDirect(n uint32, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	var v uint32
	for range n {
		rc = xzNorm(rc, in)
		rc.rng >>= 1
		rc.code -= rc.rng
		t := 0 - rc.code>>31 // all ones if code was below rng
		rc.code += rc.rng & t
		v = v<<1 + t + 1
	}
	return rc, v
}

// xzLiteral decodes a byte with probabilities lit.
func xzLiteral(lit *[0x300]uint16, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	sym, bit := uint32(1), uint32(0)
	for sym < 0x100 {
		rc, bit = xzBit(&lit[sym], xzNorm(rc, in))
		sym = sym<<1 | bit
	}
	return rc, sym
}

// xzMatchedLiteral decodes a byte after a match: the byte at the match
// distance predicts it until the first bit that differs.
func xzMatchedLiteral(lit *[0x300]uint16, match uint32, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	sym, bit := uint32(1), uint32(0)
	for sym < 0x100 {
		mbit := match >> 7 & 1
		match <<= 1
		rc, bit = xzBit(&lit[0x100+mbit<<8+sym], xzNorm(rc, in))
		sym = sym<<1 | bit
		if bit != mbit {
			break
		}
	}
	for sym < 0x100 {
		rc, bit = xzBit(&lit[sym], xzNorm(rc, in))
		sym = sym<<1 | bit
	}
	return rc, sym
}

// decode returns a match length from 2 to 273.
func (l *xzLenProbs) decode(ps uint32, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	rc, b := xzBit(&l.choice, xzNorm(rc, in))
	if b == 0 {
		rc, b = xzTree3(&l.low[ps&15], rc, in)
		return rc, b + 2
	}
	rc, b = xzBit(&l.choice2, xzNorm(rc, in))
	if b == 0 {
		rc, b = xzTree3(&l.mid[ps&15], rc, in)
		return rc, b + 2 + 8
	}
	rc, b = xzTree(l.high[:], rc, in)
	return rc, b + 2 + 16
}

// xzTree3 is xzTree for three bits, unrolled.
func xzTree3(p *[8]uint16, rc xzRC, in *[xzInSize]byte) (xzRC, uint32) {
	rc, b := xzBit(&p[1], xzNorm(rc, in))
	m := 2 | b
	rc, b = xzBit(&p[m], xzNorm(rc, in))
	m = m<<1 | b
	rc, b = xzBit(&p[m&7], xzNorm(rc, in))
	return rc, (m<<1 | b) - 8
}

// decode decodes an LZMA chunk of csize compressed bytes (in z.cin) into u
// bytes at z.pos, for which reserve made room.
func (z *xzLZMA2) decode(csize, u int, off int64) error {
	in := &z.cin
	if in[0] != 0 {
		return xzErrorf(off, "LZMA chunk: range coder does not start with a null byte")
	}
	rc := xzRC{rng: 0xFFFFFFFF, code: binary.BigEndian.Uint32(in[1:5]), ip: 5}
	p := &z.probs
	buf, wend := z.buf, z.wend
	start, pos, end := z.pos, z.pos, z.pos+u
	dict := z.dict
	hist := dict // history before this chunk
	if z.total < int64(dict) {
		hist = int(z.total)
	}
	state := z.state
	rep0, rep1, rep2, rep3 := z.rep[0], z.rep[1], z.rep[2], z.rep[3]
	lc := uint32(z.lc)
	lpMask := uint32(1)<<z.lp - 1
	pbMask := uint32(1)<<z.pb - 1
	posBase := uint32(z.total) - uint32(start) // uint32(pos)+posBase is the position since the reset
	var prev uint32
	if hist > 0 {
		i := pos - 1
		if i < 0 {
			i += wend
		}
		prev = uint32(buf[i])
	}

	for pos < end {
		ps := (uint32(pos) + posBase) & pbMask
		var bit uint32
		rc, bit = xzBit(&p.isMatch[state<<4|ps], xzNorm(rc, in))
		if bit == 0 {
			ctx := ((uint32(pos)+posBase)&lpMask)<<lc | prev>>(8-lc)
			lit := (*[0x300]uint16)(p.literal[ctx*0x300:])
			var sym uint32
			if state < 7 {
				rc, sym = xzLiteral(lit, rc, in)
			} else {
				i := pos - int(rep0) - 1
				if i < 0 {
					i += wend
				}
				rc, sym = xzMatchedLiteral(lit, uint32(buf[i]), rc, in)
			}
			prev = sym & 0xFF
			buf[pos] = byte(sym)
			pos++
			switch {
			case state < 4:
				state = 0
			case state < 10:
				state -= 3
			default:
				state -= 6
			}
			continue
		}

		var n uint32 // match length
		rc, bit = xzBit(&p.isRep[state], xzNorm(rc, in))
		if bit == 0 {
			rc, n = p.matchLen.decode(ps, rc, in)
			var slot uint32
			rc, slot = xzTree(p.slot[min(n-2, 3)][:], rc, in)
			dist := slot
			if slot >= 4 {
				nd := slot>>1 - 1
				dist = (2 | slot&1) << nd
				var v uint32
				if slot < 14 {
					rc, v = xzRevTree(p.special[dist-slot:], nd, rc, in)
				} else {
					rc, v = xzDirect(nd-4, rc, in)
					dist += v << 4
					rc, v = xzRevTree(p.align[:], 4, rc, in)
				}
				dist += v
			}
			rep3, rep2, rep1, rep0 = rep2, rep1, rep0, dist
			if state < 7 {
				state = 7
			} else {
				state = 10
			}
		} else {
			rc, bit = xzBit(&p.isRepG0[state], xzNorm(rc, in))
			if bit == 0 {
				rc, bit = xzBit(&p.isRep0Long[state<<4|ps], xzNorm(rc, in))
				if bit == 0 {
					n = 1 // a single byte from rep0
				}
			} else {
				var d uint32
				rc, bit = xzBit(&p.isRepG1[state], xzNorm(rc, in))
				if bit == 0 {
					d = rep1
				} else {
					rc, bit = xzBit(&p.isRepG2[state], xzNorm(rc, in))
					if bit == 0 {
						d = rep2
					} else {
						d = rep3
						rep3 = rep2
					}
					rep2 = rep1
				}
				rep1, rep0 = rep0, d
			}
			if n == 1 {
				if state < 7 {
					state = 9
				} else {
					state = 11
				}
			} else {
				rc, n = p.repLen.decode(ps, rc, in)
				if state < 7 {
					state = 8
				} else {
					state = 11
				}
			}
		}

		avail := min(hist+pos-start, dict)
		if uint64(rep0) >= uint64(avail) {
			if rep0 == 0xFFFFFFFF {
				return xzErrorf(off, "LZMA chunk contains an end marker")
			}
			return xzErrorf(off, "LZMA match distance %d exceeds the %d bytes of history", uint64(rep0)+1, avail)
		}
		ln := int(n)
		if ln > end-pos {
			return xzErrorf(off, "LZMA match runs past the end of the chunk")
		}
		src := pos - int(rep0) - 1
		switch {
		case src < 0:
			// The match starts before the wrap point.
			src += wend
			for range ln {
				buf[pos] = buf[src]
				pos++
				src++
				if src == wend {
					src = 0
				}
			}
		case ln <= 16:
			// Short matches are the common case: a forward byte loop
			// beats a memmove call and handles overlap.
			d, s := buf[pos:pos+ln], buf[src:src+ln]
			for i := range d {
				d[i] = s[i]
			}
			pos += ln
		case ln <= pos-src:
			copy(buf[pos:pos+ln], buf[src:src+ln])
			pos += ln
		default:
			// Overlapping: each copy doubles the repeated pattern.
			for ln > 0 {
				k := copy(buf[pos:pos+ln], buf[src:pos])
				pos += k
				ln -= k
			}
		}
		prev = uint32(buf[pos-1])
	}

	rc = xzNorm(rc, in)
	if rc.ip != uint32(csize) || rc.code != 0 {
		return xzErrorf(off, "LZMA chunk is corrupt (%d of %d compressed bytes used)", rc.ip, csize)
	}
	z.state = state
	z.rep = [4]uint32{rep0, rep1, rep2, rep3}
	z.pos = pos
	z.total += int64(u)
	return nil
}
