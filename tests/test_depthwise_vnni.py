"""Depthwise conv on uint8 activations with AVX-512 VNNI quads (`tvm_mpq.kernels.depthwise_vnni`):
bit-exact against the NumPy int64 reference (strides, asymmetric padding, zero points, 3x3 to 7x7 taps,
row strips, odd widths, 8 and 16 lanes), through the Relax lowering, and with a fused requantize
epilogue against the same epilogue on the float32-FMA kernel. Runs where the machine has VNNI."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from test_epilogue import REQUANT_U8
from test_kernels_avx2 import TARGET_512, _build_and_run, _conv_ref, _conv_wl, needs_vnni
from tvm_mpq.kernels import depthwise_vnni as dv
from tvm_mpq.kernels import x86_avx2 as k
from tvm_mpq.transform import x86_avx2_lowering as low

DEV = tvm.cpu()


def _run(func, *arrays, out_shape, out_dtype):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET_512)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), DEV)
    lib.mod["main"](*args, out)
    return out.numpy()


def test_weight_quads_hold_each_filter_row_low_byte_first():
    w = np.arange(2 * 1 * 2 * 5, dtype=np.int64).reshape(2, 1, 2, 5) - 6  # 5 taps: two quads a row
    quads, corr = dv.pack_weight_quads(w.astype(np.int8), zero_point=3)
    b = quads.view(np.int8).reshape(2, 2, 2, 4)  # [c, ky, quad, byte]
    np.testing.assert_array_equal(b[..., 0, :], w[:, 0, :, :4])
    np.testing.assert_array_equal(b[..., 1, 0], w[:, 0, :, 4])
    assert not b[..., 1, 1:].any()  # missing taps are zero
    np.testing.assert_array_equal(corr, list(3 * w.reshape(2, -1).sum(axis=1)) + [3])  # then the zero point
    with pytest.raises(ValueError, match="int8 values"):
        dv.pack_weight_quads(np.full((1, 1, 3, 3), 200), 0)


def test_geometries_without_a_quad_kernel_are_refused():
    assert dv.supports((3, 3), (2, 2), (1, 1)) and dv.supports((7, 8), (1, 1), (1, 1))
    assert not dv.supports((3, 9), (1, 1), (1, 1))   # a filter row of more than two quads
    assert not dv.supports((3, 3), (1, 3), (1, 1))   # column stride 3
    assert not dv.supports((3, 3), (1, 1), (1, 2))   # column dilation
    with pytest.raises(ValueError, match="column stride 1 or 2"):
        dv.depthwise_u8s8_func((1, 2, 8, 8), (3, 3), strides=(1, 3), padding=(1, 1, 1, 1), dilation=(1, 1),
                               data_zero_point=0)
    with pytest.raises(ValueError, match="zero point"):
        dv.depthwise_u8s8_func((1, 2, 8, 8), (3, 3), strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1),
                               data_zero_point=300)


@needs_vnni
@pytest.mark.parametrize("c,h,w,kh,kw,stride,pad,zp", [
    (3, 9, 11, 3, 3, (1, 1), (1, 1, 1, 1), 7),
    (5, 12, 13, 3, 3, (2, 2), (0, 0, 1, 1), 128),   # TF-style asymmetric padding, odd width
    (4, 15, 15, 5, 5, (2, 2), (2, 2, 2, 2), 0),     # two quads a filter row, stride 2
    (2, 7, 7, 5, 5, (1, 1), (2, 2, 2, 2), 255),
    (3, 20, 20, 3, 3, (1, 1), (0, 0, 0, 0), 3),     # no padding
    (2, 17, 37, 3, 3, (1, 1), (1, 1, 1, 1), 9),     # 17 output rows: the last row group runs past the output
    (2, 30, 6, 5, 5, (2, 2), (1, 2, 2, 1), 1),      # rows in groups of 8, more rows than columns
    (2, 9, 70, 7, 7, (1, 1), (3, 3, 3, 3), 40),     # 7 taps; rows of more than 64 bytes
    (1, 6, 9, 1, 4, (1, 2), (0, 1, 0, 2), 5),       # a 1x4 filter: one full quad
    (1, 113, 113, 3, 3, (2, 2), (0, 0, 1, 1), 11),  # EfficientNet's block-1 shape: plane in row strips
    (2, 20, 112, 3, 3, (1, 1), (1, 1, 1, 1), 0),    # zero point 0 on 112-wide rows (a constant 0 pad hung TVM)
])
@pytest.mark.parametrize("lanes", [8, 16])
def test_quad_depthwise_bit_exact(c, h, w, kh, kw, stride, pad, zp, lanes):
    rng = np.random.default_rng(c * 100 + h + kw)
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
    wt = rng.integers(-128, 128, (c, 1, kh, kw)).astype(np.int8)
    quads, corr = dv.pack_weight_quads(wt, zp)
    func = dv.depthwise_u8s8_func(x.shape, (kh, kw), strides=stride, padding=pad, dilation=(1, 1),
                                  data_zero_point=zp, lanes=lanes)
    ref = _conv_ref(x, wt, zp, stride, pad, groups=c)
    np.testing.assert_array_equal(_run(func, x, quads, corr, out_shape=ref.shape, out_dtype="int32"), ref)


@needs_vnni
def test_row_strips_give_the_whole_plane_result(monkeypatch):
    """A plane built one output-row group at a time (forced by a zero L1 budget) gives the same sums."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (1, 3, 30, 21)).astype(np.uint8)
    wt = rng.integers(-127, 128, (3, 1, 5, 5)).astype(np.int8)
    quads, corr = dv.pack_weight_quads(wt, 17)
    ref = _conv_ref(x, wt, 17, (1, 1), (2, 2, 2, 2), groups=3)
    monkeypatch.setattr(k, "L1_PLANE_BYTES", 0)
    func = dv.depthwise_u8s8_func(x.shape, (5, 5), strides=(1, 1), padding=(2, 2, 2, 2), dilation=(1, 1),
                                  data_zero_point=17, lanes=16)
    np.testing.assert_array_equal(_run(func, x, quads, corr, out_shape=ref.shape, out_dtype="int32"), ref)


