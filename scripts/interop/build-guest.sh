#!/usr/bin/env bash
# Builds a tiny test guest from Debian packages: the cloud kernel (virtio drivers as
# modules) plus a busybox-static initramfs whose /init runs one network check chosen on
# the kernel command line and prints one `VS-RESULT ...` line on the serial console.
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
#   vs.mode=link|ping|tcp-send|tcp-recv  vs.ip=ADDR/PREFIX  vs.peer=ADDR  vs.size=MiB
#   vs.timeout=SEC (how long to wait for carrier, the peer or a transfer; default 60)
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
# The initramfs has no /dev/console node, so the kernel gave us no stdio.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
# Keep printk off the console so the result line cannot be split by kernel messages.
dmesg -n 1

mode=link ip= peer= size=16 timeout=60
for arg in $(cat /proc/cmdline); do
    case $arg in
        vs.mode=*) mode=${arg#*=} ;;
        vs.ip=*) ip=${arg#*=} ;;
        vs.peer=*) peer=${arg#*=} ;;
        vs.size=*) size=${arg#*=} ;;
        vs.timeout=*) timeout=${arg#*=} ;;
    esac
done

uptime_s() { cut -d' ' -f1 /proc/uptime; }
result() {
    echo "VS-RESULT mode=$mode ok=$1 uptime=$(uptime_s) $2"
    sync
    poweroff -f
    exit 1  # only reached if poweroff failed: the kernel panics and QEMU (-no-reboot) exits
}

for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || result 0 "reason=insmod-$m"
done
i=0
until [ -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -gt 100 ] && result 0 "reason=no-eth0"
    usleep 100000
done
mac=$(cat /sys/class/net/eth0/address)
ip link set lo up
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
set -o pipefail
case $mode in
    link)
        result 1 "$info"
        ;;
    ping)
        wait_peer
        if out=$(ping -c 3 -W 2 "$peer"); then ok=1; else ok=0; fi
        rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
        result $ok "peer=$peer received=$rx/3 $info"
        ;;
    tcp-send)
        wait_peer
        # Retry: the receiver's nc may start a moment after its address answers pings.
        for attempt in 1 2 3 4 5; do
            rm -f /tmp/tx; mkfifo /tmp/tx
            md5sum </tmp/tx >/tmp/tx.md5 &
            t0=$(uptime_s)
            if dd if=/dev/urandom bs=1M count="$size" 2>/dev/null | tee /tmp/tx \
                | timeout "$timeout" nc -w 5 "$peer" 5000; then
                wait
                secs=$(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN { print b - a }')
                result 1 "md5=$(cut -d' ' -f1 /tmp/tx.md5) bytes=$((size * 1048576)) secs=$secs attempts=$attempt $info"
            fi
            wait
            sleep 1
        done
        result 0 "reason=send-failed peer=$peer $info"
        ;;
    tcp-recv)
        # busybox nc half-closes when its stdin ends, and the sender then stops: give
        # the receiver a stdin that never ends (a FIFO it holds open read-write).
        mkfifo /tmp/hold /tmp/rx
        exec 3<>/tmp/hold
        wc -c </tmp/rx >/tmp/rx.len &
        t0=$(uptime_s)
        ok=1 why=''
        timeout "$timeout" nc -l -p 5000 <&3 | tee /tmp/rx | md5sum >/tmp/rx.md5 \
            || { ok=0; why="reason=nc-failed-or-timeout "; }
        wait
        secs=$(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN { print b - a }')
        bytes=$(cat /tmp/rx.len)
        [ "$bytes" = $((size * 1048576)) ] || { ok=0; why=${why:-"reason=short-transfer "}; }
        result $ok "${why}md5=$(cut -d' ' -f1 /tmp/rx.md5) bytes=$bytes expected=$((size * 1048576)) secs=$secs $info"
        ;;
    *)
        result 0 "reason=unknown-mode"
        ;;
esac
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
