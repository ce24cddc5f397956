"""Search tables: noise model, validation, BOPs and latency cost tables (NumPy references)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tvm_mpq.search.tables import (CostTable, ParetoPoint, SensitivityTable, bops_cost_table, candidate_bits,
                                   latency_cost_table, predicted_noise, predicted_sqnr_db)

ROOT = Path(__file__).resolve().parents[1]


def small_sens(**over):
    kw = dict(baseline="FP32", groups=("a", "b"), candidates={"a": ("FP32", "W8A8"), "b": ("FP32", "W8A8", "W4A8")},
              sqnr_db={("a", "W8A8"): 20.0, ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0})
    kw.update(over)
    return SensitivityTable(**kw)


def test_noise_and_predicted_sqnr_match_hand_computation():
    s = small_sens()
    assert s.noise("a", "FP32") == 0.0 and s.baseline_sqnr_db == math.inf
    assert s.noise("a", "W8A8") == pytest.approx(1e-2)
    cfg = {"a": "W8A8", "b": "W8A8"}
    assert predicted_noise(s, cfg) == pytest.approx(1e-2 + 1e-3)
    assert predicted_sqnr_db(s, cfg) == pytest.approx(-10 * np.log10(0.011))
    assert predicted_sqnr_db(s, s.baseline_config()) == math.inf
    assert s.moves() == [("a", "W8A8"), ("b", "W8A8"), ("b", "W4A8")]


def test_finite_baseline_counts_its_noise_once():
    # baseline W8A16 at 50 dB: every single-change entry contains the baseline's noise n0 = 1e-5
    s = SensitivityTable("W8A16", ("a", "b", "c"), {g: ("W8A16", "W8A8") for g in "abc"},
                         {**{(g, "W8A16"): 50.0 for g in "abc"}, ("a", "W8A8"): 30.0, ("b", "W8A8"): 30.0,
                          ("c", "W8A8"): 40.0})
    n0 = 1e-5
    assert predicted_sqnr_db(s, s.baseline_config()) == pytest.approx(50.0)
    cfg = {"a": "W8A8", "b": "W8A8", "c": "W8A16"}
    assert predicted_noise(s, cfg) == pytest.approx(n0 + 2 * (1e-3 - n0))


@pytest.mark.parametrize("over, words", [
    (dict(sqnr_db={("a", "W8A8"): 20.0, ("b", "W8A8"): 30.0}), ["'b'", "'W4A8'"]),
    (dict(sqnr_db={("a", "W8A8"): float("nan"), ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0}), ["'a'", "NaN"]),
    (dict(sqnr_db={("a", "W8A8"): -math.inf, ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0}), ["'a'", "-inf"]),
    (dict(sqnr_db={("a", "W8A8"): 20.0, ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0, ("z", "W8A8"): 1.0}),
     ["unknown group", "'z'"]),
    (dict(sqnr_db={("a", "W8A8"): 20.0, ("a", "W4A8"): 9.0, ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0}),
     ["'a'", "'W4A8'"]),
    (dict(candidates={"a": ("W8A8",), "b": ("FP32", "W8A8", "W4A8")}), ["baseline", "'a'"]),
    (dict(candidates={"a": ("FP32", "W8A8")}), ["'b'", "candidate list"]),
    (dict(groups=("a", "a")), ["twice"]),
    (dict(sqnr_db={("a", "W8A8"): 20.0, ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0, ("a", "FP32"): 60.0}),
     ["baseline SQNR differs"]),
])
def test_bad_sensitivity_tables_name_the_entry(over, words):
    with pytest.raises(ValueError) as e:
        small_sens(**over)
    for w in words:
        assert w in str(e.value)


def test_cost_table_validation_and_config_cost():
    c = CostTable("ms", {("a", "FP32"): 2.0, ("a", "W8A8"): 1.0, ("b", "FP32"): 3.0}, offset=0.5)
    assert c.config_cost({"a": "W8A8", "b": "FP32"}) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="'b'"):
        c.config_cost({"a": "W8A8"})
    with pytest.raises(ValueError, match="'a' at 'W4A8'"):
        c.config_cost({"a": "W4A8", "b": "FP32"})
    with pytest.raises(ValueError, match="'a' at 'W8A8' is NaN"):
        CostTable("ms", {("a", "W8A8"): float("nan")})
    with pytest.raises(ValueError, match=">= 0"):
        CostTable("ms", {("a", "W8A8"): -1.0})
    with pytest.raises(ValueError, match="unit"):
        CostTable("seconds", {})
    with pytest.raises(ValueError, match="'b' at 'W8A8'"):
        CostTable("ms", {("a", "FP32"): 1.0, ("a", "W8A8"): 1.0, ("b", "FP32"): 1.0}).check_covers(small_sens())


def test_tables_are_read_only_copies():
    src = {("a", "W8A8"): 20.0, ("b", "W8A8"): 30.0, ("b", "W4A8"): 10.0}
    s = small_sens(sqnr_db=src)
    src[("a", "W8A8")] = 0.0
    assert s.sqnr_db[("a", "W8A8")] == 20.0
    with pytest.raises(TypeError):
        s.sqnr_db[("a", "W8A8")] = 1.0
    p = ParetoPoint({"a": "FP32"}, 1.0, math.inf, 0)
    with pytest.raises(TypeError):
        p.config["a"] = "W8A8"


def test_bops_cost_table_matches_hand_computation():
    t = bops_cost_table({"a": 100, "b": 300}, {"a": ("FP32", "FP16", "W8A8"), "b": ("FP32", "W4A8", "W8A16")})
    total = 400 * 32 * 32
    assert t.unit == "bops"
    assert t.cost[("a", "FP32")] == pytest.approx(100 * 1024 / total)
    assert t.cost[("a", "FP16")] == pytest.approx(100 * 256 / total)
    assert t.cost[("a", "W8A8")] == pytest.approx(100 * 64 / total)
    assert t.cost[("b", "W4A8")] == pytest.approx(300 * 32 / total)
    assert t.cost[("b", "W8A16")] == pytest.approx(300 * 128 / total)
    assert t.config_cost({"a": "FP32", "b": "FP32"}) == pytest.approx(1.0)
    assert candidate_bits("w4a16") == (4, 16)
    with pytest.raises(ValueError, match="INT8"):
        candidate_bits("INT8")
    with pytest.raises(ValueError, match="different groups"):
        bops_cost_table({"a": 1}, {"b": ("FP32",)})
    custom = bops_cost_table({"a": 10}, {"a": ("FP32", "INT8")}, bits=lambda c: (32, 32) if c == "FP32" else (8, 8))
    assert custom.cost[("a", "INT8")] == pytest.approx(1 / 16)


def test_latency_cost_table_equals_model_ms():
    from tvm_mpq.graph import QuantizerGroup
    from tvm_mpq.latency import MEASURED, Entry, LatencyTable

    rng = np.random.default_rng(0)
    names = ["l0", "l1", "l2", "l3"]
    layers = {n: {c: Entry(float(rng.uniform(0.1, 2)), 0.0, MEASURED) for c in ("FP32", "W8A8", "W8A16")}
              for n in names}
    converts = {n: {b: [Entry(float(rng.uniform(0.01, 0.1)), 0.0, MEASURED)] for b in (8, 16)} for n in names}
    lat = LatencyTable("p", layers, converts)
    groups = [QuantizerGroup("l0", ("l0", "l2")), QuantizerGroup("l1", ("l1",))]  # l3 in no group: stays FP32
    table = latency_cost_table(lat, groups)
    assert table.unit == "ms"
    for c0 in ("FP32", "W8A8", "W8A16"):
        for c1 in ("FP32", "W8A8", "W8A16"):
            plan = {"l0": c0, "l2": c0, "l1": c1}
            assert table.config_cost({"l0": c0, "l1": c1}) == pytest.approx(lat.model_ms(plan))
    with pytest.raises(ValueError, match="'nope'"):
        latency_cost_table(lat, [QuantizerGroup("nope", ("nope",))])


def test_search_modules_import_without_torch_or_tvm():
    code = ("import sys, types; pkg = types.ModuleType('tvm_mpq'); pkg.__path__ = [sys.argv[1]]; "
            "sys.modules['tvm_mpq'] = pkg; import tvm_mpq.search, tvm_mpq.search.synthetic; "
            "bad = [m for m in ('torch', 'tvm', 'scipy.optimize') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "tvm_mpq")], check=True, timeout=60)


def test_latency_cost_table_with_boundaries_equals_model_ms():
    """Boundary corrections: pair terms between grouped neighbours, folded into the group's cost where the
    neighbour is in no group; config_cost = model_ms for every plan, and differs from the additive cost."""
    from tvm_mpq.graph import QuantizerGroup
    from tvm_mpq.latency import IN_MODEL, Entry, LatencyTable

    rng = np.random.default_rng(1)
    names = ["l0", "l1", "l2", "l3", "l4"]
    cands = ("FP32", "W8A8", "W4A8", "W8A16")
    layers = {n: {c: Entry(float(rng.uniform(0.5, 2)), 0.0, IN_MODEL) for c in cands} for n in names}
    converts = {n: {b: [Entry(0.0, 0.0, IN_MODEL)] for b in (8, 16)} for n in names}
    bits = (8, 16, 32)
    boundaries = {n: {(a, b): Entry(float(rng.uniform(-0.2, 0.4)), 0.0, IN_MODEL) for a in bits for b in bits if a != b}
                  for n in names[:-1]}
    lat = LatencyTable("p", layers, converts, [], boundaries)
    # l0 and l2 share a group (a pair term l0→l1 and l1→l2 both link groups "a" and "b"); l3 is in no group
    groups = [QuantizerGroup("a", ("l0", "l2")), QuantizerGroup("b", ("l1",)), QuantizerGroup("c", ("l4",))]
    table = latency_cost_table(lat, groups)
    assert set(table.pairs) == {("a", "b")} and set(table.neighbours("a")) == {"b"}
    differs = 0
    for ca in cands:
        for cb in cands:
            for cc in cands:
                plan = {"l0": ca, "l2": ca, "l1": cb, "l4": cc}
                config = {"a": ca, "b": cb, "c": cc}
                assert table.config_cost(config) == pytest.approx(lat.model_ms(plan))
                additive = sum(layers[n][plan.get(n, "FP32")].ms for n in names)
                differs += not math.isclose(table.config_cost(config), additive)
                # cost_in: the config's cost changes by exactly the difference of cost_in when one group moves
                moved = {**config, "b": "W8A8"}
                assert (table.config_cost(moved) - table.config_cost(config)) == pytest.approx(
                    table.cost_in("b", "W8A8", config) - table.cost_in("b", cb, config))
    assert differs > 0
    # same activation precision (W8A8 → W4A8): no correction
    assert lat.boundary_ms("l0", "W8A8", "W4A8") == 0.0
    assert lat.boundary_ms("l0", "W8A8", "FP32") == boundaries["l0"][(8, 32)].ms


def test_cost_table_pair_validation():
    cost = {("a", "FP32"): 1.0, ("a", "W8A8"): 0.5, ("b", "FP32"): 1.0, ("b", "W8A8"): 0.5}
    t = CostTable("ms", cost, 0.0, {("a", "b"): {("FP32", "W8A8"): 0.3, ("W8A8", "FP32"): -0.1}})
    assert t.config_cost({"a": "FP32", "b": "W8A8"}) == pytest.approx(1.8)
    assert t.config_cost({"a": "W8A8", "b": "FP32"}) == pytest.approx(1.4)
    assert t.config_cost({"a": "W8A8", "b": "W8A8"}) == pytest.approx(1.0)
    for pairs, words in [({("a", "a"): {}}, "two different groups"),
                         ({("a", "z"): {}}, "group 'z'"),
                         ({("a", "b"): {("FP32", "W4A8"): 1.0}}, "no cost at 'W4A8'"),
                         ({("a", "b"): {("FP32", "W8A8"): float("nan")}}, "NaN"),
                         ({("a", "b"): {}, ("b", "a"): {}}, "given twice")]:
        with pytest.raises(ValueError, match=words):
            CostTable("ms", cost, 0.0, pairs)
