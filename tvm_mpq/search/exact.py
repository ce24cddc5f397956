"""The exact optimum on the same additive tables, to measure how far the greedy fronts are from it.

For a noise budget N: minimize Σ_g cost[g, c_g] subject to the additive-noise model's
n0 + Σ_g (noise(g, c_g) - n0) <= N, one candidate per group — a multiple-choice knapsack, solved as
a MILP (binary x[g, c], Σ_c x[g, c] = 1 per group) with SciPy's HiGHS. The cost table's pair
terms (precision changes between groups) enter as y = x[g1, c1] AND x[g2, c2], linearized
(y <= x1, y <= x2, y >= x1 + x2 - 1), so the optimum is exact for them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .tables import CostTable, ParetoPoint, SensitivityTable, predicted_sqnr_db, sqnr_to_noise

# Relative slack on the noise budget, so a configuration exactly at the budget (e.g. a greedy point
# asked for its own predicted SQNR) stays feasible through floating-point rounding.
BUDGET_SLACK = 1e-9


def exact_min_cost(sens: SensitivityTable, cost: CostTable, min_sqnr_db: float,
                   time_limit: Optional[float] = None) -> ParetoPoint:
    """The cheapest configuration whose predicted SQNR is >= min_sqnr_db."""
    if math.isnan(min_sqnr_db):
        raise ValueError("min_sqnr_db is NaN")
    return _solve(sens, cost, sqnr_to_noise(min_sqnr_db), time_limit)


def exact_front(sens: SensitivityTable, cost: CostTable, noise_budgets: Sequence[float],
                time_limit: Optional[float] = None) -> list[ParetoPoint]:
    """One exact solution per noise budget (relative noise power; 10**(-sqnr/10) for an SQNR target),
    sorted by decreasing cost."""
    points = []
    for n in noise_budgets:
        n = float(n)
        if math.isnan(n) or n < 0:
            raise ValueError(f"noise budget {n} must be >= 0")
        points.append(_solve(sens, cost, n, time_limit))
    return sorted(points, key=lambda p: -p.cost)


def exact_front_for(sens: SensitivityTable, cost: CostTable, points: Sequence[ParetoPoint],
                    time_limit: Optional[float] = None) -> list[ParetoPoint]:
    """The exact solution at each point's predicted SQNR (for `optimality_gap`)."""
    return exact_front(sens, cost, [sqnr_to_noise(p.predicted_sqnr_db) for p in points], time_limit)


def _solve(sens: SensitivityTable, cost: CostTable, budget: float, time_limit: Optional[float]) -> ParetoPoint:
    from scipy.optimize import Bounds, LinearConstraint, milp  # imported on first solve

    cost.check_covers(sens)
    n0 = sens.baseline_noise
    pairs = [(g, c) for g in sens.groups for c in sens.candidates[g]]
    if budget < n0 * (1 - BUDGET_SLACK):
        raise ValueError(f"no configuration predicts noise <= {budget:.6g} (SQNR {_db(budget):.4g} dB): even the "
                         f"all-{sens.baseline} baseline has {n0:.6g} ({sens.baseline_sqnr_db:.4g} dB)")
    c = np.array([cost.get(g, k) for g, k in pairs])
    a = np.array([sens.noise(g, k) - n0 for g, k in pairs])
    rhs = budget - n0
    scale = budget if budget > 0 else (np.abs(a[a != 0]).min() if (a != 0).any() else 1.0)
    a, rhs = a / scale, rhs / scale + BUDGET_SLACK
    # A candidate that alone exceeds the budget can never be chosen when no other group can make room.
    ub = np.ones(len(pairs))
    if (a >= 0).all():
        ub[a > rhs] = 0.0
    col_of = {p: i for i, p in enumerate(pairs)}
    terms = [((g1, c1), (g2, c2), v) for (g1, g2), t in cost.pairs.items() for (c1, c2), v in t.items()
             if (g1, c1) in col_of and (g2, c2) in col_of]
    nx, n = len(pairs), len(pairs) + len(terms)
    one_hot = np.zeros((len(sens.groups), n))
    col = 0
    for r, g in enumerate(sens.groups):
        k = len(sens.candidates[g])
        one_hot[r, col:col + k] = 1.0
        col += k
    a_row = np.zeros((1, n))
    a_row[0, :nx] = a
    constraints = [LinearConstraint(one_hot, 1.0, 1.0), LinearConstraint(a_row, -np.inf, rhs)]
    if terms:
        link = np.zeros((3 * len(terms), n))
        lo = np.full(3 * len(terms), -np.inf)
        hi = np.zeros(3 * len(terms))
        for t, (p1, p2, _) in enumerate(terms):
            y = nx + t
            link[3 * t, [y, col_of[p1]]] = (1.0, -1.0)  # y - x1 <= 0
            link[3 * t + 1, [y, col_of[p2]]] = (1.0, -1.0)  # y - x2 <= 0
            link[3 * t + 2, [y, col_of[p1], col_of[p2]]] = (1.0, -1.0, -1.0)  # y - x1 - x2 >= -1
            lo[3 * t + 2], hi[3 * t + 2] = -1.0, np.inf
        constraints.append(LinearConstraint(link, lo, hi))
    c = np.concatenate([c, [v for _, _, v in terms]])
    ub = np.concatenate([ub, np.ones(len(terms))])
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(c, constraints=constraints, integrality=np.concatenate([np.ones(nx), np.zeros(len(terms))]),
               bounds=Bounds(0.0, ub), options=options)
    if res.x is None:
        raise ValueError(f"MILP found no solution for noise budget {budget:.6g}: {res.message}")
    x = np.asarray(res.x)
    config = {}
    col = 0
    for g in sens.groups:
        k = len(sens.candidates[g])
        config[g] = sens.candidates[g][int(np.argmax(x[col:col + k]))]
        col += k
    moves = sum(1 for g in sens.groups if config[g] != sens.baseline)
    # status 1 (time limit) with a solution: the best found, not proven optimal
    return ParetoPoint(config, cost.config_cost(config), predicted_sqnr_db(sens, config), moves)


