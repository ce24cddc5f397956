"""Latency model: features, roofline, XGBoost ensemble (accuracy on held-out workloads, uncertainty,
save/load)."""

import json

import numpy as np
import pytest

from tvm_mpq.cost_model import (FEATURE_NAMES, LatencyModel, LatencyModelConfig, LatencyModelError, bytes_moved,
                                evaluate, featurize, roofline_ms, samples_from_measurements, spearman,
                                workload_macs)
from tvm_mpq.graph import Workload
from tvm_mpq.hardware import Roofline
from tvm_mpq.numerics import get_candidate

F = {n: i for i, n in enumerate(FEATURE_NAMES)}


def conv(c=64, o=64, h=56, k=3, s=1, groups=1, n=1):
    p = k // 2
    ho = (h + 2 * p - k) // s + 1
    return Workload("conv2d", (n, c, h, h), (o, c // groups, k, k), (n, o, ho, ho), (s, s), (p, p, p, p), (1, 1),
                    groups, True)


def linear(rows=4, i=64, o=32):
    return Workload("linear", (rows, i), (o, i), (rows, o), has_bias=True)


def matmul(b=12, m=128, k=64, n=128):
    return Workload("matmul", (1, b, m, k), (1, b, k, n), (1, b, m, n))


# ----------------------------------------------------------------------------- features


def test_feature_vector_shape_and_names():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    for wl in (conv(), conv(groups=64), linear(), matmul()):
        for cand in ("FP32", "FP16", "W8A8", "W4A8", "W8A16", "W4A16"):
            f = featurize(wl, get_candidate(cand))
            assert f.shape == (len(FEATURE_NAMES),) and f.dtype == np.float64 and np.all(np.isfinite(f))
    f = featurize(conv(groups=64, s=2), "W8A8")  # a name works too
    assert f[F["op_conv2d"]] == 1 and f[F["op_linear"]] == 0 and f[F["is_depthwise"]] == 1
    assert (f[F["kernel_h"]], f[F["stride_w"]], f[F["groups"]], f[F["channels_in"]]) == (3, 2, 64, 64)
    assert (f[F["weight_bits"]], f[F["act_bits"]], f[F["float_bits"]]) == (8, 8, 32)
    f = featurize(linear(), "FP16")
    assert (f[F["op_linear"]], f[F["weight_bits"]], f[F["act_bits"]], f[F["float_bits"]]) == (1, 0, 0, 16)
    assert featurize(matmul(), "W8A8")[F["op_matmul"]] == 1
    with pytest.raises(ValueError, match="unknown candidate"):
        featurize(linear(), "W3A3")
    with pytest.raises(ValueError, match="unknown workload op 'conv3d'"):
        featurize(Workload("conv3d", (1,), (1,), (1,)), "FP32")


def test_feature_monotonicity_and_bytes():
    small, big = featurize(conv(o=32), "W8A8"), featurize(conv(o=256), "W8A8")
    assert big[F["log2_macs"]] > small[F["log2_macs"]]
    assert workload_macs(conv(c=64, o=64, h=56, k=3)) == 64 * 56 * 56 * 64 * 9
    assert workload_macs(conv(c=64, o=64, groups=64)) == 64 * 56 * 56 * 9
    assert workload_macs(matmul()) == 12 * 128 * 64 * 128
    # linear (4 x 64) @ (32 x 64)^T: input 256 elems, weight 2048, output 128 float32
    assert bytes_moved(linear(), "W8A8") == 256 + 2048 + 128 * 4
    assert bytes_moved(linear(), "W4A8") == 256 + 1024 + 128 * 4  # packed int4: half a byte each
    assert bytes_moved(linear(), "W8A16") == 512 + 2048 + 128 * 4
    assert bytes_moved(linear(), "FP32") == (256 + 2048 + 128) * 4
    assert bytes_moved(linear(), "FP16") == (256 + 2048 + 128) * 2
    w8, w4 = featurize(conv(), "W8A8"), featurize(conv(), "W4A8")
    assert w4[F["log2_weight_bytes"]] < w8[F["log2_weight_bytes"]]
    assert w4[F["log2_bytes_moved"]] < w8[F["log2_bytes_moved"]]
    assert w4[F["arith_intensity"]] > w8[F["arith_intensity"]]
    assert w4[F["log2_macs_x_wbits"]] < w8[F["log2_macs_x_wbits"]]
    # matmul's second operand is an activation: moved at activation precision
    mm = matmul()
    assert bytes_moved(mm, "W8A16") - bytes_moved(mm, "W8A8") == 2 * 12 * 128 * 64 * 1


# ----------------------------------------------------------------------------- roofline


def test_roofline_hand_computed(x86_profile):
    roof = Roofline({"FP32": 150.0, "W8A8": 300.0}, 40.0)
    # memory bound: 1x1024 @ 1024x1024 FP32 = 4 * (1024 + 1024*1024 + 1024) bytes / 40 GB/s
    wl = linear(rows=1, i=1024, o=1024)
    assert roofline_ms(wl, "FP32", roof) == pytest.approx(4 * (1024 + 1024 * 1024 + 1024) / 40e9 * 1e3)
    # compute bound: 3x3 conv 64->64 @ 56x56 at W8A8: 2 * 115,605,504 ops / 300 GOP/s
    assert roofline_ms(conv(), "W8A8", roof) == pytest.approx(2 * 115_605_504 / 300e9 * 1e3)
    assert roofline_ms(conv(), "W8A8", roof) == pytest.approx(0.77070336)
    with pytest.raises(ValueError, match=r"no peak_gops for candidate FP16 \(has: FP32, W8A8\)"):
        roofline_ms(conv(), "FP16", roof)
    # a whole profile works too (its roofline section is used)
    from dataclasses import replace
    assert roofline_ms(conv(), "W8A8", replace(x86_profile, roofline=roof)) == pytest.approx(0.77070336)
    with pytest.raises(ValueError, match="has no roofline section"):
        roofline_ms(conv(), "W8A8", replace(x86_profile, roofline=None))


# ----------------------------------------------------------------------------- the XGBoost model

PEAK = {"FP32": 100.0, "W8A8": 250.0, "W4A8": 200.0, "W8A16": 120.0}  # GOP/s of a made-up device


def synthetic_ms(wl, cand, rng):
    """Compute time at the candidate's peak (depthwise runs at 30 % of it) + memory time + launch
    overhead, times 5 % log-normal noise."""
    eff = 0.3 if wl.op == "conv2d" and wl.groups > 1 else 1.0
    ms = 2 * workload_macs(wl) / (PEAK[cand] * eff * 1e9) * 1e3 + bytes_moved(wl, cand) / 20e9 * 1e3 + 0.004
    return ms * float(np.exp(rng.normal(0.0, 0.05)))


def random_workloads(rng, n):
    out = set()
    while len(out) < n:
        if rng.random() < 0.7:
            c = int(rng.choice([8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]))
            depthwise = rng.random() < 0.25
            out.add(conv(c=c, o=c if depthwise else int(rng.choice([8, 16, 32, 64, 128, 256, 512])),
                         h=int(rng.choice([7, 14, 28, 56, 112])), k=int(rng.choice([1, 3, 5])),
                         s=int(rng.choice([1, 2])), groups=c if depthwise else 1))
        else:
            out.add(linear(rows=int(rng.choice([1, 8, 32, 128, 512])),
                           i=int(rng.choice([64, 128, 256, 512, 768, 1024, 2048, 4096])),
                           o=int(rng.choice([64, 128, 256, 512, 1000, 2048, 4096]))))
    return sorted(out, key=lambda w: w.key())


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    wls = random_workloads(rng, 300)
    held_out = {wls[i] for i in rng.permutation(len(wls))[:60]}  # split by workload, not by row
    samples = [(w, c, synthetic_ms(w, c, rng)) for w in wls for c in PEAK]
    train = [s for s in samples if s[0] not in held_out]
    test = [s for s in samples if s[0] in held_out]
    model = LatencyModel(LatencyModelConfig(n_members=4, n_estimators=150), profile="synthetic").fit(train)
    return model, train, test


def test_fit_generalises_to_unseen_workloads(synthetic):
    model, train, test = synthetic
    assert not {w for w, _, _ in train} & {w for w, _, _ in test}
    metrics = evaluate(model, test)
    print("held-out workloads:", metrics)
    assert metrics["n"] == len(test) == 240
    assert metrics["mape"] < 0.25
    assert metrics["spearman"] > 0.9
    mean, std = model.predict([(w, c) for w, c, _ in test[:5]])
    assert mean.shape == std.shape == (5,) and np.all(mean > 0) and np.all(std >= 0)


def test_uncertainty_grows_outside_training_range(synthetic):
    model, _, test = synthetic
    mean_in, std_in = model.predict([(w, c) for w, c, _ in test])
    far = [(conv(c=2048, o=2048, h=224, k=7), "W8A8"), (linear(rows=8192, i=16384, o=16384), "FP32")]
    mean_far, std_far = model.predict(far)
    rel_in, rel_far = np.median(std_in / mean_in), std_far / mean_far
    assert np.all(rel_far > 1.5 * rel_in), (rel_far, rel_in)
    assert np.all(std_far > np.max(std_in))


def test_save_load_round_trip(synthetic, tmp_path):
    model, _, test = synthetic
    path = tmp_path / "model.json"
    model.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "tvm_mpq.latency_model" and doc["feature_names"] == list(FEATURE_NAMES)
    assert doc["config"] == model.config.to_dict() and len(doc["members"]) == 4
    loaded = LatencyModel.load(path)
    pairs = [(w, c) for w, c, _ in test]
    m1, s1 = model.predict(pairs)
    m2, s2 = loaded.predict(pairs)
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
    assert loaded.config == model.config and loaded.profile == "synthetic"


def test_load_garbage_is_a_clear_error(synthetic, tmp_path):
    model, _, _ = synthetic
    with pytest.raises(LatencyModelError, match="latency model file not found"):
        LatencyModel.load(tmp_path / "missing.json")
    (tmp_path / "bin.json").write_bytes(b"\x80\x04\x95 not json")
    with pytest.raises(LatencyModelError, match="not a tvm_mpq latency model"):
        LatencyModel.load(tmp_path / "bin.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(LatencyModelError, match="not a tvm_mpq latency model"):
        LatencyModel.load(tmp_path / "other.json")
    doc = model.to_json_dict()
    (tmp_path / "untrained.json").write_text(json.dumps({**doc, "members": []}))
    with pytest.raises(LatencyModelError, match="untrained"):
        LatencyModel.load(tmp_path / "untrained.json")
    bad = {**doc, "members": [{**doc["members"][0], "booster": {"learner": "garbage"}}]}
    (tmp_path / "corrupt.json").write_text(json.dumps(bad))
    with pytest.raises(LatencyModelError, match="member 0: invalid XGBoost model"):
        LatencyModel.load(tmp_path / "corrupt.json")
    (tmp_path / "features.json").write_text(json.dumps({**doc, "feature_names": ["a", "b"]}))
    with pytest.raises(LatencyModelError, match="different feature set"):
        LatencyModel.load(tmp_path / "features.json")
    with pytest.raises(LatencyModelError, match="cannot save an untrained"):
        LatencyModel().save(tmp_path / "x.json")
    with pytest.raises(LatencyModelError, match="not trained"):
        LatencyModel().predict([(linear(), "FP32")])


def test_fit_needs_enough_valid_samples():
    few = [(linear(o=8 * (i + 1)), "FP32", 0.1) for i in range(5)]
    with pytest.raises(LatencyModelError, match="at least 8 measured samples"):
        LatencyModel().fit(few)
    bad = [(linear(o=8 * (i + 1)), "FP32", 0.1) for i in range(9)] + [(linear(), "FP32", float("nan"))]
    with pytest.raises(LatencyModelError, match="finite and > 0"):
        LatencyModel().fit(bad)
    with pytest.raises(LatencyModelError, match="n_members must be an integer >= 1"):
        LatencyModelConfig(n_members=0)
    assert LatencyModelConfig().to_dict()["n_estimators"] == 300


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4] -> rho = 0.9486833
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_samples_from_store(tmp_path):
    from tvm_mpq.store import Measurement, MeasurementStore

    store = MeasurementStore(tmp_path / "m.db")
    wl = conv(c=32, o=16, groups=1, s=2)
    store.put(Measurement("p", "d", "layer", wl.key(), "W8A8", 0.5, 0.4, 0.6, 0.01, 5, 10))
    store.put(Measurement("p", "d", "convert", "convert:x", "FP32->W8A8", 0.1, 0.1, 0.1, 0.0, 5, 10))
    samples = samples_from_measurements(store.query(profile="p"))
    assert samples == [(wl, "W8A8", 0.5)]
