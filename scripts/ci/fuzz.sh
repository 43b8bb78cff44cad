#!/usr/bin/env bash
# Each fuzz target from its seeds for FUZZ_SECONDS (default 30; longer
# locally: FUZZ_SECONDS=600 scripts/ci/fuzz.sh). A crash keeps its
# reproducer and fails the stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
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
