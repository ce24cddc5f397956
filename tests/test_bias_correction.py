"""Bias correction: the mean output shift that rounding a layer's weights causes, measured on the
calibration inputs (`numerics.bias_correction`), taken off the output by the simulator and by the
compiled model alike, and carried by the plan file."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tvm_mpq import numerics
from tvm_mpq.frontend import import_model
from tvm_mpq.numerics import get_candidate
from tvm_mpq.plan import Plan, PlanError, resolve
from tvm_mpq.search.api import _encodings
from tvm_mpq.simulate import Simulator

from conftest import ToyNet


def _mean_patch_reference(x: np.ndarray, kh, kw, stride, pad):
    """Mean over images and output positions of the zero-padded input patch, by explicit loops."""
    n, c, h, w = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    total = np.zeros((c, kh, kw))
    for oy in range(oh):
        for ox in range(ow):
            total += xp[:, :, oy * stride: oy * stride + kh, ox * stride: ox * stride + kw].sum(0)
    return total / (n * oh * ow)


@pytest.mark.parametrize("groups, stride, pad", [(1, 1, 0), (1, 2, 1), (6, 2, 2), (2, 1, 1)])
def test_bias_correction_is_the_mean_output_shift_of_rounded_weights(groups, stride, pad):
    rng = np.random.default_rng(groups * 10 + stride)
    x = rng.normal(0.3, 1.0, (5, 6, 9, 11)).astype(np.float32)
    w = rng.normal(0, 1, (12, 6 // groups, 3, 3)).astype(np.float32)
    w[0] *= 40  # a channel with a wide range: large rounding steps
    for bits in (8, 4):
        q, scale = numerics.quantize_weight(w, bits)
        delta = torch.from_numpy(numerics.dequantize_weight(q, scale).astype(np.float64) - w.astype(np.float64))
        shift = F.conv2d(torch.from_numpy(x).double(), delta, stride=stride, padding=pad, groups=groups)
        want = shift.mean((0, 2, 3)).numpy()
        got = numerics.bias_correction(w, bits, _mean_patch_reference(x, 3, 3, stride, pad), groups)
        assert got.dtype == np.float32 and got.shape == (12,)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.abs(want).max() > 1e-3  # there is a shift to correct
    lin_w = rng.normal(0, 1, (7, 10)).astype(np.float32)
    lin_x = rng.normal(0.5, 1, (40, 10))
    q, scale = numerics.quantize_weight(lin_w, 8)
    want = (lin_x @ (numerics.dequantize_weight(q, scale).astype(np.float64) - lin_w).T).mean(0)
    np.testing.assert_allclose(numerics.bias_correction(lin_w, 8, lin_x.mean(0)), want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="does not match"):
        numerics.bias_correction(w, 8, np.zeros(5))


@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(3)
    data = [(torch.randn(1, 3, 16, 16, generator=gen) + 0.5,) for _ in range(12)]
    imported = import_model(ToyNet().eval(), data[0])
    sim = Simulator(imported)
    return imported, sim, sim.calibrate(data), data


def _layer_inputs(sim, name, data):
    seen = []
    hook = sim.layers[name].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().numpy().copy()))
    sim.reset()
    sim.run(data)
    hook.remove()
    return np.concatenate(seen)


def test_calibration_measures_each_layers_correction(toy):
    imported, sim, stats, data = toy
    for name in ("stem", "dw", "grouped"):
        layer = imported.graph.layers[name]
        x = _layer_inputs(sim, name, data)
        wl = layer.workload
        patch = _mean_patch_reference(x, wl.weight_shape[2], wl.weight_shape[3], wl.strides[0], wl.padding[0])
        weight = sim.layers[name].weight.numpy()
        for bits in (8, 4):
            want = numerics.bias_correction(weight, bits, patch, wl.groups)
            np.testing.assert_allclose(stats[name][0].bias_correction[bits], want, rtol=1e-5, atol=1e-7)
    assert stats["fc"][0].bias_correction[8].shape == (5,)


def test_corrected_layer_has_no_mean_shift_on_the_calibration_data(toy):
    """W8A16 (activation rounding negligible) on the first layer: the per-channel mean of its output error
    over the calibration data is ~0 with the correction, and clearly not without it."""
    imported, sim, stats, data = toy
    cand = get_candidate("W8A16")
    outputs = {}
    hook = sim.layers["stem"].register_forward_hook(lambda m, a, y: outputs.setdefault(key, []).append(y.numpy()))
    for key, config in (("float", None), ("plain", False), ("corrected", True)):
        sim.bias_correction = bool(config)
        sim.configure({} if config is None else {"stem": cand}, {"stem": _encodings(stats["stem"], cand, "minmax")})
        sim.run(data)
    hook.remove()
    sim.bias_correction = True
    sim.reset()
    y = {k: np.concatenate(v) for k, v in outputs.items()}
    plain = np.abs((y["plain"] - y["float"]).mean((0, 2, 3))).max()
    corrected = np.abs((y["corrected"] - y["float"]).mean((0, 2, 3))).max()
    assert corrected < plain / 20
    assert corrected < 1e-4 * np.abs(y["float"]).mean()


def test_plan_file_carries_corrections_exactly(toy, tmp_path, x86_profile):
    from tvm_mpq.pipeline import make_plan

    imported, sim, stats, data = toy
    plan = make_plan("w8a8", imported, x86_profile, stats, "minmax")
    assert plan.calibration["bias_correction"] is True
    assert set(plan.corrections()) == {n for n, c in plan.layers.items() if c != "FP32"}
    back = Plan.load(plan.save(tmp_path / "p.yaml"))
    for name, values in plan.corrections().items():
        assert np.array_equal(back.corrections()[name], values)  # float32 values survive the text round trip
        # of the smoothed weights where the layer is smoothed (`tvm_mpq.smoothing`)
        assert np.array_equal(values, stats[name][0].for_candidate("W8A8").bias_correction[8])
    # A layer edited to other weight bits gets the correction for its new bits, from calibration.
    edited = Plan({**back.layers, "stem": "W4A8"}, back.ranges, calibration=back.calibration,
                  bias_corrections=back.bias_corrections)
    again = make_plan(edited, imported, x86_profile, stats, "minmax")
    assert np.array_equal(again.corrections()["stem"], stats["stem"][0].bias_correction[4])
    off = make_plan(Plan(dict(plan.layers), calibration={"method": "minmax", "bias_correction": False}),
                    imported, x86_profile, stats, "minmax")
    assert off.corrections() == {}


def test_plan_refuses_a_malformed_correction(toy, tmp_path, x86_profile):
    imported, sim, stats, data = toy
    path = tmp_path / "bad.yaml"
    path.write_text("tvm_mpq_plan: 1\nlayers:\n  stem: W8A8\nbias_correction:\n  stem: {bits: 6, values: [1.0]}\n")
    with pytest.raises(PlanError, match=r"bad.yaml:5: bias_correction of 'stem' must be"):
        Plan.load(path)
    short = Plan({"stem": "W8A8"}, {"stem": ((0.0, 1.0),)}, bias_corrections={"stem": (8, (0.1, 0.2))})
    with pytest.raises(PlanError, match="has 2 values; the layer has 8 output channels"):
        resolve(short, imported.graph, x86_profile)


def test_compiled_model_applies_the_plans_correction(toy, x86_profile):
    """The compiled model subtracts the plan's corrections exactly where the simulator does: with and without
    them, compiled and simulated outputs agree, and the two plans differ."""
    from tvm_mpq.build import build
    from tvm_mpq.pipeline import make_plan

    imported, sim, stats, data = toy
    outs = {}
    for on in (True, False):
        plan = make_plan(Plan({n: "W8A8" for n in ("stem", "dw", "grouped", "branch_a", "branch_b", "fc")},
                              calibration={"method": "minmax", "bias_correction": on}),
                         imported, x86_profile, stats, "minmax")
        sim.configure_plan(plan)
        y_sim = sim.run(data[:4])
        sim.reset()
        compiled = build(imported, plan, x86_profile.tvm_target())
        y_tvm = np.concatenate([compiled.run([s[0].numpy()]) for s in data[:4]])
        assert numerics.sqnr_db(y_sim, y_tvm) > 100
        outs[on] = y_tvm
    assert numerics.sqnr_db(outs[True], outs[False]) < 80  # the correction changed the compiled output
