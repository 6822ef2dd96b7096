#!/usr/bin/env bash
# Installs everything the tests need on Debian or Ubuntu, then runs all of
# them: gofmt, go vet and the race-enabled suite as root, then the same
# suite again as an ordinary user with a subordinate ID range (rootless),
# without the race detector (the root pass ran every test under it; this
# pass is about permissions, and twice the race detector would double CI).
# Tests run strict: a missing prerequisite fails a test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
	exec sudo --preserve-env=PATH,GOPATH,GOMODCACHE,GOCACHE,GOPROXY,GOFLAGS "$0" "$@"
fi

packages=(
	ca-certificates git tar xz-utils zstd gnupg debian-archive-keyring
	mmdebstrap uidmap fuse-overlayfs bubblewrap crun runc
	tmux dbus mandoc desktop-file-utils docker-registry hyperfine zsh fish elvish
)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"

export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "test.sh: Go 1.26 or newer is needed (https://go.dev/dl/)" >&2; exit 1; }

# An ordinary user with a subordinate ID range runs the suite a second time.
test_user=karapace-test
id "$test_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$test_user"
grep -q "^$test_user:" /etc/subuid || usermod --add-subuids 300000-365535 "$test_user"
grep -q "^$test_user:" /etc/subgid || usermod --add-subgids 300000-365535 "$test_user"

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

unformatted=$(gofmt -l $(git ls-files '*.go'))
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
go test -race -count=1 -timeout 45m ./...

# Rootless: the same tests, as the ordinary user, from a copy it can read.
work=$cache/rootless
rm -rf "$work"
mkdir -p "$work/src"
git ls-files -z | xargs -0 cp --parents -t "$work/src"
cp -r "$TOML_TEST_DIR" "$work/toml-tests"
cd "$work/src"
go test -c -o "$work/karapace.test" .
chown -R "$test_user:" "$work"
runuser -u "$test_user" -- env -i PATH="$PATH" HOME="/home/$test_user" GORACE="$GORACE" \
	KARAPACE_TEST_STRICT=1 KARAPACE_TEST_ROOTLESS=1 KARAPACE_TEST_ROOTFS_TAR="$rootfs" TOML_TEST_DIR="$work/toml-tests" \
	"$work/karapace.test" -test.count=1 -test.timeout 45m
echo "test.sh: all tests passed (root and rootless)"
