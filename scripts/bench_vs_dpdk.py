#!/usr/bin/env python3
"""vhost-switch against DPDK's vhost backend, same generator, same cores, one run.

Backends (each a vhost-user back-end with two ports forwarding port 0 <-> port 1):
  ours: vhost-switch --mode xconnect, its PMD pinned to CPU 1;
  dpdk: dpdk-testpmd with two net_vhost ports in io forwarding, lcores on CPU 1.
Generators (front-ends, CPU 0):
  pktgen:  vhost-pktgen --mode pair (both directions, one thread);
  testpmd: dpdk-testpmd with two net_virtio_user ports, io forwarding, a closed loop
           started with `start tx_first 64` (the second opinion).
Runs alternate the backends (A B A B ...) so that drift hits both; medians are reported.
Also records a core-to-core round-trip probe per run (the two vCPUs move between near and
far placement on the host, which changes throughput ~2x).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCH = os.path.join(ROOT, "target/release/vhost-switch")
PKTGEN = os.path.join(ROOT, "target/release/vhost-pktgen")


def wait_path(path, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(path):
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


class Ours:
    name = "vhost-switch"

    def start(self, work):
        self.socks = [os.path.join(work, f"s{i}.sock") for i in range(2)]
        self.log = open(os.path.join(work, "switch.log"), "w")
        self.proc = subprocess.Popen(
            [SWITCH, "run", "--mode", "xconnect", "--pmd-cores", "1", "--control-core", "0",
             "--port", f"p0={self.socks[0]}", "--port", f"p1={self.socks[1]}",
             "--control-socket", os.path.join(work, "ctl.sock")],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="warn"))
        for s in self.socks:
            wait_path(s)
        return self.socks

    def stop(self):
        stop(self.proc)
        self.log.close()


class Dpdk:
    name = "dpdk-vhost"

    def start(self, work):
        self.socks = [os.path.join(work, f"v{i}.sock") for i in range(2)]
        self.log = open(os.path.join(work, "dpdk-backend.log"), "w")
        self.proc = subprocess.Popen(
            ["dpdk-testpmd", "--lcores", "0@1,1@1", "--no-pci", "--no-huge", "-m", "512",
             "--no-shconf", "--file-prefix", f"be{os.getpid()}",
             "--vdev", f"net_vhost0,iface={self.socks[0]},queues=1",
             "--vdev", f"net_vhost1,iface={self.socks[1]},queues=1",
             "--", "--forward-mode=io", "--no-mlockall", "--disable-link-check",
             "--total-num-mbufs", "8192", "--stats-period", "3600"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=work)
        for s in self.socks:
            wait_path(s)
        return self.socks

    def stop(self):
        stop(self.proc)
        self.log.close()


def gen_testpmd(work, socks, size, seconds):
    """Closed loop: io forwarding between two virtio_user ports. Mpps per direction."""
    out_path = os.path.join(work, "gen-testpmd.log")
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            ["dpdk-testpmd", "--lcores", "0@0,1@0", "--no-pci", "--no-huge", "-m", "1024",
             "--no-shconf", "--file-prefix", f"fe{os.getpid()}",
             "--vdev", f"net_virtio_user0,path={socks[0]},queues=1",
             "--vdev", f"net_virtio_user1,path={socks[1]},queues=1",
             "--", "-i", "--no-mlockall", "--total-num-mbufs", "4096"],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=work)
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
    text = open(out_path).read()
    # Two "show port stats all" snapshots, each with RX-packets per port.
    import re
    rx = [int(x) for x in re.findall(r"RX-packets:\s+(\d+)\s+RX-missed", text)]
    if len(rx) < 4:
        raise RuntimeError(f"no stats from testpmd generator:\n{text[-3000:]}")
    moved = (rx[2] + rx[3]) - (rx[0] + rx[1])
    return moved / seconds / 2 / 1e6


def gen_pktgen(work, socks, size, seconds):
    out = subprocess.run(
        [PKTGEN, "--port", f"a={socks[0]}", "--port", f"b={socks[1]}", "--mode", "pair",
         "--size", str(size), "--duration", str(seconds), "--core", "0", "--json"],
        capture_output=True, text=True, timeout=seconds + 60, cwd=work)
    if out.returncode != 0:
        raise RuntimeError(f"vhost-pktgen failed:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout)
    return report["mpps_per_direction"]


def probe_round_trip_ns():
    """Core-to-core round trip (CPU 0 <-> CPU 1), from vhost-pktgen's probe if present."""
    if not os.path.exists(PKTGEN):
        return None
    out = subprocess.run([PKTGEN, "probe", "--json"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout).get("round_trip_ns")
    except json.JSONDecodeError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="64,512,1500")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--generators", default="pktgen,testpmd")
    ap.add_argument("--json", default=os.path.join(ROOT, "docs/bench/latest.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    generators = args.generators.split(",")
    if "pktgen" in generators and not os.path.exists(PKTGEN):
        print("bench-vs-dpdk: vhost-pktgen not built; using testpmd only", file=sys.stderr)
        generators = [g for g in generators if g != "pktgen"]
    gen_fns = {"pktgen": gen_pktgen, "testpmd": gen_testpmd}
    results = []
    for gen in generators:
        for size in sizes:
            for run in range(args.runs):
                order = [Ours(), Dpdk()] if run % 2 == 0 else [Dpdk(), Ours()]
                for backend in order:
                    work = tempfile.mkdtemp(prefix="bench-")
                    rtt = probe_round_trip_ns()
                    try:
                        socks = backend.start(work)
                        mpps = gen_fns[gen](work, socks, size, args.seconds)
                    finally:
                        backend.stop()
                        time.sleep(0.5)
                    results.append({"generator": gen, "size": size, "run": run, "backend": backend.name,
                                    "mpps_per_direction": mpps, "round_trip_ns": rtt})
                    print(f"{gen:8} {size:5} B run {run} {backend.name:13} {mpps:7.3f} Mpps/dir"
                          + (f"  (core round trip {rtt:.0f} ns)" if rtt else ""), flush=True)
                    shutil.rmtree(work, ignore_errors=True)
    summary = []
    print()
    print(f"{'generator':9} {'size':>5} {'vhost-switch':>13} {'dpdk-vhost':>11} {'ratio':>6}   (median Mpps per direction)")
    for gen in generators:
        for size in sizes:
            pick = lambda name: [r["mpps_per_direction"] for r in results
                                 if r["generator"] == gen and r["size"] == size and r["backend"] == name]
            ours, dpdk = statistics.median(pick("vhost-switch")), statistics.median(pick("dpdk-vhost"))
            ratio = ours / dpdk if dpdk else float("nan")
            summary.append({"generator": gen, "size": size, "ours_median": ours, "dpdk_median": dpdk, "ratio": ratio})
            print(f"{gen:9} {size:5} {ours:13.3f} {dpdk:11.3f} {ratio:6.2f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": args.runs, "seconds": args.seconds,
                   "cpus": os.cpu_count(), "results": results, "summary": summary}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
