"""x86 AVX2 / AVX-512 kernels: bit-exact against NumPy int64 references (odd shapes, zero points, padding,
strides), float32 paths against NumPy float64, and the lowering through Relax on conv / dense / matmul
layers. The 16-lane (AVX-512) variants run where this machine has AVX-512 and are skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_mpq.graph import Workload
from tvm_mpq.kernels import host_runs, kernel_library
from tvm_mpq.kernels import x86_avx2 as k
from tvm_mpq.transform import x86_avx2_lowering as low

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})
TARGET_512 = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
DEV = tvm.cpu()
LANES = [8, pytest.param(16, marks=pytest.mark.skipif(not host_runs("x86_avx512"), reason="no AVX-512 here"))]
needs_vnni = pytest.mark.skipif(not host_runs("x86_avx512_vnni"), reason="no AVX-512 VNNI here")


def _target(lanes: int):
    return TARGET if lanes == 8 else TARGET_512


def _run(func, *arrays, out_shape, out_dtype, lanes: int = 8):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=_target(lanes))
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), DEV)
    lib.mod["main"](*args, out)
    return out.numpy()


def _conv_ref(x, w, zp, stride, pad, dil=(1, 1), groups=1):
    """NumPy int64 NCHW conv of (x - zp) with w; padding contributes 0 (i.e. pads with the zero point)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    pt, pl, pb, pr = pad
    acc_t = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    xp = np.pad(x.astype(acc_t) - zp, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (h + pt + pb - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pl + pr - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), acc_t)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for ky in range(kh):
            for kx in range(kw):
                ys, xs = ky * dil[0], kx * dil[1]
                patch = xp[:, g * cg:(g + 1) * cg, ys:ys + stride[0] * oh:stride[0], xs:xs + stride[1] * ow:stride[1]]
                out[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, ky, kx].astype(acc_t))
    return out


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("batch,m,n,kk,a_batched,b_batched", [
    (1, 64, 200, 96, False, True),    # conv-like: shared weights, edge panel
    (1, 5, 13, 7, True, True),        # everything odd and smaller than a tile
    (3, 17, 29, 33, False, True),     # batch with shared A
    (2, 9, 3, 5, True, False),        # shared B (dense weights), N below one vector
    (1, 1, 40, 1281, True, False),    # GEMV, odd K
    (4, 12, 16, 8, True, True),       # exact tiles
])
def test_gemm_int16_bit_exact(batch, m, n, kk, a_batched, b_batched, lanes):
    rng = np.random.default_rng(batch * 1000 + m)
    a = rng.integers(-255, 256, (batch if a_batched else 1, m, kk))  # u8 - zp range
    b = rng.integers(-127, 128, (batch if b_batched else 1, kk, n))  # int8 weights
    tl = k.choose_tiling(batch, m, n, lanes=lanes)
    assert tl.nb == lanes * tl.nr
    func = k.gemm_func(batch, m, n, kk, tl, a_batched=a_batched, b_batched=b_batched)
    pa = np.concatenate([k.pack_weight_rows(a[i], tl.mr) for i in range(a.shape[0])])
    pb = np.concatenate([k.pack_weight_panels(np.ascontiguousarray(b[i].T), tl.nr, lanes=lanes)
                         for i in range(b.shape[0])])
    got = _run(func, pa, pb, out_shape=(batch, m, n), out_dtype="int32", lanes=lanes)
    ref = np.einsum("bmk,bkn->bmn", np.broadcast_to(a, (batch, m, kk)), np.broadcast_to(b, (batch, kk, n)))
    np.testing.assert_array_equal(got, ref)


