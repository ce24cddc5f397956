"""In-model latency: call profiles of compiled models cut into per-layer segments, stored, used by tables."""

import numpy as np
import pytest

from tvm_mpq.frontend import import_model
from tvm_mpq.graph import Layer, LayerGraph, QuantizerGroup, Workload
from tvm_mpq.latency import IN_MODEL, MEASURED, build_table
from tvm_mpq.measure.in_model import (
    InModelError,
    alternating_plan,
    boundary_pairs,
    layer_segments,
    measure_boundaries,
    measure_in_model,
    model_fingerprint,
    fastest_call_ms, segment_ms,
    synthetic_ranges,
)
from tvm_mpq.models import load_model
from tvm_mpq.store import MeasurementStore


def _graph(workloads):
    layers = {}
    for i, wl in enumerate(workloads):
        layers[f"l{i}"] = Layer(f"l{i}", "linear", f"n{i}", wl, wl.macs)
    return LayerGraph(layers, [QuantizerGroup(f"g{i}", (n,)) for i, n in enumerate(layers)])


def _linear(k, n):
    return Workload("linear", (1, k), (n, k), (1, n))


def test_segments_cut_the_calls_at_each_layers_kernel():
    graph = _graph([_linear(8, 16), _linear(16, 16), _linear(16, 4)])
    symbols = ["quantize", "mpqL0_avx2_gemm", "epi0", "mpqL1_avx2_gemm", "alloc", "epi1", "mpqL2_qdense", "out"]
    seconds = np.arange(1, 2 * len(symbols) + 1, dtype=float).reshape(2, -1)
    seg = layer_segments(symbols, seconds, graph)
    # the first segment takes the calls before the first kernel; each runs to the next kernel
    np.testing.assert_array_equal(seg["l0"][0], seconds[:, 0:3].sum(axis=1))
    np.testing.assert_array_equal(seg["l1"][0], seconds[:, 3:6].sum(axis=1))
    np.testing.assert_array_equal(seg["l2"][0], seconds[:, 6:8].sum(axis=1))
    assert [seg[n][1] for n in ("l0", "l1", "l2")] == [3, 3, 2]


def test_merged_identical_kernels_are_attributed_by_position():
    wl = _linear(16, 16)
    graph = _graph([_linear(8, 16), wl, wl])
    # TVM merged layer 2's kernel into layer 1's (same workload): it carries tag 1 at position 2
    symbols = ["mpqL0_k", "mpqL1_k", "e", "mpqL1_k", "e"]
    seg = layer_segments(symbols, np.ones((1, 5)), graph)
    assert [seg[n][1] for n in ("l0", "l1", "l2")] == [1, 2, 2]


def test_a_tag_of_another_workload_or_a_missing_kernel_is_refused():
    graph = _graph([_linear(8, 16), _linear(16, 16), _linear(16, 4)])
    with pytest.raises(InModelError, match="does not belong"):
        layer_segments(["mpqL0_k", "mpqL1_k", "mpqL1_k"], np.ones((1, 3)), graph)  # l2 differs from l1
    with pytest.raises(InModelError, match="2 tagged kernel calls for 3 layers"):
        layer_segments(["mpqL0_k", "conv2d_add", "mpqL2_k"], np.ones((1, 3)), graph)


def test_segment_ms_removes_per_call_overhead_and_adds_up_to_the_model():
    runs = np.array([[1.0, 1.0], [1.2, 0.9], [1.1, 1.0]]) * 1e-3  # seconds: [runs, layers]
    segments = {"a": (runs[:, 0] + 4 * 10e-6, 4), "b": (runs[:, 1] + 1 * 10e-6, 1)}  # 10 us per call
    model_ms = float(np.median(runs.sum(axis=1))) * 1e3
    ms, spread = segment_ms(segments, model_ms)
    assert ms["a"] + ms["b"] == pytest.approx(model_ms)
    ref_share_a = np.median(runs[:, 0] / runs.sum(axis=1))
    ref_share_b = np.median(runs[:, 1] / runs.sum(axis=1))
    assert ms["a"] == pytest.approx(model_ms * ref_share_a / (ref_share_a + ref_share_b), rel=1e-6)
    assert spread["a"] > 0


