"""Phase 2 fronts: structure on synthetic tables, the paper's order on a hand-worked example, and a
crafted case where ordering by quality per cost beats ordering by sensitivity."""

import math

import pytest

from tvm_mpq.search.pareto import ORDERS, compare_fronts, pareto_front, prune_dominated, quality_at
from tvm_mpq.search.synthetic import synthetic_tables
from tvm_mpq.search.tables import CostTable, SensitivityTable, predicted_sqnr_db

CASES = [(seed, n, k) for seed, n, k in [(0, 6, 3), (1, 8, 4), (2, 10, 3), (3, 12, 4), (4, 9, 4)]]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("seed, n_groups, n_cands", CASES)
def test_front_structure(order, seed, n_groups, n_cands):
    sens, cost = synthetic_tables(seed, n_groups, n_cands)
    front = pareto_front(sens, cost, order)
    base = front[0]
    assert dict(base.config) == sens.baseline_config() and base.moves == 0 and base.last_move is None
    assert base.cost == pytest.approx(sum(cost.cost[(g, "FP32")] for g in sens.groups))
    assert base.predicted_sqnr_db == math.inf
    for i, (prev, p) in enumerate(zip(front, front[1:]), 1):
        assert p.cost < prev.cost
        changed = [g for g in sens.groups if p.config[g] != prev.config[g]]
        assert len(changed) == 1 and p.last_move == (changed[0], p.config[changed[0]])
        g = changed[0]
        assert cost.cost[(g, p.config[g])] < cost.cost[(g, prev.config[g])]
        assert p.moves == i
        assert p.predicted_sqnr_db == pytest.approx(predicted_sqnr_db(sens, p.config))
        assert p.cost == pytest.approx(cost.config_cost(p.config))
    # the walk ends with every group at its cheapest candidate
    cheapest = sum(min(cost.cost[(g, c)] for c in sens.candidates[g]) for g in sens.groups)
    assert front[-1].cost == pytest.approx(cheapest)


def hand_tables():
    groups = ("A", "B", "C")
    cands = {g: ("FP32", "W8A8", "W4A8") for g in groups}
    cost = CostTable("ms", {("A", "FP32"): 10, ("A", "W8A8"): 4, ("A", "W4A8"): 3,
                            ("B", "FP32"): 6, ("B", "W8A8"): 3, ("B", "W4A8"): 2.5,
                            ("C", "FP32"): 2, ("C", "W8A8"): 1, ("C", "W4A8"): 0.5})
    sens = SensitivityTable("FP32", groups, cands, {("A", "W8A8"): 40, ("A", "W4A8"): 20, ("B", "W8A8"): 35,
                                                    ("B", "W4A8"): 38, ("C", "W8A8"): 40, ("C", "W4A8"): 25})
    return sens, cost


def test_sensitivity_order_hand_worked():
    sens, cost = hand_tables()
    front = pareto_front(sens, cost, "sensitivity")
    # sorted by SQNR: A@W8A8 (40, saves 6) before C@W8A8 (40, saves 1); B@W4A8 38; B@W8A8 35 is skipped
    # (B at W4A8 already costs 2.5 < 3); C@W4A8 25; A@W4A8 20.
    assert [p.last_move for p in front[1:]] == [("A", "W8A8"), ("C", "W8A8"), ("B", "W4A8"), ("C", "W4A8"),
                                                ("A", "W4A8")]
    assert [p.cost for p in front] == pytest.approx([18, 12, 11, 7.5, 7.0, 6.0])
    assert front[1].predicted_sqnr_db == pytest.approx(40.0)
    assert front[2].predicted_sqnr_db == pytest.approx(-10 * math.log10(2e-4))
    assert front[3].predicted_sqnr_db == pytest.approx(-10 * math.log10(2e-4 + 10 ** -3.8))


def test_quality_per_cost_order_hand_worked():
    sens, cost = hand_tables()
    front = pareto_front(sens, cost, "quality_per_cost")
    # ratios from baseline: A8 1e-4/6, B4 10^-3.8/3.5, C8 1e-4/1, B8 10^-3.5/3, ...; after A8, B4, C8:
    # C4 (10^-2.5 - 1e-4)/0.5 = 6.1e-3 < A4 (1e-2 - 1e-4)/1 = 9.9e-3
    assert [p.last_move for p in front[1:]] == [("A", "W8A8"), ("B", "W4A8"), ("C", "W8A8"), ("C", "W4A8"),
                                                ("A", "W4A8")]


