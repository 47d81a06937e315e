#!/usr/bin/env python3
"""subpass against ONNX Runtime (CPU) on the same models with the same weights.

    race.py [--subpass target/release/subpass] [PIPELINE ...] [--check] [--quick]

For each pipeline (default configs/mlp.yaml and configs/cnn.yaml):

 1. `subpass export` writes its weights (seeded `init:` or a weights file) as F32 safetensors, and
    onnx_from_pipeline.py builds the equivalent ONNX model from the YAML and those weights.
 2. Check: the same seeded records through `subpass run` and through ORT; the outputs must agree
    to 1e-4 of the output scale. Always done first; `--check` does only this.
 3. ONNX Runtime in memory: records/s at batch 1, 16, 64 with intra_op_num_threads 1 and 2
    (inter_op 1, sequential execution, all graph optimizations), input batches pre-generated,
    median of 5 timed repeats after a warm-up, the repeats interleaved across configurations;
    and batch-1 p50 latency per record, 1 thread.
 4. `subpass bench --json --io` at batch 16 and 64 (and 1, with fewer records), 3 runs, medians of
    its pipeline / monolithic / JSON-in-memory rates and its p50 latency.
 5. stdin to stdout: the same generated JSONL file through `python_stdin_ort.py` (batch 64,
    2 threads) and through `subpass run`, timing each whole command (process start, model load,
    parsing, inference, formatting), median of 3.

Prints markdown tables (ratios against ORT with 2 threads, the natural peer on a 2-core machine)
and writes every raw figure to bench-results/race.json.

Caveats the tables cannot show: subpass's pipeline rate uses one thread per stage worker (the
`threads` column says how many), which on a 2-core box can exceed the cores. Its batch-1 latency
is `idle_latency_p50_ms`: one chunk at a time through the idle pipeline, like ORT's one record at
a time; `latency_p50_ms` (under full streaming load, with queueing) is reported beside it.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from onnx_from_pipeline import convert  # noqa: E402

BATCHES = [1, 16, 64]
THREADS = [1, 2]
REPEATS = 5  # timed ORT repeats (median)
SUBPASS_RUNS = 3  # subpass bench and stdin runs (median)
# Records per timed repeat: enough for ~1 s per repeat on a 2-core laptop-class machine.
DEFAULT_RECORDS = {"mlp": 20000, "cnn": 10000}
FALLBACK_RECORDS = 10000
CHECK_TOLERANCE = 1e-4  # max abs diff, relative to the output scale (max |y|)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def log(msg):
    print(msg, file=sys.stderr, flush=True)


def machine_info():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        # The box may be shared: the load average says how noisy the figures can be.
        "loadavg_at_start": os.getloadavg(),
        "platform": platform.platform(),
    }


def versions(subpass):
    out = subprocess.run([subpass, "--version"], capture_output=True, text=True)
    import onnx

    return {
        "subpass": out.stdout.strip(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def make_session(model_path, threads):
    """The one set of session options used everywhere (python_stdin_ort.py uses the same)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def median_of(dicts, key):
    values = [d[key] for d in dicts if d.get(key) is not None]
    return statistics.median(values) if values else None


class Pipeline:
    """What race.py needs to know about a pipeline file."""

    def __init__(self, path):
        self.path = Path(path)
        doc = yaml.safe_load(self.path.read_text())
        self.name = doc.get("name") or self.path.stem
        # Results are keyed by file: two files of one model (hand-written and planned stages)
        # share a name.
        self.key = str(self.path)
        self.input_shape = [int(d) for d in doc["input"]["shape"]]
        self.record_len = int(np.prod(self.input_shape))
        self.batch_size = int((doc.get("batch") or {}).get("size", 32))
        stages = doc.get("stages") or [{"replicas": 1}]
        # Stage workers = threads subpass computes on (parser and writer threads aside).
        self.workers = sum(int(s.get("replicas", 1)) for s in stages)
        self.stages = len(stages)


