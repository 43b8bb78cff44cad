#!/usr/bin/env bash
# Builds the Debian package of ipcd from this workspace:
#   scripts/package.sh [OUT_DIR]       (default target/package)
# prints the .deb's path. Installed layout: /usr/bin/ipcd,
# /usr/lib/ipcd/libipcd_preload.so (which `ipcd run` finds from the
# binary's place), the systemd units, man pages (ipcd(1), ipcd-status(1),
# ...), and under /usr/share/doc/ipcd the
# README, the container recipes, an example config file and every
# command's --help.
# With IPCD_BIN_DIR set (a directory holding a built `ipcd` and
# `libipcd_preload.so`), those are packaged and nothing is built.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/package}"
bin="${IPCD_BIN_DIR:-}"
if [[ -z "$bin" ]]; then
    cargo build --release --locked -p ipcd-monitor -p ipcd-preload
    bin=target/release
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -Dm755 "$bin/ipcd" "$root/usr/bin/ipcd"
install -Dm644 "$bin/libipcd_preload.so" "$root/usr/lib/ipcd/libipcd_preload.so"
# Debug info stays in the build tree: the package carries code only.
strip --strip-debug "$root/usr/bin/ipcd" "$root/usr/lib/ipcd/libipcd_preload.so"
install -Dm644 packaging/systemd/ipcd.service "$root/usr/lib/systemd/system/ipcd.service"
install -Dm644 packaging/systemd/user/ipcd.service "$root/usr/lib/systemd/user/ipcd.service"
doc="$root/usr/share/doc/ipcd"
install -Dm644 README.md "$doc/README.md"
install -Dm644 docs/containers.md "$doc/containers.md"
install -Dm644 packaging/ipcd.toml "$doc/ipcd.toml.example"
{
    "$bin/ipcd" --help
    for cmd in daemon run status metrics stop bench "config show"; do
        printf '\n\n== ipcd %s\n\n' "$cmd"
        # shellcheck disable=SC2086 # "config show" is two words
        "$bin/ipcd" $cmd --help
    done
} > "$doc/commands.txt"
# Man pages from the same definitions as --help (`ipcd man`).
"$bin/ipcd" man --out "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: ipcd
Version: $version
Architecture: $arch
Maintainer: ipcd developers <ipcd@localhost>
Depends: libc6
Section: net
Priority: optional
Description: TCP between local processes over shared memory
 ipcd makes TCP connections between unmodified processes on one host run
 over shared-memory rings (LD_PRELOAD of libipcd_preload.so and a monitor
 per user), keeping every socket call's Linux meaning; anything it cannot
 accelerate goes to the kernel.
CONTROL
mkdir -p "$out"
deb="$out/ipcd_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
