#!/usr/bin/env python3
"""Build the ONNX model equivalent to a subpass pipeline file, for the peer comparison.

    onnx_from_pipeline.py PIPELINE.yaml WEIGHTS.safetensors OUT.onnx

PIPELINE.yaml is read for its `input`, `layers` and `outputs` only: stages, batching and output
formatting are subpass's business and have no ONNX counterpart. WEIGHTS.safetensors is what
`subpass export PIPELINE WEIGHTS.safetensors` writes: every parameter as F32 under its full
name (`<params>.weight`, `<params>.bias`, ...), so the ONNX model computes with exactly the
numbers subpass uses, whether the pipeline took them from `weights:` or from a seeded `init:`.

The graph follows the pipeline file's rules:
  * a layer reads the previous layer by default (the first layer reads `input`);
  * `params:` names the tensor prefix, by default the layer name;
  * the model outputs are `outputs:`, by default the last layer;
  * tensors are per record in the file; ONNX gets a leading dynamic batch axis `N`,
    which is why a record `concat` axis becomes axis + 1 here.

Opset 17 (LayerNormalization is standard from 17 on). Only float32.
"""

import argparse
import json
import struct
import sys

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
LEAKY_SLOPE = 0.01  # subpass's leaky_relu slope (PyTorch's default)

# ---------------------------------------------------------------------------------------------
# safetensors: a tiny reader (8-byte LE header length, JSON header, raw little-endian data).
# `subpass export` writes F32 only; F16/F64 are accepted and widened/narrowed to float32 so a
# hand-made file works too.
# ---------------------------------------------------------------------------------------------
_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def read_safetensors(path):
    """Return {name: float32 ndarray} for every tensor in the file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}; only F32/F16/F64 read")
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        out[name] = array.astype(np.float32)  # copy: owns its memory, native order
    return out


# ---------------------------------------------------------------------------------------------
# Pipeline file helpers
# ---------------------------------------------------------------------------------------------
def pair(value, default):
    """An attribute given as an integer or [h, w] (subpass accepts both)."""
    if value is None:
        return list(default)
    if isinstance(value, int):
        return [value, value]
    if len(value) != 2:
        raise SystemExit(f"expected an integer or [h, w], found {value!r}")
    return [int(v) for v in value]


class Builder:
    """Accumulates ONNX nodes and initializers; value names are the pipeline's layer names."""

    def __init__(self, weights):
        self.weights = weights
        self.used = set()
        self.nodes = []
        self.initializers = []

    def param(self, prefix, name, transform=None):
        """Add tensor `<prefix>.<name>` as an initializer and return its ONNX name."""
        key = f"{prefix}.{name}"
        if key not in self.weights:
            raise SystemExit(f"weights file has no tensor {key!r}")
        self.used.add(key)
        array = self.weights[key]
        onnx_name = key
        if transform is not None:
            array = transform(array)
            onnx_name = key + ".T"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), onnx_name))
        return onnx_name

    def has_param(self, prefix, name):
        return f"{prefix}.{name}" in self.weights

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def activation(self, act, x, output):
        """Elementwise activation (softmax: over the last axis), as subpass applies it."""
        act = act or "identity"
        if act in ("identity", "none", "linear", "dropout"):
            return self.node("Identity", [x], output)
        if act == "relu":
            return self.node("Relu", [x], output)
        if act == "leaky_relu":
            return self.node("LeakyRelu", [x], output, alpha=LEAKY_SLOPE)
        if act == "sigmoid":
            return self.node("Sigmoid", [x], output)
        if act == "tanh":
            return self.node("Tanh", [x], output)
        if act == "softmax":
            return self.node("Softmax", [x], output, axis=-1)
        if act == "gelu":
            # Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)): the opset-17 way (Gelu is opset 20).
            # Constants are scalar initializers that broadcast.
            self._const(f"{output}/inv_sqrt2", np.float32(1.0 / np.sqrt(2.0)))
            self._const(f"{output}/one", np.float32(1.0))
            self._const(f"{output}/half", np.float32(0.5))
            scaled = self.node("Mul", [x, f"{output}/inv_sqrt2"], f"{output}/scaled")
            erf = self.node("Erf", [scaled], f"{output}/erf")
            plus = self.node("Add", [erf, f"{output}/one"], f"{output}/plus1")
            half = self.node("Mul", [x, f"{output}/half"], f"{output}/halfx")
            return self.node("Mul", [half, plus], output)
        raise SystemExit(f"unsupported activation {act!r}")

    def _const(self, name, value):
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))