@needs_vnni
@pytest.mark.parametrize("batch,m,n,kk,zp", [
    (1, 37, 53, 29, 7),       # odd everything: K not a multiple of 4, edge tiles both ways
    (2, 16, 64, 8, 0),        # exact tiles, batch 2
    (1, 5, 17, 3, 255),       # K below one group, largest zero point
    (1, 96, 200, 1283, 128),  # long K
])
def test_gemm_u8s8_bit_exact(batch, m, n, kk, zp):
    """The VNNI GEMM on raw uint8 activations equals sum((x - zp) * w) both ways round: activations as the
    vector operand (1x1 conv, unsigned "b") and as the broadcast rows (dense, unsigned "a")."""
    rng = np.random.default_rng(m * n + kk)
    x = rng.integers(0, 256, (batch, kk, n)).astype(np.uint8)
    w = rng.integers(-127, 128, (m, kk)).astype(np.int8)
    zc = k.zero_point_correction(w, zp)
    ref = np.einsum("mk,bkn->bmn", w.astype(np.int64), x.astype(np.int64) - zp)
    t = k.choose_tiling(batch, m, n, lanes=16)
    panels = _run(k.pack_quads_func(x.shape, t.nb), x, out_shape=k.pack_quads_shape(x.shape, t.nb),
                  out_dtype="uint8", lanes=16)
    got = _run(k.gemm_func(batch, m, n, kk, t, dtype="u8s8", a_batched=False, unsigned="b"),
               k.pack_weight_quad_rows(w, t.mr), panels, zc, out_shape=(batch, m, n), out_dtype="int32", lanes=16)
    np.testing.assert_array_equal(got, ref)
    rows = x[0].T.copy()  # [n, kk]: tokens x features
    t = k.choose_tiling(1, n, m, lanes=16)
    mp = -(-n // t.mr) * t.mr
    a = _run(k.pack_quad_rows_func(n, kk, t.mr), rows, out_shape=(1, mp, -(-kk // 4)), out_dtype="int32", lanes=16)
    got = _run(k.gemm_func(1, n, m, kk, t, dtype="u8s8", b_batched=False, unsigned="a"), a,
               k.pack_weight_quad_panels(w, t.nr), zc, out_shape=(1, n, m), out_dtype="int32", lanes=16)
    np.testing.assert_array_equal(got[0], ref[0].T)


def test_pack_quads_layout_and_u8s8_refusals():
    """The quad packing's layout on a small case (NumPy reference; built, not run, so any x86 host checks
    it), and the u8s8 GEMM refuses 8-lane tiles and unknown operand roles."""
    x = np.arange(5 * 6, dtype=np.uint8).reshape(1, 5, 6)
    ref = np.zeros((1, 1, 2, 16, 4), np.uint8)
    for q in range(2):
        for j in range(6):
            for t in range(4):
                if 4 * q + t < 5:
                    ref[0, 0, q, j, t] = x[0, 4 * q + t, j]
    assert k.pack_quads_shape(x.shape, 16) == ref.shape
    if host_runs("x86_avx512_vnni"):
        got = _run(k.pack_quads_func(x.shape, 16), x, out_shape=ref.shape, out_dtype="uint8", lanes=16)
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="16-lane"):
        k.gemm_func(1, 4, 16, 8, k.GemmTiling(4, 2), dtype="u8s8")
    with pytest.raises(ValueError, match="unsigned"):
        k.gemm_func(1, 4, 16, 8, k.GemmTiling(4, 1, 1, 16), dtype="u8s8", unsigned="c")
    with pytest.raises(ValueError, match="multiple of 16"):
        k.pack_quads_func((1, 4, 8), 8)


def test_gemm_int16_extremes_do_not_saturate():
    """Every product at its extreme (255 - 0) * (-127): vpmaddubsw would saturate, vpmaddwd must not."""
    m, n, kk = 4, 24, 64
    tl = k.choose_tiling(1, m, n)
    a = np.full((1, m, kk), 255)
    b = np.full((1, kk, n), -127)
    got = _run(k.gemm_func(1, m, n, kk, tl), k.pack_weight_rows(a[0], tl.mr),
               k.pack_weight_panels(np.ascontiguousarray(b[0].T), tl.nr), out_shape=(1, m, n), out_dtype="int32")
    assert (got == 255 * -127 * kk).all()


def test_gemm_refuses_k_beyond_exact_int32_and_unknown_lanes():
    with pytest.raises(ValueError, match="exact"):
        k.gemm_func(1, 4, 8, k.MAX_EXACT_K + 1, k.GemmTiling(4, 1))
    with pytest.raises(ValueError, match="lanes"):
        k.GemmTiling(4, 1, 1, 4)


@pytest.mark.parametrize("lanes", LANES)
def test_gemm_float32_matches_numpy(lanes):
    rng = np.random.default_rng(1)
    batch, m, n, kk = 2, 11, 37, 19
    a = rng.standard_normal((1, m, kk)).astype(np.float32)
    b = rng.standard_normal((batch, kk, n)).astype(np.float32)
    tl = k.choose_tiling(batch, m, n, lanes=lanes)
    pb = np.concatenate([k.pack_weight_panels(np.ascontiguousarray(b[i].T), tl.nr, "float32", lanes=lanes)
                         for i in range(batch)])
    got = _run(k.gemm_func(batch, m, n, kk, tl, dtype="float32", a_batched=False),
               k.pack_weight_rows(a[0], tl.mr, "float32"), pb, out_shape=(batch, m, n), out_dtype="float32",
               lanes=lanes)
    ref = np.einsum("mk,bkn->bmn", a[0].astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape,nb,zp,conv", [
    ((2, 7, 37), 16, 3, False),      # odd K (last pair half zero), padded columns, batch 2
    ((2, 3, 6, 40), 24, 255, False),  # two lead dims flattened into the batch
    ((1, 9, 5, 7), 16, 128, True),    # 1x1-conv input: columns are H*W
])
def test_pack_pairs_matches_the_te_packing(shape, nb, zp, conv):
    """The hand-vectorized pair packing equals `pack_panels` / `pack_conv_panels` (NumPy layout reference)."""
    rng = np.random.default_rng(len(shape) + nb)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    x3 = x.reshape(shape[0], shape[1], -1) if conv else x.reshape(-1, shape[-2], shape[-1])
    b, kk, n = x3.shape
    npan, k2 = -(-n // nb), -(-kk // 2)
    full = np.zeros((b, npan * nb, k2 * 2), np.int16)
    full[:, :n, :kk] = (x3.astype(np.int16) - zp).transpose(0, 2, 1)
    ref = full.reshape(b, npan, nb, k2, 2).transpose(0, 1, 3, 2, 4)
    got = _run(k.pack_pairs_func(shape, nb, conv_input=conv), x, np.array([zp], np.int16), out_shape=ref.shape,
               out_dtype="int16")
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="multiple of 8"):
        k.pack_pairs_func(shape, 12)


@pytest.mark.parametrize("c,h,w,ks,stride,pad,zp", [
    (3, 9, 11, 3, 1, (1, 1, 1, 1), 7),
    (5, 12, 13, 3, 2, (0, 0, 1, 1), 128),   # TF-style asymmetric padding, odd width
    (4, 15, 15, 5, 2, (2, 2, 2, 2), 0),
    (2, 7, 7, 5, 1, (2, 2, 2, 2), 255),
    (3, 20, 20, 3, 1, (0, 0, 0, 0), 3),     # no padding, width not a multiple of 8
    (2, 17, 37, 3, 1, (1, 1, 1, 1), 9),     # 17 output rows: the last row group runs past the output
    (2, 30, 6, 5, 2, (1, 2, 2, 1), 1),      # rows in groups of 8, more rows than columns
])
@pytest.mark.parametrize("lanes", LANES)
def test_depthwise_int_bit_exact(c, h, w, ks, stride, pad, zp, lanes):
    rng = np.random.default_rng(c * 100 + h)
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
    wt = rng.integers(-127, 128, (c, 1, ks, ks)).astype(np.int8)
    func = k.depthwise_func(x.shape, (ks, ks), strides=(stride, stride), padding=pad, dilation=(1, 1),
                            data_dtype="uint8", data_zero_point=zp, out_dtype="int32", lanes=lanes)
    ref = _conv_ref(x, wt, zp, (stride, stride), pad, groups=c)
    got = _run(func, x, wt.reshape(c, -1).astype(np.float32).reshape(-1), out_shape=ref.shape, out_dtype="int32",
               lanes=lanes)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("c,h,w,ks,stride,pad,dtype", [
    (2, 30, 6, 5, 2, (1, 2, 2, 1), "uint8"),     # rows in groups of 8, 5x5 stride 2: strips overlap
    (2, 17, 37, 3, 1, (1, 1, 1, 1), "uint8"),    # the last group runs past the output
    (3, 20, 20, 5, 1, (2, 2, 2, 2), "float32"),  # 5x5 over rows of two vectors: float keeps the plane path
    (1, 113, 113, 3, 2, (0, 0, 1, 1), "uint8"),  # EfficientNet's block-1 shape: strips without forcing
])
@pytest.mark.parametrize("lanes", LANES)
def test_depthwise_built_in_row_strips_is_exact(c, h, w, ks, stride, pad, dtype, lanes, monkeypatch):
    """A plane built one output-row group at a time (forced here by a tiny L1 budget, except for the last
    shape, whose plane exceeds the real one) gives the integer reference exactly and float32 NumPy's result."""
    if h < 100:
        monkeypatch.setattr(k, "L1_PLANE_BYTES", 0)
    rng = np.random.default_rng(c * 7 + h)
    x = (rng.integers(0, 256, (1, c, h, w)).astype(np.uint8) if dtype == "uint8"
         else rng.standard_normal((1, c, h, w)).astype(np.float32))
    wt = rng.integers(-127, 128, (c, 1, ks, ks)).astype(np.int8)
    zp = 11 if dtype == "uint8" else 0
    func = k.depthwise_func(x.shape, (ks, ks), strides=(stride, stride), padding=pad, dilation=(1, 1),
                            data_dtype=dtype, data_zero_point=zp, out_dtype="float32", lanes=lanes)
    ref = _conv_ref(x.astype(np.int64) if dtype == "uint8" else x.astype(np.float64), wt, zp, (stride, stride), pad,
                    groups=c)
    got = _run(func, x, wt.reshape(-1).astype(np.float32), out_shape=ref.shape, out_dtype="float32", lanes=lanes)
    if dtype == "uint8":
        np.testing.assert_array_equal(got, ref.astype(np.float32))
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_depthwise_float32_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 10, 9)).astype(np.float32)
    wt = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    func = k.depthwise_func(x.shape, (3, 3), strides=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1),
                            data_dtype="float32", out_dtype="float32")
    ref = _conv_ref(x.astype(np.float64), wt.astype(np.float64), 0, (2, 2), (1, 1, 1, 1), groups=6)
    got = _run(func, x, wt.reshape(-1), out_shape=ref.shape, out_dtype="float32")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c,h,w,ks,stride,pad", [
    (3, 7, 7, 5, (1, 1), (2, 2, 2, 2)),      # 7-wide rows: one vector, taps past both edges
    (2, 14, 14, 3, (1, 1), (1, 1, 1, 1)),
    (2, 9, 37, 3, (2, 1), (0, 1, 2, 0)),     # row stride 2, asymmetric padding, rows of several vectors + tail
    (2, 12, 11, 5, (1, 1), (0, 3, 1, 1)),    # 5x5 on one vector, left padding wider than the taps' reach
    (3, 15, 29, 3, (2, 2), (0, 0, 1, 1)),    # column stride 2: pairs of vectors, even lanes
    (2, 14, 14, 5, (2, 2), (1, 1, 2, 2)),
    (2, 40, 37, 3, (2, 2), (1, 1, 1, 1)),    # stride 2 over rows of two vectors and a tail
])
@pytest.mark.parametrize("lanes", LANES)
def test_depthwise_float32_direct_reads_match_the_plane_kernel(c, h, w, ks, stride, pad, lanes):
    """The float32 depthwise that reads its input under lane masks (no padded plane) gives the plane kernel's
    results bit for bit, and NumPy's within float32 rounding (column stride 2 keeps the plane)."""
    rng = np.random.default_rng(c * 10 + h)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, 1, ks, ks)).astype(np.float32)
    ref = _conv_ref(x.astype(np.float64), wt.astype(np.float64), 0, stride, pad, groups=c)
    outs = {}
    try:
        for direct in (False, True):
            k.DEPTHWISE_DIRECT = direct
            func = k.depthwise_func(x.shape, (ks, ks), strides=stride, padding=pad, dilation=(1, 1),
                                    data_dtype="float32", out_dtype="float32", lanes=lanes)
            # the plane stays for 5x5 taps over rows of several vectors (where it measured faster)
            assert ("masked_load" in func.script()) == (direct and stride[1] == 1 and (ks <= 3 or ref.shape[-1] <= lanes))
            outs[direct] = _run(func, x, wt.reshape(-1), out_shape=ref.shape, out_dtype="float32", lanes=lanes)
    finally:
        k.DEPTHWISE_DIRECT = True
    np.testing.assert_array_equal(outs[True], outs[False])
    np.testing.assert_allclose(outs[True], ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- through Relax


def _build_and_run(emit, inputs, lanes: int = 8):
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, *params))
        bb.emit_func_output(out)
    from tvm_mpq.build import compile_module

    ex = compile_module(bb.get(), _target(lanes))
    vm = relax.VirtualMachine(ex, DEV)
    return vm["main"](*[tvm.runtime.tensor(a, DEV) for a in inputs]).numpy()


