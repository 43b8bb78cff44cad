#!/usr/bin/env bash
# Format, lints (the workspace's and the fuzz crate's, with and without
# --cfg loom) and rustdoc with warnings denied.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo +nightly clippy --manifest-path fuzz/Cargo.toml --locked -- -D warnings
# A target directory of its own: --cfg loom would otherwise rebuild everything.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo clippy -p ipcd-ring --tests --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
