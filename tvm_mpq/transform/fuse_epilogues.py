"""FuseEpilogues: the elementwise ops after a hand-written AVX2 kernel move into the kernel's store.

A lowered integer layer is `call_tir(kernel) → astype(float32) → divide → subtract → add(bias)`, then
usually an activation and the next layer's quantize (`multiply → round → add → clip → astype(uint8)`).
FuseOps would make that chain one elementwise function that reads the kernel's int32 output from memory
and writes uint8: 5 bytes of memory traffic per element that the kernel, which holds the accumulators
in registers, does not need. This pass follows the chain from each kernel call through every op that
(1) is the only use of its input, (2) is elementwise with a constant operand that is a scalar or one
value per output channel of the kernel, and rebuilds the kernel with that chain as its `Epilogue`.

The chain stops at the first op that is not of that kind (a residual add of another tensor, a value
used twice, a reshape that moves the channel), so what remains is exactly what the unfused program
computed after that point; the fused ops are the ones TVM's legalization would emit, in the same order,
so outputs are bit for bit those of the unfused program.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tvm
from tvm import relax

from ..kernels import x86_avx2 as k
from ..kernels.epilogue import INT_OUT, Epilogue, Step

_BINARY = {"relax.divide": "div", "relax.subtract": "sub", "relax.add": "add", "relax.multiply": "mul"}
_COMMUTATIVE = ("add", "mul")  # IEEE add and multiply are commutative bit for bit


def _op_name(value) -> Optional[str]:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def _shape(expr) -> Optional[tuple[int, ...]]:
    try:
        return tuple(int(v) for v in expr.ty.shape)
    except (AttributeError, TypeError, ValueError):
        return None


class _Chain:
    """The epilogue being collected after one kernel call."""

    def __init__(self, kernel_m: int, kernel_n: int, acc_dtype: str, modes: tuple[str, ...]):
        self.m, self.n = kernel_m, kernel_n
        self.dtype = acc_dtype  # dtype of the value flowing through the chain so far
        self.modes = modes  # channel modes the kernel supports ("row", "col")
        self.steps: list[Step] = []
        self.vectors: list[np.ndarray] = []
        self.channel = "none"
        self.float_started = acc_dtype == "float32"

    def channel_of(self, operand: np.ndarray, shape: tuple[int, ...]) -> Optional[tuple[str, np.ndarray]]:
        """("imm", value) for a scalar operand, (mode, [C] values) for one value per kernel row or column of
        the current `shape`, None otherwise."""
        if operand.size == 1:
            return "imm", operand.reshape(-1)
        if operand.ndim > len(shape):
            return None
        full = (1,) * (len(shape) - operand.ndim) + operand.shape
        axes = [i for i, d in enumerate(full) if d != 1]
        if len(axes) != 1 or full[axes[0]] != shape[axes[0]]:
            return None
        axis = axes[0]
        inner = int(np.prod(shape[axis + 1:]))
        if "col" in self.modes and axis == len(shape) - 1 and shape[axis] == self.n:
            return "col", operand.reshape(-1)
        if "row" in self.modes and shape[axis] == self.m and inner == self.n:
            return "row", operand.reshape(-1)
        return None

    def add_vector(self, mode: str, values: np.ndarray) -> Optional[int]:
        if self.channel not in ("none", mode):
            return None
        self.channel = mode
        self.vectors.append(values.astype(np.float32))
        return len(self.vectors) - 1


def _constant(expr, defs) -> Optional[np.ndarray]:
    """The value of a constant operand: a relax.Constant, or a variable bound to a reshape of one."""
    if isinstance(expr, tvm.ir.expr.GenericConst):
        return expr.value.numpy()
    if isinstance(expr, relax.Var) and expr in defs:
        value = defs[expr]
        if _op_name(value) == "relax.reshape" and isinstance(value.args[0], tvm.ir.expr.GenericConst):
            shape = _shape(expr)
            return None if shape is None else value.args[0].value.numpy().reshape(shape)
    return None


def _extend(chain: _Chain, value, cur, cur_shape, defs, reshape_ok: bool) -> Optional[str]:
    """Append the op of `value` (whose input is `cur`) to the chain; returns "cast" for a final integer
    cast, "ok" for any other accepted op, None when the op cannot join."""
    name = _op_name(value)
    if name is None or not value.args:
        return None
    if name == "relax.astype":
        to = str(value.attrs.dtype)
        if to == "float32" and not chain.float_started and chain.dtype in ("int32", "int64"):
            chain.float_started, chain.dtype = True, "float32"
            return "ok"
        if to in INT_OUT and chain.float_started and chain.steps:
            chain.dtype = to
            return "cast"
        return None
    if not chain.float_started or chain.dtype != "float32":
        return None
    if name in _BINARY:
        op = _BINARY[name]
        a, b = value.args
        other = b if a.same_as(cur) else (a if op in _COMMUTATIVE and b.same_as(cur) else None)
        if other is None or other.same_as(cur):
            return None
        const = _constant(other, defs)
        if const is None or const.dtype != np.float32:
            return None
        found = chain.channel_of(const, cur_shape)
        if found is None:
            return None
        mode, values = found
        if mode == "imm":
            chain.steps.append(Step(op, imm=float(values[0])))
        else:
            idx = chain.add_vector(mode, values)
            if idx is None:
                return None
            chain.steps.append(Step(op, vector=idx))
        return "ok"
    if name == "relax.nn.relu":
        chain.steps.append(Step("max", imm=0.0))
        return "ok"
    if name == "relax.clip":  # TOPI's clip: max(min(x, hi), lo)
        lo, hi = (float(v.value) for v in value.args[1:3])
        chain.steps += [Step("min", imm=hi), Step("max", imm=lo)]
        return "ok"
    if name == "relax.round":
        chain.steps.append(Step("round"))
        return "ok"
    if name == "relax.reshape" and reshape_ok:
        return "ok"
    return None


def var_uses(func) -> dict:
    """How many times each relax Var of `func` is used."""
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def fuse_epilogues(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with every fusable elementwise chain after an AVX2 kernel call moved into the kernel."""
    bb = relax.BlockBuilder(mod)
    changed = False
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        new_func = _fuse_function(bb, mod, func)
        if new_func is not None:
            bb.update_func(gv, new_func)
            changed = True
    if not changed:
        return mod
    out = bb.get()
    return relax.transform.DeadCodeElimination()(out) if "main" in [g.name_hint for g in out.functions] else out


