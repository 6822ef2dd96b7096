#!/bin/bash
# Cost of 'exec -- /bin/true' with the oci backend, in one run, against the
# namespace backend and against 'podman exec', all on the same root
# filesystem (the environment's base layer), as ratios of medians:
#   karapace exec, oci backend (crun, then runc), joining a running environment
#   karapace exec, namespace backend, joining a running environment
#   podman exec (runtime runc) into a container on that root filesystem
#   the same karapace execs cold (nothing running), oci against namespace
# Needs hyperfine, crun, runc, podman (as root) and a Debian root
# filesystem tarball. Run it as root and as an ordinary user with a
# subordinate ID range; as a user it leaves podman out.
#
#   bench/oci.sh [ROOTFS.tar]      (default: $KARAPACE_TEST_ROOTFS_TAR or /var/tmp/kp/bookworm.tar)
#   KARAPACE=path/to/karapace      use that binary instead of building one
#   RUNS=N                         runs per command (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
rootfs=${1:-${KARAPACE_TEST_ROOTFS_TAR:-/var/tmp/kp/bookworm.tar}}
runs=${RUNS:-100}
podman=$([ "$(id -u)" = 0 ] && echo yes || true)
for t in hyperfine crun runc ${podman:+podman}; do
	command -v "$t" >/dev/null || { echo "bench/oci.sh: $t is needed" >&2; exit 1; }
done

tmp=$(mktemp -d /var/tmp/karapace-bench-oci.XXXXXX)
kp=$tmp/karapace
pod=(podman --root "$tmp/podman" --runroot "$tmp/podman-run" --runtime runc --cgroup-manager cgroupfs --events-backend file)
bgs=()
cleanup() {
	for p in "${bgs[@]}"; do kill "$p" 2>/dev/null || true; done
	for e in ns oci; do KARAPACE_STORE=$tmp/store "$kp" stop "$e" >/dev/null 2>&1 || true; done
	if [ -n "$podman" ]; then
		"${pod[@]}" rm -f -t 0 bench >/dev/null 2>&1 || true
		umount -l "$tmp/podman/overlay" 2>/dev/null || true
	fi
	rm -rf "$tmp" 2>/dev/null || unshare --user --map-root-user rm -rf "$tmp" 2>/dev/null || true
}
trap cleanup EXIT
if [ -n "${KARAPACE:-}" ]; then
	cp "$KARAPACE" "$kp"
else
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$kp" .
fi
export KARAPACE_STORE=$tmp/store
for e in ns oci; do
	backend=namespace
	[ "$e" = oci ] && backend=oci
	mkdir -p "$tmp/$e"
	printf 'manifest_version = 1\n[base]\nimage = "%s"\n[runtime]\nbackend = "%s"\n' "$rootfs" "$backend" > "$tmp/$e/karapace.toml"
	"$kp" build --name "$e" "$tmp/$e/karapace.toml" >/dev/null 2>&1
done
base=$("$kp" --json inspect ns | sed -n 's/.*"base_layer": "\([0-9a-f]*\)".*/\1/p' | head -1)
tree=$KARAPACE_STORE/env/.layers/$base
echo "root filesystem: $rootfs; $(id -un); $(crun --version | head -1); $(runc --version | head -1)${podman:+; podman $(podman --version | cut -d' ' -f3)}; load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"

# Cold: nothing runs before each exec.
cold=$tmp/cold.json
hyperfine -N --style basic --warmup 3 --runs "$runs" --export-json "$cold" \
	-n ns-cold "$kp exec ns -- /bin/true" \
	-n oci-crun-cold "env KARAPACE_OCI_RUNTIME=crun $kp exec oci -- /bin/true" \
	-n oci-runc-cold "env KARAPACE_OCI_RUNTIME=runc $kp exec oci -- /bin/true" >/dev/null

# Joining: a long-running session keeps the environment up (the oci one
# with each runtime in turn); podman's container runs on the same tree,
# under an overlay of its own (:O).
up() { # env [runtime]: start a session that keeps it running
	KARAPACE_OCI_RUNTIME=${2:-} "$kp" exec "$1" -- sleep 3600 2>"$tmp/up.log" &
	bgs+=($!)
	for _ in $(seq 200); do
		"$kp" list | grep -q " $1 *running" && return
		sleep 0.05
	done
	echo "bench/oci.sh: $1 did not start: $(cat "$tmp/up.log")" >&2
	exit 1
}
up ns
# podman's default limits lie above this machine's hard limits, which runc
# refuses to raise: the caller's own (nproc: a modest one, which runc
# takes where it refused the hard limit itself).
[ -n "$podman" ] && "${pod[@]}" run -d --name bench --network none --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 --rootfs "$tree:O" /bin/sleep 3600 >/dev/null
join=$tmp/join.json
up oci crun
hyperfine -N --style basic --warmup 10 --runs "$runs" --export-json "$join" \
	-n ns-join "$kp exec ns -- /bin/true" \
	-n oci-crun-join "env KARAPACE_OCI_RUNTIME=crun $kp exec oci -- /bin/true" \
	${podman:+-n podman-exec "${pod[*]} exec bench /bin/true"} >/dev/null
KARAPACE_OCI_RUNTIME=crun "$kp" stop oci >/dev/null
up oci runc
join2=$tmp/join2.json
hyperfine -N --style basic --warmup 10 --runs "$runs" --export-json "$join2" \
	-n oci-runc-join "env KARAPACE_OCI_RUNTIME=runc $kp exec oci -- /bin/true" >/dev/null

median() { # file name -> median seconds
	awk -v n="\"$2\"" '$1 == "\"command\":" && $2 == n"," {f=1} f && $1 == "\"median\":" {gsub(",", "", $2); print $2; exit}' "$1"
}
pj=$([ -n "$podman" ] && median "$join" podman-exec || echo 0)
awk -v nc="$(median "$cold" ns-cold)" -v cc="$(median "$cold" oci-crun-cold)" -v rc="$(median "$cold" oci-runc-cold)" \
	-v nj="$(median "$join" ns-join)" -v cj="$(median "$join" oci-crun-join)" -v rj="$(median "$join2" oci-runc-join)" \
	-v pj="$pj" 'BEGIN {
	printf "joining exec  namespace %7.2f ms  oci/crun %7.2f ms (%.2fx namespace)  oci/runc %7.2f ms (%.2fx namespace)\n", nj*1000, cj*1000, cj/nj, rj*1000, rj/nj
	if (pj > 0) printf "podman exec   %7.2f ms  oci/crun %.2fx podman  oci/runc %.2fx podman\n", pj*1000, cj/pj, rj/pj
	printf "cold exec     namespace %7.2f ms  oci/crun %7.2f ms (%.2fx)  oci/runc %7.2f ms (%.2fx)\n", nc*1000, cc*1000, cc/nc, rc*1000, rc/nc
}'
