#!/usr/bin/env python3
"""Generate per-op reference fixtures for the Rust tests: tests/fixtures/ops/<case>/.

Run from the repository root:  python3 tools/gen_op_fixtures.py

Each case directory holds
  pipeline.yaml        the pipeline (input shape, optional weights file, layers, outputs);
  weights.safetensors  the layer parameters (only when the case has any);
  io.safetensors       F32 `input` [N, *record_shape] and `expected` [N, *output_shape].

The reference is plain numpy, written naively (explicit loops), evaluated in float64 from the
float32 inputs and the weights exactly as stored in weights.safetensors (decoded, rounded to
float32), then cast to float32. Everything is seeded per case, so output is deterministic.
"""

import math
import os
import shutil
import sys
import zlib

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np as st  # noqa: E402

OUT_DIR = os.path.join("tests", "fixtures", "ops")


# --------------------------------------------------------------------------------------------
# Reference ops. All work on float64 arrays WITH a leading batch axis: x has shape [N, *record].
# --------------------------------------------------------------------------------------------

def pair(v):
    if isinstance(v, (list, tuple)):
        assert len(v) == 2
        return int(v[0]), int(v[1])
    return int(v), int(v)


def ref_relu(x):
    return np.where(x > 0, x, 0.0)


def ref_leaky_relu(x):
    return np.where(x > 0, x, 0.01 * x)


def ref_sigmoid(x):
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        out[idx] = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    return out


def ref_tanh(x):
    return np.tanh(x)


def ref_gelu(x):
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        out[idx] = 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    return out


def ref_softmax(x):
    """Softmax over the last axis, max-subtracted."""
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        e = np.exp(row - row.max())
        out[idx] = e / e.sum()
    return out


def ref_identity(x):
    return x.copy()


ACTIVATIONS = {
    "relu": ref_relu,
    "leaky_relu": ref_leaky_relu,
    "sigmoid": ref_sigmoid,
    "tanh": ref_tanh,
    "gelu": ref_gelu,
    "softmax": ref_softmax,
    "identity": ref_identity,
    "dropout": ref_identity,
}


def ref_dense(x, w, b):
    """y[..., u] = sum_i x[..., i] * w[u, i] + b[u]."""
    units, fan_in = w.shape
    assert x.shape[-1] == fan_in
    out = np.zeros(x.shape[:-1] + (units,))
    for idx in np.ndindex(*x.shape[:-1]):
        for u in range(units):
            s = 0.0
            for i in range(fan_in):
                s += x[idx + (i,)] * w[u, i]
            out[idx + (u,)] = s + (b[u] if b is not None else 0.0)
    return out


def conv_out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def ref_conv2d(x, w, b, stride=1, padding=0, dilation=1, groups=1):
    """Direct convolution with explicit loops (PyTorch cross-correlation, zero padding)."""
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    assert c == cg * groups and f % groups == 0
    fg = f // groups
    ho = conv_out_size(h, kh, sh, ph, dh)
    wo = conv_out_size(wd, kw, sw, pw, dw)
    out = np.zeros((n, f, ho, wo))
    for bi in range(n):
        for fo in range(f):
            g = fo // fg
            for oi in range(ho):
                for oj in range(wo):
                    s = 0.0
                    for ci in range(cg):
                        cin = g * cg + ci
                        for ki in range(kh):
                            for kj in range(kw):
                                ii = oi * sh - ph + ki * dh
                                jj = oj * sw - pw + kj * dw
                                if 0 <= ii < h and 0 <= jj < wd:
                                    s += x[bi, cin, ii, jj] * w[fo, ci, ki, kj]
                    out[bi, fo, oi, oj] = s + (b[fo] if b is not None else 0.0)
    return out


def ref_pool2d(x, kernel, stride, mode, padding=0):
    """PyTorch's MaxPool2d / AvgPool2d in floor mode: max pooling pads with -inf (padded taps
    never win), average pooling with zeros that count in the divisor (count_include_pad=True)."""
    n, c, h, wd = x.shape
    kh, kw = pair(kernel)
    sh, sw = pair(stride if stride is not None else kernel)
    ph, pw = pair(padding)
    assert ph <= kh // 2 and pw <= kw // 2
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for bi in range(n):
        for ci in range(c):
            for oi in range(ho):
                for oj in range(wo):
                    window = [x[bi, ci, ii, jj]
                              for ii in range(oi * sh - ph, oi * sh - ph + kh)
                              for jj in range(oj * sw - pw, oj * sw - pw + kw)
                              if 0 <= ii < h and 0 <= jj < wd]
                    out[bi, ci, oi, oj] = max(window) if mode == "max" else sum(window) / (kh * kw)
    return out