def test_segment_ms_bounds_the_overhead_by_the_fastest_call():
    """A slow build whose uninstrumented runs met a faster window of the host (whole 5 ms, calls adding up to
    10 ms): taking the 5 ms excess off all 6 calls evenly wiped out the short segment; bounded by the
    fastest call (1 us), the excess is left to the rescaling and each segment keeps its share."""
    seconds = np.array([[1e-6, 20e-6, 20e-6, 20e-6, 20e-6, 9.9e-3]] * 3)  # [runs, calls]
    segments = {"short": (seconds[:, :5].sum(axis=1), 5), "long": (seconds[:, 5], 1)}
    unbounded, _ = segment_ms(segments, 5.0)
    assert unbounded["short"] < 1e-6  # the old behaviour: 0.081 ms of calls gone
    assert fastest_call_ms(seconds) == pytest.approx(1e-3)
    ms, _ = segment_ms(segments, 5.0, fastest_call_ms(seconds))
    assert ms["short"] + ms["long"] == pytest.approx(5.0)
    share = (0.081 - 5 * 1e-3) / (9.9 + 0.081 - 6 * 1e-3)
    assert ms["short"] == pytest.approx(5.0 * share, rel=1e-6)


@pytest.fixture(scope="module")
def tiny(x86_profile):
    spec = load_model("tiny_cnn")
    return import_model(spec.module, spec.example_inputs, name=spec.name)


@pytest.fixture(scope="module")
def measured(tiny, x86_profile, tmp_path_factory):
    """In-model segments of tiny_cnn at two candidates, in a store."""
    path = tmp_path_factory.mktemp("in_model") / "store.sqlite"
    with MeasurementStore(path) as store:
        result = measure_in_model(tiny, x86_profile, candidates=["W8A8", "FP32"], runs=3, rounds=3, store=store)
        rows = store.query(profile=x86_profile.name)
    return result, rows


def test_segments_of_a_real_build_add_up_to_its_measured_latency(tiny, measured):
    result, rows = measured
    assert not result.failed
    for cand in ("W8A8", "FP32"):
        seg = result.segments_ms[cand]
        assert set(seg) == set(tiny.graph.layers)
        assert all(v > 0 for v in seg.values())
        assert sum(seg.values()) == pytest.approx(result.model_ms[cand], rel=1e-9)
    assert len(rows) == 2 * (len(tiny.graph.layers) + 1)  # each layer + the whole model, per build
    assert all(r.kind == "model" and r.meta["kernels"] for r in rows)


def test_table_uses_segments_only_when_complete(tiny, x86_profile, measured, tmp_path):
    result, rows = measured
    # W4A8 and W8A16 builds are missing: the isolated tasks are used, and the table says why
    partial = build_table(tiny.graph, x86_profile, rows)
    assert IN_MODEL not in partial.sources()
    assert any("in-model segments incomplete" in n for n in partial.notes)
    # complete it with the other two builds: now every entry is in-model and converts cost nothing
    path = tmp_path / "store.sqlite"
    with MeasurementStore(path) as store:
        store.put_many(rows)
        more = measure_in_model(tiny, x86_profile, candidates=["W4A8", "W8A16"], runs=2, rounds=2, store=store)
        rows = store.query(profile=x86_profile.name)
    assert not more.failed
    table = build_table(tiny.graph, x86_profile, rows)
    assert set(table.sources()) == {IN_MODEL}
    for cand in ("W8A8", "FP32", "W4A8", "W8A16"):
        plan = {n: cand for n in tiny.graph.layers}
        whole = {**result.model_ms, **more.model_ms}[cand]
        assert table.model_ms(plan) == pytest.approx(whole, rel=1e-9)  # exact for homogeneous builds
    # segments of another model (other fingerprint) are not used
    other = _graph([_linear(8, 16)])
    assert model_fingerprint(other) != model_fingerprint(tiny.graph)
    assert IN_MODEL not in build_table(other, x86_profile, rows).sources()


def test_in_model_needs_a_local_cpu_target(tiny):
    from tvm_mpq.hardware import load_profile

    with pytest.raises(InModelError, match="runs the model on this machine"):
        measure_in_model(tiny, load_profile("cuda_sm90"), candidates=["FP16"])


def test_profile_refuses_in_model_over_rpc():
    from tvm_mpq.measure.profiler import profile_model

    with pytest.raises(ValueError, match="in-model profiling needs"):
        profile_model("tiny_cnn", "x86_avx2", rpc="127.0.0.1:1:key", in_model=True, budget_s=0)


def test_alternating_plans_keep_groups_whole(x86_profile):
    wl = _linear(8, 8)
    layers = {f"l{i}": Layer(f"l{i}", "linear", f"n{i}", wl, wl.macs) for i in range(5)}
    graph = LayerGraph(layers, [QuantizerGroup("g0", ("l0", "l1")), QuantizerGroup("g2", ("l2",)),
                                QuantizerGroup("g3", ("l3", "l4"))])
    ranges = synthetic_ranges(graph)
    p0 = alternating_plan(graph, x86_profile, "W8A8", "FP32", 0, ranges).layers
    p1 = alternating_plan(graph, x86_profile, "W8A8", "FP32", 1, ranges).layers
    assert p0 == {"l0": "W8A8", "l1": "W8A8", "l2": "FP32", "l3": "W8A8", "l4": "W8A8"}
    assert p1 == {n: ("FP32" if c == "W8A8" else "W8A8") for n, c in p0.items()}
    # one representative per activation precision: W4A8 shares W8A8's
    assert boundary_pairs(x86_profile) == [("W8A8", "W8A16"), ("W8A8", "FP32"), ("W8A16", "FP32")]


