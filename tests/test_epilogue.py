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


def _lowered(module, example, calibration, plan_name="w8a8"):
    from tvm_mpq.build import lower
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.simulate import Simulator

    profile = load_profile("x86_avx2")
    imported = import_model(module, example)
    stats = Simulator(imported).calibrate(calibration)
    plan = make_plan(plan_name, imported, profile, stats, "minmax")
    return imported, plan, lower(imported, plan, "x86_avx2")


def _kernel_calls(mod) -> dict[str, str]:
    """{kernel function name: output dtype} of the call_tir bindings of main."""
    from tvm import relax

    out = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.name == "relax.call_tir" and "avx2_" in v.args[0].name_hint:
                if any(s in v.args[0].name_hint for s in ("gemm", "conv", "depthwise")):
                    out[v.args[0].name_hint] = str(b.var.ty.dtype)
    return out


def test_fusion_follows_each_chain_to_its_first_unfusable_op():
    """Inverted residual block at W8A8: the expand and depthwise kernels store the next layer's uint8
    input; the stem's output is used twice (residual and next quantize) and the project's feeds the
    residual add of another tensor, so both store float32 after their requantize and bias."""
    import torch

    from test_quantize_mixed_precision import _InvertedResidual
    from tvm_mpq.transform.fuse_epilogues import fuse_epilogues

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(1, 3, 32, 32, generator=gen),) for _ in range(8)]
    _, _, mod = _lowered(_InvertedResidual().eval(), data[0], data)
    before = _kernel_calls(mod)
    assert set(before.values()) == {"int32"} and len(before) == 5
    fused = fuse_epilogues(mod)
    after = _kernel_calls(fused)
    assert all(name.endswith("_epi") for name in after) and len(after) == 5
    assert after == {"mpqL0_avx2_direct_conv_epi": "float32", "mpqL1_avx2_gemm_epi": "uint8",
                     "mpqL2_avx2_depthwise_epi": "uint8", "mpqL3_avx2_gemm_epi": "float32",
                     "mpqL4_avx2_gemm_epi": "float32"}
    ops = [b.value.op.name for blk in fused["main"].body.blocks for b in blk.bindings if hasattr(b.value, "op")]
    # left: the residual add and the zero-point adds of three quantizes that follow no kernel chain (model
    # input, stem output (used twice), residual sum)
    assert "relax.divide" not in ops and ops.count("relax.add") == 4 and ops.count("relax.round") == 3
    assert fuse_epilogues(fused).same_as(fused)  # nothing left to fuse: the module comes back unchanged


def test_transformer_outputs_do_not_change_with_fusion():
    """Dense (per-column operands, reshapes), activation x activation matmuls (scalar operands) and FP32
    layers of a transformer: compiled with and without kernel epilogues, outputs are identical."""
    from tvm_mpq.build import build
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import cpu_schedule
    from tvm_mpq.models import load_model

    spec = load_model("tiny_transformer")
    data = spec.calibration(8)
    profile = load_profile("x86_avx2")
    for plan_name in ("w8a8", "fp32"):
        imported, plan, _ = _lowered(spec.module, spec.example_inputs, data, plan_name)
        outs = []
        for fuse in (True, False):
            cpu_schedule.FUSE_KERNEL_EPILOGUES = fuse
            try:
                compiled = build(imported, plan, profile.tvm_target())
            finally:
                cpu_schedule.FUSE_KERNEL_EPILOGUES = True
            outs.append(np.concatenate([compiled.run([a.numpy() for a in s]) for s in data[:4]]))
        np.testing.assert_array_equal(outs[0], outs[1])
