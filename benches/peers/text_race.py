#!/usr/bin/env python3
"""Text embeddings: subpass against sentence-transformers and ONNX Runtime, all-MiniLM-L6-v2.

    text_race.py [--model models/all-minilm-l6-v2] [--rounds 3] [--quick] [--check]
                 [--subpass target/release/subpass] [--pipeline configs/minilm.yaml]

On benches/corpus/sentences.txt (one sentence a line), three contenders:

 1. sentence-transformers on PyTorch, torch.set_num_threads(2): `model.encode(lines,
    batch_size=32)` with its own batching (sorted by character length, longest first, each
    batch padded to its longest), timed in memory: lines already read, model loaded,
    tokenization included.
 2. ONNX Runtime fp32 (2 intra-op threads, inter-op 1, sequential, all graph optimizations) on
    the same model exported with torch.onnx.export (BertModel, mean pooling over the attention
    mask, L2 normalization; dynamic batch and sequence axes; cached in bench-results/peers/),
    tokenized with the `tokenizers` package from tokenizer.json (truncation 256, padding to the
    longest of the batch), batches of 32 in sentence-transformers' order, timed like 1.
 3. subpass: `SUBPASS run PIPELINE --format text < corpus > /dev/null`, wall time of the whole
    command (process start, model load, reading, JSON output included). Skipped, with a
    message, while the pipeline file does not exist.

Before any timing: ORT's embeddings must match sentence-transformers' on the first 200
sentences (and one sentence alone, no padding) with cosine >= 0.99999, or the race stops;
likewise subpass's JSON lines `{"line": N, "y": [384 floats]}` when its pipeline exists.
`--check` does only this.

The contenders alternate round-robin for --rounds rounds (ST, ORT, subpass, ST, ...), medians
are reported. Figures: sentences/s; tokens/s counting real tokens (tokenizer output with
[CLS] and [SEP], no padding); the padded tokens each peer actually computes (sum over batches
of batch size x longest) and the ratio padded/real; GFLOP/s of the encoder counted on real
tokens, and as a fraction of the machine's FMA peak (--peak, 233 GFLOP/s for 2 Zen 4 cores).
The FLOP count per sequence of L tokens, for layers N, hidden H, intermediate I:

    N * ( L * 2 * (4 H^2 + 2 H I)   +   2 * 2 * L^2 * H )
          dense: Q, K, V, output,      attention: Q K^T and
          FFN up and down              softmax(.) V, all heads

(embeddings, layer norms, softmax, GELU and pooling are not counted: < 1%).

Then batch-1 latency, p50 and p99 of 200 repetitions after a warm-up, for a corpus sentence of
exactly 16 tokens (with [CLS] and [SEP]): ST `encode([s])`, ORT tokenize + run, and subpass
as one running process, one line written, one output line read, repeated.

Markdown tables to stdout, progress to stderr, raw figures to bench-results/text-race.json.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BATCH = 32
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
THREADS = 2
COS_MIN = 0.99999
CHECK_N = 200
LAT_TOKENS = 16
LAT_REPS = 200
LAT_WARMUP = 20
QUICK_N = 500
OPSET = 17
PAUSE_S = 1.0  # between contenders: let the previous one's spinning worker threads park


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
# FLOPs
# ---------------------------------------------------------------------------------------------
class Bert:
    def __init__(self, model_dir):
        cfg = json.loads((model_dir / "config.json").read_text())
        self.layers = cfg["num_hidden_layers"]
        self.hidden = cfg["hidden_size"]
        self.inter = cfg["intermediate_size"]

    def per_token_dense(self):
        h, i = self.hidden, self.inter
        return self.layers * 2 * (4 * h * h + 2 * h * i)

    def sequence(self, length):
        """Encoder FLOPs for one sequence of `length` tokens."""
        return self.per_token_dense() * length + self.layers * 4 * length * length * self.hidden


def percentile(sorted_xs, q):
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


# ---------------------------------------------------------------------------------------------
# Contenders
# ---------------------------------------------------------------------------------------------
class SentenceTransformersPeer:
    name = "sentence-transformers (PyTorch)"

    def __init__(self, model_dir):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(THREADS)
        t = time.perf_counter()
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.load_s = time.perf_counter() - t
        if self.model.max_seq_length != MAX_TOKENS:
            raise SystemExit(f"sentence-transformers max_seq_length is "
                             f"{self.model.max_seq_length}, expected {MAX_TOKENS}: is "
                             f"sentence_bert_config.json in {model_dir}?")
        # The shapes the transformer actually gets (one Python append per batch: negligible).
        self.shapes = []
        self.model[0].register_forward_pre_hook(
            lambda module, args: self.shapes.append(tuple(args[0]["input_ids"].shape)))
        self.threads = f"{torch.get_num_threads()} (torch)"

    def encode(self, lines):
        return self.model.encode(lines, batch_size=BATCH, show_progress_bar=False)


class OrtPeer:
    name = "ONNX Runtime fp32"

    def __init__(self, model_dir, onnx_path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        t = time.perf_counter()
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with truncation 128 and fixed padding to 128: replace both with
        # what sentence-transformers does (max_seq_length 256, pad to the batch's longest).
        tok.enable_truncation(MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tok = tok
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), so,
                                            providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - t
        self.shapes = []
        self.threads = f"{THREADS} intra-op, 1 inter-op"

    def run_batch(self, batch):
        encs = self.tok.encode_batch(batch)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        self.shapes.append(ids.shape)
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def encode(self, lines):
        # sentence-transformers' order: longest (in characters) first, so that both peers
        # compute the very same padded batches.
        order = np.argsort([-len(s) for s in lines])
        out = np.empty((len(lines), 384), dtype=np.float32)
        for start in range(0, len(lines), BATCH):
            idx = order[start:start + BATCH]
            out[idx] = self.run_batch([lines[i] for i in idx])
        return out


class SubpassPeer:
    name = "subpass run (whole command)"

    def __init__(self, binary, pipeline):
        self.binary, self.pipeline = binary, pipeline
        self.threads = "see pipeline"
        self.shapes = None

    def cmd(self):
        return [self.binary, "run", str(self.pipeline), "--format", "text"]

    def run_file(self, path, capture=False):
        """Wall time and child CPU time of `subpass run ... < path`."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        with open(path, "rb") as f:
            p = subprocess.run(self.cmd(), stdin=f, capture_output=capture,
                               stdout=None if capture else subprocess.DEVNULL,
                               stderr=None if capture else subprocess.PIPE)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(self.cmd())} < {path} failed ({p.returncode}):\n"
                             f"{p.stderr.decode(errors='replace')[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, p


