#!/usr/bin/env bash
# Installs what ipcd's build and `ipcd bench` need on a fresh Debian
# machine; with --test, also what only the test suite needs (a nightly
# toolchain with Miri, cargo-fuzz, CPython's test package). Idempotent:
# quick when everything is already there. Called by the README's first
# command and by scripts/test.sh (and so by CI) with --test.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[[ ${1:-} == --test ]] && TEST=1

log() { printf 'setup: %s\n' "$*" >&2; }

# System packages. Keep these lists the one place they are named.
APT_PACKAGES=(build-essential pkg-config ca-certificates curl systemd tcpdump fonts-dejavu-core)
# Real programs the compatibility tests and `ipcd bench` run under ipcd.
# Best effort: a program that cannot be installed makes its test skip, and
# say so, rather than the whole suite fail.
PROGRAM_PACKAGES=(redis-server redis-tools nginx-light wrk sockperf iperf3 socat python3 nodejs)

# Prints the packages of "$@" that are not installed.
missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
mapfile -t need < <(missing "${APT_PACKAGES[@]}")
if ((${#need[@]})); then
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
mapfile -t need < <(missing "${PROGRAM_PACKAGES[@]}")
if ((${#need[@]})); then
    log "installing ${need[*]}"
    $SUDO apt-get update -qq || true
    for p in "${need[@]}"; do
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$p" >/dev/null || log "could not install $p; its tests will skip"
    done
fi
# Rust: the stable toolchain pinned in rust-toolchain.toml.
if ! command -v rustup >/dev/null; then
    log "installing rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi
rustup show active-toolchain >/dev/null # installs the pinned toolchain if absent
if ((TEST == 0)); then
    log "ok"
    exit 0
fi
# CPython's own socket tests (run by ipcd-tests/tests/suites.rs)
# ship in a package of their own on Debian.
if command -v python3 >/dev/null && ! python3 -c 'import test.test_socket' 2>/dev/null; then
    v=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "libpython$v-testsuite" >/dev/null ||
        log "could not install libpython$v-testsuite; the CPython suite will skip"
fi

# For the tests: a nightly with Miri (UB checks of ipcd-ring) and rust-src
# (Miri's sysroot, cargo-fuzz).
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri'; then
    log "installing nightly with miri and rust-src"
    rustup toolchain install nightly --profile minimal --component miri,rust-src
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
log "ok"
