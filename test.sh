#!/usr/bin/env bash
# Installs everything the tests need on Debian or Ubuntu, then runs all of
# them: gofmt, go vet, two builds compared byte for byte, the fast tier
# under the race detector, the whole suite as root, then the same suite
# again as an ordinary user with a subordinate ID range (rootless).
# Tests run strict: a missing prerequisite fails a test instead of skipping.
#
# The fast tier needs none of this: 'go test .' as any user runs the unit
# and mock tests in about a minute; the real ones (root filesystems,
# namespaces, servers) skip with a message unless KARAPACE_TEST_STRICT=1
# or KARAPACE_TEST_ROOTFS_TAR is set.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null; then
		exec sudo --preserve-env=PATH,GOPATH,GOMODCACHE,GOCACHE,GOPROXY,GOFLAGS,GOTOOLCHAIN "$0" "$@"
	fi
	echo "test.sh: run it as root (it installs packages and adds a test user): su -c $0" >&2
	exit 1
fi

# Go first: without it nothing else is worth installing.
export PATH="$PATH:/usr/local/go/bin"
go_fix="install Go 1.26 or newer from https://go.dev/dl/ (for example: curl -LO https://go.dev/dl/go1.26.0.linux-amd64.tar.gz && rm -rf /usr/local/go && tar -C /usr/local -xzf go1.26.0.linux-amd64.tar.gz); Debian's and Ubuntu's golang-go packages are older"
command -v go >/dev/null || { echo "test.sh: no go on PATH: $go_fix" >&2; exit 1; }
go_version=$(go env GOVERSION 2>/dev/null || true)
if ! [[ $go_version =~ ^go1\.([0-9]+) ]] || [ "${BASH_REMATCH[1]}" -lt 26 ]; then
	echo "test.sh: ${go_version:-this go} is too old: $go_fix" >&2
	exit 1
fi

# gcc and the C library's headers: the race detector needs cgo.
packages=(
	ca-certificates tar xz-utils zstd gnupg debian-archive-keyring gcc libc6-dev
	mmdebstrap uidmap fuse-overlayfs bubblewrap crun runc
	tmux dbus mandoc desktop-file-utils docker-registry hyperfine zsh fish elvish
)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"

# An ordinary user with a subordinate ID range runs the suite a second
# time. useradd gives a new user a range where login.defs says so; one that
# has none gets the first free one, after every range already given.
test_user=karapace-test
id "$test_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$test_user"
touch /etc/subuid /etc/subgid
start=$(awk -F: 'BEGIN { e = 100000 } $3 > 0 && $2 + $3 > e { e = $2 + $3 } END { print int((e + 65535) / 65536) * 65536 }' /etc/subuid /etc/subgid)
grep -q "^$test_user:" /etc/subuid || usermod --add-subuids "$start-$((start + 65535))" "$test_user"
grep -q "^$test_user:" /etc/subgid || usermod --add-subgids "$start-$((start + 65535))" "$test_user"

# fuse-overlayfs, the fallback overlay, needs /dev/fuse as udev leaves it
# on most systems (machines without udev keep the kernel's 0600).
[ ! -c /dev/fuse ] || chmod 666 /dev/fuse

# One Debian root filesystem, made once and shared by every test that needs one.
cache=${KARAPACE_TEST_CACHE:-/var/cache/karapace-test}
mkdir -p "$cache"
chmod 755 "$cache"
rootfs=$cache/bookworm-minbase.tar
if [ ! -s "$rootfs" ]; then
	mmdebstrap --quiet --variant=minbase --format=tar bookworm "$rootfs.tmp"
	mv "$rootfs.tmp" "$rootfs"
fi
if [ ! -s "$rootfs.xz" ]; then
	xz -T0 -3 -c "$rootfs" > "$rootfs.xz.tmp"
	mv "$rootfs.xz.tmp" "$rootfs.xz"
fi
chmod 644 "$rootfs" "$rootfs.xz"
export KARAPACE_TEST_ROOTFS_TAR=$rootfs
export KARAPACE_TEST_STRICT=1
# Race-enabled binaries the tests start as karapace would each sleep 1 s at exit.
export GORACE=atexit_sleep_ms=0
# The official TOML test suite, from the Go module proxy (not copied into the repository).
TOML_TEST_DIR="$(cd bench && go mod download github.com/toml-lang/toml-test/v2 && go list -m -f '{{.Dir}}' github.com/toml-lang/toml-test/v2)/tests"
export TOML_TEST_DIR

# The sources, from a clone or from a tarball without .git.
mapfile -t sources < <(find . -name .git -prune -o -name '*.go' -print | sort)
unformatted=$(gofmt -l "${sources[@]}")
if [ -n "$unformatted" ]; then
	echo "test.sh: gofmt would change: $unformatted" >&2
	exit 1
fi
go vet .
# Reproducible: two builds give the same bytes.
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$cache/karapace.a" .
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$cache/karapace.b" .
cmp "$cache/karapace.a" "$cache/karapace.b"
rm -f "$cache/karapace.a" "$cache/karapace.b"
# The race detector over the fast tier: the unit and mock tests, in
# process (the engine, the servers, the D-Bus service and the UI with their
# goroutines). The tests of the real thing run in the next two passes
# without it: under it every karapace they start runs 5-10 times slower,
# and the suite would not fit CI's 45 minutes on 2 cores.
# -short: the exhaustive bit flips and the largest streams run in the
# next passes.
KARAPACE_TEST_TIER=fast go test -race -short -count=1 -timeout 20m ./...
# Everything, as root.
go test -count=1 -timeout 30m ./...

# Rootless: the same tests, as the ordinary user, from a copy it can read.
work=$cache/rootless
rm -rf "$work"
mkdir -p "$work/src"
tar --exclude=./.git -cf - . | tar -C "$work/src" -xf -
cp -r "$TOML_TEST_DIR" "$work/toml-tests"
cd "$work/src"
go test -c -o "$work/karapace.test" .
chown -R "$test_user:" "$work"
runuser -u "$test_user" -- env -i PATH="$PATH" HOME="/home/$test_user" GORACE="$GORACE" \
	KARAPACE_TEST_STRICT=1 KARAPACE_TEST_ROOTLESS=1 KARAPACE_TEST_ROOTFS_TAR="$rootfs" TOML_TEST_DIR="$work/toml-tests" \
	"$work/karapace.test" -test.count=1 -test.timeout 45m
echo "test.sh: all tests passed (root and rootless)"
