"""Smoothing (`tvm_mpq.smoothing`): per-input-channel factors that move activation outliers into the
weights of W8A8 layers, chosen per layer on calibration rows, carried by the plan, applied alike by the
simulator and the compiled model."""

import numpy as np
import pytest
import torch

from tvm_mpq import numerics, smoothing
from tvm_mpq.frontend import import_model
from tvm_mpq.plan import Plan, PlanError, resolve
from tvm_mpq.simulate import Simulator


class OutlierNet(torch.nn.Module):
    """Linear layers whose input has a few outlier channels (as a transformer's LayerNorm output has),
    two of them reading the same tensor, and a 1x1 conv on an image with an outlier channel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(8, 24, 1)
        self.up = torch.nn.Linear(24, 48)
        self.left = torch.nn.Linear(48, 16)
        self.right = torch.nn.Linear(48, 16)
        self.out = torch.nn.Linear(32, 4)
        gain = torch.ones(8)
        gain[2] = 40.0
        self.register_buffer("image_gain", gain.reshape(1, 8, 1, 1))
        gain = torch.ones(48)
        gain[[5, 17]] = 60.0
        self.register_buffer("gain", gain)

    def forward(self, x):
        h = torch.relu(self.conv(x * self.image_gain))  # [N, 24, 4, 4]
        t = h.flatten(2).transpose(1, 2)  # [N, 16, 24] tokens
        u = self.up(t) * self.gain  # outlier channels 5 and 17
        return self.out(torch.cat([self.left(u), self.right(u)], dim=-1))


@pytest.fixture(scope="module")
def outlier():
    torch.manual_seed(4)
    data = [(torch.randn(1, 8, 4, 4),) for _ in range(24)]
    imported = import_model(OutlierNet().eval(), data[0])
    return imported, data


def _calibrated(imported, data, on: bool):
    sim = Simulator(imported)
    sim.smoothing = on
    return sim, sim.calibrate(data[:16])


def test_factors_follow_the_formula_with_geometric_mean_one():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 30, 12)
    w = rng.uniform(0.01, 2, 12)
    for alpha in (0.25, 0.5, 0.75):
        s = smoothing.factors(a, w, alpha)
        raw = a ** alpha / w ** (1 - alpha)
        np.testing.assert_allclose(s, raw / np.exp(np.mean(np.log(raw))), rtol=1e-6)
        assert abs(np.mean(np.log(s.astype(np.float64)))) < 1e-6
    a[3] = 0.0  # a channel that never carries a value keeps factor 1 before the scaling
    s = smoothing.factors(a, w, 0.5)
    assert np.isfinite(s).all() and (s > 0).all()


def test_smoothing_leaves_the_float_layer_unchanged():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (20, 12)).astype(np.float32)
    w = rng.normal(0, 1, (7, 12)).astype(np.float32)
    s = smoothing.factors(np.abs(x).max(0), np.abs(w).max(0), 0.5)
    np.testing.assert_allclose((x / s) @ smoothing.scale_weight(w, s).T, x @ w.T, rtol=1e-5, atol=1e-5)
    conv_w = rng.normal(0, 1, (7, 12, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(smoothing.scale_weight(conv_w, s)[:, :, 0, 0], smoothing.scale_weight(conv_w[:, :, 0, 0], s))


def test_choice_moves_an_outlier_channel_into_the_weights():
    """Rows with one outlier channel: the chosen factors give that channel the largest factor and cut the
    W8A8 output error of the layer several times against no smoothing (NumPy reference of the error)."""
    rng = np.random.default_rng(2)
    rows = rng.normal(0, 1, (512, 32)).astype(np.float32)
    rows[:, 9] *= 80.0
    w = rng.normal(0, 0.2, (24, 32)).astype(np.float32)
    s = smoothing.choose(rows, w, rows.min(0), rows.max(0))
    assert s is not None and int(np.argmax(s)) == 9

    def error(factors):
        enc = numerics.encoding_from_range(float((rows / factors).min()), float((rows / factors).max()), 8)
        xq = numerics.dequantize_act(numerics.quantize_act(rows / factors, enc), enc)
        q, scale = numerics.quantize_weight(w * factors, 8)
        return float(np.mean((xq @ numerics.dequantize_weight(q, scale).T - rows @ w.T) ** 2))

    assert error(s) < error(np.ones(32, np.float32)) / 4


def test_calibration_smooths_the_outlier_layers_and_raises_w8a8_quality(outlier):
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.pipeline import make_plan

    imported, data = outlier
    profile = load_profile("x86_avx2")
    quality = {}
    for on in (False, True):
        sim, stats = _calibrated(imported, data, on)
        y = sim.run(data[16:])
        plan = make_plan("w8a8", imported, profile, stats, "minmax")
        sim.configure_plan(plan)
        quality[on] = numerics.sqnr_db(y, sim.run(data[16:]))
        if on:
            assert {"left", "right"} <= set(plan.smoothing)
            # layers reading one tensor share one set of factors, so they keep sharing one quantize
            assert plan.smoothing["left"] == plan.smoothing["right"]
            assert int(np.argmax(plan.smoothing["left"])) in (5, 17)
            # the range is that of the smoothed input, the correction that of the smoothed weights
            smoothed = stats["left"][0].smoothed
            assert plan.ranges["left"][0] == smoothed.range("minmax", 8)
            assert np.array_equal(plan.corrections()["left"], smoothed.bias_correction[8])
            assert plan.ranges["left"][0][1] < stats["left"][0].hi / 2
        else:
            assert plan.smoothing == {}
    assert quality[True] > quality[False] + 6.0


def test_only_w8a8_is_smoothed(outlier):
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.pipeline import make_plan

    imported, data = outlier
    sim, stats = _calibrated(imported, data, True)
    for name in ("w8a16", "w4a8"):
        plan = make_plan(name, imported, load_profile("x86_avx2"), stats, "minmax")
        assert plan.smoothing == {}
        assert plan.ranges["left"][0] == stats["left"][0].range("minmax", plan.candidate("left").act_bits)


def test_plan_file_carries_factors_and_refuses_bad_ones(outlier, tmp_path, x86_profile):
    from tvm_mpq.pipeline import make_plan

    imported, data = outlier
    sim, stats = _calibrated(imported, data, True)
    plan = make_plan("w8a8", imported, x86_profile, stats, "minmax")
    back = Plan.load(plan.save(tmp_path / "p.yaml"))
    assert back.smoothing.keys() == plan.smoothing.keys()
    for name, values in plan.smoothing.items():  # float32 values survive the text round trip
        assert np.array_equal(np.float32(back.smoothing[name]), np.float32(values))
    assert back.encodings()["left"][0].channel_scale is not None
    # A layer edited away from W8A8 loses its factors, and its smoothed range and correction are recalibrated.
    edited = make_plan(Plan({**back.layers, "left": "W8A16", "right": "W8A16"}, back.ranges,
                            calibration=back.calibration, bias_corrections=back.bias_corrections,
                            smoothing=back.smoothing), imported, x86_profile, stats, "minmax")
    assert "left" not in edited.smoothing
    assert edited.ranges["left"][0] == stats["left"][0].range("minmax", 16)
    assert np.array_equal(edited.corrections()["left"], stats["left"][0].bias_correction[8])
    # A plan that gives a layer's range without factors keeps it unsmoothed.
    kept = make_plan(Plan(dict(back.layers), {"left": (stats["left"][0].range("minmax", 8),)}), imported,
                     x86_profile, stats, "minmax")
    assert "left" not in kept.smoothing and "up" in kept.smoothing
    off = make_plan(Plan(dict(back.layers), calibration={"method": "minmax", "smoothing": False}), imported,
                    x86_profile, stats, "minmax")
    assert off.smoothing == {}

    path = tmp_path / "bad.yaml"
    path.write_text("tvm_mpq_plan: 1\nlayers:\n  left: W8A8\nsmoothing:\n  left: [1.0, -2.0]\n")
    with pytest.raises(PlanError, match=r"bad.yaml:5: smoothing of 'left' must be a list of positive"):
        Plan.load(path)
    short = Plan(dict(back.layers), back.ranges, smoothing={"left": (1.0, 2.0)})
    with pytest.raises(PlanError, match="has 2 factors; the layer has 48 input channels"):
        resolve(short, imported.graph, x86_profile)


def test_compiled_smoothed_model_matches_the_simulator(outlier, x86_profile):
    """The compiled model quantizes with the same per-channel multipliers and scaled weights as the
    simulator: outputs agree bit for bit, with and without smoothing, and the two differ."""
    from tvm_mpq.build import build
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import host_runs
    from tvm_mpq.pipeline import make_plan

    imported, data = outlier
    profiles = [x86_profile]
    vnni = load_profile("x86_avx512_vnni")
    if host_runs("x86_avx512_vnni"):
        profiles.append(vnni)
    for profile in profiles:
        outs = {}
        for on in (True, False):
            sim, stats = _calibrated(imported, data, on)
            plan = make_plan("w8a8", imported, profile, stats, "minmax")
            sim.configure_plan(plan)
            y_sim = sim.run(data[16:20])
            compiled = build(imported, plan, profile.tvm_target())
            y_tvm = np.concatenate([compiled.run([s[0].numpy()]) for s in data[16:20]])
            assert numerics.sqnr_db(y_sim, y_tvm) == float("inf"), profile.name
            outs[on] = y_tvm
        assert numerics.sqnr_db(outs[False], outs[True]) < 60


def test_search_keeps_smoothing_only_where_the_network_output_gains(outlier):
    """`check_smoothing` scores each smoothed group at W8A8 without its factors too, keeps the better score
    and drops the factors of the groups that lose; the unsmoothed scores are phase 1's on plain stats."""
    from tvm_mpq.search.api import check_smoothing, sensitivity_table
    from tvm_mpq.search.tables import SensitivityTable

    imported, data = outlier
    graph = imported.graph
    sim, stats = _calibrated(imported, data, True)
    samples = data[:8]
    y = sim.run(samples)
    candidates = {g.name: ("FP32", "W8A8") for g in graph.groups}
    sens = sensitivity_table(sim, graph, candidates, stats, samples, y, baseline="FP32", range_method="minmax")
    smoothed = [g.name for g in graph.groups if any(stats[n][0].smoothed is not None for n in g.layers)]
    assert len(smoothed) >= 2
    # Pretend the first smoothed group scored terribly and the second perfectly with its factors.
    values = dict(sens.sqnr_db)
    values[(smoothed[0], "W8A8")] = -50.0
    values[(smoothed[1], "W8A8")] = 500.0
    rigged = SensitivityTable("FP32", sens.groups, sens.candidates, values)
    checked_sens, checked_stats, report = check_smoothing(sim, graph, stats, rigged, samples, y,
                                                          range_method="minmax")
    assert set(report) == set(smoothed)
    plain_sim, plain_stats = _calibrated(imported, data, False)
    plain = sensitivity_table(plain_sim, graph, candidates, plain_stats, samples, y, baseline="FP32",
                              range_method="minmax")
    for name in smoothed:
        assert report[name]["unsmoothed_db"] == pytest.approx(plain.sqnr_db[(name, "W8A8")], abs=1e-9)
    first, second = (graph.groups[[g.name for g in graph.groups].index(n)] for n in smoothed[:2])
    assert report[smoothed[0]]["kept"] is False
    assert checked_sens.sqnr_db[(smoothed[0], "W8A8")] == report[smoothed[0]]["unsmoothed_db"]
    assert all(checked_stats[n][0].smoothed is None for n in first.layers)
    assert report[smoothed[1]]["kept"] is True and checked_sens.sqnr_db[(smoothed[1], "W8A8")] == 500.0
    assert all(checked_stats[n][0].smoothed is stats[n][0].smoothed for n in second.layers)
    assert stats[first.layers[0]][0].smoothed is not None  # the caller's stats are left as they were