def _conv_wl(x_shape, w_shape, stride, pad, groups=1, dil=(1, 1)):
    n, c, h, w = x_shape
    o, _, kh, kw = w_shape
    oh = (h + pad[0] + pad[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + pad[1] + pad[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    return Workload("conv2d", tuple(x_shape), tuple(w_shape), (n, o, oh, ow), tuple(stride), tuple(pad),
                    tuple(dil), groups, False)


@pytest.mark.parametrize("x_shape,w_shape,stride,pad,dil", [
    ((1, 3, 17, 19), (8, 3, 3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),   # stem-like, strided, asymmetric pad
    ((1, 19, 9, 9), (13, 19, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),  # pointwise, odd channels
    ((2, 4, 10, 10), (6, 4, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),   # batch 2, dilation
    ((1, 3, 45, 45), (32, 3, 3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # rows of 23: two 16-lane vectors, a tail
])
@pytest.mark.parametrize("lanes", LANES)
def test_lowered_conv_int_bit_exact(x_shape, w_shape, stride, pad, dil, lanes):
    rng = np.random.default_rng(sum(x_shape))
    x = rng.integers(0, 256, x_shape).astype(np.uint8)
    w = rng.integers(-7, 8, w_shape).astype(np.int8)  # int4 values: W4A8 uses the same kernel
    zp = 37
    wl = _conv_wl(x_shape, w_shape, stride, pad, dil=dil)
    assert low.supports(wl, "uint8")
    got = _build_and_run(lambda bb, xv: low.conv2d(bb, xv, w, wl, zero_point=zp, lanes=lanes), [x], lanes)
    np.testing.assert_array_equal(got, _conv_ref(x, w, zp, stride, pad, dil))


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("size", [11, 29])  # conv / depthwise rows of 11 / 6 columns, 29 / 15
def test_lowered_conv_float32_and_depthwise(lanes, size):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 6, size, size)).astype(np.float32)
    w = rng.standard_normal((9, 6, 3, 3)).astype(np.float32)
    wl = _conv_wl(x.shape, w.shape, (1, 1), (1, 1, 1, 1))
    got = _build_and_run(lambda bb, xv: low.conv2d(bb, xv, w, wl, dtype="float32", lanes=lanes), [x], lanes)
    ref = _conv_ref(x.astype(np.float64), w.astype(np.float64), 0, (1, 1), (1, 1, 1, 1))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    wd = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    wl_dw = _conv_wl(x.shape, wd.shape, (2, 2), (1, 1, 1, 1), groups=6)
    got = _build_and_run(lambda bb, xv: low.conv2d(bb, xv, wd, wl_dw, dtype="float32", lanes=lanes), [x], lanes)
    ref = _conv_ref(x.astype(np.float64), wd.astype(np.float64), 0, (2, 2), (1, 1, 1, 1), groups=6)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_row_lanes_takes_16_where_it_needs_fewer_vectors():
    """A conv's output row takes 16-lane vectors where that needs fewer vectors than 8 lanes (9+ columns), 8
    where one 8-lane vector holds it, and 8 on an 8-lane library."""
    assert [low.row_lanes(ow, 16) for ow in (7, 8, 9, 14, 16, 56, 112)] == [8, 8, 16, 16, 16, 16, 16]
    assert low.row_lanes(112, 8) == 8


@needs_vnni
def test_lowered_vnni_conv_and_dense_bit_exact():
    """Through Relax with `vnni`: a 1x1 conv and a dense layer on the u8s8 GEMM, exactly the int64 sums."""
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (1, 19, 9, 9)).astype(np.uint8)
    w = rng.integers(-127, 128, (13, 19, 1, 1)).astype(np.int8)
    wl = _conv_wl(x.shape, w.shape, (1, 1), (0, 0, 0, 0))
    got = _build_and_run(lambda bb, xv: low.conv2d(bb, xv, w, wl, zero_point=200, lanes=16, vnni=True), [x], 16)
    np.testing.assert_array_equal(got, _conv_ref(x, w, 200, (1, 1), (0, 0, 0, 0)))
    xd = rng.integers(0, 256, (7, 45)).astype(np.uint8)
    wd = rng.integers(-127, 128, (30, 45)).astype(np.int8)
    got = _build_and_run(lambda bb, xv: low.dense(bb, xv, wd, zero_point=3, lanes=16, vnni=True), [xd], 16)
    np.testing.assert_array_equal(got, (xd.astype(np.int64) - 3) @ wd.T.astype(np.int64))


@pytest.mark.parametrize("lanes", LANES)
def test_lowered_dense_and_matmul_int_bit_exact(lanes):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (7, 45)).astype(np.uint8)
    w = rng.integers(-127, 128, (30, 45)).astype(np.int8)
    got = _build_and_run(lambda bb, xv: low.dense(bb, xv, w, zero_point=100, lanes=lanes), [x], lanes)
    np.testing.assert_array_equal(got, (x.astype(np.int64) - 100) @ w.T.astype(np.int64))
    a = rng.integers(0, 256, (2, 3, 9, 17)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 17, 11)).astype(np.uint8)
    got = _build_and_run(lambda bb, av, bv: low.matmul(bb, av, bv, a_zero_point=5, b_zero_point=250, lanes=lanes),
                         [a, b], lanes)
    np.testing.assert_array_equal(got, (a.astype(np.int64) - 5) @ (b.astype(np.int64) - 250))


def test_support_and_library_selection():
    assert kernel_library(TARGET) == "x86_avx2"
    assert kernel_library(TARGET_512) == "x86_avx512_vnni"
    assert kernel_library(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})) == "x86_avx512"
    assert kernel_library(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})) == "x86_avx512_vnni"
    assert kernel_library(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})) == "x86_avx2"
    assert kernel_library(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                             "mcpu": "cortex-a76"})) == "generic"
    grouped = _conv_wl((1, 8, 5, 5), (8, 2, 3, 3), (1, 1), (1, 1, 1, 1), groups=4)
    assert not low.supports(grouped, "uint8")          # grouped, not depthwise: generic kernels
    pw = _conv_wl((1, 8, 5, 5), (4, 8, 1, 1), (1, 1), (0, 0, 0, 0))
    assert low.supports(pw, "uint8") and low.supports(pw, "float32")
    assert not low.supports(pw, "int16")               # 16-bit activations need int64 accumulation


