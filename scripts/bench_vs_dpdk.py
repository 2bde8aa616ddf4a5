#!/usr/bin/env python3
"""vhost-switch against DPDK's vhost backend, same generator, same cores, one session.

Backends (each a vhost-user back-end with two ports forwarding port 0 <-> port 1):
  ours: vhost-switch --mode xconnect, its PMD pinned to CPU 1;
  dpdk: dpdk-testpmd with two net_vhost ports in io forwarding, lcores on CPU 1.
Generators (front-ends, CPU 0):
  pktgen:  vhost-pktgen --mode pair (both directions, one thread);
  testpmd: dpdk-testpmd with two net_virtio_user ports, io forwarding, a closed loop
           started with `start tx_first 64` (the second opinion).
  pktgen-packed, testpmd-packed: the same on packed rings (`--packed`, `packed_vq=1`);
           both back-ends then serve packed rings.

Placement classes. The two vCPUs move on the host between near and far placement, which
changes throughput ~2x, so every figure is given per class. Before every run,
`vhost-pktgen probe` times a cache-line round trip between CPU 0 and CPU 1 (before the
backend starts, so that nothing else spins on CPU 1): near if it is under
NEAR_BELOW_NS (100 ns), far otherwise, unknown if the probe fails.

Pairs. Runs come in pairs within one cell (generator, frame size): probe, backend A, probe,
backend B, probe. Which backend goes first alternates from one pair of the cell to the
next. A run's class is that of the probe just before it. A pair counts for class C only if
all three probes read C: both runs share the class, and the closing probe shows that the
second run did not end in the other placement (the vCPUs also move during a run). Any
other pair is recorded (JSON: "counted": false) and left out of every median. So in each
class both backends have the same number of runs, taken under the same placement, and the
ratio of their medians compares like with like.

Scheduling. The probe that opens a pair also picks its cell: the next cell, round robin,
still short of counted pairs in the class just measured; if none is, the next cell short
in any class (the pair then adds samples to a class that is already full, or to nothing).
Pairs go on until every cell has --runs counted pairs in both classes, or --max-minutes
have passed (checked before each pair: the last pair may overrun by its own length), or
Ctrl-C. The final table gives, per generator, size and class, the median Mpps per
direction of each backend and their ratio; whether the time cap was hit, the classes left
short and the uncounted pairs are printed and written to the JSON.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")

# The one place (in Python) where near ends: the probe's round trip in ns, near below it,
# far at or above it. The Rust side has its own, bench::pktgen::probe::NEAR_BELOW_NS.
NEAR_BELOW_NS = 100.0
CLASSES = ("near", "far")
OURS, DPDK = "vhost-switch", "dpdk-vhost"


def placement(round_trip_ns):
    if round_trip_ns is None:
        return "unknown"
    return "near" if round_trip_ns < NEAR_BELOW_NS else "far"


def wait_path(path, proc, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited ({proc.returncode}) before creating {path}")
        if time.time() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.05)


def stop(proc, sig=signal.SIGINT, timeout=15):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Backend:
    """A backend process with two vhost-user server sockets; `stop` is safe after a failed `start`."""

    name = ""
    proc = None
    log = None

    def command(self, work, socks):
        raise NotImplementedError

    def start(self, work):
        socks = [os.path.join(work, f"{self.sock_prefix}{i}.sock") for i in range(2)]
        self.log = open(os.path.join(work, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(self.command(work, socks), stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=work, env=dict(os.environ, RUST_LOG="warn"))
        for s in socks:
            wait_path(s, self.proc)
        return socks

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
        if self.log is not None:
            self.log.close()


class Ours(Backend):
    name = OURS
    sock_prefix = "s"

    def __init__(self, switch):
        self.switch = switch

    def command(self, work, socks):
        return [self.switch, "run", "--mode", "xconnect", "--pmd-cores", "1", "--control-core", "0",
                "--port", f"p0={socks[0]}", "--port", f"p1={socks[1]}",
                "--control-socket", os.path.join(work, "ctl.sock")]


class Dpdk(Backend):
    name = DPDK
    sock_prefix = "v"

    def command(self, work, socks):
        return ["dpdk-testpmd", "--lcores", "0@1,1@1", "--no-pci", "--no-huge", "-m", "512",
                "--no-shconf", "--file-prefix", f"be{os.getpid()}",
                "--vdev", f"net_vhost0,iface={socks[0]},queues=1",
                "--vdev", f"net_vhost1,iface={socks[1]},queues=1",
                "--", "--forward-mode=io", "--no-mlockall", "--disable-link-check",
                "--total-num-mbufs", "8192", "--stats-period", "3600"]


def gen_testpmd(_pktgen, work, socks, size, seconds, vdev_extra=""):
    """Closed loop: io forwarding between two virtio_user ports. Mpps per direction."""
    out_path = os.path.join(work, "gen-testpmd.log")
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            ["dpdk-testpmd", "--lcores", "0@0,1@0", "--no-pci", "--no-huge", "-m", "1024",
             "--no-shconf", "--file-prefix", f"fe{os.getpid()}",
             "--vdev", f"net_virtio_user0,path={socks[0]},queues=1{vdev_extra}",
             "--vdev", f"net_virtio_user1,path={socks[1]},queues=1{vdev_extra}",
             "--", "-i", "--no-mlockall", "--total-num-mbufs", "4096"],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=work)
        try:
            time.sleep(3)
            proc.stdin.write(f"set txpkts {size}\nstart tx_first 64\n")
            proc.stdin.flush()
            time.sleep(1)  # warm-up
            proc.stdin.write("show port stats all\n")
            proc.stdin.flush()
            time.sleep(seconds)
            proc.stdin.write("show port stats all\nstop\nquit\n")
            proc.stdin.flush()
            proc.stdin.close()
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(out_path) as f:
        text = f.read()
    # Two "show port stats all" snapshots, each with RX-packets per port.
    rx = [int(x) for x in re.findall(r"RX-packets:\s+(\d+)\s+RX-missed", text)]
    if len(rx) < 4:
        raise RuntimeError(f"no stats from testpmd generator:\n{text[-3000:]}")
    moved = (rx[2] + rx[3]) - (rx[0] + rx[1])
    return moved / seconds / 2 / 1e6


def gen_pktgen(pktgen, work, socks, size, seconds, extra=()):
    out = subprocess.run(
        [pktgen, "--port", f"a={socks[0]}", "--port", f"b={socks[1]}", "--mode", "pair",
         "--size", str(size), "--duration", str(seconds), "--core", "0", "--json", *extra],
        capture_output=True, text=True, timeout=seconds + 60, cwd=work)
    if out.returncode != 0:
        raise RuntimeError(f"vhost-pktgen failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)["mpps_per_direction"]


# A generator name says which front-end and which ring layout it asks for; each back-end
# serves whichever layout the front-end negotiates.
GENERATORS = {
    "pktgen": gen_pktgen,
    "testpmd": gen_testpmd,
    "pktgen-packed": lambda *a: gen_pktgen(*a, extra=("--packed",)),
    "testpmd-packed": lambda *a: gen_testpmd(*a, vdev_extra=",packed_vq=1"),
}


def probe_round_trip_ns(pktgen):
    """Core-to-core round trip (CPU 0 <-> CPU 1) in ns, None if the probe failed."""
    try:
        out = subprocess.run([pktgen, "probe", "--json"], capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout).get("round_trip_ns") if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return None


def probe(pktgen):
    """(round trip ns or None, its class)."""
    rtt = probe_round_trip_ns(pktgen)
    return rtt, placement(rtt)


def fmt_rtt(rtt):
    return f"{rtt:4.0f} ns" if rtt is not None else "  failed"


def fmt_num(value, width, decimals):
    return f"{value:{width}.{decimals}f}" if value is not None else f"{'-':>{width}}"


def run_one(args, backend, gen, size):
    work = tempfile.mkdtemp(prefix="bench-")
    try:
        socks = backend.start(work)
        return GENERATORS[gen](args.pktgen, work, socks, size, args.seconds)
    finally:
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)
        # Let the backend's poller leave CPU 1 before the next probe pins a thread there.
        time.sleep(0.5)


class Session:
    """Every run so far and the counted pairs per cell and class."""

    def __init__(self, args, cells):
        self.args = args
        self.cells = cells
        self.results = []
        self.pairs = {c: 0 for c in cells}
        self.counted = {(c, k): 0 for c in cells for k in CLASSES}
        self.uncounted = {c: 0 for c in cells}
        self.next_cell = 0

    def short(self, cell, cls):
        return self.counted[(cell, cls)] < self.args.runs

    def complete(self):
        return not any(self.short(c, k) for c in self.cells for k in CLASSES)

    def pick(self, cls):
        """The next cell (round robin) short in `cls`, else the next one short in any class."""
        order = self.cells[self.next_cell:] + self.cells[:self.next_cell]
        wanting = [c for c in order if cls in CLASSES and self.short(c, cls)]
        incomplete = [c for c in order if any(self.short(c, k) for k in CLASSES)]
        cell = (wanting or incomplete)[0]
        self.next_cell = (self.cells.index(cell) + 1) % len(self.cells)
        return cell

    def pair(self, cell, opening, started):
        """One pair in `cell`, opened by the probe `opening`; counted if its three probes agree."""
        gen, size = cell
        index = self.pairs[cell]
        self.pairs[cell] += 1
        order = [Ours(self.args.switch), Dpdk()]
        if index % 2:
            order.reverse()
        before = opening
        runs = []
        for slot, backend in enumerate(order):
            mpps = run_one(self.args, backend, gen, size)
            after = probe(self.args.pktgen)
            runs.append({"generator": gen, "size": size, "pair": index, "slot": slot,
                         "backend": backend.name, "mpps_per_direction": mpps,
                         "round_trip_ns": before[0], "class": before[1],
                         "round_trip_after_ns": after[0], "class_after": after[1]})
            print(f"{(time.time() - started) / 60:5.1f} min  {gen:8} {size:5} B  pair {index:2}  "
                  f"{backend.name:13} {mpps:7.3f} Mpps/dir  round trip before {fmt_rtt(before[0])} "
                  f"{before[1]}", flush=True)
            before = after
        classes = {opening[1]} | {r["class_after"] for r in runs}
        cls = classes.pop() if len(classes) == 1 and opening[1] in CLASSES else None
        for r in runs:
            r["pair_class"] = cls
            r["counted"] = cls is not None
        self.results.extend(runs)
        if cls is None:
            self.uncounted[cell] += 1
            verdict = "probes " + " / ".join([opening[1]] + [r["class_after"] for r in runs]) + ": not counted"
        else:
            self.counted[(cell, cls)] += 1
            verdict = f"{cls}, counted"
        tally = ", ".join(f"{k} {self.counted[(cell, k)]}/{self.args.runs}" for k in CLASSES)
        print(f"{'':35}pair {index:2}: {verdict} (closing probe {fmt_rtt(before[0])}); "
              f"{gen} {size} B now {tally}", flush=True)

    def counted_runs(self, cell, cls, backend):
        gen, size = cell
        return [r["mpps_per_direction"] for r in self.results
                if r["generator"] == gen and r["size"] == size and r["pair_class"] == cls
                and r["backend"] == backend]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5,
                    help="counted pairs wanted per generator, size and class (default 5)")
    ap.add_argument("--max-minutes", type=float, default=40,
                    help="stop starting pairs after this long even if classes are short (default 40)")
    ap.add_argument("--sizes", default="64,512,1500")
    ap.add_argument("--seconds", type=float, default=5, help="traffic time per run")
    ap.add_argument("--generators", default="pktgen,testpmd",
                    help=f"comma-separated, of {','.join(GENERATORS)} (-packed: packed rings)")
    ap.add_argument("--json", default=os.path.join(ROOT, "docs/bench/latest.json"))
    ap.add_argument("--switch", default=os.path.join(RELEASE, "vhost-switch"),
                    help="vhost-switch binary (default: the cargo release build)")
    ap.add_argument("--pktgen", default=os.path.join(RELEASE, "vhost-pktgen"),
                    help="vhost-pktgen binary, also the placement probe (default: the cargo release build)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    sizes = [int(s) for s in args.sizes.split(",")]
    generators = args.generators.split(",")
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        ap.error(f"unknown generator(s) {','.join(unknown)}; known: {','.join(GENERATORS)}")
    for path in (args.switch, args.pktgen):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench-vs-dpdk: {path} not built (cargo build --release --workspace); "
                     "vhost-pktgen is also the placement probe")
    cells = [(g, s) for g in generators for s in sizes]
    session = Session(args, cells)
    started = time.time()
    cap_hit = False
    print(f"bench-vs-dpdk: until {args.runs} counted pairs per generator, size and class "
          f"(near: round trip < {NEAR_BELOW_NS:.0f} ns, far: >= {NEAR_BELOW_NS:.0f} ns), "
          f"at most {args.max_minutes:g} minutes", flush=True)
    try:
        while not session.complete():
            if time.time() - started >= args.max_minutes * 60:
                cap_hit = True
                break
            opening = probe(args.pktgen)
            session.pair(session.pick(opening[1]), opening, started)
    # A long session interrupted or failed still reports and writes what it measured.
    except KeyboardInterrupt:
        report(args, session, started, cap_hit, "interrupted")
        sys.exit(130)
    except Exception as e:
        report(args, session, started, cap_hit, f"error: {e}")
        raise
    report(args, session, started, cap_hit, None)


def report(args, session, started, cap_hit, stopped_by):
    minutes = (time.time() - started) / 60
    summary, short = [], []
    print()
    print(f"median Mpps per direction per placement class (near: round trip < {NEAR_BELOW_NS:.0f} ns); "
          "pairs = counted pairs of runs (one run per backend each)")
    print(f"{'generator':9} {'size':>5} {'class':5} {'pairs':>5} {OURS:>13} {DPDK:>11} {'ratio':>6}")
    for cell in session.cells:
        gen, size = cell
        for cls in CLASSES:
            ours, dpdk = session.counted_runs(cell, cls, OURS), session.counted_runs(cell, cls, DPDK)
            pairs = session.counted[(cell, cls)]
            om = statistics.median(ours) if ours else None
            dm = statistics.median(dpdk) if dpdk else None
            ratio = om / dm if om is not None and dm else None
            summary.append({"generator": gen, "size": size, "class": cls, "pairs": pairs,
                            "ours_median": om, "dpdk_median": dm, "ratio": ratio,
                            "ours_runs": ours, "dpdk_runs": dpdk})
            if pairs < args.runs:
                short.append({"generator": gen, "size": size, "class": cls, "pairs": pairs, "wanted": args.runs})
            print(f"{gen:9} {size:5} {cls:5} {pairs:5} {fmt_num(om, 13, 3)} {fmt_num(dm, 11, 3)} "
                  f"{fmt_num(ratio, 6, 2)}"
                  + ("   short" if pairs < args.runs else ""))
    uncounted = [{"generator": g, "size": s, "pairs": n} for (g, s), n in session.uncounted.items() if n]
    print()
    print(f"{len(session.results)} runs in {minutes:.1f} min; "
          f"uncounted pairs (probes not all in one class): "
          + (", ".join(f"{u['generator']} {u['size']} B {u['pairs']}" for u in uncounted) or "none"))
    if cap_hit:
        print(f"time cap hit: --max-minutes {args.max_minutes:g} passed before every class had {args.runs} pairs")
    if stopped_by:
        print(f"stopped early ({stopped_by})")
    if short:
        print("classes left short: " + ", ".join(
            f"{s['generator']} {s['size']} B {s['class']} {s['pairs']}/{s['wanted']}" for s in short))
    else:
        print(f"every class has its {args.runs} counted pair(s)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": args.runs, "seconds": args.seconds,
                   "max_minutes": args.max_minutes, "minutes": minutes, "cap_hit": cap_hit,
                   "stopped_by": stopped_by, "near_below_ns": NEAR_BELOW_NS, "cpus": os.cpu_count(),
                   "results": session.results, "summary": summary, "short": short,
                   "uncounted_pairs": uncounted}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
