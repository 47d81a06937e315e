"""Train the two digits models for subpass in plain numpy and write weights, pipelines, fixtures.

Run from the repository root, after tools/make_digits.py:

    python3 tools/train_digits.py

Reads examples/digits-train.jsonl (training) and examples/digits-test.jsonl (evaluation only,
never used to pick anything during training) and writes

    configs/digits-mlp.safetensors, configs/digits-mlp.yaml
    configs/digits-cnn.safetensors, configs/digits-cnn.yaml
    tests/fixtures/digits/mlp-test-expected.jsonl
    tests/fixtures/digits/cnn-test-expected.jsonl
    tests/fixtures/digits/README.md

Models (record shape [1, 8, 8]):
  MLP: flatten 64 -> dense 64 relu -> dense 10
  CNN: tower a: conv 1->8 k3 p1 relu, maxpool 2  -> [8,4,4]
       tower b: conv 1->8 k5 p2 relu, maxpool 2  -> [8,4,4]
       concat channels -> [16,4,4] -> flatten 256 -> dense 32 relu -> dense 10 (logits)

Conventions are PyTorch's, so the files look like a torch state_dict saved with safetensors:
dense weight [out, in] (y = x @ W.T + b), conv weight [filters, in, kh, kw] applied as
cross-correlation with zero padding, maxpool 2x2 stride 2, flatten in (C, H, W) order.

Training is in float64 with softmax cross-entropy, Adam, minibatches of 32, a fixed number of
epochs and a cosine learning-rate schedule; everything is seeded so a rerun writes
byte-identical files (BLAS is pinned to one thread below so sums are not reordered).
Accuracies and fixtures come from a separate, deliberately plain float64 forward pass
(`reference_*` functions) run over the float32 weights read back from the saved files, so the
numbers describe exactly what subpass will load.
"""
import os

# One BLAS thread: multi-threaded BLAS may split reductions differently between runs, which
# would break byte-identical output.  Must be set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import json
import struct
import time

import numpy as np

TRAIN_PATH = "examples/digits-train.jsonl"
TEST_PATH = "examples/digits-test.jsonl"
CONFIG_DIR = "configs"
FIXTURE_DIR = "tests/fixtures/digits"

