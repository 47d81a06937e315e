#!/usr/bin/env python3
"""A tiny random BERT and its step-by-step reference outputs: tests/fixtures/bert-tiny/.

Run from anywhere, with the packages of tools/requirements-text.txt:

    python3 tools/gen_bert_fixtures.py

Writes
  weights.safetensors  F32 parameters under Hugging Face BertModel's state_dict names (no pooler);
  io.safetensors       packed token ids, offsets and F32 expected values after every step, plus
                       isolated cases for attention, mean pooling and L2 normalisation;
  README.md            what every tensor is, and the cross-check figures measured here.

Model: vocab 100, hidden 32, 4 heads of 8, intermediate 64, 2 layers, 64 positions, 2 token
types, LayerNorm eps 1e-12, erf GELU. The reference below is plain numpy written from the
definitions, in float64 over the float32 weights as stored, one sequence at a time; each saved
step is rounded to float32 but the float64 value is what feeds the next step. It is then
cross-checked against transformers.BertModel in float64 (each sequence alone, attention mask all
ones), and the script fails if any step differs by more than 1e-6.

Everything is seeded; a rerun writes byte-identical files.
"""

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np as st  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "bert-tiny")

SEED = 20240611
VOCAB = 100
HIDDEN = 32
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 64
LAYERS = 2
MAX_POSITIONS = 64
TYPE_VOCAB = 2
EPS = 1e-12
CLS_LIKE, SEP_LIKE = 2, 3
# Eight sequences, deliberately out of order; 1 and 2 appear twice. The sum (99 tokens) is kept
# small so that io.safetensors, with 15 tensors of [total, 32] floats, stays under 200 KB.
LENGTHS = [5, 1, 17, 2, 40, 1, 31, 2]
CROSS_CHECK_TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

