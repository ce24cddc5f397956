"""Integer and float kernels for x86 CPUs (AVX2, AVX-512): a register-blocked GEMM micro-kernel in TVMScript.

Every conv2d (groups = 1), dense and activation x activation matmul becomes one GEMM
``C[b, m, n] = sum_k A[b, m, k] * B[b, k, n]`` on packed operands:

- ``A`` ("rows", broadcast operand): [batch, Mp, K2] int32, each int32 holding two consecutive k of one
  row as int16 (low half = even k). One ``vpbroadcastd`` feeds a whole register row.
- ``B`` ("panels", vector operand): [batch, NP, K2, NB, 2] int16, NB = 8 * NR columns per panel, the two
  k of a pair adjacent, so that one 32-byte load is 8 columns x 2 k.
- The micro-kernel keeps an MR x NR tile of int32x8 accumulators in registers across the whole K loop and
  issues ``vpmaddwd`` (int16 x int16 pairs -> int32, ``llvm.x86.avx2.pmadd.wd``) + ``vpaddd``.

Why int16 pairs and not ``vpmaddubsw`` (u8 x s8 -> saturating int16): ``vpmaddubsw`` saturates when two
adjacent u8 x s8 products sum beyond 32767 (255 * 127 * 2 = 64770), so it is exact only with 7-bit
activations or weights. ``vpmaddwd`` on int16 is exact for every uint8 activation (zero point removed:
-255..255) times int8/int4 weight, and on Zen 3 / Haswell-class cores it issues on the same vector
multiply ports, so the two sequences peak at the same MACs per cycle (``vpmaddubsw`` + ``vpmaddwd`` = two
multiply uops per 32 MACs; ``vpmaddwd`` = one per 16). The packed int16 operand costs twice the bytes of
uint8; it is packed once per layer call (activations) or at compile time (weights).

Zero points are removed while packing (``x - zp`` as int16), so padding is 0 and no correction term is
needed. Accumulation is int32: exact as long as K * 255 * 127 < 2^31 (K < 66 000), checked at build time.

The float32 path uses the same packing and blocking with ``vfmadd231ps`` on float32x8.

Operands are padded to whole tiles (zeros); the output is written unpadded (edge tiles element by element).

AVX-512 (``lanes`` 16, the "x86_avx512" libraries): the same kernels on zmm registers, NB = 16 * NR.
With VNNI, the "u8s8" GEMM multiplies *raw* uint8 activations by int8 weights in groups of four k
(``vpdpbusd``: four u8 x s8 products summed into each int32 lane, no intermediate saturation, so exact):
operands [.., K4, NB, 4] bytes, half the int16 pairs' size; the zero point is not removed in packing but
subtracted per output channel (zp x the channel's weight sum) from the accumulator, which is then the
same integer as the int16 path's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
from tvm import te, tirx
from tvm.script import tirx as T

from .epilogue import Epilogue, to_float

__all__ = [
    "GemmTiling", "choose_tiling", "gemm_func", "pack_rows", "pack_panels", "pack_conv_panels",
    "pack_weight_rows", "pack_weight_panels", "pack_pairs_func", "pack_quads_func", "pack_quad_rows_func",
    "pack_weight_quad_rows", "pack_weight_quad_panels", "zero_point_correction", "MAX_EXACT_K",
]

VEC = 8  # int32 / float32 lanes in a 256-bit register
LANES = (8, 16)  # AVX2 (ymm) or AVX-512 (zmm) kernels
ACC_CHAINS = 8  # independent FMA accumulators a float kernel needs to hide the FMA latency
DEPTHWISE_DIRECT = True  # float32 depthwise with column stride 1 reads X under masks (no padded plane)
DEPTHWISE_STRIPS = True  # a depthwise plane larger than L1_PLANE_BYTES is built one output-row group at a time
L1_PLANE_BYTES = 32 * 1024
MAX_EXACT_K = (2**31 - 1) // (255 * 127)  # int32 accumulation of (u8 - zp) * s8 terms cannot overflow below this
U16S8_MAX_TILE = 8  # accumulator vectors per plane of the two-plane GEMM: 2 x 8 of the 32 zmm registers


@dataclass(frozen=True)
class GemmTiling:
    """Register tile MR rows x (`lanes` * NR) columns; `m_chunks` splits the rows for more parallel tasks;
    `lanes` 8 (256-bit AVX2 vectors) or 16 (512-bit AVX-512)."""

    mr: int
    nr: int
    m_chunks: int = 1
    lanes: int = VEC

    def __post_init__(self):
        if self.lanes not in LANES:
            raise ValueError(f"vector lanes must be one of {LANES}, got {self.lanes}")

    @property
    def nb(self) -> int:
        return self.lanes * self.nr


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# Relative single-thread speed of the register tiles (MR rows x NR vectors) on full tiles, measured on Zen 3
# for the EfficientNet-Lite0 / MiniLM-L6 GEMM shapes (vpmaddwd path; benchmarks/kernels_avx2.py). 4 x 3
# needs 17 ymm registers with the product temporary, so one accumulator spills: slowest of the wide tiles.
TILE_SPEED_8 = {(5, 2): 1.0, (4, 2): 0.93, (3, 3): 0.93, (2, 4): 0.9, (6, 2): 0.85, (4, 3): 0.75, (3, 2): 0.8,
              (2, 3): 0.75, (2, 2): 0.6, (1, 4): 0.45, (1, 3): 0.4, (1, 2): 0.3, (1, 1): 0.2, (2, 1): 0.3,
              (3, 1): 0.35, (4, 1): 0.4, (5, 1): 0.45}
# The same for zmm tiles (32 registers), one thread of a 2-core Intel Xeon with AVX-512 (Sapphire Rapids
# class), int16 and float32 GEMMs of the same shapes: the median over shapes of each tile's speed per
# useful output relative to the fastest tile of the shape. Every 16-lane tile from 3 x 2 up is 1.4-2.1x
# the 8-lane 5 x 2 on that machine; 10 x 2 and 7 x 3 (20-21 accumulators) spill.
TILE_SPEED_16 = {(8, 2): 0.95, (4, 4): 0.93, (6, 2): 0.9, (3, 4): 0.88, (4, 3): 0.85, (8, 1): 0.8, (12, 1): 0.8,
                 (12, 2): 0.8, (6, 3): 0.8, (5, 4): 0.78, (4, 2): 0.78, (2, 4): 0.73, (3, 2): 0.68, (4, 1): 0.62,
                 (2, 2): 0.6, (1, 4): 0.47, (1, 2): 0.34, (2, 1): 0.32, (1, 1): 0.21}
TILE_SPEED = {8: TILE_SPEED_8, 16: TILE_SPEED_16}


def _best_tile(m: int, n: int, lanes: int = VEC, max_tile: Optional[int] = None) -> tuple[int, int]:
    """The tile with the best expected speed: tile speed x useful fraction of the padded rows and columns;
    `max_tile`: at most this many accumulator vectors (MR x NR)."""
    speeds = {t: v for t, v in TILE_SPEED[lanes].items() if max_tile is None or t[0] * t[1] <= max_tile}

    def score(t):
        mr, nr = t
        return (speeds[t] * m / (_ceil(m, mr) * mr)) * (n / (_ceil(n, lanes * nr) * lanes * nr))

    return max(speeds, key=score)


def choose_tiling(batch: int, m: int, n: int, threads: int = 2, lanes: int = VEC,
                  max_tile: Optional[int] = None) -> GemmTiling:
    """Register tile for a GEMM shape (`_best_tile`), and how many row chunks give the thread pool enough
    independent tasks when there are few column panels. `max_tile` caps the accumulator vectors (the
    two-plane "u16s8" GEMM holds two tiles)."""
    mr, nr = _best_tile(m, n, lanes, max_tile)
    panels = batch * _ceil(n, lanes * nr)
    m_blocks = _ceil(m, mr)
    m_chunks = 1
    while panels * m_chunks < 4 * threads and m_chunks * 2 <= m_blocks:
        m_chunks *= 2
    return GemmTiling(mr, nr, m_chunks, lanes)


# ---------------------------------------------------------------------------------------------- GEMM


def _mac_u8s8_macro(unsigned: str):
    """TVMScript macro ``mac(acc, at, a_scalar, b_vec)`` of the "u8s8" GEMM: acc[at:at+16] += the dot products
    of 4-byte groups, one AVX-512 VNNI `vpdpbusd` (u8 x s8, four products summed into each int32, no
    saturation). `unsigned` "b": b_vec holds the u8 operand (activation panels) and a_scalar four s8
    (weights); "a": a_scalar holds four u8 (an activation row) and b_vec the s8 weight panels."""
    if unsigned == "b":
        @T.macro
        def mac(acc, at, a_scalar, b_vec):
            acc[T.ramp(at, 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(at, 1, 16)], T.reinterpret("int8x64", b_vec),
                T.reinterpret("int8x64", T.broadcast(a_scalar, 16)))
    else:
        @T.macro
        def mac(acc, at, a_scalar, b_vec):
            acc[T.ramp(at, 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[T.ramp(at, 1, 16)],
                T.reinterpret("int8x64", T.broadcast(a_scalar, 16)), b_vec)
    return mac


def _mac_macro(is_int: bool, lanes: int = VEC):
    """TVMScript macro ``mac(acc, at, a_scalar, b_vec)``: acc[at:at+lanes] += broadcast(a_scalar) * b_vec, as
    one `vpmaddwd` on int16 pairs (a_scalar: an int32 holding two int16) or one float32 FMA."""
    i32, i16, f32 = f"int32x{lanes}", f"int16x{2 * lanes}", f"float32x{lanes}"
    pmadd = "llvm.x86.avx2.pmadd.wd" if lanes == 8 else "llvm.x86.avx512.pmaddw.d.512"
    fma = f"llvm.fma.v{lanes}f32"
    if is_int:
        @T.macro
        def mac(acc, at, a_scalar, b_vec):
            acc[T.ramp(at, 1, lanes)] = acc[T.ramp(at, 1, lanes)] + T.call_llvm_pure_intrin(
                i32, pmadd, T.reinterpret(i16, T.broadcast(a_scalar, lanes)), b_vec)
    else:
        @T.macro
        def mac(acc, at, a_scalar, b_vec):
            acc[T.ramp(at, 1, lanes)] = T.call_llvm_pure_intrin(
                f32, fma, T.broadcast(a_scalar, lanes), b_vec, acc[T.ramp(at, 1, lanes)])
    return mac


def _outputs(epilogue, acc_t: str, channels: int, channel: str, plain_dtype: Optional[str] = None,
             lanes: int = VEC):
    """(output dtype, parameter buffer length, out_vec, out_scalar) of a kernel with `epilogue` (None: the
    accumulator is stored as it is, or cast to `plain_dtype`). out_vec(P, v, row, col) → what to store for
    the accumulator vector `v` (`lanes` lanes) of output row `row`, columns col..col+lanes-1; out_scalar the
    same for one element.
    `channel` says which index picks the per-channel operands: "row", "col" or "none" (scalar operands)."""
    if epilogue is None:
        if plain_dtype is None or plain_dtype == acc_t:
            return acc_t, 0, (lambda P, v, row, col: v), (lambda P, v, row, col: v)
        return (plain_dtype, 0, (lambda P, v, row, col: T.Cast(f"{plain_dtype}x{lanes}", v)),
                (lambda P, v, row, col: T.Cast(plain_dtype, v)))
    if channel not in ("row", "col", "none"):
        raise ValueError(f"channel must be 'row', 'col' or 'none', got {channel!r}")
    n_ch = 1 if channel == "none" else channels

    def out_vec(P, v, row, col):
        def param(k):
            if channel == "col":
                return P[T.ramp(k * n_ch + col, 1, lanes)]
            return T.broadcast(P[k * n_ch + (row if channel == "row" else 0)], lanes)
        return epilogue.apply(to_float(v, lanes, acc_t), lanes, param)

    def out_scalar(P, v, row, col):
        def param(k):
            return P[k * n_ch + (row if channel == "row" else col if channel == "col" else 0)]
        return epilogue.apply(to_float(v, 1, acc_t), 1, param)

    return epilogue.out_dtype, max(1, epilogue.n_vectors * n_ch), out_vec, out_scalar


def _with_spec(func, kind: str, **params):
    """Attach what rebuilding the kernel with an epilogue takes (see `rebuild_with_epilogue`)."""
    return func.with_attr("mpq_kernel", json.dumps({"kind": kind, "params": params}))


def gemm_func(batch: int, m: int, n: int, k: int, tiling: GemmTiling, *, dtype: str = "int16",
              a_batched: bool = True, b_batched: bool = True, out_shape=None,
              epilogue: Optional[Epilogue] = None, channel: str = "none", unsigned: str = "b"):
    """TVMScript PrimFunc ``gemm(A, B, C)`` with the packed layouts of the module docstring.

    dtype "int16": A int32 [Ba, Mp, K2] (int16 pairs), B int16 [Bb, NP, K2, NB, 2], C int32 [batch, m, n].
    dtype "float32": A float32 [Ba, Mp, K], B float32 [Bb, NP, K, NB], C float32 [batch, m, n].
    `a_batched` / `b_batched` False: one operand shared by every batch (e.g. the weights). `out_shape`: the
    shape C is declared with (any shape of batch * m * n elements, e.g. NCHW for a conv), so that no
    reshape sits between the kernel and the elementwise function that consumes it.
    `epilogue`: ``gemm(A, B, P, C)`` applies it to the register tile and stores its dtype; P float32
    [n_vectors, m or n] holds its per-channel operands, the channel being the row (`channel` "row"),
    the column ("col") or neither ("none").
    dtype "u8s8" (16 lanes, AVX-512 VNNI): raw uint8 activations times int8 weights in groups of four k:
    A int32 [Ba, Mp, K4] (four bytes of a row), B [Bb, NP, K4, NB, 4] bytes; `unsigned` "b" (B uint8
    activations, A int8 weights: a 1x1 conv) or "a" (A uint8 activations, B int8 weights: a dense layer).
    ``gemm(A, B, ZC, [P,] C)``: ZC int32 [m] ("b") or [n] ("a") is zero point x weight sum per output
    channel, subtracted from the accumulator, which is then exactly the int16 path's sum of (x - zp) * w.
    dtype "u16s8": 16-bit activations as two uint8 byte planes of x + 2^15 (high, then low) stacked on the
    activation operand's leading axis (A [2 Ba, Mp, K4] for `unsigned` "a", B [2 Bb, NP, K4, NB, 4] for
    "b"), each through `vpdpbusd` into its own register tile against the same weights; the store forms
    256 acc_high + acc_low - ZC in int64 (ZC int64: (zero point + 2^15) x weight sum per output channel),
    the exact sum of (x - zp) * w, and stores it as int64 or through the epilogue. `tiling` must leave
    room for two tiles (`choose_tiling(max_tile=U16S8_MAX_TILE)`).
    """
    dual = dtype == "u16s8"
    if dual:
        if tiling.mr * tiling.nr > U16S8_MAX_TILE:
            raise ValueError(f"the u16s8 GEMM holds two tiles: at most {U16S8_MAX_TILE} accumulator vectors "
                             f"each, got {tiling.mr} x {tiling.nr}")
        dtype = "u8s8"  # each plane is a u8s8 GEMM
    if dtype == "u8s8":
        if tiling.lanes != 16 or unsigned not in ("a", "b"):
            raise ValueError(f"the u8s8 GEMM has 16-lane tiles and unsigned 'a' or 'b', got {tiling.lanes}, "
                             f"{unsigned!r}")
        if k > MAX_EXACT_K:
            raise ValueError(f"int32 accumulation is exact only for K <= {MAX_EXACT_K}, got K={k}")
        kk, pair = _ceil(k, 4), 4
        acc_t, a_t, b_t = "int32", "int32", "uint8" if unsigned == "b" else "int8"
    elif dtype == "int16":
        if k > MAX_EXACT_K:
            raise ValueError(f"int32 accumulation is exact only for K <= {MAX_EXACT_K}, got K={k}")
        kk, pair = _ceil(k, 2), 2
        acc_t, a_t, b_t = "int32", "int32", "int16"
    elif dtype == "float32":
        kk, pair = k, 1
        acc_t, a_t, b_t = "float32", "float32", "float32"
    else:
        raise ValueError(f"dtype must be 'int16', 'u8s8' or 'float32', got {dtype!r}")
    mr, nr, mc = tiling.mr, tiling.nr, tiling.m_chunks
    nb, L = tiling.nb, tiling.lanes
    mp = _ceil(m, mr) * mr
    npan = _ceil(n, nb)
    mblocks = mp // mr
    per_chunk = _ceil(mblocks, mc)
    ba = batch if a_batched else 1
    bb = batch if b_batched else 1
    a_stride_b = mp * kk if a_batched else 0
    b_stride_b = npan * kk * nb * pair if b_batched else 0
    vlen = L * pair  # B elements per vector load
    tasks = batch * npan * mc
    is_int = dtype != "float32"
    quads = dtype == "u8s8"
    planes_a = 2 if dual and unsigned == "a" else 1  # copies of the operand along its leading axis
    planes_b = 2 if dual and unsigned == "b" else 1
    a_plane = ba * mp * kk if planes_a == 2 else 0  # offset of the low plane
    b_plane = bb * npan * kk * nb * pair if planes_b == 2 else 0
    a_shape = (planes_a * ba, mp, kk)
    b_shape = (planes_b * bb, npan, kk, nb, pair) if is_int else (bb, npan, kk, nb)
    zc_len = m if unsigned == "b" else n
    zc_t = "int64" if dual else "int32"
    store_t = "int64" if dual else acc_t  # what the store sees: the planes' int64 sum, or the accumulator
    c_shape = tuple(int(v) for v in out_shape) if out_shape is not None else (batch, m, n)
    if int(np.prod(c_shape)) != batch * m * n:
        raise ValueError(f"out_shape {c_shape} does not hold {batch} x {m} x {n} elements")
    out_t, n_par, out_vec, out_scalar = _outputs(epilogue, store_t, m if channel == "row" else n, channel,
                                                 lanes=L)

    mac = _mac_u8s8_macro(unsigned) if quads else _mac_macro(is_int, L)
    zero = T.int32(0) if is_int else T.float32(0)

    def corrected(ZC, acc, acc2, at, row, col):
        """The sums in acc[at:at+L] with the u8s8 GEMM's zero-point correction (u16s8: the high plane's
        sums in `acc`, the low plane's in `acc2`, combined in int64)."""
        v = acc[T.ramp(at, 1, L)]
        if not quads:
            return v
        zc = T.broadcast(ZC[row], L) if unsigned == "b" else ZC[T.ramp(col, 1, L)]
        if dual:
            i64 = f"int64x{L}"
            return T.Cast(i64, v) * T.broadcast(T.int64(256), L) + T.Cast(i64, acc2[T.ramp(at, 1, L)]) - zc
        return v - zc

    def corrected1(ZC, edge, edge2, at, row, col):
        v = edge[at]
        if not quads:
            return v
        zc = ZC[row if unsigned == "b" else col]
        if dual:
            return T.Cast("int64", v) * T.int64(256) + T.Cast("int64", edge2[at]) - zc
        return v - zc

    @T.macro
    def body(A, B, ZC, P, C_nd):
        Af = T.decl_buffer((planes_a * ba * mp * kk,), a_t, data=A.data)
        Bf = T.decl_buffer((planes_b * bb * npan * kk * nb * pair,), b_t, data=B.data)
        C = T.decl_buffer((batch * m * n,), out_t, data=C_nd.data)
        for task in T.parallel(tasks):
            # scope "global" under the 1 KiB limit is a stack alloca, which LLVM promotes to registers
            acc = T.alloc_buffer((mr * nr * L,), acc_t, scope="global")
            edge = T.alloc_buffer((mr * nr * L,), acc_t, scope="global")
            if dual:  # the low plane's tile
                acc2 = T.alloc_buffer((mr * nr * L,), acc_t, scope="global")
                edge2 = T.alloc_buffer((mr * nr * L,), acc_t, scope="global")
            b_ = task // (npan * mc)
            no = task % (npan * mc) // mc
            ch = task % mc
            for mo_i in range(per_chunk):
                if ch * per_chunk + mo_i < mblocks:
                    m0 = (ch * per_chunk + mo_i) * mr
                    for t in T.unroll(mr * nr):
                        acc[T.ramp(t * L, 1, L)] = T.broadcast(zero, L)
                        if dual:
                            acc2[T.ramp(t * L, 1, L)] = T.broadcast(zero, L)
                    for kq in range(kk):
                        for i in T.unroll(mr):
                            for j in T.unroll(nr):
                                mac(acc, (i * nr + j) * L, Af[b_ * a_stride_b + (m0 + i) * kk + kq],
                                    Bf[T.ramp(b_ * b_stride_b + ((no * kk + kq) * nb + j * L) * pair, 1, vlen)])
                                if dual:
                                    mac(acc2, (i * nr + j) * L, Af[a_plane + b_ * a_stride_b + (m0 + i) * kk + kq],
                                        Bf[T.ramp(b_plane + b_ * b_stride_b + ((no * kk + kq) * nb + j * L) * pair,
                                                  1, vlen)])
                    if m0 + mr <= m and no * nb + nb <= n:
                        for i in T.unroll(mr):
                            for j in T.unroll(nr):
                                if dual:
                                    C[T.ramp((b_ * m + m0 + i) * n + no * nb + j * L, 1, L)] = out_vec(
                                        P, corrected(ZC, acc, acc2, (i * nr + j) * L, m0 + i, no * nb + j * L),
                                        m0 + i, no * nb + j * L)
                                else:
                                    C[T.ramp((b_ * m + m0 + i) * n + no * nb + j * L, 1, L)] = out_vec(
                                        P, corrected(ZC, acc, None, (i * nr + j) * L, m0 + i, no * nb + j * L),
                                        m0 + i, no * nb + j * L)
                    else:
                        # edge tile: copy out with constant indices (keeps `acc` in registers), then mask
                        for t in T.unroll(mr * nr):
                            edge[T.ramp(t * L, 1, L)] = acc[T.ramp(t * L, 1, L)]
                            if dual:
                                edge2[T.ramp(t * L, 1, L)] = acc2[T.ramp(t * L, 1, L)]
                        for i in range(mr):
                            for jl in range(nb):
                                if m0 + i < m and no * nb + jl < n:
                                    if dual:
                                        C[(b_ * m + m0 + i) * n + no * nb + jl] = out_scalar(
                                            P, corrected1(ZC, edge, edge2, i * nb + jl, m0 + i, no * nb + jl),
                                            m0 + i, no * nb + jl)
                                    else:
                                        C[(b_ * m + m0 + i) * n + no * nb + jl] = out_scalar(
                                            P, corrected1(ZC, edge, None, i * nb + jl, m0 + i, no * nb + jl),
                                            m0 + i, no * nb + jl)

    if quads and epilogue is None:
        @T.prim_func
        def gemm(A: T.Buffer(a_shape, a_t), B: T.Buffer(b_shape, b_t), ZC: T.Buffer((zc_len,), zc_t),
                 C_nd: T.Buffer(c_shape, out_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(A, B, ZC, None, C_nd)
    elif quads:
        @T.prim_func
        def gemm(A: T.Buffer(a_shape, a_t), B: T.Buffer(b_shape, b_t), ZC: T.Buffer((zc_len,), zc_t),
                 P: T.Buffer((n_par,), "float32"), C_nd: T.Buffer(c_shape, out_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(A, B, ZC, P, C_nd)
    elif epilogue is None:
        @T.prim_func
        def gemm(A: T.Buffer(a_shape, a_t), B: T.Buffer(b_shape, b_t), C_nd: T.Buffer(c_shape, out_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(A, B, None, None, C_nd)
    else:
        @T.prim_func
        def gemm(A: T.Buffer(a_shape, a_t), B: T.Buffer(b_shape, b_t), P: T.Buffer((n_par,), "float32"),
                 C_nd: T.Buffer(c_shape, out_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(A, B, None, P, C_nd)

    return _with_spec(gemm, "gemm", batch=batch, m=m, n=n, k=k, tiling=[mr, nr, mc, L],
                      dtype="u16s8" if dual else dtype,
                      a_batched=a_batched, b_batched=b_batched, out_shape=list(c_shape), unsigned=unsigned)


# -------------------------------------------------------------------------- packing (TE, at runtime)


def _pair_i32(lo, hi):
    """Two int16 values (as int32 expressions) packed into one int32, `lo` in the low half."""
    return tirx.bitwise_or(tirx.shift_left(hi, tirx.const(16, "int32")),
                           tirx.bitwise_and(lo, tirx.const(0xFFFF, "int32")))


def _flat_batch_loader(x: te.Tensor, lead):
    """x[(*batch index of flat b, r, c)]: the leading dims `lead` of x seen as one flattened batch axis."""
    def load(b, r, c):
        idx, rem = [], b
        for d in reversed(lead):
            idx.append(tirx.floormod(rem, d))
            rem = tirx.floordiv(rem, d)
        return x[(*reversed(idx), r, c)]

    return load


def pack_rows(x: te.Tensor, zero_point: int, mr: int, dtype: str = "int16") -> te.Tensor:
    """A operand from activations x [*B, M, K]: [B, Mp, K2] int32 pairs of (x - zp), zero padded.

    dtype "float32": [B, Mp, K] float32 (no pairs, no zero point).
    """
    shape = [int(v) for v in x.shape]
    lead, m, k = shape[:-2], shape[-2], shape[-1]
    batch = int(np.prod(lead)) if lead else 1
    mp = _ceil(m, mr) * mr

    load = _flat_batch_loader(x, lead)

    if dtype == "float32":
        return te.compute(
            (batch, mp, k),
            lambda b, r, c: te.if_then_else(r < m, load(b, tirx.min(r, m - 1), c).astype("float32"), 0.0),
            name="pack_rows_f32")
    zp = tirx.const(int(zero_point), "int32")

    def val(b, r, c):
        ok = tirx.all(r < m, c < k)
        v = load(b, tirx.min(r, m - 1), tirx.min(c, k - 1)).astype("int32") - zp
        return te.if_then_else(ok, v, tirx.const(0, "int32"))

    return te.compute((batch, mp, _ceil(k, 2)), lambda b, r, q: _pair_i32(val(b, r, 2 * q), val(b, r, 2 * q + 1)),
                      name="pack_rows_i16")


def pack_panels(x: te.Tensor, zero_point: int, nr: int, dtype: str = "int16", lanes: int = VEC) -> te.Tensor:
    """B operand from activations x [*B, K, N]: [B, NP, K2, NB, 2] int16 (x - zp), zero padded,
    NB = `lanes` * `nr`.

    dtype "float32": [B, NP, K, NB] float32.
    """
    shape = [int(v) for v in x.shape]
    lead, k, n = shape[:-2], shape[-2], shape[-1]
    batch = int(np.prod(lead)) if lead else 1
    nb = lanes * nr
    npan = _ceil(n, nb)

    load = _flat_batch_loader(x, lead)

    if dtype == "float32":
        return te.compute(
            (batch, npan, k, nb),
            lambda b, p, r, j: te.if_then_else(p * nb + j < n, load(b, r, tirx.min(p * nb + j, n - 1)), 0.0),
            name="pack_panels_f32")
    zp = tirx.const(int(zero_point), "int32")

    def fcompute(b, p, q, j, t):
        r, c = 2 * q + t, p * nb + j
        ok = tirx.all(r < k, c < n)
        v = load(b, tirx.min(r, k - 1), tirx.min(c, n - 1)).astype("int32") - zp
        return te.if_then_else(ok, v, tirx.const(0, "int32")).astype("int16")

    return te.compute((batch, npan, _ceil(k, 2), nb, 2), fcompute, name="pack_panels_i16")


def pack_conv_panels(x: te.Tensor, zero_point: int, nr: int, *, kernel, strides, padding, dilation,
                     dtype: str = "int16", lanes: int = VEC) -> te.Tensor:
    """B operand of a conv (groups = 1) from x [N, C, H, W]: im2col panels, K = C*KH*KW, columns = OH*OW.

    [N, NP, K2, NB, 2] int16 (x - zp; padding and tile padding 0), or [N, NP, K, NB] float32.
    """
    n_, c_, h_, w_ = (int(v) for v in x.shape)
    kh, kw = (int(v) for v in kernel)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    oh = (h_ + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
    k, cols = c_ * kh * kw, oh * ow
    nb = lanes * nr
    npan = _ceil(cols, nb)
    is_int = dtype == "int16"
    zp = tirx.const(int(zero_point), "int32")

    def val(b, r, col):
        c = tirx.floordiv(r, kh * kw)
        ky = tirx.floordiv(tirx.floormod(r, kh * kw), kw)
        kx = tirx.floormod(r, kw)
        oy, ox = tirx.floordiv(col, ow), tirx.floormod(col, ow)
        iy, ix = oy * sh + ky * dh - pt, ox * sw + kx * dw - pl
        ok = tirx.all(r < k, col < cols, iy >= 0, iy < h_, ix >= 0, ix < w_)
        v = x[b, tirx.min(c, c_ - 1), tirx.max(tirx.min(iy, h_ - 1), 0), tirx.max(tirx.min(ix, w_ - 1), 0)]
        if is_int:
            return te.if_then_else(ok, v.astype("int32") - zp, tirx.const(0, "int32")).astype("int16")
        return te.if_then_else(ok, v.astype("float32"), tirx.const(0.0, "float32"))

    if is_int:
        return te.compute((n_, npan, _ceil(k, 2), nb, 2),
                          lambda b, p, q, j, t: val(b, 2 * q + t, p * nb + j), name="pack_conv_panels_i16")
    return te.compute((n_, npan, k, nb), lambda b, p, r, j: val(b, r, p * nb + j), name="pack_conv_panels_f32")


def _pairs_operand(shape, conv_input: bool) -> tuple[int, int, int]:
    """(batch, K, N) of a packing source: [..., K, N], or a conv input [N, C, H, W] as [N, C, H*W]."""
    if conv_input:
        if len(shape) != 4:
            raise ValueError(f"a conv input is [N, C, H, W], got {tuple(shape)}")
        return shape[0], shape[1], shape[2] * shape[3]
    return (int(np.prod(shape[:-2])) if len(shape) > 2 else 1), shape[-2], shape[-1]


def pack_pairs_shape(shape, nb: int, *, conv_input: bool = False) -> tuple[int, ...]:
    """Shape of the int16 B panels `pack_pairs_func` writes: [B, NP, K2, NB, 2]."""
    batch, k, n = _pairs_operand(tuple(int(v) for v in shape), conv_input)
    return (batch, _ceil(n, nb), _ceil(k, 2), nb, 2)


def pack_pairs_func(shape, nb: int, src_dtype: str = "uint8", *, conv_input: bool = False):
    """PrimFunc ``main(X, ZP, Y)``: the int16 B panels ([B, NP, K2, NB, 2] of x - zp, as `pack_panels`) of a
    uint8 tensor X whose last two axes are [K, N] — or of a 1x1-conv input [N, C, H, W] read as [N, C, H*W] —
    hand-vectorized (`conv_input`); ZP: the zero point, int16 [1] (a runtime operand: layers of one shape
    share the function).

    Written as a TE compute, the interleave of two rows into int16 pairs (and the requantize FuseOps fuses
    in front of it) compiles to scalar code; here each 8 columns of rows 2q and 2q+1 are two vector loads,
    a widening, a zero-point subtract and one interleaving shuffle. Marked opaque (``op_pattern`` 8) so
    that FuseOps leaves the producer (requantize) to its own vectorized elementwise function."""
    if src_dtype != "uint8":
        raise ValueError(f"pack_pairs_func packs uint8 activations, got {src_dtype}")
    if nb % VEC:
        raise ValueError(f"panel width {nb} is not a multiple of {VEC}")
    shape = tuple(int(v) for v in shape)
    batch, k, n = _pairs_operand(shape, conv_input)
    _, npan, k2, _, _ = pack_pairs_shape(shape, nb, conv_input=conv_input)
    lanes = [v for i in range(VEC) for v in (i, i + VEC)]  # (row 2q, row 2q+1) interleaved

    @T.prim_func
    def main(X_nd: T.Buffer(shape, src_dtype), ZP: T.Buffer((1,), "int16"),
             Y_nd: T.Buffer((batch, npan, k2, nb, 2), "int16")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        X = T.decl_buffer((batch * k * n,), src_dtype, data=X_nd.data)
        Y = T.decl_buffer((batch * npan * k2 * nb * 2,), "int16", data=Y_nd.data)
        for task in T.parallel(batch * npan):
            b = task // npan
            p = task % npan
            for q in range(k2):
                for jb in range(nb // VEC):
                    c0 = p * nb + jb * VEC
                    base = ((task * k2 + q) * nb + jb * VEC) * 2
                    if c0 + VEC <= n and 2 * q + 1 < k:
                        Y[T.ramp(base, 1, 2 * VEC)] = T.Shuffle(
                            [T.Cast("int16x8", X[T.ramp((b * k + 2 * q) * n + c0, 1, VEC)]) - T.Broadcast(ZP[0], VEC),
                             T.Cast("int16x8", X[T.ramp((b * k + 2 * q + 1) * n + c0, 1, VEC)])
                             - T.Broadcast(ZP[0], VEC)], lanes)
                    else:  # edge: padded columns or an odd last row are 0
                        for j in range(VEC):
                            for t in range(2):
                                if c0 + j < n and 2 * q + t < k:
                                    Y[base + 2 * j + t] = T.Cast("int16", X[(b * k + 2 * q + t) * n + c0 + j]) - ZP[0]
                                else:
                                    Y[base + 2 * j + t] = T.int16(0)

    return main


def pack_quads_shape(shape, nb: int, *, conv_input: bool = False) -> tuple[int, ...]:
    """Shape of the uint8 B panels `pack_quads_func` writes: [B, NP, K4, NB, 4]."""
    batch, k, n = _pairs_operand(tuple(int(v) for v in shape), conv_input)
    return (batch, _ceil(n, nb), _ceil(k, 4), nb, 4)


def pack_quads_func(shape, nb: int, *, conv_input: bool = False):
    """PrimFunc ``main(X, Y)``: the uint8 B panels of the u8s8 GEMM ([B, NP, K4, NB, 4]: for each column the
    four k of a group adjacent, raw values, padding 0) of a uint8 tensor X whose last two axes are [K, N], or
    of a 1x1-conv input [N, C, H, W] read as [N, C, H*W] (`conv_input`). Each 16 columns of four rows are
    four vector loads and one interleaving shuffle; opaque to fusion like `pack_pairs_func`."""
    if nb % 16:
        raise ValueError(f"panel width {nb} is not a multiple of 16")
    shape = tuple(int(v) for v in shape)
    batch, k, n = _pairs_operand(shape, conv_input)
    _, npan, k4, _, _ = pack_quads_shape(shape, nb, conv_input=conv_input)
    lanes = [j + 16 * t for j in range(16) for t in range(4)]  # column j: rows 4q..4q+3

    @T.prim_func(check_well_formed=False)  # the root block (see below) is not plain TIR
    def main(X_nd: T.Buffer(shape, "uint8"), Y_nd: T.Buffer((batch, npan, k4, nb, 4), "uint8")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        # a root block: Relax's reshape analysis expects one in a one-input function of equal size
        with T.sblock("root"):
            X = T.decl_buffer((batch * k * n,), "uint8", data=X_nd.data)
            Y = T.decl_buffer((batch * npan * k4 * nb * 4,), "uint8", data=Y_nd.data)
            for task in T.parallel(batch * npan):
                b = task // npan
                p = task % npan
                for q in range(k4):
                    for jb in range(nb // 16):
                        c0 = p * nb + jb * 16
                        base = ((task * k4 + q) * nb + jb * 16) * 4
                        if c0 + 16 <= n and 4 * q + 3 < k:
                            Y[T.ramp(base, 1, 64)] = T.Shuffle(
                                [X[T.ramp((b * k + 4 * q + t) * n + c0, 1, 16)] for t in range(4)], lanes)
                        else:  # edge: padded columns or rows past K are 0
                            for j in range(16):
                                for t in range(4):
                                    if c0 + j < n and 4 * q + t < k:
                                        Y[base + 4 * j + t] = X[(b * k + 4 * q + t) * n + c0 + j]
                                    else:
                                        Y[base + 4 * j + t] = T.uint8(0)

    return main


def pack_quad_rows_func(m: int, k: int, mr: int, planes: int = 1):
    """PrimFunc ``main(X, Y)``: the A rows of the u8s8 GEMM (int32 [1, Mp, K4], four bytes of a row each)
    of uint8 activations X [M, K]: the rows' bytes, padded with 0 to whole groups and tiles. `planes` 2:
    X [2, M, K] (the byte planes of the u16s8 GEMM) → Y [2, Mp, K4]."""
    mp, k4 = _ceil(m, mr) * mr, _ceil(k, 4)
    x_shape = (m, k) if planes == 1 else (planes, m, k)

    @T.prim_func(check_well_formed=False)  # the root block (see below) is not plain TIR
    def main(X_nd: T.Buffer(x_shape, "uint8"), Y_nd: T.Buffer((planes, mp, k4), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        with T.sblock("root"):  # as in `pack_quads_func`
            X = T.decl_buffer((planes * m * k,), "uint8", data=X_nd.data)
            Y = T.decl_buffer((planes * mp * k4 * 4,), "uint8", data=Y_nd.data)
            for pr in T.parallel(planes * mp):
                p = pr // mp
                r = pr % mp
                for c in range(k4 * 4):
                    Y[pr * k4 * 4 + c] = T.if_then_else(
                        r < m and c < k, X[(p * m + T.min(r, m - 1)) * k + T.min(c, k - 1)], T.uint8(0))

    return main


# ----------------------------------------------------------------------- packing (NumPy, compile time)


def pack_weight_rows(w2d: np.ndarray, mr: int, dtype: str = "int16") -> np.ndarray:
    """A operand from a constant [M, K] matrix (conv weights O x C*KH*KW): [1, Mp, K2] int32 pairs or
    [1, Mp, K] float32."""
    m, k = w2d.shape
    mp = _ceil(m, mr) * mr
    if dtype == "float32":
        out = np.zeros((1, mp, k), np.float32)
        out[0, :m] = w2d
        return out
    out = np.zeros((mp, _ceil(k, 2) * 2), np.int16)
    out[:m, :k] = w2d
    return out.view(np.int32).reshape(1, mp, -1).copy()


def pack_weight_panels(w_nk: np.ndarray, nr: int, dtype: str = "int16", lanes: int = VEC) -> np.ndarray:
    """B operand from a constant dense weight [N, K] (out = x @ w.T): [1, NP, K2, NB, 2] int16 or
    [1, NP, K, NB] float32, NB = `lanes` * `nr`."""
    n, k = w_nk.shape
    nb = lanes * nr
    npan = _ceil(n, nb)
    if dtype == "float32":
        full = np.zeros((npan * nb, k), np.float32)
        full[:n] = w_nk
        return full.reshape(npan, nb, k).transpose(0, 2, 1).reshape(1, npan, k, nb).copy()
    k2 = _ceil(k, 2)
    full = np.zeros((npan * nb, k2 * 2), np.int16)
    full[:n, :k] = w_nk
    return full.reshape(npan, nb, k2, 2).transpose(0, 2, 1, 3).reshape(1, npan, k2, nb, 2).copy()


def pack_weight_quad_rows(w2d: np.ndarray, mr: int) -> np.ndarray:
    """A operand of the u8s8 GEMM from int8 weights [M, K] (a 1x1 conv): [1, Mp, K4] int32, four k each."""
    m, k = w2d.shape
    out = np.zeros((_ceil(m, mr) * mr, _ceil(k, 4) * 4), np.int8)
    out[:m, :k] = w2d
    return out.view(np.int32).reshape(1, out.shape[0], -1).copy()


def pack_weight_quad_panels(w_nk: np.ndarray, nr: int, lanes: int = 16) -> np.ndarray:
    """B operand of the u8s8 GEMM from int8 dense weights [N, K]: [1, NP, K4, NB, 4] int8."""
    n, k = w_nk.shape
    nb = lanes * nr
    npan, k4 = _ceil(n, nb), _ceil(k, 4)
    full = np.zeros((npan * nb, k4 * 4), np.int8)
    full[:n, :k] = w_nk
    return full.reshape(npan, nb, k4, 4).transpose(0, 2, 1, 3).reshape(1, npan, k4, nb, 4).copy()


def zero_point_correction(w2d: np.ndarray, zero_point: int, dtype: str = "int32") -> np.ndarray:
    """ZC of the u8s8 GEMM: zero point x the sum of each output channel's weights (rows of w2d), int32
    (int64 for the u16s8 GEMM, whose "zero point" is the activations' + 2^15)."""
    return (int(zero_point) * w2d.astype(np.int64).sum(axis=1)).astype(dtype)


# ------------------------------------------------------------------------------------- depthwise conv


def depthwise_row_block(oh: int) -> int:
    """Output rows a depthwise block computes at once: all of them up to ACC_CHAINS (independent
    accumulators hide the FMA / dot-product latency), else the count in 5..8 that wastes fewest rows
    past the last (7 for a 7x7 or 14x14 output)."""
    return oh if oh <= ACC_CHAINS else min(range(ACC_CHAINS, 4, -1), key=lambda r: -(-oh // r) * r - oh)


def depthwise_row_store(oh: int, ow: int, ry: int, lanes: int, out_vec, adjust=lambda v, Z, c: v):
    """TVMScript macro ``store_rows(Y, P, Z, acc, edge, task, c, yg, xb)`` of the depthwise kernels: the `ry`
    accumulator vectors of row group yg, column block xb, through `adjust(v, Z, c)` (Z: a kernel buffer it
    may read) and the epilogue `out_vec` into Y [task, oh, ow]; the block past the last whole vector
    stores its valid lanes one by one."""
    full = ow // lanes

    @T.macro
    def store_rows(Y, P, Z, acc, edge, task, c, yg, xb):
        for v in T.unroll(ry):
            if yg * ry + v < oh:
                if xb < full:
                    Y[T.ramp((task * oh + yg * ry + v) * ow + xb * lanes, 1, lanes)] = \
                        out_vec(P, adjust(acc[T.ramp(v * lanes, 1, lanes)], Z, c), c, 0)
                else:
                    # the epilogue on all lanes, then the valid ones stored one by one
                    edge[T.ramp(0, 1, lanes)] = out_vec(P, adjust(acc[T.ramp(v * lanes, 1, lanes)], Z, c), c, 0)
                    for xt in range(ow - full * lanes):
                        Y[(task * oh + yg * ry + v) * ow + full * lanes + xt] = edge[xt]

    return store_rows


def depthwise_func(data_shape, kernel_size, *, strides, padding, dilation, data_dtype: str,
                   data_zero_point: int = 0, out_dtype: str = "float32", epilogue: Optional[Epilogue] = None,
                   channel: str = "row", lanes: int = VEC):
    """PrimFunc ``main(data, weight, out)`` of a depthwise conv (one filter per channel) on float32 FMA.

    data [N, C, H, W] (uint8/int16 with `data_zero_point`, or float32), weight [C, KH*KW] float32 (integer
    weights are passed as their exact float values), out [N, C, OH, OW] `out_dtype`.
    Integer inputs are exact: every product is an integer below 2^15 * 2^7 and the sum of at most
    KH*KW of them stays below 2^24, where float32 represents integers exactly (checked).
    One parallel task per (image, channel): the channel's zero-padded plane (zero point removed) is built in
    the task, then each block of `lanes` columns (8 or 16) of up to 8 output rows is computed with one FMA
    per tap and row. float32 data with column stride 1 skips the plane where that measured faster (3x3
    taps, or rows of one vector): each tap loads its input row segment from the data under a lane mask
    (out-of-row lanes are zeros, the padding) and input rows outside the image are skipped. A plane larger
    than L1 (`L1_PLANE_BYTES`) is built one group of output rows at a time, only the rows that group reads
    (EfficientNet-Lite0's 96x113x113 stride-2 layer: 0.73x the whole-plane kernel, same results).
    `epilogue` (per-channel operands by channel, `channel` "row"): ``main(data, weight, P, out)`` applies it
    to the float accumulators (exact integers, so the same as after the int32 store) and stores its dtype.
    """
    n_, c_, h_, w_ = (int(v) for v in data_shape)
    kh, kw = (int(v) for v in kernel_size)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    oh = (h_ + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
    hp = h_ + pt + pb
    taps = kh * kw
    if data_dtype != "float32":
        bound = (255 if data_dtype == "uint8" else 65535) * 128 * taps
        if bound >= 2**24:
            raise ValueError(f"depthwise {kh}x{kw} on {data_dtype} is not exact in float32 (bound {bound})")
    if lanes not in LANES:
        raise ValueError(f"vector lanes must be one of {LANES}, got {lanes}")
    zp = float(data_zero_point)
    xblocks = -(-ow // lanes)
    # Independent accumulators hide the FMA latency (4 cycles, 2 per cycle: 8 chains keep the units busy):
    # one 8-column block of `ry` output rows at a time (measured faster than several blocks of one row),
    # `ry` the row count in 5..8 that wastes fewest rows past the last (7 for a 7x7 or 14x14 output).
    ry = depthwise_row_block(oh)
    ygroups = -(-oh // ry)
    # The padded plane is stored as `sw` column phases, phase r holding padded columns r, r + sw, ...,
    # so that every tap reads 8 consecutive floats whatever the stride. Each phase is wide enough for
    # whole column blocks (extra lanes read zeros and are not stored), and tall enough for
    # whole groups of rows (extra rows likewise).
    wq = xblocks * lanes + ((kw - 1) * dw) // sw + 1
    hpa = max(hp, (ygroups * ry - 1) * sh + (kh - 1) * dh + 1)
    # A plane larger than the L1 data cache (a 113x113 channel at stride 2: 60 KB) is built one group of
    # output rows at a time instead, holding only the `hg` padded rows that group reads (rows shared by
    # two groups are converted twice)
    hg = (ry - 1) * sh + (kh - 1) * dh + 1
    strips = DEPTHWISE_STRIPS and ygroups > 1 and sw * hpa * wq * 4 > L1_PLANE_BYTES
    plane_rows = hg if strips else hpa
    plane_size = _ceil(sw * plane_rows * wq, lanes) * lanes  # whole vectors, zeroed a vector at a time

    # float accumulators, stored cast to `out_dtype` (or through the epilogue)
    store_t, n_par, out_vec, _ = _outputs(epilogue, "float32", c_, channel, plain_dtype=out_dtype, lanes=lanes)
    f32, fma = f"float32x{lanes}", f"llvm.fma.v{lanes}f32"

    def phase_q0(r):  # first and end column q of column phase r that hold input columns
        return (pl - r + sw - 1) // sw

    def phase_q1(r):
        return (w_ + pl - r + sw - 1) // sw

    def phase_vectors(r):  # whole vectors of a contiguous phase (stride 1), converted a vector at a time
        return (phase_q1(r) - phase_q0(r)) // lanes if sw == 1 else 0

    def tap_row(yg, v, ky):  # plane row of output row yg * ry + v at tap row ky (a strip starts at its group)
        return v * sh + ky * dh if strips else (yg * ry + v) * sh + ky * dh

    @T.macro
    def fill_row(plane, X, task, y, prow):  # input row y into plane row prow of every phase
        for r in T.unroll(sw):
            # phase r holds padded columns r + sw * q, i.e. input columns x = r + sw * q - pl:
            # a vector at a time when contiguous (a strided vector load measured slower than scalars)
            for qv in range(phase_vectors(r)):
                plane[T.ramp((r * plane_rows + prow) * wq + phase_q0(r) + qv * lanes, 1, lanes)] = T.Cast(
                    f32, X[T.ramp((task * h_ + y) * w_ + r + sw * (phase_q0(r) + qv * lanes) - pl, sw,
                                  lanes)]) - T.broadcast(T.float32(zp), lanes)
            for q in range(phase_q0(r) + phase_vectors(r) * lanes, phase_q1(r)):
                plane[(r * plane_rows + prow) * wq + q] = \
                    T.Cast("float32", X[(task * h_ + y) * w_ + r + sw * q - pl]) - T.float32(zp)

    @T.macro
    def fill_plane(plane, X, task, row0):
        # the zero-padded plane from padded row row0 on (all of it, or a group's hg rows), zero point removed
        for i in range(plane_size // lanes):
            plane[T.ramp(i * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        if strips:
            for yr in range(plane_rows):
                if row0 + yr >= pt and row0 + yr < pt + h_:
                    fill_row(plane, X, task, row0 + yr - pt, yr)
        else:
            for y in range(h_):
                fill_row(plane, X, task, y, y + pt)

    store_rows = depthwise_row_store(oh, ow, ry, lanes, out_vec)

    @T.macro
    def body(X_nd, Wt, P, Y_nd):
        X = T.decl_buffer((n_ * c_ * h_ * w_,), data_dtype, data=X_nd.data)
        Y = T.decl_buffer((n_ * c_ * oh * ow,), store_t, data=Y_nd.data)
        for task in T.parallel(n_ * c_):
            plane = T.alloc_buffer((plane_size,), "float32", scope="global")
            acc = T.alloc_buffer((ry * lanes,), "float32", scope="global")
            edge = T.alloc_buffer((lanes,), store_t, scope="global")
            c = task % c_
            if not strips:
                fill_plane(plane, X, task, 0)
            for yg in range(ygroups):
                if strips:
                    fill_plane(plane, X, task, yg * ry * sh)
                for xb in range(xblocks):
                    for v in T.unroll(ry):
                        acc[T.ramp(v * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
                    for ky in T.unroll(kh):
                        for kx in T.unroll(kw):
                            for v in T.unroll(ry):
                                acc[T.ramp(v * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                                    f32, fma, T.broadcast(Wt[c * taps + ky * kw + kx], lanes),
                                    plane[T.ramp(((kx * dw) % sw * plane_rows + tap_row(yg, v, ky)) * wq
                                                 + xb * lanes + (kx * dw) // sw, 1, lanes)],
                                    acc[T.ramp(v * lanes, 1, lanes)])
                    store_rows(Y, P, None, acc, edge, task, c, yg, xb)

    def col_mask(xb, kx):  # lanes of column block xb at tap column kx that fall inside the input row
        cols = T.ramp(xb * lanes + kx * dw - pl, 1, lanes)
        return T.And(cols >= T.broadcast(0, lanes), cols < T.broadcast(w_, lanes))

    def tap_input(X, task, row, xb, kx):  # the input under tap column kx for output columns of block xb
        return T.masked_load(f32, X, T.ramp((task * h_ + row) * w_ + xb * lanes + kx * dw - pl, 1, lanes),
                             col_mask(xb, kx))

    @T.macro
    def body_direct(X_nd, Wt, P, Y_nd):
        # float32, column stride 1: every tap reads its input row straight from X under a mask (lanes
        # outside the row read as 0, the zero padding, and are not accessed); rows outside are skipped
        X = T.decl_buffer((n_ * c_ * h_ * w_,), data_dtype, data=X_nd.data)
        Y = T.decl_buffer((n_ * c_ * oh * ow,), store_t, data=Y_nd.data)
        for task in T.parallel(n_ * c_):
            acc = T.alloc_buffer((ry * lanes,), "float32", scope="global")
            edge = T.alloc_buffer((lanes,), store_t, scope="global")
            c = task % c_
            for yg in range(ygroups):
                for xb in range(xblocks):
                    for v in T.unroll(ry):
                        acc[T.ramp(v * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
                    for ky in T.unroll(kh):
                        for kx in T.unroll(kw):
                            for v in T.unroll(ry):
                                if (yg * ry + v) * sh + ky * dh >= pt and (yg * ry + v) * sh + ky * dh < pt + h_:
                                    acc[T.ramp(v * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                                        f32, fma, T.broadcast(Wt[c * taps + ky * kw + kx], lanes),
                                        tap_input(X, task, (yg * ry + v) * sh + ky * dh - pt, xb, kx),
                                        acc[T.ramp(v * lanes, 1, lanes)])
                    store_rows(Y, P, None, acc, edge, task, c, yg, xb)

    # measured (2 threads, AVX-512): 0.6-0.85x the plane kernel with 3x3 taps at every width and 5x5 on rows of
    # one vector (7, 14); 1.1-1.3x on 5x5 taps over rows of several vectors (28, 56), which keep the plane
    direct = DEPTHWISE_DIRECT and data_dtype == "float32" and sw == 1 and (kw <= 3 or xblocks == 1)
    if epilogue is None:
        @T.prim_func
        def main(X_nd: T.Buffer((n_, c_, h_, w_), data_dtype), Wt: T.Buffer((c_ * taps,), "float32"),
                 Y_nd: T.Buffer((n_, c_, oh, ow), store_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            if direct:
                body_direct(X_nd, Wt, None, Y_nd)
            else:
                body(X_nd, Wt, None, Y_nd)
    else:
        @T.prim_func
        def main(X_nd: T.Buffer((n_, c_, h_, w_), data_dtype), Wt: T.Buffer((c_ * taps,), "float32"),
                 P: T.Buffer((n_par,), "float32"), Y_nd: T.Buffer((n_, c_, oh, ow), store_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            if direct:
                body_direct(X_nd, Wt, P, Y_nd)
            else:
                body(X_nd, Wt, P, Y_nd)

    return _with_spec(main, "depthwise", data_shape=[n_, c_, h_, w_], kernel_size=[kh, kw], strides=[sh, sw],
                      padding=[pt, pl, pb, pr], dilation=[dh, dw], data_dtype=data_dtype,
                      data_zero_point=int(data_zero_point), out_dtype=out_dtype, lanes=lanes)


# ------------------------------------------------------------------------ direct conv (KxK, strided)
# im2col of a KxK conv writes KH*KW copies of its input; the direct conv reads a once-packed input instead.
# Input layout [N, SW, C2, Hp, Wq, 2] int16 (float32: [N, SW, C, Hp, Wq]): zero-point-free values of channel
# pairs (2q, 2q+1) side by side, rows padded, columns split into SW phases (padded column X lives in phase
# X % SW at X // SW), so that for every tap the 8 output columns of a vector read 8 consecutive entries.


@dataclass(frozen=True)
class DirectConvGeometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    dh: int
    dw: int

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - self.dh * (self.kh - 1) - 1) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - self.dw * (self.kw - 1) - 1) // self.sw + 1

    @property
    def hp(self) -> int:
        return self.h + self.pt + self.pb

    def wq(self, nb: int) -> int:
        """Phase width: whole column blocks plus the farthest tap, whatever the real width."""
        return _ceil(self.ow, nb) * nb + ((self.kw - 1) * self.dw) // self.sw + 1


def direct_conv_geometry(x_shape, w_shape, strides, padding, dilation) -> DirectConvGeometry:
    n, c, h, w = (int(v) for v in x_shape)
    o, _, kh, kw = (int(v) for v in w_shape)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    return DirectConvGeometry(n, c, h, w, o, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw)


def choose_row_tiling(g: DirectConvGeometry, threads: int = 2, lanes: int = VEC) -> GemmTiling:
    """MR output channels x NR vectors of `lanes` of one output row (`_best_tile` over O x OW)."""
    mr, nr = _best_tile(g.o, g.ow, lanes)
    tasks = g.n * g.oh * _ceil(g.ow, lanes * nr)
    mc, mblocks = 1, _ceil(g.o, mr)
    while tasks * mc < 4 * threads and mc * 2 <= mblocks:
        mc *= 2
    return GemmTiling(mr, nr, mc, lanes)


def pack_conv_input(x: te.Tensor, zero_point: int, g: DirectConvGeometry, nb: int, dtype: str = "int16"):
    """The direct conv's input layout (see above) from x [N, C, H, W]; padding and spare lanes are 0."""
    wq = g.wq(nb)
    zp = tirx.const(int(zero_point), "int32")

    def val(b, r, c, yp, xq):
        y, xx = yp - g.pt, xq * g.sw + r - g.pl
        ok = tirx.all(c < g.c, y >= 0, y < g.h, xx >= 0, xx < g.w)
        v = x[b, tirx.min(c, g.c - 1), tirx.max(tirx.min(y, g.h - 1), 0), tirx.max(tirx.min(xx, g.w - 1), 0)]
        if dtype == "int16":
            return te.if_then_else(ok, v.astype("int32") - zp, tirx.const(0, "int32")).astype("int16")
        return te.if_then_else(ok, v.astype("float32"), tirx.const(0.0, "float32"))

    if dtype == "int16":
        return te.compute((g.n, g.sw, _ceil(g.c, 2), g.hp, wq, 2),
                          lambda b, r, q, yp, xq, t: val(b, r, 2 * q + t, yp, xq), name="pack_conv_input_i16")
    return te.compute((g.n, g.sw, g.c, g.hp, wq), val, name="pack_conv_input_f32")


def pack_direct_conv_weight(w: np.ndarray, mr: int, dtype: str = "int16") -> np.ndarray:
    """A operand of the direct conv from weights [O, C, KH, KW]: [1, Mp, C2*KH*KW] int32 channel pairs per tap
    (index (q*KH + ky)*KW + kx), or [1, Mp, C*KH*KW] float32."""
    o, c, kh, kw = w.shape
    mp = _ceil(o, mr) * mr
    if dtype == "float32":
        out = np.zeros((1, mp, c * kh * kw), np.float32)
        out[0, :o] = w.reshape(o, -1)
        return out
    c2 = _ceil(c, 2)
    full = np.zeros((mp, c2 * 2, kh, kw), np.int16)
    full[:o, :c] = w
    # [Mp, C2, 2, KH, KW] -> [Mp, C2, KH, KW, 2]: the pair (2q, 2q+1) adjacent for each tap
    pairs = full.reshape(mp, c2, 2, kh, kw).transpose(0, 1, 3, 4, 2).copy()
    return pairs.view(np.int32).reshape(1, mp, c2 * kh * kw).copy()


def direct_conv_func(g: DirectConvGeometry, tiling: GemmTiling, dtype: str = "int16", *,
                     epilogue: Optional[Epilogue] = None, channel: str = "row"):
    """PrimFunc ``main(A, X, C)``: conv of the packed input X with packed weights A → C [N, O, OH, OW]
    (int32, or float32). One task per (image, output row, column block, row chunk); the MR x NR register
    tile of `tiling.lanes`-lane vectors (8 or 16) accumulates over channel pairs x taps with `vpmaddwd`
    (float32: FMA). `epilogue` (per-channel
    operands by output channel, `channel` "row"): ``main(A, X, P, C)``, as `gemm_func`."""
    is_int = dtype == "int16"
    pair = 2 if is_int else 1
    cc = _ceil(g.c, 2) if is_int else g.c  # reduction over channel pairs (or channels)
    kk = cc * g.kh * g.kw
    if is_int and g.c * g.kh * g.kw > MAX_EXACT_K:
        raise ValueError(f"int32 accumulation is exact only for K <= {MAX_EXACT_K}")
    mr, nr, mc, L = tiling.mr, tiling.nr, tiling.m_chunks, tiling.lanes
    nb = tiling.nb
    mp = _ceil(g.o, mr) * mr
    mblocks = mp // mr
    per_chunk = _ceil(mblocks, mc)
    oh, ow, hp, wq = g.oh, g.ow, g.hp, g.wq(nb)
    xb = _ceil(ow, nb)
    tasks = g.n * oh * xb * mc
    acc_t, a_t, x_t = ("int32", "int32", "int16") if is_int else ("float32", "float32", "float32")
    vlen = L * pair
    plane = hp * wq * pair          # one channel (pair) of one phase
    phase = cc * plane
    image = g.sw * phase
    x_shape = (g.n, g.sw, cc, hp, wq, 2) if is_int else (g.n, g.sw, cc, hp, wq)
    kh, kw, sh, sw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.dh, g.dw
    o = g.o

    mac = _mac_macro(is_int, L)
    zero = T.int32(0) if is_int else T.float32(0)

    out_t, n_par, out_vec, out_scalar = _outputs(epilogue, acc_t, o, channel, lanes=L)

    @T.macro
    def body(A, X_nd, P, C_nd):
        Af = T.decl_buffer((mp * kk,), a_t, data=A.data)
        Xf = T.decl_buffer((g.n * image,), x_t, data=X_nd.data)
        C = T.decl_buffer((g.n * o * oh * ow,), out_t, data=C_nd.data)
        for task in T.parallel(tasks):
            acc = T.alloc_buffer((mr * nr * L,), acc_t, scope="global")
            edge = T.alloc_buffer((mr * nr * L,), acc_t, scope="global")
            b_ = task // (oh * xb * mc)
            oy = task % (oh * xb * mc) // (xb * mc)
            bx = task % (xb * mc) // mc
            ch = task % mc
            for mo_i in range(per_chunk):
                if ch * per_chunk + mo_i < mblocks:
                    m0 = (ch * per_chunk + mo_i) * mr
                    for t in T.unroll(mr * nr):
                        acc[T.ramp(t * L, 1, L)] = T.broadcast(zero, L)
                    for q in range(cc):
                        for ky in range(kh):
                            for kx in T.unroll(kw):
                                for i in T.unroll(mr):
                                    for j in T.unroll(nr):
                                        mac(acc, (i * nr + j) * L, Af[(m0 + i) * kk + (q * kh + ky) * kw + kx],
                                            Xf[T.ramp(b_ * image + (kx * dw) % sw * phase + q * plane
                                                      + ((oy * sh + ky * dh) * wq + bx * nb + j * L
                                                         + (kx * dw) // sw) * pair, 1, vlen)])
                    if m0 + mr <= o and bx * nb + nb <= ow:
                        for i in T.unroll(mr):
                            for j in T.unroll(nr):
                                C[T.ramp(((b_ * o + m0 + i) * oh + oy) * ow + bx * nb + j * L, 1, L)] = \
                                    out_vec(P, acc[T.ramp((i * nr + j) * L, 1, L)], m0 + i, 0)
                    else:
                        for t in T.unroll(mr * nr):
                            edge[T.ramp(t * L, 1, L)] = acc[T.ramp(t * L, 1, L)]
                        for i in range(mr):
                            for jl in range(nb):
                                if m0 + i < o and bx * nb + jl < ow:
                                    C[((b_ * o + m0 + i) * oh + oy) * ow + bx * nb + jl] = \
                                        out_scalar(P, edge[i * nb + jl], m0 + i, 0)

    if epilogue is None:
        @T.prim_func
        def main(A: T.Buffer((1, mp, kk), a_t), X_nd: T.Buffer(x_shape, x_t), C_nd: T.Buffer((g.n, o, oh, ow), out_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(A, X_nd, None, C_nd)
    else:
        @T.prim_func
        def main(A: T.Buffer((1, mp, kk), a_t), X_nd: T.Buffer(x_shape, x_t), P: T.Buffer((n_par,), "float32"),
                 C_nd: T.Buffer((g.n, o, oh, ow), out_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(A, X_nd, P, C_nd)

    return _with_spec(main, "direct_conv", geometry=dataclasses.asdict(g), tiling=[mr, nr, mc, L], dtype=dtype)


# ------------------------------------------------------------------------------- fused epilogues


def kernel_spec(func) -> Optional[dict]:
    """What `func` was built from ({"kind", "params"}), for a kernel of this module; None otherwise."""
    attrs = func.attrs
    if attrs is None or "mpq_kernel" not in attrs:
        return None
    return json.loads(str(attrs["mpq_kernel"]))


def epilogue_geometry(spec: dict) -> tuple[int, int, tuple[str, ...], str, bool]:
    """(rows m, columns n, channel modes, dtype of the stored accumulator, whether the output may be
    declared with another shape) of a kernel spec: an output element's channel is its row ("row") or its
    column ("col"); a conv's rows are its output channels and its columns its pixels."""
    kind, p = spec["kind"], spec["params"]
    if kind == "gemm":
        acc = {"float32": "float32", "u16s8": "int64"}.get(p["dtype"], "int32")
        return p["m"], p["n"], ("row", "col"), acc, True
    if kind == "direct_conv":
        g = p["geometry"]
        geo = DirectConvGeometry(**g)
        return g["o"], geo.oh * geo.ow, ("row",), "int32" if p["dtype"] == "int16" else "float32", False
    if kind in ("depthwise", "depthwise_u8s8"):
        n_, c_, h_, w_ = p["data_shape"]
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = p["kernel_size"], p["strides"], p["padding"], p["dilation"]
        oh = (h_ + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
        return c_, oh * ow, ("row",), p["out_dtype"], False
    raise ValueError(f"unknown kernel kind {kind!r}")


def rebuild_with_epilogue(spec: dict, epilogue: Epilogue, channel: str, out_shape) -> tirx.PrimFunc:
    """The kernel of `spec` again, storing `epilogue` of its accumulator; `out_shape` (same element
    count) for kernels that may declare their output with another shape. Cached: parsing the TVMScript
    is most of the cost, and the same layer is rebuilt by every build of a model in a process (profiling,
    the search's measured choice); PrimFuncs are immutable, so modules can share them."""
    return _rebuild(json.dumps(spec, sort_keys=True), epilogue, channel, tuple(int(v) for v in out_shape))


@functools.lru_cache(maxsize=1024)
def _rebuild(spec_json: str, epilogue: Epilogue, channel: str, out_shape: tuple) -> tirx.PrimFunc:
    spec = json.loads(spec_json)
    kind, p = spec["kind"], dict(spec["params"])
    if kind == "gemm":
        p["tiling"] = GemmTiling(*p["tiling"])
        p["out_shape"] = tuple(out_shape)
        return gemm_func(p.pop("batch"), p.pop("m"), p.pop("n"), p.pop("k"), p.pop("tiling"), **p,
                         epilogue=epilogue, channel=channel)
    if kind == "direct_conv":
        return direct_conv_func(DirectConvGeometry(**p["geometry"]), GemmTiling(*p["tiling"]), p["dtype"],
                                epilogue=epilogue, channel=channel)
    if kind == "depthwise":
        shape = p.pop("data_shape")
        ks = p.pop("kernel_size")
        return depthwise_func(shape, ks, **p, epilogue=epilogue, channel=channel)
    if kind == "depthwise_u8s8":
        from .depthwise_vnni import depthwise_u8s8_func

        return depthwise_u8s8_func(p.pop("data_shape"), p.pop("kernel_size"), **p, epilogue=epilogue,
                                   channel=channel)
    raise ValueError(f"unknown kernel kind {kind!r}")

