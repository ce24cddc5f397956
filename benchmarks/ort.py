"""ONNX Runtime as a user would run it: export a PyTorch module to ONNX, quantize it with ONNX Runtime's
own tools, and run it on the CPU with a fixed number of threads.

- `export_onnx`: `torch.onnx.export` with the TorchScript exporter (`dynamo=False`, opset 17), batch axis
  dynamic so one file serves every batch size.
- `quantize_static_qdq`: ONNX Runtime static int8 as its documentation prescribes — pre-processing
  (`quant_pre_process`: shape inference and graph optimization), then QDQ format, per-channel weights,
  uint8 activations, int8 weights, MinMax calibration on the samples given (the project's calibration samples).
  On AVX2 without VNNI ONNX Runtime's u8 x s8 kernels (`vpmaddubsw`) saturate int16 sums of two products,
  which costs accuracy wherever activations and weights are both large; its documentation's remedy is
  `reduce_range=True` (7-bit weights), offered here as an option.
- `quantize_dynamic_int8`: ONNX Runtime dynamic int8 (int8 weights, activations quantized at run time);
  the usual choice for transformers.
- `session`: an `InferenceSession` on the CPU provider with `threads` intra-op threads, one inter-op thread,
  sequential execution and all graph optimizations (QDQ fusion into QLinearConv/QLinearMatMul/…).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.timing import THREADS

OPSET = 17


def input_names(module, count: int) -> list[str]:
    """The forward() parameter names of `module` (ONNX graph input names), `input{i}` where unnamed."""
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = params[:count]
    return names + [f"input{i}" for i in range(len(names), count)]


def export_onnx(module, example_inputs: Sequence, path) -> Path:
    """Export `module` at `example_inputs` to `path` (ONNX, opset 17, dynamic batch axis); returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(module, len(example_inputs))
    axes = {n: {0: "batch"} for n in names + ["output"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, tuple(example_inputs), str(path), dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=["output"], dynamic_axes=axes)
    return path


class _Samples:
    """ONNX Runtime's CalibrationDataReader over a list of input tuples (torch tensors or arrays)."""

    def __init__(self, names: list[str], samples: Sequence[Sequence]):
        self._feeds = [{n: np.asarray(a) for n, a in zip(names, sample)} for sample in samples]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs advice through the root logger; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def preprocess(fp32_path, out_path) -> Path:
    """ONNX Runtime's quantization pre-processing (symbolic shape inference, graph optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with _quiet_quantizer():
        quant_pre_process(str(fp32_path), str(out_path))
    return out_path


def quantize_static_qdq(fp32_path, out_path, calibration: Sequence[Sequence], reduce_range: bool = False) -> Path:
    """Static int8 (QDQ, per-channel s8 weights, u8 activations, MinMax) calibrated on `calibration`;
    `reduce_range`: weights in 7 bits (no int16 saturation in AVX2's u8 x s8 kernels)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static quantization needs at least one calibration sample")
    out_path = Path(out_path)
    prepared = preprocess(fp32_path, out_path.with_name(out_path.stem + "_prep.onnx"))
    names = [i.name for i in onnx.load(str(prepared)).graph.input]
    with _quiet_quantizer():
        quantize_static(str(prepared), str(out_path), _Samples(names, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
    return out_path


def quantize_dynamic_int8(fp32_path, out_path) -> Path:
    """Dynamic int8: weights int8 (per tensor), activations quantized per call (ONNX Runtime's default)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    prepared = preprocess(fp32_path, out_path.with_name(out_path.stem + "_prep.onnx"))
    with _quiet_quantizer():
        quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8)
    return out_path


def session(model, threads: int = THREADS, optimized_path=None):
    """CPU `InferenceSession` of `model` (a path or serialized bytes) with `threads` intra-op threads.

    `optimized_path`: where ONNX Runtime writes the graph it actually runs (after fusions), for inspection.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    source = str(model) if isinstance(model, (str, Path)) else model
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def op_types(path) -> list[str]:
    """The node op types of an ONNX file, in graph order."""
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]