def export_onnx(model_dir, out_dir):
    """BertModel + mean pooling + L2 normalize, exported once and cached with its provenance."""
    import torch
    import transformers

    weights = model_dir / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    onnx_path = out_dir / "all-minilm-l6-v2.onnx"
    meta_path = out_dir / "all-minilm-l6-v2.onnx.json"
    meta = {"model_safetensors_sha256": digest, "torch": torch.__version__,
            "transformers": transformers.__version__, "opset": OPSET, "exporter": "legacy"}
    if onnx_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        log(f"ONNX model: {onnx_path} (cached)")
        return onnx_path, meta

    log(f"ONNX model: exporting to {onnx_path}")
    bert = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    bert.eval()

    class Embed(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            # sentence-transformers' Pooling (mean) and Normalize modules.
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    # A padded example, so that no trace-time shortcut for an all-ones mask is taken.
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    tmp = onnx_path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            Embed(bert), (ids, mask), str(tmp), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"},
                          "embedding": {0: "batch"}})
    tmp.replace(onnx_path)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return onnx_path, meta


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------
def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(name, ref, got):
    cos = cosines(ref, got)
    res = {"sentences": len(ref), "min_cosine": float(cos.min()),
           "worst_sentence": int(cos.argmin()),
           "max_abs_diff": float(np.abs(np.asarray(ref) - np.asarray(got)).max()),
           "ok": bool(cos.min() >= COS_MIN)}
    log(f"check {name}: {len(ref)} sentences, min cosine {res['min_cosine']:.8f}, "
        f"max |diff| {res['max_abs_diff']:.2g}")
    if not res["ok"]:
        raise SystemExit(f"check {name} FAILED: cosine {res['min_cosine']:.8f} < {COS_MIN} "
                         f"on sentence {res['worst_sentence'] + 1}")
    return res


