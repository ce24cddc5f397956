"""Phase 3 selection: the three searches agree on a monotone front, binary search is logarithmic, the
dual under a budget, unmeetable targets, caching, and monotonicity violations are reported."""

import math

import pytest

from tvm_mpq.search.pareto import pareto_front
from tvm_mpq.search.select import (CachedEvaluator, check_monotonic, evaluate_curve, select_within_budget,
                                   select_within_drop)
from tvm_mpq.search.synthetic import synthetic_tables


def front_and_quality(seed=3, n_groups=12, n_cands=4, rise_at=None):
    """A front and an evaluator whose quality falls strictly along it (optionally rising once at `rise_at`)."""
    sens, cost = synthetic_tables(seed, n_groups, n_cands)
    front = pareto_front(sens, cost)
    quality = {tuple(sorted(p.config.items())): 60.0 - 1.5 * i for i, p in enumerate(front)}
    if rise_at is not None:
        quality[tuple(sorted(front[rise_at].config.items()))] = 60.0 - 1.5 * (rise_at - 3)
    calls = []

    def evaluate(config):
        calls.append(dict(config))
        return quality[tuple(sorted(config.items()))]

    return front, evaluate, calls


@pytest.mark.parametrize("drop", [0.0, 0.7, 1.5, 7.4, 20.0, 33.0, 200.0])
def test_methods_agree_on_monotone_evaluator(drop):
    front, evaluate, _ = front_and_quality()
    n = len(front)
    expected = min(n - 1, int(drop // 1.5))
    picks = {m: select_within_drop(front, evaluate, 60.0, drop, method=m) for m in ("binary", "interpolation", "brute")}
    for m, s in picks.items():
        assert s.met and s.index == expected, m
        assert s.point.evaluated_sqnr_db == pytest.approx(60.0 - 1.5 * expected)
        assert s.point.config == front[expected].config
        assert "rises" not in s.message
    assert picks["brute"].evaluations == n
    assert picks["binary"].evaluations <= math.ceil(math.log2(n + 1))
    assert picks["interpolation"].evaluations <= 2 * math.ceil(math.log2(n)) + 2


def test_binary_search_is_logarithmic_on_long_front():
    front, evaluate, calls = front_and_quality(seed=7, n_groups=40, n_cands=4)
    n = len(front)
    assert n > 100
    s = select_within_drop(front, evaluate, 60.0, 50.0)
    assert s.met and s.index == 33 and s.evaluations == len(calls) <= math.ceil(math.log2(n + 1))
    assert [p.evaluated_sqnr_db for p in s.evaluated] == sorted((p.evaluated_sqnr_db for p in s.evaluated),
                                                                reverse=True)


@pytest.mark.parametrize("method", ["binary", "interpolation", "brute"])
def test_unmeetable_drop_returns_best_point_not_met(method):
    front, evaluate, _ = front_and_quality()
    s = select_within_drop(front, evaluate, 70.0, 1.0, method=method)  # target 69 > best quality 60
    assert not s.met and s.index == 0 and s.point.evaluated_sqnr_db == 60.0
    assert "no point of the front reaches 69" in s.message


def test_budget_dual():
    front, evaluate, _ = front_and_quality()
    budget = (front[4].cost + front[5].cost) / 2
    s = select_within_budget(front, evaluate, budget)
    assert s.met and s.index == 5 and s.evaluations == 1 and s.point.cost <= budget
    s_all = select_within_budget(front, evaluate, budget, assume_monotonic=False)
    assert s_all.index == 5 and s_all.evaluations == len(front) - 5
    s_exact = select_within_budget(front, evaluate, front[3].cost)  # cost == budget is affordable
    assert s_exact.index == 3
    none = select_within_budget(front, evaluate, front[-1].cost * 0.5)
    assert not none.met and none.index == len(front) - 1 and none.evaluations == 0 and "no point costs" in none.message


def test_budget_dual_without_monotonic_assumption_finds_planted_best():
    front, evaluate, _ = front_and_quality(rise_at=9)  # point 9 scores like point 6
    budget = front[8].cost - 1e-9  # affordable: 9, 10, ...
    assert select_within_budget(front, evaluate, budget).index == 9
    budget = front[7].cost - 1e-9  # affordable: 8, 9, ...; 8 is worse than the planted 9
    assume = select_within_budget(front, evaluate, budget)
    full = select_within_budget(front, evaluate, budget, assume_monotonic=False)
    assert assume.index == 8 and full.index == 9
    assert "rises" in full.message


def test_check_monotonic_finds_planted_violation():
    front, evaluate, _ = front_and_quality(rise_at=9)
    curve = evaluate_curve(front, evaluate)
    assert len(curve) == len(front) and all(p.evaluated_sqnr_db is not None for p in curve)
    assert check_monotonic(curve) == [9]
    assert check_monotonic(curve, tolerance=10.0) == []
    brute = select_within_drop(front, evaluate, 60.0, 12.0, method="brute")
    assert brute.index == 9  # the cheapest point within the drop, found only by evaluating everything
    assert "#8->#9" in brute.message and "rises" in brute.message
    clean, ev2, _ = front_and_quality()
    assert check_monotonic(evaluate_curve(clean, ev2)) == []


def test_evaluate_curve_subsample_keeps_ends():
    front, evaluate, calls = front_and_quality()
    pts = evaluate_curve(front, evaluate, max_points=5)
    assert len(pts) == 5 == len(calls)
    assert pts[0].config == front[0].config and pts[-1].config == front[-1].config
    assert [p.cost for p in pts] == sorted((p.cost for p in pts), reverse=True)


def test_cache_is_shared_through_cached_evaluator():
    front, evaluate, calls = front_and_quality()
    ev = CachedEvaluator(evaluate)
    first = select_within_drop(front, ev, 60.0, 6.0)
    again = select_within_drop(front, ev, 60.0, 6.0)
    assert first.evaluations > 0 and again.evaluations == 0 and again.index == first.index
    brute = select_within_drop(front, ev, 60.0, 6.0, method="brute")
    assert brute.evaluations == len(front) - first.evaluations == len(calls) - first.evaluations


def test_bad_inputs():
    front, evaluate, _ = front_and_quality()
    with pytest.raises(ValueError, match="unknown method"):
        select_within_drop(front, evaluate, 60.0, 1.0, method="golden")
    with pytest.raises(ValueError, match="decreasing cost"):
        select_within_drop(front[::-1], evaluate, 60.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        select_within_budget([], evaluate, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        select_within_drop(front, lambda c: float("nan"), 60.0, 1.0)
    with pytest.raises(ValueError, match="allowed_drop is NaN"):
        select_within_drop(front, evaluate, 60.0, float("nan"))


def test_interpolation_beats_binary_when_quality_tracks_prediction():
    from tvm_mpq.search.tables import predicted_sqnr_db

    sens, cost = synthetic_tables(1, 40, 4)
    front = pareto_front(sens, cost, prune=True)  # predicted SQNR strictly falls along a pruned front

    def evaluate(config):  # SQNR on held-out data: the prediction, 0.5 dB lower, saturating at 80 dB
        return min(predicted_sqnr_db(sens, config), 80.0) - 0.5

    totals = {"binary": 0, "interpolation": 0}
    for drop in (20.0, 35.0, 45.0, 55.0):
        picks = {m: select_within_drop(front, evaluate, 80.0, drop, method=m) for m in ("binary", "interpolation")}
        assert picks["binary"].index == picks["interpolation"].index
        for m, s in picks.items():
            totals[m] += s.evaluations
    assert totals["interpolation"] < totals["binary"]
