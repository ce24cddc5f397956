"""Integer compute definitions in TVM TE for the quantized operators.

These are target-independent tensor expressions meant for `relax.BlockBuilder.emit_te`
(or `te.create_prim_func` in tests). Every kernel returns the raw integer accumulator;
requantization (scale, bias) happens outside.

Zero-point handling
- Weights are symmetric (zero point 0, see `tvm_mpq.numerics`), so only activations carry a
  zero point. Each activation element is widened to the accumulator dtype and its zero point
  subtracted *inside* the reduction: ``acc += (x - zp) * w``. This is exact for any zero point
  and needs no per-channel correction term.
- With ``zero_point_in_reduction=False`` (the CUDA library's 8-bit GEMMs: `qdense`, `qconv2d_nchw`) the
  reduction is the plain ``acc += x * w`` that int8 tensor cores and ``dp4a`` compute, and the caller
  subtracts ``zp * sum(w)`` per output channel (`zero_point_offsets`) afterwards. The integers are the
  same: padded positions still hold the zero point, so their ``zp * w`` terms cancel in it. With
  ``int8_operand`` too, uint8 data is first moved to int8 (``x - 128``, zero point ``zp - 128``: the
  caller subtracts ``(zp - 128) * sum(w)``) in a stage of the same kernel, so the reduction is int8 x int8.
- Convolution padding: padded positions must contribute exactly 0 in the real domain, i.e. the
  quantized value at a padded position must equal the zero point. The conv either guards the
  load with `te.if_then_else` inside the reduction (padded term is 0) or pads explicitly with the
  zero point (then ``zp - zp = 0``); see `qconv2d_nchw`'s ``pad_mode``.
- int4 weights arrive packed two per byte exactly as `numerics.pack_int4` stores them and are
  unpacked inside the reduction expression (shift, mask, subtract 8); no unpacked weight
  tensor is ever materialized.
- Accumulation: `acc_dtype`, int32 for 8-bit activations; for 16-bit ones the lowering passes int32 where the
  weights bound every sum within it (`numerics.accumulator_dtype`), else int64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tvm import te, tirx

__all__ = ["qconv2d_nchw", "qdense", "qbatch_matmul", "unpack_int4_expr", "zero_point_offsets"]

# Padding strategy of qconv2d_nchw: "guard" keeps the padding inside the reduction
# (te.if_then_else), "explicit" materializes a padded input filled with the zero point.
DEFAULT_CONV_PAD_MODE = "explicit"  # measured faster untuned (LLVM, 2 cores): 0.13 vs 0.33 ms depthwise


def _check_bits(weight_bits: int) -> None:
    if weight_bits not in (4, 8):
        raise ValueError(f"weight_bits must be 4 or 8, got {weight_bits}")


def unpack_int4_expr(packed: te.Tensor, row, k, dtype: str = "int32"):
    """Signed int4 element `k` of row `row` of a `numerics.pack_int4` packed tensor, as `dtype`.

    Byte k // 2 holds element k in its low nibble when k is even, high nibble when odd,
    offset by +8.
    """
    byte = packed[row, tirx.floordiv(k, 2)].astype("int32")
    shift = tirx.floormod(k, 2) * 4
    nibble = tirx.bitwise_and(tirx.shift_right(byte, shift), tirx.const(15, "int32"))
    return (nibble - tirx.const(8, "int32")).astype(dtype)


def _as_int8(data: te.Tensor, zero_point: int) -> tuple[te.Tensor, int]:
    """uint8 data moved to int8 (x - 128) and its zero point with it."""
    if str(data.dtype) != "uint8":
        raise ValueError(f"int8_operand needs uint8 data, got {data.dtype}")
    moved = te.compute(data.shape, lambda *i: (data[i].astype("int16") - tirx.const(128, "int16")).astype("int8"),
                       name="to_int8", tag="elemwise")
    return moved, int(zero_point) - 128


def _act(x, zero_point: int, acc_dtype: str):
    """Widen an activation element to the accumulator dtype and remove its zero point."""
    v = x.astype(acc_dtype)
    if zero_point:
        v = v - tirx.const(int(zero_point), acc_dtype)
    return v


def qconv2d_nchw(
    data: te.Tensor,
    weight: te.Tensor,
    *,
    data_zero_point: int,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    weight_bits: int,
    kernel_shape: Sequence[int],
    acc_dtype: str = "int32",
    pad_mode: str | None = None,
    zero_point_in_reduction: bool = True,
    int8_operand: bool = False,
) -> te.Tensor:
    """Quantized 2-D convolution, NCHW activations, OIHW (or packed int4) weights.

    out[n, o, y, x] = sum_{c, kh, kw} (data_pad[n, g*Cg + c, y*sh + kh*dh, x*sw + kw*dw] - zp)
                      * w[o, c, kh, kw]
    where g = o // (O // groups) and padded positions contribute 0. `padding` is
    (top, left, bottom, right). Output [N, O, OH, OW] in `acc_dtype`. With `zero_point_in_reduction`
    False the sum is of data_pad * w (explicit padding with the zero point), less zp * sum(w) to the
    caller (see the module docstring); `int8_operand` (with it) moves uint8 data to int8 first.
    """
    _check_bits(weight_bits)
    pad_mode = pad_mode or DEFAULT_CONV_PAD_MODE
    if not zero_point_in_reduction:
        pad_mode = "explicit"  # a guarded load would add 0, not zp * w, at padded positions
        if int8_operand:
            data, data_zero_point = _as_int8(data, data_zero_point)
    elif int8_operand:
        raise ValueError("int8_operand needs zero_point_in_reduction=False")
    if pad_mode not in ("guard", "explicit"):
        raise ValueError(f"pad_mode must be 'guard' or 'explicit', got {pad_mode!r}")
    n_, c_, h_, w_ = (int(v) for v in data.shape)
    o_, cg, kh_, kw_ = (int(v) for v in kernel_shape)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    groups = int(groups)
    if c_ % groups or o_ % groups:
        raise ValueError(f"channels ({c_} in, {o_} out) not divisible by groups={groups}")
    if cg != c_ // groups:
        raise ValueError(f"kernel_shape[1]={cg} != C // groups = {c_ // groups}")
    k_total = cg * kh_ * kw_
    if weight_bits == 8:
        expect = (o_, cg, kh_, kw_)
    else:
        expect = (o_, (k_total + 1) // 2)
    if tuple(int(v) for v in weight.shape) != expect:
        raise ValueError(f"weight shape {tuple(weight.shape)} != expected {expect} for {weight_bits}-bit weights")
    oh = (h_ + pt + pb - dh * (kh_ - 1) - 1) // sh + 1
    ow = (w_ + pl + pr - dw * (kw_ - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"empty conv output {oh}x{ow}")
    og = o_ // groups
    zp = int(data_zero_point)
    zp_sub = zp if zero_point_in_reduction else 0

    rc = te.reduce_axis((0, cg), name="rc")
    ry = te.reduce_axis((0, kh_), name="ry")
    rx = te.reduce_axis((0, kw_), name="rx")

    def wval(o, c, ky, kx):
        if weight_bits == 8:
            return weight[o, c, ky, kx].astype(acc_dtype)
        return unpack_int4_expr(weight, o, (c * kh_ + ky) * kw_ + kx, acc_dtype)

    has_pad = any((pt, pl, pb, pr))
    if pad_mode == "explicit" and has_pad:
        padded = te.compute(
            (n_, c_, h_ + pt + pb, w_ + pl + pr),
            lambda n, c, y, x: te.if_then_else(
                tirx.all(y >= pt, y < pt + h_, x >= pl, x < pl + w_),
                data[n, c, y - pt, x - pl],
                tirx.const(zp, data.dtype),
            ),
            name="qconv2d_pad",
            tag="injective,pad",
        )

        def fcompute(n, o, y, x):
            c = (o // og) * cg + rc if groups > 1 else rc
            v = padded[n, c, y * sh + ry * dh, x * sw + rx * dw]
            return te.sum(_act(v, zp_sub, acc_dtype) * wval(o, rc, ry, rx), axis=[rc, ry, rx])

    else:

        def fcompute(n, o, y, x):
            c = (o // og) * cg + rc if groups > 1 else rc
            iy = y * sh + ry * dh - pt
            ix = x * sw + rx * dw - pl
            term = _act(data[n, c, iy, ix], zp_sub, acc_dtype) * wval(o, rc, ry, rx)
            if has_pad:
                conds = []
                if pt:
                    conds.append(iy >= 0)
                if pb:
                    conds.append(iy < h_)
                if pl:
                    conds.append(ix >= 0)
                if pr:
                    conds.append(ix < w_)
                term = te.if_then_else(tirx.all(*conds), term, tirx.const(0, acc_dtype))
            return te.sum(term, axis=[rc, ry, rx])

    return te.compute(
        (n_, o_, oh, ow),
        fcompute,
        name="qconv2d_nchw",
        tag=f"qconv2d_nchw_w{weight_bits}",
        attrs={"weight_bits": weight_bits, "data_zero_point": zp, "groups": groups,
               **({} if zero_point_in_reduction else {"zero_point_in_reduction": 0})},
    )


def qdense(
    data: te.Tensor,
    weight: te.Tensor,
    *,
    data_zero_point: int,
    weight_bits: int,
    in_features: int,
    acc_dtype: str = "int32",
    zero_point_in_reduction: bool = True,
    int8_operand: bool = False,
) -> te.Tensor:
    """Quantized dense: out[m, n] = sum_k (data[m, k] - zp) * w[n, k], [M, N] in `acc_dtype`; with
    `zero_point_in_reduction` False, sum_k data[m, k] * w[n, k] (the caller subtracts zp * sum(w)), and
    with `int8_operand` too, sum_k (data[m, k] - 128) * w[n, k] (the caller subtracts (zp - 128) * sum(w)).

    `weight` is int8 [N, K] (weight_bits 8) or `pack_int4`-packed uint8 [N, ceil(K/2)] (4).
    """
    _check_bits(weight_bits)
    m_, k_ = (int(v) for v in data.shape)
    if k_ != int(in_features):
        raise ValueError(f"data has {k_} features, in_features={in_features}")
    n_ = int(weight.shape[0])
    expect_k = k_ if weight_bits == 8 else (k_ + 1) // 2
    if int(weight.shape[1]) != expect_k:
        raise ValueError(f"weight shape {tuple(weight.shape)} != ({n_}, {expect_k}) for {weight_bits}-bit weights")
    if int8_operand:
        if zero_point_in_reduction:
            raise ValueError("int8_operand needs zero_point_in_reduction=False")
        data, data_zero_point = _as_int8(data, data_zero_point)
    zp = int(data_zero_point)
    rk = te.reduce_axis((0, k_), name="rk")

    def wval(n, k):
        if weight_bits == 8:
            return weight[n, k].astype(acc_dtype)
        return unpack_int4_expr(weight, n, k, acc_dtype)

    return te.compute(
        (m_, n_),
        lambda m, n: te.sum(_act(data[m, rk], zp if zero_point_in_reduction else 0, acc_dtype) * wval(n, rk),
                            axis=rk),
        name="qdense",
        tag=f"qdense_w{weight_bits}",
        attrs={"weight_bits": weight_bits, "data_zero_point": zp,
               **({} if zero_point_in_reduction else {"zero_point_in_reduction": 0})},
    )


def zero_point_offsets(weight, zero_point: int) -> np.ndarray:
    """int32 [O]: zp * sum(w[o]) over each output channel of an int8 weight [O, ...], the term that
    `zero_point_in_reduction=False` leaves for the caller to subtract."""
    w = np.asarray(weight)
    if w.dtype != np.int8:
        raise ValueError(f"zero_point_offsets needs the int8 weight, got {w.dtype}")
    sums = w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    return (int(zero_point) * sums).astype(np.int32)


def qbatch_matmul(
    a: te.Tensor,
    b: te.Tensor,
    *,
    a_zero_point: int,
    b_zero_point: int,
    acc_dtype: str = "int32",
) -> te.Tensor:
    """Activation x activation matmul: a [*B, M, K] @ b [*B, K, N] → [*B, M, N] in `acc_dtype`.

    out[..., m, n] = sum_k (a[..., m, k] - za) * (b[..., k, n] - zb). Both operands 2-D to 4-D
    with identical batch dims.
    """
    ash = [int(v) for v in a.shape]
    bsh = [int(v) for v in b.shape]
    if not (2 <= len(ash) <= 4) or len(ash) != len(bsh):
        raise ValueError(f"qbatch_matmul needs 2-D..4-D operands of equal rank, got {ash} and {bsh}")
    if ash[:-2] != bsh[:-2] or ash[-1] != bsh[-2]:
        raise ValueError(f"incompatible shapes {ash} @ {bsh}")
    k_ = ash[-1]
    za, zb = int(a_zero_point), int(b_zero_point)
    rk = te.reduce_axis((0, k_), name="rk")

    def fcompute(*idx):
        batch, m, n = idx[:-2], idx[-2], idx[-1]
        av = _act(a[(*batch, m, rk)], za, acc_dtype)
        bv = _act(b[(*batch, rk, n)], zb, acc_dtype)
        return te.sum(av * bv, axis=rk)

    return te.compute(
        (*ash[:-1], bsh[-1]),
        fcompute,
        name="qbatch_matmul",
        tag="qbatch_matmul",
        attrs={"a_zero_point": za, "b_zero_point": zb},
    )