def _hand_written_funcs():
    t = k.choose_tiling(1, 24, 49)
    g = k.direct_conv_geometry((1, 8, 9, 9), (16, 8, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    return {
        "gemm": k.gemm_func(1, 24, 49, 40, t, dtype="int16", a_batched=False, b_batched=True, out_shape=(1, 24, 49)),
        "depthwise": k.depthwise_func((1, 8, 9, 9), (3, 3), strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1),
                                      data_dtype="uint8", data_zero_point=3),
        "direct_conv": k.direct_conv_func(g, k.choose_row_tiling(g)),
        "pack_pairs": k.pack_pairs_func((1, 40, 49), t.nb),
    }


@pytest.mark.parametrize("name", ["gemm", "depthwise", "direct_conv", "pack_pairs"])
def test_hand_written_kernels_carry_attributes_tvm_reads(name):
    """Their attributes use this TVM's names: the buffers reach LLVM as `noalias` (TVM 0.27 reads
    `tirx.noalias`; a misspelt key is ignored without a word and costs 10-30 % of a GEMM's speed), and
    MetaSchedule and dlight see them as scheduled (`tirx.is_scheduled`)."""
    func = _hand_written_funcs()[name]
    assert func.attrs["tirx.noalias"] and func.attrs["tirx.is_scheduled"]
    assert not [key for key in func.attrs.keys() if key.startswith("tir.")]
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), target=TARGET)
    ir = lib.inspect_source("ll")
    compute = [line for line in ir.splitlines() if line.startswith("define") and "@main_compute_(" in line]
    assert compute, "no separate compute function: TVM did not take the buffers as noalias"
    params = compute[0].split("(", 1)[1].split(")")[0].split(", ")
    assert all("noalias" in p for p in params if p.startswith("ptr")), compute[0]


