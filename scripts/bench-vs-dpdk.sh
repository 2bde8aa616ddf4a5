#!/usr/bin/env bash
# vhost-switch against DPDK's vhost backend with the same generator and core pinning,
# alternating backends run by run; prints median Mpps per backend and the ratio, writes
# JSON (default docs/bench/latest.json). Options are passed to scripts/bench_vs_dpdk.py
# (--runs N --sizes 64,512,1500 --seconds S --generators pktgen,testpmd --json FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
scripts/setup-hugepages.sh 512
cargo build --release --workspace
python3 scripts/bench_vs_dpdk.py "$@"
scripts/plot-bench.sh
