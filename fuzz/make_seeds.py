#!/usr/bin/env python3
"""Writes seed inputs for the vhost_user_messages target (a valid handshake: owner,
features, memory table on the attached memfd, both rings started, enabled, status) and
for the vfio_user_messages target (what Linux behind QEMU's vfio-user-pci does: VERSION,
device and region info, DMA_MAP of the attached memfd, virtio status and features, both
queues, MSI-X eventfds, DRIVER_OK, unmap, reset), in the targets' chunk format
[fd count][u16 length][bytes]; and offload seeds for the ring_fast_path target (a TSO or
partial-checksum frame on a split TX ring, RX buffers posted on the other side, the
offloads byte set so that the frame is segmented, passed through, completed or refused)."""
import os
import struct

def msg(code, payload=b"", need_reply=False):
    flags = 1 | (8 if need_reply else 0)
    return struct.pack("<III", code, flags, len(payload)) + payload

def chunk(data, nfds=0):
    return bytes([nfds]) + struct.pack("<H", len(data)) + data

u64 = lambda v: struct.pack("<Q", v)
state = lambda i, n: struct.pack("<II", i, n)
VERSION_1, BIT30, MRG, EVENT_IDX = 1 << 32, 1 << 30, 1 << 15, 1 << 29
REPLY_ACK, MQ, STATUS, CONFIG, SLOTS = 8, 1, 1 << 16, 1 << 9, 1 << 15
MEM = 1 << 20

def handshake(proto, features, use_slots):
    out = [chunk(msg(1)), chunk(msg(15)), chunk(msg(16, u64(proto))), chunk(msg(3, need_reply=True))]
    out.append(chunk(msg(13, u64(0)), 1))  # SET_VRING_CALL ring 0, one fd
    out.append(chunk(msg(18, state(0, 1), True)))  # SET_VRING_ENABLE before SET_FEATURES
    out.append(chunk(msg(2, u64(features), True)))
    out.append(chunk(msg(39, u64(0x0b), True)))  # SET_STATUS ACK|DRIVER|FEATURES_OK
    out.append(chunk(msg(40)))
    region = struct.pack("<QQQQ", 0, MEM, 0x7000_0000, 0)
    if use_slots:
        out.append(chunk(msg(36)))
        out.append(chunk(msg(37, u64(0) + region, True), 1))
    else:
        out.append(chunk(msg(5, struct.pack("<II", 1, 0) + region, True), 1))
    for ring, base in ((0, 0), (1, 0x1000)):
        desc, avail, used = 0x7000_0000 + 0x10000 * (ring + 1), 0x7000_0000 + 0x10000 * (ring + 1) + 0x1000, 0x7000_0000 + 0x10000 * (ring + 1) + 0x2000
        out.append(chunk(msg(8, state(ring, 256), True)))
        out.append(chunk(msg(10, state(ring, base), True)))
        out.append(chunk(msg(9, struct.pack("<IIQQQQ", ring, 0, desc, used, avail, 0), True)))
        out.append(chunk(msg(12, u64(ring), True), 1))
        out.append(chunk(msg(18, state(ring, 1), True)))
    out.append(chunk(msg(39, u64(0x0f), True)))
    out.append(chunk(msg(24, struct.pack("<III", 0, 10, 0) + bytes(10))))
    out.append(chunk(msg(11, state(1, 0))))
    return b"".join(out)

here = os.path.dirname(os.path.abspath(__file__))
d = os.path.join(here, "corpus", "vhost_user_messages")
os.makedirs(d, exist_ok=True)
seeds = {
    "seed-qemu-like": handshake(REPLY_ACK | MQ | STATUS | SLOTS, VERSION_1 | BIT30 | MRG | EVENT_IDX, True),
    "seed-dpdk-like": handshake(REPLY_ACK | MQ | STATUS | CONFIG, VERSION_1 | BIT30 | MRG, False),
    "seed-legacy": handshake(0, MRG, False),
    "seed-get-features": chunk(msg(1)),
}
for name, data in seeds.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {d}")


# vfio-user: 16-byte header (id u16, command u16, size u32, flags u32, error u32).
def vfu(command, payload=b"", msg_id=[0]):
    msg_id[0] += 1
    return struct.pack("<HHIII", msg_id[0] & 0xffff, command, 16 + len(payload), 0, 0) + payload

words = lambda *ws: b"".join(struct.pack("<I", w) for w in ws)
VIRTIO_BAR, CONFIG_REGION, MSIX_INDEX = 0, 7, 2

def region_write(region, offset, data):
    return vfu(10, struct.pack("<Q", offset) + words(region, len(data)) + data)

def common(off, value, size):
    return region_write(VIRTIO_BAR, off, value.to_bytes(8, "little")[:size])

