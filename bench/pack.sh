#!/bin/bash
# Pack/unpack of a real root filesystem against GNU tar, verify-store against
# single-threaded blake3, peak memory while packing. All ratios come from
# one run of the Go benchmarks (same machine state for both sides).
#
#   bench/pack.sh [ROOTFS_DIR]
#
# Without ROOTFS_DIR, the Debian bookworm minbase tarball at
# $KARAPACE_BENCH_TAR (default /var/tmp/kp/bookworm.tar, made with
# mmdebstrap --variant=minbase --format=tar bookworm) is extracted, as root
# so that owners survive, into a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go

dir=${1:-}
remove=
trap 'echo "load after: $(cut -d" " -f1-3 /proc/loadavg)" >&2; [ -z "$remove" ] || rm -rf "$remove"' EXIT
if [ -z "$dir" ]; then
	src=${KARAPACE_BENCH_TAR:-/var/tmp/kp/bookworm.tar}
	[ "$(id -u)" = 0 ] || { echo "extracting $src needs root (owners); pass ROOTFS_DIR instead" >&2; exit 1; }
	dir=$(mktemp -d /var/tmp/kp-rootfs.XXXXXX)
	remove=$dir
	tar --numeric-owner --xattrs -xpf "$src" -C "$dir"
fi
[ -d "$dir" ] || { echo "bench/pack.sh: $dir is not a directory (give an extracted root filesystem, or nothing to extract \$KARAPACE_BENCH_TAR)" >&2; exit 2; }
echo "tree: $dir ($(du -sh "$dir" | cut -f1), $(find "$dir" | wc -l) entries)"
# Other work on the machine skews parallel speedups: say how busy it was.
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"

# Temp files on the same filesystem as the tree.
export TMPDIR=${TMPDIR:-$(dirname "$dir")}
# Each benchmark alternates the two sides and keeps each side's fastest
# run, so that other load on a shared machine does not decide the ratio.
{
	KARAPACE_BENCH_DIR=$dir "$GO" test -run '^$' -count 1 -benchtime "${BENCHTIME:-5x}" \
		-bench 'BenchmarkPackVsGNUTar|BenchmarkUnpackVsGNUTar' .
	KARAPACE_BENCH_DIR=$dir "$GO" test -run '^$' -count 1 -benchtime "${VERIFY_BENCHTIME:-15x}" \
		-bench 'BenchmarkVerifyVsSingleThread' .
} | tee /dev/stderr | awk '
	/^Benchmark/ { for (i = 3; i < NF; i += 2) m[$(i+1)] = $i }
	END {
		if (!("pack/tar" in m) || !("speedup" in m)) exit 1 # a benchmark failed: no figures
		printf "\npack      : %.2fx GNU tar -cf (goal <= 1.2), %.2fx with fsync on both sides\n", m["pack/tar"], m["pack+fsync/tar+sync"]
		printf "unpack    : %.2fx GNU tar -xf\n", m["unpack/tar"]
		printf "verify    : %.2fx single-threaded blake3 on %d cpus (goal >= 1.5)\n", m["speedup"], m["cpus"]
		printf "peak RSS  : %.1f MiB while packing (goal < 64)\n", m["peak-RSS-MiB"]
	}' >&2
