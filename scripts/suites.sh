#!/usr/bin/env bash
# Fetches and builds other projects' socket test suites, which
# ipcd-tests/tests/suites.rs runs natively and under ipcd:
#   target/suites/tokio      tokio's TCP integration tests, from crates.io
#   target/suites/kselftest  TCP programs of the kernel's selftests/net, from
#                            Debian's linux-source package
# (CPython's own tests come with its test package; scripts/setup.sh installs
# it.) Best effort and idempotent: a suite that cannot be fetched is left
# out, and its test says so and skips.
set -uo pipefail
cd "$(dirname "$0")/.."

log() { printf 'suites: %s\n' "$*" >&2; }
OUT=$PWD/target/suites
mkdir -p "$OUT"

TOKIO_VERSION=1.54.1
TOKIO_TESTS=(tcp_stream tcp_echo tcp_shutdown tcp_accept tcp_connect tcp_peek tcp_split tcp_into_split tcp_socket)
# Kernel programs that are TCP (or bind/listen) tests and run unprivileged
# on loopback; nettest and msg_zerocopy run as a server and a client.
KSELFTESTS=(tcp_inq nettest msg_zerocopy reuseport_addr_any reuseport_dualstack reuseaddr_conflict socket sk_connect_zero_addr)

# A suite is rebuilt when what it was built from changes (the marker holds it).
built() { [[ -f $1/.built && $(cat "$1/.built") == "$2" ]]; }

tokio() {
    local dst=$OUT/tokio
    local what="tokio $TOKIO_VERSION: ${TOKIO_TESTS[*]}"
    if built "$dst" "$what"; then return 0; fi
    # A throwaway package that depends on tokio makes cargo fetch its
    # sources (tests included) from whatever registry cargo is set up for.
    local probe
    probe=$(mktemp -d)
    mkdir "$probe/src" && : >"$probe/src/lib.rs"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ntokio = "=%s"\n' \
        "$TOKIO_VERSION" >"$probe/Cargo.toml"
    local manifest
    manifest=$(cargo metadata --manifest-path "$probe/Cargo.toml" --format-version 1 2>/dev/null |
        python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="tokio"))') ||
        { log "cannot fetch tokio $TOKIO_VERSION"; rm -rf "$probe"; return 1; }
    rm -rf "$probe" "$dst"
    cp -r "$(dirname "$manifest")" "$dst"
    # A workspace of its own, not a stray member of ours (it lives under target/).
    printf '\n[workspace]\n' >>"$dst/Cargo.toml"
    local args=()
    for t in "${TOKIO_TESTS[@]}"; do args+=(--test "$t"); done
    log "building tokio $TOKIO_VERSION's TCP tests"
    # tokio ships its Cargo.lock: the versions it was tested with.
    (cd "$dst" && cargo test --locked --features full --no-run "${args[@]}" >build.log 2>&1) ||
        { log "tokio's tests did not build (see $dst/build.log)"; return 1; }
    printf '%s\n' "${TOKIO_TESTS[@]}" >"$dst/tests.txt"
    echo "$what" >"$dst/.built"
}

kselftest() {
    local dst=$OUT/kselftest
    local what="${KSELFTESTS[*]}"
    if built "$dst" "$what"; then return 0; fi
    local pkg
    pkg=$(apt-cache depends linux-source 2>/dev/null | awk '/Depends: linux-source-/ {print $2; exit}')
    [[ -n $pkg ]] || { log "no linux-source package known to apt"; return 1; }
    local work
    work=$(mktemp -d)
    log "fetching $pkg for the kernel's net selftests"
    (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || { log "cannot download $pkg"; rm -rf "$work"; return 1; }
    dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$work" --wildcards './usr/src/linux-source-*.tar.xz' &&
        tar -xJf "$work"/usr/src/linux-source-*.tar.xz -C "$work" --wildcards \
            '*/tools/testing/selftests/net/*' '*/tools/testing/selftests/kselftest*' ||
        { log "cannot unpack $pkg"; rm -rf "$work"; return 1; }
    local src
    src=$(echo "$work"/linux-source-*/tools/testing/selftests/net)
    rm -rf "$dst" && mkdir -p "$dst"
    for p in "${KSELFTESTS[@]}"; do
        gcc -O2 -I"$src/.." -o "$dst/$p" "$src/$p.c" -lpthread 2>>"$dst/build.log" || log "$p did not build"
    done
    echo "$pkg" >"$dst/source.txt"
    rm -rf "$work"
    echo "$what" >"$dst/.built"
}

tokio || true
kselftest || true
exit 0
