#!/usr/bin/env python3
"""The planner against `bench`: for each pipeline in configs/, plan it for 2 cores, then bench the
planned file and the hand-written one, alternated, and report medians:

    python3 tools/plan_accuracy.py [--rounds 3] [--subpass target/release/subpass] [CONFIG ...]

Per file: planning time, the predicted records/s (fed from memory, the `planned:` line), the
measured records/s of the planned and of the hand-written stages, the prediction's error and
planned over hand-written. `bench` takes numeric records only, so a text pipeline (MiniLM) is
planned on a sample of sentences (`--sample`, the first TEXT_LINES of benches/corpus/sentences.txt)
and measured end to end, `subpass run --format text --input` on the same lines, against the plan's
end-to-end prediction (the one with the parser: tokenizing is part of its work).
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = ["mlp", "cnn", "residual", "digits-mlp", "digits-cnn", "resnet18", "minilm"]
# Text pipelines: the corpus their sample and their runs read.
TEXT = {"minilm": REPO / "benches" / "corpus" / "sentences.txt"}
# Lines of it: about six seconds a run on 2 cores.
TEXT_LINES = 2000
# Each bench runs about this long at the predicted rate, and at least MIN_RECORDS (ResNet-18:
# MIN_CHUNKS chunks): a fixed 20,000 records last 7 ms on the digits models, where thread
# start-up and the machine's noise are most of what is measured, and 64 images are 8 chunks,
# whose first and last leave a core idle.
SECONDS = 1.5
MIN_RECORDS = {"resnet18": 256}


def bench(subpass, path, records):
    out = subprocess.run([subpass, "bench", str(path), "--json", "--records", str(records)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["pipeline_records_per_s"]


def run_text(subpass, path, sample):
    """Records/s of `subpass run` on the sample's lines, as its summary on stderr gives it."""
    out = subprocess.run([subpass, "run", str(path), "--format", "text", "--input", str(sample)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return float(re.search(r"\(([\d.]+) records/s\)", out.stderr).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subpass", default=str(REPO / "target/release/subpass"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            config = REPO / "configs" / f"{name}.yaml"
            planned = Path(tmp) / f"{name}.yaml"
            sample = None
            extra = []
            if name in TEXT:
                sample = Path(tmp) / f"{name}-sample.txt"
                lines = TEXT[name].read_text().splitlines(keepends=True)[:TEXT_LINES]
                sample.write_text("".join(lines))
                extra = ["--sample", str(sample), "--format", "text"]
            t = time.perf_counter()
            shown = subprocess.run([args.subpass, "plan", str(config), "--cores", "2",
                                    "--write", str(planned)] + extra,
                                   capture_output=True, text=True, check=True).stdout
            seconds = time.perf_counter() - t
            if sample:
                found = re.search(r"([\d.]+) records/s end to end with the parser", shown)
                predicted = float(found.group(1))
            else:
                line = next(l for l in planned.read_text().splitlines()
                            if l.startswith("planned:"))
                predicted = float(line.split("records_per_s:")[1].strip(" }"))
            kept = "kept)" in shown
            records = max(MIN_RECORDS.get(name, 20000), int(predicted * SECONDS))

            def measure(path):
                if sample:
                    return run_text(args.subpass, path, sample)
                return bench(args.subpass, path, records)

            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(measure(planned))
                theirs.append(measure(config))
            m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
            rows.append((name, seconds, predicted, m_ours, m_theirs, kept))
            print(f"{name}: planned in {seconds:.1f} s; predicted {predicted:.0f}/s, planned "
                  f"{m_ours:.0f}/s, hand-written {m_theirs:.0f}/s; {'file kept' if kept else 'new stages'}",
                  file=sys.stderr)
    print("| pipeline | planning s | predicted rec/s | planned, measured | error | "
          "hand-written, measured | planned / hand-written |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, seconds, predicted, ours, theirs, kept in rows:
        print(f"| {name} | {seconds:.1f} | {predicted:,.0f} | {ours:,.0f} | "
              f"{100 * (predicted - ours) / ours:+.0f}% | {theirs:,.0f} | {ours / theirs:.2f}×"
              f"{' (file kept)' if kept else ''} |")


if __name__ == "__main__":
    main()