def _db(noise: float) -> float:
    return math.inf if noise <= 0 else -10 * math.log10(noise)


@dataclass(frozen=True)
class GapRow:
    index: int  # the greedy point's index in its front
    predicted_sqnr_db: float
    greedy_cost: float
    exact_cost: float

    @property
    def gap(self) -> float:
        return self.greedy_cost - self.exact_cost

    @property
    def relative_gap(self) -> float:
        return self.gap / self.exact_cost if self.exact_cost > 0 else (0.0 if self.gap == 0 else math.inf)


@dataclass(frozen=True)
class OptimalityGap:
    rows: tuple[GapRow, ...]

    @property
    def max_relative_gap(self) -> float:
        return max((r.relative_gap for r in self.rows), default=0.0)

    @property
    def mean_relative_gap(self) -> float:
        return float(np.mean([r.relative_gap for r in self.rows])) if self.rows else 0.0

    @property
    def optimal_points(self) -> int:
        """Greedy points whose cost equals the exact optimum (to 1e-9 relative)."""
        return sum(1 for r in self.rows if r.gap <= 1e-9 * max(abs(r.exact_cost), 1e-300))

    def to_dict(self) -> dict:
        return {
            "points": len(self.rows), "optimal_points": self.optimal_points,
            "max_relative_gap": self.max_relative_gap, "mean_relative_gap": self.mean_relative_gap,
            "rows": [{"index": r.index, "predicted_sqnr_db": r.predicted_sqnr_db, "greedy_cost": r.greedy_cost,
                      "exact_cost": r.exact_cost, "gap": r.gap, "relative_gap": r.relative_gap} for r in self.rows],
        }


def optimality_gap(greedy_front: Sequence[ParetoPoint], exact_front: Sequence[ParetoPoint]) -> OptimalityGap:
    """For each greedy point: the cheapest exact point predicting at least its SQNR, vs its cost.

    Build `exact_front` with `exact_front_for(sens, cost, greedy_front)` so every greedy SQNR has its
    exact solution; a greedy point no exact point reaches raises ValueError.
    """
    rows = []
    for i, p in enumerate(greedy_front):
        tol = 0.0 if math.isinf(p.predicted_sqnr_db) else 1e-9 * max(1.0, abs(p.predicted_sqnr_db))
        reach = [e.cost for e in exact_front if e.predicted_sqnr_db >= p.predicted_sqnr_db - tol]
        if not reach:
            raise ValueError(f"no exact point reaches greedy point #{i}'s predicted SQNR "
                             f"{p.predicted_sqnr_db:.6g} dB; compute the exact front with exact_front_for")
        rows.append(GapRow(i, p.predicted_sqnr_db, p.cost, min(reach)))
    return OptimalityGap(tuple(rows))