def test_boundary_builds_correct_the_table_of_mixed_plans(tiny, x86_profile, measured, tmp_path):
    """The alternating W8A8/FP32 builds: every layer followed by the other precision is stored with that next
    candidate, and the table's boundary corrections bring its prediction of those builds closer to them."""
    _, rows = measured
    with MeasurementStore(tmp_path / "store.sqlite") as store:
        store.put_many(rows)
        more = measure_in_model(tiny, x86_profile, candidates=["W4A8", "W8A16"], runs=2, rounds=2, store=store)
        edges = measure_boundaries(tiny, x86_profile, pairs=[("W8A8", "FP32")], runs=3, rounds=3, store=store)
        rows = store.query(profile=x86_profile.name)
    assert not more.failed and not edges.failed and set(edges.model_ms) == {"W8A8|FP32|0", "W8A8|FP32|1"}
    names = list(tiny.graph.layers)
    for label, plan in edges.plans.items():
        assert set(edges.segments_ms[label]) == {n for n, m in zip(names, names[1:]) if plan[n] != plan[m]}
    table = build_table(tiny.graph, x86_profile, rows)
    assert set(table.sources()) == {IN_MODEL} and any("boundary corrections" in n for n in table.notes)
    assert set(table.boundaries) == set(names[:-1])
    assert all(set(row) == {(8, 32), (32, 8)} for row in table.boundaries.values())
    err_with = err_without = 0.0
    for label, plan in edges.plans.items():
        additive = sum(table.layers[n][c].ms for n, c in plan.items())
        err_with += abs(table.model_ms(plan) - edges.model_ms[label])
        err_without += abs(additive - edges.model_ms[label])
    assert err_with < err_without


def test_plan_latency_sets_measured_segments_beside_the_tables(tiny, x86_profile, measured, tmp_path):
    """benchmarks/plan_latency.py on a plan the table covers: one row per layer with its neighbours'
    precisions, the table's prediction of the plan, and measured segments that add up to the measured model."""
    from benchmarks import plan_latency

    _, rows = measured
    with MeasurementStore(tmp_path / "store.sqlite") as store:
        store.put_many(rows)  # the table takes segments once every candidate has its build
        measure_in_model(tiny, x86_profile, candidates=["W4A8", "W8A16"], runs=2, rounds=2, store=store)
    result = plan_latency.run("tiny_cnn", x86_profile.name, "W8A8", runs=4, rounds=2,
                              store_path=tmp_path / "store.sqlite", device="local")
    names = list(tiny.graph.layers)
    assert [r["layer"] for r in result["layers"]] == names
    assert all(r["candidate"] == "W8A8" and r["boundary_ms"] == 0.0 for r in result["layers"])
    assert result["predicted_ms"] == pytest.approx(sum(r["predicted_ms"] for r in result["layers"]))
    measured_total = sum(r["measured_ms"] for r in result["layers"])
    assert measured_total == pytest.approx(result["measured_ms"]["median_ms"], rel=1e-6)
    assert sum(s["layers"] for s in result["by_situation"].values()) == len(names)
    with pytest.raises(SystemExit, match="no in-model measurements"):
        plan_latency.run("tiny_cnn", x86_profile.name, "W8A8", runs=2, rounds=1, store_path=tmp_path / "empty.sqlite")


def test_segments_of_16_bit_layers_on_the_vnni_planes(tiny, tmp_path):
    """On the VNNI library W8A16 dense layers and 1x1 convs run the two-plane GEMM after a byte-plane pass:
    the in-model profile still finds one tagged kernel call per layer and gives every layer a segment."""
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import host_runs

    if not host_runs("x86_avx512_vnni"):
        pytest.skip("this CPU cannot run the x86_avx512_vnni kernels")
    profile = load_profile("x86_avx512_vnni")
    with MeasurementStore(tmp_path / "store.sqlite") as store:
        result = measure_in_model(tiny, profile, candidates=["W8A16"], runs=2, rounds=2, store=store)
    assert not result.failed, result.failed
    seg = result.segments_ms["W8A16"]
    assert set(seg) == set(tiny.graph.layers) and all(v > 0 for v in seg.values())
