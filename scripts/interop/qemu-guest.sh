#!/usr/bin/env bash
# Boots one test guest (from build-guest.sh) on a vhost-user socket and returns when it
# powers off. With --log, the serial console goes to FILE and the guest's VS-RESULT lines
# (one per step) are printed; the exit status is then 0 if every step has ok=1, 1 if one
# has ok=0, 2 for no result.
#
# Usage: qemu-guest.sh --sock PATH [--mac MAC] [--server | --reconnect SEC] [--hugepages]
#          [--mem MiB] [--mode STEP[+STEP...]] [--ip ADDR/PREFIX] [--peer ADDR]
#          [--size MiB] [--count N] [--linger SEC] [--guest-timeout SEC]
#          [--append 'KERNEL ARGS'] [--log FILE] [--timeout SEC] [--guest-dir DIR]
#          [--cpu LIST]
#   STEP: link | ping | tcp-send | tcp-recv | ping-loop (see the guest's /init in
#         build-guest.sh); --count is ping-loop's number of probes, --linger keeps the
#         guest up that long after its last step.
#   --server         QEMU listens on PATH (server=on,wait=off) and the backend connects
#   --reconnect SEC  as client, reconnect every SEC s after the backend goes away
#                    (default 1; 0 = plain client: the link stays down after a crash)
#   --cpu LIST       run QEMU under `taskset -c LIST` (keep TCG off the switch's PMD core)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sock='' mac=52:54:00:00:00:01 server=0 huge=0 mem=256 mode=link ip='' peer='' size=''
gtimeout='' append='' log='' timeout=180 gdir=$here/out count='' linger='' reconnect=1 cpu=''
while [ $# -gt 0 ]; do
    case $1 in
        --sock) sock=$2; shift ;;
        --mac) mac=$2; shift ;;
        --server) server=1 ;;
        --hugepages) huge=1 ;;
        --mem) mem=$2; shift ;;
        --mode) mode=$2; shift ;;
        --ip) ip=$2; shift ;;
        --peer) peer=$2; shift ;;
        --size) size=$2; shift ;;
        --count) count=$2; shift ;;
        --linger) linger=$2; shift ;;
        --reconnect) reconnect=$2; shift ;;
        --cpu) cpu=$2; shift ;;
        --guest-timeout) gtimeout=$2; shift ;;
        --append) append=$2; shift ;;
        --log) log=$2; shift ;;
        --timeout) timeout=$2; shift ;;
        --guest-dir) gdir=$2; shift ;;
        *) echo "qemu-guest: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done
[ -n "$sock" ] || { echo "qemu-guest: --sock PATH is required" >&2; exit 64; }
for f in vmlinuz initramfs.cpio.gz; do
    [ -f "$gdir/$f" ] || { echo "qemu-guest: $gdir/$f missing: run build-guest.sh" >&2; exit 1; }
done

# /dev/kvm here may be a nested PVM hypervisor on which Debian kernels hang: use TCG.
if [ -e /sys/module/kvm_pvm ] || [ ! -w /dev/kvm ]; then
    accel=(-accel tcg)
else
    accel=(-accel kvm -cpu host)
fi
# vhost-user maps guest RAM from the fd QEMU passes, so RAM must be a shareable file.
if [ "$huge" = 1 ]; then
    memobj=memory-backend-file,id=mem,size=${mem}M,mem-path=/dev/hugepages,share=on
else
    memobj=memory-backend-memfd,id=mem,size=${mem}M,share=on
fi
if [ "$server" = 1 ]; then
    chardev=socket,id=c0,path=$sock,server=on,wait=off
elif [ "$reconnect" = 0 ]; then
    chardev=socket,id=c0,path=$sock
else
    chardev=socket,id=c0,path=$sock,reconnect=$reconnect
fi
pin=()
[ -z "$cpu" ] || pin=(taskset -c "$cpu")
# quiet: serial output is slow under TCG and the result line must stay readable.
cmdline="console=ttyS0 panic=-1 quiet vs.mode=$mode"
[ -z "$ip" ] || cmdline+=" vs.ip=$ip"
[ -z "$peer" ] || cmdline+=" vs.peer=$peer"
[ -z "$size" ] || cmdline+=" vs.size=$size"
[ -z "$gtimeout" ] || cmdline+=" vs.timeout=$gtimeout"
[ -z "$count" ] || cmdline+=" vs.count=$count"
[ -z "$linger" ] || cmdline+=" vs.linger=$linger"
[ -z "$append" ] || cmdline+=" $append"
if [ -n "$log" ]; then
    : >"$log"
    serial=(-serial "file:$log")
else
    serial=(-serial stdio)
fi

status=0
# vectors=0: under TCG QEMU 7.2 segfaults at DRIVER_OK with MSI-X on a vhost-user device.
# romfile=: the direct-kernel boot needs no iPXE option ROM.
timeout -k 5 "$timeout" "${pin[@]}" qemu-system-x86_64 "${accel[@]}" -nodefaults -nographic -monitor none \
    -no-reboot -m "${mem}M" -smp 1 \
    -object "$memobj" -numa node,memdev=mem \
    -kernel "$gdir/vmlinuz" -initrd "$gdir/initramfs.cpio.gz" -append "$cmdline" \
    -chardev "$chardev" -netdev vhost-user,id=n0,chardev=c0 \
    -device "virtio-net-pci,netdev=n0,mac=$mac,vectors=0,romfile=" \
    "${serial[@]}" </dev/null || status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "qemu-guest: timed out after ${timeout}s" >&2
fi
[ -n "$log" ] || exit "$status"
# A line may follow firmware escape codes on the same serial line: cut them off.
lines=$(grep -a -o 'VS-RESULT.*' "$log" | tr -d '\r' || true)
if [ -z "$lines" ]; then
    echo "qemu-guest: no VS-RESULT in $log (qemu status $status)" >&2
    exit 2
fi
echo "$lines"
case $lines in *" ok=0 "*) exit 1 ;; *) exit 0 ;; esac
