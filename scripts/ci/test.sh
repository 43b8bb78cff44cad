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
