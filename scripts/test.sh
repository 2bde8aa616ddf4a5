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
# The lean daemon (without the default `demo` feature) links nothing of ours but pmd, and
# its `demo` refuses in one line (tests/daemon.rs).
cargo clippy -p vhost-switch --no-default-features -- -D warnings
lean_tree=$(cargo tree -p vhost-switch --no-default-features -e normal --prefix none)
if grep -E '^(bench|vhost-kit) ' <<<"$lean_tree"; then
    echo "test: vhost-switch --no-default-features links the crates above" >&2
    exit 1
fi
cargo test -p vhost-switch --no-default-features --test daemon
scripts/fuzz.sh
