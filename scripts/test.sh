#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run calls this, as the README says).
# One script per stage under scripts/ci/; each can be run alone. Timings
# never decide a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test

stage() { printf '\n=== %s\n' "$*"; }

stage "lint: format, clippy, rustdoc"
scripts/ci/lint.sh
stage "tests (release)"
scripts/ci/test.sh
stage "loom models (LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-3})"
scripts/ci/loom.sh
stage "miri (ipcd-ring unit and attach tests)"
scripts/ci/miri.sh
stage "fuzz (${FUZZ_SECONDS:-30}s per target)"
scripts/ci/fuzz.sh
stage "all stages passed"