def ref_global_avgpool2d(x):
    n, c, h, wd = x.shape
    out = np.zeros((n, c))
    for bi in range(n):
        for ci in range(c):
            out[bi, ci] = sum(x[bi, ci, i, j] for i in range(h) for j in range(wd)) / (h * wd)
    return out


def ref_flatten(x):
    return x.reshape(x.shape[0], -1)  # C order, as torch.flatten(start_dim=1)


def ref_batchnorm(x, weight, bias, mean, var, eps):
    """Inference batchnorm over axis 0 of the record (axis 1 with the batch axis)."""
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        c = idx[1]
        out[idx] = (v - mean[c]) / math.sqrt(var[c] + eps) * weight[c] + bias[c]
    return out


def ref_layernorm(x, weight, bias, eps):
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out[idx] = (row - mu) / math.sqrt(var + eps) * weight + bias
    return out


def ref_add(xs):
    out = np.zeros_like(xs[0])
    for x in xs:
        assert x.shape == xs[0].shape
        out = out + x
    return out


def ref_concat(xs, axis):
    return np.concatenate(xs, axis=axis + 1)  # record axis -> batched axis


# --------------------------------------------------------------------------------------------
# A tiny interpreter for the pipeline layer list (defaults per the pipeline spec).
# --------------------------------------------------------------------------------------------

def run_pipeline(layers, outputs, x, params):
    """Evaluate `layers` on batched float64 input `x`; `params` maps tensor name -> float64."""
    values = {"input": x}
    prev = "input"
    for layer in layers:
        name, op = layer["name"], layer["op"]
        inputs = [values[i] for i in layer.get("inputs", [prev])]
        pname = layer.get("params", name)

        def p(t):
            return params[f"{pname}.{t}"]

        if op == "dense":
            bias = p("bias") if layer.get("bias", True) else None
            y = ref_dense(inputs[0], p("weight"), bias)
            assert y.shape[-1] == layer["units"]
            y = ACTIVATIONS[layer.get("activation", "identity")](y)
        elif op == "conv2d":
            bias = p("bias") if layer.get("bias", True) else None
            w = p("weight")
            assert w.shape[0] == layer["filters"] and w.shape[2:] == pair(layer["kernel"])
            y = ref_conv2d(inputs[0], w, bias, layer.get("stride", 1), layer.get("padding", 0),
                           layer.get("dilation", 1), layer.get("groups", 1))
            y = ACTIVATIONS[layer.get("activation", "identity")](y)
        elif op == "maxpool2d":
            y = ref_pool2d(inputs[0], layer["kernel"], layer.get("stride"), "max",
                           layer.get("padding", 0))
        elif op == "avgpool2d":
            y = ref_pool2d(inputs[0], layer["kernel"], layer.get("stride"), "avg",
                           layer.get("padding", 0))
        elif op == "global_avgpool2d":
            y = ref_global_avgpool2d(inputs[0])
        elif op == "flatten":
            y = ref_flatten(inputs[0])
        elif op == "batchnorm":
            y = ref_batchnorm(inputs[0], p("weight"), p("bias"), p("running_mean"),
                              p("running_var"), layer.get("eps", 1e-5))
        elif op == "layernorm":
            y = ref_layernorm(inputs[0], p("weight"), p("bias"), layer.get("eps", 1e-5))
        elif op in ACTIVATIONS:
            y = ACTIVATIONS[op](inputs[0])
        elif op == "add":
            y = ref_add(inputs)
        elif op == "concat":
            y = ref_concat(inputs, layer.get("axis", 0))
        else:
            raise ValueError(f"unknown op {op}")
        values[name] = y
        prev = name
    outs = outputs if outputs else [layers[-1]["name"]]
    assert len(outs) == 1
    return values[outs[0]]


# --------------------------------------------------------------------------------------------
# Parameter initialisation.
# --------------------------------------------------------------------------------------------

def uniform(rng, shape, bound):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def dense_params(rng, prefix, units, fan_in, bias=True):
    bound = 1.0 / math.sqrt(fan_in)
    t = {f"{prefix}.weight": uniform(rng, (units, fan_in), bound)}
    if bias:
        t[f"{prefix}.bias"] = uniform(rng, (units,), bound)
    return t