BATCH = 32
SEED_MLP = 1
SEED_CNN = 2


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def load_jsonl(path):
    ids, xs, labels = [], [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            ids.append(r["id"])
            xs.append(r["x"])
            labels.append(r["label"])
    return np.array(ids), np.array(xs, dtype=np.float64), np.array(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Minimal safetensors writer/reader (kept here rather than shared so this script stands alone)
# --------------------------------------------------------------------------------------------

_DTYPES = {"F32": np.dtype("<f4"), "I64": np.dtype("<i8")}


def save_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> (dtype string, numpy array).  Layout: u64 LE header length N,
    N bytes of JSON header (space padded to a multiple of 8), then the raw LE tensor bytes."""
    header, chunks, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        data = np.ascontiguousarray(arr, dtype=_DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def load_safetensors(path):
    """Read back a file written above: dict name -> numpy array (native dtype of the file)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


# --------------------------------------------------------------------------------------------
# Training building blocks (vectorised, float64)
# --------------------------------------------------------------------------------------------

def kaiming_uniform(rng, shape, fan_in):
    # PyTorch's default init for Linear/Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
    # weight (kaiming_uniform with a=sqrt(5) works out to this bound) and bias.
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def im2col(x, k, pad):
    """x [B, C, H, W] -> columns [B, H*W, C*k*k] for a stride-1 'same' convolution.
    Column order (c, di, dj) matches weight.reshape(F, C*k*k)."""
    B, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((B, H * W, C, k, k))
    for di in range(k):
        for dj in range(k):
            cols[:, :, :, di, dj] = xp[:, :, di:di + H, dj:dj + W].reshape(B, C, H * W).transpose(0, 2, 1)
    return cols.reshape(B, H * W, C * k * k)


def conv_relu_pool_forward(x, w, b, pad):
    """conv (same) + relu + maxpool 2.  Returns pooled output and a cache for backward."""
    B, C, H, W = x.shape
    F, _, k, _ = w.shape
    cols = im2col(x, k, pad)                                # [B, HW, Ckk]
    z = cols @ w.reshape(F, -1).T + b                       # [B, HW, F]
    z = z.transpose(0, 2, 1).reshape(B, F, H, W)
    a = np.maximum(z, 0.0)
    # Put each 2x2 window on the last axis, take its max; remember which element won.
    win = a.reshape(B, F, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, F, H // 2, W // 2, 4)
    arg = win.argmax(axis=-1)
    pooled = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return pooled, (cols, z, arg, w.shape, (B, F, H, W))


def conv_relu_pool_backward(dpooled, cache):
    """Gradients of w and b (the input needs none: these convs read the network input)."""
    cols, z, arg, wshape, (B, F, H, W) = cache
    dwin = np.zeros((B, F, H // 2, W // 2, 4))
    np.put_along_axis(dwin, arg[..., None], dpooled[..., None], axis=-1)
    da = dwin.reshape(B, F, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, F, H, W)
    dz = da * (z > 0)
    dz = dz.reshape(B, F, H * W).transpose(0, 2, 1)         # [B, HW, F]
    dw = np.einsum("bpf,bpk->fk", dz, cols).reshape(wshape)
    db = dz.sum(axis=(0, 1))
    return dw, db


def softmax_xent(logits, labels):
    """Mean cross-entropy and its gradient w.r.t. the logits."""
    s = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    d = p.copy()
    d[np.arange(n), labels] -= 1.0
    return loss, d / n


class Adam:
    def __init__(self, params, b1=0.9, b2=0.999, eps=1e-8):
        self.params, self.b1, self.b2, self.eps, self.t = params, b1, b2, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads, lr, weight_decay):
        self.t += 1
        for k in sorted(self.params):
            g = grads[k]
            if k.endswith("weight"):          # L2 on weights only, not biases
                g = g + weight_decay * self.params[k]
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            mh = self.m[k] / (1 - self.b1 ** self.t)
            vh = self.v[k] / (1 - self.b2 ** self.t)
            self.params[k] -= lr * mh / (np.sqrt(vh) + self.eps)


# --- MLP --------------------------------------------------------------------------------------

def mlp_init(rng):
    return {
        "fc1.weight": kaiming_uniform(rng, (64, 64), 64), "fc1.bias": kaiming_uniform(rng, (64,), 64),
        "fc2.weight": kaiming_uniform(rng, (10, 64), 64), "fc2.bias": kaiming_uniform(rng, (10,), 64),
    }


def mlp_loss_grad(p, x, y):
    h0 = x.reshape(len(x), -1)
    z1 = h0 @ p["fc1.weight"].T + p["fc1.bias"]
    h1 = np.maximum(z1, 0.0)
    logits = h1 @ p["fc2.weight"].T + p["fc2.bias"]
    loss, d = softmax_xent(logits, y)
    g = {"fc2.weight": d.T @ h1, "fc2.bias": d.sum(0)}
    dz1 = (d @ p["fc2.weight"]) * (z1 > 0)
    g["fc1.weight"] = dz1.T @ h0
    g["fc1.bias"] = dz1.sum(0)
    return loss, g


# --- CNN --------------------------------------------------------------------------------------

def cnn_init(rng):
    return {
        "tower_a.0.weight": kaiming_uniform(rng, (8, 1, 3, 3), 9),
        "tower_a.0.bias": kaiming_uniform(rng, (8,), 9),
        "tower_b.0.weight": kaiming_uniform(rng, (8, 1, 5, 5), 25),
        "tower_b.0.bias": kaiming_uniform(rng, (8,), 25),
        "head.0.weight": kaiming_uniform(rng, (32, 256), 256),
        "head.0.bias": kaiming_uniform(rng, (32,), 256),
        "head.2.weight": kaiming_uniform(rng, (10, 32), 32),
        "head.2.bias": kaiming_uniform(rng, (10,), 32),
    }


def cnn_loss_grad(p, x, y):
    B = len(x)
    pa, ca = conv_relu_pool_forward(x, p["tower_a.0.weight"], p["tower_a.0.bias"], 1)
    pb, cb = conv_relu_pool_forward(x, p["tower_b.0.weight"], p["tower_b.0.bias"], 2)
    h0 = np.concatenate([pa, pb], axis=1).reshape(B, -1)   # [B, 256], (C, H, W) order
    z1 = h0 @ p["head.0.weight"].T + p["head.0.bias"]
    h1 = np.maximum(z1, 0.0)
    logits = h1 @ p["head.2.weight"].T + p["head.2.bias"]
    loss, d = softmax_xent(logits, y)
    g = {"head.2.weight": d.T @ h1, "head.2.bias": d.sum(0)}
    dz1 = (d @ p["head.2.weight"]) * (z1 > 0)
    g["head.0.weight"] = dz1.T @ h0
    g["head.0.bias"] = dz1.sum(0)
    dh0 = (dz1 @ p["head.0.weight"]).reshape(B, 16, 4, 4)
    g["tower_a.0.weight"], g["tower_a.0.bias"] = conv_relu_pool_backward(dh0[:, :8], ca)
    g["tower_b.0.weight"], g["tower_b.0.bias"] = conv_relu_pool_backward(dh0[:, 8:], cb)
    return loss, g


def train(params, loss_grad, x, y, seed, epochs, lr, weight_decay, label):
    rng = np.random.default_rng(seed)
    opt = Adam(params)
    steps_per_epoch = -(-len(x) // BATCH)
    total, step = epochs * steps_per_epoch, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for s in range(0, len(x), BATCH):
            idx = order[s:s + BATCH]
            loss, g = loss_grad(params, x[idx], y[idx])
            # Cosine decay to 0 over the whole run: fast early progress, a calm finish.
            cur = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            opt.step(g, cur, weight_decay)
            losses.append(loss)
            step += 1
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"  {label} epoch {epoch + 1:3d}  mean train loss {np.mean(losses):.4f}", flush=True)
    return params


# --------------------------------------------------------------------------------------------
# Reference forward pass: float64, plain loops, independent of the training code above.
# --------------------------------------------------------------------------------------------

def reference_dense(x, w, b):
    # x [N, in], w [out, in] -> [N, out]
    return x @ w.T + b


def reference_conv2d(x, w, b, pad):
    # x [N, C, H, W], w [F, C, k, k]; stride 1, zero padding, cross-correlation (as PyTorch).
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    oh, ow = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i:i + k, j:j + k]               # [N, C, k, k]
            for fi in range(f):
                out[:, fi, i, j] = (window * w[fi]).sum(axis=(1, 2, 3)) + b[fi]
    return out


def reference_maxpool2(x):
    n, c, h, w = x.shape
    out = np.zeros((n, c, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, :, i, j] = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(2, 3))
    return out


def relu(x):
    return np.maximum(x, 0.0)


def reference_mlp(t, x):
    h = x.reshape(len(x), -1)
    h = relu(reference_dense(h, t["fc1.weight"], t["fc1.bias"]))
    return reference_dense(h, t["fc2.weight"], t["fc2.bias"])


def reference_cnn(t, x):
    a = reference_maxpool2(relu(reference_conv2d(x, t["tower_a.0.weight"], t["tower_a.0.bias"], 1)))
    b = reference_maxpool2(relu(reference_conv2d(x, t["tower_b.0.weight"], t["tower_b.0.bias"], 2)))
    h = np.concatenate([a, b], axis=1).reshape(len(x), -1)
    h = relu(reference_dense(h, t["head.0.weight"], t["head.0.bias"]))
    return reference_dense(h, t["head.2.weight"], t["head.2.bias"])


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

MLP_YAML = """\
# digits-mlp: a small MLP (flatten 64 -> dense 64 relu -> dense 10) classifying scikit-learn's
# 8x8 handwritten digits.  Generated by tools/train_digits.py (do not edit by hand).
# Measured test accuracy (float32 weights as saved, examples/digits-test.jsonl): {acc}
name: digits-mlp
input:
  shape: [1, 8, 8]
  field: x
weights: digits-mlp.safetensors     # relative to this file
layers:
  - {{name: flat, op: flatten}}
  - {{name: fc1, op: dense, units: 64, activation: relu, params: fc1}}
  - {{name: fc2, op: dense, units: 10, params: fc2}}
outputs: [fc2]
stages:
  - {{name: body, layers: [flat, fc1]}}
  - {{name: head, layers: [fc2]}}
batch: {{size: 32, max_delay_ms: 5}}
output: {{field: y, argmax: true, passthrough: [label]}}
"""

CNN_YAML = """\
# digits-cnn: a two-tower CNN classifying scikit-learn's 8x8 handwritten digits.  Tower a
# (conv 3x3, 8 filters) and tower b (conv 5x5, 8 filters) read the same input, are max-pooled,
# concatenated on channels and fed to a dense head (256 -> 32 relu -> 10).
# Generated by tools/train_digits.py (do not edit by hand).
# Measured test accuracy (float32 weights as saved, examples/digits-test.jsonl): {acc}
name: digits-cnn
input:
  shape: [1, 8, 8]
  field: x
weights: digits-cnn.safetensors     # relative to this file
layers:                              # inputs default to the previous layer
  - {{name: conv_a, op: conv2d, inputs: [input], filters: 8, kernel: 3, padding: 1, activation: relu, params: tower_a.0}}
  - {{name: pool_a, op: maxpool2d, kernel: 2}}
  - {{name: conv_b, op: conv2d, inputs: [input], filters: 8, kernel: 5, padding: 2, activation: relu, params: tower_b.0}}
  - {{name: pool_b, op: maxpool2d, kernel: 2}}
  - {{name: merge, op: concat, inputs: [pool_a, pool_b], axis: 0}}
  - {{name: flat, op: flatten}}
  - {{name: hidden, op: dense, units: 32, activation: relu, params: head.0}}
  - {{name: logits, op: dense, units: 10, params: head.2}}
outputs: [logits]
stages:
  - {{name: tower_a, layers: [conv_a, pool_a]}}
  - {{name: tower_b, layers: [conv_b, pool_b]}}
  - {{name: head, layers: [merge, flat, hidden, logits], replicas: 2}}
batch: {{size: 32, max_delay_ms: 5}}
output: {{field: y, argmax: true, passthrough: [label]}}
"""

README = """\
# digits fixtures

Expected outputs of the two digits models over the test split `examples/digits-test.jsonl`
({n} records), one line per test record in file order:

    {{"id": <id>, "y": [10 logits], "argmax": k, "label": k}}

- `mlp-test-expected.jsonl`: `configs/digits-mlp.yaml` + `configs/digits-mlp.safetensors`
- `cnn-test-expected.jsonl`: `configs/digits-cnn.yaml` + `configs/digits-cnn.safetensors`

Made from the repository root with

    python3 tools/make_digits.py    # examples/digits-{{train,test}}.jsonl
    python3 tools/train_digits.py   # weights, pipeline yaml, these fixtures

Both scripts are seeded and deterministic: rerunning them gives byte-identical files.

The logits come from a plain float64 numpy forward pass (`reference_*` in
`tools/train_digits.py`, separate from the training code) over the float32 weights read back
from the saved safetensors files, then rounded to float32 (written as the shortest repr of
that float32).  subpass computes in float32, so compare `y` with a tolerance (about 1e-4
absolute is ample for these small models) and `argmax` exactly; `argmax` is the first index
of the maximum, and the smallest top-1/top-2 logit gap in each file is listed below so a
tolerance can be checked against it.

Measured test accuracy (argmax == label):

| model | accuracy | smallest top-1/top-2 logit gap |
|-------|----------|--------------------------------|
| MLP   | {mlp_acc} | {mlp_gap:.3g} |
| CNN   | {cnn_acc} | {cnn_gap:.3g} |
"""


def f32(v):
    return float(np.float32(v))


def write_fixture(path, ids, logits, labels):
    with open(path, "w", newline="\n") as f:
        for i, row, lab in zip(ids, logits, labels):
            y = [f32(v) for v in row]
            rec = {"id": int(i), "y": y, "argmax": int(np.argmax(row)), "label": int(lab)}
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")


def min_gap(logits):
    s = np.sort(logits, axis=1)
    return float((s[:, -1] - s[:, -2]).min())


def acc_str(correct, n):
    return f"{correct}/{n} = {100.0 * correct / n:.2f}%"


def main():
    t0 = time.time()
    _, xtr, ytr = load_jsonl(TRAIN_PATH)
    ids_te, xte, yte = load_jsonl(TEST_PATH)
    print(f"train {xtr.shape}, test {xte.shape}")
    os.makedirs(CONFIG_DIR, exist_ok=True)
    os.makedirs(FIXTURE_DIR, exist_ok=True)

    # ---- train ----
    t = time.time()
    mlp = train(mlp_init(np.random.default_rng(SEED_MLP)), mlp_loss_grad, xtr, ytr,
                seed=SEED_MLP, epochs=MLP_EPOCHS, lr=MLP_LR, weight_decay=MLP_WD, label="mlp")
    print(f"MLP trained in {time.time() - t:.1f}s")
    t = time.time()
    cnn = train(cnn_init(np.random.default_rng(SEED_CNN)), cnn_loss_grad, xtr, ytr,
                seed=SEED_CNN, epochs=CNN_EPOCHS, lr=CNN_LR, weight_decay=CNN_WD, label="cnn")
    print(f"CNN trained in {time.time() - t:.1f}s")

    # ---- save float32 weights, PyTorch names/layouts ----
    mlp_path = os.path.join(CONFIG_DIR, "digits-mlp.safetensors")
    cnn_path = os.path.join(CONFIG_DIR, "digits-cnn.safetensors")
    save_safetensors(mlp_path, {k: ("F32", v) for k, v in mlp.items()}, metadata={"format": "pt"})
    cnn_tensors = {k: ("F32", v) for k, v in cnn.items()}
    # An unused extra such as torch state_dicts carry (BatchNorm's counter); loaders must skip it.
    cnn_tensors["head.num_batches_tracked"] = ("I64", np.array(0, dtype=np.int64))
    save_safetensors(cnn_path, cnn_tensors, metadata={"format": "pt"})

    # ---- evaluate with the reference pass over the weights as saved ----
    results = {}
    for name, path, forward in (("mlp", mlp_path, reference_mlp), ("cnn", cnn_path, reference_cnn)):
        tensors = {k: v.astype(np.float64) for k, v in load_safetensors(path).items()}
        logits = forward(tensors, xte)
        correct = int((logits.argmax(axis=1) == yte).sum())
        train_correct = int((forward(tensors, xtr).argmax(axis=1) == ytr).sum())
        results[name] = (correct, min_gap(logits))
        write_fixture(os.path.join(FIXTURE_DIR, f"{name}-test-expected.jsonl"), ids_te, logits, yte)
        print(f"{name}: test {acc_str(correct, len(yte))}, train {acc_str(train_correct, len(ytr))}, "
              f"min logit gap {min_gap(logits):.3g}, {os.path.getsize(path)} bytes")

    n = len(yte)
    with open(os.path.join(CONFIG_DIR, "digits-mlp.yaml"), "w", newline="\n") as f:
        f.write(MLP_YAML.format(acc=acc_str(results["mlp"][0], n)))
    with open(os.path.join(CONFIG_DIR, "digits-cnn.yaml"), "w", newline="\n") as f:
        f.write(CNN_YAML.format(acc=acc_str(results["cnn"][0], n)))
    with open(os.path.join(FIXTURE_DIR, "README.md"), "w", newline="\n") as f:
        f.write(README.format(n=n, mlp_acc=acc_str(results["mlp"][0], n), mlp_gap=results["mlp"][1],
                              cnn_acc=acc_str(results["cnn"][0], n), cnn_gap=results["cnn"][1]))
    print(f"done in {time.time() - t0:.1f}s")


# Hyper-parameters: fixed up front, not tuned on the test split.
MLP_EPOCHS, MLP_LR, MLP_WD = 100, 3e-3, 1e-4
CNN_EPOCHS, CNN_LR, CNN_WD = 60, 3e-3, 1e-4

if __name__ == "__main__":
    main()
