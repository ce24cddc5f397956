"""QuantizeMixedPrecision: lower each named layer of a float Relax module to its planned precision.

Input: the float IRModule from `frontend.to_relax`, where every quantizable layer is one binding named
after the layer (conv2d(x, W), matmul(x, W^T) or matmul(a, b)). For each layer the plan quantizes:

    x_q  = astype(clip(round(x / s_x) + z_x, qmin, qmax), uint8|int16)        # convert op
    acc  = qconv2d / qdense / qbatch_matmul(x_q, W_q [int8, or int4 packed in uint8])  # int32/int64
    y    = astype(acc, float32) * (s_x * s_w[o])                                 # requantize epilogue

The bias add, activation and the next layer's quantize that follow are elementwise, so FuseOps merges
them into the integer kernel's epilogue. Layers at FP16 cast their operands to float16 and accumulate
in float32; FP32 layers are left untouched. Weights are quantized with `numerics`, exactly as the
simulator quantizes them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .. import numerics
from ..graph import Layer, LayerGraph
from ..kernels.quantized import qbatch_matmul, qconv2d_nchw, qdense
from ..numerics import ActEncoding, Candidate
from ..plan import Plan


def _sanitize(name: str) -> str:
    return name.replace(".", "_")


@tvm.transform.module_pass(opt_level=0, name="QuantizeMixedPrecision")
class QuantizeMixedPrecision:
    """Rewrite layers to the precisions of a resolved plan (see `plan.resolve`)."""

    def __init__(self, plan: Plan, graph: LayerGraph, weights: Mapping[str, np.ndarray]):
        self.plan = plan
        self.graph = graph
        self.weights = weights  # layer name → float32 weight (BatchNorm folded), as the simulator uses
        self.encodings = plan.encodings()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        targets = {}
        for name, layer in self.graph.layers.items():
            c = self.plan.candidate(name)
            if c.is_quantized or c.float_dtype != "float32":
                targets[name] = (layer, c)
        rewriter = _Rewriter(mod, targets, self.weights, self.encodings)
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
    def __init__(self, mod, targets, weights, encodings):
        super().__init__(mod)
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
        layer, cand = hit
        args = [self.visit_expr(a) for a in binding.value.args]
        if cand.is_quantized:
            new = self._quantized(layer, cand, args)
        else:
            new = self._reduced_float(layer, cand, args)
        if not isinstance(binding.var, relax.DataflowVar):
            new = self.builder_.emit_output(new)
        self.set_var_remap(binding.var, new)
        self.done.add(layer.name)

    # ------------------------------------------------------------------ helpers

    def _emit(self, expr):
        return self.builder_.emit(expr)

    def _quantize(self, x, enc: ActEncoding):
        y = relax.op.divide(x, relax.const(np.float32(enc.scale), "float32"))
        y = relax.op.add(relax.op.round(y), relax.const(np.float32(enc.zero_point), "float32"))
        y = relax.op.clip(y, float(enc.qmin), float(enc.qmax))
        return self._emit(relax.op.astype(y, enc.dtype))

    def _weights(self, layer: Layer, bits: int):
        q, scale = numerics.quantize_weight(self.weights[layer.name], bits)
        stored = numerics.pack_int4(q) if bits == 4 else q
        return relax.const(stored), scale

    def _quantized(self, layer: Layer, cand: Candidate, args):
        wl = layer.workload
        encs = self.encodings[layer.name]
        if layer.op_type == "conv2d":
            xq = self._quantize(args[0], encs[0])
            w, w_scale = self._weights(layer, cand.weight_bits)
            acc = self.builder_.emit_te(
                qconv2d_nchw, xq, w,
                data_zero_point=encs[0].zero_point, strides=tuple(wl.strides), padding=tuple(wl.padding),
                dilation=tuple(wl.dilation), groups=wl.groups, weight_bits=cand.weight_bits,
                kernel_shape=tuple(wl.weight_shape), acc_dtype=cand.acc_dtype,
            )
            mult = (np.float32(encs[0].scale) * w_scale).astype(np.float32).reshape(1, -1, 1, 1)
            return self._emit(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(mult)))
        if layer.op_type == "linear":
            x = args[0]
            k, n = wl.weight_shape[1], wl.weight_shape[0]
            if len(wl.input_shape) != 2:
                x = self._emit(relax.op.reshape(x, (-1, k)))
            xq = self._quantize(x, encs[0])
            w, w_scale = self._weights(layer, cand.weight_bits)
            acc = self.builder_.emit_te(
                qdense, xq, w, data_zero_point=encs[0].zero_point, weight_bits=cand.weight_bits,
                in_features=k, acc_dtype=cand.acc_dtype,
            )
            mult = (np.float32(encs[0].scale) * w_scale).astype(np.float32).reshape(1, n)
            y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(mult))
            if len(wl.input_shape) != 2:
                y = relax.op.reshape(self._emit(y), tuple(wl.output_shape))
            return self._emit(y)
        # activation x activation matmul
        aq = self._quantize(args[0], encs[0])
        bq = self._quantize(args[1], encs[1])
        acc = self.builder_.emit_te(
            qbatch_matmul, aq, bq, a_zero_point=encs[0].zero_point, b_zero_point=encs[1].zero_point,
            acc_dtype=cand.acc_dtype,
        )
        mult = np.float32(np.float32(encs[0].scale) * np.float32(encs[1].scale))
        return self._emit(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(mult, "float32")))

    def _reduced_float(self, layer: Layer, cand: Candidate, args):
        dt = cand.float_dtype
        wl = layer.workload
        cast = [self._emit(relax.op.astype(a, dt)) for a in args[: layer.num_act_inputs]]
        if layer.op_type == "conv2d":
            w = relax.const(self.weights[layer.name].astype(dt))
            return self._emit(relax.op.nn.conv2d(
                cast[0], w, strides=wl.strides, padding=wl.padding, dilation=wl.dilation,
                groups=wl.groups, out_dtype="float32"))
        if layer.op_type == "linear":
            w_t = relax.const(np.ascontiguousarray(self.weights[layer.name].T).astype(dt))
            return self._emit(relax.op.matmul(cast[0], w_t, out_dtype="float32"))
        return self._emit(relax.op.matmul(cast[0], cast[1], out_dtype="float32"))
