#!/usr/bin/env python3
"""ResNet-18: subpass against ONNX Runtime (CPU, 2 threads), the same weights, in memory.

    resnet_race.py [--rounds 3] [--images 64] [--latency-images 24] [--check] [--quick]
                   [--no-latency-plan]
                   [--subpass target/release/subpass] [--pipeline configs/resnet18.yaml]

1. Same model. `subpass export configs/resnet18.yaml W.safetensors` writes the weights subpass
   computes with (its seeded `init:`); torchvision.models.resnet18 loads them with
   `load_state_dict(strict=True)` and is exported with torch.onnx.export (TorchScript exporter,
   `dynamo=False`, opset 17, dynamic batch axis), cached in bench-results/peers/ with the
   weights' SHA-256 and the versions that made it.
2. Same numbers. Four seeded images through `subpass run` and through ONNX Runtime; the logits
   must agree within 1e-4 of the largest |logit|, or the race stops (`--check` stops here).
3. Timing, in rounds; within a round the contenders alternate (a one-second pause between them
   lets the previous one's spinning threads park), and the tables give medians over rounds:
   - ONNX Runtime fp32, CPU provider, intra_op_num_threads 2, inter_op 1, sequential, all graph
     optimizations: images/s at batch 8 (`--images` images per round, input batches made
     beforehand, one warm-up pass); p50 latency of one image at batch 1 (`--latency-images`
     runs after 5 warm-up runs).
   - subpass: `subpass bench PIPELINE --json --batch-size 8 --records IMAGES` (the decomposed
     pipeline's `pipeline_records_per_s`: chunks fed from memory, no JSON), and
     `--batch-size 1 --records LATENCY_IMAGES` for `idle_latency_p50_ms` (one chunk at a time
     through the idle pipeline: the latency of one image). bench also times its monolithic
     pass, which is reported in the JSON only.
   - subpass, batch 1, planned for latency: `subpass plan PIPELINE --batch 1 --objective
     latency --write` (one stage on a team of threads that splits each convolution's filters,
     or layers split into shards on stages of their own, whichever its check run measures
     faster, so one image uses every core), then the same `idle_latency_p50_ms` (skip with
     `--no-latency-plan`).
4. FLOPs: direct-convolution FLOPs (2 per multiply-add) of every Conv2d and Linear of
   torchvision's model, from its layer shapes: 3.63 GFLOP per image. Beside it the FLOP count
   subpass's own plan gives (which also counts relu, add and the pools, and not the batch norms
   folded into the convolutions). Efficiency is GFLOP/s against the FMA peak of the machine
   (`--peak`, 233 GFLOP/s for 2 Zen 4 cores).

Tables to stdout, progress to stderr, every raw figure (each round, load averages, versions,
subpass's bench JSON) to bench-results/resnet-race.json.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BATCH = 8
THREADS = 2
OPSET = 17
CHECK_IMAGES = 4
CHECK_TOLERANCE = 1e-4
PAUSE_S = 1.0
SHAPE = [3, 224, 224]


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
    return {"cpu_model": model, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "loadavg_at_start": os.getloadavg(), "platform": platform.platform()}


# ---------------------------------------------------------------------------------------------
# 1. Same model
# ---------------------------------------------------------------------------------------------
def export_weights(subpass, pipeline, out_dir):
    path = out_dir / "resnet18-subpass.safetensors"
    subprocess.run([subpass, "export", str(pipeline), str(path)], check=True,
                   stderr=subprocess.DEVNULL)
    return path


def torchvision_model(weights):
    import torchvision
    from safetensors.torch import load_file

    model = torchvision.models.resnet18()
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def export_onnx(model, weights, out_dir):
    """The torchvision model to ONNX, cached with its provenance."""
    import torch
    import torchvision

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    onnx_path = out_dir / "resnet18.onnx"
    meta_path = out_dir / "resnet18.onnx.json"
    meta = {"weights_sha256": digest, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "opset": OPSET, "exporter": "legacy"}
    if onnx_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        log(f"ONNX model: {onnx_path} (cached)")
        return onnx_path, meta
    log(f"ONNX model: exporting to {onnx_path}")
    tmp = onnx_path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros([2] + SHAPE), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    tmp.replace(onnx_path)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return onnx_path, meta


def make_session(onnx_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def direct_conv_flops(model):
    """2 x multiply-adds of every Conv2d and Linear, from the shapes one image takes."""
    import torch

    total = []

    def conv_hook(m, _inp, out):
        kh, kw = m.kernel_size
        total.append(2 * out.shape[1] * (m.in_channels // m.groups) * kh * kw
                     * out.shape[2] * out.shape[3])

    def linear_hook(m, _inp, _out):
        total.append(2 * m.in_features * m.out_features)

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, torch.nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros([1] + SHAPE))
    for h in hooks:
        h.remove()
    return sum(total)


# ---------------------------------------------------------------------------------------------
# 2. Same numbers
# ---------------------------------------------------------------------------------------------
def check(subpass, pipeline, session, tmp):
    rng = np.random.default_rng(18)
    x = rng.standard_normal([CHECK_IMAGES] + SHAPE).astype(np.float32)
    path = Path(tmp) / "check.jsonl"
    # float32 values as float64 decimals: each parses back to the same float32.
    path.write_text("".join(json.dumps(r.ravel().tolist()) + "\n" for r in x))
    # The logits, not the top-k the pipeline writes: its `output:` line dropped, in a copy next
    # to it (so that its relative paths still hold).
    text = Path(pipeline).read_text()
    logits = Path(pipeline).with_name(f".{Path(pipeline).stem}-logits.yaml")
    logits.write_text("\n".join(l for l in text.splitlines() if not l.startswith("output:")) + "\n")
    out = subprocess.run([subpass, "run", str(logits), "--input", str(path)],
                         capture_output=True, text=True, check=True)
    logits.unlink()
    got = np.array([json.loads(l)["y"] for l in out.stdout.splitlines()], dtype=np.float32)
    want = session.run(None, {"image": x})[0]
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    res = {"images": CHECK_IMAGES, "max_abs_diff": diff, "output_scale": scale,
           "relative_diff": diff / scale,
           "argmax_agreement": float((got.argmax(1) == want.argmax(1)).mean())}
    log(f"check: {CHECK_IMAGES} images, max |diff| {diff:.2g} at scale {scale:.2g} "
        f"(relative {diff / scale:.2g})")
    if diff > CHECK_TOLERANCE * scale:
        raise SystemExit(f"check FAILED: subpass and ONNX Runtime differ by {diff} "
                         f"(scale {scale})")
    return res


# ---------------------------------------------------------------------------------------------
# 3. Timing
# ---------------------------------------------------------------------------------------------
def ort_throughput(session, pool, images):
    runs = max(1, images // BATCH)
    t = time.perf_counter()
    for i in range(runs):
        session.run(None, {"image": pool[i % len(pool)]})
    return runs * BATCH / (time.perf_counter() - t)


def ort_latency(session, singles, runs):
    for i in range(5):
        session.run(None, {"image": singles[i % len(singles)]})
    lat = []
    for i in range(runs):
        t = time.perf_counter()
        session.run(None, {"image": singles[i % len(singles)]})
        lat.append(time.perf_counter() - t)
    return 1e3 * statistics.median(lat)


def subpass_bench(subpass, pipeline, batch, records):
    out = subprocess.run([subpass, "bench", str(pipeline), "--json", "--batch-size", str(batch),
                          "--records", str(records)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def race(args, subpass, pipeline, session, latency_pipeline=None):
    rng = np.random.default_rng(7)
    pool = [rng.standard_normal([BATCH] + SHAPE).astype(np.float32) for _ in range(4)]
    singles = [p[:1].copy() for p in pool]
    log("warm-up: ONNX Runtime batch 8 and batch 1")
    ort_throughput(session, pool, 2 * BATCH)
    ort_latency(session, singles, 3)
    rounds = []
    for r in range(args.rounds):
        entry = {"loadavg_1min_at_start": os.getloadavg()[0]}
        log(f"round {r + 1}/{args.rounds} (load {entry['loadavg_1min_at_start']:.2f})")
        time.sleep(PAUSE_S)
        entry["ort_images_per_s"] = ort_throughput(session, pool, args.images)
        log(f"  ONNX Runtime batch {BATCH}: {entry['ort_images_per_s']:.1f} images/s")
        entry["ort_p50_ms"] = ort_latency(session, singles, args.latency_images)
        log(f"  ONNX Runtime batch 1: p50 {entry['ort_p50_ms']:.1f} ms")
        time.sleep(PAUSE_S)
        b8 = subpass_bench(subpass, pipeline, BATCH, args.images)
        entry["subpass_images_per_s"] = b8["pipeline_records_per_s"]
        entry["subpass_bench_batch8"] = b8
        log(f"  subpass batch {BATCH}: {entry['subpass_images_per_s']:.1f} images/s")
        time.sleep(PAUSE_S)
        b1 = subpass_bench(subpass, pipeline, 1, args.latency_images)
        entry["subpass_p50_ms"] = b1["idle_latency_p50_ms"]
        entry["subpass_bench_batch1"] = b1
        log(f"  subpass batch 1: p50 {entry['subpass_p50_ms']:.1f} ms")
        if latency_pipeline is not None:
            time.sleep(PAUSE_S)
            bl = subpass_bench(subpass, latency_pipeline, 1, args.latency_images)
            entry["subpass_latency_plan_p50_ms"] = bl["idle_latency_p50_ms"]
            entry["subpass_bench_latency_plan"] = bl
            log(f"  subpass batch 1, latency plan: p50 {bl['idle_latency_p50_ms']:.1f} ms")
        entry["loadavg_1min_at_end"] = os.getloadavg()[0]
        rounds.append(entry)
    return rounds


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def table(report):
    f = report["flops"]
    med = report["medians"]
    gflop = f["direct_conv_flops_per_image"] / 1e9
    peak = report["peak_gflops"]
    lines = [
        f"ResNet-18, fp32, [3, 224, 224] images, in memory; {report['rounds']} rounds, medians; "
        f"load average (1 min) {report['machine']['loadavg_at_start'][0]:.2f} at start, "
        f"{report['machine']['loadavg_at_end'][0]:.2f} at end.", "",
        f"FLOPs per image: {gflop:.3f} G direct-convolution FLOPs (torchvision's Conv2d and "
        f"Linear shapes); subpass's plan counts {f['subpass_flops_per_image'] / 1e9:.3f} G "
        f"(its convolutions and dense layer: {f['subpass_conv_dense_flops_per_image'] / 1e9:.3f} "
        f"G, plus relu, add and pools; folded batch norms count 0).", "",
        f"| contender | batch {BATCH} images/s | GFLOP/s | of the {peak:.0f} GFLOP/s peak | "
        f"vs ORT | batch-1 p50 ms | vs ORT |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    ort_rate, ort_p50 = med["ort_images_per_s"], med["ort_p50_ms"]
    for name, rate, p50 in (
            (f"ONNX Runtime {report['versions']['onnxruntime']} ({THREADS} threads)",
             ort_rate, ort_p50),
            (f"subpass ({report['pipeline_stages']} stage(s), as in the file)", med["subpass_images_per_s"],
             med["subpass_p50_ms"])):
        lines.append(f"| {name} | {rate:.1f} | {rate * gflop:.1f} | "
                     f"{100 * rate * gflop / peak:.0f}% | {rate / ort_rate:.2f}× | {p50:.1f} | "
                     f"{ort_p50 / p50:.2f}× |")
    if "subpass_latency_plan_p50_ms" in med:
        p50 = med["subpass_latency_plan_p50_ms"]
        lines.append(f"| subpass, `plan --objective latency` ({report['latency_plan']}) | | | | | "
                     f"{p50:.1f} | {ort_p50 / p50:.2f}× |")
    lines += ["", "ratios: subpass over ONNX Runtime for images/s, ONNX Runtime over subpass for "
              "latency (above 1 is subpass ahead).", "",
              f"check: {report['check']['images']} images, max |diff| "
              f"{report['check']['max_abs_diff']:.2g} at logit scale "
              f"{report['check']['output_scale']:.2g} (relative "
              f"{report['check']['relative_diff']:.2g}).", ""]
    return "\n".join(lines)


def subpass_flops(subpass, pipeline):
    """Total and conv + dense FLOPs per record from `subpass validate`'s layer table (a layer's
    line: name, op, output shape, parameters, FLOPs, `<-` its inputs). A convolution folded into
    the residual add after it (`X folded into Y` with X a conv2d) has its FLOPs counted on the
    add, beside the add's own one per output value."""
    out = subprocess.run([subpass, "validate", str(pipeline)], capture_output=True, text=True,
                         check=True).stdout
    rows = {}
    for line in out.split("\nlayers:\n", 1)[1].split("\n\n", 1)[0].splitlines():
        if "<-" not in line:
            continue
        fields = line.split("<-")[0].split()
        shape = [int(d) for d in re.findall(r"\d+", fields[2].split("/")[0])]
        rows[fields[0]] = (fields[1], int(fields[-1]), math.prod(shape))
    hosts = set()
    for m in re.finditer(r"^  (\S+) folded into (\S+)$", out, re.M):
        if rows.get(m.group(1), ("",))[0] == "conv2d":
            hosts.add(m.group(2))
    total = sum(flops for _, flops, _ in rows.values())
    conv_dense = sum(flops for op, flops, _ in rows.values() if op in ("conv2d", "dense", "linear"))
    conv_dense += sum(rows[h][1] - rows[h][2] for h in hosts)
    return total, conv_dense


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subpass", default="target/release/subpass")
    ap.add_argument("--pipeline", default="configs/resnet18.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=64,
                    help="images per timed batch-8 repeat (each contender)")
    ap.add_argument("--latency-images", type=int, default=24,
                    help="single images timed for the batch-1 latency (each contender)")
    ap.add_argument("--quick", action="store_true", help="1 round, 16 and 4 images")
    ap.add_argument("--no-latency-plan", action="store_true",
                    help="skip the batch-1 run of `subpass plan --objective latency`'s pipeline")
    ap.add_argument("--check", action="store_true", help="only the correctness check")
    ap.add_argument("--peak", type=float, default=233.0,
                    help="machine FMA peak in GFLOP/s (default: 2 Zen 4 cores)")
    ap.add_argument("--out", default="bench-results/resnet-race.json")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.images, args.latency_images = 1, 16, 4

    def at_repo(p):
        p = Path(p)
        return p if p.is_absolute() else REPO / p

    subpass, pipeline, out_path = at_repo(args.subpass), at_repo(args.pipeline), at_repo(args.out)
    if not os.access(subpass, os.X_OK):
        raise SystemExit(f"no subpass binary at {subpass}: cargo build --release, or --subpass")
    workdir = REPO / "bench-results/peers"
    workdir.mkdir(parents=True, exist_ok=True)

    import onnx
    import onnxruntime
    import torch
    import torchvision

    torch.set_num_threads(THREADS)
    version = subprocess.run([str(subpass), "--version"], capture_output=True, text=True)
    report = {"machine": machine_info(), "rounds": args.rounds, "images": args.images,
              "latency_images": args.latency_images, "peak_gflops": args.peak,
              "pipeline": str(pipeline),
              "versions": {"subpass": version.stdout.strip(), "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                           "python": platform.python_version()}}
    m = report["machine"]
    log(f"machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, load average "
        f"{m['loadavg_at_start'][0]:.2f}")

    weights = export_weights(str(subpass), pipeline, workdir)
    model = torchvision_model(weights)
    onnx_path, meta = export_onnx(model, weights, workdir)
    report["onnx"] = {"path": str(onnx_path), **meta}
    total, conv_dense = subpass_flops(str(subpass), pipeline)
    report["pipeline_stages"] = len(yaml.safe_load(pipeline.read_text()).get("stages") or [1])
    report["flops"] = {"direct_conv_flops_per_image": direct_conv_flops(model),
                       "subpass_flops_per_image": total,
                       "subpass_conv_dense_flops_per_image": conv_dense}
    log(f"FLOPs per image: direct convolution {report['flops']['direct_conv_flops_per_image']:,}"
        f"; subpass {total:,} (conv + dense {conv_dense:,})")
    session = make_session(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        report["check"] = check(str(subpass), pipeline, session, tmp)
    if args.check:
        return

    latency_pipeline = None
    if not args.no_latency_plan:
        # The batch-1 pipeline subpass plans for latency on this machine: layers split into
        # shards so that one image uses both cores.
        latency_pipeline = workdir / "resnet18-latency.yaml"
        planned = subprocess.run([str(subpass), "plan", str(pipeline), "--batch", "1",
                                  "--objective", "latency", "--write", str(latency_pipeline)],
                                 capture_output=True, text=True, check=True).stdout
        for line in planned.strip().splitlines():
            if line.startswith(("check run", "latency:")):
                log(line)
        plan_yaml = yaml.safe_load(latency_pipeline.read_text())
        threads = max(s.get("threads", 1) for s in plan_yaml["stages"])
        if threads > 1:
            report["latency_plan"] = f"one stage on {threads} threads, convolutions split over them"
        else:
            report["latency_plan"] = (f"{len(plan_yaml.get('shards') or {})} layers in shards, "
                                      f"{len(plan_yaml['stages'])} stages")
    report["rounds_raw"] = race(args, str(subpass), pipeline, session, latency_pipeline)
    keys = ["ort_images_per_s", "ort_p50_ms", "subpass_images_per_s", "subpass_p50_ms"]
    if latency_pipeline is not None:
        keys.append("subpass_latency_plan_p50_ms")
    report["medians"] = {k: statistics.median(r[k] for r in report["rounds_raw"]) for k in keys}
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"raw figures: {out_path}")


if __name__ == "__main__":
    main()