# ---------------------------------------------------------------------------------------------
# 1. Build the ONNX model from subpass's own weights
# ---------------------------------------------------------------------------------------------
def build(pipe, subpass, workdir):
    weights = workdir / f"{pipe.name}.safetensors"
    model = workdir / f"{pipe.name}.onnx"
    subprocess.run([subpass, "export", str(pipe.path), str(weights)], check=True,
                   capture_output=True)
    convert(str(pipe.path), str(weights), str(model))
    return model


# ---------------------------------------------------------------------------------------------
# 2. Correctness: subpass run vs ORT on the same seeded records
# ---------------------------------------------------------------------------------------------
def check(pipe, subpass, model, workdir, n=37):
    """Raise if ORT and subpass disagree. n is odd so subpass also runs a partial chunk."""
    rng = np.random.default_rng(2024)
    # Several input distributions: pixel-like [0, 1), centred normal, and larger values.
    x = np.concatenate([
        rng.random((n, pipe.record_len)),
        rng.standard_normal((n, pipe.record_len)),
        4.0 * rng.standard_normal((n, pipe.record_len)),
    ]).astype(np.float32)
    path = workdir / f"{pipe.name}-check.jsonl"
    # float32 -> Python float is exact and json writes it round-trippably: subpass reads back
    # the very same float32 values ORT gets.
    with open(path, "w") as f:
        for row in x:
            f.write(json.dumps(row.tolist()) + "\n")
    run = subprocess.run([subpass, "run", str(pipe.path), "--input", str(path), "--strict"],
                         capture_output=True, text=True, check=True)
    by_line = {}
    for line in run.stdout.splitlines():
        rec = json.loads(line)
        y = rec["y"]
        if isinstance(y, dict):  # several outputs: {"name": [...], ...} in `outputs` order
            y = [v for values in y.values() for v in values]
        by_line[rec["line"]] = y
    if len(by_line) != len(x):
        raise SystemExit(f"check {pipe.name}: subpass wrote {len(by_line)} records, sent {len(x)}")
    ours = np.array([by_line[i + 1] for i in range(len(x))], dtype=np.float32)
    path.unlink()

    session = make_session(model, 1)
    feed = {session.get_inputs()[0].name: x.reshape([len(x)] + pipe.input_shape)}
    theirs = np.concatenate(
        [np.asarray(y).reshape(len(x), -1) for y in session.run(None, feed)], axis=1)
    scale = float(np.abs(theirs).max())
    diff = float(np.abs(ours - theirs).max())
    rel = diff / max(scale, 1e-12)
    argmax_agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    result = {"records": len(x), "max_abs_diff": diff, "output_scale": scale,
              "relative_diff": rel, "argmax_agreement": argmax_agree,
              "ok": rel < CHECK_TOLERANCE}
    log(f"check {pipe.name}: {len(x)} records, max |diff| {diff:.3g} at output scale "
        f"{scale:.3g} (relative {rel:.2g}), argmax agree {argmax_agree:.0%}")
    if not result["ok"]:
        raise SystemExit(f"check {pipe.name} FAILED: relative diff {rel:.3g} >= {CHECK_TOLERANCE}")
    return result


