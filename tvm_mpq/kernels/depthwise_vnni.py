"""Depthwise conv on uint8 activations with AVX-512 VNNI: four taps of a filter row in one `vpdpbusd`.

The float32 depthwise kernel (`x86_avx2.depthwise_func`) converts every uint8 input to float and spends
one FMA per tap and output vector. Here the taps stay integer: `vpdpbusd` multiplies four u8 by four s8
and adds the four products into an int32 lane (no saturation), so with the input laid out as *quads* —
int32 lane j holding the four padded input bytes under output column j's filter row, columns j*SW ..
j*SW+3 — one instruction applies a whole 3-tap (or 4-tap) filter row to 8 or 16 output columns: a 3x3
filter is 3 instructions per output vector instead of 9 FMAs, on operands of a quarter of the bytes.
Filter rows of 5..8 taps take two quads (the second starts 4 columns on).

Per (image, channel) task the padded rows are expanded once into a quad plane (uint32 [rows, Wq]): the
row's bytes are read 64 at a time under a mask (the zero point outside the input row), `vpermd` gives
each 128-bit lane the dwords its four quads read and `vpshufb` picks each quad's four bytes — four
instructions per 16 quads, AVX-512 F/BW only (no VBMI byte permute, so Cascade Lake runs it too).
The raw uint8 values enter the dot
products, the padding being the zero point itself, so the sum is exactly sum((x - zp) * w) + zp * sum(w);
the kernel subtracts zp * sum(w) of the channel (`zc`, packed with the weights) and yields the same
int32 accumulator as the float kernel and the generic one. As the float kernel, it computes blocks of up
to 8 output rows (independent accumulators hide the instruction latency) and builds a plane larger than
L1 one row group at a time.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from tvm.script import tirx as T

from . import x86_avx2 as k
from .epilogue import Epilogue

ENABLED = True  # False: uint8 depthwise convs run the float32 FMA kernel (benchmarks compare the two)


def supports(kernel_size, strides, dilation) -> bool:
    """Whether a depthwise conv of this geometry has a quad kernel: filter rows of at most 8 taps, no column
    dilation, column stride 1 or 2 (a quad of the second tap group starts 4 columns on: whole quads)."""
    return int(kernel_size[1]) <= 8 and int(dilation[1]) == 1 and int(strides[1]) in (1, 2)


def pack_weight_quads(weight: np.ndarray, zero_point: int) -> tuple[np.ndarray, np.ndarray]:
    """(quads int32 [C * KH * NQ], zc int32 [C + 1]) of a depthwise weight [C, 1, KH, KW] of int8 values:
    quad (c, ky, g) holds taps 4g..4g+3 of filter row ky as bytes (low byte first, missing taps 0); zc[c] is
    zp * channel c's weight sum, zc[C] the zero point itself (the padding value)."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[1] != 1:
        raise ValueError(f"depthwise weight must be [C, 1, KH, KW], got {list(w.shape)}")
    if w.min() < -128 or w.max() > 127:
        raise ValueError("depthwise quad weights must be int8 values")
    c, _, kh, kw = w.shape
    nq = -(-kw // 4)
    taps = np.zeros((c, kh, nq * 4), np.int8)
    taps[:, :, :kw] = w[:, 0]
    quads = np.ascontiguousarray(taps).view(np.int32).reshape(-1)  # little-endian: tap 4g is the low byte
    corr = int(zero_point) * w.reshape(c, -1).astype(np.int64).sum(axis=1)
    return quads.copy(), np.append(corr, int(zero_point)).astype(np.int32)


def depthwise_u8s8_func(data_shape, kernel_size, *, strides, padding, dilation, data_zero_point: int,
                        out_dtype: str = "int32", epilogue: Optional[Epilogue] = None, channel: str = "row",
                        lanes: int = 16):
    """PrimFunc ``main(data, quads, zc, out)`` of a depthwise conv of uint8 data [N, C, H, W] with the
    weights of `pack_weight_quads`; out [N, C, OH, OW] int32 = sum((x - zp) * w), or, with `epilogue`
    (per-channel operands by channel), ``main(data, quads, zc, P, out)`` storing the epilogue's dtype.
    `lanes` 16 (zmm) or 8 (ymm, AVX512-VL) output columns a vector."""
    n_, c_, h_, w_ = (int(v) for v in data_shape)
    kh, kw = (int(v) for v in kernel_size)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    if not supports(kernel_size, strides, dilation):
        raise ValueError(f"no quad depthwise kernel for {kh}x{kw} taps, strides {sh}x{sw}, dilation {dh}x{dw}: "
                         "filter rows of at most 8 taps, column stride 1 or 2, no column dilation")
    if lanes not in k.LANES:
        raise ValueError(f"vector lanes must be one of {k.LANES}, got {lanes}")
    if not 0 <= int(data_zero_point) <= 255:
        raise ValueError(f"uint8 zero point must be in 0..255, got {data_zero_point}")
    zp = int(data_zero_point)
    oh = (h_ + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w_ + pl + pr - (kw - 1) - 1) // sw + 1
    nq = -(-kw // 4)
    xblocks = -(-ow // lanes)
    ry = k.depthwise_row_block(oh)
    ygroups = -(-oh // ry)
    hp = h_ + pt + pb
    # quads a plane row holds: whole column blocks, plus the second tap group's offset (4 columns)
    wq = k._ceil(xblocks * lanes + (nq - 1) * 4 // sw, lanes) * lanes
    hpa = max(hp, (ygroups * ry - 1) * sh + (kh - 1) * dh + 1)
    hg = (ry - 1) * sh + (kh - 1) * dh + 1
    strips = k.DEPTHWISE_STRIPS and ygroups > 1 and hpa * wq * 4 > k.L1_PLANE_BYTES
    plane_rows = hg if strips else hpa
    zp_quad = zp * 0x01010101

    store_t, n_par, out_vec, _ = k._outputs(epilogue, "int32", c_, channel, plain_dtype=out_dtype, lanes=lanes)
    i32, u32, i8, u8v = f"int32x{lanes}", f"uint32x{lanes}", f"int8x{4 * lanes}", f"uint8x{4 * lanes}"
    dpbusd = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"
    permd = "llvm.x86.avx512.permvar.si.512" if lanes == 16 else "llvm.x86.avx2.permd"
    pshufb = "llvm.x86.avx512.pshuf.b.512" if lanes == 16 else "llvm.x86.avx2.pshuf.b"

    def tap_row(yg, v, ky):  # plane row of output row yg * ry + v at tap row ky (a strip starts at its group)
        return v * sh + ky * dh if strips else (yg * ry + v) * sh + ky * dh

    def chunk_mask(base):  # lanes of the padded-row bytes base.. that hold input columns
        cols = T.ramp(base - pl, 1, 4 * lanes)
        return T.And(cols >= T.broadcast(0, 4 * lanes), cols < T.broadcast(w_, 4 * lanes))

    def quads(X, ZC, task, y, qv):
        # quads qv*lanes.. of padded row y: the row's bytes from qv*lanes*SW on, one (masked) load with the
        # zero point outside the input row, then `vpermd` gives each 128-bit lane the dwords its four quads
        # read and `vpshufb` picks each quad's four bytes (in-lane byte indices i*SW + t)
        base = qv * lanes * sw
        # (the zero point is read from ZC, not a constant: with a constant 0 there TVM 0.27's compile never ends)
        chunk = T.Select(chunk_mask(base), T.masked_load(u8v, X, T.ramp((task * h_ + y) * w_ + base - pl, 1, 4 * lanes),
                                                          chunk_mask(base)),
                         T.broadcast(T.Cast("uint8", ZC[c_]), 4 * lanes))
        lane = T.ramp(0, 1, lanes)
        spread = T.call_llvm_pure_intrin(i32, permd, T.reinterpret(i32, chunk), (lane // 4) * sw + lane % 4)
        byte = T.ramp(0, 1, 4 * lanes) % 16
        picks = T.Cast(i8, (byte // 4) * sw + byte % 4)
        return T.reinterpret(u32, T.call_llvm_pure_intrin(i8, pshufb, T.reinterpret(i8, spread), picks))

    @T.macro
    def quad_row(plane, X, ZC, task, y, prow):  # input row y → quads of plane row prow
        for qv in range(wq // lanes):
            plane[T.ramp(prow * wq + qv * lanes, 1, lanes)] = quads(X, ZC, task, y, qv)

    @T.macro
    def fill_plane(plane, X, ZC, task, row0):  # padded rows row0.. into the plane (all, or a group's hg)
        for yr in range(plane_rows):
            if row0 + yr >= pt and row0 + yr < pt + h_:
                quad_row(plane, X, ZC, task, row0 + yr - pt, yr)
            else:
                for qv in range(wq // lanes):
                    plane[T.ramp(yr * wq + qv * lanes, 1, lanes)] = T.broadcast(T.uint32(zp_quad), lanes)

    # the accumulators less zp * sum(w) of the channel, through the epilogue
    store_rows = k.depthwise_row_store(oh, ow, ry, lanes, out_vec, lambda v, ZC, c: v - T.broadcast(ZC[c], lanes))

    @T.macro
    def body(X_nd, Wq, ZC, P, Y_nd):
        X = T.decl_buffer((n_ * c_ * h_ * w_,), "uint8", data=X_nd.data)
        Y = T.decl_buffer((n_ * c_ * oh * ow,), store_t, data=Y_nd.data)
        for task in T.parallel(n_ * c_):
            plane = T.alloc_buffer((plane_rows * wq,), "uint32", scope="global")
            acc = T.alloc_buffer((ry * lanes,), "int32", scope="global")
            edge = T.alloc_buffer((lanes,), store_t, scope="global")
            c = task % c_
            if not strips:
                fill_plane(plane, X, ZC, task, 0)
            for yg in range(ygroups):
                if strips:
                    fill_plane(plane, X, ZC, task, yg * ry * sh)
                for xb in range(xblocks):
                    for v in T.unroll(ry):
                        acc[T.ramp(v * lanes, 1, lanes)] = T.broadcast(T.int32(0), lanes)
                    for ky in T.unroll(kh):
                        for g in T.unroll(nq):
                            for v in T.unroll(ry):
                                acc[T.ramp(v * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                                    i32, dpbusd, acc[T.ramp(v * lanes, 1, lanes)],
                                    T.reinterpret(i8, plane[T.ramp(tap_row(yg, v, ky) * wq + xb * lanes
                                                                   + g * 4 // sw, 1, lanes)]),
                                    T.reinterpret(i8, T.broadcast(Wq[(c * kh + ky) * nq + g], lanes)))
                    store_rows(Y, P, ZC, acc, edge, task, c, yg, xb)

    if epilogue is None:
        @T.prim_func
        def main(X_nd: T.Buffer((n_, c_, h_, w_), "uint8"), Wq: T.Buffer((c_ * kh * nq,), "int32"),
                 ZC: T.Buffer((c_ + 1,), "int32"), Y_nd: T.Buffer((n_, c_, oh, ow), store_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(X_nd, Wq, ZC, None, Y_nd)
    else:
        @T.prim_func
        def main(X_nd: T.Buffer((n_, c_, h_, w_), "uint8"), Wq: T.Buffer((c_ * kh * nq,), "int32"),
                 ZC: T.Buffer((c_ + 1,), "int32"), P: T.Buffer((n_par,), "float32"),
                 Y_nd: T.Buffer((n_, c_, oh, ow), store_t)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            body(X_nd, Wq, ZC, P, Y_nd)

    return k._with_spec(main, "depthwise_u8s8", data_shape=[n_, c_, h_, w_], kernel_size=[kh, kw],
                        strides=[sh, sw], padding=[pt, pl, pb, pr], dilation=[dh, dw],
                        data_zero_point=zp, out_dtype=out_dtype, lanes=lanes)
