"""Epilogues fused into the AVX2 kernels: the kernel stores exactly what the unfused elementwise chain
(TVM's own legalization of the Relax ops) stores, per channel by row or by column, on full and edge tiles."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_mpq.kernels import x86_avx2 as k
from tvm_mpq.kernels.epilogue import Epilogue, Step

from test_kernels_avx2 import DEV, TARGET, _run

# requantize, correction, bias, ReLU6, next quantize: the chain a W8A8 conv layer's output goes through
REQUANT_U8 = Epilogue((Step("div", 0), Step("sub", 1), Step("add", 2), Step("max", imm=0.0), Step("min", imm=6.0),
                       Step("mul", imm=1 / 0.02), Step("round"), Step("add", imm=7.0), Step("min", imm=255.0),
                       Step("max", imm=0.0)), "uint8")
REQUANT_F32 = Epilogue((Step("div", 0), Step("sub", 1), Step("add", 2)), "float32")


def _chain_ref(acc, params, epilogue, channel_axis):
    """NumPy float32 reference: every op rounded to float32, in order (the unfused chain)."""
    x = acc.astype(np.float32)
    shape = [1] * acc.ndim
    for s in epilogue.steps:
        if s.op == "round":
            x = np.rint(x)
            continue
        if s.vector is not None:
            shape[channel_axis] = -1
            v = params[s.vector].reshape(shape)
            shape[channel_axis] = 1
        else:
            v = np.float32(s.imm)
        x = {"div": np.divide, "sub": np.subtract, "add": np.add, "mul": np.multiply,
             "max": np.maximum, "min": np.minimum}[s.op](x, v).astype(np.float32)
    return x.astype(epilogue.out_dtype)


@pytest.mark.parametrize("epilogue", [REQUANT_U8, REQUANT_F32], ids=["uint8", "float32"])
@pytest.mark.parametrize("channel, m, n", [("row", 21, 70), ("col", 13, 37), ("row", 8, 16), ("none", 5, 9)])
def test_gemm_epilogue_matches_the_unfused_chain(epilogue, channel, m, n):
    rng = np.random.default_rng(m * n)
    kk = 40
    a = rng.integers(-255, 256, (1, m, kk))
    b = rng.integers(-127, 128, (1, kk, n))
    channels = {"row": m, "col": n, "none": 1}[channel]
    params = np.stack([rng.uniform(1e4, 6e4, channels), rng.uniform(-0.05, 0.05, channels),
                       rng.uniform(-1, 1, channels)]).astype(np.float32)
    tl = k.choose_tiling(1, m, n)
    func = k.gemm_func(1, m, n, kk, tl, epilogue=epilogue, channel=channel)
    pa = k.pack_weight_rows(a[0], tl.mr)
    pb = k.pack_weight_panels(np.ascontiguousarray(b[0].T), tl.nr)
    got = _run(func, pa, pb, params.reshape(-1), out_shape=(1, m, n), out_dtype=epilogue.out_dtype)
    acc = np.einsum("bmk,bkn->bmn", a, b)
    ref = _chain_ref(acc, params, epilogue, {"row": 1, "col": 2, "none": 1}[channel])
    np.testing.assert_array_equal(got, ref)
    if epilogue.out_dtype == "uint8" and m * n >= 256:
        # ReLU6 floor (the zero point 7), the 255 clamp and values in between all occur
        assert np.any(got == 7) and np.any(got == 255) and np.mean((got > 7) & (got < 255)) > 0.2


def test_epilogue_refuses_unknown_ops_and_dtypes():
    with pytest.raises(ValueError, match="epilogue op"):
        Step("pow", imm=2.0)
    with pytest.raises(ValueError, match="output dtype"):
        Epilogue((Step("round"),), "bfloat16")
    with pytest.raises(ValueError, match="channel"):
        k.gemm_func(1, 8, 8, 8, k.GemmTiling(4, 1), epilogue=REQUANT_F32, channel="pixel")
