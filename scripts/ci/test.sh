#!/usr/bin/env bash
# Unit, integration and property tests, in release (the integration tests
# run the built `ipcd` and `libipcd_preload.so`, artifacts of other
# packages that `cargo test` alone does not promise to build).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --workspace --release --locked
# Other projects' suites (tokio's, the kernel's) that ipcd-tests/tests/suites.rs runs.
scripts/suites.sh
cargo test --workspace --release --locked
# ipcd-ring's `std` feature (nothing in the workspace turns it on): the
# embedding API's doc tests and its two-process example, run as a test.
cargo test -p ipcd-ring --features std --release --locked --lib --examples
cargo test -p ipcd-ring --features std --release --locked --doc
