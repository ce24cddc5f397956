"""Relax emission of layers on the x86 AVX2 / AVX-512 kernels (`tvm_mpq.kernels.x86_avx2`).

Each function emits the packing of the runtime operand (a TE compute, which FuseOps fuses with the
quantize in front of it), the packed constant operand (packed here, at compile time) and one `call_tir`
of the GEMM or depthwise PrimFunc. It returns the raw accumulator with the shape and dtype the generic
kernels return (int32 for 8-bit activations, float32 for FP32 layers), so requantization is shared.
`lanes` 16 (the "x86_avx512" library) builds the GEMMs and the depthwise convs of rows of 16 or more
columns on 512-bit vectors; the direct conv (first layers) stays on 8 lanes. `vnni` (the "x86_avx512_vnni"
library) runs 1x1 convs and dense layers with uint8 activations on the u8s8 GEMM (AVX-512 VNNI
`vpdpbusd` on raw uint8 activations and int8 weights, the zero point subtracted per output channel):
half the operand bytes of the int16 pairs and twice the multiply-adds per instruction, and depthwise convs
with uint8 activations on `vpdpbusd` too (`tvm_mpq.kernels.depthwise_vnni`: four taps of a filter row an
instruction). It also runs dense layers and 1x1 convs with 16-bit activations on the u8s8 GEMM
(`dense_a16`, `conv1x1_a16`): the int16 values, offset to uint16, split into a high and a low byte plane,
one register tile per plane, the two sums combined exactly in int64 as the kernel stores.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..graph import Workload
from ..kernels import depthwise_vnni
from ..kernels import x86_avx2 as k

# op support of the fast path: conv2d with groups 1 or depthwise, dense, activation x activation matmul


def supports(wl: Workload, act_dtype: str) -> bool:
    """Whether the AVX2 kernels implement this workload with activations of `act_dtype`."""
    if act_dtype not in ("uint8", "float32"):
        return False  # 16-bit activations need int64 accumulation: generic kernels
    if wl.op == "conv2d":
        if len(wl.input_shape) != 4:
            return False
        c = wl.input_shape[1]
        o, cg = wl.weight_shape[0], wl.weight_shape[1]
        if wl.groups == 1:
            return act_dtype == "float32" or cg * wl.weight_shape[2] * wl.weight_shape[3] <= k.MAX_EXACT_K
        return wl.groups == c == o and cg == 1  # depthwise
    if wl.op == "linear":
        return act_dtype == "float32" or wl.weight_shape[1] <= k.MAX_EXACT_K
    if wl.op == "matmul":
        return len(wl.input_shape) >= 2 and (act_dtype == "float32" or wl.input_shape[-1] <= k.MAX_EXACT_K)
    return False


def _call(bb, func, name: str, args, shape, dtype, tag: str = ""):
    # named by the module, not by TVMScript; `tag` prefixes the name so a profiler can tell the layer
    gv = bb.add_func(func.without_attr("global_symbol"), f"{tag}_{name}" if tag else name)
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(shape, dtype)))


PAIRS_MAX_COLUMNS = 256  # up to this many columns the hand-vectorized pair packing beats the TE one (see below)


def _pack_panels(bb, x, zero_point: int, tiling, dtype: str, conv_input: bool = False):
    """B panels of a runtime operand x [..., K, N] (or a 1x1-conv input [N, C, H, W], columns H*W).

    uint8 → int16 pairs: FuseOps would fuse the requantize in front into the packing, and that fused
    function compiles to scalar code (the two-row interleave defeats the vectorizer: 3-5x slower than the
    two passes apart). So the packing is opaque to fusion: the requantize stays its own vectorized
    elementwise pass, and the packing reads uint8 — as a TE compute, which LLVM vectorizes well on wide
    feature maps, or, up to `PAIRS_MAX_COLUMNS` columns, as the hand-vectorized `pack_pairs_func` (2-3x
    faster there: the TE loop nest is short). float32 panels are contiguous rows and fuse as they are."""
    shape = [int(v) for v in x.ty.shape]
    if conv_input:
        name, compute = "pack_conv_panels", lambda t: k.pack_conv_panels(
            t, zero_point, tiling.nr, kernel=(1, 1), strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), dtype=dtype,
            lanes=tiling.lanes)
    else:
        name, compute = "pack_panels", lambda t: k.pack_panels(t, zero_point, tiling.nr, dtype=dtype,
                                                               lanes=tiling.lanes)
    if dtype != "int16" or x.ty.dtype != "uint8":
        return bb.emit_te(compute, x, primfunc_name_hint=name)
    cols = shape[2] * shape[3] if conv_input else shape[-1]
    if cols <= PAIRS_MAX_COLUMNS and UNFUSED_PACKING:
        zp = relax.const(np.array([zero_point], np.int16))
        return _call(bb, k.pack_pairs_func(shape, tiling.nb, conv_input=conv_input), "avx2_pack_pairs", [x, zp],
                     k.pack_pairs_shape(shape, tiling.nb, conv_input=conv_input), "int16")
    return _unfused_te(bb, compute, x, "pack_pairs")


UNFUSED_PACKING = True  # False: the requantize fuses into the int16 packing (benchmarks/epilogues.py compares)


def _unfused_te(bb, compute, x, name: str):
    """`compute(x)` (a TE packing of the uint8 tensor x) as a function FuseOps fuses nothing into
    (``op_pattern`` kOpaque): see `_pack_panels` for why the requantize must stay apart."""
    from tvm import te

    if not UNFUSED_PACKING:
        return bb.emit_te(compute, x, primfunc_name_hint=name)
    src = te.placeholder([int(v) for v in x.ty.shape], x.ty.dtype, name="x")
    out = compute(src)
    func = te.create_prim_func([src, out]).with_attr("op_pattern", 8)
    return _call(bb, func, name, [x], [int(v) for v in out.shape], out.dtype)


def _pack_rows(bb, x, zero_point: int, tiling, dtype: str):
    """A rows of a runtime operand x [..., M, K]; uint8 → int16 pairs unfused from the requantize (as
    `_pack_panels`: the pair interleave of a fused function compiles to scalar code)."""
    if dtype == "int16" and x.ty.dtype == "uint8":
        return _unfused_te(bb, lambda t: k.pack_rows(t, zero_point, tiling.mr, dtype=dtype), x, "pack_rows_u8")
    return bb.emit_te(k.pack_rows, x, zero_point, tiling.mr, dtype=dtype)


def row_lanes(ow: int, lanes: int) -> int:
    """Vector width of a depthwise or direct conv with output rows of `ow` columns on a library of `lanes`:
    the widest that needs fewer vectors per row than 8 lanes (a 14-wide row: one 16-lane vector instead of
    two 8-lane ones), else 8 (a 7-wide row fits one 8-lane vector; 16 lanes would only read more)."""
    return lanes if -(-ow // lanes) < -(-ow // k.VEC) else k.VEC


def conv2d(bb, x, weight: np.ndarray, wl: Workload, *, zero_point: int = 0, dtype: str = "int16", tag: str = "",
           lanes: int = k.VEC, vnni: bool = False):
    """Conv (groups 1 or depthwise) of x [N, C, H, W] (uint8 for dtype int16, float32 for float32) with a
    constant weight [O, C/g, KH, KW] (integer values, or float32) → accumulator [N, O, OH, OW]."""
    n, c = wl.input_shape[0], wl.input_shape[1]
    o, cg, kh, kw = wl.weight_shape
    oh, ow = wl.output_shape[2], wl.output_shape[3]
    out_dtype = "int32" if dtype == "int16" else "float32"
    if wl.groups != 1:  # depthwise
        if (vnni and dtype == "int16" and x.ty.dtype == "uint8" and depthwise_vnni.ENABLED
                and depthwise_vnni.supports((kh, kw), wl.strides, wl.dilation)):
            func = depthwise_vnni.depthwise_u8s8_func(wl.input_shape, (kh, kw), strides=wl.strides,
                                                      padding=wl.padding, dilation=wl.dilation,
                                                      data_zero_point=zero_point, lanes=row_lanes(ow, lanes))
            quads, corr = depthwise_vnni.pack_weight_quads(weight, zero_point)
            return _call(bb, func, "avx512_vnni_depthwise", [x, relax.const(quads), relax.const(corr)],
                         (n, o, oh, ow), out_dtype, tag)
        func = k.depthwise_func(wl.input_shape, (kh, kw), strides=wl.strides, padding=wl.padding,
                                dilation=wl.dilation, data_dtype="uint8" if dtype == "int16" else "float32",
                                data_zero_point=zero_point, out_dtype=out_dtype,
                                lanes=row_lanes(ow, lanes))
        w = relax.const(np.ascontiguousarray(weight.reshape(o, kh * kw), dtype=np.float32).reshape(-1))
        return _call(bb, func, "avx2_depthwise", [x, w], (n, o, oh, ow), out_dtype, tag)
    if (kh, kw) != (1, 1) or tuple(wl.strides) != (1, 1) or any(wl.padding):
        # KxK / strided / padded: direct conv on a once-packed input (no im2col copies)
        g = k.direct_conv_geometry(wl.input_shape, wl.weight_shape, wl.strides, wl.padding, wl.dilation)
        tiling = k.choose_row_tiling(g, lanes=row_lanes(ow, lanes))
        a = relax.const(k.pack_direct_conv_weight(weight, tiling.mr, dtype))
        if dtype == "int16" and x.ty.dtype == "uint8":  # unfused from the requantize, as `_pack_panels`
            xp = _unfused_te(bb, lambda t: k.pack_conv_input(t, zero_point, g, tiling.nb, dtype=dtype), x,
                             "pack_conv_input_u8")
        else:
            xp = bb.emit_te(lambda t: k.pack_conv_input(t, zero_point, g, tiling.nb, dtype=dtype), x,
                            primfunc_name_hint="pack_conv_input")
        return _call(bb, k.direct_conv_func(g, tiling, dtype), "avx2_direct_conv", [a, xp], (n, o, oh, ow),
                     out_dtype, tag)
    cols = oh * ow  # pointwise: a GEMM over the flattened pixels
    if vnni and dtype == "int16" and x.ty.dtype == "uint8":
        tiling = k.choose_tiling(n, o, cols, lanes=16)
        w2d = weight.reshape(o, -1).astype(np.int8)
        a = relax.const(k.pack_weight_quad_rows(w2d, tiling.mr))
        shape = [int(v) for v in x.ty.shape]
        b = _call(bb, k.pack_quads_func(shape, tiling.nb, conv_input=True), "avx512_pack_quads", [x],
                  k.pack_quads_shape(shape, tiling.nb, conv_input=True), "uint8")
        zc = relax.const(k.zero_point_correction(w2d, zero_point))
        func = k.gemm_func(n, o, cols, cg * kh * kw, tiling, dtype="u8s8", a_batched=False, b_batched=True,
                           out_shape=(n, o, oh, ow), unsigned="b")
        return _call(bb, func, "avx512_vnni_gemm", [a, b, zc], (n, o, oh, ow), out_dtype, tag)
    tiling = k.choose_tiling(n, o, cols, lanes=lanes)
    a = relax.const(k.pack_weight_rows(weight.reshape(o, -1), tiling.mr, dtype))
    b = _pack_panels(bb, x, zero_point, tiling, dtype, conv_input=True)
    func = k.gemm_func(n, o, cols, cg * kh * kw, tiling, dtype=dtype, a_batched=False, b_batched=True,
                       out_shape=(n, o, oh, ow))
    return _call(bb, func, "avx2_gemm", [a, b], (n, o, oh, ow), out_dtype, tag)


def dense(bb, x, weight: np.ndarray, *, zero_point: int = 0, dtype: str = "int16", tag: str = "",
          lanes: int = k.VEC, vnni: bool = False):
    """x [M, K] @ weight[N, K].T with a constant weight → accumulator [M, N]."""
    m, kk = (int(v) for v in x.ty.shape)
    nn = int(weight.shape[0])
    out_dtype = "int32" if dtype == "int16" else "float32"
    if vnni and dtype == "int16" and x.ty.dtype == "uint8":
        tiling = k.choose_tiling(1, m, nn, lanes=16)
        w = weight.astype(np.int8)
        a = _call(bb, k.pack_quad_rows_func(m, kk, tiling.mr), "avx512_pack_quad_rows", [x],
                  (1, -(-m // tiling.mr) * tiling.mr, -(-kk // 4)), "int32")
        b = relax.const(k.pack_weight_quad_panels(w, tiling.nr))
        zc = relax.const(k.zero_point_correction(w, zero_point))
        func = k.gemm_func(1, m, nn, kk, tiling, dtype="u8s8", a_batched=True, b_batched=False, out_shape=(m, nn),
                           unsigned="a")
        return _call(bb, func, "avx512_vnni_gemm", [a, b, zc], (m, nn), out_dtype, tag)
    tiling = k.choose_tiling(1, m, nn, lanes=lanes)
    a = _pack_rows(bb, x, zero_point, tiling, dtype)
    b = relax.const(k.pack_weight_panels(weight, tiling.nr, dtype, lanes=lanes))
    func = k.gemm_func(1, m, nn, kk, tiling, dtype=dtype, a_batched=True, b_batched=False, out_shape=(m, nn))
    return _call(bb, func, "avx2_gemm", [a, b], (m, nn), out_dtype, tag)


# ------------------------------------------------- 16-bit activations on the u8s8 GEMM (AVX-512 VNNI)
#
# An int16 activation q offset by 2^15 is a uint16 u = 256 h + l with bytes h, l in [0, 255], so
#     sum_k (q - zp) w = 256 sum_k h w + sum_k l w - (zp + 2^15) sum_k w.
# The "u16s8" GEMM (`kernels.x86_avx2.gemm_func`) keeps one register tile per byte plane, each an exact int32
# for K <= MAX_EXACT_K (as the uint8 path's), against the same weights, and forms the sum above in int64 as it
# stores — the accumulator the generic 16-bit kernels return, so the result is bit for bit theirs (and the
# simulator's), and the requantize after it becomes the kernel's epilogue (`transform.fuse_epilogues`). Two
# vpdpbusd per four k: the multiply-adds of vpdpwssd on int16 pairs, without its int32 overflow past ~500 k.

A16_OFFSET = 1 << 15
A16_PLANES = True  # False: 16-bit activations on the generic int64 kernels (benchmarks/epilogues.py compares)


def supports_a16(wl: Workload) -> bool:
    """Layers the VNNI library runs with 16-bit activations: dense layers and plain 1x1 convs."""
    if not A16_PLANES:
        return False
    if wl.op == "linear":
        return wl.weight_shape[1] <= k.MAX_EXACT_K
    if wl.op == "conv2d" and len(wl.input_shape) == 4 and wl.groups == 1:
        return (tuple(wl.weight_shape[2:]) == (1, 1) and tuple(wl.strides) == (1, 1) and not any(wl.padding)
                and tuple(wl.dilation) == (1, 1) and wl.weight_shape[1] <= k.MAX_EXACT_K)
    return False


def _byte_planes(bb, xq):
    """int16 x [B, *S] → uint8 [2B, *S]: the high bytes of x + 2^15 (batches 0..B-1), then the low bytes.
    One pass, kept apart from the ops in front (`_unfused_te`): fused, every op before the quantize (a
    GELU, say) would run once per plane."""
    from tvm import te, tirx

    def planes(x):
        batch = int(x.shape[0])

        def byte(b, *idx):
            u = x(b % batch, *idx).astype("int32") + A16_OFFSET
            return tirx.Select(b < batch, u >> 8, u & 255).astype("uint8")
        return te.compute((2 * batch, *x.shape[1:]), byte, name="byte_planes")

    return _unfused_te(bb, planes, xq, "byte_planes")


def supports_depthwise_a16(wl: Workload) -> bool:
    """Depthwise convs the x86 libraries run with 16-bit activations: those their uint8 kernels take."""
    return A16_PLANES and wl.op == "conv2d" and wl.groups > 1 and supports(wl, "uint8")


def depthwise_a16(bb, xq, weight: np.ndarray, wl: Workload, *, zero_point: int, tag: str = "", lanes: int = k.VEC,
                  vnni: bool = False):
    """Depthwise conv of int16 x [N, C, H, W] on the uint8 depthwise kernel, once per byte plane: with
    x + 2^15 = 256 * hi + lo and the padding value zp + 2^15 = 256 * hp + lp,
    sum((x - zp) * w) = 256 * sum((hi - hp) * w) + sum((lo - lp) * w), each plane's sum being what the uint8
    kernel computes with zero point hp or lp. Exact in int32 (and in the float32 kernel): a plane's sum is at
    most 64 taps of 255 * 127, 2^21, and the combined one 2^29."""
    from tvm import te

    pad = int(zero_point) + A16_OFFSET

    def plane(shift: int):
        def compute(x):
            return te.compute(x.shape, lambda *i: (((x(*i).astype("int32") + A16_OFFSET) >> shift) & 255)
                              .astype("uint8"), name=f"byte_plane{shift}")
        return _unfused_te(bb, compute, xq, "high_bytes" if shift else "low_bytes")

    high = conv2d(bb, plane(8), weight, wl, zero_point=pad >> 8, tag=tag, lanes=lanes, vnni=vnni)
    # untagged: a layer has one tagged kernel call, the calls after it up to the next layer's count with it
    # (`measure.in_model.layer_segments`)
    low = conv2d(bb, plane(0), weight, wl, zero_point=pad & 255, lanes=lanes, vnni=vnni)
    return bb.emit(relax.op.add(relax.op.left_shift(high, relax.const(8, "int32")), low))


def dense_a16(bb, xq, weight: np.ndarray, *, zero_point: int, tag: str = ""):
    """int16 x [M, K] @ int8-valued weight[N, K].T → int64 accumulator [M, N] (see `A16_OFFSET`)."""
    m, kk = (int(v) for v in xq.ty.shape)
    nn = int(weight.shape[0])
    tiling = k.choose_tiling(1, m, nn, lanes=16, max_tile=k.U16S8_MAX_TILE)
    w = weight.astype(np.int8)
    planes = bb.emit(relax.op.reshape(xq, (1, m, kk)))  # a view: the planes come out [2, M, K]
    a = _call(bb, k.pack_quad_rows_func(m, kk, tiling.mr, planes=2), "avx512_pack_quad_rows",
              [_byte_planes(bb, planes)], (2, -(-m // tiling.mr) * tiling.mr, -(-kk // 4)), "int32")
    b = relax.const(k.pack_weight_quad_panels(w, tiling.nr))
    zc = relax.const(k.zero_point_correction(w, zero_point + A16_OFFSET, "int64"), "int64")
    func = k.gemm_func(1, m, nn, kk, tiling, dtype="u16s8", a_batched=True, b_batched=False, out_shape=(m, nn),
                       unsigned="a")
    return _call(bb, func, "avx512_vnni_gemm_a16", [a, b, zc], (m, nn), "int64", tag)


def conv1x1_a16(bb, xq, weight: np.ndarray, wl: Workload, *, zero_point: int, tag: str = ""):
    """1x1 conv of int16 x [N, C, H, W] with an int8-valued weight [O, C, 1, 1] → int64 accumulator."""
    n = wl.input_shape[0]
    o, c = wl.weight_shape[0], wl.weight_shape[1]
    oh, ow = wl.output_shape[2], wl.output_shape[3]
    shape = [2 * n, c, oh, ow]  # the planes, plane-major: a batch of 2N
    planes = _byte_planes(bb, xq)
    tiling = k.choose_tiling(n, o, oh * ow, lanes=16, max_tile=k.U16S8_MAX_TILE)
    w2d = weight.reshape(o, -1).astype(np.int8)
    a = relax.const(k.pack_weight_quad_rows(w2d, tiling.mr))
    b = _call(bb, k.pack_quads_func(shape, tiling.nb, conv_input=True), "avx512_pack_quads", [planes],
              k.pack_quads_shape(shape, tiling.nb, conv_input=True), "uint8")
    zc = relax.const(k.zero_point_correction(w2d, zero_point + A16_OFFSET, "int64"), "int64")
    func = k.gemm_func(n, o, oh * ow, c, tiling, dtype="u16s8", a_batched=False, b_batched=True,
                       out_shape=(n, o, oh, ow), unsigned="b")
    return _call(bb, func, "avx512_vnni_gemm_a16", [a, b, zc], (n, o, oh, ow), "int64", tag)


def matmul(bb, a, b, *, a_zero_point: int = 0, b_zero_point: int = 0, dtype: str = "int16", tag: str = "",
           lanes: int = k.VEC):
    """a [*B, M, K] @ b [*B, K, N] (both runtime tensors, same batch dims) → accumulator [*B, M, N]."""
    ash = [int(v) for v in a.ty.shape]
    bsh = [int(v) for v in b.ty.shape]
    if ash[:-2] != bsh[:-2]:
        raise ValueError(f"matmul batch dims differ: {ash} @ {bsh}")
    lead, m, kk, nn = ash[:-2], ash[-2], ash[-1], bsh[-1]
    batch = int(np.prod(lead)) if lead else 1
    out_dtype = "int32" if dtype == "int16" else "float32"
    tiling = k.choose_tiling(batch, m, nn, lanes=lanes)
    pa = _pack_rows(bb, a, a_zero_point, tiling, dtype)
    pb = _pack_panels(bb, b, b_zero_point, tiling, dtype)
    func = k.gemm_func(batch, m, nn, kk, tiling, dtype=dtype, a_batched=True, b_batched=True,
                       out_shape=(*lead, m, nn))
    return _call(bb, func, "avx2_gemm", [pa, pb], (*lead, m, nn), out_dtype, tag)
