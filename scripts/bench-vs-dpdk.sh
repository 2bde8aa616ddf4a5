#!/usr/bin/env bash
# vhost-switch against DPDK's vhost backend with the same generator and core pinning,
# alternating backends pair by pair, each run classed near or far by the core-to-core
# round trip measured just before it; prints median Mpps per backend and their ratio per
# generator, size and class, writes JSON (default docs/bench/latest.json) and its plot
# (beside the JSON as .png; docs/bench/mpps-vs-size.png for the default). Options go to
# scripts/bench_vs_dpdk.py (its --help has the rules): --runs N (counted pairs per class,
# default 5) --max-minutes M (default 40) --sizes 64,512,1500 --seconds S
# --generators pktgen,testpmd --json FILE --switch BIN --pktgen BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
json=docs/bench/latest.json
prev=
for arg in "$@"; do
    [ "$prev" = --json ] && json=$arg
    case $arg in --json=*) json=${arg#--json=} ;; esac
    prev=$arg
done
png=docs/bench/mpps-vs-size.png
[ "$json" = docs/bench/latest.json ] || png=${json%.json}.png
scripts/install-deps.sh
scripts/setup-hugepages.sh 512
cargo build --release --workspace
python3 scripts/bench_vs_dpdk.py "$@"
scripts/plot-bench.sh "$json" "$png"
