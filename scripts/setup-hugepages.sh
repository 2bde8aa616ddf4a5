#!/usr/bin/env bash
# Reserves N 2 MiB hugepages (default 512 = 1 GiB) and makes sure hugetlbfs is mounted at
# /dev/hugepages. Needs root. Prints what it got; exits non-zero if none could be reserved.
set -euo pipefail
want=${1:-512}
if [ "$(id -u)" != 0 ]; then
    echo "setup-hugepages: needs root" >&2
    exit 1
fi
have=$(cat /proc/sys/vm/nr_hugepages)
if [ "$have" -lt "$want" ]; then
    echo "$want" > /proc/sys/vm/nr_hugepages
fi
if ! mountpoint -q /dev/hugepages; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages
fi
got=$(cat /proc/sys/vm/nr_hugepages)
echo "setup-hugepages: $got hugepages of $(awk '/Hugepagesize/ {print $2 $3}' /proc/meminfo) reserved"
[ "$got" -gt 0 ]
