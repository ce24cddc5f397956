"""Phase 1 and phase 3 evaluations that resume from shared activations (PrefixCache) give exactly the
results of running the whole network; task metrics (labeled sets, user callables) drive phase 3."""

import json
import random

import numpy as np
import pytest

from tvm_mpq.frontend import import_model
from tvm_mpq.metrics import Metric, as_metric, mean_pooled, top1
from tvm_mpq.models import load_model
from tvm_mpq.numerics import get_candidate
from tvm_mpq.search.api import (SearchConfig, _encodings, group_candidates, make_evaluator, search,
                                sensitivity_table)
from tvm_mpq.simulate import PrefixCache, Simulator

# measure_points=0: these tests check the phases on the tables (the measured final choice, which can replace
# the selected point by a faster one measured, is tested in test_search_api.py)
SMALL = dict(calib_samples=24, sensitivity_samples=8, eval_samples=8, measure_points=0)


@pytest.fixture(scope="module", params=["tiny_cnn", "tiny_transformer"])
def model(request):
    spec = load_model(request.param)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name)
    sim = Simulator(imported, chunk=8)  # several batches per sample set
    data = spec.calibration(24)
    return spec, imported, sim, data, sim.calibrate(data)


def _random_config(sim, stats, rng, p=0.3):
    layers = {n: get_candidate(rng.choice(["W8A8", "W4A8", "W8A16", "FP16"])) for n in sim.layers if rng.random() < p}
    return layers, {n: _encodings(stats[n], c, "minmax") for n, c in layers.items()}


@pytest.mark.parametrize("max_bytes", [1 << 30, 0])  # room for every state / for none
def test_prefix_cache_equals_whole_network_runs(model, max_bytes):
    spec, imported, sim, data, stats = model
    assert sim.resumable
    cache = PrefixCache(sim, data[:20], max_bytes=max_bytes)
    rng = random.Random(1)
    for _ in range(15):
        layers, encodings = _random_config(sim, stats, rng)
        fast = cache.run(layers, encodings)
        sim.configure(layers, encodings)
        assert np.array_equal(fast, sim.run(data[:20]))
    assert sum(cache._sizes.values()) <= max_bytes
    if max_bytes:
        assert cache.stats["nodes_skipped"] > 0  # the prefix was reused, not recomputed
    sim.reset()


def test_prefix_cache_with_a_quantized_reference(model):
    """The stored activations belong to the reference configuration (a quantized baseline here)."""
    spec, imported, sim, data, stats = model
    base = get_candidate("W8A16")
    ref = ({n: base for n in sim.layers}, {n: _encodings(stats[n], base, "minmax") for n in sim.layers})
    cache = PrefixCache(sim, data, ref)
    names = sorted(sim.layers, key=sim.positions.get)
    w4 = get_candidate("W8A8")
    for name in reversed(names):  # latest layer first: each later run starts earlier
        layers, encodings = dict(ref[0]), dict(ref[1])
        layers[name], encodings[name] = w4, _encodings(stats[name], w4, "minmax")
        assert cache.start(layers, encodings) == sim.positions[name]
        fast = cache.run(layers, encodings)
        sim.configure(layers, encodings)
        assert np.array_equal(fast, sim.run(data))
    sim.reset()


def test_phase1_and_phase3_agree_with_whole_network_evaluation(model, x86_profile):
    spec, imported, sim, data, stats = model
    candidates = group_candidates(imported.graph, x86_profile, "FP32")
    scored, held = data[:8], data[8:16]
    y_scored, y_held = sim.run(scored), sim.run(held)
    tables = [sensitivity_table(sim, imported.graph, candidates, stats, scored, y_scored, baseline="FP32",
                                range_method="minmax", prefix_cache_bytes=b) for b in (1 << 30, 0)]
    assert tables[0].sqnr_db == tables[1].sqnr_db
    fast, ref = (make_evaluator(sim, imported.graph, stats, held, y_held, "minmax", prefix_cache_bytes=b)
                 for b in (1 << 30, 0))
    rng = random.Random(2)
    for _ in range(6):
        config = {g: rng.choice(c) for g, c in candidates.items()}
        assert fast(config) == ref(config)


# ------------------------------------------------------------------ task metrics in phase 3


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny_cnn")


@pytest.fixture(scope="module")
def roofline_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "empty.sqlite"  # no measurements: roofline costs


def _plan_outputs(spec, result, inputs, calib):
    """The selected plan's outputs on `inputs`, simulated independently of the search."""
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.plan import Plan

    imported = import_model(spec.module, spec.example_inputs, name=spec.name)
    sim = Simulator(imported)
    stats = sim.calibrate(calib)
    sim.configure_plan(make_plan(Plan(dict(result.plan.layers)), imported, load_profile("x86_avx2"), stats,
                                 "minmax", spec.name))
    return sim.run(inputs)


