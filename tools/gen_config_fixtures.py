#!/usr/bin/env python3
"""Independent numpy reference for the example pipelines configs/{mlp,cnn,residual}.yaml.

Run from the repository root:  python3 tools/gen_config_fixtures.py

For each config NAME this writes into tests/fixtures/configs/
  NAME-input.jsonl     N=70 records {"id": i, "x": [...]}: seeded standard-normal values rounded
                       to float32 (x flat for a 1-D record shape, nested in the record shape
                       otherwise, e.g. [1][28][28] for cnn);
  NAME-expected.jsonl  {"id": i, "y": [...]}: the pipeline output, computed in float64 from the
                       float32 weights and inputs, then rounded to float32.
and init-check.json: the first values of a few mlp parameters as produced by this file's
implementation of `init: {seed: S}`, so a Rust test can compare `subpass export` bit for bit.

The weights are NOT read from subpass: `init` is reimplemented here from its written contract
(FNV-1a 64 of the parameter name XOR seed, a SplitMix64 stream, uniform in [-b, b) with
b = 1/sqrt(fan_in) in float32). The layer math follows PyTorch semantics and is plain numpy.
Everything is seeded, so the output is byte-for-byte deterministic.
"""

import json
import math
import os

import numpy as np
import yaml

CONFIG_DIR = "configs"
OUT_DIR = os.path.join("tests", "fixtures", "configs")
NAMES = ["mlp", "cnn", "residual"]
N_RECORDS = 70  # not a multiple of the batch sizes (32, 64): the last chunk is partial
INPUT_SEED_BASE = 20240501

M64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# init: {seed: S}
# --------------------------------------------------------------------------------------------

def fnv1a64(name):
    h = 0xCBF29CE484222325
    for byte in name.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & M64
    return h


def splitmix_u(seed, name, count):
    """The `count` uniforms u in [-1, 1) (float32) of the parameter `name`.

    Plain Python integers (arbitrary precision, masked to 64 bits): slow but unambiguous.
    """
    state = (seed ^ fnv1a64(name)) & M64
    top = np.empty(count, dtype=np.uint32)
    for i in range(count):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z = z ^ (z >> 31)
        top[i] = z >> 40
    # 24-bit integers are exact in float32; /2^23 and -1 are exact too.
    return top.astype(np.float32) / np.float32(2 ** 23) - np.float32(1.0)


def splitmix_u_fast(seed, name, count):
    """The same stream vectorised with wrapping uint64 arithmetic (checked against the above)."""
    base = np.uint64((seed ^ fnv1a64(name)) & M64)
    with np.errstate(over="ignore"):
        k = np.arange(1, count + 1, dtype=np.uint64)
        z = base + k * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    top = (z >> np.uint64(40)).astype(np.uint32)
    return top.astype(np.float32) / np.float32(2 ** 23) - np.float32(1.0)


def uniform_param(seed, name, shape, fan_in):
    bound = np.float32(1) / np.sqrt(np.float32(fan_in))
    assert bound.dtype == np.float32
    u = splitmix_u_fast(seed, name, int(np.prod(shape)))
    values = (u * bound).astype(np.float32)  # float32 * float32: one correctly rounded product
    assert values.dtype == np.float32
    return values.reshape(shape)


# --------------------------------------------------------------------------------------------
# Reference ops on float64 arrays WITH a leading batch axis: x has shape [N, *record].
# --------------------------------------------------------------------------------------------

def as_pair(v):
    if isinstance(v, (list, tuple)):
        assert len(v) == 2
        return int(v[0]), int(v[1])
    return int(v), int(v)


def apply_activation(x, act):
    if act is None or act == "none" or act == "identity" or act == "linear":
        return x
    if act == "relu":
        return np.maximum(x, 0.0)
    if act == "tanh":
        return np.tanh(x)
    if act == "gelu":
        return gelu(x)
    raise ValueError(f"activation {act!r} not implemented in this reference")


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def dense(x, w, b):
    # y = x . W^T + b on the last axis; w [units, in]
    y = np.tensordot(x, w.T, axes=([x.ndim - 1], [0]))
    return y + b


