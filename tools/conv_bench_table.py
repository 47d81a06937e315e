#!/usr/bin/env python3
"""The README's convolution table from `cargo bench --bench conv`'s criterion results.

    cargo bench --bench conv -- --save-baseline avx512
    SUBPASS_KERNELS=avx2 cargo bench --bench conv -- --save-baseline avx2
    python3 tools/conv_bench_table.py [--dir target/criterion] [--peak 116] avx512 [avx2]

Each benchmark's throughput is direct-convolution FLOPs and its time the benchmark thread's CPU
time (benches/conv.rs), so median FLOPs / median time is the effective GFLOP/s. The first
baseline gives every algorithm's column; a second one adds its `auto` column. Prints markdown.
"""

import argparse
import json
import os
from pathlib import Path

ALGORITHMS = ["direct", "gemm", "winograd_f2", "winograd_f4"]


def gflops(dir_, group, function, batch, baseline):
    base = dir_ / group / function / str(batch)
    try:
        est = json.loads((base / baseline / "estimates.json").read_text())
        bench = json.loads((base / baseline / "benchmark.json").read_text())
    except FileNotFoundError:
        return None
    flops = bench["throughput"]["Elements"]
    return flops / est["median"]["point_estimate"]  # FLOPs per CPU ns = GFLOP/s


def main():
    default_dir = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=default_dir)
    ap.add_argument("--peak", type=float, default=116.0, help="FMA peak, GFLOP/s a core")
    ap.add_argument("baselines", nargs="+")
    args = ap.parse_args()
    first = args.baselines[0]
    groups = sorted(
        (p.name for p in args.dir.iterdir() if (p / "auto").is_dir()),
        key=lambda g: (not g.startswith("resnet"), g),
    )
    header = ["shape", "batch", f"auto ({first})", "% of peak"]
    header += [a.replace("_", " ") for a in ALGORITHMS]
    header += [f"auto ({b})" for b in args.baselines[1:]]
    print("| " + " | ".join(header) + " |")
    print("| --- | ---: |" + " ---: |" * (len(header) - 2))
    for group in groups:
        batches = sorted(int(p.name) for p in (args.dir / group / "auto").iterdir() if p.name.isdigit())
        for batch in batches:
            auto = gflops(args.dir, group, "auto", batch, first)
            if auto is None:
                continue
            cells = [group, str(batch), f"{auto:.1f}", f"{100 * auto / args.peak:.0f}%"]
            for a in ALGORITHMS:
                g = gflops(args.dir, group, a, batch, first)
                cells.append("" if g is None else f"{g:.1f}")
            for b in args.baselines[1:]:
                g = gflops(args.dir, group, "auto", batch, b)
                cells.append("" if g is None else f"{g:.1f}")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