def vfio_bring_up(features, with_rings):
    out = [chunk(vfu(1, b"\0\0\0\0" + b'{"capabilities":{"max_msg_fds":16,"pgsizes":4096}}\0'))]
    out.append(chunk(vfu(4, words(16, 0, 0, 0))))
    for region in (VIRTIO_BAR, 2, CONFIG_REGION):
        out.append(chunk(vfu(5, words(32, 0, region, 0) + bytes(16))))
    out.append(chunk(vfu(9, struct.pack("<Q", 0) + words(CONFIG_REGION, 64))))
    out.append(chunk(vfu(2, words(32, 1) + struct.pack("<QQQ", 0, 0xfffc0000, 0x40000))))
    out.append(chunk(vfu(2, words(32, 3) + struct.pack("<QQQ", 0, 0, MEM)), 1))
    for st in (0, 1, 3):
        out.append(chunk(common(0x14, st, 1)))
    for sel, half in ((0, features & 0xffffffff), (1, features >> 32)):
        out.append(chunk(common(0x08, sel, 4)))
        out.append(chunk(common(0x0C, half, 4)))
    out.append(chunk(common(0x14, 0x0B, 1)))
    if with_rings:
        for q, base in ((0, 0x10000), (1, 0x20000)):
            out.append(chunk(common(0x16, q, 2)))
            out.append(chunk(common(0x18, 256, 2)))
            out.append(chunk(common(0x1A, q, 2)))
            for off, addr in ((0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)):
                out.append(chunk(common(off, addr & 0xffffffff, 4)))
                out.append(chunk(common(off + 4, addr >> 32, 4)))
            out.append(chunk(common(0x1C, 1, 2)))
        # MSI-X enable (message control of the capability at 0x84), then eventfds.
        out.append(chunk(region_write(CONFIG_REGION, 0x86, struct.pack("<H", 0x8000))))
        out.append(chunk(vfu(8, words(20, (1 << 2) | (1 << 5), MSIX_INDEX, 0, 3)), 3))
    out.append(chunk(common(0x14, 0x0F, 1)))
    out.append(chunk(vfu(3, words(24, 0) + struct.pack("<QQ", 0, MEM))))
    out.append(chunk(vfu(13)))
    return b"".join(out)

d = os.path.join(here, "corpus", "vfio_user_messages")
os.makedirs(d, exist_ok=True)
vfio_seeds = {
    "seed-linux-like": vfio_bring_up(VERSION_1 | MRG | EVENT_IDX, True),
    "seed-features-only": vfio_bring_up(VERSION_1, False),
    "seed-version": chunk(vfu(1, b"\0\0\0\0{}\0")),
}
for name, data in vfio_seeds.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
print(f"wrote {len(vfio_seeds)} seeds to {d}")


# ---- ring_fast_path: offload seeds ----
# Layout of the target's input: [ring size exponent][features a][features b | rounds]
# [memory a][memory b] (halves of equal length, each cycled to 64 KiB), the last byte
# also selecting offloads (bits 0-3: the source's CSUM, HOST_TSO4/6, HOST_ECN; 4-7: the
# destination's GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN). Rings: desc 0, avail 0x1000,
# used 0x2000, 256 entries.
HALF = 0x4000

def inet_sum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s

def tcp4_frame(payload):
    eth = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0])
    ip = bytearray(20)
    ip[0], ip[6], ip[8], ip[9] = 0x45, 0x40, 64, 6
    struct.pack_into("!H", ip, 2, 40 + payload)
    ip[12:20] = bytes([10, 0, 0, 1, 10, 0, 0, 2])
    struct.pack_into("!H", ip, 10, ~inet_sum(bytes(ip)) & 0xFFFF)
    tcp = bytearray(20)
    struct.pack_into("!HHII", tcp, 0, 1, 2, 1000, 0)
    tcp[12], tcp[13] = 5 << 4, 0x19  # FIN PSH ACK
    # The pseudo-header sum, as a guest leaves it with NEEDS_CSUM.
    struct.pack_into("!H", tcp, 16, inet_sum(bytes(ip[12:20]) + struct.pack("!HH", 6, 20 + payload)))
    return eth + bytes(ip) + bytes(tcp) + bytes((i * 7) & 0xFF for i in range(payload))

def tx_image(vnet, frame):
    m = bytearray(HALF)
    struct.pack_into("<QIHH", m, 0, 0x2900, 12 + len(frame), 0, 0)
    struct.pack_into("<HHH", m, 0x1000, 0, 1, 0)
    m[0x2900:0x2900 + 12 + len(frame)] = vnet + frame
    return m

def rx_image(offloads):
    m = bytearray(HALF)
    for i in range(16):  # 16 writable 2 KiB buffers in the cycled part of memory b
        struct.pack_into("<QIHH", m, 16 * i, 0x8000 + 2048 * i, 2048, 2, 0)
    struct.pack_into("<HH", m, 0x1000, 0, 16)
    for i in range(16):
        struct.pack_into("<H", m, 0x1004 + 2 * i, i)
    m[-1] = offloads
    return m

def ring_seed(vnet, offloads, payload):
    # 256 entries; a: VERSION_1; b: VERSION_1 | MRG_RXBUF; one round.
    return bytes([8, 0x01, 0b11 << 2]) + tx_image(vnet, tcp4_frame(payload)) + rx_image(offloads)

vnet = lambda flags, gso, size: struct.pack("<BBHHHHH", flags, gso, 54, size, 34, 16, 0)
d = os.path.join(here, "corpus", "ring_fast_path")
os.makedirs(d, exist_ok=True)
ring_seeds = {
    "seed-tso4-segmented": ring_seed(vnet(1, 1, 1000), 0x0F, 4000),
    "seed-tso4-passed-through": ring_seed(vnet(1, 1, 1000), 0xFF, 4000),
    "seed-csum-completed": ring_seed(vnet(1, 0, 0), 0x0F, 1000),
    "seed-tso4-not-negotiated": ring_seed(vnet(1, 1, 1000), 0x00, 4000),
}
for name, data in ring_seeds.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
print(f"wrote {len(ring_seeds)} seeds to {d}")
