#!/bin/bash
# Building with images and packages, in one run:
#   - xz: decoding the root filesystem tarball, ours against xz -dc (bench/xz.sh)
#   - build overhead: a build's time minus the package manager's own time,
#     for a first build (the image is imported) and for a build on an image
#     already in the store
#   - rebuild of the git+curl environment from its lock, offline, from the store
#   - peak memory of an image import
# Needs network to the Debian archive (apt inside the environment).
#
#   bench/build.sh [ROOTFS.tar.xz]  (default: $KARAPACE_TEST_ROOTFS_TAR.xz or /var/tmp/kp/bookworm.tar.xz)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
image=${1:-${KARAPACE_TEST_ROOTFS_TAR:-/var/tmp/kp/bookworm.tar}.xz}
[ -x /usr/bin/time ] || { echo "bench/build.sh: GNU time (/usr/bin/time) is needed" >&2; exit 1; }
tmp=$(mktemp -d /var/tmp/karapace-bench-build.XXXXXX)
trap 'rm -rf "$tmp" 2>/dev/null || unshare --user --map-root-user rm -rf "$tmp"' EXIT
kp=$tmp/karapace
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$kp" .
export KARAPACE_STORE=$tmp/store
echo "image: $image ($(du -h "$image" | cut -f1)); $(id -un); load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"

bench/xz.sh "${image%.xz}" 2>/dev/null | tail -1 || echo "xz: bench/xz.sh failed"

field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" "$2" | head -1; }
mkdir -p "$tmp/a" "$tmp/b"
printf 'manifest_version = 1\n[base]\nimage = "%s"\n' "$image" > "$tmp/a/karapace.toml"
# The image import alone, under GNU time for its peak memory.
/usr/bin/time -f '%M' -o "$tmp/rss" "$kp" --json build "$tmp/a/karapace.toml" > "$tmp/import.json"
printf 'image import: %.2f s, peak memory %d MiB (goal < 128 MiB)\n' "$(field seconds "$tmp/import.json")" $(($(cat "$tmp/rss") / 1024))

printf 'manifest_version = 1\n[base]\nimage = "%s"\n[system]\npackages = ["git", "curl"]\n' "$image" > "$tmp/b/karapace.toml"
"$kp" --json build --name dev "$tmp/b/karapace.toml" > "$tmp/pkgs.json"
total=$(field seconds "$tmp/pkgs.json"); pm=$(field package_manager_seconds "$tmp/pkgs.json")
awk -v t="$total" -v p="$pm" 'BEGIN { printf "build of git+curl on a stored image: %.2f s, package manager %.2f s, karapace overhead %.2f s = %.1f%% (goal <= 10%%)\n", t, p, t-p, 100*(t-p)/t }'

# From the lock, no network: no package manager run at all.
"$kp" destroy dev >/dev/null
start=$(date +%s.%N)
"$kp" build --locked --offline "$tmp/b/karapace.toml" >/dev/null
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" 'BEGIN { printf "rebuild from the lock, offline: %.2f s (goal < 2 s)\n", e-s }'
