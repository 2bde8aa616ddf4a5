#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) from its committed corpus, under
# AddressSanitizer (cargo-fuzz, libFuzzer). A crash fails the run and leaves the input in
# fuzz/artifacts/<target>/: turn it into a regression test. Longer runs:
#   FUZZ_SECONDS=3600 scripts/fuzz.sh            # all targets, an hour each
#   scripts/fuzz.sh ring_fast_path               # one target
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
# Every target must build: a target that no longer compiles is a failure, not a target
# that found nothing.
for t in "${targets[@]}"; do
    if ! cargo fuzz build "$t" >/tmp/fuzz-build-$$.log 2>&1; then
        cat /tmp/fuzz-build-$$.log >&2
        echo "fuzz: $t does not build" >&2
        exit 1
    fi
done
rm -f /tmp/fuzz-build-$$.log
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "fuzz: $t for ${seconds}s"
    log=$(mktemp)
    status=0
    cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+ +DONE|stat::number_of_executed_units|ERROR|SUMMARY|panicked' "$log" || true
    if [ "$status" -ne 0 ] || [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
        tail -40 "$log" >&2
        rm -f "$log"
        echo "fuzz: $t failed (exit $status); crash inputs, if any, in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