@needs_vnni
def test_requantize_epilogue_matches_the_float_kernel_epilogue():
    """The same requantize epilogue (divide, bias, ReLU6-like clip, next quantize to uint8) stored by the quad
    kernel and by the float32-FMA kernel: identical bytes (both accumulators are the same exact integers)."""
    rng = np.random.default_rng(2)
    c, h, w = 6, 14, 14
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
    wt = rng.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    epi = REQUANT_U8  # divide, bias correction, bias, ReLU6, the next quantize to uint8
    params = np.concatenate([rng.uniform(3000, 9000, c), rng.uniform(-1, 1, c), rng.uniform(-2, 2, c)])
    params = params.astype(np.float32)
    geo = dict(strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1))
    quads, corr = dv.pack_weight_quads(wt, 9)
    got = _run(dv.depthwise_u8s8_func(x.shape, (3, 3), **geo, data_zero_point=9, epilogue=epi, lanes=16),
               x, quads, corr, params, out_shape=(1, c, h, w), out_dtype="uint8")
    want = _run(k.depthwise_func(x.shape, (3, 3), **geo, data_dtype="uint8", data_zero_point=9,
                                 out_dtype="int32", epilogue=epi, lanes=16),
                x, wt.reshape(-1).astype(np.float32), params, out_shape=(1, c, h, w), out_dtype="uint8")
    np.testing.assert_array_equal(got, want)


@needs_vnni
@pytest.mark.parametrize("size,stride", [(15, 1), (29, 2), (7, 1)])
def test_lowered_depthwise_takes_the_quad_kernel(size, stride):
    """Through Relax with `vnni`: uint8 depthwise convs take the quad kernel and give the int64 sums;
    with `depthwise_vnni.ENABLED` off they take the float32-FMA kernel, same sums."""
    rng = np.random.default_rng(size)
    x = rng.integers(0, 256, (1, 10, size, size)).astype(np.uint8)
    w = rng.integers(-127, 128, (10, 1, 3, 3)).astype(np.int8)
    wl = _conv_wl(x.shape, w.shape, (stride, stride), (1, 1, 1, 1), groups=10)
    ref = _conv_ref(x, w, 77, (stride, stride), (1, 1, 1, 1), groups=10)
    names = []

    def emit(bb, xv):
        out = low.conv2d(bb, xv, w, wl, zero_point=77, lanes=16, vnni=True)
        names.extend(gv.name_hint for gv in bb.get().functions if "depthwise" in gv.name_hint)
        return out

    np.testing.assert_array_equal(_build_and_run(emit, [x], 16), ref)
    assert names == ["avx512_vnni_depthwise"]
    dv.ENABLED = False
    try:
        names.clear()
        np.testing.assert_array_equal(_build_and_run(emit, [x], 16), ref)
        assert names == ["avx2_depthwise"]
    finally:
        dv.ENABLED = True


def test_quad_kernel_spec_rebuilds_with_an_epilogue():
    """The epilogue pass rebuilds a kernel from its spec: the quad kernel's spec has the depthwise geometry."""
    func = dv.depthwise_u8s8_func((1, 4, 10, 12), (3, 3), strides=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1),
                                  data_zero_point=5, lanes=8)
    spec = k.kernel_spec(func)
    assert spec["kind"] == "depthwise_u8s8"
    assert k.epilogue_geometry(spec) == (4, 5 * 6, ("row",), "int32", False)
    rebuilt = k.rebuild_with_epilogue(spec, REQUANT_U8, "row", (1, 4, 5, 6))
    assert [p.name for p in rebuilt.params] == ["X_nd", "Wq", "ZC", "P", "Y_nd"]  # P: the epilogue operands
