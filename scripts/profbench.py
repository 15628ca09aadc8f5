"""CPU per checkout of the demo shop's four services with span profiling at HZ vs off.

Runs `skein demo --rps RPS --profiling-hz {0,99}` alternately, measures the shop processes'
CPU time (utime+stime from /proc) over a window and the checkouts the loadgen completed.
"""
import os, re, subprocess, sys, time, signal, shutil

BIN = sys.argv[1]
RPS = int(sys.argv[2]) if len(sys.argv) > 2 else 150
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
WINDOW = 30
TICK = os.sysconf("SC_CLK_TCK")

def shop_pids():
    out = subprocess.run(["pgrep", "-f", f"{BIN} shop"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]

def cpu(pids):
    t = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except OSError:
            pass
    return t / TICK

def run(hz):
    d = f"/tmp/profbench-{hz}"
    shutil.rmtree(d, ignore_errors=True)
    p = subprocess.Popen([BIN, "demo", "--rps", str(RPS), "--profiling-hz", str(hz), "--data-dir", d,
                          "--gateway-addr", "127.0.0.1:18095", "--http-addr", "127.0.0.1:13295",
                          "--otlp-grpc-addr", "127.0.0.1:14395", "--otlp-http-addr", "127.0.0.1:14396"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    t0 = time.time()
    while time.time() - t0 < 8:
        time.sleep(0.5)
    pids = shop_pids()
    c0, w0 = cpu(pids), time.time()
    time.sleep(WINDOW)
    c1, w1 = cpu(pids), time.time()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    m = re.findall(r"loadgen: (\d+) requests in (\d+)s.*?(\d+) ok", out)
    total = re.search(r"loadgen: (\d+) requests in (\d+)s \(([\d.]+)/s\): (\d+) ok.*\(total\)", out)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs if "profile" in r)
    return (c1 - c0), (w1 - w0), total.group(0) if total else out[-300:], size

for r in range(ROUNDS):
    for hz in (0, 99):
        c, w, summary, size = run(hz)
        reqs = RPS * w
        print(f"hz={hz:3d} shop CPU {c:.2f}s over {w:.1f}s = {c / w:.3f} cores, {c / reqs * 1e6:.0f} us/request @{RPS}rps; profile bytes on disk {size}; {summary}", flush=True)
