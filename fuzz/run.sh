#!/usr/bin/env bash
# Runs the given fuzz targets one after another, each for $SECONDS_PER_TARGET seconds (default
# 3600) under `nice -n 19`, so that it takes only idle CPU, with the flags docs/fuzzing.md
# explains. Each run's output, libFuzzer's final stats included, goes to
# $FUZZ_LOGS/<target>-<UTC time>.log (default fuzz/logs/, not committed); the ledger in
# docs/fuzzing.md is filled from these. Run two of these at once on a 2-core machine at most.
#
# With $NEW_CORPUS set, the inputs a run finds go to $NEW_CORPUS/<target> and the committed
# corpus is only read, so that it stays minimised while the run goes on; merge them later with
# `cargo +nightly fuzz cmin` (docs/fuzzing.md).
#
#   fuzz/run.sh opamp_message selector          # one lane
#   SECONDS_PER_TARGET=1200 fuzz/run.sh api_query
set -uo pipefail
cd "$(dirname "$0")"
seconds=${SECONDS_PER_TARGET:-3600}
logs=${FUZZ_LOGS:-logs}
mkdir -p "$logs"
for target in "$@"; do
    log="$logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
    echo "$(date -u +%FT%TZ) $target for ${seconds}s: $log"
    corpora=()
    if [ -n "${NEW_CORPUS:-}" ]; then
        mkdir -p "$NEW_CORPUS/$target"
        corpora=("$NEW_CORPUS/$target" "corpus/$target")
    fi
    nice -n 19 cargo +nightly fuzz run -s none --debug-assertions "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    echo "$(date -u +%FT%TZ) $target ended with status $? (a crash leaves its input in fuzz/artifacts/$target/)"
done
