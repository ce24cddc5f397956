"""Default CPU schedules for the functions the kernel libraries do not schedule themselves.

TVM's CPU pipeline compiles unscheduled TIR as written: one thread, loops in definition order. After
FuseOps/FuseTIR a model is mostly such functions besides its GEMMs: requantization epilogues (int32 →
float scale, bias, activation, the next layer's quantize and operand packing), residual adds, pooling,
softmax and layer norms. This module gives them a parallel schedule:

- injective functions (after inlining what can be inlined): the loops above the innermost one fused and
  run in parallel; the innermost is left to LLVM's vectorizer;
- reductions over the last axis (softmax, layer norm): dlight's CPU `Reduction` rule.

Functions carrying `tir.is_scheduled` (the hand-written AVX2 kernels) are left alone.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl

__all__ = ["CPUInjective", "cpu_schedule_pass", "cpu_pipeline"]


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
        # keep the innermost loops (at least one, at most 64 iterations together) for LLVM to vectorize;
        # fuse and parallelize the rest
        keep, inner = 1, int(extents[-1].value)
        while keep < len(loops) - 1 and inner * int(extents[-1 - keep].value) <= 64:
            inner *= int(extents[-1 - keep].value)
            keep += 1
        outer = loops[:-keep] if len(loops) > keep else loops
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if int(sch.get(fused).extent) > 1:
            sch.parallel(fused)
        if keep >= 1 and len(loops) > keep:
            last = loops[-1]
            n_last = int(extents[-1].value)
            if n_last >= 8:
                _, vec = sch.split(last, [None, 8])
                sch.vectorize(vec)
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


def cpu_pipeline(target, fast_math: bool = True) -> tvm.transform.Pass:
    """TVM's default Relax CPU pipeline with `cpu_schedule_pass` after operator fusion.

    `fast_math`: exp, erf, tanh and sigmoid of the float parts (softmax, GELU) become TVM's vectorizable
    polynomial approximations (`relax.transform.FastMathTransform`) instead of scalar libm calls; their
    error is at the float32 rounding level, so a value next to a quantization boundary can round to the
    neighbouring integer (compiled vs simulated outputs then differ by one step there).
    """
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as p

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqCPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            pre = [relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.gelu": _fast_gelu}),
                   relax.transform.FastMathTransform()] if fast_math else []
            seq = tvm.transform.Sequential(
                pre + p.library_dispatch_passes(target) + p.legalize_passes(target) + [cpu_schedule_pass()]
                + p.dataflow_lower_passes(target) + p.finalize_passes(target))
            return seq(mod)

    return _pipeline
