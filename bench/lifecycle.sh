#!/bin/bash
# The lifecycle commands at scale, in one run:
#   - list and inspect with 1,000 environments in the store (goal < 50 ms each)
#   - commit of one changed 1 MB file in a 500 MB environment (goal < 0.5 s):
#     commit packs the writable layer only, so its cost follows the change
#
#   bench/lifecycle.sh [ROOTFS.tar]   (default: $KARAPACE_TEST_ROOTFS_TAR or /var/tmp/kp/bookworm.tar)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
rootfs=${1:-${KARAPACE_TEST_ROOTFS_TAR:-/var/tmp/kp/bookworm.tar}}
n=${ENVS:-1000}
command -v hyperfine >/dev/null || { echo "bench/lifecycle.sh: hyperfine is needed" >&2; exit 1; }
tmp=$(mktemp -d /var/tmp/karapace-bench-life.XXXXXX)
trap 'rm -rf "$tmp" 2>/dev/null || unshare --user --map-root-user rm -rf "$tmp"' EXIT
kp=$tmp/karapace
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$kp" .
echo "$(id -un); load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"

# 1,000 environments (mock backend: no namespaces needed to make them).
export KARAPACE_STORE=$tmp/many
mkdir -p "$tmp/tiny/etc" "$tmp/m"
echo ID=tiny > "$tmp/tiny/etc/os-release"
tar -C "$tmp/tiny" -cf "$tmp/m/tiny.tar" .
for i in $(seq 1 "$n"); do
	printf 'manifest_version = 1\n[base]\nimage = "./tiny.tar"\n[system]\npackages = ["p%d"]\n[runtime]\nbackend = "mock"\n' "$i" > "$tmp/m/karapace.toml"
	"$kp" build --name "env$i" "$tmp/m/karapace.toml" >/dev/null 2>&1
done
echo "environments: $("$kp" list --quiet | grep -c '^env')"
hyperfine -N --style basic --warmup 3 --runs 30 --export-json "$tmp/list.json" \
	-n list "$kp list" -n list-json "$kp --json list" -n inspect-by-name "$kp inspect env500" >/dev/null
awk '$1 == "\"command\":" {gsub(/[",]/, "", $2); c=$2} $1 == "\"mean\":" {gsub(",", "", $2); printf "%-12s %6.1f ms (goal < 50 ms)\n", c, $2*1000}' "$tmp/list.json"

# A 500 MB environment: the root filesystem plus 320 MB of other files.
export KARAPACE_STORE=$tmp/big
mkdir -p "$tmp/big-root/opt/data" "$tmp/b"
tar -C "$tmp/big-root" -xf "$rootfs" 2>/dev/null || true
for i in 1 2 3 4; do head -c 80000000 /dev/urandom > "$tmp/big-root/opt/data/blob$i"; done
tar -C "$tmp/big-root" -cf "$tmp/b/big.tar" .
rm -rf "$tmp/big-root"
printf 'manifest_version = 1\n[base]\nimage = "./big.tar"\n' > "$tmp/b/karapace.toml"
"$kp" build --name big "$tmp/b/karapace.toml" >/dev/null
echo "environment size: $(du -sh "$KARAPACE_STORE/env/.layers" | cut -f1)"
for i in 1 2 3 4 5; do
	"$kp" exec big -- dd if=/dev/urandom of=/root/changed bs=1M count=1 status=none
	start=$(date +%s.%N)
	"$kp" commit big >/dev/null
	end=$(date +%s.%N)
	echo "$start $end"
done | awk '{t=$2-$1; if (NR==1 || t<min) min=t; s+=t} END {printf "commit of 1 MB in a 500 MB environment: best %.3f s, mean %.3f s (goal < 0.5 s)\n", min, s/NR}'
