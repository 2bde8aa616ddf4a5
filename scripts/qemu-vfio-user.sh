#!/usr/bin/env bash
# QEMU 11.1 (Debian trixie-backports), the vfio-user client of the tests, on Debian 12.
#
# Debian 12's QEMU 7.2 has no vfio-user-pci; trixie-backports' QEMU has, but installing it
# would replace libc and dozens of packages. So its .debs are fetched with a scratch apt
# configuration (its own sources, lists, cache and an empty dpkg status, used through
# APT_CONFIG: the machine's apt sources are never changed), unpacked into a private root,
# and run with chroot in a private mount namespace.
#
# Usage:
#   qemu-vfio-user.sh fetch                  fetch and unpack if needed; prints the root
#   qemu-vfio-user.sh run [--bind DIR]... -- QEMU-ARGS...
#                                            runs qemu-system-x86_64 in the root; each DIR
#                                            (sockets, guest kernel) is bind-mounted at
#                                            the same path inside
#   qemu-vfio-user.sh root                   prints the root (no fetch)
# Env:
#   VHOST_SWITCH_QEMU_ROOT   where the root lives (default /var/cache/vhost-switch/qemu-11.1)
#   QEMU_SUITE               the suite to take qemu-system-x86 from (default trixie-backports)
# Needs: root (unshare, mount, chroot), apt-get, dpkg-deb.
set -euo pipefail

root=${VHOST_SWITCH_QEMU_ROOT:-/var/cache/vhost-switch/qemu-11.1}
suite=${QEMU_SUITE:-trixie-backports}
self=$(readlink -f "${BASH_SOURCE[0]}")

die() { echo "qemu-vfio-user: $*" >&2; exit 1; }

# The Debian mirror this machine already uses (its bookworm sources), so the scratch
# configuration reaches the same registry without naming a host here.
mirror() {
    local uri
    uri=$(
        {
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}'
            cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '/^deb / {print $2}'
        } | grep -E '/debian/?$' | head -n1
    )
    [ -n "$uri" ] || die "no Debian mirror found in the machine's apt sources"
    echo "${uri%/}"
}

fetch() {
    local stamp_want
    stamp_want="suite=$suite script=$(sha256sum "$self" | cut -d' ' -f1)"
    if [ -x "$root/usr/bin/qemu-system-x86_64" ] && [ "$(cat "$root/.stamp" 2>/dev/null)" = "$stamp_want" ]; then
        echo "$root"
        return 0
    fi
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "apt-get and dpkg-deb needed"
    local apt="$root.apt" m
    m=$(mirror)
    rm -rf "$apt"
    mkdir -p "$apt"/{etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,lists/partial,archives/partial,dl}
    # As root, apt downloads as user _apt: let it write where it downloads.
    chmod 755 "$apt" "$apt"/dl
    chown -R _apt "$apt/lists" "$apt/archives" "$apt/dl" 2>/dev/null || true
    : >"$apt/status"
    cat >"$apt/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m $suite main
EOF
    cat >"$apt/apt.conf" <<EOF
Dir::State "$apt";
Dir::State::lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt";
Dir::Cache::archives "$apt/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Etc::sourcelist "$apt/etc/sources.list";
Dir::Etc::sourceparts "$apt/etc/sources.list.d";
Dir::Etc::preferences "$apt/etc/preferences";
Dir::Etc::preferencesparts "$apt/etc/preferences.d";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
EOF
    export APT_CONFIG="$apt/apt.conf"
    echo "qemu-vfio-user: apt-get update (trixie, $suite; scratch configuration)" >&2
    apt-get update -qq >&2 || die "apt-get update failed"
    # A simulated install against the empty status lists every package with its exact
    # version (epoch included), which `apt-get download` needs.
    local pkgs
    mapfile -t pkgs < <(apt-get install -s -qq --no-install-recommends -t "$suite" qemu-system-x86 \
        | awk '/^Inst / {v = $3; sub(/^\(/, "", v); print $2 "=" v}')
    [ "${#pkgs[@]}" -gt 0 ] || die "apt-get resolved no package for qemu-system-x86 from $suite"
    echo "qemu-vfio-user: downloading ${#pkgs[@]} packages" >&2
    (cd "$apt/dl" && apt-get download -qq "${pkgs[@]}" >&2) || die "apt-get download failed"
    local tmp="$root.new"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    for deb in "$apt"/dl/*.deb; do
        dpkg-deb -x "$deb" "$tmp"
    done
    # Debian's merged /usr: the loader and libraries are found through these links.
    for d in bin lib lib64 sbin; do
        [ -e "$tmp/$d" ] || ln -s "usr/$d" "$tmp/$d"
    done
    mkdir -p "$tmp"/{dev,proc,sys,tmp}
    chmod 1777 "$tmp/tmp"
    [ -x "$tmp/usr/bin/qemu-system-x86_64" ] || die "the packages held no qemu-system-x86_64"
    echo "$stamp_want" >"$tmp/.stamp"
    rm -rf "$root"
    mv "$tmp" "$root"
    rm -rf "$apt"
    echo "$root"
}

run() {
    local binds=()
    while [ $# -gt 0 ]; do
        case $1 in
            --bind) binds+=("$(readlink -f "$2")"); shift 2 ;;
            --) shift; break ;;
            *) die "run: unknown option $1 (run [--bind DIR]... -- QEMU-ARGS)" ;;
        esac
    done
    [ -x "$root/usr/bin/qemu-system-x86_64" ] || die "no QEMU in $root: run '$0 fetch' first"
    # Inside a private mount namespace: /dev, /proc and each bound directory appear in the
    # root at the same path, and vanish with the namespace when QEMU exits.
    local setup='set -e; r=$1; shift; n=$1; shift
        mount --rbind /dev "$r/dev"
        mount -t proc proc "$r/proc"
        mount --rbind /sys "$r/sys"
        i=0
        while [ "$i" -lt "$n" ]; do
            mkdir -p "$r$1"; mount --bind "$1" "$r$1"; shift; i=$((i + 1))
        done
        exec chroot "$r" /usr/bin/qemu-system-x86_64 "$@"'
    exec unshare -m --propagation private sh -c "$setup" qemu "$root" "${#binds[@]}" "${binds[@]}" "$@"
}

case ${1:-} in
    fetch) fetch ;;
    root) echo "$root" ;;
    run) shift; run "$@" ;;
    *) die "usage: $0 fetch | root | run [--bind DIR]... -- QEMU-ARGS" ;;
esac
