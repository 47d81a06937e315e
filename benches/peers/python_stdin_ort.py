#!/usr/bin/env python3
"""The Python baseline for `subpass run`: JSON lines on stdin -> ONNX Runtime -> JSON lines out.

    python_stdin_ort.py MODEL.onnx [--batch 64] [--threads 2] [--field x] < in.jsonl > out.jsonl

What a reasonable person writes in an afternoon: read lines, json.loads each one (an object
`{"x": [...]}` or a bare array), collect `--batch` records, run the session, write one
`{"y": [...]}` line per record, in input order. Records are flattened and reshaped to the model's
per-record input shape, so nested and flat arrays both work. Blank lines are skipped; there is
no error handling beyond that, which only flatters the baseline.

Only the standard library and numpy on the text path: the point is to measure the usual
stdin/stdout glue around ONNX Runtime, not the fastest possible JSON library.
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def make_session(model_path, threads):
    """Same session settings as race.py's in-memory measurements."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--field", default="x", help="object field holding the record")
    args = parser.parse_args()

    session = make_session(args.model, args.threads)
    model_input = session.get_inputs()[0]
    record_shape = [int(d) for d in model_input.shape[1:]]  # drop the dynamic batch axis
    record_len = int(np.prod(record_shape))
    output_name = session.get_outputs()[0].name

    out = sys.stdout
    pending = []

    def flush():
        x = np.asarray(pending, dtype=np.float32).reshape([len(pending)] + record_shape)
        (y,) = session.run([output_name], {model_input.name: x})
        y = y.reshape(len(pending), -1)
        out.write("".join(json.dumps({"y": row}) + "\n" for row in y.tolist()))
        pending.clear()

    for line in sys.stdin:
        if not line.strip():
            continue
        value = json.loads(line)
        if isinstance(value, dict):
            value = value[args.field]
        record = np.asarray(value, dtype=np.float32).reshape(-1)
        if record.size != record_len:
            raise SystemExit(f"record has {record.size} values, the model wants {record_len}")
        pending.append(record)
        if len(pending) == args.batch:
            flush()
    if pending:
        flush()
    out.flush()


if __name__ == "__main__":
    main()
