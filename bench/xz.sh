#!/bin/sh
# Times `xz -dc` against karapace's xz decoder on a root filesystem tarball
# compressed with xz -6, and prints the ratio ours/xz.
# Usage: bench/xz.sh [rootfs.tar]   (default /var/tmp/kp/bookworm.tar)
set -eu
tar=${1:-/var/tmp/kp/bookworm.tar}
root=$(cd "$(dirname "$0")/.." && pwd)
work=${TMPDIR:-/tmp}/karapace-xz-bench
mkdir -p "$work"

# Compress once; later runs reuse the file while the tarball is unchanged.
xzf=$work/$(basename "$tar").xz
if [ ! -s "$xzf" ] || [ "$tar" -nt "$xzf" ]; then
	echo "compressing $tar with xz -6 (once)..." >&2
	xz -6 -T1 -c "$tar" >"$xzf.tmp"
	mv "$xzf.tmp" "$xzf"
fi

# The test binary's xzcat helper decodes stdin to stdout.
(cd "$root" && go test -c -o "$work/karapace.test" .)
[ "$(KARAPACE_TEST_HELPER=xzcat "$work/karapace.test" <"$xzf" | cmp - "$tar" && echo same)" = same ] || {
	echo "decoded output differs from $tar" >&2
	exit 1
}

# Other work on the machine skews whichever command runs while it is busy:
# alternate the two, one run each per round, and compare per round.
runs=${RUNS:-5}
rm -f "$work"/round*.json
xz -dc <"$xzf" >/dev/null # warm the page cache
for i in $(seq "$runs"); do
	hyperfine --style none --runs 1 --export-json "$work/round$i.json" \
		-n 'xz -dc' "xz -dc <'$xzf' >/dev/null" \
		-n karapace "KARAPACE_TEST_HELPER=xzcat '$work/karapace.test' <'$xzf' >/dev/null" >/dev/null
done

# Wall time suffers most from other work; CPU time less so.
jq -rs '
	def median: sort | .[length / 2 | floor];
	def r2: . * 100 | round / 100;
	map(.results) as $rounds |
	($rounds | map(.[0].mean) | median) as $xz |
	($rounds | map(.[1].mean) | median) as $ours |
	"xz -dc:   median wall \($xz | r2) s, cpu \($rounds | map(.[0].user + .[0].system) | median | r2) s",
	"karapace: median wall \($ours | r2) s, cpu \($rounds | map(.[1].user + .[1].system) | median | r2) s",
	"ratio ours/xz: wall \($rounds | map(.[1].mean / .[0].mean) | median | r2)x (median of \($rounds | length) rounds), " +
	"cpu \($rounds | map((.[1].user + .[1].system) / (.[0].user + .[0].system)) | median | r2)x"
' "$work"/round*.json
