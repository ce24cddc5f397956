"""What to measure for a model on a profile, and the one-op Relax modules that measure it.

A *layer task* is one distinct workload at one candidate: a module whose input is already in the
candidate's activation dtype, running the integer kernel and its requantize epilogue (bias included),
built by `emit_layer`, the code the compile path runs. A *convert task* is the standalone quantize of
a float activation into a candidate's integer dtype (what a precision change costs where it cannot
fuse into the producer). FP32 tasks are the float op as the frontend emits it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..graph import Layer, LayerGraph, Workload
from ..numerics import ActEncoding, Candidate, get_candidate

LAYER, CONVERT = "layer", "convert"


@dataclass(frozen=True)
class Task:
    kind: str  # "layer" | "convert"
    workload: str  # Workload.key() for layers; convert_key() for converts
    candidate: str  # layer: candidate name; convert: "FP32->A8" / "FP32->A16"
    op: str  # conv2d | linear | matmul | quantize
    macs: int = 0

    def describe(self) -> str:
        if self.kind == CONVERT:
            spec = json.loads(self.workload)
            return f"quantize {tuple(spec['shape'])} → {self.candidate.split('->')[1]}"
        wl = json.loads(self.workload)
        extra = f" g{wl['groups']}" if wl.get("groups", 1) > 1 else ""
        return f"{self.op} {tuple(wl['input_shape'])}×{tuple(wl['weight_shape'])}{extra} {self.candidate}"


def convert_key(shape, act_bits: int) -> str:
    return json.dumps({"op": "quantize", "shape": list(shape), "bits": act_bits}, separators=(",", ":"))


def workload_from_key(key: str) -> Workload:
    data = json.loads(key)
    return Workload(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def layer_macs(wl: Workload) -> int:
    return wl.macs


def model_tasks(graph: LayerGraph, profile) -> list[Task]:
    """Every distinct (workload, candidate) the profile allows, then every distinct convert, in graph order."""
    tasks, seen = [], set()
    for layer in graph.layers.values():
        for cand in profile.candidates_for(layer.op_type):
            task = Task(LAYER, layer.workload.key(), cand.name, layer.op_type, layer.macs)
            if (task.workload, task.candidate) not in seen:
                seen.add((task.workload, task.candidate))
                tasks.append(task)
    for layer in graph.layers.values():
        bits = sorted({c.act_bits for c in profile.candidates_for(layer.op_type) if c.is_quantized})
        shapes = [layer.workload.input_shape] + ([layer.workload.weight_shape] if layer.op_type == "matmul" else [])
        for shape in shapes:
            for b in bits:
                task = Task(CONVERT, convert_key(shape, b), f"FP32->A{b}", "quantize")
                if (task.workload, task.candidate) not in seen:
                    seen.add((task.workload, task.candidate))
                    tasks.append(task)
    return tasks


def _encoding(bits: int) -> ActEncoding:
    return ActEncoding(scale=0.02, zero_point=128 if bits == 8 else 0, bits=bits)


def build_task_module(task: Task, seed: int = 0, kernels: str = "generic"):
    """(Relax IRModule with a `main` function, list of NumPy inputs) for one task, on the kernel library
    the compiled model uses (`tvm_mpq.kernels.kernel_library` of the target)."""
    from tvm import relax

    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    if task.kind == CONVERT:
        spec = json.loads(task.workload)
        x = relax.Var("x", relax.TensorType(tuple(spec["shape"]), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                from ..transform.quantize_mixed_precision import emit_quantize

                out = bb.emit_output(emit_quantize(bb, x, _encoding(spec["bits"])))
            bb.emit_func_output(out)
        return bb.get(), [rng.normal(size=spec["shape"]).astype(np.float32)]

    wl = workload_from_key(task.workload)
    cand = get_candidate(task.candidate)
    shapes = [wl.input_shape] + ([wl.weight_shape] if wl.op == "matmul" else [])
    encs = tuple(_encoding(cand.act_bits) for _ in shapes) if cand.is_quantized else ()
    dtypes = [e.dtype for e in encs] if cand.is_quantized else ["float32"] * len(shapes)
    params = [relax.Var(f"x{i}", relax.TensorType(s, d)) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    weight = rng.normal(size=wl.weight_shape).astype(np.float32) if wl.op != "matmul" else None
    layer = Layer("layer", wl.op, "", wl, layer_macs(wl))
    with bb.function("main", params):
        with bb.dataflow():
            y = _emit(bb, layer, cand, params, weight, encs, kernels)
            if wl.has_bias:
                n_out = wl.weight_shape[0]
                bias = relax.const(rng.normal(size=n_out).astype(np.float32))
                if wl.op == "conv2d":
                    bias = relax.op.reshape(bias, (1, -1, 1, 1))
                y = bb.emit(relax.op.add(y, bias))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    inputs = []
    for shape, dtype, enc in zip(shapes, dtypes, encs or [None] * len(shapes)):
        if enc is None:
            inputs.append(rng.normal(size=shape).astype(np.float32))
        else:
            inputs.append(rng.integers(enc.qmin, enc.qmax + 1, size=shape).astype(dtype))
    return bb.get(), inputs


def _emit(bb, layer: Layer, cand: Candidate, params, weight, encs, kernels: str):
    from tvm import relax

    from ..transform.quantize_mixed_precision import _fast_float32, emit_layer

    if cand.is_quantized or cand.float_dtype != "float32" or _fast_float32(layer, cand, kernels):
        return emit_layer(bb, layer, cand, params, weight, encs, inputs_quantized=True, kernels=kernels)
    wl = layer.workload  # FP32: the float op exactly as the frontend emits it
    if wl.op == "conv2d":
        return bb.emit(relax.op.nn.conv2d(params[0], relax.const(weight), strides=wl.strides, padding=wl.padding,
                                          dilation=wl.dilation, groups=wl.groups, out_dtype="float32"))
    if wl.op == "linear":
        w_t = bb.emit(relax.op.permute_dims(relax.const(weight)))
        return bb.emit(relax.op.matmul(params[0], w_t, out_dtype="float32"))
    return bb.emit(relax.op.matmul(params[0], params[1], out_dtype="float32"))