def check_ort(st, ort_peer, lines):
    ref = st.encode(lines)
    res = {"batched": compare("ONNX Runtime vs sentence-transformers", ref,
                              ort_peer.encode(lines))}
    # One sentence alone: no padding, an all-ones mask.
    res["single"] = compare("ONNX Runtime vs sentence-transformers, batch 1", ref[:1],
                            ort_peer.encode(lines[:1]))
    return res, ref


def check_subpass(sp, lines, ref, tmp):
    path = Path(tmp) / "check.txt"
    path.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    _, _, p = sp.run_file(path, capture=True)
    by_line = {}
    for raw in p.stdout.decode().splitlines():
        rec = json.loads(raw)
        y = rec["y"]
        if isinstance(y, dict):
            y = [v for values in y.values() for v in values]
        by_line[rec["line"]] = y
    if sorted(by_line) != list(range(1, len(lines) + 1)):
        raise SystemExit(f"check subpass: {len(by_line)} output lines for {len(lines)} input "
                         f"lines, or lines not numbered 1..{len(lines)}")
    got = np.array([by_line[i + 1] for i in range(len(lines))], dtype=np.float32)
    if got.shape[1] != ref.shape[1]:
        raise SystemExit(f"check subpass: {got.shape[1]} floats per line, expected "
                         f"{ref.shape[1]}")
    return compare("subpass vs sentence-transformers", ref, got)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def padded_tokens(shapes):
    return sum(b * l for b, l in shapes)


def race(st, ort_peer, sp, lines, corpus_path, rounds):
    """Round-robin: ST, ORT, subpass, ST, ORT, subpass, ... Each entry: wall, CPU, load."""
    contenders = [("st", st), ("ort", ort_peer)] + ([("subpass", sp)] if sp else [])
    runs = {key: [] for key, _ in contenders}
    shapes = {}
    # Warm-up, untimed: thread pools, allocator arenas, kernel selection, page cache.
    warm = lines[:2 * BATCH]
    st.encode(warm)
    ort_peer.encode(warm)
    if sp:
        sp.run_file(corpus_path)
    for r in range(rounds):
        for key, peer in contenders:
            time.sleep(PAUSE_S)
            log(f"round {r + 1}/{rounds}: {peer.name}")
            load = os.getloadavg()[0]
            if key == "subpass":
                wall, cpu, _ = sp.run_file(corpus_path)
            else:
                peer.shapes.clear()
                cpu0, t = time.process_time(), time.perf_counter()
                peer.encode(lines)
                wall, cpu = time.perf_counter() - t, time.process_time() - cpu0
                shapes.setdefault(key, list(peer.shapes))
                if shapes[key] != peer.shapes:
                    raise SystemExit(f"{peer.name}: batch shapes changed between rounds")
            runs[key].append({"seconds": wall, "cpu_seconds": cpu, "loadavg_1min": load})
            log(f"  {wall:.2f} s, {len(lines) / wall:,.0f} sentences/s, CPU/wall "
                f"{cpu / wall:.2f}, load {load:.2f}")
    return runs, shapes


def latencies(fn, reps=LAT_REPS, warmup=LAT_WARMUP):
    for _ in range(warmup):
        fn()
    lat = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    s = sorted(lat)
    return {"repetitions": reps, "p50_ms": 1e3 * percentile(s, 0.5),
            "p99_ms": 1e3 * percentile(s, 0.99), "all_ms": [1e3 * x for x in lat]}


