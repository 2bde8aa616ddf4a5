//! The lock-free FDB and forwarding decisions against a model: arbitrary frames (source
//! and destination MACs, ports, time) drive `Switch::decide`; a `HashMap` model of a
//! learning bridge with per-port policy (learned-MAC limits, allowed sources, a static
//! entry) must agree on every decision while the table has room, and on every port's
//! learned count and refusals after every frame.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pmd::switch::{is_multicast, Destination, Mode, PortPolicy, Switch, DEFAULT_MAX_LEARNED};

const PORTS: usize = 4;
const AGING: u64 = 5;
/// Small limits so that inputs reach them; port 3 may only send from `mac(0..8)`.
const LIMITS: [u32; PORTS] = [DEFAULT_MAX_LEARNED, 4, 1, 2];
const ALLOWED_ON_3: u8 = 8;
/// Static on port 0: the model checks no traffic moves it.
const STATIC_MAC: u8 = 0x11;

// Few distinct MACs so that frames meet learned entries.
fn mac(b: u8) -> [u8; 6] {
    [2, 0, 0, 0, b >> 4, b & 0x0f | (b & 0x80)]
}

#[derive(Clone, Copy)]
struct Entry {
    port: usize,
    seen: u64,
    is_static: bool,
}

fn held(model: &HashMap<[u8; 6], Entry>, port: usize) -> u32 {
    model.values().filter(|e| !e.is_static && e.port == port).count() as u32
}

fuzz_target!(|data: &[u8]| {
    let policies = (0..PORTS)
        .map(|p| PortPolicy {
            max_learned: LIMITS[p],
            allowed_sources: if p == 3 { (0..ALLOWED_ON_3).map(mac).collect() } else { Vec::new() },
        })
        .collect();
    let s = Switch::new(Mode::Learning, PORTS, AGING, policies);
    assert!(s.add_static(mac(STATIC_MAC), 0));
    let mut model: HashMap<[u8; 6], Entry> = HashMap::new();
    model.insert(mac(STATIC_MAC), Entry { port: 0, seen: 0, is_static: true });
    let mut refusals = [0u64; PORTS];
    let mut now = 0u64;
    for op in data.chunks_exact(4) {
        let (dst, src) = (mac(op[0]), mac(op[1]));
        let port = usize::from(op[2]) % PORTS;
        now += u64::from(op[3] % 4);
        if op[3] & 0x80 != 0 {
            // 0x40 too: the port's front-end went away.
            let gone = (op[3] & 0x40 != 0).then_some(port);
            s.expire(now, gone);
            model.retain(|_, e| e.is_static || (now - e.seen < AGING && gone != Some(e.port)));
            // After expire every entry held is live: the counts are exactly what is listed.
            let listed = s.entries(now);
            for p in 0..PORTS {
                let live = listed.iter().filter(|e| !e.is_static && e.port == p).count() as u32;
                assert_eq!(s.learned(p), live, "port {p} after expire at {now}");
            }
            let mut want: Vec<_> = model.iter().map(|(m, e)| (*m, e.port, e.is_static)).collect();
            let mut got: Vec<_> = listed.iter().map(|e| (e.mac, e.port, e.is_static)).collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "entries after expire at {now}");
        }
        let got = s.decide(port, dst, src, now);
        let allowed = port != 3 || (0..ALLOWED_ON_3).any(|b| mac(b) == src);
        let want = if !allowed {
            Destination::Spoofed
        } else {
            if !is_multicast(src) {
                match model.get_mut(&src) {
                    // Learning never moves a static entry.
                    Some(e) if e.is_static => {}
                    // A refresh, even of an aged entry: the port holds it already.
                    Some(e) if e.port == port => e.seen = e.seen.max(now),
                    // New, or moving here (from a live or aged entry): charged to `port`.
                    _ => {
                        if held(&model, port) < LIMITS[port] {
                            model.insert(src, Entry { port, seen: now, is_static: false });
                        } else {
                            refusals[port] += 1;
                        }
                    }
                }
            }
            if is_multicast(dst) {
                Destination::Flood
            } else {
                match model.get(&dst) {
                    Some(e) if e.is_static || now - e.seen < AGING => {
                        if e.port == port {
                            Destination::Nowhere
                        } else {
                            Destination::Port(e.port)
                        }
                    }
                    _ => Destination::Flood,
                }
            }
        };
        assert_eq!(got, want, "dst {dst:?} src {src:?} port {port} now {now}");
        for p in 0..PORTS {
            // Aged entries keep their count until expire: the model's held entries.
            assert_eq!(s.learned(p), held(&model, p), "port {p} learned, now {now}");
            assert!(s.learned(p) <= LIMITS[p]);
            assert_eq!(s.learn_refusals(p), refusals[p], "port {p} refusals, now {now}");
        }
    }
});
