"""CPU per checkout of the demo shop's four services with span profiling at HZ vs off.

Usage: profbench.py SKEIN_BIN [RPS=150] [ROUNDS=2] [WARMUP_S=25] [WINDOW_S=30] [HZ=99]

Runs `skein demo --rps RPS --profiling-hz 0` and `--profiling-hz HZ` side by side, lets them warm up (the first
profile push symbolises the binary once: a start-up cost, not a throughput one), then reads the
shop processes' CPU time (utime+stime from /proc, per thread) over a window. The profiler's own
threads (`skein-profile-*`) are reported apart from the application threads, whose extra CPU is
the signal handler, the span hooks and the kernel's signal delivery.
"""
import os, re, shutil, signal, subprocess, sys, time

BIN = sys.argv[1]
RPS = int(sys.argv[2]) if len(sys.argv) > 2 else 150
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
WARMUP = float(sys.argv[4]) if len(sys.argv) > 4 else 25
WINDOW = float(sys.argv[5]) if len(sys.argv) > 5 else 30
HZ = int(sys.argv[6]) if len(sys.argv) > 6 else 99
TICK = os.sysconf("SC_CLK_TCK")


def shop_pids(demo_pid):
    """The shop services `skein demo` started (its child processes running `skein shop`)."""
    out = subprocess.run(["pgrep", "-P", str(demo_pid), "-f", "shop"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cpu(pids):
    """CPU seconds of `pids` by thread name (threads that exit are missed, which the shop's
    long-lived threads never do)."""
    by = {}
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                comm = open(f"/proc/{p}/task/{t}/comm").read().strip()
                f = open(f"/proc/{p}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            by[comm] = by.get(comm, 0) + (int(f[11]) + int(f[12])) / TICK
    return by


def start(hz, slot, seed):
    """`skein demo` with profiling at `hz` on the port set `slot` (0 or 1)."""
    d = f"/tmp/profbench-{slot}"
    shutil.rmtree(d, ignore_errors=True)
    port = 18095 + 1000 * slot
    return subprocess.Popen([BIN, "demo", "--insecure", "--rps", str(RPS), "--profiling-hz", str(hz), "--data-dir", d,
                             "--seed", str(seed),
                             "--gateway-addr", f"127.0.0.1:{port}", "--http-addr", f"127.0.0.1:{port + 1}",
                             "--otlp-grpc-addr", f"127.0.0.1:{port + 2}",
                             "--otlp-http-addr", f"127.0.0.1:{port + 3}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def summary(p):
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    total = re.search(r"loadgen: (\d+) requests in (\d+)s \(([\d.]+)/s\): (\d+) ok.*\(total\)", out)
    return total.group(0) if total else out[-300:]


ratios = []
for r in range(ROUNDS):
    # Both configurations run at the same time, so the machine's noise (other work, frequency,
    # the two collectors) hits both alike; the port sets swap every round.
    order = (0, HZ) if r % 2 == 0 else (HZ, 0)
    print(f"round {r + 1}/{ROUNDS}: profiling off and at {HZ} Hz side by side, "
          f"{WARMUP:.0f} s warm-up + {WINDOW:.0f} s window", file=sys.stderr, flush=True)
    # Same seed: both shops get the same sequence of orders (their CPU cost varies with size).
    demos = {hz: start(hz, slot, 1000 + r) for slot, hz in enumerate(order)}
    time.sleep(WARMUP)
    pids = {hz: shop_pids(p.pid) for hz, p in demos.items()}
    before, w0 = {hz: cpu(ps) for hz, ps in pids.items()}, time.time()
    time.sleep(WINDOW)
    after, w1 = {hz: cpu(ps) for hz, ps in pids.items()}, time.time()
    w = w1 - w0
    res = {}
    for hz in (0, HZ):
        d = {k: v - before[hz].get(k, 0) for k, v in after[hz].items()}
        c = sum(d.values())
        res[hz] = c / (RPS * w) * 1e6
        threads = ", ".join(f"{k} {v / w * 1000:.1f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])
                            if v > 0)
        print(f"  hz={hz:3d} shop CPU {c / w:.3f} cores, {res[hz]:.0f} us/request; by thread (ms/s): "
              f"{threads}; {summary(demos[hz])}", flush=True)
    ratios.append(res[HZ] / res[0] - 1)
    print(f"  CPU per request with profiling: {ratios[-1]:+.2%}", flush=True)
ratios.sort()
print(f"median over {ROUNDS} rounds: {ratios[len(ratios) // 2]:+.2%} (all: "
      f"{', '.join(f'{x:+.2%}' for x in ratios)})")