def test_search_selects_by_a_user_callable(tiny, roofline_store, tmp_path):
    data = tiny.calibration(32)
    calib, held = data[:24], data[24:32]
    imported = import_model(tiny.module, tiny.example_inputs)
    labels = Simulator(imported).run(held).argmax(1)  # the float model's classes as labels
    calls = []

    def agreement(outputs):
        calls.append(outputs.shape)
        return float(np.mean(outputs.argmax(1) == labels))

    result = search(tiny, "x86_avx2", SearchConfig(min_score=0.75, **SMALL), metric=agreement,
                    store_path=roofline_store, cache_dir=tmp_path)
    assert calls and all(s == (8, 10) for s in calls)  # scored on the held-out samples
    sel = result.selection
    assert sel.met and sel.point.evaluated_sqnr_db >= 0.75
    assert result.metric["name"] == "agreement" and result.metric["baseline_score"] == 1.0
    assert set(result.reference_points["W8A8"]) >= {"score", "cost"}
    # The score the search recorded is the plan's score, recomputed independently.
    assert agreement(_plan_outputs(tiny, result, held, calib)) == pytest.approx(sel.point.evaluated_sqnr_db)
    # Cheaper points that the selection evaluated all scored below the target.
    assert all(p.evaluated_sqnr_db < 0.75 for p in sel.evaluated if p.cost < sel.point.cost)


def test_search_selects_by_a_labeled_set_within_a_drop(tiny, roofline_store, tmp_path):
    from tvm_mpq.report import write_search_outputs

    inputs = tiny.calibration(64)[40:64]
    imported = import_model(tiny.module, tiny.example_inputs)
    labels = Simulator(imported).run(inputs).argmax(1)
    labels[:4] = (labels[:4] + 1) % 10  # a few float mistakes: the baseline's accuracy is below 1
    metric = top1(inputs, labels.tolist(), name="labeled_top1")
    result = search(tiny, "x86_avx2", SearchConfig(max_score_drop=0.1, **SMALL), metric=metric,
                    store_path=roofline_store, cache_dir=tmp_path)
    assert result.metric["baseline_score"] == pytest.approx(20 / 24)
    assert result.selection.met and result.selection.point.evaluated_sqnr_db >= 20 / 24 - 0.1 - 1e-12
    score = metric.score(_plan_outputs(tiny, result, inputs, tiny.calibration(24)))
    assert score == pytest.approx(result.selection.point.evaluated_sqnr_db)
    paths = write_search_outputs(result, tmp_path / "out", {k: {"cost": v["cost"], "score": v["score"]}
                                                             for k, v in result.reference_points.items()})
    report = json.loads(open(paths["report"]).read())
    assert report["metric"]["name"] == "labeled_top1" and report["metric"]["samples"] == 24
    assert "evaluated_score" in report["front"][0] and "evaluated_sqnr_db" not in report["front"][0]


def test_metric_arguments_are_checked(tiny, roofline_store):
    with pytest.raises(ValueError, match="need a task metric"):
        search(tiny, "x86_avx2", SearchConfig(min_score=0.9, **SMALL), store_path=roofline_store)
    with pytest.raises(ValueError, match="not an SQNR target"):
        search(tiny, "x86_avx2", SearchConfig(min_sqnr_db=30, **SMALL), metric=lambda y: 1.0,
               store_path=roofline_store)
    with pytest.raises(ValueError, match="no labeled data"):
        search(tiny, "x86_avx2", SearchConfig(**SMALL), metric="labeled", store_path=roofline_store)
    with pytest.raises(ValueError, match="as many labels"):
        top1([(None,)] * 3, [0, 1])
    assert as_metric(None) is None and as_metric("sqnr") is None
    m = Metric("x", lambda y: 0.0)
    assert as_metric(m) is m and as_metric(len).name == "len"


def test_mean_pooling_ignores_padding():
    hidden = np.zeros((2, 4, 3), np.float32)
    hidden[0, :2] = [[1, 0, 0], [3, 0, 0]]
    hidden[0, 2:] = 100.0  # padding positions
    hidden[1] = [[0, 2, 0]] * 4
    masks = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(mean_pooled(hidden, masks), [[1, 0, 0], [0, 1, 0]])


def test_cli_search_with_a_labeled_metric_needs_labels(tmp_path, capsys):
    from tvm_mpq.cli import main

    assert main(["search", "--model", "tiny_cnn", "--hw", "x86_avx2", "--metric", "labeled", "--min-score", "0.5",
              "--out", str(tmp_path), "--calib-samples", "24", "--sensitivity-samples", "8",
              "--eval-samples", "8", "--store", str(tmp_path / "s.sqlite")]) != 0
    assert "'tiny_cnn' has no labeled data" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_search_by_fashion_mnist_accuracy(tmp_path):
    """small_cnn: phase 3 by Fashion-MNIST test accuracy, within one accuracy point of FP32."""
    from tvm_mpq.cli import main

    out = tmp_path / "out"
    assert main(["search", "--model", "small_cnn", "--hw", "x86_avx2", "--metric", "labeled", "--max-drop", "0.01",
                 "--out", str(out), "--calib-samples", "64", "--sensitivity-samples", "16", "--eval-samples", "16",
                 "--store", str(tmp_path / "s.sqlite")]) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metric"]
    assert m["name"] == "fashion_mnist_test_accuracy" and m["samples"] == 10000
    assert 0.85 < m["baseline_score"] <= 1.0
    assert report["selection"]["met"] and report["selection"]["evaluated_score"] >= m["baseline_score"] - 0.01


@pytest.mark.slow
def test_minilm_probe_scores_fp32_embeddings_well_above_chance():
    from tvm_mpq.metrics import labeled_metric

    spec = load_model("minilm_l6")
    metric = labeled_metric(spec)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name)
    y = Simulator(imported).run(list(metric.inputs))
    acc = metric.score(y)
    assert len(metric.inputs) == 256 and 0.65 < acc <= 1.0
    assert metric.score(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)) < 0.62