def _fuse_function(bb, mod, func) -> Optional[relax.Function]:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return None
    uses = var_uses(func)
    changed = False
    blocks = []
    for block in body.blocks:
        bindings = list(block.bindings)
        defs = {b.var: b.value for b in bindings if isinstance(b, relax.VarBinding)}
        user = {}
        for b in bindings:
            if not isinstance(b, relax.VarBinding):
                continue
            def note(expr, b=b):
                if isinstance(expr, relax.Var):
                    user.setdefault(expr, []).append(b)
            relax.analysis.post_order_visit(b.value, note)
        replaced, dropped = {}, set()
        for b in bindings:
            if not isinstance(b, relax.VarBinding) or b.var in dropped:
                continue
            fused = _fuse_from(bb, mod, b, defs, user, uses)
            if fused is None:
                continue
            end_var, call, chain_vars = fused
            replaced[end_var] = call
            dropped.update(chain_vars)
            changed = True
        new_bindings = []
        for b in bindings:
            if isinstance(b, relax.VarBinding) and b.var in replaced:
                new_bindings.append(relax.VarBinding(b.var, replaced[b.var]))
            elif not (isinstance(b, relax.VarBinding) and b.var in dropped):
                new_bindings.append(b)
        blocks.append(relax.DataflowBlock(new_bindings) if isinstance(block, relax.DataflowBlock)
                      else relax.BindingBlock(new_bindings))
    if not changed:
        return None
    return relax.Function(func.params, relax.SeqExpr(blocks, body.body), func.ret_ty, func.is_pure,
                          func.attrs)


def _fuse_from(bb, mod, binding, defs, user, uses):
    """(chain end var, fused call, vars of the replaced bindings) for a kernel call binding, or None."""
    value = binding.value
    if _op_name(value) != "relax.call_tir" or not isinstance(value.args[0], tvm.ir.GlobalVar):
        return None
    kernel = mod[value.args[0]]
    spec = k.kernel_spec(kernel)
    if spec is None:
        return None
    m, n, modes, acc_dtype, reshape_ok = k.epilogue_geometry(spec)
    chain = _Chain(m, n, acc_dtype, modes)
    cur, chain_vars, end = binding.var, [binding.var], None
    cur_shape = _shape(cur)
    while uses.get(cur, 0) == 1 and len(user.get(cur, [])) == 1:
        nxt = user[cur][0]
        status = _extend(chain, nxt.value, cur, cur_shape, defs, reshape_ok)
        if status is None:
            break
        cur, cur_shape = nxt.var, _shape(nxt.var)
        chain_vars.append(cur)
        if chain.float_started and (chain.steps or status == "cast"):
            end = (cur, len(chain.steps), chain.dtype)
        if status == "cast":
            break
    if end is None or end[1] == 0:
        return None
    end_var, n_steps, out_dtype = end
    # the chain may have run past its last useful op (e.g. a trailing reshape): cut it at `end_var`
    chain_vars = chain_vars[:chain_vars.index(end_var) + 1]
    epilogue = Epilogue(tuple(chain.steps[:n_steps]), out_dtype if out_dtype in INT_OUT else "float32")
    n_vectors = epilogue.n_vectors
    func = k.rebuild_with_epilogue(spec, epilogue, chain.channel if n_vectors else "none", _shape(end_var))
    name = value.args[0].name_hint + "_epi"
    gv = bb.add_func(func.without_attr("global_symbol"), name)
    args = list(value.args[1].fields)
    params = np.concatenate(chain.vectors[:n_vectors]) if n_vectors else np.zeros(1)  # the kernel takes P always
    args.append(relax.const(params.astype(np.float32)))
    call = relax.call_tir(gv, args, relax.TensorType(_shape(end_var), epilogue.out_dtype))
    return end_var, call, chain_vars[:-1]