def subpass_latency(sp, sentence, timeout=30.0):
    """One subpass process; write a line, read one output line, repeat."""
    p = subprocess.Popen(sp.cmd(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, bufsize=0)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    buf = bytearray()
    line = (sentence + "\n").encode()

    def one():
        p.stdin.write(line)
        deadline = time.perf_counter() + timeout
        while b"\n" not in buf:
            left = deadline - time.perf_counter()
            if left <= 0 or not sel.select(left):
                raise TimeoutError
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError
            buf.extend(chunk)
        del buf[:buf.index(b"\n") + 1]

    try:
        return latencies(one)
    except (TimeoutError, EOFError) as e:
        msg = ("subpass wrote no output line within 30 s of an input line (does it wait for a "
               "full chunk or for EOF?)" if isinstance(e, TimeoutError)
               else "subpass exited during the latency run")
        log(msg)
        return {"skipped": msg}
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summarize(runs, n_sentences, real_tokens, real_flops, padded, padded_flops, peak):
    secs = statistics.median(r["seconds"] for r in runs)
    cpu = statistics.median(r["cpu_seconds"] / r["seconds"] for r in runs)
    out = {"seconds_median": secs, "seconds_all": [r["seconds"] for r in runs],
           "cpu_per_wall_median": cpu,
           "loadavg_median": statistics.median(r["loadavg_1min"] for r in runs),
           "sentences_per_s": n_sentences / secs,
           "real_tokens_per_s": real_tokens / secs, "gflops_real": real_flops / secs / 1e9}
    out["peak_fraction"] = out["gflops_real"] / peak
    if padded is not None:
        out["padded_tokens"] = padded
        out["padded_per_real"] = padded / real_tokens
        out["gflops_executed"] = padded_flops / secs / 1e9
    return out


def table(report):
    c, res = report["corpus"], report["results"]
    lines = [
        f"corpus: {c['path']}, {c['sentences']:,} sentences, {c['real_tokens']:,} real tokens "
        f"(mean {c['tokens_mean']:.1f}, p50 {c['tokens_p50']}, p90 {c['tokens_p90']}, max "
        f"{c['tokens_max']}); encoder {c['gflop_real']:.2f} GFLOP on real tokens; "
        f"rounds: {report['rounds']}, medians", "",
        "CPU/wall: CPU seconds of the process (or of subpass's) per wall second, 2.0 at most "
        "on 2 cores; load: 1-minute load average when the runs started.", "",
        "| contender | threads | s | sentences/s | real tokens/s | padded tokens | "
        "padded/real | GFLOP/s (real) | of peak | CPU/wall | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in ("st", "ort", "subpass"):
        r = res.get(key)
        if not r or "skipped" in r:
            continue
        pad = f"{r['padded_tokens']:,}" if "padded_tokens" in r else "—"
        ratio = f"{r['padded_per_real']:.3f}" if "padded_per_real" in r else "—"
        lines.append(
            f"| {r['name']} | {r['threads']} | {r['seconds_median']:.2f} | "
            f"{r['sentences_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | {pad} | {ratio} | "
            f"{r['gflops_real']:.1f} | {100 * r['peak_fraction']:.1f}% | "
            f"{r['cpu_per_wall_median']:.2f} | {r['loadavg_median']:.1f} |")
    if "skipped" in res.get("subpass", {}):
        lines += ["", f"subpass: {res['subpass']['skipped']}"]
    elif "subpass" in res:
        lines += ["", f"subpass start-up and model load, on an empty input: "
                  f"{res['subpass']['startup_seconds_empty_input']:.2f} s (median of 3)."]
    lines += ["", f"Token-length sorting instead of character-length sorting would compute "
              f"{c['padded_tokens_token_sorted']:,} padded tokens "
              f"({c['padded_tokens_token_sorted'] / c['real_tokens']:.3f}× real)."]
    lat = report["latency"]
    lines += ["", f"batch-1 latency, \"{lat['sentence']}\" ({LAT_TOKENS} tokens), "
              f"{LAT_REPS} repetitions after {LAT_WARMUP} warm-up:", "",
              "| contender | p50 ms | p99 ms |", "|---|---:|---:|"]
    for key, what in (("st", "sentence-transformers, encode([s])"),
                      ("ort", "ONNX Runtime, tokenize + run"),
                      ("subpass", "subpass run, one line in, one line out")):
        r = lat.get(key)
        if r and "p50_ms" in r:
            lines.append(f"| {what} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
        elif r:
            lines.append(f"| {what} | skipped | |")
    m = report["machine"]
    lines += ["", f"load average (1 min) at start {m['loadavg_at_start'][0]:.2f}, at end "
              f"{m['loadavg_at_end'][0]:.2f}; the Python peers are timed in memory (model "
              f"loaded, lines read), subpass as a whole command (start-up, model load, I/O).", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/all-minilm-l6-v2",
                    help="model directory (relative to the repository root)")
    ap.add_argument("--corpus", default="benches/corpus/sentences.txt")
    ap.add_argument("--subpass", default="target/release/subpass")
    ap.add_argument("--pipeline", default="configs/minilm.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_N} sentences only")
    ap.add_argument("--check", action="store_true", help="only check correctness, no timing")
    ap.add_argument("--peak", type=float, default=233.0,
                    help="machine FMA peak in GFLOP/s (default: 2 Zen 4 cores)")
    ap.add_argument("--out", default="bench-results/text-race.json")
    args = ap.parse_args()

    def at_repo(p):
        p = Path(p)
        return p if p.is_absolute() else REPO / p

    model_dir, corpus = at_repo(args.model), at_repo(args.corpus)
    binary, pipeline, out_path = at_repo(args.subpass), at_repo(args.pipeline), at_repo(args.out)
    for need in ("config.json", "tokenizer.json", "model.safetensors", "modules.json",
                 "sentence_bert_config.json", "1_Pooling/config.json"):
        if not (model_dir / need).exists():
            raise SystemExit(f"{model_dir / need} missing: --model DIR, or fetch the model")
    workdir = REPO / "bench-results/peers"  # the exported ONNX model, kept for reuse
    workdir.mkdir(parents=True, exist_ok=True)

    all_lines = corpus.read_text(encoding="utf-8").splitlines()
    lines = all_lines[:QUICK_N] if args.quick else all_lines

    import onnx
    import onnxruntime
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    report = {"machine": machine_info(), "rounds": args.rounds, "quick": args.quick,
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "sentence_transformers": sentence_transformers.__version__,
                           "transformers": transformers.__version__,
                           "tokenizers": tokenizers.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
              "model": str(model_dir), "results": {}, "latency": {}}
    m = report["machine"]
    log(f"machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, load average "
        f"{m['loadavg_at_start'][0]:.2f}")

    # The subpass contender exists once its pipeline file does.
    sp = None
    if not pipeline.exists():
        msg = (f"{pipeline.relative_to(REPO) if pipeline.is_relative_to(REPO) else pipeline} "
               f"does not exist yet: subpass skipped (expected until the MiniLM pipeline lands)")
        log(msg)
        report["results"]["subpass"] = report["latency"]["subpass"] = {"skipped": msg}
    elif not os.access(binary, os.X_OK):
        raise SystemExit(f"no subpass binary at {binary}: cargo build --release, or --subpass")
    else:
        sp = SubpassPeer(str(binary), pipeline)
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
        report["versions"]["subpass"] = version.stdout.strip()

    onnx_path, onnx_meta = export_onnx(model_dir, workdir)
    report["onnx"] = {"path": str(onnx_path), **onnx_meta}
    st = SentenceTransformersPeer(model_dir)
    ort_peer = OrtPeer(model_dir, onnx_path)
    report["load_seconds"] = {"st": st.load_s, "ort": ort_peer.load_s}

    # 1. Correctness.
    check_lines = all_lines[:CHECK_N]
    report["check"], ref = check_ort(st, ort_peer, check_lines)
    with tempfile.TemporaryDirectory() as tmp:
        if sp:
            report["check"]["subpass"] = check_subpass(sp, check_lines, ref, tmp)
        if args.check:
            return

        # 2. Corpus figures: real tokens (no padding), FLOPs.
        bert = Bert(model_dir)
        count = ort_peer.tok
        count.no_padding()
        lengths = [len(e.ids) for e in count.encode_batch(lines)]
        count.enable_padding(pad_id=0, pad_token="[PAD]")
        real_tokens = sum(lengths)
        real_flops = sum(bert.sequence(n) for n in lengths)
        by_tokens = sorted(lengths, reverse=True)
        token_sorted_padded = sum(by_tokens[i] * len(by_tokens[i:i + BATCH])
                                  for i in range(0, len(by_tokens), BATCH))
        sl = sorted(lengths)
        report["corpus"] = {
            "path": str(corpus.relative_to(REPO) if corpus.is_relative_to(REPO) else corpus),
            "sentences": len(lines), "real_tokens": real_tokens,
            "tokens_mean": real_tokens / len(lines), "tokens_p50": percentile(sl, 0.5),
            "tokens_p90": percentile(sl, 0.9), "tokens_max": sl[-1],
            "truncated_at_256": sum(n >= MAX_TOKENS for n in lengths),
            "gflop_real": real_flops / 1e9,
            "padded_tokens_token_sorted": token_sorted_padded,
            "flop_formula": "layers*(L*2*(4H^2+2HI) + 4*L^2*H) per sequence of L tokens",
            "bert": {"layers": bert.layers, "hidden": bert.hidden, "intermediate": bert.inter,
                     "dense_flop_per_token": bert.per_token_dense()},
        }
        corpus_file = corpus
        if args.quick:
            corpus_file = Path(tmp) / "quick.txt"
            corpus_file.write_text("".join(s + "\n" for s in lines), encoding="utf-8")

        # 3. Throughput, round-robin.
        runs, shapes = race(st, ort_peer, sp, lines, corpus_file, args.rounds)
        for key, peer in (("st", st), ("ort", ort_peer), ("subpass", sp)):
            if key not in runs:
                continue
            sh = shapes.get(key)
            padded = padded_tokens(sh) if sh else None
            padded_flops = sum(b * bert.sequence(l) for b, l in sh) if sh else None
            res = summarize(runs[key], len(lines), real_tokens, real_flops, padded,
                            padded_flops, args.peak)
            res.update({"name": peer.name, "threads": peer.threads, "runs": runs[key]})
            if sh:
                res["batches"] = len(sh)
            report["results"][key] = res
        if sp:
            empty = Path(tmp) / "empty.txt"
            empty.write_text("")
            report["results"]["subpass"]["startup_seconds_empty_input"] = statistics.median(
                sp.run_file(empty)[0] for _ in range(3))

        # 4. Batch-1 latency on a 16-token corpus sentence.
        count.no_padding()
        sentence = next(s for s in all_lines if len(count.encode(s).ids) == LAT_TOKENS)
        count.enable_padding(pad_id=0, pad_token="[PAD]")
        report["latency"]["sentence"] = sentence
        log("latency: sentence-transformers")
        report["latency"]["st"] = latencies(lambda: st.encode([sentence]))
        log("latency: ONNX Runtime")
        report["latency"]["ort"] = latencies(lambda: ort_peer.run_batch([sentence]))
        if sp:
            log("latency: subpass")
            report["latency"]["subpass"] = subpass_latency(sp, sentence)

    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"raw figures: {out_path}")


if __name__ == "__main__":
    main()
