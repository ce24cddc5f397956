"""Bit-exact checks of the TE integer kernels against NumPy int64 references."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import te  # noqa: E402

from tvm_mpq import numerics as nm  # noqa: E402
from tvm_mpq.kernels.quantized import qbatch_matmul, qconv2d_nchw, qdense, zero_point_offsets  # noqa: E402

TARGET = None


def _target():
    global TARGET
    if TARGET is None:
        TARGET = tvm.target.Target({"kind": "llvm"})
    return TARGET


def _run(inputs: list, arrays: list[np.ndarray], out) -> np.ndarray:
    mod = tvm.IRModule({"main": te.create_prim_func([*inputs, out])})
    ex = tvm.compile(mod, target=_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    res = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], str(out.dtype)), dev)
    ex(*args, res)
    return res.numpy()


# ----------------------------------------------------------------------------- references


def ref_conv(x, w, zp, strides, padding, dilation, groups):
    """NumPy int64 grouped conv of (x - zp) with zero padding in the real domain."""
    x = x.astype(np.int64) - zp
    w = w.astype(np.int64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr), np.int64)
    xp[:, :, pt : pt + h, pl : pl + wd] = x
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), np.int64)
    for oc in range(o):
        g = oc // og
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, g * cg : (g + 1) * cg, ky * dh : ky * dh + sh * (oh - 1) + 1 : sh,
                           kx * dw : kx * dw + sw * (ow - 1) + 1 : sw]
                out[:, oc] += np.einsum("ncyx,c->nyx", patch, w[oc, :, ky, kx])
    return out


def _weights(rng, shape, bits):
    q, _ = nm.quantize_weight(rng.standard_normal(shape).astype(np.float32), bits)
    packed = q if bits == 8 else nm.pack_int4(q)
    if bits == 4:
        assert np.array_equal(nm.unpack_int4(packed, q.shape), q)
    return q, packed


def _act(rng, shape, dtype):
    lo, hi = nm.act_qrange(8 if dtype == "uint8" else 16)
    return rng.integers(lo, hi + 1, size=shape, endpoint=False).astype(dtype)


# ----------------------------------------------------------------------------- conv

CONV_CASES = {
    # name: (N, C, H, W, O, KH, KW, strides, padding, dilation, groups, bits, act dtype, acc, zp)
    "odd_3x3_s2_asym_pad_dil2": (1, 3, 7, 7, 5, 3, 3, (2, 2), (0, 1, 1, 2), (2, 2), 1, 8, "uint8", "int32", 117),
    "depthwise_5x5_s2": (1, 6, 9, 9, 6, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 6, 8, "uint8", "int32", 3),
    "grouped_g2": (2, 4, 6, 5, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2, 8, "uint8", "int32", 250),
    "pointwise_1x1": (1, 8, 5, 6, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, 8, "uint8", "int32", 128),
    "int4_odd_k27": (1, 3, 7, 7, 5, 3, 3, (1, 1), (1, 0, 2, 1), (1, 1), 1, 4, "uint8", "int32", 77),
    "int4_depthwise": (1, 6, 8, 8, 6, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 6, 4, "uint8", "int32", 0),
    "int4_grouped_odd": (1, 6, 5, 5, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2, 4, "uint8", "int32", 9),
    "int16_acc64": (1, 64, 6, 6, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 8, "int16", "int64", -32768),
    "int16_w4_acc64": (1, 640, 4, 4, 2, 3, 3, (1, 1), (0, 1, 1, 0), (1, 1), 1, 4, "int16", "int64", 32767),
}


@pytest.mark.parametrize("pad_mode", ["explicit", "guard"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_qconv2d_bit_exact(case, pad_mode):
    n, c, h, wd, o, kh, kw, strides, padding, dilation, groups, bits, adt, acc, zp = CONV_CASES[case]
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    cg = c // groups
    q, wnp = _weights(rng, (o, cg, kh, kw), bits)
    if adt == "int16":
        # values at the int16 extremes: (x - zp) up to ±65535, * 127 * 576 terms overflows int32
        # values at the int16 extremes, opposite the zero point, and weights mostly at +qmax:
        # |x - zp| ~ 65535, so the sums overflow int32 and need the int64 accumulator
        far = 32767 if zp < 0 else -32768
        step = -1 if far > 0 else 1
        x = (far + step * rng.integers(0, 3, size=(n, c, h, wd))).astype(np.int16)
        qmax = nm.weight_qmax(bits)
        q = np.where(rng.random(q.shape) < 0.97, qmax, rng.integers(-qmax, qmax + 1, size=q.shape)).astype(np.int8)
        wnp = q if bits == 8 else nm.pack_int4(q)
    else:
        x = _act(rng, (n, c, h, wd), adt)
    data = te.placeholder(x.shape, adt, name="data")
    weight = te.placeholder(wnp.shape, str(wnp.dtype), name="weight")
    out = qconv2d_nchw(
        data, weight, data_zero_point=zp, strides=strides, padding=padding, dilation=dilation,
        groups=groups, weight_bits=bits, kernel_shape=(o, cg, kh, kw), acc_dtype=acc, pad_mode=pad_mode,
    )
    assert str(out.dtype) == acc
    got = _run([data, weight], [x, wnp], out)
    ref = ref_conv(x, q, zp, strides, padding, dilation, groups)
    if acc == "int64":
        assert np.abs(ref).max() > 2**31, "case should overflow int32"
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.astype(np.int64), ref)


def test_qconv2d_default_signature():
    """The keyword API without pad_mode, as the lowering calls it."""
    rng = np.random.default_rng(1)
    x = _act(rng, (1, 2, 4, 4), "uint8")
    q, wnp = _weights(rng, (3, 2, 3, 3), 8)
    data = te.placeholder(x.shape, "uint8", name="data")
    weight = te.placeholder(wnp.shape, "int8", name="weight")
    out = qconv2d_nchw(data, weight, data_zero_point=10, strides=(1, 1), padding=(1, 1, 1, 1),
                       dilation=(1, 1), groups=1, weight_bits=8, kernel_shape=(3, 2, 3, 3))
    assert str(out.dtype) == "int32" and "qconv2d" in out.op.tag
    got = _run([data, weight], [x, wnp], out)
    np.testing.assert_array_equal(got, ref_conv(x, q, 10, (1, 1), (1, 1, 1, 1), (1, 1), 1))


def test_qconv2d_rejects_bad_weight_shape():
    data = te.placeholder((1, 3, 5, 5), "uint8")
    weight = te.placeholder((4, 3, 3, 3), "int8")
    with pytest.raises(ValueError):
        qconv2d_nchw(data, weight, data_zero_point=0, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                     groups=1, weight_bits=4, kernel_shape=(4, 3, 3, 3))


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize(
    "m,k,n,bits,adt,acc,zp",
    [
        (3, 13, 5, 8, "uint8", "int32", 131),
        (4, 27, 6, 4, "uint8", "int32", 200),
        (2, 1, 3, 4, "uint8", "int32", 1),
        (2, 33, 3, 4, "int16", "int64", -1234),
        (2, 20, 3, 8, "int16", "int64", 0),
    ],
)
def test_qdense_bit_exact(m, k, n, bits, adt, acc, zp):
    rng = np.random.default_rng(k * 31 + bits)
    x = _act(rng, (m, k), adt)
    q, wnp = _weights(rng, (n, k), bits)
    data = te.placeholder(x.shape, adt, name="data")
    weight = te.placeholder(wnp.shape, str(wnp.dtype), name="weight")
    out = qdense(data, weight, data_zero_point=zp, weight_bits=bits, in_features=k, acc_dtype=acc)
    got = _run([data, weight], [x, wnp], out)
    ref = (x.astype(np.int64) - zp) @ q.astype(np.int64).T
    np.testing.assert_array_equal(got.astype(np.int64), ref)


# ----------------------------------------------------------------------------- zero point after the reduction


@pytest.mark.parametrize("int8_operand", [False, True])
@pytest.mark.parametrize("case", ["odd_3x3_s2_asym_pad_dil2", "pointwise_1x1"])
@pytest.mark.parametrize("pad_mode", ["explicit", "guard"])
def test_qconv2d_zero_point_after_reduction(case, pad_mode, int8_operand):
    """The "cuda" library's form, sum(x * w) - zp * sum(w), gives the same integers as sum((x - zp) * w),
    padded borders included (the padding holds the zero point either way; a requested guard mode becomes
    explicit, since a guarded load would add 0 instead of zp * w). With `int8_operand` the data is read as
    x - 128 and the zero point is zp - 128, the padding included."""
    n, c, h, wd, o, kh, kw, strides, padding, dilation, groups, bits, adt, acc, zp = CONV_CASES[case]
    rng = np.random.default_rng(7)
    q, wnp = _weights(rng, (o, c, kh, kw), 8)
    x = _act(rng, (n, c, h, wd), "uint8")
    data = te.placeholder(x.shape, "uint8", name="data")
    weight = te.placeholder(wnp.shape, "int8", name="weight")
    out = qconv2d_nchw(data, weight, data_zero_point=zp, strides=strides, padding=padding, dilation=dilation,
                       groups=1, weight_bits=8, kernel_shape=(o, c, kh, kw), pad_mode=pad_mode,
                       zero_point_in_reduction=False, int8_operand=int8_operand)
    raw = _run([data, weight], [x, wnp], out).astype(np.int64)
    moved_zp = zp - 128 if int8_operand else zp
    if moved_zp:  # the zero point is really left out of the sum (pointwise_1x1's 128 moves to 0)
        assert not np.array_equal(raw, ref_conv(x, q, zp, strides, padding, dilation, 1))
    offsets = zero_point_offsets(q, moved_zp).astype(np.int64).reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(raw - offsets, ref_conv(x, q, zp, strides, padding, dilation, 1))


def test_qdense_zero_point_after_reduction():
    rng = np.random.default_rng(11)
    x = _act(rng, (6, 40), "uint8")
    q, wnp = _weights(rng, (9, 40), 8)
    data = te.placeholder(x.shape, "uint8", name="data")
    weight = te.placeholder(wnp.shape, "int8", name="weight")
    out = qdense(data, weight, data_zero_point=97, weight_bits=8, in_features=40, zero_point_in_reduction=False)
    raw = _run([data, weight], [x, wnp], out).astype(np.int64)
    np.testing.assert_array_equal(raw, x.astype(np.int64) @ q.astype(np.int64).T)
    ref = (x.astype(np.int64) - 97) @ q.astype(np.int64).T
    np.testing.assert_array_equal(raw - zero_point_offsets(q, 97), ref)
    # int8 operand: the reduction reads x - 128 (int8), the zero point moves to 97 - 128
    out8 = qdense(data, weight, data_zero_point=97, weight_bits=8, in_features=40, zero_point_in_reduction=False,
                  int8_operand=True)
    raw8 = _run([data, weight], [x, wnp], out8).astype(np.int64)
    np.testing.assert_array_equal(raw8, (x.astype(np.int64) - 128) @ q.astype(np.int64).T)
    np.testing.assert_array_equal(raw8 - zero_point_offsets(q, 97 - 128), ref)
    with pytest.raises(ValueError, match="zero_point_in_reduction=False"):
        qdense(data, weight, data_zero_point=97, weight_bits=8, in_features=40, int8_operand=True)
    assert zero_point_offsets(q, 97).dtype == np.int32
    with pytest.raises(ValueError, match="int8 weight"):
        zero_point_offsets(wnp.astype(np.int16), 1)


# ----------------------------------------------------------------------------- batch matmul


@pytest.mark.parametrize(
    "batch,m,k,n,adt,acc,za,zb",
    [
        ((), 5, 7, 3, "uint8", "int32", 12, 240),
        ((3,), 5, 9, 4, "uint8", "int32", 128, 7),
        ((2, 3), 4, 6, 5, "uint8", "int32", 255, 0),
        ((2,), 3, 11, 2, "int16", "int64", -300, 4000),
    ],
)
def test_qbatch_matmul_bit_exact(batch, m, k, n, adt, acc, za, zb):
    rng = np.random.default_rng(len(batch) * 100 + k)
    a = _act(rng, (*batch, m, k), adt)
    b = _act(rng, (*batch, k, n), adt)
    ta = te.placeholder(a.shape, adt, name="a")
    tb = te.placeholder(b.shape, adt, name="b")
    out = qbatch_matmul(ta, tb, a_zero_point=za, b_zero_point=zb, acc_dtype=acc)
    got = _run([ta, tb], [a, b], out)
    ref = np.matmul(a.astype(np.int64) - za, b.astype(np.int64) - zb)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.astype(np.int64), ref)
