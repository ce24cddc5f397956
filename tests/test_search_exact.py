"""Exact multiple-choice knapsack (MILP) against brute-force enumeration, and against the greedy fronts."""

import itertools
import math

import numpy as np
import pytest

from tvm_mpq.search.exact import exact_front, exact_front_for, exact_min_cost, optimality_gap
from tvm_mpq.search.pareto import ORDERS, pareto_front
from tvm_mpq.search.synthetic import synthetic_tables
from tvm_mpq.search.tables import CostTable, SensitivityTable, predicted_noise, sqnr_to_noise


def enumerate_all(sens, cost):
    """(configs, cost, noise) of every configuration, by NumPy broadcasting over the additive tables."""
    groups = sens.groups
    n0 = sens.baseline_noise
    choices = list(itertools.product(*(sens.candidates[g] for g in groups)))
    c = np.array([[cost.cost[(g, k)] for g, k in zip(groups, ch)] for ch in choices]).sum(axis=1)
    nz = n0 + np.array([[sens.noise(g, k) - n0 for g, k in zip(groups, ch)] for ch in choices]).sum(axis=1)
    return choices, c, nz


def brute_min_cost(sens, cost, budget):
    _, c, nz = enumerate_all(sens, cost)
    ok = nz <= budget * (1 + 1e-9)
    return c[ok].min() if ok.any() else None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_equals_enumeration(seed):
    sens, cost = synthetic_tables(seed, 6, 3)  # 3^6 = 729 configurations
    _, _, nz = enumerate_all(sens, cost)
    budgets = list(np.quantile(nz, [0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0])) + [0.0]
    for b in budgets:
        p = exact_min_cost(sens, cost, -10 * math.log10(b) if b > 0 else math.inf)
        assert p.cost == pytest.approx(brute_min_cost(sens, cost, b), rel=1e-9, abs=1e-12)
        assert predicted_noise(sens, p.config) <= b * (1 + 1e-6)
        assert p.cost == pytest.approx(cost.config_cost(p.config))


def test_exact_with_finite_baseline_equals_enumeration():
    rng = np.random.default_rng(5)
    groups = tuple(f"g{i}" for i in range(6))
    cands = {g: ("W8A16", "W8A8", "W4A8") for g in groups}
    sqnr = {}
    cost = {}
    for g in groups:
        sqnr[(g, "W8A16")] = 50.0
        sqnr[(g, "W8A8")], sqnr[(g, "W4A8")] = float(rng.uniform(25, 45)), float(rng.uniform(12, 30))
        cost[(g, "W8A16")], cost[(g, "W8A8")], cost[(g, "W4A8")] = 3.0, float(rng.uniform(1, 2.5)), float(rng.uniform(0.5, 2))
    sens, table = SensitivityTable("W8A16", groups, cands, sqnr), CostTable("ms", cost)
    for target in (50.0, 40.0, 33.0, 27.0, 20.0):
        p = exact_min_cost(sens, table, target)
        assert p.cost == pytest.approx(brute_min_cost(sens, table, sqnr_to_noise(target)), rel=1e-9)
    with pytest.raises(ValueError, match="baseline"):
        exact_min_cost(sens, table, 55.0)


def test_exact_at_infinite_sqnr_is_the_baseline():
    sens, cost = synthetic_tables(4, 8, 4)
    p = exact_min_cost(sens, cost, math.inf)
    assert dict(p.config) == sens.baseline_config() and p.predicted_sqnr_db == math.inf
    assert exact_min_cost(sens, cost, -100.0).cost == pytest.approx(
        sum(min(cost.cost[(g, c)] for c in sens.candidates[g]) for g in sens.groups))


@pytest.mark.parametrize("order", ORDERS)
def test_exact_never_worse_than_greedy(order):
    sens, cost = synthetic_tables(11, 10, 4)
    greedy = pareto_front(sens, cost, order)
    gap = optimality_gap(greedy, exact_front_for(sens, cost, greedy))
    assert len(gap.rows) == len(greedy)
    for r in gap.rows:
        assert r.exact_cost <= r.greedy_cost * (1 + 1e-9) + 1e-12
    assert gap.max_relative_gap >= 0 and 1 <= gap.optimal_points <= len(greedy)
    assert gap.to_dict()["points"] == len(greedy)


def test_exact_front_sorted_and_gap_needs_covering_front():
    sens, cost = synthetic_tables(2, 8, 3)
    front = exact_front(sens, cost, [1e-4, 1e-2, 1e-3])
    assert [p.cost for p in front] == sorted((p.cost for p in front), reverse=True)
    greedy = pareto_front(sens, cost)
    with pytest.raises(ValueError, match="exact_front_for"):
        optimality_gap(greedy, exact_front(sens, cost, [1e-1]))
    with pytest.raises(ValueError, match=">= 0"):
        exact_front(sens, cost, [-1.0])


def _with_pairs(sens, cost, seed):
    """The synthetic tables plus random pair terms (either sign) between consecutive groups."""
    rng = np.random.default_rng(seed)
    groups = sens.groups
    pairs = {}
    for g1, g2 in zip(groups, groups[1:]):
        pairs[(g1, g2)] = {(c1, c2): float(rng.uniform(-0.2, 0.5)) * min(cost.cost[(g1, c1)], cost.cost[(g2, c2)])
                           for c1 in sens.candidates[g1] for c2 in sens.candidates[g2] if c1 != c2}
    return CostTable(cost.unit, dict(cost.cost), cost.offset, pairs)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_with_pair_terms_equals_enumeration(seed):
    sens, additive = synthetic_tables(seed, 6, 3)
    cost = _with_pairs(sens, additive, seed)
    choices = list(itertools.product(*(sens.candidates[g] for g in sens.groups)))
    configs = [dict(zip(sens.groups, ch)) for ch in choices]
    c = np.array([cost.config_cost(cfg) for cfg in configs])
    nz = np.array([predicted_noise(sens, cfg) for cfg in configs])
    for b in np.quantile(nz, [0.0, 0.05, 0.3, 0.7, 1.0]):
        p = exact_min_cost(sens, cost, -10 * math.log10(b) if b > 0 else math.inf)
        assert p.cost == pytest.approx(c[nz <= b * (1 + 1e-9)].min(), rel=1e-9, abs=1e-12)
        assert p.cost == pytest.approx(cost.config_cost(p.config))


@pytest.mark.parametrize("order", ORDERS)
def test_greedy_with_pair_terms_lowers_the_whole_cost_each_step(order):
    sens, additive = synthetic_tables(3, 8, 3)
    cost = _with_pairs(sens, additive, 3)
    front = pareto_front(sens, cost, order)
    assert len(front) > 1
    for prev, p in zip(front, front[1:]):
        assert p.cost < prev.cost
        assert p.cost == pytest.approx(cost.config_cost(p.config))
