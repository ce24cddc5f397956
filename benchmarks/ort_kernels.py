"""One layer workload (`tvm_mpq.graph.Workload`) as a single-op ONNX graph, timed with ONNX Runtime.

The peer of one TVM layer task (`tvm_mpq.measure.tasks`): the same shapes, strides, padding, dilation,
groups and bias, at

- ``"fp32"``: `Conv` / `Gemm` (linear, weight [out, in] with `transB=1`) / `MatMul` (two activations);
- ``"int8"``: the QDQ form ONNX Runtime's static quantizer emits and its graph optimizer fuses into one
  integer kernel: uint8 activation input(s) (zero point 128) → `DequantizeLinear` → op with int8 weights
  per output channel (and int32 bias) behind `DequantizeLinear` → `QuantizeLinear` → uint8 output. ONNX
  Runtime runs it as `QLinearConv` / `QGemm` / `QLinearMatMul`, the kernels a statically quantized model
  runs; `ort_fused_ops` says which ops it actually ran.

Like the TVM task, the int8 graph takes its input already quantized, so neither side pays for quantizing
the layer's input. The int8 output is uint8 (the next layer's input in a quantized model), where the TVM
task's requantize epilogue writes float32.

ONNX Runtime converts layouts around a lone conv (`ReorderInput`/`ReorderOutput` to its blocked fp32
layout, `Transpose` to NHWC for `QLinearConv`); inside a model those conversions are shared by consecutive
convs, here each timing includes them (`ort_fused_ops` lists them). For small convs they are a visible part.

A linear layer's leading input axes are flattened ([1, 128, 384] → [128, 384]: the same GEMM), since
`Gemm` takes 2-D operands. Weights and inputs are seeded random numbers; latency does not depend on them.

Timing: one session per (workload, precision), `threads` intra-op threads, inputs and outputs bound once
(`IOBinding`, so Python's per-call overhead stays out of microsecond kernels), warm-up, then `repeat`
repeats of as many calls as fill `min_repeat_ms`; median, IQR, min and max of the per-call means
(`tvm_mpq.build.LatencyStats`).

    from benchmarks.ort_kernels import ort_workload_latency
    stats = ort_workload_latency(layer.workload, "int8")   # LatencyStats; stats.median_ms
"""

from __future__ import annotations

import tempfile
from math import prod
from pathlib import Path

import numpy as np

from benchmarks import ort
from benchmarks.timing import THREADS, time_callable

PRECISIONS = ("fp32", "int8")
_ACT_SCALE, _ACT_ZP, _OUT_SCALE = 0.02, 128, 0.05


def _precision(precision: str) -> str:
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: ONNX Runtime peers exist for {', '.join(PRECISIONS)}")
    return p


