#!/bin/bash
# Push and pull throughput of a ~200 MB environment on loopback, against
# curl moving the same bytes to and from the same server, in one run:
#   karapace push        to a fresh server        vs  curl -T (PUT) of every blob, in the same order
#   karapace pull        into a fresh store       vs  curl -o (GET) of every blob into files,
#                                                     and the same followed by sync of the files
# and the ratios (curl's time / karapace's time; goal >= 0.8). Both sides
# go through the same server, which hashes and fsyncs every upload; the
# pull also hashes and fsyncs what it receives, curl -o does neither
# (hence the durable curl+sync line: on a virtual disk the flush of 200 MB
# alone can take 0.1 s).
# Needs curl.
#
#   bench/remote.sh            (SIZE_MB=200 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
size_mb=${SIZE_MB:-200}
command -v curl >/dev/null || { echo "bench/remote.sh: curl is needed" >&2; exit 1; }

tmp=$(mktemp -d /var/tmp/karapace-bench-remote.XXXXXX)
kp=$tmp/karapace
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$kp" .

# A mock environment whose base layer holds SIZE_MB random (incompressible) bytes.
mkdir -p "$tmp/project/img"
head -c "${size_mb}M" /dev/urandom > "$tmp/project/img/big.bin"
tar -C "$tmp/project/img" -cf "$tmp/project/image.tar" .
rm -rf "$tmp/project/img"
printf 'manifest_version = 1\n[base]\nimage = "./image.tar"\n[runtime]\nbackend = "mock"\n' > "$tmp/project/karapace.toml"
KARAPACE_STORE=$tmp/a "$kp" build --name bench "$tmp/project/karapace.toml" >/dev/null 2>&1
token=bench-token-0123456789abcdef
echo "$token rw" > "$tmp/tokens"
chmod 600 "$tmp/tokens"
export KARAPACE_TOKEN=$token

start_server() { # DIR → sets url
	"$kp" server --listen 127.0.0.1:0 --data "$1" --tokens "$tmp/tokens" > "$1.url" 2>/dev/null &
	pids+=($!)
	for _ in $(seq 100); do [ -s "$1.url" ] && break; sleep 0.05; done
	url=$(head -1 "$1.url")
}
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / 1048576 / s }'; }

# The blobs of the environment, in the order push sends them: objects,
# layers, metadata (the store holds this one environment only).
s=$tmp/a/store
blobs=()
for f in "$s"/objects/*; do blobs+=("object/$(basename "$f")"); done
for f in "$s"/layers/*; do blobs+=("layer/$(basename "$f")"); done
id=$(ls "$s/metadata")
blobs+=("metadata/$id")
bytes=$(du -cb "$s"/objects/* "$s"/layers/* "$s"/metadata/* | tail -1 | cut -f1)
file_of() { case $1 in object/*) echo "$s/objects/${1#object/}" ;; layer/*) echo "$s/layers/${1#layer/}" ;; metadata/*) echo "$s/metadata/${1#metadata/}" ;; esac; }

# Each measure runs ROUNDS times, the two sides alternating, into fresh
# servers and stores; the medians count (one run of a 0.4 s transfer is
# at the mercy of the page cache's writeback of the run before).
rounds=${ROUNDS:-5}
run_push() {
	start_server "$tmp/srv-kp-$1"
	sync
	t0=$(now)
	KARAPACE_STORE=$tmp/a "$kp" push bench --remote "$url" >/dev/null
	elapsed "$t0" "$(now)"
}
run_curl_up() {
	start_server "$tmp/srv-curl-$1"
	sync
	t0=$(now)
	for b in "${blobs[@]}"; do
		curl -sS -f -o /dev/null -H "Authorization: Bearer $token" -T "$(file_of "$b")" "$url/blobs/$b"
	done
	elapsed "$t0" "$(now)"
}
run_pull() {
	rm -rf "$tmp/b"
	sync
	t0=$(now)
	KARAPACE_STORE=$tmp/b "$kp" pull "$id" --remote "$kp_url" >/dev/null 2>&1
	elapsed "$t0" "$(now)"
}
run_curl_down() { # durable: also sync the files, as a pull fsyncs them
	rm -rf "$tmp/down"
	mkdir -p "$tmp/down"
	sync
	t0=$(now)
	for b in "${blobs[@]}"; do
		curl -sS -f -H "Authorization: Bearer $token" -o "$tmp/down/${b//\//-}" "$kp_url/blobs/$b"
	done
	[ -z "$1" ] || sync "$tmp"/down/* "$tmp/down"
	elapsed "$t0" "$(now)"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
start_server "$tmp/srv-kp"
kp_url=$url
KARAPACE_STORE=$tmp/a "$kp" push bench --remote "$kp_url" >/dev/null
P=() CU=() L=() CD=() CS=()
for r in $(seq "$rounds"); do
	if ((r % 2)); then
		P+=("$(run_push "$r")") CU+=("$(run_curl_up "$r")")
		L+=("$(run_pull)") CD+=("$(run_curl_down "")") CS+=("$(run_curl_down sync)")
	else
		CU+=("$(run_curl_up "$r")") P+=("$(run_push "$r")")
		CS+=("$(run_curl_down sync)") CD+=("$(run_curl_down "")") L+=("$(run_pull)")
	fi
	for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
	pids=("${pids[0]}")
	rm -rf "$tmp"/srv-kp-* "$tmp"/srv-curl-*
done
push=$(median "${P[@]}") curl_up=$(median "${CU[@]}") pull=$(median "${L[@]}")
curl_down=$(median "${CD[@]}") curl_durable=$(median "${CS[@]}")
run_pull >/dev/null
echo "rounds (s): push ${P[*]}; curl up ${CU[*]}; pull ${L[*]}; curl down ${CD[*]}; curl down+sync ${CS[*]}"
KARAPACE_STORE=$tmp/b "$kp" verify-store >/dev/null
echo "environment: ${#blobs[@]} blobs, $((bytes / 1048576)) MiB; medians of $rounds rounds; load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus"
printf '%-28s %8ss %6s MiB/s\n' "karapace push" "$push" "$(mbps "$bytes" "$push")"
printf '%-28s %8ss %6s MiB/s\n' "curl -T (PUT), same blobs" "$curl_up" "$(mbps "$bytes" "$curl_up")"
printf '%-28s %8ss %6s MiB/s\n' "karapace pull" "$pull" "$(mbps "$bytes" "$pull")"
printf '%-28s %8ss %6s MiB/s\n' "curl -o (GET), same blobs" "$curl_down" "$(mbps "$bytes" "$curl_down")"
printf '%-28s %8ss %6s MiB/s\n' "curl -o, then sync the files" "$curl_durable" "$(mbps "$bytes" "$curl_durable")"
awk -v p="$push" -v cu="$curl_up" -v l="$pull" -v cd="$curl_down" -v cs="$curl_durable" 'BEGIN {
	printf "push: %.2fx curl   pull: %.2fx curl, %.2fx curl+sync   (goal >= 0.8x)\n", cu / p, cd / l, cs / l }'
