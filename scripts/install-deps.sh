#!/usr/bin/env bash
# Installs what the tests and interop runs need from Debian's packages, if missing:
# dpdk-dev (holds dpdk-testpmd), qemu-system-x86, busybox-static, and cpio + kmod for the
# QEMU guest image (scripts/interop/build-guest.sh). Needs root.
set -euo pipefail
need=()
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v modinfo >/dev/null || [ -x /sbin/modinfo ] || need+=(kmod)
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "install-deps: dpdk-testpmd $(dpdk-testpmd --version 2>/dev/null | head -1 || true), $(qemu-system-x86_64 --version | head -1)"