@needs_vnni
@pytest.mark.parametrize("m,n,kk,zp", [
    (64, 200, 96, -32768),   # zero point at qmin: (x - zp) up to 65535
    (5, 13, 7, 1234),        # everything odd and smaller than a tile
    (24, 40, 1283, 32767),   # long K, zero point at qmax
])
def test_gemm_u16s8_two_planes_bit_exact(m, n, kk, zp):
    """The two-plane GEMM on int16 activations (high and low bytes of x + 2^15, one register tile each)
    returns sum((x - zp) * w) in int64, both operand roles, extreme activations and zero points included."""
    from tvm_mpq.transform.x86_avx2_lowering import A16_OFFSET

    rng = np.random.default_rng(m * n + kk)
    x = rng.integers(-32768, 32768, (1, kk, n)).astype(np.int16)
    x[0, 0, :3] = [-32768, 32767, 0]
    w = rng.integers(-127, 128, (m, kk)).astype(np.int8)
    w[0, :] = 127
    ref = np.einsum("mk,bkn->bmn", w.astype(np.int64), x.astype(np.int64) - zp)
    zc = w.astype(np.int64).sum(axis=1) * (zp + A16_OFFSET)
    u = x.astype(np.int32) + A16_OFFSET
    planes = np.stack([u >> 8, u & 255]).astype(np.uint8)  # [2, 1, kk, n]
    # activations as the vector operand (a 1x1 conv: B panels of the two planes, plane-major)
    t = k.choose_tiling(1, m, n, lanes=16, max_tile=k.U16S8_MAX_TILE)
    b_in = planes.reshape(2, kk, n)
    panels = _run(k.pack_quads_func(b_in.shape, t.nb), b_in, out_shape=k.pack_quads_shape(b_in.shape, t.nb),
                  out_dtype="uint8", lanes=16)
    got = _run(k.gemm_func(1, m, n, kk, t, dtype="u16s8", a_batched=False, unsigned="b"),
               k.pack_weight_quad_rows(w, t.mr), panels, zc, out_shape=(1, m, n), out_dtype="int64", lanes=16)
    np.testing.assert_array_equal(got, ref)
    # activations as the broadcast rows (a dense layer: tokens x features)
    t = k.choose_tiling(1, n, m, lanes=16, max_tile=k.U16S8_MAX_TILE)
    rows = np.ascontiguousarray(planes[:, 0].transpose(0, 2, 1))  # [2, n, kk]
    mp = -(-n // t.mr) * t.mr
    a = _run(k.pack_quad_rows_func(n, kk, t.mr, planes=2), rows, out_shape=(2, mp, -(-kk // 4)), out_dtype="int32",
             lanes=16)
    got = _run(k.gemm_func(1, n, m, kk, t, dtype="u16s8", b_batched=False, unsigned="a"), a,
               k.pack_weight_quad_panels(w, t.nr), zc, out_shape=(1, n, m), out_dtype="int64", lanes=16)
    np.testing.assert_array_equal(got[0], ref[0].T)


def test_gemm_u16s8_refuses_a_tile_without_room_for_two():
    with pytest.raises(ValueError, match="two tiles"):
        k.gemm_func(1, 64, 64, 64, k.GemmTiling(8, 2, 1, 16), dtype="u16s8", unsigned="a")
