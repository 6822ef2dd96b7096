#!/bin/bash
# Compares our Zstandard decoder with the reference `zstd -dc` on one file.
# Usage: bench/zstd.sh [FILE.zst]
# Without FILE, it makes one: a tar of /usr/share (text, scripts, images),
# compressed at level 19 like Ubuntu's data.tar.zst members.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in zstd hyperfine go; do
	command -v "$tool" >/dev/null || { echo "bench/zstd.sh: $tool is not installed" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
file=${1:-}
if [ -z "$file" ]; then
	file=$work/data.tar.zst
	(tar -cf - -C / usr/share 2>/dev/null || true) | head -c $((64 << 20)) > "$work/data.tar"
	zstd -q -19 -T0 --rm -o "$file" "$work/data.tar"
fi
size=$(zstd -dc "$file" | wc -c)
echo "file: $file ($(stat -c %s "$file") bytes compressed, $size bytes decompressed)"

hyperfine --warmup 2 --runs 10 --export-json "$work/ref.json" "zstd -dc '$file' > /dev/null" >&2
ref=$(sed -n 's/.*"median": *\([0-9.e-]*\).*/\1/p' "$work/ref.json" | head -1)

out=$(KARAPACE_ZSTD_BENCH_FILE=$file go test -run '^$' -bench '^BenchmarkZstdDecode$' -benchtime 10x -count 5 . | grep '^BenchmarkZstdDecode')
echo "$out"
ours=$(echo "$out" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] / 1e9}')

awk -v r="$ref" -v o="$ours" -v s="$size" 'BEGIN {
	printf "zstd -dc: %.3f s (%.0f MB/s)\n", r, s / r / 1e6
	printf "karapace: %.3f s (%.0f MB/s)\n", o, s / o / 1e6
	printf "ratio (karapace / zstd -dc): %.2f\n", o / r
}'
