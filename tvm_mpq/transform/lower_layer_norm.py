"""LowerLayerNorm: float32 layer norms over the last axis become the vectorized kernel of
`tvm_mpq.kernels.layer_norm`, with a residual add in front of them folded in.

`R.nn.layer_norm(x, gamma, beta, axes=[-1])` on a float32 tensor of static shape becomes a `call_tir` of
`layer_norm_func` (TOPI's version runs scalar under TVM's CPU reduction schedule: 6-9x slower). Where `x`
is `R.add(a, b)` of two tensors of x's shape and the layer norm is the add's only use — a transformer's
`LayerNorm(h + sublayer(h))` — the kernel takes `a` and `b` and adds them on the fly, so the sum is never
written; the add is then dead and removed. Other layer norms (other axes, dtypes, dynamic shapes, no
gamma / beta) are left to TVM's legalization.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels.layer_norm import layer_norm_func
from .fuse_epilogues import var_uses

_LAYER_NORM = "relax.nn.layer_norm"
_ADD = "relax.add"


def _static_f32(expr):
    """The static shape of a float32 tensor expression, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.shape is None:
        return None
    dims = list(ty.shape)
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


@mutator
class _Lower(PyExprMutator):
    def __init__(self, mod, lanes: int, uses: dict):
        super().__init__(mod)
        self.lanes = lanes
        self.uses = uses
        self.lowered = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == _LAYER_NORM):
            return call
        x, gamma, beta = call.args
        shape = _static_f32(x)
        axes = [int(a) for a in call.attrs.axes]
        if shape is None or axes not in ([-1], [len(shape) - 1]) or not (call.attrs.center and call.attrs.scale):
            return call
        if _static_f32(gamma) != shape[-1:] or _static_f32(beta) != shape[-1:]:
            return call
        operands = [x]
        value = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == _ADD
                and self.uses.get(x, 0) == 1 and all(_static_f32(a) == shape for a in value.args)):
            operands = list(value.args)
        func = layer_norm_func(shape, float(call.attrs.epsilon), self.lanes, residual=len(operands) == 2)
        gv = self.builder_.add_func(func.without_attr("global_symbol"),
                                    "add_layer_norm" if len(operands) == 2 else "layer_norm")
        self.lowered += 1
        return relax.call_tir(gv, operands + [gamma, beta], relax.TensorType(list(shape), "float32"))


def lower_layer_norm(mod: tvm.IRModule, lanes: int = 8) -> tvm.IRModule:
    """`mod` with its float32 last-axis layer norms as `layer_norm_func` calls (see the module docstring);
    `lanes`: 8 (AVX2) or 16 (AVX-512)."""
    funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)]
    if not funcs:
        return mod
    changed = False
    lower = _Lower(mod, lanes, {})
    for gv, func in funcs:
        lower.uses = var_uses(func)
        before = lower.lowered
        new = lower.visit_expr(func)
        if lower.lowered > before:
            lower.builder_.update_func(gv, new)
            changed = True
    if not changed:
        return mod
    return relax.transform.DeadCodeElimination()(lower.builder_.get())
