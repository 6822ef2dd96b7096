#!/bin/bash
# Bootstrapping Debian bookworm's minimal base from the archive, in one run:
# karapace build of "debian/bookworm" (fresh store, nothing cached) against
# mmdebstrap --variant=minbase from the same mirror, and the two package
# lists compared. Needs mmdebstrap and network to the mirror.
#
#   bench/bootstrap.sh [MIRROR]   (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
mirror=${1:-http://deb.debian.org/debian}
runs=${RUNS:-3}
command -v mmdebstrap >/dev/null || { echo "bench/bootstrap.sh: mmdebstrap is needed" >&2; exit 1; }
tmp=$(mktemp -d /var/tmp/karapace-bench-bootstrap.XXXXXX)
trap 'rm -rf "$tmp" 2>/dev/null || unshare --user --map-root-user rm -rf "$tmp"' EXIT
kp=$tmp/karapace
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$kp" .
mkdir -p "$tmp/p"
printf 'manifest_version = 1\n[base]\nimage = "debian/bookworm"\n' > "$tmp/p/karapace.toml"
echo "mirror $mirror; $(id -un); load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"

best() { sort -n | head -1; }
for i in $(seq "$runs"); do
	rm -rf "$tmp/store" "$tmp/p/karapace.lock" 2>/dev/null || unshare --user --map-root-user rm -rf "$tmp/store"
	s=$(date +%s.%N)
	KARAPACE_STORE=$tmp/store KARAPACE_DEBIAN_MIRROR=$mirror "$kp" build --name base "$tmp/p/karapace.toml" >/dev/null 2>&1
	e=$(date +%s.%N)
	echo "$s $e" | awk '{print $2-$1}' >> "$tmp/ours"
	rm -f "$tmp/mm.tar"
	s=$(date +%s.%N)
	mmdebstrap --quiet --variant=minbase --format=tar bookworm "$tmp/mm.tar" "$mirror" 2>/dev/null
	e=$(date +%s.%N)
	echo "$s $e" | awk '{print $2-$1}' >> "$tmp/mm"
done
ours=$(best < "$tmp/ours"); mm=$(best < "$tmp/mm")
awk -v o="$ours" -v m="$mm" 'BEGIN { printf "bootstrap: karapace %.1f s, mmdebstrap %.1f s (best of runs): ratio %.2fx (goal <= 1.0x)\n", o, m, o/m }'

KARAPACE_STORE=$tmp/store "$kp" exec base -- dpkg-query -W -f '${Package}\n' | sort > "$tmp/ours.list"
tar -xOf "$tmp/mm.tar" ./var/lib/dpkg/status | sed -n 's/^Package: //p' | sort > "$tmp/mm.list"
echo "packages: karapace $(wc -l < "$tmp/ours.list"), mmdebstrap $(wc -l < "$tmp/mm.list")"
echo "only in karapace's:   $(comm -23 "$tmp/ours.list" "$tmp/mm.list" | tr '\n' ' ')"
echo "only in mmdebstrap's: $(comm -13 "$tmp/ours.list" "$tmp/mm.list" | tr '\n' ' ')"
