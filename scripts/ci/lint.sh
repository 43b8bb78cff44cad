#!/usr/bin/env bash
# Format, lints (the workspace's and the fuzz crate's, with and without
# --cfg loom), rustdoc with warnings denied, and `cargo package` of the
# crates others may use.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p ipcd-ring --features std --all-targets --locked -- -D warnings
cargo +nightly clippy --manifest-path fuzz/Cargo.toml --locked -- -D warnings
# A target directory of its own: --cfg loom would otherwise rebuild everything.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo clippy -p ipcd-ring --tests --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
RUSTDOCFLAGS="-D warnings" cargo doc -p ipcd-ring --features std --no-deps --locked
# The two crates meant for others package and build alone.
cargo package -p ipcd-ring -p ipcd-proto --locked --allow-dirty --quiet
