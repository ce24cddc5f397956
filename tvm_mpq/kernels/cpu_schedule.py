"""Default CPU schedules for the functions the kernel libraries do not schedule themselves.

TVM's CPU pipeline compiles unscheduled TIR as written: one thread, loops in definition order. After
FuseOps/FuseTIR a model is mostly such functions besides its GEMMs: requantization epilogues (int32 →
float scale, bias, activation, the next layer's quantize and operand packing), residual adds, pooling,
softmax and layer norms. This module gives them a parallel schedule:

- injective functions (after inlining what can be inlined): the loops above the innermost one fused and
  run in parallel; the innermost rows vectorized by the target's float32 lanes (8 on AVX2, 16 on AVX-512:
  MiniLM-L6's elementwise passes, GELU and quantize mostly, 0.96x the whole model's time at 8);
- reductions over the last axis: dlight's CPU `Reduction` rule (softmax's max and sum and last-axis
  layer norms have hand-vectorized kernels instead: `row_reduce`, `layer_norm`).

Functions carrying `tirx.is_scheduled` (the hand-written AVX2 kernels) are left alone, here and by MetaSchedule.

TVM 0.27 does not mark `nearbyint` (what `relax.op.round` becomes: round half to even) as vectorizable, so
`VectorizeLoop` turns every quantize into a scalar loop (5-6x slower than the vector one, and most of the
time of an int8 model's epilogues). `enable_vector_nearbyint` marks it: LLVM's `llvm.nearbyint.v8f32` is one
`vroundps`, with the same result as the scalar form.
"""

from __future__ import annotations

from typing import Optional

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl

__all__ = ["CPUInjective", "cpu_schedule_pass", "cpu_pipeline", "enable_vector_nearbyint"]


def enable_vector_nearbyint() -> None:
    """Let TVM's vectorizer keep `nearbyint` as a vector op (see the module docstring); idempotent."""
    op = tvm.ir.Op.get("tirx.nearbyint")
    if not op.get_attr("TVectorizable"):
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


VEC_LANES = 8  # float32 / int32 lanes of an AVX2 register
INJECTIVE_LANES = None  # None: the target's (8 on AVX2, 16 on AVX-512); an int forces it (for comparisons)
ROW = 256  # innermost iterations fused into one vectorized row (a 14x14 feature map: 196)


def _elementwise(block) -> bool:
    """Whether every read of `block` indexes its buffer with the written axes (aligned from the right, as in
    broadcasting) or a constant: consecutive outputs then read consecutive (or the same) inputs."""
    axes = [r.min for r in block.writes[0].region]
    for read in block.reads:
        region = read.region
        if len(region) > len(axes):
            return False
        for dim, want in zip(region[::-1], axes[::-1]):
            if isinstance(dim.min, tirx.IntImm):
                continue
            if not (dim.min.same_as(want) and isinstance(dim.extent, tirx.IntImm) and int(dim.extent) == 1):
                return False
    return True


def _vectorize_row(sch, row, n: int, width: int = VEC_LANES):
    """Vectorize loop `row` (n iterations) by `width` lanes, a scalar loop over the last n % width; returns
    the loop over the vectors (None when n < width: the row is left as it is)."""
    main = n - n % width
    if main == 0:
        return None
    if main < n:
        row = sch.loop_partition(row, [main, None])[0]
    vectors, lanes = sch.split(row, [None, width])
    sch.vectorize(lanes)
    return vectors


class CPUInjective(dl.ScheduleRule):
    """Parallel outer loops for an injective (elementwise / data-movement) PrimFunc."""

    def apply(self, func, target, _tunable):
        from tvm import s_tir

        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = dl.normalize_prim_func(sch)
        if infos is None:
            return None
        infos = dl.try_inline(sch, infos)
        if len(infos) != 1 or not infos[0].is_injective():
            return None
        loops = sch.get_loops(infos[0].block_rv)
        if not loops:
            return None
        extents = [sch.get(lp).extent for lp in loops]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None
        if len(loops) == 1:  # one flat loop: its vectors run in parallel
            vectors = _vectorize_row(sch, loops[0], int(extents[0].value), INJECTIVE_LANES or _target_lanes(target))
            if vectors is not None:
                sch.parallel(vectors)
            return sch
        short_layout_change = int(extents[-1].value) < VEC_LANES and not _elementwise(sch.get(infos[0].block_rv))
        # A layout change with a short last axis (operand packing: [.., 16, 2]) has strided reads: explicit
        # lanes would be gathers, so its innermost loops (at most 64 iterations) are left as they are to
        # LLVM's vectorizer, which does better on them than on one fused loop. Otherwise the innermost
        # loops (at most ROW iterations) become one contiguous row, vectorized by 8 lanes with a scalar
        # tail. The loops above run fused, in parallel.
        limit = 64 if short_layout_change else ROW
        keep, inner = 1, int(extents[-1].value)
        while keep < len(loops) - 1 and inner * int(extents[-1 - keep].value) <= limit:
            inner *= int(extents[-1 - keep].value)
            keep += 1
        outer = loops[:-keep]
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if int(sch.get(fused).extent) > 1:
            sch.parallel(fused)
        if short_layout_change:
            return sch
        _vectorize_row(sch, sch.fuse(*loops[-keep:]) if keep > 1 else loops[-1], inner,
                       INJECTIVE_LANES or _target_lanes(target))
        return sch


