#!/usr/bin/env python3
"""Writes seed inputs for the vhost_user_messages target: a valid handshake (owner,
features, memory table on the attached memfd, both rings started, enabled, status),
in the target's chunk format [fd count][u16 length][bytes]."""
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
