"""Kernels: target-independent integer computes (TVM TE), x86 AVX2 / AVX-512 kernels (TVMScript), CPU schedules."""

from __future__ import annotations


def kernel_library(target) -> str:
    """The kernel library for a TVM target: "x86_avx512_vnni" for LLVM targets whose CPU has AVX-512
    F/BW/VL and VNNI (cascadelake, icelake-server, sapphirerapids, znver4, ...), "x86_avx512" for AVX-512
    without VNNI (skylake-avx512), "x86_avx2" for AVX2 and FMA (core-avx2, znver3, ...), "generic"
    otherwise; "cuda" for CUDA targets (the generic computes, with the 8-bit GEMMs in the form `dp4a`
    computes, see `tvm_mpq.kernels.cuda_schedule`)."""
    if getattr(getattr(target, "kind", None), "name", None) == "cuda":
        return "cuda"
    try:
        from tvm.target import codegen

        if target.kind.name == "llvm" and codegen.target_has_features("avx2", target) \
                and codegen.target_has_features("fma", target):
            if all(codegen.target_has_features(f, target) for f in ("avx512f", "avx512bw", "avx512vl")):
                return "x86_avx512_vnni" if codegen.target_has_features("avx512vnni", target) else "x86_avx512"
            return "x86_avx2"
    except Exception:  # noqa: BLE001 - targets LLVM cannot describe (e.g. no mcpu for the triple)
        pass
    return "generic"



# vector lanes (float32 / int32) of the packed x86 libraries (`tvm_mpq.kernels.x86_avx2`)
LIBRARY_LANES = {"x86_avx2": 8, "x86_avx512": 16, "x86_avx512_vnni": 16}
LIBRARY_CPU_FLAGS = {"x86_avx2": ("avx2", "fma"), "x86_avx512": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl"),
                     "x86_avx512_vnni": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")}


def host_cpu_flags() -> set[str]:
    """The ISA flags of this machine's CPU (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_runs(library: str) -> bool:
    """Whether this machine can run code of a kernel library (x86 libraries need their ISA; "generic"
    runs wherever its target does)."""
    return set(LIBRARY_CPU_FLAGS.get(library, ())) <= host_cpu_flags()


# Bumped whenever a library's generated code changes speed, so measurements of older kernels are not mixed
# with new ones: `tvm-mpq profile` re-measures them, the latency tables ignore them (and say so).
# 2: vectorized quantize epilogues; 3: all cores (TVM_NUM_THREADS); 4: int16 operand packing unfused from the
# requantize (x86_avx2), softmax as four vector passes (both: the CPU pipeline); 5 (x86_avx2): the hand-written
# kernels declare their buffers `tirx.noalias` (TVM 0.27's name; the `tir.` spelling was silently ignored);
# 6 (x86_avx2): the kernels store their requantize / bias / activation / next-quantize epilogue themselves;
# 7 (x86_avx2): depthwise computes up to 8 output rows per block (8 FMA chains), vector plane fill and epilogue;
# generic 5, x86_avx2 8, x86_avx512(_vnni) 2: softmax's max and sum as vectorized row reductions (CPU pipeline)
# generic 6, x86_avx2 9, x86_avx512(_vnni) 3: last-axis layer norms as a vectorized kernel, residual add folded in;
# x86_avx512(_vnni) 3 also: the CPU schedule vectorizes elementwise functions by 16 lanes (was 8)
# x86_avx2 10, x86_avx512(_vnni) 4: float32 depthwise reads its input under lane masks (no padded plane) where
# faster; depthwise and direct conv rows take 16 lanes wherever that needs fewer vectors (x86_avx512)
# x86_avx2 11, x86_avx512(_vnni) 5: a depthwise plane larger than L1 is built one output-row group at a time
# x86_avx512_vnni 6: uint8 depthwise convs on `vpdpbusd` quads (tvm_mpq.kernels.depthwise_vnni)
# x86_avx512_vnni 7: dense layers and 1x1 convs with 16-bit activations on the u8s8 GEMM, in two byte planes
# x86_avx512_vnni 8: both planes in one "u16s8" GEMM (two register tiles, int64 combine and epilogue at the store)
# cuda 1: the generic computes on dlight schedules; W8A8 dense layers and convs as int8 x int8 GEMMs on int8
# tensor cores (IntegerMatmulTensorCore) or `dp4a` (IntegerMatmulDP4A)
# generic 7, x86_avx2 12, x86_avx512 6, x86_avx512_vnni 9: the generic integer kernels sum 16-bit activations in
# int32 where the weights bound every sum within it (`numerics.accumulator_dtype`); the x86 libraries run
# 16-bit activation depthwise convs on their uint8 depthwise kernels, one pass per byte plane
KERNEL_VERSIONS = {"generic": 7, "x86_avx2": 12, "x86_avx512": 6, "x86_avx512_vnni": 9, "cuda": 1}
UNVERSIONED = "generic/1"  # measurements stored before kernels were recorded


def kernels_id(target) -> str:
    """"library/version" of the kernels compiled for `target` (recorded with every measurement)."""
    lib = kernel_library(target)
    return f"{lib}/{KERNEL_VERSIONS[lib]}"