def conv2d(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    assert c == cg * groups and f % groups == 0
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    out = np.zeros((n, f, oh, ow), dtype=np.float64)
    fg = f // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * fg:(g + 1) * fg]
        for i in range(kh):
            for j in range(kw):
                # patch[n, c, oy, ox] = xp[n, c, oy*sh + i*dh, ox*sw + j*dw]
                patch = xs[:, :,
                           i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * fg:(g + 1) * fg] += np.einsum("ncyx,fc->nfyx", patch, ws[:, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def maxpool2d(x, kernel, stride):
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    oh = (h - kh) // sh + 1
    ow = (w - kw) // sw + 1
    out = np.full((n, c, oh, ow), -np.inf)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, x[:, :, i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw])
    return out


def layernorm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


# --------------------------------------------------------------------------------------------
# The pipeline: parameters from init, then the forward pass.
# --------------------------------------------------------------------------------------------

KNOWN_LAYER_KEYS = {
    "dense": {"name", "op", "inputs", "units", "activation", "params"},
    "conv2d": {"name", "op", "inputs", "filters", "kernel", "padding", "stride", "activation",
               "params"},
    "maxpool2d": {"name", "op", "inputs", "kernel"},
    "concat": {"name", "op", "inputs", "axis"},
    "flatten": {"name", "op", "inputs"},
    "layernorm": {"name", "op", "inputs", "params"},
    "gelu": {"name", "op", "inputs"},
    "relu": {"name", "op", "inputs"},
    "tanh": {"name", "op", "inputs"},
    "add": {"name", "op", "inputs"},
}


def build(cfg):
    """Returns (params: {full name: float32 array}, forward: f(x64) -> y64, output shape)."""
    seed = int(cfg["init"]["seed"])
    shapes = {"input": tuple(int(d) for d in cfg["input"]["shape"])}
    params = {}
    steps = []  # (layer dict, input names)
    prev = "input"
    for layer in cfg["layers"]:
        op = layer["op"]
        name = layer["name"]
        if op not in KNOWN_LAYER_KEYS:
            raise ValueError(f"op {op!r} not implemented in this reference")
        extra = set(layer) - KNOWN_LAYER_KEYS[op]
        if extra:
            # Refuse rather than silently ignore an option the reference does not model.
            raise ValueError(f"layer {name}: options {sorted(extra)} not implemented")
        inputs = layer.get("inputs", [prev])
        if isinstance(inputs, str):
            inputs = [inputs]
        in_shapes = [shapes[i] for i in inputs]
        pname = layer.get("params", name)
        if op == "dense":
            (s,) = in_shapes
            fan_in = s[-1]
            units = int(layer["units"])
            params[f"{pname}.weight"] = uniform_param(seed, f"{pname}.weight", (units, fan_in), fan_in)
            params[f"{pname}.bias"] = uniform_param(seed, f"{pname}.bias", (units,), fan_in)
            out = s[:-1] + (units,)
        elif op == "conv2d":
            (s,) = in_shapes
            c, h, w = s
            kh, kw = as_pair(layer["kernel"])
            ph, pw = as_pair(layer.get("padding", 0))
            sh, sw = as_pair(layer.get("stride", 1))
            f = int(layer["filters"])
            fan_in = c * kh * kw
            params[f"{pname}.weight"] = uniform_param(seed, f"{pname}.weight", (f, c, kh, kw), fan_in)
            params[f"{pname}.bias"] = uniform_param(seed, f"{pname}.bias", (f,), fan_in)
            out = (f, (h + 2 * ph - (kh - 1) - 1) // sh + 1, (w + 2 * pw - (kw - 1) - 1) // sw + 1)
        elif op == "maxpool2d":
            (s,) = in_shapes
            k = as_pair(layer["kernel"])
            out = (s[0], (s[1] - k[0]) // k[0] + 1, (s[2] - k[1]) // k[1] + 1)
        elif op == "concat":
            axis = int(layer.get("axis", 0))
            base = list(in_shapes[0])
            for s in in_shapes[1:]:
                assert len(s) == len(base)
                assert all(a == b for d, (a, b) in enumerate(zip(s, base)) if d != axis)
                base[axis] += s[axis]
            out = tuple(base)
        elif op == "flatten":
            (s,) = in_shapes
            out = (int(np.prod(s)),)
        elif op == "layernorm":
            (s,) = in_shapes
            params[f"{pname}.weight"] = np.ones(s[-1], dtype=np.float32)
            params[f"{pname}.bias"] = np.zeros(s[-1], dtype=np.float32)
            out = s
        elif op in ("gelu", "relu", "tanh"):
            (s,) = in_shapes
            out = s
        elif op == "add":
            assert all(s == in_shapes[0] for s in in_shapes)
            out = in_shapes[0]
        shapes[name] = out
        steps.append((layer, inputs))
        prev = name
    output_name = prev

    def forward(x):
        values = {"input": x}
        for layer, inputs in steps:
            op = layer["op"]
            pname = layer.get("params", layer["name"])
            xs = [values[i] for i in inputs]
            p = lambda suffix: params[f"{pname}.{suffix}"].astype(np.float64)  # noqa: E731
            if op == "dense":
                y = apply_activation(dense(xs[0], p("weight"), p("bias")), layer.get("activation"))
            elif op == "conv2d":
                y = conv2d(xs[0], p("weight"), p("bias"),
                           as_pair(layer.get("stride", 1)), as_pair(layer.get("padding", 0)),
                           (1, 1), 1)
                y = apply_activation(y, layer.get("activation"))
            elif op == "maxpool2d":
                k = as_pair(layer["kernel"])
                y = maxpool2d(xs[0], k, k)
            elif op == "concat":
                y = np.concatenate(xs, axis=int(layer.get("axis", 0)) + 1)  # +1: the batch axis
            elif op == "flatten":
                y = xs[0].reshape(xs[0].shape[0], -1)
            elif op == "layernorm":
                y = layernorm(xs[0], p("weight"), p("bias"), 1e-5)
            elif op == "gelu":
                y = gelu(xs[0])
            elif op == "relu":
                y = np.maximum(xs[0], 0.0)
            elif op == "tanh":
                y = np.tanh(xs[0])
            elif op == "add":
                y = xs[0]
                for other in xs[1:]:
                    y = y + other
            assert y.shape[1:] == shapes[layer["name"]], (layer["name"], y.shape, shapes[layer["name"]])
            values[layer["name"]] = y
        return values[output_name]

    return params, forward, shapes[output_name]


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def f32repr(v):
    return repr(float(np.float32(v)))


def nested_json(a):
    """JSON text for a float32 array, nested in its shape, each value as repr(float(f32))."""
    if a.ndim == 0:
        return f32repr(a)
    return "[" + ",".join(nested_json(sub) for sub in a) + "]"


def main():
    # Self-check: the vectorised stream equals the plain-integer one.
    for name in ["fc1.weight", "a", "", "proj.bias"]:
        assert np.array_equal(splitmix_u(7, name, 1000), splitmix_u_fast(7, name, 1000)), name
    assert fnv1a64("") == 0xCBF29CE484222325
    assert fnv1a64("a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector

    os.makedirs(OUT_DIR, exist_ok=True)
    init_check = None
    for idx, name in enumerate(NAMES):
        with open(os.path.join(CONFIG_DIR, f"{name}.yaml")) as fh:
            cfg = yaml.safe_load(fh)
        params, forward, out_shape = build(cfg)
        record_shape = tuple(int(d) for d in cfg["input"]["shape"])

        rng = np.random.default_rng(INPUT_SEED_BASE + idx)
        x32 = rng.standard_normal((N_RECORDS,) + record_shape).astype(np.float32)
        y64 = forward(x32.astype(np.float64))
        assert y64.shape == (N_RECORDS,) + out_shape
        assert np.all(np.isfinite(y64))
        y32 = y64.astype(np.float32)

        flat = len(record_shape) == 1
        with open(os.path.join(OUT_DIR, f"{name}-input.jsonl"), "w") as fh:
            for i in range(N_RECORDS):
                x = x32[i].reshape(-1) if flat else x32[i]
                fh.write(f'{{"id": {i}, "x": {nested_json(x)}}}\n')
        with open(os.path.join(OUT_DIR, f"{name}-expected.jsonl"), "w") as fh:
            for i in range(N_RECORDS):
                fh.write(f'{{"id": {i}, "y": {nested_json(y32[i].reshape(-1))}}}\n')

        if name == "mlp":
            init_check = {
                "config": "configs/mlp.yaml",
                "seed": int(cfg["init"]["seed"]),
                "tensors": {},
            }
            for t in ["fc1.weight", "fc1.bias", "logits.bias"]:
                first = params[t].reshape(-1)[:5]
                init_check["tensors"][t] = {
                    "shape": list(params[t].shape),
                    "first": [float(np.float32(v)) for v in first],
                    "first_bits": [int(v) for v in first.view(np.uint32)],
                }
        print(f"{name}: {N_RECORDS} records, input {record_shape}, output {out_shape}, "
              f"params {sorted(params)}")

    with open(os.path.join(OUT_DIR, "init-check.json"), "w") as fh:
        # json.dumps writes floats with repr(), the shortest round-trip text of the f64, which
        # here is exactly the float32 value.
        json.dump(init_check, fh, indent=2)
        fh.write("\n")

    with open(os.path.join(OUT_DIR, "README.md"), "w") as fh:
        fh.write(README)


README = """\
Generated by `python3 tools/gen_config_fixtures.py` (numpy + pyyaml; run from the repo
root; deterministic); do not edit by hand.

An independent numpy reference for the example pipelines `configs/mlp.yaml`, `configs/cnn.yaml`
and `configs/residual.yaml`, checked end to end against the real binary by
`tests/config_reference.rs` (`cargo test --release --test config_reference`).

- `NAME-input.jsonl`: 70 records (not a multiple of the batch sizes 32/64, so the last chunk is
  partial) `{"id": i, "x": [...]}`; seeded standard-normal values rounded to float32, written
  as `repr(float(np.float32(v)))`; `x` is flat for mlp/residual and nested `[1][28][28]` for cnn.
- `NAME-expected.jsonl`: `{"id": i, "y": [...]}`, the pipeline output computed in float64 from
  the float32 inputs and weights (PyTorch semantics), rounded to float32.
- `init-check.json`: the first five values (and their f32 bit patterns) of `fc1.weight`,
  `fc1.bias` and `logits.bias` of configs/mlp.yaml.

The weights are not read from subpass: the generator reimplements `init: {seed: S}` from its
contract: for each parameter NAME, state = S XOR FNV-1a-64(NAME); a SplitMix64 stream in
row-major order; u = f32(z >> 40) / 2^23 - 1; value = f32(u * b) with
b = f32(1) / sqrt(f32(fan_in)), fan_in = the weight shape without its first axis (shared by
the bias); layernorm weight 1, bias 0.
"""


if __name__ == "__main__":
    main()
