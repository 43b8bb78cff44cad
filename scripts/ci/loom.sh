#!/usr/bin/env bash
# The loom models of the ring's wait/wake protocol and request paths,
# bounded so the stage stays within minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-3} CARGO_TARGET_DIR=target/loom \
    cargo test -p ipcd-ring --release --locked --test loom_ring
