#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run calls this, as the README says).
# Stages: format and lints, unit/integration/property tests, loom models,
# Miri, and a short fuzzing pass. Timings never decide a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

stage() { printf '\n=== %s\n' "$*"; }
# Seconds each fuzz target runs (longer locally: FUZZ_SECONDS=600 scripts/test.sh).
FUZZ_SECONDS=${FUZZ_SECONDS:-30}

stage "format"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

stage "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo +nightly clippy --manifest-path fuzz/Cargo.toml --locked -- -D warnings

stage "tests (release)"
# The integration tests run the built `ipcd` and `libipcd_preload.so`
# (artifacts of other packages, which `cargo test` alone does not promise).
cargo build --workspace --release --locked
# Other projects' suites (tokio's, the kernel's) that tests/suites.rs runs.
scripts/suites.sh
cargo test --workspace --release --locked

stage "loom models (LOOM_MAX_PREEMPTIONS=3)"
# A target directory of its own: --cfg loom would otherwise rebuild everything.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo clippy -p ipcd-ring --tests --locked -- -D warnings
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
    cargo test -p ipcd-ring --release --locked --test loom_ring

stage "miri (ipcd-ring unit and attach tests)"
# The proptest suites and the loom models are left out: Miri runs them too
# slowly to be useful, and the same code paths are covered here.
MIRIFLAGS="-Zmiri-strict-provenance" cargo +nightly miri test -p ipcd-ring --locked --lib --test ring_ops --test segment_attach

stage "fuzz (${FUZZ_SECONDS}s per target)"
for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
    work=$(mktemp -d)
    cp fuzz/seeds/"$target"/* "$work"/
    mkdir "$work/artifacts"
    if ! cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$work" -- -max_total_time="$FUZZ_SECONDS" \
        -artifact_prefix="$work/artifacts/" >"$work/log" 2>&1; then
        tail -n 40 "$work/log"
        echo "fuzz target $target failed; reproducer kept in $work/artifacts" >&2
        exit 1
    fi
    echo "$target: $(grep -E '^Done' "$work/log")"
    rm -rf "$work"
done

stage "all stages passed"
