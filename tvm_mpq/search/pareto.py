"""Phase 2: a front of configurations from the all-baseline one down to the cheapest, one move at a time.

A move (g, c) puts group g at candidate c; it is allowed only if it makes g strictly cheaper than
its current candidate (with the cost table's pair terms to its neighbours at their current
candidates), so every step lowers the whole configuration's cost and the walk ends.

Orders:
  "sensitivity"       the paper's: all non-baseline (g, c) sorted by SQNR, least harmful first (ties:
                      larger saving first), walked once, applying each move still allowed.
  "quality_per_cost"  this project's default: greedy, at each step the allowed move with the least
                      noise added per unit of cost saved, Δnoise / Δcost.

Pair terms (a cost for a precision change between neighbouring groups) can make every single move
dearer than it saves although moving a neighbour along would pay: quantizing one layer between two
float ones adds two converts. With pair terms a move may therefore be *joint*: a connected set of up
to `MAX_JOINT` neighbouring groups moved to one candidate together, costed and scored as one step.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .tables import CostTable, ParetoPoint, SensitivityTable, predicted_sqnr_db

ORDERS = ("quality_per_cost", "sensitivity")
MAX_JOINT = 3  # most groups one joint move changes (a block's expand / depthwise / project convs)


def pareto_front(sens: SensitivityTable, cost: CostTable, order: str = "quality_per_cost",
                 prune: bool = False) -> list[ParetoPoint]:
    """Points from the all-baseline config (index 0) by decreasing cost. `prune` drops points that a
    cheaper point matches or beats in predicted SQNR (off by default: the paper evaluates along the walk)."""
    cost.check_covers(sens)
    if order == "sensitivity":
        moves = _sensitivity_walk(sens, cost)
    elif order == "quality_per_cost":
        moves = _greedy_walk(sens, cost)
    else:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    config = sens.baseline_config()
    points = [_point(sens, cost, config, 0, None)]
    done = 0
    for move in moves:  # a move: ((g, c), ...) of one step (several groups for a joint move)
        for g, c in move:
            config[g] = c
        done += len(move)
        points.append(_point(sens, cost, config, done, move[0]))
    return prune_dominated(points) if prune else points


def _point(sens, cost, config, moves, last) -> ParetoPoint:
    return ParetoPoint(dict(config), cost.config_cost(config), predicted_sqnr_db(sens, config), moves, None, last)


def _sensitivity_walk(sens: SensitivityTable, cost: CostTable) -> list[tuple[tuple[str, str], ...]]:
    rank = {m: i for i, m in enumerate(sens.moves())}
    ordered = sorted(rank, key=lambda m: (-sens.sqnr_db[m],
                                          -(cost.get(m[0], sens.baseline) - cost.get(*m)), rank[m]))
    config = sens.baseline_config()
    sets = _joint_sets(sens, cost) if cost.pairs else {}
    applied = []
    for g, c in ordered:
        if config[g] == c:
            continue
        if cost.change(config, {g: c}) < 0:
            config[g] = c
            applied.append(((g, c),))
            continue
        # not allowed alone: the joint move containing it that saves most, if one saves
        best, best_delta = None, 0.0
        for members in sets.get(g, ()):
            if all(c in sens.candidates[h] and config[h] != c for h in members):
                delta = cost.change(config, {h: c for h in members})
                if delta < best_delta:
                    best, best_delta = members, delta
        if best is not None:
            for h in best:
                config[h] = c
            applied.append(tuple((h, c) for h in best))
    return applied


def _joint_sets(sens: SensitivityTable, cost: CostTable) -> dict[str, list[tuple[str, ...]]]:
    """group → the connected sets (2 to MAX_JOINT groups, over the cost table's pair terms) containing it,
    each in sensitivity-table group order."""
    order = {g: i for i, g in enumerate(sens.groups)}
    found: set[tuple[str, ...]] = set()
    frontier = [frozenset([g]) for g in sens.groups]
    for _ in range(MAX_JOINT - 1):
        grown = set()
        for members in frontier:
            for g in members:
                for h in cost.neighbours(g):
                    if h in order and h not in members:
                        grown.add(members | {h})
        found.update(tuple(sorted(m, key=order.get)) for m in grown)
        frontier = list(grown)
    by_group: dict[str, list[tuple[str, ...]]] = {}
    for members in sorted(found, key=lambda m: (len(m), [order[g] for g in m])):
        for g in members:
            by_group.setdefault(g, []).append(members)
    return by_group


def _greedy_walk(sens: SensitivityTable, cost: CostTable) -> list[tuple[tuple[str, str], ...]]:
    if cost.pairs:
        return _greedy_joint_walk(sens, cost)
    groups = sens.groups
    cands = [sens.candidates[g] for g in groups]
    noise = [np.array([sens.noise(g, c) for c in cs]) for g, cs in zip(groups, cands)]
    cur = [cs.index(sens.baseline) for cs in cands]
    # best allowed move of each group from its current candidate: (ratio, -saving, candidate index)
    best_ratio = np.full(len(groups), np.inf)
    best_saving = np.zeros(len(groups))
    best_cand = np.full(len(groups), -1)

    costs = [np.array([cost.get(g, c) for c in cs]) for g, cs in zip(groups, cands)]

    def refresh(i: int):
        saving = costs[i][cur[i]] - costs[i]
        ok = saving > 0
        best_ratio[i], best_saving[i], best_cand[i] = np.inf, 0.0, -1
        if not ok.any():
            return
        idx = np.flatnonzero(ok)
        ratio = (noise[i][idx] - noise[i][cur[i]]) / saving[idx]
        # smallest ratio; ties: larger saving, then candidate order
        j = idx[np.lexsort((idx, -saving[idx], ratio))[0]]
        best_ratio[i] = (noise[i][j] - noise[i][cur[i]]) / saving[j]
        best_saving[i], best_cand[i] = saving[j], j

    for i in range(len(groups)):
        refresh(i)
    applied = []
    while (best_cand >= 0).any():
        live = np.flatnonzero(best_cand >= 0)
        i = live[np.lexsort((live, -best_saving[live], best_ratio[live]))[0]]
        cur[i] = int(best_cand[i])
        applied.append(((groups[i], cands[i][cur[i]]),))
        refresh(i)
    return applied


def _greedy_joint_walk(sens: SensitivityTable, cost: CostTable) -> list[tuple[tuple[str, str], ...]]:
    """The quality-per-cost greedy over single and joint moves (tables with pair terms)."""
    order = {g: i for i, g in enumerate(sens.groups)}
    sets = [(g,) for g in sens.groups]
    sets += sorted({m for ms in _joint_sets(sens, cost).values() for m in ms}, key=lambda m: [order[g] for g in m])
    config = sens.baseline_config()
    applied = []
    while True:
        best, best_key = None, None
        for rank, members in enumerate(sets):
            for c in sens.candidates[members[0]]:
                if any(config[g] == c or c not in sens.candidates[g] for g in members):
                    continue
                changes = {g: c for g in members}
                saving = -cost.change(config, changes)
                if saving <= 0:
                    continue
                dn = math.fsum(sens.noise(g, c) - sens.noise(g, config[g]) for g in members)
                key = (dn / saving, -saving, rank, sens.candidates[members[0]].index(c))
                if best_key is None or key < best_key:
                    best, best_key = changes, key
        if best is None:
            return applied
        config.update(best)
        applied.append(tuple(best.items()))


def prune_dominated(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Keep, by decreasing cost, the points whose predicted SQNR beats every cheaper point's."""
    ordered = sorted(points, key=lambda p: -p.cost)
    kept, best = [], -math.inf
    for p in reversed(ordered):
        if p.predicted_sqnr_db > best:
            kept.append(p)
            best = p.predicted_sqnr_db
    return kept[::-1]


def quality_at(front: Sequence[ParetoPoint], budget: float) -> float:
    """Best predicted SQNR of a point costing <= budget (-inf when none is affordable)."""
    return max((p.predicted_sqnr_db for p in front if p.cost <= budget), default=-math.inf)


def compare_fronts(a: Sequence[ParetoPoint], b: Sequence[ParetoPoint]) -> dict:
    """Which front predicts better quality at equal cost.

    Each front is read as a step function: quality(C) = best predicted SQNR among its points costing
    <= C. Compared at every cost level of either front inside the cost range both cover:
      a_better / b_better / ties   levels where one is strictly better,
      mean_gain_db                 mean of quality_a - quality_b over levels where both are finite,
      area_db_cost                 ∫ (quality_a - quality_b) dC over the common range (finite parts),
      winner                       "a", "b" or "tie" by the area (the level counts when the area is 0).
    """
    if not a or not b:
        raise ValueError("compare_fronts needs two non-empty fronts")
    lo = max(min(p.cost for p in a), min(p.cost for p in b))
    hi = min(max(p.cost for p in a), max(p.cost for p in b))
    levels = sorted({p.cost for p in (*a, *b) if lo <= p.cost <= hi})
    a_better = b_better = ties = 0
    gains, area = [], 0.0
    for k, c in enumerate(levels):
        qa, qb = quality_at(a, c), quality_at(b, c)
        if qa > qb:
            a_better += 1
        elif qb > qa:
            b_better += 1
        else:
            ties += 1
        if math.isfinite(qa) and math.isfinite(qb):
            gains.append(qa - qb)
            if k + 1 < len(levels):
                area += (qa - qb) * (levels[k + 1] - c)
    if area > 0 or (area == 0 and a_better > b_better):
        winner = "a"
    elif area < 0 or (area == 0 and b_better > a_better):
        winner = "b"
    else:
        winner = "tie"
    return {
        "cost_range": (lo, hi), "levels": len(levels), "a_better": a_better, "b_better": b_better,
        "ties": ties, "mean_gain_db": float(np.mean(gains)) if gains else 0.0, "area_db_cost": area,
        "winner": winner,
    }


def front_noise(point: ParetoPoint) -> float:
    """The predicted noise power of a point (inverse of its predicted SQNR)."""
    return 0.0 if point.predicted_sqnr_db == math.inf else 10.0 ** (-point.predicted_sqnr_db / 10.0)


__all__ = ["ORDERS", "compare_fronts", "front_noise", "pareto_front", "prune_dominated",
           "quality_at"]
