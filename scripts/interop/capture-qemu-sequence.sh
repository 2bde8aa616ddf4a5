#!/usr/bin/env bash
# Records which vhost-user requests QEMU 7.2 + a Linux guest send to vhost-switch over one
# device lifetime: the guest brings eth0 up (the driver reaches DRIVER_OK) and powers off
# (QEMU stops the device). Prints the request sequence, every rejected request and the
# guest's VS-RESULT line. Exits non-zero if the guest failed or anything was rejected.
#
# Usage: capture-qemu-sequence.sh [--hugepages] [--qemu-server] [--keep]
#   --hugepages    guest RAM on /dev/hugepages (needs: echo 512 > /proc/sys/vm/nr_hugepages
#                  and hugetlbfs mounted there, e.g. scripts/setup-hugepages.sh)
#   --qemu-server  QEMU listens (server=on,wait=off) and the switch connects (--client)
#   --keep         keep the work directory (logs) and print its path
# Env: VHOST_SWITCH=path to the binary (default target/release/vhost-switch)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${VHOST_SWITCH:-$here/../../target/release/vhost-switch}
huge=0 qserver=0 keep=0
for a in "$@"; do
    case $a in
        --hugepages) huge=1 ;;
        --qemu-server) qserver=1 ;;
        --keep) keep=1 ;;
        *) echo "capture: unknown argument $a" >&2; exit 64 ;;
    esac
done
[ -x "$bin" ] || { echo "capture: $bin missing: cargo build --release" >&2; exit 1; }
if [ "$huge" = 1 ]; then
    # 256 MiB of guest RAM = 128 free 2 MiB pages; QEMU fails obscurely without them.
    if ! mountpoint -q /dev/hugepages || [ "$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)" -lt 128 ]; then
        echo "capture: need hugetlbfs on /dev/hugepages with >= 128 free pages" >&2; exit 1
    fi
fi
"$here/build-guest.sh" >/dev/null

dir=$(mktemp -d)
sw='' qm=''
cleanup() {
    [ -z "$qm" ] || kill "$qm" 2>/dev/null || true
    [ -z "$sw" ] || kill "$sw" 2>/dev/null || true
    if [ "$keep" = 1 ]; then echo "logs kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
sock=$dir/p0.sock
guest_args=(--sock "$sock" --mode link --log "$dir/guest.log" --timeout 120)
[ "$huge" = 1 ] && guest_args+=(--hugepages)

wait_sock() {
    local _
    for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.1; done
    echo "capture: $sock never appeared" >&2; exit 1
}
start_switch() {
    RUST_LOG=vhost_switch=debug "$bin" run "$@" >"$dir/switch.out" 2>"$dir/switch.log" &
    sw=$!
}

t0=$(date +%s.%N)
gstatus=0
if [ "$qserver" = 1 ]; then
    # QEMU creates the socket and blocks at netdev init until the switch connects.
    "$here/qemu-guest.sh" "${guest_args[@]}" --server >"$dir/result" 2>"$dir/qemu.err" &
    qm=$!
    wait_sock
    start_switch --client "c0=$sock"
    wait "$qm" || gstatus=$?
    qm=''
else
    start_switch --port "p0=$sock"
    wait_sock
    t0=$(date +%s.%N)
    "$here/qemu-guest.sh" "${guest_args[@]}" >"$dir/result" 2>"$dir/qemu.err" || gstatus=$?
fi
t1=$(date +%s.%N)
kill -INT "$sw"
wait "$sw" || echo "capture: switch exited with status $?" >&2
sw=''

# The switch writes plain text to a file, but strip colour codes in case it ever doesn't.
sed 's/\x1b\[[0-9;]*m//g' "$dir/switch.log" >"$dir/switch.txt"
echo "== (a) vhost-user requests received (consecutive repeats folded) =="
awk '/ request port=/ {
        name = ""; nr = ""; fds = 0
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^request=/) name = substr($i, 9)
            if ($i ~ /^need_reply=/) nr = substr($i, 12)
            if ($i ~ /^fds=/) fds = substr($i, 5)
        }
        key = name (nr == "true" ? " [need_reply]" : "") (fds > 0 ? " [fds=" fds "]" : "")
        if (key == prev) { n++; next }
        if (prev != "") print "  " prev (n > 1 ? " x" n : "")
        prev = key; n = 1
     }
     END { if (prev != "") print "  " prev (n > 1 ? " x" n : "") }' "$dir/switch.txt"
echo "== (b) rejected requests =="
rejected=$(grep -c 'rejected:' "$dir/switch.txt" || true)
grep 'rejected:' "$dir/switch.txt" || echo "  none"
echo "== (c) guest =="
cat "$dir/result"
[ "$gstatus" = 0 ] || echo "capture: qemu-guest.sh exited with status $gstatus" >&2
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "  wall time QEMU start to power-off: %.1f s\n", b - a }'
echo "== QEMU stderr =="
sed 's/^/  /' "$dir/qemu.err"
echo "== switch counters =="
cat "$dir/switch.out"
[ "$gstatus" = 0 ] && [ "$rejected" = 0 ]
