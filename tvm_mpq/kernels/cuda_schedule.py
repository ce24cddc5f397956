"""GPU scheduling and cross-compilation of the CUDA target.

The TE kernels that `emit_layer` produces (`kernels/quantized.py`) carry no schedule; on a CUDA target
every PrimFunc is scheduled here at build time with dlight rules, tried in order:

1. `IntegerMatmulTensorCore` (ours): an int8 x int8 -> int32 GEMM in the form ``acc += x * w`` (what the
   "cuda" kernel library emits for W8A8 dense layers and convs: the uint8 activation moved to int8 inside
   the kernel, the zero point subtracted after the reduction) whose M, N and K all exceed 64: dlight's
   int8 WMMA schedule (`MatmulInt8Tensorization`) without its software pipelining, which TVM 0.27 cannot
   lower for WMMA fragments.
   `IntegerMatmulDP4A` (ours): the same GEMMs below that size. Normalized to C[b, i, j] += A[b, i, k] *
   B[b, j, k] as dlight does, tiled over thread blocks with a 4x4 register micro-tile per thread, A and B
   staged in shared memory K-major, and the innermost 4 of K tensorized with TVM's ``dp4a`` intrinsic
   (four byte products and the add in one instruction, sm_61 and later).
2. `IntegerMatmul` (ours): any other matmul-like reduction with integer operands and an integer accumulator
   (`qdense`, `qbatch_matmul`, `qconv2d_nchw` as an implicit GEMM; W8A8 and W4A16). It is dlight's
   `Matmul` SIMT schedule (shared-memory tiles, a register micro-tile per thread) with the tensor-core
   path switched off: dlight's int8 tensor-core path fails on int8 x int8 -> int32 in TVM 0.27, and the
   kernels here subtract the activation zero point inside the reduction, which no MMA intrinsic matches.
3. dlight's defaults as TVM's CUDA pipeline uses them: `Matmul` (fp16 tensor cores for FP16 layers),
   `GEMV`, `Reduction`, `GeneralReduction`, `Fallback` (depthwise convolutions, elementwise ops).

The pipeline is TVM's own CUDA pipeline (`tvm.relax.backend.cuda.pipeline`) with that rule list.

Cross-compilation: TVM 0.27 stores a CUDA module as CUDA C source when the compiling host has no CUDA
driver, and the receiving runtime compiles it when the library is loaded (through the global function
`tvm_callback_cuda_compile`). `cross_compile_kernels` compiles those sources here with nvcc into fatbins
named by the SHA-256 of the source; `register_kernel_dir` (and the standalone copy of it in
`scripts/device/measure.py`) answers the runtime's compile callback from that folder, so the device
runs the kernels compiled here and needs neither nvcc nor NVRTC.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional

__all__ = [
    "IntegerMatmul",
    "IntegerMatmulDP4A",
    "schedule_rules",
    "gpu_pipeline",
    "compile_relax",
    "compile_reference",
    "is_gpu_target",
    "cuda_sources",
    "kernel_key",
    "cross_compile_kernels",
    "register_kernel_dir",
]

KERNEL_SUFFIX = ".fatbin"


def is_gpu_target(target) -> bool:
    return target is not None and target.kind.name == "cuda"


def _integer(dtype: str) -> bool:
    return dtype.startswith("int") or dtype.startswith("uint")


def _rules():
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu.matmul import get_index_map, get_reduction_blocks
    from tvm.target import Target

    class IntegerMatmul(dl.gpu.Matmul):
        """dlight's `Matmul` SIMT schedule for integer matmul-like reductions, tensor cores off."""

        def apply(self, func, target, tunable):
            from tvm import s_tir, tirx

            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            blocks = get_reduction_blocks(sch, sch.get_child_blocks(_root(sch)))
            if not blocks:
                return None
            stmt = sch.get(blocks[0])
            if not stmt.writes or not _integer(str(stmt.writes[0].source.dtype)):
                return None
            if not any(_integer(str(r.source.dtype)) for r in stmt.reads) or get_index_map(stmt) is None:
                return None
            # Below sm_70 dlight's Matmul never tries tensor cores; the tile configuration is the same.
            simt = Target({**dict(target.export()), "arch": "sm_61"})
            return super().apply(func, simt, tunable)

    class IntegerMatmulDP4A(dl.gpu.Matmul):
        """uint8 x int8 -> int32 GEMMs (``acc += x * w``) with K on ``dp4a``; None for anything else."""

        threads_i, threads_j = 8, 16  # threads per block along the GEMM's rows (i) and columns (j)
        micro_i, micro_j = 4, 4  # outputs per thread
        tile_k = 32  # K elements (bytes) staged in shared memory per step

        def apply(self, func, target, tunable):
            from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers
            from tvm.s_tir.tensor_intrin import dot_product_common as dp

            found = _int8_gemm(self, func, target, min_sm=61)
            if found is None:
                return None
            sch, main, operands = found
            intrin = {("int8", "int8"): dp.DP4A_S8S8S32_INTRIN, ("uint8", "int8"): dp.DP4A_U8S8S32_INTRIN,
                      ("int8", "uint8"): dp.DP4A_S8U8S32_INTRIN}[operands]

            # C[b, i, j] += A[b, i, k] * B[b, j, k]: both operands K-major, as dp4a reads them
            reindex_a = sch.reindex(main, ("read", 0))
            reindex_b = sch.reindex(main, ("read", 1))
            reindex_c = sch.reindex(main, ("write", 0))
            matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
            sch.transform_layout(reindex_a, ("write", 0), a_map)
            sch.transform_layout(reindex_b, ("write", 0), b_map)
            sch.transform_layout(reindex_c, ("read", 0), c_map)
            sch.transform_block_layout(main, matmul_map)

            tile_i, tile_j = self.threads_i * self.micro_i, self.threads_j * self.micro_j
            sch.pad_einsum(main, [1, tile_i, tile_j, self.tile_k])  # zero padding: 0 * 0 adds nothing
            batch, i, j, k = sch.get_loops(main)
            bi, ti, ii = sch.split(i, [None, self.threads_i, self.micro_i])
            bj, tj, jj = sch.split(j, [None, self.threads_j, self.micro_j])
            ko, ki, kk = sch.split(k, [None, self.tile_k // 4, 4])
            sch.reorder(bj, bi, tj, ti, ko, ki, ii, jj, kk)
            bj = sch.fuse(batch, bj)
            sch.bind(bi, "blockIdx.x")
            sch.bind(bj, "blockIdx.y")
            sch.bind(tj, "threadIdx.y")
            sch.bind(ti, "threadIdx.x")
            sch.annotate(ti, ann_key="pragma_auto_unroll_max_step", ann_val=256)
            sch.annotate(ti, ann_key="pragma_unroll_explicit", ann_val=1)

            store = sch.cache_write(main, 0, "local")
            sch.reverse_compute_at(store, ti, preserve_unit_loops=True)

            def stage(index):  # cooperative load of a K tile into shared memory, 4 bytes per thread
                block = sch.cache_read(main, index, "shared")
                sch.compute_at(block, ko, preserve_unit_loops=True)
                loops = sch.get_loops(block)[-3:]
                ty, tx, _, vec = sch.split(sch.fuse(*loops), [self.threads_j, self.threads_i, None, 4])
                sch.vectorize(vec)
                sch.bind(ty, "threadIdx.y")
                sch.bind(tx, "threadIdx.x")
                # rows 4-byte aligned (dp4a loads 4 bytes), and not a multiple of 32 words (bank conflicts)
                sch.storage_align(block, 0, axis=1, factor=self.tile_k + 4, offset=4)
                return block

            for block in (stage(0), stage(1)):
                auto_inline_producers(sch, block)
            auto_inline_consumer_chain(sch, store)
            sch.decompose_reduction(main, ko)
            sch.tensorize(kk, intrin)
            return sch

    class IntegerMatmulTensorCore(dl.gpu.Matmul):
        """int8 x int8 -> int32 GEMMs whose M, N and K all exceed 64, on int8 tensor cores: dlight's
        `MatmulInt8Tensorization` (WMMA 16x16x16 fragments, 128x128 block tiles) without its software
        pipelining, which TVM 0.27 cannot lower for WMMA fragments (InjectSoftwarePipeline fails on the
        fragment buffers). None for anything else."""

        min_extent = 64  # dlight's threshold for tensor cores: below it the 128x128 tile is mostly padding

        def apply(self, func, target, tunable):
            from tvm.s_tir.dlight.gpu.matmul import MatmulInt8Tensorization

            found = _int8_gemm(self, func, target, min_sm=75)
            if found is None or found[2] != ("int8", "int8"):
                return None
            probe, main, _ = found
            extents = _gemm_extents(probe, main)
            if extents is None or min(extents) <= self.min_extent:
                return None
            sch = MatmulInt8Tensorization().apply(func, target, tunable)
            if sch is None:
                return None
            for block in _all_blocks(sch, _root(sch)):
                for loop in sch.get_loops(block):
                    for key in list(sch.get(loop).annotations.keys()):
                        if str(key).startswith("software_pipeline"):
                            sch.unannotate(loop, key)
            return sch

    return IntegerMatmul, IntegerMatmulDP4A, [
        IntegerMatmulTensorCore(), IntegerMatmulDP4A(), IntegerMatmul(), dl.gpu.Matmul(), dl.gpu.GEMV(),
        dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback(),
    ]


def _int8_gemm(rule, func, target, min_sm: int):
    """(schedule, its reduction block, operand dtypes) when `func` is one 8-bit GEMM in the form
    `_dp4a_operands` accepts and `target` is a CUDA arch of at least sm_`min_sm`, else None."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.gpu.matmul import get_index_map, get_reduction_blocks

    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    arch = str(target.attrs.get("arch", ""))
    if not arch.startswith("sm_") or int(arch[3:].rstrip("a")) < min_sm:
        return None
    sch = s_tir.Schedule(func)
    blocks = get_reduction_blocks(sch, sch.get_child_blocks(_root(sch)))
    if not blocks:
        return None
    operands = _dp4a_operands(sch.get(blocks[0]))
    if operands is None or get_index_map(sch.get(blocks[0])) is None:
        return None
    return sch, blocks[0], operands


def _all_blocks(sch, parent) -> list:
    out = []
    for block in sch.get_child_blocks(parent):
        out += [block, *_all_blocks(sch, block)]
    return out


def _gemm_extents(sch, block):
    """(M, N, K) of a matmul-like reduction block, as dlight normalizes it (C[b, i, j] += A[b, i, k] *
    B[b, j, k]), or None when it is not one or an extent is not a constant."""
    from tvm import tirx
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    maps = get_index_map(sch.get(block))
    if maps is None:
        return None
    sch.reindex(block, ("read", 0))
    sch.reindex(block, ("read", 1))
    sch.reindex(block, ("write", 0))
    sch.transform_block_layout(block, get_index_map(sch.get(block))[0])
    extents = [v.dom.extent for v in sch.get(block).iter_vars[1:]]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    return tuple(int(e) for e in extents)


def _dp4a_operands(block):
    """(dtype of A, dtype of B) when `block` is C = C + int32(A) * int32(B) with 8-bit operands (int8 x int8,
    or uint8 and int8) and an int32 C (the form `IntegerMatmulDP4A` tensorizes), else None."""
    from tvm import ir, tirx
    from tvm.tirx import expr

    load = ir.TensorLoad  # TVM 0.27's class of tirx.BufferLoad nodes
    body = block.body
    if not isinstance(body, tirx.BufferStore) or str(body.buffer.dtype) != "int32":
        return None
    value = body.value
    if not isinstance(value, expr.Add) or not isinstance(value.a, load) \
            or not value.a.source.same_as(body.buffer) or not isinstance(value.b, expr.Mul):
        return None
    dtypes = []
    for factor in (value.b.a, value.b.b):
        if not isinstance(factor, expr.Cast) or not isinstance(factor.value, load):  # int32: C + A * B typed
            return None
        dtypes.append(str(factor.value.source.dtype))
    return tuple(dtypes) if sorted(dtypes) in (["int8", "int8"], ["int8", "uint8"]) else None


def _root(sch):
    from tvm.s_tir.dlight.analysis import get_root_block

    return get_root_block(sch)


def schedule_rules() -> list:
    """The rule list, in order of preference."""
    return _rules()[2]


def _apply_schedule(log: Optional[dict]):
    """dlight's ApplyDefaultSchedule with `schedule_rules()`, except that a rule which raises on a function
    (dlight's Matmul does on a GEMM fused with a consumer it cannot inline) passes it to the next rule;
    `log` gets {PrimFunc name: rule name, with the rules that failed before it}."""
    import tvm
    from tvm import tirx

    rules = schedule_rules()

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqApplyGpuSchedule")
    def _apply(mod, _ctx):
        target = tvm.target.Target.current(allow_none=False)
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                continue
            failed = []
            for rule in rules:
                try:
                    sch = rule.apply(func, target, False)
                except Exception as err:  # noqa: BLE001 - a rule that cannot handle this function: try the next
                    first_line = (str(err).splitlines() or [""])[0][:120]
                    failed.append(f"{type(rule).__name__}: {type(err).__name__}: {first_line}")
                    continue
                if sch is not None:
                    updated[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    if log is not None:
                        log[gvar.name_hint] = type(rule).__name__ + (f" (after {'; '.join(failed)})" if failed else "")
                    break
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod

    return _apply


def IntegerMatmul():  # noqa: N802 - a rule factory named like the rule
    """A new `IntegerMatmul` rule (the class is built on first use: dlight imports slowly)."""
    return _rules()[0]()


def IntegerMatmulDP4A():  # noqa: N802 - a rule factory named like the rule
    """A new `IntegerMatmulDP4A` rule."""
    return _rules()[1]()


def lift_constants(params: list, min_elements: int = 4096):
    """A pass that turns every constant of `main` with at least `min_elements` elements (weights) into a
    parameter appended after the inputs, and appends (shape, dtype) of each to `params`.

    Used for libraries that are only timed: the weights then travel as shapes, not bytes (a timed call
    reads them from device memory either way), which keeps a whole model's library small enough to carry.
    It runs after FoldConstant, so what is lifted is the weight as the kernels read it (transposed, packed).
    """
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Lifter(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.new_params = []

        def _lift(self, const):
            shape = [int(v) for v in const.value.shape]
            if int(np.prod(shape, dtype=np.int64)) < min_elements:
                return const
            dtype = str(const.value.dtype)
            var = relax.Var(f"weight{len(self.new_params)}", relax.TensorType(shape, dtype))
            self.new_params.append(var)
            params.append((shape, dtype))
            return var

        def _arg(self, arg):
            if isinstance(arg, GenericConst):
                return self._lift(arg)
            if isinstance(arg, relax.Tuple):
                return relax.Tuple([self._arg(f) for f in arg.fields])
            return self.visit_expr(arg)

        def visit_call_(self, call):
            return relax.Call(call.op, [self._arg(a) for a in call.args], call.attrs, call.ty_args)

    @tvm.transform.module_pass(opt_level=0, name="TvmMpqLiftConstants")
    def _pass(mod, _ctx):
        func = mod["main"]
        lifter = _Lifter(mod)
        body = lifter.visit_expr(func.body)
        new = relax.Function(list(func.params) + lifter.new_params, body, func.ret_ty if hasattr(func, "ret_ty")
                             else None, func.is_pure, func.attrs)
        mod = mod.copy() if hasattr(mod, "copy") else mod
        mod["main"] = new
        return mod

    return _pass


def _relax_pipeline(target, backend, lifted: Optional[list], schedule=None, name: str = "TvmMpqPipeline"):
    """A backend's (TVM's cuda or cpu_generic) Relax pipeline with its legalization replaced: legalize, fold
    constants, lift weights to parameters (with `lifted`, see `lift_constants`), fuse, then `schedule` (a
    pass, or none). The GPU build and its CPU reference share it, so they lift the same weights in the same
    order."""
    import tvm
    from tvm import relax

    legalize = [
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        *([lift_constants(lifted)] if lifted is not None else []),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), *([schedule] if schedule is not None else []),
    ]

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                backend.library_dispatch_passes(target) + legalize + backend.dataflow_lower_passes(target)
                + backend.finalize_passes(target))(mod)

    return _pipeline


def gpu_pipeline(target, log: Optional[dict] = None, lifted: Optional[list] = None):
    """TVM's CUDA Relax pipeline with this module's schedule rules; with `lifted` (a list), weights become
    parameters (see `lift_constants`) and their (shape, dtype) are appended to it."""
    from tvm.relax.backend.cuda import pipeline as cuda

    return _relax_pipeline(target, cuda, lifted, _apply_schedule(log), "TvmMpqCudaPipeline")


def compile_reference(mod, lifted: Optional[list] = None, target=None):
    """`mod` built for a CPU (`target`, default plain LLVM for this host) by TVM's generic CPU pipeline,
    without schedules: the reference a device library's output is checked against. With `lifted` (a list),
    weights become parameters exactly as `gpu_pipeline` lifts them (the same passes before the lift, so the
    same parameters in the same order); their (shape, dtype) are appended to it."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    target = target if target is not None else tvm.target.Target({"kind": "llvm"})
    return tvm.compile(mod, target=target,
                       relax_pipeline=_relax_pipeline(target, cpu, lifted, name="TvmMpqCpuReferencePipeline"))


def compile_relax(mod, target, log: Optional[dict] = None, lifted: Optional[list] = None):
    """`tvm.compile` for a CUDA target with the GPU schedule; returns the Relax executable.
    `log` gets {PrimFunc: schedule rule}; `lifted` see `gpu_pipeline`."""
    import tvm

    return tvm.compile(mod, target=target, relax_pipeline=gpu_pipeline(target, log, lifted))


# ---------------------------------------------------------------------- cross-compilation


def _modules(mod) -> Iterable:
    yield mod
    for sub in mod.imports:
        yield from _modules(sub)


def cuda_sources(executable_or_module) -> list[str]:
    """The CUDA C source of every CUDA module inside a compiled executable (or runtime module)."""
    mod = getattr(executable_or_module, "mod", executable_or_module)
    return [m.inspect_source("cuda") for m in _modules(mod) if m.kind == "cuda"]


def kernel_key(source) -> str:
    """The name of a CUDA source's compiled kernels: SHA-256 of its UTF-8 text."""
    data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
    return hashlib.sha256(data).hexdigest()


def _arch(target) -> str:
    arch = str(target.attrs.get("arch", "")) if target is not None else ""
    if not arch.startswith("sm_"):
        raise ValueError(f"CUDA target {target} has no 'arch' such as sm_90; the profile must name one")
    return arch[3:]


def cross_compile_kernels(executable, target, kernel_dir) -> list[str]:
    """Compile the executable's CUDA sources with nvcc into `kernel_dir/<sha256>.fatbin` (SASS for the
    target's arch plus its PTX); returns the keys. A kernel already in the folder is not recompiled."""
    from tvm.support import nvcc

    kernel_dir = Path(kernel_dir)
    kernel_dir.mkdir(parents=True, exist_ok=True)
    sm = _arch(target)
    arch = ["-gencode", f"arch=compute_{sm},code=sm_{sm}", "-gencode", f"arch=compute_{sm},code=compute_{sm}"]
    keys = []
    for source in cuda_sources(executable):
        key = kernel_key(source)
        path = kernel_dir / f"{key}{KERNEL_SUFFIX}"
        if not path.exists():
            with target:  # nvcc's wrapper reads the compute version from the current target
                binary = nvcc.compile_cuda(source, target_format="fatbin", arch=arch, compiler="nvcc")
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(bytes(binary))
            tmp.replace(path)
        keys.append(key)
    return keys


def register_kernel_dir(kernel_dir, *, jit_fallback: bool = False) -> None:
    """Answer the runtime's `tvm_callback_cuda_compile` from `kernel_dir` (for loading on the GPU host).
    With `jit_fallback`, a source without a compiled kernel there is compiled by TVM's nvcc/NVRTC wrapper."""
    import tvm_ffi

    kernel_dir = Path(kernel_dir)

    def compile_from_dir(code):
        path = kernel_dir / f"{kernel_key(code)}{KERNEL_SUFFIX}"
        if path.exists():
            return bytearray(path.read_bytes())
        if jit_fallback:
            from tvm.support import nvcc

            return nvcc.tvm_callback_cuda_compile(code)
        raise RuntimeError(f"no cross-compiled kernel {path.name} in {kernel_dir} for a CUDA module being loaded; "
                           "prepare the library with tvm_mpq.kernels.cuda_schedule.cross_compile_kernels")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_from_dir, override=True)
