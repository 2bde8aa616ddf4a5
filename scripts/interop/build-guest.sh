#!/usr/bin/env bash
# Builds a tiny test guest from Debian packages: the cloud kernel (virtio drivers as
# modules) plus a busybox-static initramfs whose /init runs the network checks chosen on
# the kernel command line (vs.mode=...) and prints `VS-...` lines on the serial console
# (the list is at the top of the /init below).
#
# Usage: build-guest.sh [OUTDIR]        (default: scripts/interop/out, git-ignored)
# Env:   KERNEL_PKG=linux-image-X-cloud-amd64  pins the kernel (default: what
#        linux-image-cloud-amd64 depends on today).
# Needs: apt-get, dpkg, busybox-static, GNU cpio (for --reproducible), gzip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in apt-get apt-cache dpkg cpio gzip; do
    command -v "$tool" >/dev/null || { echo "build-guest: $tool missing (apt-get install -y cpio)" >&2; exit 1; }
done
# The initramfs has no libc: only the static busybox works there.
dpkg -s busybox-static >/dev/null 2>&1 || { echo "build-guest: apt-get install -y busybox-static" >&2; exit 1; }

pkg=${KERNEL_PKG:-$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
[ -n "$pkg" ] || { echo "build-guest: no linux-image-*-cloud-amd64 known to apt (apt-get update?)" >&2; exit 1; }
ver=$(apt-cache show --no-all-versions "$pkg" | awk '/^Version:/ {print $2; exit}')
kabi=${pkg#linux-image-}
# The stamp ties the output to the exact package and to this script (which embeds /init),
# so editing either forces a rebuild.
stamp="pkg=$pkg version=$ver script=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ] && [ "$(cat "$out/guest.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "build-guest: up to date ($pkg $ver)"
    echo "kernel: $out/vmlinuz"; echo "initrd: $out/initramfs.cpio.gz"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# As root, apt downloads as user _apt: give it a directory it may write (else it warns).
chmod 755 "$work"
mkdir "$work/dl"
chown _apt "$work/dl" 2>/dev/null || true
(cd "$work/dl" && apt-get download -q "$pkg=$ver" >/dev/null)
dpkg -x "$work/dl/${pkg}"_*.deb "$work/deb"
moddir="$work/deb/lib/modules/$kabi/kernel"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"

# The .deb ships no modules.dep: follow each module's `depends=` (from its .modinfo
# section) and emit a post-order list, i.e. dependencies first.
declare -A seen=()
order=()
modfile() { find "$moddir" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" | head -n1; }
add_mod() {
    local m=$1 f dep
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    f=$(modfile "$m")
    [ -n "$f" ] || { echo "build-guest: module $m not in $pkg" >&2; exit 1; }
    # busybox insmod reads plain ELF only: decompress here.
    case $f in
        *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
    for dep in $(tr '\0' '\n' <"$root/lib/modules/$m.ko" | sed -n 's/^depends=//p' | tr ',-' ' _'); do
        add_mod "$dep"
    done
    order+=("$m")
}
for m in virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci failover net_failover virtio_net; do
    add_mod "$m"
done
printf '%s\n' "${order[@]}" >"$root/lib/modules/order"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# PID 1 of the vhost-switch test guest. Kernel parameters:
#   vs.mode=STEP[+STEP...]  steps run in order, each printing one VS-RESULT line:
#       link       eth0 up with carrier (nothing else)
#       ping       3 pings of vs.psize bytes to vs.peer (after waiting for it to answer);
#                  its line says how many IPv4 fragments this guest made and reassembled
#       tcp-send   vs.size MiB of random data to vs.peer:5000, md5 of what was sent
#       tcp-recv   listen on :5000, expect vs.size MiB, md5 of what arrived
#       ping-loop  vs.count probes (1 s timeout each, 0.5 s apart), one VS-PING line each;
#                  keeps going through a link gap (e.g. the switch restarting)
#   vs.ip=ADDR/PREFIX  vs.peer=ADDR  vs.size=MiB (default 16)  vs.count=N (default 20)
#   vs.psize=BYTES  ping payload (default 56; 8972 fills a 9000-byte MTU)
#   vs.mtu=BYTES    eth0's MTU (default: what the device offers, VIRTIO_NET_F_MTU)
#   vs.timeout=SEC  how long to wait for carrier, the peer or a transfer (default 60)
#   vs.linger=SEC   stay up SEC seconds after the last step before powering off (default
#                   0), so that a test can inspect the switch while the guest is attached
# Serial console lines, one each, for tests to grep:
#   VS-BOOT uptime=U                          once per boot (a test checks for no reboot)
#   VS-READY mac=M ip=A mtu=N carrier=C uptime=U  eth0 up, address set, carrier waited for
#   VS-PING n=I ok=0|1 carrier=0|1 uptime=U   each ping-loop probe
#   VS-RESULT mode=STEP ok=0|1 uptime=U ...   each step; a failed step powers off at once
# IPv6 is disabled, so a guest sends no multicast of its own: the only frames flooded to
# every port are the ARP requests of IPv4.
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
# The initramfs has no /dev/console node, so the kernel gave us no stdio.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
# Keep printk off the console so the result line cannot be split by kernel messages.
dmesg -n 1

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "VS-BOOT uptime=$(uptime_s)"

mode=link ip= peer= size=16 timeout=60 count=20 linger=0 psize=56 mtu=
for arg in $(cat /proc/cmdline); do
    case $arg in
        vs.mode=*) mode=${arg#*=} ;;
        vs.ip=*) ip=${arg#*=} ;;
        vs.peer=*) peer=${arg#*=} ;;
        vs.size=*) size=${arg#*=} ;;
        vs.timeout=*) timeout=${arg#*=} ;;
        vs.count=*) count=${arg#*=} ;;
        vs.linger=*) linger=${arg#*=} ;;
        vs.psize=*) psize=${arg#*=} ;;
        vs.mtu=*) mtu=${arg#*=} ;;
    esac
done
steps=$(echo "$mode" | tr '+' ' ')

finish() {
    sync
    poweroff -f
    exit 1  # only reached if poweroff failed: the kernel panics and QEMU (-no-reboot) exits
}
# result OK INFO: prints the step's line; a failed step ends the run.
result() {
    echo "VS-RESULT mode=$mode ok=$1 uptime=$(uptime_s) $2"
    [ "$1" = 1 ] || finish
}

for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || result 0 "reason=insmod-$m"
done
i=0
until [ -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -gt 100 ] && result 0 "reason=no-eth0"
    usleep 100000
done
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
    [ ! -e "$f" ] || echo 1 >"$f"
done
mac=$(cat /sys/class/net/eth0/address)
ip link set lo up
# virtio_net caps the MTU at the device's (VIRTIO_NET_F_MTU): a larger one fails here.
[ -z "$mtu" ] || ip link set eth0 mtu "$mtu" || result 0 "reason=mtu-refused mtu=$mtu mac=$mac"
ip link set eth0 up || result 0 "reason=link-up-failed mac=$mac"
[ -z "$ip" ] || ip addr add "$ip" dev eth0 || result 0 "reason=bad-ip ip=$ip"
# Carrier follows the vhost-user connection (QEMU reports link down without a backend).
i=0
until [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ]; do
    i=$((i + 1)); [ $i -gt $((timeout * 10)) ] && break
    usleep 100000
done
carrier=$(cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0)
info="mac=$mac carrier=$carrier"
echo "VS-READY mac=$mac ip=${ip:-none} mtu=$(cat /sys/class/net/eth0/mtu) carrier=$carrier uptime=$(uptime_s)"
[ "$carrier" = 1 ] || result 0 "reason=no-carrier $info"

# The peer may still be booting: poll it before the real check so a late start is not
# a failure. Succeeds once the peer answers (which also fills the ARP cache).
wait_peer() {
    [ -n "$peer" ] || result 0 "reason=no-vs.peer $info"
    t0=$(uptime_s)
    until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
        awk -v a="$t0" -v b="$(uptime_s)" -v t="$timeout" 'BEGIN { exit !(b - a > t) }' \
            && result 0 "reason=peer-unreachable peer=$peer $info"
    done
}
elapsed() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { print b - a }'; }
set -o pipefail

# ip_counter NAME: a counter of the Ip: lines of /proc/net/snmp (names, then values).
ip_counter() {
    awk -v k="$1" '/^Ip:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == k) c = i } else { print $c; exit } }' /proc/net/snmp
}

step_ping() {
    wait_peer
    # A jumbo ping that went as fragments would pass too: count them around it.
    frag0=$(ip_counter FragCreates) reasm0=$(ip_counter ReasmReqds)
    if out=$(ping -c 3 -W 2 -s "$psize" "$peer"); then ok=1; else ok=0; fi
    rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    frags=$(($(ip_counter FragCreates) - frag0)) reasm=$(($(ip_counter ReasmReqds) - reasm0))
    result $ok "peer=$peer received=$rx/3 psize=$psize fragments_made=$frags fragments_reassembled=$reasm $info"
}

step_tcp_send() {
    wait_peer
    # Retry: the receiver's nc may start a moment after its address answers pings.
    t_first=$(uptime_s)
    attempt=0
    while :; do
        attempt=$((attempt + 1))
        rm -f /tmp/tx /tmp/tx.md5; mkfifo /tmp/tx
        md5sum </tmp/tx >/tmp/tx.md5 &
        t0=$(uptime_s)
        if dd if=/dev/urandom bs=1M count="$size" 2>/dev/null | tee /tmp/tx \
            | timeout "$timeout" nc -w 5 "$peer" 5000; then
            wait
            result 1 "md5=$(cut -d' ' -f1 /tmp/tx.md5) bytes=$((size * 1048576)) secs=$(elapsed "$t0") attempts=$attempt $info"
            return
        fi
        wait
        awk -v a="$t_first" -v b="$(uptime_s)" -v t="$timeout" 'BEGIN { exit !(b - a > t) }' \
            && result 0 "reason=send-failed peer=$peer attempts=$attempt $info"
        sleep 1
    done
}

step_tcp_recv() {
    # busybox nc half-closes when its stdin ends, and the sender then stops: give
    # the receiver a stdin that never ends (a FIFO it holds open read-write).
    rm -f /tmp/hold /tmp/rx
    mkfifo /tmp/hold /tmp/rx
    exec 3<>/tmp/hold
    wc -c </tmp/rx >/tmp/rx.len &
    t0=$(uptime_s)
    ok=1 why=''
    timeout "$timeout" nc -l -p 5000 <&3 | tee /tmp/rx | md5sum >/tmp/rx.md5 \
        || { ok=0; why="reason=nc-failed-or-timeout "; }
    wait
    exec 3<&-
    bytes=$(cat /tmp/rx.len)
    [ "$bytes" = $((size * 1048576)) ] || { ok=0; why=${why:-"reason=short-transfer "}; }
    result $ok "${why}md5=$(cut -d' ' -f1 /tmp/rx.md5) bytes=$bytes expected=$((size * 1048576)) secs=$(elapsed "$t0") $info"
}

step_ping_loop() {
    [ -n "$peer" ] || result 0 "reason=no-vs.peer $info"
    # before: replies up to the first lost probe after a reply; lost: probes lost after
    # the first reply; after: replies after that first loss.
    n=0 replies=0 before=0 lost=0 after=0 gap=0
    while [ $n -lt "$count" ]; do
        n=$((n + 1))
        if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then ok=1; else ok=0; fi
        echo "VS-PING n=$n ok=$ok carrier=$(cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0) uptime=$(uptime_s)"
        if [ $ok = 1 ]; then
            replies=$((replies + 1))
            if [ $gap = 1 ]; then after=$((after + 1)); else before=$((before + 1)); fi
        elif [ $replies -gt 0 ]; then
            lost=$((lost + 1)) gap=1
        fi
        usleep 500000
    done
    [ $replies -gt 0 ] && ok=1 || ok=0
    result $ok "peer=$peer sent=$n replies=$replies before=$before lost=$lost after=$after $info"
}

for mode in $steps; do
    case $mode in
        link) result 1 "$info" ;;
        ping) step_ping ;;
        tcp-send) step_tcp_send ;;
        tcp-recv) step_tcp_recv ;;
        ping-loop) step_ping_loop ;;
        *) result 0 "reason=unknown-mode" ;;
    esac
done
[ "$linger" = 0 ] || sleep "$linger"
finish
EOF
chmod 755 "$root/init"

# Reproducible archive: fixed mtimes, sorted names, root ownership, no inode numbers,
# no gzip timestamp.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9n >"$work/initramfs.cpio.gz"
cp "$work/deb/boot/vmlinuz-$kabi" "$out/vmlinuz"
mv "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
echo "$stamp" >"$out/guest.stamp"
echo "build-guest: built from $pkg $ver (modules: ${order[*]})"
echo "kernel: $out/vmlinuz"; echo "initrd: $out/initramfs.cpio.gz"
