#!/usr/bin/env python3
"""ONNX Runtime on the convolution shapes of benches/conv.rs, one layer at a time, one thread.

    python3 benches/peers/ort_convs.py

Each shape is a one-node model (Conv + Relu, as the bench's `auto` layer) run by ONNX Runtime's
CPU provider with one intra-op thread, sequential execution and all graph optimisations (the
session options race.py uses). Time is the process's CPU time (getrusage), as benches/conv.rs
counts its thread's, so the figures compare on a shared machine; median of 5 repeats. Prints
effective GFLOP/s (direct-convolution FLOPs per CPU second) per shape and batch, markdown.
"""

import resource
import statistics

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# (name, [c, h, w], filters, kernel, stride, padding, batches): as benches/conv.rs.
SHAPES = [
    ("resnet_conv1_7x7s2_3to64_224", [3, 224, 224], 64, 7, 2, 3, [1, 8]),
    ("resnet_3x3_64to64_56", [64, 56, 56], 64, 3, 1, 1, [1, 8]),
    ("resnet_3x3s2_64to128_56", [64, 56, 56], 128, 3, 2, 1, [1, 8]),
    ("resnet_1x1s2_64to128_56", [64, 56, 56], 128, 1, 2, 0, [1, 8]),
    ("resnet_3x3_128to128_28", [128, 28, 28], 128, 3, 1, 1, [1, 8]),
    ("resnet_3x3s2_128to256_28", [128, 28, 28], 256, 3, 2, 1, [1, 8]),
    ("resnet_1x1s2_128to256_28", [128, 28, 28], 256, 1, 2, 0, [1, 8]),
    ("resnet_3x3_256to256_14", [256, 14, 14], 256, 3, 1, 1, [1, 8]),
    ("resnet_3x3s2_256to512_14", [256, 14, 14], 512, 3, 2, 1, [1, 8]),
    ("resnet_1x1s2_256to512_14", [256, 14, 14], 512, 1, 2, 0, [1, 8]),
    ("resnet_3x3_512to512_7", [512, 7, 7], 512, 3, 1, 1, [1, 8]),
    ("cnn_3x3_1to16_28", [1, 28, 28], 16, 3, 1, 1, [1, 64]),
    ("cnn_5x5_1to16_28", [1, 28, 28], 16, 5, 1, 2, [1, 64]),
    ("cnn_3x3_16to32_14", [16, 14, 14], 32, 3, 1, 1, [1, 64]),
]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def session(c, hw, f, k, s, p, n):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((f, c, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y0"], kernel_shape=[k, k], strides=[s, s],
                         pads=[p] * 4),
        helper.make_node("Relu", ["y0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def main():
    print(f"ONNX Runtime {ort.__version__}, 1 thread, CPU time, GFLOP/s (direct-conv FLOPs)\n")
    print("| shape | batch | ONNX Runtime |")
    print("| --- | ---: | ---: |")
    for name, (c, hw, _), f, k, s, p, batches in SHAPES:
        for n in batches:
            sess = session(c, hw, f, k, s, p, n)
            x = np.random.default_rng(2).random((n, c, hw, hw), dtype=np.float32)
            out = (hw + 2 * p - k) // s + 1
            flops = 2 * c * k * k * f * out * out * n
            # Enough runs for ~0.3 s of work per repeat at 100 GFLOP/s.
            runs = max(3, int(0.3 * 100e9 / flops))
            for _ in range(3):
                sess.run(None, {"x": x})
            times = []
            for _ in range(5):
                t = cpu_seconds()
                for _ in range(runs):
                    sess.run(None, {"x": x})
                times.append((cpu_seconds() - t) / runs)
            print(f"| {name} | {n} | {flops / statistics.median(times) / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
