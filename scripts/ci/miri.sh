#!/usr/bin/env bash
# Miri on ipcd-ring's unit and attach tests (undefined behaviour, strict
# provenance). The proptest suites and the loom models are left out: Miri
# runs them too slowly to be useful, and the same code paths are covered.
set -euo pipefail
cd "$(dirname "$0")/../.."
MIRIFLAGS="-Zmiri-strict-provenance" cargo +nightly miri test -p ipcd-ring --locked --lib --test ring_ops --test segment_attach