def cpu_schedule_pass() -> tvm.transform.Pass:
    return dl.ApplyDefaultSchedule(dl.cpu.Reduction(), CPUInjective())


def _fast_gelu(bb, call):
    """GELU (erf form) with TVM's polynomial erf, which vectorizes (libm's erff does not)."""
    from tvm import topi

    x = call.args[0]
    return bb.call_te(
        lambda t: t * (tirx.const(0.5, t.dtype) + topi.fast_erf(t * tirx.const(0.7071067811865476, t.dtype))
                       * tirx.const(0.5, t.dtype)), x, primfunc_name_hint="gelu")


SPLIT_SOFTMAX = True  # False: TOPI's softmax (benchmarks/epilogues.py compares the two)
ROW_REDUCE = True  # False: softmax's max and sum under TVM's CPU reduction schedule (for comparisons)
FAST_LAYER_NORM = True  # False: TOPI's layer norm under TVM's CPU reduction schedule (for comparisons)


def _target_lanes(target) -> int:
    """float32 lanes of the vector registers the target's kernel library uses (8 where it has none)."""
    from . import LIBRARY_LANES, kernel_library

    return LIBRARY_LANES.get(kernel_library(target), 8) if target is not None else 8


def _fast_softmax(bb, call):
    """Softmax as four passes — max, exp(x - max) with TVM's polynomial exp, sum, divide — each of which runs
    parallel over rows on vector lanes: the max and sum over the last axis as `row_reduce_func` (TVM's CPU
    reduction schedule keeps them scalar: 9x slower), exp and divide under the CPU rules. TOPI's softmax
    is one function of four stages that the default pipeline runs single-threaded with scalar libm `expf`:
    5.8 ms of MiniLM-L6's 26-31 ms."""
    from tvm import topi

    x = call.args[0]
    axis = int(call.attrs.axis)
    shape = x.ty.shape
    ndim = len(shape)
    rowwise = (ROW_REDUCE and axis in (-1, ndim - 1) and x.ty.dtype == "float32"
               and all(isinstance(d, tirx.IntImm) for d in shape))

    def reduce(t, op):  # max / sum over the rows: the vectorized kernel where it applies, else TOPI's
        if not rowwise:
            return bb.emit_te(topi.max if op == "max" else topi.sum, t, axis=axis, keepdims=True,
                              primfunc_name_hint=f"softmax_{op}")
        from tvm import relax

        from .row_reduce import row_reduce_func

        dims = [int(d) for d in shape]
        lanes = _target_lanes(tvm.target.Target.current(allow_none=True))
        gv = bb.add_func(row_reduce_func(dims, op, lanes).without_attr("global_symbol"), f"softmax_{op}")
        return bb.emit(relax.call_tir(gv, [t], relax.TensorType(dims[:-1] + [1], "float32")))

    peak = reduce(x, "max")
    e = bb.emit_te(lambda a, b: topi.fast_exp(topi.subtract(a, b)), x, peak, primfunc_name_hint="softmax_exp")
    total = reduce(e, "sum")
    return bb.call_te(topi.divide, e, total, primfunc_name_hint="softmax_div")


# The elementwise chain after each hand-written AVX2 kernel is stored by the kernel itself (a switch for
# benchmarks/epilogues.py, which measures what that is worth).
FUSE_KERNEL_EPILOGUES = True


def cpu_pipeline(target, fast_math: bool = True, fuse_kernel_epilogues: Optional[bool] = None) -> tvm.transform.Pass:
    """TVM's default Relax CPU pipeline with `cpu_schedule_pass` after operator fusion.

    `fuse_kernel_epilogues` (None: `FUSE_KERNEL_EPILOGUES`): the elementwise chains after the hand-written
    AVX2 kernels (requantize, bias, activation, next quantize) are first moved into the kernels' stores
    (`transform.fuse_epilogues`).

    `fast_math`: exp, erf, tanh and sigmoid of the float parts (softmax, GELU) become TVM's vectorizable
    polynomial approximations (`relax.transform.FastMathTransform`) instead of scalar libm calls; their
    error is at the float32 rounding level, so a value next to a quantization boundary can round to the
    neighbouring integer (compiled vs simulated outputs then differ by one step there).
    """
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as p

    enable_vector_nearbyint()

    from ..transform.fuse_epilogues import fuse_epilogues
    from ..transform.lower_layer_norm import lower_layer_norm

    fuse = FUSE_KERNEL_EPILOGUES if fuse_kernel_epilogues is None else fuse_kernel_epilogues

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqCPUPipeline")
    def _pipeline(mod, _ctx):
        if fuse:
            mod = fuse_epilogues(mod)
        if FAST_LAYER_NORM:
            mod = lower_layer_norm(mod, _target_lanes(target))
        with target:
            legalize = {"relax.nn.gelu": _fast_gelu}
            if SPLIT_SOFTMAX:
                legalize["relax.nn.softmax"] = _fast_softmax
            pre = [relax.transform.LegalizeOps(customize_legalize_map=legalize),
                   relax.transform.FastMathTransform()] if fast_math else []
            seq = tvm.transform.Sequential(
                pre + p.library_dispatch_passes(target) + p.legalize_passes(target) + [cpu_schedule_pass()]
                + p.dataflow_lower_passes(target) + p.finalize_passes(target))
            return seq(mod)

    return _pipeline
