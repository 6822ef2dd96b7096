#!/usr/bin/env bash
# Compares karapace's TOML decoder with BurntSushi/toml and pelletier/go-toml
# on byte-identical documents: the ~40-line manifest and a generated 1 MiB
# document, both written by karapace's TestTOMLBenchDocs into a temp dir.
# Each benchmark runs COUNT times and the fastest run counts, which is the
# figure least disturbed by other load on the machine.
# Usage: bench/toml.sh [benchtime [count]]   (default 1s 5)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
benchtime=${1:-1s}
count=${2:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$root" && TOML_BENCH_OUT="$tmp" go test -count=1 -run '^TestTOMLBenchDocs$' . >/dev/null)
(cd "$root" && go test -run '^$' -bench '^BenchmarkDecodeTOML(Manifest|1MiB)$' -benchmem -benchtime "$benchtime" -count "$count" .) | tee "$tmp/ours.txt"
(cd "$root/bench" && TOML_BENCH_DIR="$tmp" go test -run '^$' -bench . -benchmem -benchtime "$benchtime" -count "$count" .) | tee "$tmp/theirs.txt"

# Fastest ns/op of the benchmark named $2 (without the -N suffix) in file $1.
nsop() {
	awk -v n="$2" '{ sub(/-[0-9]+$/, "", $1) } $1 == n && (best == "" || $3 < best) { best = $3 } END { print best }' "$1"
}

echo
printf '%-10s %14s %14s %14s %10s %10s\n' document 'ours ns/op' 'Burnt ns/op' 'pelletier' 'ours/Burnt' 'ours/pell'
for d in Manifest 1MiB; do
	o=$(nsop "$tmp/ours.txt" "BenchmarkDecodeTOML$d")
	b=$(nsop "$tmp/theirs.txt" "BenchmarkBurntSushi$d")
	p=$(nsop "$tmp/theirs.txt" "BenchmarkPelletier$d")
	awk -v d="$d" -v o="$o" -v b="$b" -v p="$p" \
		'BEGIN { printf "%-10s %14.0f %14.0f %14.0f %10.2f %10.2f\n", d, o, b, p, o / b, o / p }'
done
