#!/usr/bin/env bash
# The whole test suite, as the README gives it: installs the peers (DPDK testpmd, QEMU),
# reserves hugepages, then checks formatting and lints and runs every test. Run as root.
# Peers and hugepages are required here: a missing one fails the run instead of skipping.
# Then every fuzz target runs FUZZ_SECONDS (default 60) from its committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/setup-hugepages.sh 512
export VHOST_SWITCH_REQUIRE_PEERS=1 VHOST_SWITCH_REQUIRE_HUGEPAGES=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
scripts/fuzz.sh