def make_weights(rng):
    """name -> float32 array, in BertModel's state_dict order."""
    w = {}

    def normal(shape, std):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def uniform(shape, bound):
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    def layer_norm(prefix):
        w[prefix + ".weight"] = (1.0 + rng.normal(0.0, 0.1, size=HIDDEN)).astype(np.float32)
        w[prefix + ".bias"] = normal(HIDDEN, 0.1)

    def dense(prefix, fan_out, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        w[prefix + ".weight"] = uniform((fan_out, fan_in), bound)
        w[prefix + ".bias"] = uniform(fan_out, bound)

    w["embeddings.word_embeddings.weight"] = normal((VOCAB, HIDDEN), 0.5)
    w["embeddings.position_embeddings.weight"] = normal((MAX_POSITIONS, HIDDEN), 0.5)
    w["embeddings.token_type_embeddings.weight"] = normal((TYPE_VOCAB, HIDDEN), 0.5)
    layer_norm("embeddings.LayerNorm")
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        dense(p + "attention.self.query", HIDDEN, HIDDEN)
        dense(p + "attention.self.key", HIDDEN, HIDDEN)
        dense(p + "attention.self.value", HIDDEN, HIDDEN)
        dense(p + "attention.output.dense", HIDDEN, HIDDEN)
        layer_norm(p + "attention.output.LayerNorm")
        dense(p + "intermediate.dense", INTERMEDIATE, HIDDEN)
        dense(p + "output.dense", HIDDEN, INTERMEDIATE)
        layer_norm(p + "output.LayerNorm")
    return w


def make_sequences(rng):
    seqs = []
    for length in LENGTHS:
        ids = rng.integers(0, VOCAB, size=length).astype(np.int64)
        ids[0] = CLS_LIKE
        if length >= 2:
            ids[-1] = SEP_LIKE
        seqs.append(ids)
    return seqs


# --------------------------------------------------------------------------------------------
# Reference: float64, one sequence (x: [len, d]) at a time, from the definitions.
# --------------------------------------------------------------------------------------------

def ref_dense(x, weight, bias):
    """y[t, u] = sum_i x[t, i] * weight[u, i] + bias[u] (PyTorch Linear)."""
    n, fan_in = x.shape
    fan_out = weight.shape[0]
    y = np.zeros((n, fan_out))
    for t in range(n):
        for u in range(fan_out):
            s = 0.0
            for i in range(fan_in):
                s += x[t, i] * weight[u, i]
            y[t, u] = s + bias[u]
    return y


def ref_layer_norm(x, gamma, beta):
    """Over the last axis: (x - mean) / sqrt(biased variance + eps) * gamma + beta."""
    y = np.empty_like(x)
    for t in range(x.shape[0]):
        row = x[t]
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / len(row)
        y[t] = (row - mean) / math.sqrt(var + EPS) * gamma + beta
    return y


def ref_gelu(x):
    """0.5 x (1 + erf(x / sqrt 2))."""
    y = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        y[idx] = 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    return y


def ref_softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return np.array([v / s for v in e])


def ref_attention(x, w, prefix):
    """Multi-head self-attention over one sequence, then the output projection; no residual."""
    n = x.shape[0]
    q = ref_dense(x, w[prefix + "self.query.weight"], w[prefix + "self.query.bias"])
    k = ref_dense(x, w[prefix + "self.key.weight"], w[prefix + "self.key.bias"])
    v = ref_dense(x, w[prefix + "self.value.weight"], w[prefix + "self.value.bias"])
    context = np.zeros((n, HIDDEN))
    scale = 1.0 / math.sqrt(HEAD_DIM)
    for h in range(HEADS):
        cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        qh, kh, vh = q[:, cols], k[:, cols], v[:, cols]
        for t in range(n):
            scores = [sum(qh[t, d] * kh[s, d] for d in range(HEAD_DIM)) * scale for s in range(n)]
            p = ref_softmax_row(scores)
            for d in range(HEAD_DIM):
                context[t, h * HEAD_DIM + d] = sum(p[s] * vh[s, d] for s in range(n))
    return ref_dense(context, w[prefix + "output.dense.weight"], w[prefix + "output.dense.bias"])


def ref_mean(x):
    return np.array([sum(x[:, j]) / x.shape[0] for j in range(x.shape[1])])


def ref_normalize(v):
    norm = math.sqrt(sum(a * a for a in v))
    return v / max(norm, 1e-12)


def reference_forward(ids, w):
    """Every step for one sequence, float64: name -> array."""
    steps = {}
    n = len(ids)
    x = np.zeros((n, HIDDEN))
    for p, tok in enumerate(ids):
        x[p] = (w["embeddings.word_embeddings.weight"][tok]
                + w["embeddings.position_embeddings.weight"][p]
                + w["embeddings.token_type_embeddings.weight"][0])
    steps["embeddings_sum"] = x
    x = ref_layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    steps["embeddings"] = x
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        attn_out = ref_attention(x, w, p + "attention.")
        steps[f"layer.{i}.attention.output"] = attn_out
        attn = ref_layer_norm(x + attn_out, w[p + "attention.output.LayerNorm.weight"],
                              w[p + "attention.output.LayerNorm.bias"])
        steps[f"layer.{i}.attention"] = attn
        inter = ref_gelu(ref_dense(attn, w[p + "intermediate.dense.weight"],
                                   w[p + "intermediate.dense.bias"]))
        steps[f"layer.{i}.intermediate"] = inter
        out = ref_dense(inter, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
        x = ref_layer_norm(attn + out, w[p + "output.LayerNorm.weight"],
                           w[p + "output.LayerNorm.bias"])
        steps[f"layer.{i}"] = x
    pooled = ref_mean(x)
    steps["pooled"] = pooled
    steps["normalized"] = ref_normalize(pooled)
    return steps


STEP_NAMES = (["embeddings_sum", "embeddings"]
              + [name for i in range(LAYERS)
                 for name in (f"layer.{i}.attention.output", f"layer.{i}.attention",
                              f"layer.{i}.intermediate", f"layer.{i}")])


# --------------------------------------------------------------------------------------------
# Cross-check against transformers.BertModel (float64).
# --------------------------------------------------------------------------------------------

def cross_check(weights, seqs, ref_steps, attn_in, attn_out_ref):
    """Max abs diff per step between the reference and BertModel, both in float64."""
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    results = {}
    # float64 runs are the check; the float32 run only shows what a float32 implementation sees.
    for impl, dtype in (("eager", torch.float64), ("sdpa", torch.float64),
                        ("eager float32", torch.float32)):
        config = BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_POSITIONS, type_vocab_size=TYPE_VOCAB,
            layer_norm_eps=EPS, hidden_act="gelu", hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, pad_token_id=0,
        )
        config._attn_implementation = impl.split()[0]
        model = BertModel(config, add_pooling_layer=False).to(dtype).eval()
        state = {k: torch.from_numpy(v).to(dtype) for k, v in weights.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            sys.exit(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")

        captured = {}

        def keep(name, pre=False):
            if pre:
                return lambda _m, args: captured.__setitem__(name, args[0])
            return lambda _m, _a, out: captured.__setitem__(
                name, out[0] if isinstance(out, tuple) else out)

        hooks = [model.embeddings.LayerNorm.register_forward_pre_hook(keep("embeddings_sum", True)),
                 model.embeddings.register_forward_hook(keep("embeddings"))]
        for i, layer in enumerate(model.encoder.layer):
            hooks += [layer.attention.output.dense.register_forward_hook(
                          keep(f"layer.{i}.attention.output")),
                      layer.attention.register_forward_hook(keep(f"layer.{i}.attention")),
                      layer.intermediate.register_forward_hook(keep(f"layer.{i}.intermediate")),
                      layer.register_forward_hook(keep(f"layer.{i}"))]

        diffs = {name: 0.0 for name in STEP_NAMES + ["pooled", "normalized", "attention_only"]}
        with torch.no_grad():
            for ids, ref in zip(seqs, ref_steps):
                t = torch.from_numpy(ids).unsqueeze(0)
                out = model(input_ids=t, attention_mask=torch.ones_like(t),
                            token_type_ids=torch.zeros_like(t)).last_hidden_state[0]
                for name in STEP_NAMES:
                    got = captured[name][0].double().numpy()
                    diffs[name] = max(diffs[name], float(np.abs(got - ref[name]).max()))
                if not torch.equal(out, captured[f"layer.{LAYERS - 1}"][0].double()):
                    sys.exit("last hidden state is not the last layer's output")
                out = out.double()
                pooled = out.mean(dim=0)
                normalized = torch.nn.functional.normalize(pooled, p=2, dim=0, eps=1e-12)
                diffs["pooled"] = max(diffs["pooled"],
                                      float(np.abs(pooled.numpy() - ref["pooled"]).max()))
                diffs["normalized"] = max(
                    diffs["normalized"], float(np.abs(normalized.numpy() - ref["normalized"]).max()))
            # Layer 0's self-attention and output projection alone on the random input.
            attention = model.encoder.layer[0].attention
            for x, ref in zip(attn_in, attn_out_ref):
                xt = torch.from_numpy(x).unsqueeze(0).to(dtype)
                context = attention.self(xt, attention_mask=None)[0]
                got = attention.output.dense(context)[0].double().numpy()
                diffs["attention_only"] = max(diffs["attention_only"],
                                              float(np.abs(got - ref).max()))
        for h in hooks:
            h.remove()
        results[impl] = diffs
    return results, transformers.__version__, torch.__version__


# --------------------------------------------------------------------------------------------

def pack(arrays):
    return np.concatenate(arrays, axis=0)


def main():
    rng = np.random.default_rng(SEED)
    weights = make_weights(rng)
    seqs = make_sequences(rng)
    attn_in = [rng.normal(0.0, 1.0, size=(n, HIDDEN)).astype(np.float32) for n in LENGTHS]
    pool_in = [rng.normal(0.0, 1.0, size=(n, HIDDEN)).astype(np.float32) for n in LENGTHS]
    norm_in = np.stack([
        rng.normal(0.0, 1.0, size=HIDDEN),
        rng.normal(0.0, 1.0, size=HIDDEN) * 100.0,
        rng.normal(0.0, 1.0, size=HIDDEN) * 1e-3,
        np.zeros(HIDDEN),                                   # norm 0: stays 0
        np.full(HIDDEN, 1e-14),                             # norm 5.7e-14 < 1e-12: x / 1e-12
        np.where(np.arange(HIDDEN) == 7, -3.0, 0.0),        # one non-zero entry: -1 there
    ]).astype(np.float32)

    # The reference reads the float32 weights and inputs exactly, in float64.
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    ref_steps = [reference_forward(ids, w64) for ids in seqs]
    attn_in64 = [x.astype(np.float64) for x in attn_in]
    attn_out = [ref_attention(x, w64, "encoder.layer.0.attention.") for x in attn_in64]
    pool_out = np.stack([ref_mean(x.astype(np.float64)) for x in pool_in])
    norm_out = np.stack([ref_normalize(v) for v in norm_in.astype(np.float64)])

    results, tf_version, torch_version = cross_check(weights, seqs, ref_steps, attn_in64, attn_out)
    worst = 0.0
    for impl, diffs in results.items():
        for name, d in diffs.items():
            print(f"cross-check vs BertModel ({impl}): {name:28s} max abs diff {d:.3g}")
            if "float32" not in impl:
                worst = max(worst, d)
    if worst > CROSS_CHECK_TOLERANCE:
        sys.exit(f"reference and BertModel disagree by {worst:.3g} > {CROSS_CHECK_TOLERANCE}")
    worst32 = max(results["eager float32"].values())
    if worst32 > 1e-4:
        sys.exit(f"BertModel in float32 is {worst32:.3g} from the reference: too far to be noise")

    offsets = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
    io = {
        "input_ids": (pack(seqs), "I64"),
        "offsets": (offsets, "I64"),
    }
    for name in STEP_NAMES:
        io[name] = (pack([s[name] for s in ref_steps]), "F32")
    io["pooled"] = (np.stack([s["pooled"] for s in ref_steps]), "F32")
    io["normalized"] = (np.stack([s["normalized"] for s in ref_steps]), "F32")
    io["attention_only_input"] = (pack(attn_in), "F32")
    io["attention_only_output"] = (pack(attn_out), "F32")
    io["pool_input"] = (pack(pool_in), "F32")
    io["pool_output"] = (pool_out, "F32")
    io["normalize_input"] = (norm_in, "F32")
    io["normalize_output"] = (norm_out, "F32")

    os.makedirs(OUT_DIR, exist_ok=True)
    st.save_file({k: (v, "F32") for k, v in weights.items()},
                 os.path.join(OUT_DIR, "weights.safetensors"), metadata={"format": "pt"})
    st.save_file(io, os.path.join(OUT_DIR, "io.safetensors"))

    # Read back: the files hold what the reference used.
    back = st.load_file(os.path.join(OUT_DIR, "weights.safetensors"))
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    back_io = st.load_file(os.path.join(OUT_DIR, "io.safetensors"))
    assert back_io["offsets"][-1] == len(back_io["input_ids"])

    write_readme(io, results, tf_version, torch_version)
    for name in ("weights.safetensors", "io.safetensors", "README.md"):
        size = os.path.getsize(os.path.join(OUT_DIR, name))
        print(f"{name}: {size} bytes")
        if size >= 200_000:
            sys.exit(f"{name} is {size} bytes, over the 200 KB budget")


def write_readme(io, results, tf_version, torch_version):
    total = int(io["offsets"][0][-1])
    n = len(LENGTHS)
    shapes = {k: "[" + ", ".join(str(d) for d in v[0].shape) + "]" for k, v in io.items()}
    dtypes = {k: v[1] for k, v in io.items()}
    seq_lines = "\n".join(
        f"| {j} | {LENGTHS[j]} | {int(io['offsets'][0][j])} | "
        + " ".join(str(int(t)) for t in io["input_ids"][0][io["offsets"][0][j]:io["offsets"][0][j + 1]])
        + " |"
        for j in range(n))
    check_names = list(next(iter(results.values())).keys())
    check_rows = "\n".join(
        f"| `{name}` | " + " | ".join(f"{results[impl][name]:.1e}" for impl in results) + " |"
        for name in check_names)

    def row(name, meaning):
        return f"| `{name}` | {dtypes[name]} | {shapes[name]} | {meaning} |"

    rows = [
        row("input_ids", f"all {n} sequences' token ids, concatenated"),
        row("offsets", f"sequence j is tokens `offsets[j]..offsets[j+1]`; `offsets[0]` = 0, "
                       f"`offsets[{n}]` = {total}"),
        row("embeddings_sum", "`word[id] + position[p] + token_type[0]`, p = 0.. within each "
                              "sequence"),
        row("embeddings", "`LayerNorm(embeddings_sum)` (embeddings.LayerNorm)"),
    ]
    for i in range(LAYERS):
        rows += [
            row(f"layer.{i}.attention.output",
                f"self-attention of layer {i}'s input x within each sequence: Q = x Wqᵀ + bq, K, V "
                f"alike, {HEADS} heads of {HEAD_DIM}, softmax(QKᵀ/√{HEAD_DIM}) V per head, "
                "heads concatenated, then `· Woᵀ + bo` (attention.output.dense); no residual"),
            row(f"layer.{i}.attention",
                f"`LayerNorm(x + layer.{i}.attention.output)` (attention.output.LayerNorm)"),
            row(f"layer.{i}.intermediate",
                f"`gelu_erf(layer.{i}.attention · Wiᵀ + bi)` (intermediate.dense)"),
            row(f"layer.{i}",
                f"`LayerNorm(layer.{i}.attention + layer.{i}.intermediate · Wo2ᵀ + bo2)` "
                "(output.dense, output.LayerNorm); the next layer's x"),
        ]
    rows += [
        row("pooled", f"mean of `layer.{LAYERS - 1}` over each sequence's tokens"),
        row("normalized", "`pooled / max(‖pooled‖₂, 1e-12)` per row"),
        row("attention_only_input", "random N(0, 1), packed with the same `offsets`"),
        row("attention_only_output", "what `layer.0.attention.output` computes (layer 0's "
                                     "query/key/value/output.dense weights, attention within "
                                     "each sequence, no residual, no LayerNorm) on that input"),
        row("pool_input", "random N(0, 1), packed with the same `offsets`"),
        row("pool_output", "mean of `pool_input` over each sequence's tokens"),
        row("normalize_input", "rows: N(0,1); N(0,1)·100; N(0,1)·1e-3; all zero; all 1e-14 "
                               "(norm 5.7e-14 < 1e-12); one entry −3"),
        row("normalize_output", "`x / max(‖x‖₂, 1e-12)` per row: the zero row stays zero, the "
                                "1e-14 row becomes 0.01 everywhere"),
    ]
    impls = list(results)
    text = f"""# bert-tiny fixtures

Generated by `python3 tools/gen_bert_fixtures.py` (run from anywhere; packages pinned in
`tools/requirements-text.txt`); do not edit by hand. Seeded (seed {SEED}): a rerun writes
byte-identical files.

A tiny BERT with random weights, for layer-by-layer tests of a BERT encoder: vocab {VOCAB},
hidden {HIDDEN}, {HEADS} heads of {HEAD_DIM}, intermediate {INTERMEDIATE}, {LAYERS} layers,
{MAX_POSITIONS} positions, {TYPE_VOCAB} token types, LayerNorm eps 1e-12 (biased variance),
GELU with erf (`0.5 x (1 + erf(x/√2))`), no pooler. Every token has token type 0; there is no
padding: sequences are packed one after another and attention never crosses a sequence.

## weights.safetensors

F32, Hugging Face `BertModel` state_dict names (loads into `BertModel(config,
add_pooling_layer=False)` as is); Linear weights are `[out, in]` and apply as `x Wᵀ + b`:

- `embeddings.word_embeddings.weight` [{VOCAB}, {HIDDEN}], `embeddings.position_embeddings.weight`
  [{MAX_POSITIONS}, {HIDDEN}], `embeddings.token_type_embeddings.weight` [{TYPE_VOCAB}, {HIDDEN}]: N(0, 0.5²);
- `embeddings.LayerNorm.weight` / `.bias` [{HIDDEN}]: 1 + N(0, 0.1²) / N(0, 0.1²) (so not the identity);
- per layer i in 0..{LAYERS}: `encoder.layer.{{i}}.attention.self.{{query,key,value}}.{{weight,bias}}`
  [{HIDDEN}, {HIDDEN}] / [{HIDDEN}], `encoder.layer.{{i}}.attention.output.dense.{{weight,bias}}`
  [{HIDDEN}, {HIDDEN}] / [{HIDDEN}], `encoder.layer.{{i}}.attention.output.LayerNorm.{{weight,bias}}` [{HIDDEN}],
  `encoder.layer.{{i}}.intermediate.dense.{{weight,bias}}` [{INTERMEDIATE}, {HIDDEN}] / [{INTERMEDIATE}],
  `encoder.layer.{{i}}.output.dense.{{weight,bias}}` [{HIDDEN}, {INTERMEDIATE}] / [{HIDDEN}],
  `encoder.layer.{{i}}.output.LayerNorm.{{weight,bias}}` [{HIDDEN}]. Dense weights and biases are
  U(−1/√fan_in, 1/√fan_in); LayerNorms as above.

## io.safetensors

{n} sequences of lengths {", ".join(map(str, LENGTHS))} ({total} tokens). Token ids are random in
0..{VOCAB}, except that each sequence starts with {CLS_LIKE} (like `[CLS]`) and, when it has two
or more tokens, ends with {SEP_LIKE} (like `[SEP]`). Per-token tensors are packed over tokens like
`input_ids`; per-sequence tensors have one row per sequence.

| sequence | length | offset | ids |
| ---: | ---: | ---: | --- |
{seq_lines}

| tensor | dtype | shape | value |
| --- | --- | --- | --- |
""" + "\n".join(rows) + f"""

## How the expected values were computed

Plain numpy written from the definitions above (`reference_forward` in the script): float64,
explicit loops, one sequence at a time, reading the float32 weights and inputs exactly. Each
saved step is rounded to float32 once; the float64 value, not the rounded one, feeds the next
step. Compare float32 implementations with a tolerance: BertModel itself in float32 (last
column below) is within {max(results["eager float32"].values()):.1e} of every step, so 1e-5
absolute is ample.

Then the script builds `transformers.BertModel` (transformers {tf_version}, torch {torch_version})
from a `BertConfig` with the numbers above and `hidden_act="gelu"`, loads `weights.safetensors`,
runs it in float64 on each sequence alone (attention mask all ones, token types 0), captures every
step with hooks (`attention.output` at `attention.output.dense`), and fails if any step differs
from the reference by more than {CROSS_CHECK_TOLERANCE:g} (the eager and sdpa columns). Max abs
differences measured:

| step | {" | ".join(impls)} |
| --- | {" | ".join("---:" for _ in impls)} |
{check_rows}

(`attention_only` is layer 0's `attention.self` then `attention.output.dense` on
`attention_only_input`; `pooled`/`normalized` use the mean of BertModel's last hidden state and
`torch.nn.functional.normalize`.)
"""
    with open(os.path.join(OUT_DIR, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


if __name__ == "__main__":
    main()
