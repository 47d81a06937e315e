#!/usr/bin/env python3
"""The soak of issue 12: records through configs/digits-mlp.yaml from a generator process for as
long as it takes, with a bad line every 10^4, a consumer that stalls for a few seconds every
minute, two hot reloads and injected panics on the way; the process's RSS sampled every second.

Usage: python3 tools/soak.py BINARY [RECORDS]   (tools/soak.sh builds the binary and calls this)

Prints: records in = out + rejected (every rejected line accounted for in the error stream), the
RSS range after the first minute, throughput per 10 s window, restarts and reloads; exits 1 if
anything was lost, repeated or out of order."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1]
RECORDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
BAD_EVERY = 10_000
STALL_EVERY, STALL_FOR = 60.0, 3.0
BLOCK = 10_000  # lines per write: one bad line each

work = tempfile.mkdtemp(prefix="subpass-soak-")
config = os.path.join(work, "digits-mlp.yaml")
base = open(os.path.join(ROOT, "configs/digits-mlp.yaml")).read()
base = base.replace("weights: digits-mlp.safetensors", "weights: " + os.path.join(ROOT, "configs/digits-mlp.safetensors"))
versions = [base, base.replace("size: 32", "size: 64")]
assert versions[0] != versions[1]
open(config, "w").write(versions[0])

good = open(os.path.join(ROOT, "examples/digits-test.jsonl"), "rb").read().splitlines()
block = b"".join(good[i % len(good)] + b"\n" for i in range(BLOCK - 1)) + b"{not json\n"
blocks = RECORDS // BLOCK
total = blocks * BLOCK
# Two panics: one record in each stage, a third and two thirds in.
faults = f"body#{total // 3 + 17},head#{2 * total // 3 + 29}"

env = dict(os.environ, FAILPOINTS=f"stage=return({faults})", RUST_LOG="info")
stats_path = os.path.join(work, "stats.json")
errors_path = os.path.join(work, "errors.jsonl")
log_path = os.path.join(work, "log.txt")
proc = subprocess.Popen(
    [BIN, "run", config, "--errors", errors_path, "--stats", stats_path],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log_path, "w"), env=env, bufsize=0,
)

written = [0]
reloads_sent = []


def generate():
    for b in range(blocks):
        proc.stdin.write(block)
        written[0] += BLOCK
        # Two reloads, a third and two thirds of the way.
        if b in (blocks // 3, 2 * blocks // 3):
            v = len(reloads_sent) + 1
            open(config, "w").write(versions[v % 2])
            proc.send_signal(signal.SIGHUP)
            reloads_sent.append(time.time())
    proc.stdin.close()


out_lines = [0]
order_ok = [True]
stalls = []


def consume():
    last = 0
    tail = b""
    next_stall = time.time() + STALL_EVERY
    line_re = re.compile(rb'"line":(\d+)')
    while True:
        data = proc.stdout.read(1 << 20)
        if not data:
            break
        data = tail + data
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        whole = data[:cut]
        out_lines[0] += whole.count(b"\n")
        for n in map(int, line_re.findall(whole)):
            if n <= last:
                order_ok[0] = False
            last = n
        if time.time() >= next_stall:
            stalls.append(time.time())
            time.sleep(STALL_FOR)
            next_stall = time.time() + STALL_EVERY


samples = []  # (seconds since start, RSS bytes, output lines so far)
start = time.time()


def sample_rss():
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
            samples.append((time.time() - start, rss, out_lines[0]))
        except (OSError, StopIteration):
            pass
        time.sleep(1.0)


threads = [threading.Thread(target=f, daemon=True) for f in (generate, consume, sample_rss)]
for t in threads:
    t.start()
code = proc.wait()
for t in threads:
    t.join(timeout=10)
elapsed = time.time() - start

errors = [json.loads(l) for l in open(errors_path)]
stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
rejected = len(errors)
bad_expected = blocks
poisoned = [e for e in errors if "stage" in e.get("error", "")]
print(f"work dir: {work}")
print(f"exit {code} after {elapsed:.1f} s; {total} records in, {out_lines[0]} out, {rejected} error lines "
      f"({bad_expected} bad lines fed, {len(poisoned)} records failed in a stage: {[e['line'] for e in poisoned]})")
ok = code == 0 and out_lines[0] + rejected == total and order_ok[0] and rejected == bad_expected + len(faults.split(","))
print(f"in = out + rejected: {out_lines[0] + rejected == total}; output in order: {order_ok[0]}")
restarts = {s["name"]: s.get("restarts", 0) for s in stats.get("stages", [])}
print(f"restarts: {restarts}; reloads: {stats.get('reloads')} loaded, {stats.get('reloads_refused')} refused; "
      f"consumer stalls: {len(stalls)} of {STALL_FOR:.0f} s")
steady = [(t, r) for t, r, _ in samples if t >= 60.0]
if steady:
    rss = sorted(r for _, r in steady)
    med = rss[len(rss) // 2]
    print(f"RSS after the first minute: min {rss[0] / 2**20:.1f} MiB, median {med / 2**20:.1f}, max {rss[-1] / 2**20:.1f} "
          f"({100 * (rss[0] / med - 1):+.1f}% / {100 * (rss[-1] / med - 1):+.1f}% of the median, over {len(rss)} samples)")
else:
    print("RSS after the first minute: the run was shorter than a minute; pass more RECORDS")
# Throughput per 10 s window, leaving out windows with a consumer stall or a reload in them.
windows = []
for i in range(0, len(samples) - 10, 10):
    t0, _, n0 = samples[i]
    t1, _, n1 = samples[i + 10]
    busy = any(t0 <= s - start <= t1 + STALL_FOR for s in stalls) or any(t0 <= s - start <= t1 for s in reloads_sent)
    windows.append(((n1 - n0) / (t1 - t0), busy))
steady_rates = sorted(r for r, busy in windows if not busy and r > 0)
if steady_rates:
    med = steady_rates[len(steady_rates) // 2]
    print(f"throughput outside stalls, per 10 s window: median {med:.0f} records/s, min {steady_rates[0]:.0f} "
          f"({100 * (steady_rates[0] / med - 1):+.1f}%), max {steady_rates[-1]:.0f} ({100 * (steady_rates[-1] / med - 1):+.1f}%), "
          f"{len(steady_rates)} windows")
print("windows (records/s, * = stall or reload inside):", " ".join(f"{r:.0f}{'*' if b else ''}" for r, b in windows))
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