def crafted_tables():
    """Group S is very sensitive (W8A8 at 26 dB) and almost free to keep in FP32 (saves 0.02 ms); the other
    five are robust at W8A8 (30 dB, big savings) and tolerable at W4A8 (24 dB, a further 2 ms). The
    paper's order quantizes S before any W4A8 move (26 > 24 dB), spending noise for nothing."""
    groups = ("S",) + tuple(f"g{i}" for i in range(5))
    cands = {g: ("FP32", "W8A8") if g == "S" else ("FP32", "W8A8", "W4A8") for g in groups}
    sqnr, cost = {("S", "W8A8"): 26.0}, {("S", "FP32"): 1.0, ("S", "W8A8"): 0.98}
    for i, g in enumerate(groups[1:]):
        sqnr[(g, "W8A8")], sqnr[(g, "W4A8")] = 30.0 + 0.1 * i, 24.0 - 0.1 * i
        cost[(g, "FP32")], cost[(g, "W8A8")], cost[(g, "W4A8")] = 10.0 + i, 5.0 + i, 3.0 + i
    return SensitivityTable("FP32", groups, cands, sqnr), CostTable("ms", cost)


def test_quality_per_cost_beats_sensitivity_on_crafted_case():
    sens, cost = crafted_tables()
    qpc = pareto_front(sens, cost, "quality_per_cost")
    paper = pareto_front(sens, cost, "sensitivity")
    assert qpc[-1].last_move == ("S", "W8A8")  # keeps S in float to the end
    assert [p.last_move for p in paper].index(("S", "W8A8")) == 6  # right after the five W8A8 moves
    # at every cost the quality_per_cost front offers, the sensitivity front has nothing as good
    for p in qpc:
        assert p.predicted_sqnr_db >= quality_at(paper, p.cost)
    strictly = [p for p in qpc if p.predicted_sqnr_db > quality_at(paper, p.cost) + 1e-9]
    assert len(strictly) >= 4
    report = compare_fronts(qpc, paper)
    assert report["winner"] == "a" and report["area_db_cost"] > 0 and report["mean_gain_db"] > 0
    assert compare_fronts(paper, qpc)["winner"] == "b"


def test_compare_fronts_identical_is_tie():
    sens, cost = synthetic_tables(5, 8, 4)
    f = pareto_front(sens, cost, "sensitivity")
    r = compare_fronts(f, f)
    assert r["winner"] == "tie" and r["a_better"] == r["b_better"] == 0 and r["area_db_cost"] == 0


def test_prune_drops_dominated_points():
    sens, cost = synthetic_tables(3, 12, 4)
    for order in ORDERS:
        full = pareto_front(sens, cost, order)
        pruned = pareto_front(sens, cost, order, prune=True)
        assert pruned == prune_dominated(full) and pruned[0] == full[0] and pruned[-1] == full[-1]
        assert all(p in full for p in pruned)
        for i, p in enumerate(pruned):
            for q in pruned[i + 1:]:
                assert p.cost > q.cost and p.predicted_sqnr_db > q.predicted_sqnr_db
        for p in full:  # every dropped point is dominated by a kept one
            if p not in pruned:
                assert any(q.cost <= p.cost and q.predicted_sqnr_db >= p.predicted_sqnr_db for q in pruned)


def test_bad_arguments():
    sens, cost = hand_tables()
    with pytest.raises(ValueError, match="unknown order"):
        pareto_front(sens, cost, "bops")
    partial = CostTable("ms", {k: v for k, v in cost.cost.items() if k != ("B", "W8A8")})
    with pytest.raises(ValueError, match="'B' at 'W8A8'"):
        pareto_front(sens, partial)


@pytest.mark.parametrize("order", ORDERS)
def test_joint_moves_cross_a_boundary_barrier(order):
    """Three chained groups where quantizing any one alone adds two precision changes that cost more than it
    saves: only a joint move reaches the all-W8A8 configuration, which is the cheapest."""
    groups = ("A", "B", "C")
    cands = {g: ("FP32", "W8A8") for g in groups}
    sens = SensitivityTable("FP32", groups, cands, {("A", "W8A8"): 40.0, ("B", "W8A8"): 38.0, ("C", "W8A8"): 39.0})
    boundary = {("FP32", "W8A8"): 0.3, ("W8A8", "FP32"): 0.3}
    cost = CostTable("ms", {(g, c): (1.0 if c == "FP32" else 0.8) for g in groups for c in ("FP32", "W8A8")},
                     0.0, {("A", "B"): boundary, ("B", "C"): boundary})
    base = sens.baseline_config()
    assert all(cost.change(base, {g: "W8A8"}) > 0 for g in groups)  # no single move pays
    front = pareto_front(sens, cost, order)
    assert dict(front[-1].config) == {g: "W8A8" for g in groups}
    assert front[-1].cost == pytest.approx(2.4) and front[-1].moves == 3
    for prev, p in zip(front, front[1:]):
        assert p.cost < prev.cost and p.cost == pytest.approx(cost.config_cost(p.config))
