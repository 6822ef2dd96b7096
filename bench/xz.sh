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

hyperfine --warmup 1 --runs "${RUNS:-5}" --export-json "$work/result.json" \
	-n 'xz -dc' "xz -dc <'$xzf' >/dev/null" \
	-n karapace "KARAPACE_TEST_HELPER=xzcat '$work/karapace.test' <'$xzf' >/dev/null"

# Wall time suffers when other work shares the machine; CPU time less so.
jq -r '.results as $r |
	"ratio ours/xz: wall \(($r[1].mean / $r[0].mean * 100 | round) / 100)x, " +
	"cpu (user+system) \((($r[1].user + $r[1].system) / ($r[0].user + $r[0].system) * 100 | round) / 100)x"' \
	"$work/result.json"
