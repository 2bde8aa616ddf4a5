//! The lock-free FDB and forwarding decisions against a model: arbitrary frames (source
//! and destination MACs, ports, time) drive `Switch::decide`; a `HashMap` model of a
//! learning bridge must agree on every decision while the table has room.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pmd::switch::{is_multicast, Destination, Mode, Switch};

const PORTS: usize = 4;
const AGING: u64 = 5;

fuzz_target!(|data: &[u8]| {
    let s = Switch::new(Mode::Learning, PORTS, AGING);
    let mut model: HashMap<[u8; 6], (usize, u64)> = HashMap::new();
    let mut now = 0u64;
    for op in data.chunks_exact(4) {
        // Few distinct MACs so that frames meet learned entries.
        let mac = |b: u8| [2, 0, 0, 0, b >> 4, b & 0x0f | (b & 0x80)];
        let (dst, src) = (mac(op[0]), mac(op[1]));
        let port = usize::from(op[2]) % PORTS;
        now += u64::from(op[3] % 4);
        if op[3] & 0x80 != 0 {
            s.expire(now, None);
            model.retain(|_, (_, seen)| now - *seen < AGING);
        }
        let got = s.decide(port, dst, src, now);
        if !is_multicast(src) {
            model.insert(src, (port, now));
        }
        let want = if is_multicast(dst) {
            Destination::Flood
        } else {
            match model.get(&dst) {
                Some(&(p, seen)) if now - seen < AGING => {
                    if p == port {
                        Destination::Nowhere
                    } else {
                        Destination::Port(p)
                    }
                }
                _ => Destination::Flood,
            }
        };
        assert_eq!(got, want, "dst {dst:?} src {src:?} port {port} now {now}");
    }
});