# ---------------------------------------------------------------------------------------------
# 3. ONNX Runtime in memory
# ---------------------------------------------------------------------------------------------
def ort_throughputs(pipe, model, records):
    """records/s for every (threads, batch) pair.

    The repeats are interleaved (round 1 of every configuration, then round 2, ...) rather
    than run back to back, so a burst of load from elsewhere on a shared machine spreads over
    all configurations instead of sinking one; the median then drops it."""
    configs = []
    for threads in THREADS:
        for batch in BATCHES:
            session = make_session(model, threads)
            # A pool of distinct pre-generated batches, cycled: no input generation inside the
            # timed loop, and not one batch that stays hot in cache (subpass bench cycles 4).
            rng = np.random.default_rng(batch * 10 + threads)
            pool = [rng.random([batch] + pipe.input_shape, dtype=np.float32) for _ in range(8)]
            configs.append({"session": session, "batch": batch, "threads": threads,
                            "pool": pool, "runs": max(1, records // batch), "rates": []})
    name = configs[0]["session"].get_inputs()[0].name
    outputs = [o.name for o in configs[0]["session"].get_outputs()]

    def timed(c, runs):
        run, pool = c["session"].run, c["pool"]
        t = time.perf_counter()
        for i in range(runs):
            run(outputs, {name: pool[i % len(pool)]})
        return time.perf_counter() - t

    for c in configs:
        # Warm-up: thread pool start, allocator arenas, first-run kernel selection.
        timed(c, max(10, c["runs"] // 10))
    for r in range(REPEATS):
        log(f"{pipe.name}: ORT round {r + 1}/{REPEATS}")
        for c in configs:
            c["rates"].append(c["runs"] * c["batch"] / timed(c, c["runs"]))
    return [{"batch": c["batch"], "threads": c["threads"], "records": c["runs"] * c["batch"],
             "records_per_s": statistics.median(c["rates"]), "repeats": c["rates"]}
            for c in configs]


def ort_latency(pipe, model, records):
    """Batch-1 latency per record, one thread, records sent one at a time (no queueing)."""
    session = make_session(model, 1)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(1)
    pool = [rng.random([1] + pipe.input_shape, dtype=np.float32) for _ in range(8)]
    for i in range(50):
        session.run(None, {name: pool[i % 8]})
    lat = []
    for i in range(records):
        t = time.perf_counter()
        session.run(None, {name: pool[i % 8]})
        lat.append(time.perf_counter() - t)
    lat.sort()
    return {"records": records, "p50_ms": 1e3 * lat[len(lat) // 2],
            "p99_ms": 1e3 * lat[int(len(lat) * 0.99)]}


# ---------------------------------------------------------------------------------------------
# 4. subpass bench
# ---------------------------------------------------------------------------------------------
def subpass_benches(pipe, subpass, sizes):
    """`subpass bench --json --io` for each (batch, records) in `sizes`, runs interleaved across
    batch sizes (see ort_throughputs), medians of SUBPASS_RUNS."""
    runs = {batch: [] for batch, _ in sizes}
    for r in range(SUBPASS_RUNS):
        for batch, records in sizes:
            log(f"{pipe.name}: subpass bench batch {batch}, {records} records, "
                f"run {r + 1}/{SUBPASS_RUNS}")
            out = subprocess.run(
                [subpass, "bench", str(pipe.path), "--json", "--batch-size", str(batch),
                 "--records", str(records), "--io"],
                capture_output=True, text=True, check=True)
            runs[batch].append(json.loads(out.stdout))
    keys = ["pipeline_records_per_s", "monolithic_records_per_s", "io_records_per_s",
            "latency_p50_ms", "latency_p99_ms", "idle_latency_p50_ms", "idle_latency_p99_ms"]
    return [{"batch": batch, "records": records,
             "median": {k: median_of(runs[batch], k) for k in keys}, "runs": runs[batch]}
            for batch, records in sizes]


# ---------------------------------------------------------------------------------------------
# 5. stdin -> stdout, whole commands
# ---------------------------------------------------------------------------------------------
def write_stream_file(pipe, path, records):
    """N seeded records as JSON lines (bare flat arrays), values rounded like typical input."""
    rng = np.random.default_rng(99)
    with open(path, "w") as f:
        for start in range(0, records, 1000):
            block = np.round(rng.random((min(1000, records - start), pipe.record_len)), 3)
            f.write("".join(json.dumps(row) + "\n" for row in block.tolist()))


def time_shell(cmd):
    """Wall time of a whole shell command."""
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, executable="/bin/bash")
    return time.perf_counter() - t


def stdin_race(pipe, subpass, model, records, tmp):
    path = Path(tmp) / f"{pipe.name}-stream.jsonl"
    write_stream_file(pipe, path, records)
    py = (f"cat {path} | {sys.executable} {HERE / 'python_stdin_ort.py'} {model} "
          f"--batch 64 --threads 2 > /dev/null")
    # The same pipe as the baseline's (`cat` takes CPU on the same two cores); and, beside it,
    # subpass reading the file itself. Its per-stage summary goes to stderr; drop it like the
    # records.
    commands = {
        "python_ort": py,
        "subpass_run": f"cat {path} | {subpass} run {pipe.path} > /dev/null 2>/dev/null",
        "subpass_run_file": f"{subpass} run {pipe.path} --input {path} > /dev/null 2>/dev/null",
    }
    times = {k: [] for k in commands}
    for _ in range(SUBPASS_RUNS):  # alternated, for the same reason as ort_throughputs
        for k, cmd in commands.items():
            times[k].append(time_shell(cmd))
    size = path.stat().st_size
    path.unlink()
    result = {"records": records, "file_bytes": size}
    for k, cmd in commands.items():
        med = statistics.median(times[k])
        result[k] = {"command": cmd, "seconds": med, "all_seconds": times[k],
                     "records_per_s": records / med}
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def table(pipe, res):
    ort2 = {r["batch"]: r["records_per_s"] for r in res["ort"] if r["threads"] == 2}

    ort1 = {r["batch"]: r["records_per_s"] for r in res["ort"] if r["threads"] == 1}

    def row(what, batch, threads, rate, ref_batch=None):
        # Two references: ORT with 2 threads is the peer on 2 cores; ORT with 1 thread is
        # steadier when the machine is shared (a preempted worker stalls a 2-thread GEMM).
        ratios = []
        for ref in (ort2.get(ref_batch or batch), ort1.get(ref_batch or batch)):
            ratios.append(f"{rate / ref:.2f}×" if ref and rate else "—")
        return f"| {what} | {batch} | {threads} | {rate:,.0f} | {' | '.join(ratios)} |"

    lines = [f"### {pipe.name} ({pipe.path}; {pipe.stages} stages, {pipe.workers} workers)", "",
             "| what | batch | threads | records/s | vs ORT 2 threads | vs ORT 1 thread |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in res["ort"]:
        lines.append(row("ONNX Runtime, in memory", r["batch"], r["threads"], r["records_per_s"]))
    for b in res["subpass_bench"]:
        m, batch = b["median"], b["batch"]
        lines.append(row("subpass monolithic, in memory", batch, 1, m["monolithic_records_per_s"]))
        lines.append(row("subpass pipeline, in memory", batch, f"{pipe.workers} workers",
                         m["pipeline_records_per_s"]))
        if m["io_records_per_s"]:
            lines.append(row("subpass JSON in/out, in memory", batch,
                             f"{pipe.workers} workers + I/O", m["io_records_per_s"]))
    s = res.get("stdin")
    if s:
        lines.append(row("python stdin→ORT→stdout, whole command", 64, 2,
                         s["python_ort"]["records_per_s"], ref_batch=64))
        lines.append(row("subpass run stdin→stdout, whole command", pipe.batch_size,
                         f"{pipe.workers} workers + I/O", s["subpass_run"]["records_per_s"],
                         ref_batch=64))
        if "subpass_run_file" in s:
            lines.append(row("subpass run --input FILE→stdout, whole command", pipe.batch_size,
                             f"{pipe.workers} workers + I/O",
                             s["subpass_run_file"]["records_per_s"], ref_batch=64))
        lines += ["", f"stdin file: {s['records']:,} records, {s['file_bytes'] / 1e6:.0f} MB; "
                  f"`subpass run` is {s['python_ort']['seconds'] / s['subpass_run']['seconds']:.2f}× "
                  f"the Python baseline ({s['subpass_run']['seconds']:.2f} s vs "
                  f"{s['python_ort']['seconds']:.2f} s), both reading `cat FILE |`"
                  + (f"; with `--input FILE`, {s['subpass_run_file']['seconds']:.2f} s "
                     f"({s['python_ort']['seconds'] / s['subpass_run_file']['seconds']:.2f}×)."
                     if "subpass_run_file" in s else ".")]
    lat = res["ort_latency"]
    lines += ["", "| latency p50 | ms |", "|---|---:|",
              f"| ONNX Runtime, batch 1, 1 thread, one record at a time | {lat['p50_ms']:.3f} |"]
    for b in res["subpass_bench"]:
        lines.append(f"| subpass bench, batch {b['batch']}, one chunk at a time | "
                     f"{b['median']['idle_latency_p50_ms']:.3f} |")
        lines.append(f"| subpass bench, batch {b['batch']}, per chunk under streaming load | "
                     f"{b['median']['latency_p50_ms']:.3f} |")
    c = res["check"]
    lines += ["", f"check: {c['records']} records, max |diff| {c['max_abs_diff']:.2g} at output "
              f"scale {c['output_scale']:.2g} (relative {c['relative_diff']:.2g}); argmax agree "
              f"{c['argmax_agreement']:.0%}.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipelines", nargs="*",
                        default=[str(REPO / "configs/mlp.yaml"), str(REPO / "configs/cnn.yaml")])
    parser.add_argument("--subpass", default=str(REPO / "target/release/subpass"))
    parser.add_argument("--check", action="store_true", help="only check correctness, no timing")
    parser.add_argument("--records", type=int, help="records per timed repeat (default per model)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the records (smoke test)")
    parser.add_argument("--no-stdin", action="store_true", help="skip the stdin/stdout race")
    parser.add_argument("--out", default=str(REPO / "bench-results/race.json"))
    args = parser.parse_args()

    subpass = str(Path(args.subpass).resolve())
    if not os.access(subpass, os.X_OK):
        raise SystemExit(f"no subpass binary at {subpass}: cargo build --release, or --subpass")
    out_path = Path(args.out)
    workdir = out_path.parent / "peers"  # ONNX models and exported weights, kept for reuse
    workdir.mkdir(parents=True, exist_ok=True)

    report = {"machine": machine_info(), "versions": versions(subpass), "pipelines": {}}
    m, v = report["machine"], report["versions"]
    header = (f"machine: {m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} "
              f"logical CPUs, load average at start {m['loadavg_at_start'][0]:.2f}\n"
              f"versions: {v['subpass']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, "
              f"numpy {v['numpy']}, python {v['python']}\n")
    log(header)

    pipes = [Pipeline(p) for p in args.pipelines]
    results = {}
    for pipe in pipes:
        model = build(pipe, subpass, workdir)
        results[pipe.key] = {"pipeline": str(pipe.path), "onnx": str(model),
                              "check": check(pipe, subpass, model, workdir)}
    if args.check:
        return

    with tempfile.TemporaryDirectory() as tmp:
        for pipe in pipes:
            res = results[pipe.key]
            model = Path(res["onnx"])
            records = args.records or DEFAULT_RECORDS.get(pipe.name, FALLBACK_RECORDS)
            if args.quick:
                records = max(200, records // 10)
            res["ort"] = ort_throughputs(pipe, model, records)
            res["ort_latency"] = ort_latency(pipe, model, min(2000, records))
            # Batch 1 moves every record through every queue alone: slow, so fewer records.
            sizes = [(1, max(100, records // 4)), (16, records), (64, records)]
            res["subpass_bench"] = subpass_benches(pipe, subpass, sizes)
            res["loadavg_after"] = os.getloadavg()
            if not args.no_stdin:
                log(f"{pipe.name}: stdin→stdout race, {records} records × {SUBPASS_RUNS}")
                res["stdin"] = stdin_race(pipe, subpass, model, records, tmp)
            report["pipelines"][pipe.key] = res

    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(header)
    for pipe in pipes:
        print(table(pipe, report["pipelines"][pipe.key]))
    print(f"raw figures: {out_path}")


if __name__ == "__main__":
    main()
