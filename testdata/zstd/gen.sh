#!/bin/sh
# Regenerates the Zstandard test vectors in this directory with the zstd
# CLI, from inputs made here (so they do not depend on the machine), and
# SHA256SUMS of what each decodes to. They are small enough to seed
# FuzzZstd, and cover raw, RLE and compressed blocks, Huffman literals,
# FSE and repeated sequence tables, checksums or none, content sizes or
# none, frames larger than a block, and several frames in a row.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# 6 KB of words from a small vocabulary, in a pseudo-random order.
awk 'BEGIN { split("the of and to in is was for on that with as by at from his it an were are which be this has also or had not first one their its new after but who they two her she been other when there all during into school time may years more most only over city some world would where later up such used many can state about national out known university united then made", w, " ");
	x = 1; for (i = 0; i < 1000; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%s%s", w[1 + int(x / 65536) % 128], (i % 12 == 11) ? "\n" : " " } }' > "$tmp/words"
# 200 KB of lines that repeat at short and long distances: several blocks.
awk 'BEGIN { for (i = 0; i < 4000; i++) printf "%05d the quick brown fox %d jumps over the lazy dog %d\n", i % 97, i % 13, i % 7 }' > "$tmp/lines"
awk 'BEGIN { for (i = 0; i < 3000; i++) printf "%c", 33 + (i * 7919 % 94) }' > "$tmp/noise"
head -c 200000 /dev/zero | tr '\0' a > "$tmp/run"
printf 'hello, world\n' > "$tmp/hello"
: > "$tmp/empty"
: > SHA256SUMS
z() {
	out=$1; shift; in=$1; shift
	zstd -q -f "$@" -o "$out" "$tmp/$in"
	printf '%s  %s\n' "$(sha256sum < "$tmp/$in" | cut -d' ' -f1)" "$out" >> SHA256SUMS
}
z empty.zst empty
z hello.zst hello -3
z hello-nocheck.zst hello -3 --no-check
z words-1.zst words -1
z words-19.zst words -19
z words-fast.zst words --fast=5 --no-content-size
z lines-3.zst lines -3
z lines-19.zst lines -19 --no-check
z noise.zst noise -9
z run.zst run -3
cat "$tmp/hello" "$tmp/words" > "$tmp/two"
zstd -q -3 -c "$tmp/hello" > two-frames.zst
zstd -q -19 -c "$tmp/words" >> two-frames.zst
printf '%s  %s\n' "$(sha256sum < "$tmp/two" | cut -d' ' -f1)" two-frames.zst >> SHA256SUMS