def _operand_shapes(wl) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(input shape, weight / second operand shape, output shape) of the ONNX graph."""
    if wl.op == "linear":
        m = prod(wl.input_shape[:-1])
        return (m, wl.input_shape[-1]), tuple(wl.weight_shape), (m, wl.weight_shape[0])
    return tuple(wl.input_shape), tuple(wl.weight_shape), tuple(wl.output_shape)


def workload_model(workload, precision: str, seed: int = 0):
    """The single-op `onnx.ModelProto` of `workload` at `precision` ("fp32" or "int8")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    precision = _precision(precision)
    wl = workload
    if wl.op not in ("conv2d", "linear", "matmul"):
        raise ValueError(f"workload op {wl.op!r}: expected conv2d, linear or matmul")
    rng = np.random.default_rng(seed)
    x_shape, w_shape, y_shape = _operand_shapes(wl)
    n_out = w_shape[0]
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op_node(op, inputs, output):
        if op == "conv2d":
            top, left, bottom, right = wl.padding or (0, 0, 0, 0)
            return helper.make_node("Conv", inputs, [output], strides=list(wl.strides or (1, 1)),
                                    pads=[top, left, bottom, right], dilations=list(wl.dilation or (1, 1)),
                                    group=wl.groups, kernel_shape=list(w_shape[2:]))
        if op == "linear":
            return helper.make_node("Gemm", inputs, [output], transB=1)
        return helper.make_node("MatMul", inputs, [output])

    elem = TensorProto.FLOAT if precision == "fp32" else TensorProto.UINT8
    graph_inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    if wl.op == "matmul":
        graph_inputs.append(helper.make_tensor_value_info("b", elem, w_shape))
    y_info = helper.make_tensor_value_info("y", elem, y_shape)

    weight = rng.normal(size=w_shape).astype(np.float32) if wl.op != "matmul" else None
    bias = rng.normal(size=n_out).astype(np.float32) if wl.has_bias and wl.op != "matmul" else None
    if precision == "fp32":
        inputs = ["x", "b"] if wl.op == "matmul" else ["x", const("w", weight)]
        if bias is not None:
            inputs.append(const("bias", bias))
        nodes.append(op_node(wl.op, inputs, "y"))
    else:
        act_scale, act_zp = const("act_scale", np.float32(_ACT_SCALE)), const("act_zp", np.uint8(_ACT_ZP))
        nodes.append(helper.make_node("DequantizeLinear", ["x", act_scale, act_zp], ["x_f"]))
        inputs = ["x_f"]
        if wl.op == "matmul":
            nodes.append(helper.make_node("DequantizeLinear", ["b", act_scale, act_zp], ["b_f"]))
            inputs.append("b_f")
        else:  # symmetric int8 per output channel (axis 0 of both the conv and the [out, in] linear weight)
            axes = tuple(range(1, weight.ndim))
            w_scale = (np.abs(weight).max(axis=axes) / 127.0).astype(np.float32)
            w_q = np.clip(np.round(weight / w_scale.reshape((-1,) + (1,) * len(axes))), -127, 127).astype(np.int8)
            nodes.append(helper.make_node(
                "DequantizeLinear", [const("w_q", w_q), const("w_scale", w_scale),
                                     const("w_zp", np.zeros(n_out, np.int8))], ["w_f"], axis=0))
            inputs.append("w_f")
            if bias is not None:
                b_scale = (w_scale * _ACT_SCALE).astype(np.float32)
                b_q = np.round(bias / b_scale).astype(np.int32)
                nodes.append(helper.make_node(
                    "DequantizeLinear", [const("bias_q", b_q), const("bias_scale", b_scale),
                                         const("bias_zp", np.zeros(n_out, np.int32))], ["bias_f"], axis=0))
                inputs.append("bias_f")
        nodes.append(op_node(wl.op, inputs, "y_f"))
        nodes.append(helper.make_node("QuantizeLinear", ["y_f", const("out_scale", np.float32(_OUT_SCALE)),
                                                         const("out_zp", np.uint8(_ACT_ZP))], ["y"]))
    graph = helper.make_graph(nodes, f"{wl.op}_{precision}", graph_inputs, [y_info], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def workload_inputs(workload, precision: str, seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded random feeds of the workload's graph: float32 normal, or uint8 uniform over [0, 255]."""
    precision = _precision(precision)
    rng = np.random.default_rng(seed)
    x_shape, w_shape, _ = _operand_shapes(workload)
    shapes = {"x": x_shape, **({"b": w_shape} if workload.op == "matmul" else {})}
    if precision == "fp32":
        return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    return {k: rng.integers(0, 256, size=s, dtype=np.uint8) for k, s in shapes.items()}


def _session(workload, precision: str, threads: int, optimized_path=None):
    return ort.session(workload_model(workload, precision).SerializeToString(), threads, optimized_path)


def ort_fused_ops(workload, precision: str, threads: int = THREADS) -> list[str]:
    """The op types ONNX Runtime runs for the workload's graph after its optimizations (e.g. ["QLinearConv"])."""
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_ort_") as tmp:
        path = Path(tmp) / "optimized.onnx"
        _session(workload, precision, threads, path)
        return ort.op_types(path)


def ort_workload_latency(workload, precision: str, *, threads: int = THREADS, repeat: int = 20, warmup: int = 5,
                         min_repeat_ms: float = 10.0):
    """ONNX Runtime's latency for one `Workload` at `precision` ("fp32" or "int8"): a `LatencyStats` (ms per call).

    The graph and the timing protocol are described in this module's docstring.
    """
    import onnxruntime

    sess = _session(workload, precision, threads)
    binding = sess.io_binding()
    for name, array in workload_inputs(workload, precision).items():
        binding.bind_ortvalue_input(name, onnxruntime.OrtValue.ortvalue_from_numpy(array))
    binding.bind_output("y")
    sess.run_with_iobinding(binding)  # allocates the output once; later calls reuse it
    out = binding.get_outputs()[0]
    binding.clear_binding_outputs()
    binding.bind_ortvalue_output("y", out)
    return time_callable(lambda: sess.run_with_iobinding(binding), repeat=repeat, warmup=warmup,
                         min_repeat_ms=min_repeat_ms)
