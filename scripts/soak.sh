#!/usr/bin/env bash
# The soak test: SOAK_SECONDS (default 600, or the first argument) of verified traffic,
# reconnects, ring stop/start cycles, memory table swaps and a vandalised guest ring, then
# conservation, no duplicate, and resident memory growth within 16 MiB. Bounded; stops by
# itself. Prints one summary line; docs/reliability.md records the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export SOAK_SECONDS=${1:-${SOAK_SECONDS:-600}}
cargo test --release --test soak -- --ignored --nocapture 2>&1 | grep -E '^soak:|panicked|test result' 