def build_model(pipeline, weights):
    """Return an onnx.ModelProto computing `pipeline` (a parsed YAML dict) with `weights`."""
    input_shape = [int(d) for d in pipeline["input"]["shape"]]
    # Record rank of every value: decides Gemm (rank-1 records) versus MatMul for dense.
    rank = {"input": len(input_shape)}
    b = Builder(weights)
    previous = "input"

    for i, layer in enumerate(pipeline["layers"]):
        name = layer["name"]
        op = layer["op"]
        inputs = layer.get("inputs") or [previous]
        prefix = layer.get("params", name)
        x = inputs[0]
        # Layers with an `activation:` write their pre-activation value under `<name>/pre`.
        act = layer.get("activation", "identity")
        pre = name if act in (None, "identity", "none") else f"{name}/pre"

        if op in ("dense", "linear"):
            bias = layer.get("bias", True)
            if rank[x] == 1:
                # [N, in] x [out, in]^T: Gemm's transB takes PyTorch's layout as is.
                args = [x, b.param(prefix, "weight")] + ([b.param(prefix, "bias")] if bias else [])
                b.node("Gemm", args, pre, transB=1)
            else:
                # Dense on the last axis of a higher-rank record: MatMul with W^T, then Add.
                w_t = b.param(prefix, "weight", transform=lambda w: w.T)
                if bias:
                    b.node("MatMul", [x, w_t], f"{name}/matmul")
                    b.node("Add", [f"{name}/matmul", b.param(prefix, "bias")], pre)
                else:
                    b.node("MatMul", [x, w_t], pre)
            rank[name] = rank[x]
            if pre != name:
                b.activation(act, pre, name)
        elif op == "conv2d":
            kernel = pair(layer["kernel"], None)
            ph, pw = pair(layer.get("padding"), [0, 0])
            args = [x, b.param(prefix, "weight")]
            if layer.get("bias", True):
                args.append(b.param(prefix, "bias"))
            b.node(
                "Conv",
                args,
                pre,
                kernel_shape=kernel,
                strides=pair(layer.get("stride"), [1, 1]),
                pads=[ph, pw, ph, pw],
                dilations=pair(layer.get("dilation"), [1, 1]),
                group=int(layer.get("groups", 1)),
            )
            rank[name] = 3
            if pre != name:
                b.activation(act, pre, name)
        elif op in ("maxpool2d", "avgpool2d"):
            # Floor mode: ONNX's default (ceil_mode=0) matches subpass. Padding is -inf for
            # MaxPool; AveragePool must count it in the divisor, as subpass (and PyTorch) do.
            kernel = pair(layer["kernel"], None)
            stride = pair(layer.get("stride"), kernel)
            ph, pw = pair(layer.get("padding"), [0, 0])
            extra = {} if op == "maxpool2d" else {"count_include_pad": 1}
            onnx_op = "MaxPool" if op == "maxpool2d" else "AveragePool"
            b.node(onnx_op, [x], name, kernel_shape=kernel, strides=stride,
                   pads=[ph, pw, ph, pw], **extra)
            rank[name] = 3
        elif op == "global_avgpool2d":
            # subpass yields [C]; ONNX yields [N, C, 1, 1], so flatten after.
            b.node("GlobalAveragePool", [x], f"{name}/pool")
            b.node("Flatten", [f"{name}/pool"], name, axis=1)
            rank[name] = 1
        elif op == "flatten":
            b.node("Flatten", [x], name, axis=1)
            rank[name] = 1
        elif op == "concat":
            # Record axis -> tensor axis: the batch axis comes first.
            b.node("Concat", inputs, name, axis=int(layer.get("axis", 0)) + 1)
            rank[name] = rank[x]
        elif op == "add":
            if len(inputs) == 2:
                b.node("Add", inputs, name)
            else:
                b.node("Sum", inputs, name)
            rank[name] = rank[x]
        elif op == "layernorm":
            args = [x, b.param(prefix, "weight"), b.param(prefix, "bias")]
            b.node("LayerNormalization", args, name, axis=-1, epsilon=float(layer.get("eps", 1e-5)))
            rank[name] = rank[x]
        elif op == "batchnorm":
            args = [x] + [b.param(prefix, p) for p in ("weight", "bias", "running_mean", "running_var")]
            b.node("BatchNormalization", args, name, epsilon=float(layer.get("eps", 1e-5)))
            rank[name] = rank[x]
        elif op in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax", "identity",
                    "dropout", "none"):
            b.activation(op, x, name)
            rank[name] = rank[x]
        else:
            raise SystemExit(f"layers[{i}] ({name}): op {op!r} is not supported by this converter")
        previous = name

    outputs = pipeline.get("outputs") or [previous]
    unused = sorted(set(weights) - b.used)
    if unused:
        # Not fatal (a weights file may hold more than the model reads), but worth knowing.
        print(f"note: {len(unused)} tensor(s) in the weights file unused: {unused[:5]}", file=sys.stderr)

    graph = helper.make_graph(
        b.nodes,
        pipeline.get("name", "subpass"),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N"] + input_shape)],
        # Output shapes are filled in by shape inference below.
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="subpass benches/peers/onnx_from_pipeline.py",
    )
    # The checker wants typed outputs: take them from ONNX's own shape inference.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in inferred.graph.value_info}
    for out in model.graph.output:
        out.CopyFrom(known[out.name])
    # Keep the IR version at what the installed onnxruntime surely reads.
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(pipeline_path, weights_path, out_path):
    """Read the pipeline and weights, write the ONNX model to `out_path`, and return it."""
    with open(pipeline_path) as f:
        pipeline = yaml.safe_load(f)
    model = build_model(pipeline, read_safetensors(weights_path))
    onnx.save(model, out_path)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="subpass pipeline YAML")
    parser.add_argument("weights", help="safetensors from `subpass export`")
    parser.add_argument("out", help="ONNX file to write")
    args = parser.parse_args()
    model = convert(args.pipeline, args.weights, args.out)
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"wrote {args.out}: {len(model.graph.node)} nodes ({', '.join(ops)}), opset {OPSET}")


if __name__ == "__main__":
    main()
