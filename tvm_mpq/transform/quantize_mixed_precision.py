"""QuantizeMixedPrecision: lower each named layer of a float Relax module to its planned precision.

Input: the float IRModule from `frontend.to_relax`, where every quantizable layer is one binding named
after the layer (conv2d(x, W), matmul(x, W^T) or matmul(a, b)). For each layer the plan quantizes:

    x_q  = astype(clip(round(x / s_x) + z_x, qmin, qmax), uint8|int16)        # convert op
    acc  = qconv2d / qdense / qbatch_matmul(x_q, W_q [int8, or int4 packed in uint8])  # int32/int64
    y    = astype(acc, float32) * (s_x * s_w[o]) - c[o]                          # requantize epilogue
                                    (c: the plan's bias correction, `numerics.bias_correction`)

The bias add, activation and the next layer's quantize that follow are elementwise, so FuseOps merges
them into the integer kernel's epilogue (generic kernels) or into one elementwise kernel after it.

Kernel libraries (`kernels`): "generic" emits the target-independent TE computes of
`tvm_mpq.kernels.quantized`; "x86_avx2" (and "x86_avx512", the same kernels on 512-bit vectors, and
"x86_avx512_vnni", which adds the VNNI u8 x s8 GEMM for 1x1 convs and dense layers, with 8-bit activations
and with 16-bit ones split in two byte planes) emits the packed GEMM / depthwise kernels of
`tvm_mpq.kernels.x86_avx2` for 8-bit activations and for FP32 layers (which "generic" leaves to TVM's own
operators), and falls back to "generic" for what they do not cover (other 16-bit activation layers,
grouped non-depthwise convs). "cuda" is "generic" except for W8A8 dense layers and convs without groups:
inside the kernel their uint8 activation becomes int8 (x - 128, zero point zp - 128), the reduction leaves
the zero point out (``acc += x * w``: int8 x int8 -> int32, what int8 tensor cores and ``dp4a`` compute),
and ``(zp - 128) * sum(w)`` per output channel is subtracted after it (`kernels.quantized.zero_point_offsets`).
Layers at FP16 cast their operands to float16 and accumulate in float32; FP32 layers are left untouched.
Weights are quantized with `numerics`, exactly as the simulator quantizes them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .. import numerics, smoothing
from ..graph import Layer, LayerGraph
from ..kernels import LIBRARY_LANES
from ..kernels.quantized import qbatch_matmul, qconv2d_nchw, qdense, zero_point_offsets
from ..numerics import ActEncoding, Candidate
from ..plan import Plan
from . import x86_avx2_lowering as avx2


def _sanitize(name: str) -> str:
    return name.replace(".", "_")


@tvm.transform.module_pass(opt_level=0, name="QuantizeMixedPrecision")
class QuantizeMixedPrecision:
    """Rewrite layers to the precisions of a resolved plan (see `plan.resolve`)."""

    def __init__(self, plan: Plan, graph: LayerGraph, weights: Mapping[str, np.ndarray],
                 kernels: str = "generic"):
        if kernels not in KERNEL_LIBRARIES:
            raise ValueError(f"unknown kernel library {kernels!r}; allowed: {', '.join(KERNEL_LIBRARIES)}")
        self.plan = plan
        self.graph = graph
        self.weights = weights  # layer name → float32 weight (BatchNorm folded), as the simulator uses
        self.encodings = plan.encodings()
        self.corrections = plan.corrections()
        self.kernels = kernels

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        targets = {}
        for index, (name, layer) in enumerate(self.graph.layers.items()):
            c = self.plan.candidate(name)
            if c.is_quantized or c.float_dtype != "float32" or _fast_float32(layer, c, self.kernels):
                targets[name] = (layer, c, layer_tag(index))
        rewriter = _Rewriter(mod, targets, self.weights, self.encodings, self.kernels, self.corrections)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        missing = set(targets) - rewriter.done
        if missing:
            raise ValueError(
                f"QuantizeMixedPrecision: layers not found in the module: {sorted(missing)[:10]} "
                "(was the module produced by tvm_mpq.frontend.to_relax?)"
            )
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, targets, weights, encodings, kernels, corrections=None):
        super().__init__(mod)
        self.kernels = kernels
        self.corrections = corrections or {}
        self.targets = {}
        for name, value in targets.items():
            self.targets[name] = value
            self.targets[_sanitize(name)] = value
        self.weights = weights
        self.encodings = encodings
        self.done: set[str] = set()

    def visit_var_binding_(self, binding: relax.VarBinding):
        hit = self.targets.get(binding.var.name)
        if hit is None or not isinstance(binding.value, relax.Call):
            return super().visit_var_binding_(binding)
        layer, cand, tag = hit
        args = [self.visit_expr(a) for a in binding.value.args]
        if self.kernels in PACKED_CPU_LIBRARIES and layer.op_type == "conv2d":
            args[0], layer = self._fold_zero_pad(args[0], layer)
        new = emit_layer(self.builder_, layer, cand, args, self.weights.get(layer.name),
                         self.encodings.get(layer.name, ()), kernels=self.kernels, tag=tag,
                         correction=self.corrections.get(layer.name))
        if not isinstance(binding.var, relax.DataflowVar):
            new = self.builder_.emit_output(new)
        self.set_var_remap(binding.var, new)
        self.done.add(layer.name)

    def _fold_zero_pad(self, x, layer: Layer):
        """A zero `nn.pad` of H, W in front of a conv becomes the conv's own padding (the AVX2 kernels pad
        in their packing, so no padded tensor is written). Exact after quantization too: 0.0 quantizes to
        the zero point, which is what the kernels pad with. The pad itself is left to dead-code removal."""
        value = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.nn.pad")):
            return x, layer
        attrs = value.attrs
        pw = [int(v) for v in attrs.pad_width]
        if str(attrs.pad_mode) != "constant" or float(attrs.pad_value) != 0.0 or len(pw) != 8 or any(pw[:4]):
            return x, layer
        src = value.args[0]
        wl = layer.workload
        pt, pl, pb, pr = wl.padding
        folded = dataclasses.replace(
            wl, input_shape=tuple(int(v) for v in src.ty.shape),
            padding=(pt + pw[4], pl + pw[6], pb + pw[5], pr + pw[7]))
        if not avx2.supports(folded, "float32"):
            return x, layer
        return src, dataclasses.replace(layer, workload=folded)


# ---------------------------------------------------------------------- lowering of one layer
# Shared by the pass and by kernel measurement (tvm_mpq.measure), so a measured layer is exactly
# the code the compiled model runs.


def emit_quantize(bb: relax.BlockBuilder, x, enc: ActEncoding, channel_shape=None):
    """x (float32) → clip(round(x × (1 / scale)) + zero_point) in the encoding's integer dtype; with
    smoothing factors s, x × float32((1 / scale) / s) along the channel axis (`channel_shape`: how the per-channel
    vector broadcasts against x, e.g. (1, -1, 1, 1) for NCHW), one float32 multiply as the simulator does."""
    if enc.channel_scale is None:
        y = relax.op.multiply(x, relax.const(np.float32(enc.inv_scale), "float32"))
    else:
        if channel_shape is None:
            raise ValueError("a smoothed activation encoding needs the channel axis of its tensor")
        y = relax.op.multiply(x, relax.const(enc.multiplier().reshape(channel_shape)))
    y = relax.op.add(relax.op.round(y), relax.const(np.float32(enc.zero_point), "float32"))
    y = relax.op.clip(y, float(enc.qmin), float(enc.qmax))
    return bb.emit(relax.op.astype(y, enc.dtype))


KERNEL_LIBRARIES = ("generic", "x86_avx2", "x86_avx512", "x86_avx512_vnni", "cuda")
# the libraries of the packed x86 kernels (`tvm_mpq.kernels.x86_avx2`), by their vector lanes
PACKED_CPU_LIBRARIES = LIBRARY_LANES

# Kernel functions of layer i are named "mpqL<i>_<kernel>" (FuseOps keeps the name inside the fused
# function's name), so a per-call profile of the compiled model maps calls back to layers.
LAYER_TAG = re.compile(r"mpqL(\d+)_")


def layer_tag(index: int) -> str:
    return f"mpqL{index}"


def _tagged(tag: str, name: str) -> str:
    return f"{tag}_{name}" if tag else name


def _fast_float32(layer: Layer, cand: Candidate, kernels: str) -> bool:
    """FP32 layers the x86 libraries lower themselves (everything else FP32 stays TVM's operator)."""
    return (kernels in PACKED_CPU_LIBRARIES and not cand.is_quantized and cand.float_dtype == "float32"
            and avx2.supports(layer.workload, "float32"))


def emit_layer(bb: relax.BlockBuilder, layer: Layer, cand: Candidate, args, weight, encodings,
               *, inputs_quantized: bool = False, kernels: str = "generic", tag: str = "", correction=None):
    """Emit `layer` at `cand`; returns its float32 output (before the bias add).

    `args` are the layer's activation inputs (float32, or already in the candidate's integer dtype when
    `inputs_quantized`); `weight` is the float32 weight (BatchNorm folded); `encodings` one ActEncoding per
    activation input; `kernels` the kernel library ("generic" or "x86_avx2"); `tag` (see `layer_tag`)
    prefixes the name of the layer's kernel function, so a per-call profile can attribute it; `correction`
    (float32 [O], quantized layers with weights) is subtracted from the requantized output.
    """
    if cand.is_quantized:
        y = _emit_quantized(bb, layer, cand, args, weight, encodings, inputs_quantized, kernels, tag)
        if correction is None or layer.op_type == "matmul":
            return y
        c = np.asarray(correction, np.float32)
        shape = (1, -1, 1, 1) if layer.op_type == "conv2d" else (1,) * (len(layer.workload.output_shape) - 1) + (-1,)
        return bb.emit(relax.op.subtract(y, relax.const(c.reshape(shape))))
    if cand.float_dtype != "float32":
        return _emit_reduced_float(bb, layer, cand, args, weight)
    if _fast_float32(layer, cand, kernels):
        return _emit_float32_avx2(bb, layer, args, weight, tag, PACKED_CPU_LIBRARIES[kernels])
    raise ValueError(f"layer {layer.name}: FP32 needs no lowering with the {kernels!r} kernels")


def _quantized_weight(weight: np.ndarray, bits: int):
    """(the weight as the kernels read it, a Relax constant; its per-channel scale; the int8 values)"""
    q, scale = numerics.quantize_weight(weight, bits)
    stored = numerics.pack_int4(q) if bits == 4 else q
    return relax.const(stored), scale, q


def _emit_quantized(bb, layer: Layer, cand: Candidate, args, weight, encs, inputs_quantized: bool,
                    kernels: str = "generic", tag: str = ""):
    wl = layer.workload
    fast = (kernels in PACKED_CPU_LIBRARIES and avx2.supports(wl, encs[0].dtype)
            and all(e.dtype == "uint8" for e in encs))
    lanes = PACKED_CPU_LIBRARIES.get(kernels, 8)
    vnni = kernels == "x86_avx512_vnni"
    # 16-bit activations of dense layers and 1x1 convs: two byte planes on the VNNI u8s8 GEMM; of depthwise
    # convs: two byte planes on the uint8 depthwise kernel (any x86 library)
    a16 = vnni and encs[0].dtype == "int16" and avx2.supports_a16(wl)
    dw16 = kernels in PACKED_CPU_LIBRARIES and encs[0].dtype == "int16" and avx2.supports_depthwise_a16(wl)

    # cuda: 8-bit GEMMs as int8 x int8 sums with the zero point out of the reduction (see the module docstring)
    s8_form = (kernels == "cuda" and cand.weight_bits == 8 and encs[0].dtype == "uint8"
               and layer.op_type in ("conv2d", "linear") and (layer.op_type == "linear" or wl.groups == 1))
    zero_point = encs[0].zero_point - (128 if s8_form else 0)  # of the operand the reduction reads

    def accumulator(q):
        # int32 sums for 16-bit activations where exact; not on CUDA, where TVM 0.27 cannot lower the cross-thread
        # reduction dlight's GEMV rule gives an int32 sum of int16 x int4 products (batch-1 W4A16 linear layers)
        return cand.acc_dtype if kernels == "cuda" else numerics.accumulator_dtype(cand, q, encs[0])

    def quantized(x, enc, channel_shape=None):
        return x if inputs_quantized else emit_quantize(bb, x, enc, channel_shape)

    def minus_zero_point_offsets(acc, q, shape):
        if not s8_form or not zero_point:
            return acc
        offsets = zero_point_offsets(q, zero_point).reshape(shape)
        return bb.emit(relax.op.subtract(acc, relax.const(offsets)))

    if encs[0].channel_scale is not None:  # smoothing: the weight's input channels take the factors
        weight = smoothing.scale_weight(weight, encs[0].channel_scale)
    if layer.op_type == "conv2d":
        xq = quantized(args[0], encs[0], (1, -1, 1, 1))
        if fast or a16 or dw16:  # int4 weights are exact int16 values in the packed operand (packed at compile time)
            q, w_scale = numerics.quantize_weight(weight, cand.weight_bits)
            if fast:
                acc = avx2.conv2d(bb, xq, q, wl, zero_point=encs[0].zero_point, tag=tag, lanes=lanes, vnni=vnni)
            elif dw16:
                acc = avx2.depthwise_a16(bb, xq, q, wl, zero_point=encs[0].zero_point, tag=tag, lanes=lanes,
                                         vnni=vnni)
            else:
                acc = avx2.conv1x1_a16(bb, xq, q, wl, zero_point=encs[0].zero_point, tag=tag)
        else:
            w, w_scale, q = _quantized_weight(weight, cand.weight_bits)
            acc = bb.emit_te(
                qconv2d_nchw, xq, w,
                data_zero_point=encs[0].zero_point, strides=tuple(wl.strides), padding=tuple(wl.padding),
                dilation=tuple(wl.dilation), groups=wl.groups, weight_bits=cand.weight_bits,
                kernel_shape=tuple(wl.weight_shape), acc_dtype=accumulator(q),
                zero_point_in_reduction=not s8_form, int8_operand=s8_form,
                primfunc_name_hint=_tagged(tag, "qconv2d_nchw"),
            )
            acc = minus_zero_point_offsets(acc, q, (1, -1, 1, 1))
        divisor = numerics.requant_divisor(encs[0].scale, w_scale).reshape(1, -1, 1, 1)
        return bb.emit(relax.op.divide(relax.op.astype(acc, "float32"), relax.const(divisor)))
    if layer.op_type == "linear":
        x = args[0]
        k, n = wl.weight_shape[1], wl.weight_shape[0]
        if len(wl.input_shape) != 2:  # reshape before quantizing: the quantize may fuse into the producer
            x = bb.emit(relax.op.reshape(x, (-1, k)))
        xq = quantized(x, encs[0], (1, -1))
        if fast or a16:
            q, w_scale = numerics.quantize_weight(weight, cand.weight_bits)
            acc = (avx2.dense(bb, xq, q.reshape(n, k), zero_point=encs[0].zero_point, tag=tag, lanes=lanes,
                              vnni=vnni)
                   if fast else avx2.dense_a16(bb, xq, q.reshape(n, k), zero_point=encs[0].zero_point, tag=tag))
        else:
            w, w_scale, q = _quantized_weight(weight, cand.weight_bits)
            acc = bb.emit_te(
                qdense, xq, w, data_zero_point=encs[0].zero_point, weight_bits=cand.weight_bits,
                in_features=k, acc_dtype=accumulator(q),
                zero_point_in_reduction=not s8_form, int8_operand=s8_form,
                primfunc_name_hint=_tagged(tag, "qdense"),
            )
            acc = minus_zero_point_offsets(acc, q, (1, n))
        divisor = numerics.requant_divisor(encs[0].scale, w_scale).reshape(1, n)
        y = relax.op.divide(relax.op.astype(acc, "float32"), relax.const(divisor))
        if len(wl.input_shape) != 2:
            y = relax.op.reshape(bb.emit(y), tuple(wl.output_shape))
        return bb.emit(y)
    # activation x activation matmul
    aq = quantized(args[0], encs[0])
    bq = quantized(args[1], encs[1])
    if fast:
        acc = avx2.matmul(bb, aq, bq, a_zero_point=encs[0].zero_point, b_zero_point=encs[1].zero_point, tag=tag,
                          lanes=lanes)
    else:
        acc = bb.emit_te(
            qbatch_matmul, aq, bq, a_zero_point=encs[0].zero_point, b_zero_point=encs[1].zero_point,
            acc_dtype=cand.acc_dtype, primfunc_name_hint=_tagged(tag, "qbatch_matmul"),
        )
    divisor = numerics.requant_divisor(encs[0].scale, encs[1].scale)
    return bb.emit(relax.op.divide(relax.op.astype(acc, "float32"), relax.const(divisor, "float32")))


def _emit_float32_avx2(bb, layer: Layer, args, weight, tag: str = "", lanes: int = 8):
    wl = layer.workload
    if layer.op_type == "conv2d":
        return avx2.conv2d(bb, args[0], weight, wl, dtype="float32", tag=tag, lanes=lanes)
    if layer.op_type == "linear":
        x = args[0]
        k, n = wl.weight_shape[1], wl.weight_shape[0]
        if len(wl.input_shape) != 2:
            x = bb.emit(relax.op.reshape(x, (-1, k)))
        y = avx2.dense(bb, x, weight.reshape(n, k), dtype="float32", tag=tag, lanes=lanes)
        if len(wl.input_shape) != 2:
            y = bb.emit(relax.op.reshape(y, tuple(wl.output_shape)))
        return y
    return avx2.matmul(bb, args[0], args[1], dtype="float32", tag=tag, lanes=lanes)


def _emit_reduced_float(bb, layer: Layer, cand: Candidate, args, weight):
    dt = cand.float_dtype
    wl = layer.workload
    cast = [bb.emit(relax.op.astype(a, dt)) for a in args[: layer.num_act_inputs]]
    if layer.op_type == "conv2d":
        return bb.emit(relax.op.nn.conv2d(
            cast[0], relax.const(weight.astype(dt)), strides=wl.strides, padding=wl.padding,
            dilation=wl.dilation, groups=wl.groups, out_dtype="float32"))
    if layer.op_type == "linear":
        w_t = relax.const(np.ascontiguousarray(weight.T).astype(dt))
        return bb.emit(relax.op.matmul(cast[0], w_t, out_dtype="float32"))
    return bb.emit(relax.op.matmul(cast[0], cast[1], out_dtype="float32"))