def conv_params(rng, prefix, filters, cin, kernel, groups=1, bias=True):
    kh, kw = pair(kernel)
    fan_in = (cin // groups) * kh * kw
    bound = 1.0 / math.sqrt(fan_in)
    t = {f"{prefix}.weight": uniform(rng, (filters, cin // groups, kh, kw), bound)}
    if bias:
        t[f"{prefix}.bias"] = uniform(rng, (filters,), bound)
    return t


def batchnorm_params(rng, prefix, c):
    return {
        f"{prefix}.weight": rng.uniform(0.5, 1.5, size=c).astype(np.float32),
        f"{prefix}.bias": rng.uniform(-0.5, 0.5, size=c).astype(np.float32),
        f"{prefix}.running_mean": (0.5 * rng.standard_normal(c)).astype(np.float32),
        f"{prefix}.running_var": rng.uniform(0.25, 2.0, size=c).astype(np.float32),
    }


def layernorm_params(rng, prefix, d):
    return {
        f"{prefix}.weight": rng.uniform(0.5, 1.5, size=d).astype(np.float32),
        f"{prefix}.bias": rng.uniform(-0.5, 0.5, size=d).astype(np.float32),
    }


# --------------------------------------------------------------------------------------------
# Cases. Each builder gets a seeded rng and returns a dict:
#   shape (record shape), layers, weights ({name: array} or {name: (array, dtype)}),
#   optional n (records, default 3), outputs, input (float32 override), note.
# --------------------------------------------------------------------------------------------

CASES = {}


def case(fn):
    CASES[fn.__name__[len("case_"):]] = fn
    return fn


def L(**kw):
    return kw


@case
def case_dense(rng):
    return dict(shape=[6], n=5, layers=[L(name="fc", op="dense", units=4)],
                weights=dense_params(rng, "fc", 4, 6))


@case
def case_dense_nobias(rng):
    return dict(shape=[6], layers=[L(name="fc", op="dense", units=4, bias=False)],
                weights=dense_params(rng, "fc", 4, 6, bias=False))


@case
def case_dense_relu(rng):
    return dict(shape=[7], layers=[L(name="fc", op="dense", units=5, activation="relu")],
                weights=dense_params(rng, "fc", 5, 7))


@case
def case_dense_on_3d_input(rng):
    return dict(shape=[2, 3, 5], layers=[L(name="fc", op="dense", units=4)],
                weights=dense_params(rng, "fc", 4, 5))


@case
def case_conv_basic(rng):
    return dict(shape=[2, 6, 7], n=1,
                layers=[L(name="conv", op="conv2d", filters=3, kernel=3, padding=1)],
                weights=conv_params(rng, "conv", 3, 2, 3))


@case
def case_conv_stride2(rng):
    # 8 -> floor((8 - 3) / 2) + 1 = 3 rows, 9 -> 4 cols.
    return dict(shape=[2, 8, 9],
                layers=[L(name="conv", op="conv2d", filters=3, kernel=3, stride=2)],
                weights=conv_params(rng, "conv", 3, 2, 3))


@case
def case_conv_padding_rect(rng):
    return dict(shape=[2, 6, 7],
                layers=[L(name="conv", op="conv2d", filters=3, kernel=[3, 2], padding=[1, 0])],
                weights=conv_params(rng, "conv", 3, 2, [3, 2]))


@case
def case_conv_dilation2(rng):
    return dict(shape=[2, 9, 8],
                layers=[L(name="conv", op="conv2d", filters=3, kernel=3, dilation=2)],
                weights=conv_params(rng, "conv", 3, 2, 3))


@case
def case_conv_groups2(rng):
    return dict(shape=[4, 6, 5],
                layers=[L(name="conv", op="conv2d", filters=6, kernel=3, padding=1, groups=2)],
                weights=conv_params(rng, "conv", 6, 4, 3, groups=2))


@case
def case_conv_depthwise(rng):
    return dict(shape=[3, 6, 5],
                layers=[L(name="conv", op="conv2d", filters=3, kernel=3, padding=1, groups=3)],
                weights=conv_params(rng, "conv", 3, 3, 3, groups=3))


@case
def case_conv_nobias_stride_pad_dil(rng):
    # rows: floor((9 + 4 - 4 - 1) / 2) + 1 = 5; cols: floor((8 + 4 - 4 - 1) / 2) + 1 = 4
    return dict(shape=[3, 9, 8],
                layers=[L(name="conv", op="conv2d", filters=4, kernel=3, stride=2, padding=2,
                          dilation=2, bias=False, activation="tanh")],
                weights=conv_params(rng, "conv", 4, 3, 3, bias=False))


@case
def case_conv_deep(rng):
    # 8 channels x 3x3 = 72-deep patches, 20 filters (a panel and a ragged one), stride 2 with
    # padding: the path where subpass packs the filters for its dense kernel.
    return dict(shape=[8, 9, 10],
                layers=[L(name="conv", op="conv2d", filters=20, kernel=3, stride=2, padding=1,
                          activation="relu")],
                weights=conv_params(rng, "conv", 20, 8, 3))


@case
def case_conv_deep_groups(rng):
    # groups 2 of 16 channels: 8 x 3 x 3 = 72-deep patches per group, 6 filters per group.
    return dict(shape=[16, 7, 6],
                layers=[L(name="conv", op="conv2d", filters=12, kernel=3, padding=1, groups=2,
                          dilation=[1, 2])],
                weights=conv_params(rng, "conv", 12, 16, 3, groups=2))


@case
def case_conv_wide_nobias_relu(rng):
    # 45 output columns (a 32-wide block and a ragged 13), 5 filters (pairs and a single one),
    # no bias, relu: the direct convolution's edges.
    return dict(shape=[3, 6, 45],
                layers=[L(name="conv", op="conv2d", filters=5, kernel=3, padding=1, bias=False,
                          activation="relu")],
                weights=conv_params(rng, "conv", 5, 3, 3, bias=False))


@case
def case_conv_params_name(rng):
    return dict(shape=[2, 6, 6],
                layers=[L(name="conv_b", op="conv2d", inputs=["input"], filters=3, kernel=5,
                          padding=2, params="tower_b.0")],
                weights=conv_params(rng, "tower_b.0", 3, 2, 5))


@case
def case_maxpool2(rng):
    # 7x7 -> 3x3 (floor mode drops the last row and column)
    return dict(shape=[2, 7, 7], layers=[L(name="pool", op="maxpool2d", kernel=2)], weights={})


@case
def case_maxpool3_stride2(rng):
    # 8 -> floor((8 - 3) / 2) + 1 = 3; 9 -> 4
    return dict(shape=[2, 8, 9], layers=[L(name="pool", op="maxpool2d", kernel=3, stride=2)],
                weights={})


@case
def case_avgpool2(rng):
    return dict(shape=[2, 7, 6], layers=[L(name="pool", op="avgpool2d", kernel=2)], weights={})


@case
def case_avgpool_rect(rng):
    # rows: (5 - 2) / 1 + 1 = 4; cols: floor((8 - 3) / 2) + 1 = 3
    return dict(shape=[2, 5, 8],
                layers=[L(name="pool", op="avgpool2d", kernel=[2, 3], stride=[1, 2])],
                weights={})


@case
def case_maxpool3_stride2_pad1(rng):
    # ResNet's stem pool. rows: (9 + 2 - 3) // 2 + 1 = 5; cols: (8 + 2 - 3) // 2 + 1 = 4.
    return dict(shape=[3, 9, 8],
                layers=[L(name="pool", op="maxpool2d", kernel=3, stride=2, padding=1)],
                weights={})


@case
def case_maxpool_pad_negative(rng):
    # Every value below zero: zero padding would show as 0 on the borders, -inf padding never wins.
    x = (-1.0 - np.abs(rng.standard_normal((2, 2, 6, 7)))).astype(np.float32)
    return dict(shape=[2, 6, 7], input=x,
                layers=[L(name="pool", op="maxpool2d", kernel=3, stride=1, padding=1)],
                weights={})


@case
def case_maxpool2_pad1(rng):
    # kernel 2, stride 2 with padding: not the unpadded pairwise path.
    return dict(shape=[2, 7, 6],
                layers=[L(name="pool", op="maxpool2d", kernel=2, padding=1)], weights={})


@case
def case_maxpool_pad_rect(rng):
    # rows: (7 + 2 - 3) // 2 + 1 = 4; cols: (5 + 2 - 2) // 1 + 1 = 6.
    return dict(shape=[2, 7, 5],
                layers=[L(name="pool", op="maxpool2d", kernel=[3, 2], stride=[2, 1],
                          padding=[1, 1])],
                weights={})


@case
def case_avgpool3_stride2_pad1(rng):
    # count_include_pad: a corner window holds 4 values and 5 padding zeros, divided by 9.
    return dict(shape=[3, 9, 8],
                layers=[L(name="pool", op="avgpool2d", kernel=3, stride=2, padding=1)],
                weights={})


@case
def case_avgpool_pad_rect(rng):
    return dict(shape=[2, 5, 8],
                layers=[L(name="pool", op="avgpool2d", kernel=[2, 5], stride=[1, 3],
                          padding=[1, 2])],
                weights={})


@case
def case_conv_bn_relu(rng):
    # What the fast graph folds: a convolution (no bias, as in ResNets) whose output only the
    # batch norm reads, then relu. Stride 2 and padding, deep enough for the packed path.
    w = conv_params(rng, "conv", 12, 8, 3, bias=False)
    w.update(batchnorm_params(rng, "bn", 12))
    return dict(shape=[8, 9, 10],
                layers=[L(name="conv", op="conv2d", filters=12, kernel=3, stride=2, padding=1,
                          bias=False),
                        L(name="bn", op="batchnorm"),
                        L(name="act", op="relu")],
                weights=w)


@case
def case_conv_bias_bn(rng):
    # A convolution with a bias and groups before a batch norm with its own eps: both fold.
    w = conv_params(rng, "conv", 6, 4, 3, groups=2)
    w.update(batchnorm_params(rng, "bn", 6))
    return dict(shape=[4, 6, 7],
                layers=[L(name="conv", op="conv2d", filters=6, kernel=3, padding=1, groups=2),
                        L(name="bn", op="batchnorm", eps=1e-3)],
                weights=w)


@case
def case_conv_bn_shared(rng):
    # The convolution's output is also read by the add: the batch norm must not be folded.
    w = conv_params(rng, "conv", 3, 3, 3)
    w.update(batchnorm_params(rng, "bn", 3))
    return dict(shape=[3, 5, 6],
                layers=[L(name="conv", op="conv2d", filters=3, kernel=3, padding=1),
                        L(name="bn", op="batchnorm"),
                        L(name="sum", op="add", inputs=["conv", "bn"])],
                weights=w)


@case
def case_conv_relu_bn(rng):
    # relu inside the convolution comes before the batch norm: no fold.
    w = conv_params(rng, "conv", 3, 2, 3)
    w.update(batchnorm_params(rng, "bn", 3))
    return dict(shape=[2, 5, 6],
                layers=[L(name="conv", op="conv2d", filters=3, kernel=3, padding=1,
                          activation="relu"),
                        L(name="bn", op="batchnorm")],
                weights=w)


@case
def case_global_avgpool(rng):
    return dict(shape=[4, 5, 6], layers=[L(name="gap", op="global_avgpool2d")], weights={})


@case
def case_flatten(rng):
    return dict(shape=[3, 4, 5], layers=[L(name="flat", op="flatten")], weights={})


@case
def case_batchnorm(rng):
    return dict(shape=[4, 5, 6], layers=[L(name="bn", op="batchnorm", eps=1e-3)],
                weights=batchnorm_params(rng, "bn", 4))


@case
def case_batchnorm_1d(rng):
    # record [C]: channels are the only axis.
    return dict(shape=[6], layers=[L(name="bn", op="batchnorm")],
                weights=batchnorm_params(rng, "bn", 6))


@case
def case_layernorm(rng):
    # record [3, 8]: normalised over the last axis (8) for each of the 3 rows.
    return dict(shape=[3, 8], layers=[L(name="ln", op="layernorm")],
                weights=layernorm_params(rng, "ln", 8))


@case
def case_layernorm_eps(rng):
    # Small-variance rows so that eps = 0.1 matters a lot.
    x = (0.05 * rng.standard_normal((3, 10))).astype(np.float32)
    return dict(shape=[10], input=x, layers=[L(name="ln", op="layernorm", eps=0.1)],
                weights=layernorm_params(rng, "ln", 10))


def activation_case(op, shape=(2, 3, 4)):
    def build(rng):
        return dict(shape=list(shape), layers=[L(name="act", op=op)], weights={})
    return build


for _op in ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "identity", "dropout"]:
    CASES[_op] = activation_case(_op)


@case
def case_softmax(rng):
    x = rng.standard_normal((3, 3, 5)).astype(np.float32)
    x[0, 0] = [50.0, 49.0, -50.0, 0.0, 50.0]
    x[1, 1] = [1000.0, 999.0, 998.0, -1000.0, 0.0]
    x[2, 2] = [-1000.0, -1000.0, -999.0, -1001.0, -1000.0]
    return dict(shape=[3, 5], input=x, layers=[L(name="sm", op="softmax")], weights={})


@case
def case_add3(rng):
    return dict(shape=[2, 3, 4],
                layers=[L(name="id", op="identity"),
                        L(name="sig", op="sigmoid", inputs=["input"]),
                        L(name="th", op="tanh", inputs=["input"]),
                        L(name="sum", op="add", inputs=["id", "sig", "th"])],
                outputs=["sum"], weights={})


@case
def case_concat_axis0(rng):
    return dict(shape=[2, 3, 4],
                layers=[L(name="r", op="relu"),
                        L(name="cat", op="concat", inputs=["input", "r"], axis=0)],
                outputs=["cat"], weights={})


@case
def case_concat_axis2(rng):
    return dict(shape=[2, 3, 4],
                layers=[L(name="r", op="relu"),
                        L(name="cat", op="concat", inputs=["input", "r"], axis=2)],
                outputs=["cat"], weights={})


def dtype_case(dtype):
    def build(rng):
        w = dense_params(rng, "fc", 4, 6)
        if dtype == "F64":
            # Genuinely double-precision values (not f32-representable); the loader must round
            # them to f32, and expected uses f32(stored).
            w = {k: rng.uniform(-1, 1, size=v.shape) / math.sqrt(6) for k, v in w.items()}
        return dict(shape=[6], layers=[L(name="fc", op="dense", units=4)],
                    weights={k: (v, dtype) for k, v in w.items()})
    return build


CASES["weights_f16"] = dtype_case("F16")
CASES["weights_bf16"] = dtype_case("BF16")
CASES["weights_f64"] = dtype_case("F64")


@case
def case_dense_softmax_activation(rng):
    return dict(shape=[6], layers=[L(name="fc", op="dense", units=5, activation="softmax")],
                weights=dense_params(rng, "fc", 5, 6))


@case
def case_multi_layer(rng):
    w = conv_params(rng, "conv", 4, 1, 3)
    w.update(dense_params(rng, "fc", 10, 4 * 4 * 4))
    return dict(shape=[1, 8, 8], n=5,
                layers=[L(name="conv", op="conv2d", inputs=["input"], filters=4, kernel=3,
                          padding=1),
                        L(name="act", op="relu"),
                        L(name="pool", op="maxpool2d", kernel=2),
                        L(name="flat", op="flatten"),
                        L(name="fc", op="dense", units=10),
                        L(name="prob", op="softmax")],
                outputs=["prob"], weights=w)


@case
def case_extra_tensor(rng):
    w = dense_params(rng, "fc", 4, 6)
    w["fc.num_batches_tracked"] = (np.array(12345, dtype=np.int64), "I64")
    return dict(shape=[6], layers=[L(name="fc", op="dense", units=4)], weights=w)


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------

def flow(d):
    return yaml.safe_dump(d, default_flow_style=True, sort_keys=False, width=10_000).strip()


def pipeline_yaml(name, spec, has_weights):
    lines = [f"# Generated by tools/gen_op_fixtures.py (case {name}); do not edit.",
             "input:", f"  shape: {flow(spec['shape'])}"]
    if has_weights:
        lines.append("weights: weights.safetensors")
    lines.append("layers:")
    for layer in spec["layers"]:
        lines.append(f"  - {flow(layer)}")
    if spec.get("outputs"):
        lines.append(f"outputs: {flow(spec['outputs'])}")
    return "\n".join(lines) + "\n"


ALLOWED_KEYS = {
    "dense": {"units", "bias", "activation"},
    "conv2d": {"filters", "kernel", "stride", "padding", "dilation", "groups", "bias",
               "activation"},
    "maxpool2d": {"kernel", "stride", "padding"},
    "avgpool2d": {"kernel", "stride", "padding"},
    "batchnorm": {"eps"},
    "layernorm": {"eps"},
    "concat": {"axis"},
}


def check_pipeline_text(text, spec):
    doc = yaml.safe_load(text)
    assert set(doc) <= {"input", "weights", "layers", "outputs"}, doc.keys()
    assert set(doc["input"]) == {"shape"}
    assert doc["layers"] == spec["layers"]
    for layer in doc["layers"]:
        extra = set(layer) - {"name", "op", "inputs", "params"} - ALLOWED_KEYS.get(layer["op"], set())
        assert not extra, (layer, extra)


def generate_case(name, build):
    seed = zlib.crc32(name.encode())
    rng = np.random.default_rng(seed)
    spec = build(rng)
    n = spec.get("n", 3)
    shape = list(spec["shape"])
    x = spec.get("input")
    if x is None:
        x = rng.standard_normal([n] + shape).astype(np.float32)
    assert x.dtype == np.float32 and list(x.shape) == [x.shape[0]] + shape

    case_dir = os.path.join(OUT_DIR, name)
    os.makedirs(case_dir, exist_ok=True)
    has_weights = bool(spec["weights"])
    text = pipeline_yaml(name, spec, has_weights)
    check_pipeline_text(text, spec)
    with open(os.path.join(case_dir, "pipeline.yaml"), "w") as f:
        f.write(text)

    params = {}
    if has_weights:
        wpath = os.path.join(case_dir, "weights.safetensors")
        st.save_file(spec["weights"], wpath)
        # Compute from the weights exactly as stored: decode, convert to f32, then to f64.
        for k, v in st.load_file(wpath).items():
            if v.dtype.kind == "f":
                params[k] = v.astype(np.float32).astype(np.float64)

    expected = run_pipeline(spec["layers"], spec.get("outputs"), x.astype(np.float64), params)
    assert np.all(np.isfinite(expected))
    expected = expected.astype(np.float32)
    st.save_file({"input": x, "expected": expected}, os.path.join(case_dir, "io.safetensors"),
                 metadata={"case": name, "generator": "tools/gen_op_fixtures.py"})
    return x.shape, expected.shape


README = """\
Generated by `python3 tools/gen_op_fixtures.py` (run from the repo root; seeded numpy reference, no PyTorch); do not edit by hand.
Layout: `<case>/pipeline.yaml` + `<case>/weights.safetensors` (only if the case has parameters) + `<case>/io.safetensors` (F32 `input` [N, *record] and `expected` [N, *output], computed in f64 from the stored weights).
"""


# --------------------------------------------------------------------------------------------
# Self-checks: the references against independent formulations.
# --------------------------------------------------------------------------------------------

def im2col_conv2d(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    dh, dw = pair(dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    fg = f // groups
    outs = []
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        cols = np.empty((n, cg, kh, kw, ho, wo))
        for ki in range(kh):
            for kj in range(kw):
                cols[:, :, ki, kj] = xg[:, :, ki * dh: ki * dh + sh * (ho - 1) + 1: sh,
                                        kj * dw: kj * dw + sw * (wo - 1) + 1: sw]
        cols = cols.reshape(n, cg * kh * kw, ho * wo)
        wg = w[g * fg:(g + 1) * fg].reshape(fg, -1)
        outs.append(np.einsum("fk,nkp->nfp", wg, cols).reshape(n, fg, ho, wo))
    out = np.concatenate(outs, axis=1)
    if b is not None:
        out = out + b[None, :, None, None]
    return out


def self_check():
    rng = np.random.default_rng(0)
    configs = [  # (cin, h, w, filters, kernel, stride, padding, dilation, groups, bias)
        (2, 6, 7, 3, 3, 1, 1, 1, 1, True),
        (2, 8, 9, 3, 3, 2, 0, 1, 1, True),
        (2, 6, 7, 3, (3, 2), 1, (1, 0), 1, 1, True),
        (2, 9, 8, 3, 3, 1, 0, 2, 1, True),
        (4, 6, 5, 6, 3, 1, 1, 1, 2, True),
        (3, 6, 5, 3, 3, 1, 1, 1, 3, True),
        (3, 9, 8, 4, 3, 2, 2, 2, 1, False),
        (2, 7, 5, 4, (2, 3), (2, 1), (0, 2), (1, 2), 2, True),
    ]
    for cin, h, wd, f, k, s, p, d, g, bias in configs:
        kh, kw = pair(k)
        x = rng.standard_normal((2, cin, h, wd))
        w = rng.standard_normal((f, cin // g, kh, kw))
        b = rng.standard_normal(f) if bias else None
        a = ref_conv2d(x, w, b, s, p, d, g)
        c = im2col_conv2d(x, w, b, s, p, d, g)
        assert a.shape == c.shape and np.max(np.abs(a - c)) < 1e-6, (cin, h, wd, f, k, s, p, d, g)

    x = rng.standard_normal((3, 2, 7, 6))
    # Non-overlapping pooling via reshape (crop to the floor-mode extent first).
    crop = x[:, :, :6, :6].reshape(3, 2, 3, 2, 3, 2)
    assert np.max(np.abs(ref_pool2d(x, 2, None, "max") - crop.max(axis=(3, 5)))) < 1e-12
    assert np.max(np.abs(ref_pool2d(x, 2, None, "avg") - crop.mean(axis=(3, 5)))) < 1e-12
    assert np.max(np.abs(ref_global_avgpool2d(x) - x.mean(axis=(2, 3)))) < 1e-12

    # Padded pooling against PyTorch itself, when it is installed (the semantics this copies).
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("torch not installed: padded pooling not checked against PyTorch", file=sys.stderr)
    else:
        x = rng.standard_normal((2, 3, 9, 8))
        for k, s_, p in [(3, 2, 1), (2, 2, 1), ((3, 2), (2, 1), (1, 1)), ((2, 5), (1, 3), (1, 2))]:
            t = torch.from_numpy(x)
            want_max = F.max_pool2d(t, k, s_, p).numpy()
            want_avg = F.avg_pool2d(t, k, s_, p, count_include_pad=True).numpy()
            assert np.max(np.abs(ref_pool2d(x, k, s_, "max", p) - want_max)) < 1e-12, (k, s_, p)
            assert np.max(np.abs(ref_pool2d(x, k, s_, "avg", p) - want_avg)) < 1e-12, (k, s_, p)

    x = rng.standard_normal((3, 4, 7)) * 5
    w, b = rng.standard_normal(7), rng.standard_normal(7)
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    assert np.max(np.abs(ref_layernorm(x, w, b, 1e-5) - ln)) < 1e-9
    sm = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    assert np.max(np.abs(ref_softmax(x) - sm)) < 1e-12
    assert np.max(np.abs(ref_sigmoid(x) - 1 / (1 + np.exp(-x)))) < 1e-12
    # gelu(x) = x * Phi(x); check against tabulated Phi values.
    for v, phi in [(1.0, 0.8413447460685429), (-0.5, 0.3085375387259869), (2.0, 0.9772498680518208)]:
        assert abs(ref_gelu(np.array([v]))[0] - v * phi) < 1e-12
    xw = rng.standard_normal((3, 2, 5))
    wd_, bd = rng.standard_normal((4, 5)), rng.standard_normal(4)
    assert np.max(np.abs(ref_dense(xw, wd_, bd) - (np.einsum("nri,ui->nru", xw, wd_) + bd))) < 1e-12
    x = rng.standard_normal((3, 4, 2, 2))
    m, v, gw, gb = (rng.standard_normal(4), rng.uniform(0.5, 2, 4), rng.standard_normal(4),
                    rng.standard_normal(4))
    bn = (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-3) * gw[:, None, None] + gb[:, None, None]
    assert np.max(np.abs(ref_batchnorm(x, gw, gb, m, v, 1e-3) - bn)) < 1e-12

    # bf16 rounding: round-to-nearest-even on the top 16 bits.
    vals = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -2.5, 0.0],
                    dtype=np.float32)
    got = st.bf16_bits_to_f32(st.f32_to_bf16_bits(vals))
    want = np.array([1.0, 1.0, 1.0 + 4 * 2**-8, 1.0 + 2 * 2**-8, -2.5, 0.0], dtype=np.float32)
    assert np.array_equal(got, want), got
    # Round trip through a file, all dtypes.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        a = rng.standard_normal((3, 2)).astype(np.float32)
        st.save_file({"a": a, "h": (a, "F16"), "b": (a, "BF16"), "d": a.astype(np.float64),
                      "i": (np.array(7), "I64")}, path, metadata={"k": "v"})
        t, dt, meta = st.load_file(path, with_info=True)
        assert meta == {"k": "v"} and dt == {"a": "F32", "h": "F16", "b": "BF16", "d": "F64", "i": "I64"}
        assert np.array_equal(t["a"], a) and np.array_equal(t["h"], a.astype(np.float16))
        assert np.max(np.abs(t["b"] - a)) <= np.max(np.abs(a)) * 2**-8
        assert t["i"].shape == () and int(t["i"]) == 7
        raw = open(path, "rb").read()
        assert int.from_bytes(raw[:8], "little") % 8 == 0


def main():
    if not os.path.isdir("tests") or not os.path.isfile("Cargo.toml"):
        sys.exit("run from the repository root")
    self_check()
    os.makedirs(OUT_DIR, exist_ok=True)
    # Remove stale generated case directories.
    for entry in sorted(os.listdir(OUT_DIR)):
        path = os.path.join(OUT_DIR, entry)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "pipeline.yaml")):
            shutil.rmtree(path)
    for name, build in CASES.items():
        xs, es = generate_case(name, build)
        print(f"{name:32s} input {list(xs)} -> expected {list(es)}")
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write(README)


if __name__ == "__main__":
    main()
