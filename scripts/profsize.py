"""Span-profile payload and storage sizes on the demo (issue 4's size figures).

Runs `skein demo --rps RPS` (span profiling at 99 Hz) for MINUTES, reads the collector's
`skein_profile_push_bytes_total{app}` (push bodies as sent) and
`skein_profile_samples_received_total` between the end of the first minute and the end, stops
the demo (the collector flushes its profile head into blocks on shutdown) and sums the profile
blocks on disk.

    python3 scripts/profsize.py target/release/skein [MINUTES=3] [RPS=50]
"""
import os, re, shutil, signal, subprocess, sys, time, urllib.request

BIN = sys.argv[1]
MINUTES = float(sys.argv[2]) if len(sys.argv) > 2 else 3
RPS = int(sys.argv[3]) if len(sys.argv) > 3 else 50
DATA = "/tmp/profsize-data"
HTTP = "127.0.0.1:13297"


def scrape():
    text = urllib.request.urlopen(f"http://{HTTP}/metrics", timeout=5).read().decode()
    pushed, samples = {}, 0.0
    for line in text.splitlines():
        m = re.match(r'skein_profile_push_bytes_total\{app="([^"]*)",tenant="[^"]*"\} (\S+)', line)
        if m:
            pushed[m.group(1)] = float(m.group(2))
        m = re.match(r"skein_profile_samples_received_total\{[^}]*\} (\S+)", line)
        if m:
            samples += float(m.group(1))
    return pushed, samples


def profile_block_bytes(root):
    total = 0
    for d, _, files in os.walk(root):
        if f"{os.sep}profiles{os.sep}" in d + os.sep and "profiles-wal" not in d:
            total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


shutil.rmtree(DATA, ignore_errors=True)
demo = subprocess.Popen(
    [BIN, "demo", "--insecure", "--rps", str(RPS), "--data-dir", DATA, "--gateway-addr", "127.0.0.1:18097",
     "--http-addr", HTTP, "--otlp-grpc-addr", "127.0.0.1:14397", "--otlp-http-addr", "127.0.0.1:14398"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    time.sleep(60)
    p0, s0 = scrape()
    t0 = time.time()
    time.sleep(MINUTES * 60)
    p1, s1 = scrape()
    minutes = (time.time() - t0) / 60
    p_all, s_all = p1, s1
finally:
    demo.send_signal(signal.SIGINT)
    demo.wait(timeout=60)
stored = profile_block_bytes(DATA)
print(f"demo at {RPS} checkouts/s, profiling 99 Hz, measured over {minutes:.1f} min after a 1 min warm-up")
print("push payload per minute per service (bytes as sent):")
for app in sorted(p1):
    print(f"  {app:<12} {(p1[app] - p0.get(app, 0)) / minutes / 1024:8.1f} KiB/min")
print(f"profile samples stored: {s_all:.0f} in all; {(s1 - s0) / minutes:.0f}/min over the window")
print(f"profile blocks on disk: {stored / 1024:.1f} KiB -> {stored / max(s_all, 1) * 1e6 / 2**20:.1f} MiB per million samples")
