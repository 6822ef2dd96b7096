#!/bin/bash
# Start-up cost of running a command in an environment, in one run:
#   karapace exec ENV -- /bin/true      cold (the environment is not running)
#   karapace exec ENV -- /bin/true      joining a running environment
#   bwrap --unshare-user --unshare-pid  on the same root filesystem
#   the original tool's path            fuse-overlayfs + unshare + sh + chroot
#   karapace --version                  one start of the binary, doing nothing
# (podman exec on the same root filesystem: bench/oci.sh)
# and the ratios between them (of medians). Needs hyperfine, bwrap,
# fuse-overlayfs, unshare (util-linux) and a Debian root filesystem tarball.
# Run it as root and as an ordinary user with a subordinate ID range.
#
#   bench/exec.sh [ROOTFS.tar]      (default: $KARAPACE_TEST_ROOTFS_TAR or /var/tmp/kp/bookworm.tar)
#   KARAPACE=path/to/karapace       use that binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
rootfs=${1:-${KARAPACE_TEST_ROOTFS_TAR:-/var/tmp/kp/bookworm.tar}}
runs=${RUNS:-200}
for t in hyperfine bwrap fuse-overlayfs unshare; do
	command -v "$t" >/dev/null || { echo "bench/exec.sh: $t is needed" >&2; exit 1; }
done

tmp=$(mktemp -d /var/tmp/karapace-bench-exec.XXXXXX)
kp=$tmp/karapace
cleanup() {
	[ -n "${bg:-}" ] && kill "$bg" 2>/dev/null || true
	mountpoint -q "$tmp/seed/merged" && fusermount3 -u "$tmp/seed/merged" || true
	KARAPACE_STORE=$tmp/store "$kp" stop bench >/dev/null 2>&1 || true
	rm -rf "$tmp" 2>/dev/null || unshare --user --map-root-user rm -rf "$tmp"
}
trap cleanup EXIT
if [ -n "${KARAPACE:-}" ]; then
	cp "$KARAPACE" "$kp"
else
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$kp" .
fi
export KARAPACE_STORE=$tmp/store
mkdir -p "$tmp/project"
printf 'manifest_version = 1\n[base]\nimage = "%s"\n' "$rootfs" > "$tmp/project/karapace.toml"
"$kp" build --name bench "$tmp/project/karapace.toml" >/dev/null
base=$("$kp" --json inspect bench | sed -n 's/.*"base_layer": "\([0-9a-f]*\)".*/\1/p' | head -1)
tree=$KARAPACE_STORE/env/.layers/$base
echo "root filesystem: $rootfs ($(du -sh "$tree" 2>/dev/null | cut -f1)); $(id -un); load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"

# The original tool's run path, step by step as it did it.
mkdir -p "$tmp/seed/upper" "$tmp/seed/work" "$tmp/seed/merged"
cat > "$tmp/seed.sh" <<EOF
#!/bin/sh
fuse-overlayfs -o lowerdir=$tree,upperdir=$tmp/seed/upper,workdir=$tmp/seed/work $tmp/seed/merged
unshare --user --map-root-user --mount --pid --fork sh -c 'mount -t proc proc $tmp/seed/merged/proc; mount --rbind /sys $tmp/seed/merged/sys 2>/dev/null; mount --rbind /dev $tmp/seed/merged/dev 2>/dev/null; exec chroot $tmp/seed/merged /bin/sh -c "/bin/true"'
fusermount3 -u $tmp/seed/merged
EOF
chmod +x "$tmp/seed.sh"

bwrap_cmd="bwrap --unshare-user --unshare-pid --ro-bind $tree / --proc /proc --dev /dev /bin/true"
json=$tmp/cold.json
hyperfine -N --style basic --warmup 10 --runs "$runs" --export-json "$json" \
	-n karapace-cold "$kp exec bench -- /bin/true" \
	-n bwrap "$bwrap_cmd" \
	-n seed-path "$tmp/seed.sh" \
	-n karapace-start "$kp --version" >/dev/null

# Join: a long-running session keeps the environment up.
"$kp" exec bench -- sleep 3600 &
bg=$!
for _ in $(seq 100); do
	"$kp" list | grep -q running && break
	sleep 0.05
done
json2=$tmp/join.json
hyperfine -N --style basic --warmup 10 --runs "$runs" --export-json "$json2" \
	-n karapace-join "$kp exec bench -- /bin/true" \
	-n bwrap "$bwrap_cmd" >/dev/null

# Medians: a few runs the machine delays must not move the figures.
median() { # file name -> median seconds
	awk -v n="\"$2\"" '$1 == "\"command\":" && $2 == n"," {f=1} f && $1 == "\"median\":" {gsub(",", "", $2); print $2; exit}' "$1"
}
cold=$(median "$json" karapace-cold); bw=$(median "$json" bwrap); seed=$(median "$json" seed-path)
start=$(median "$json" karapace-start)
join=$(median "$json2" karapace-join); bw2=$(median "$json2" bwrap)
awk -v c="$cold" -v b="$bw" -v s="$seed" -v j="$join" -v b2="$bw2" -v k="$start" 'BEGIN {
	printf "cold exec        %7.2f ms   bwrap %7.2f ms   ratio %.2fx (goal <= 2.5x)\n", c*1000, b*1000, c/b
	printf "joining exec     %7.2f ms   bwrap %7.2f ms   ratio %.2fx (goal <= 1.2x)\n", j*1000, b2*1000, j/b2
	printf "original path    %7.2f ms   karapace cold is %.1fx faster (goal >= 4x)\n", s*1000, s/c
	printf "karapace start   %7.2f ms   = %.2fx bwrap: a cold exec starts the binary twice (client, init), a join once\n", k*1000, k/b
}'
