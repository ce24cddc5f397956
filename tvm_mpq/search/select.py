"""Phase 3: evaluate points of a front and pick one.

The evaluator is the caller's: `evaluate(config) -> float`, a quality in dB or any score where higher
is better (output SQNR on held-out data by default, or a labeled metric). Results are cached by
config, so a point is never evaluated twice; pass a `CachedEvaluator` to share the cache between calls.

A front is a sequence of points sorted by decreasing cost, index 0 the baseline. Binary and
interpolation search assume quality falls monotonically along it; every selection checks the points
it evaluated and says in its message where that assumption failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .tables import ParetoPoint

METHODS = ("binary", "interpolation", "brute")
Evaluator = Callable[[Mapping[str, str]], float]


class CachedEvaluator:
    """Wraps an evaluator; one call per distinct config. `calls` counts the real evaluations."""

    def __init__(self, evaluate: Evaluator):
        if not callable(evaluate):
            raise ValueError(f"evaluate must be callable, got {type(evaluate).__name__}")
        self._evaluate = evaluate
        self.cache: dict[tuple[tuple[str, str], ...], float] = {}
        self.calls = 0

    def __call__(self, config: Mapping[str, str]) -> float:
        key = tuple(sorted(config.items()))
        if key not in self.cache:
            value = self._evaluate(dict(config))
            try:
                q = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"evaluator returned {value!r}, not a number") from None
            if math.isnan(q):
                raise ValueError("evaluator returned NaN for config " + ", ".join(f"{g}={c}" for g, c in key))
            self.calls += 1
            self.cache[key] = q
        return self.cache[key]


@dataclass(frozen=True)
class Selection:
    point: ParetoPoint  # the chosen point (evaluated_sqnr_db filled when it was evaluated)
    met: bool  # whether it satisfies the constraint asked for
    evaluations: int  # evaluator calls made by this selection (cache hits not counted)
    evaluated: tuple[ParetoPoint, ...]  # every point looked at, in front order, with its quality
    message: str
    index: int = -1  # the point's index in the front

    def to_dict(self) -> dict:
        return {"index": self.index, "met": self.met, "evaluations": self.evaluations, "message": self.message,
                "point": self.point.to_dict(), "evaluated": [p.to_dict() for p in self.evaluated]}


def _cached(evaluate: Union[Evaluator, CachedEvaluator]) -> CachedEvaluator:
    return evaluate if isinstance(evaluate, CachedEvaluator) else CachedEvaluator(evaluate)


def _check_front(front: Sequence[ParetoPoint]) -> None:
    if len(front) == 0:
        raise ValueError("the front is empty")
    for i in range(1, len(front)):
        if front[i].cost > front[i - 1].cost:
            raise ValueError(f"front is not sorted by decreasing cost: point {i} costs {front[i].cost} > "
                             f"point {i - 1} ({front[i - 1].cost})")


def _number(x, what: str) -> float:
    v = float(x)
    if math.isnan(v):
        raise ValueError(f"{what} is NaN")
    return v


class _Run:
    """Evaluations of one selection: index -> quality."""

    def __init__(self, front, evaluate):
        self.front, self.ev = front, _cached(evaluate)
        self.start_calls = self.ev.calls
        self.q: dict[int, float] = {}

    def __call__(self, i: int) -> float:
        if i not in self.q:
            self.q[i] = self.ev(self.front[i].config)
        return self.q[i]

    def point(self, i: int) -> ParetoPoint:
        return replace(self.front[i], evaluated_sqnr_db=self.q[i]) if i in self.q else self.front[i]

    def evaluated(self) -> tuple[ParetoPoint, ...]:
        return tuple(self.point(i) for i in sorted(self.q))

    def monotonic_note(self) -> str:
        pts = self.evaluated()
        bad = check_monotonic(pts)
        if not bad:
            return ""
        idx = sorted(self.q)
        rises = ", ".join(f"#{idx[k - 1]}->#{idx[k]}" for k in bad)
        return (f"; quality rises along the front ({rises}): the front is not monotone there, so binary/"
                "interpolation search may miss points; method='brute' evaluates them all")

    def selection(self, i: int, met: bool, message: str) -> Selection:
        return Selection(self.point(i), met, self.ev.calls - self.start_calls, self.evaluated(),
                         message + self.monotonic_note(), i)


def select_within_drop(front: Sequence[ParetoPoint], evaluate: Union[Evaluator, CachedEvaluator],
                       baseline_quality: float, allowed_drop: float, method: str = "binary") -> Selection:
    """The cheapest point whose quality is >= baseline_quality - allowed_drop.

    binary         bisection on the index; ~log2(n) evaluations; assumes monotone quality.
    interpolation  guesses the crossing from the points' predicted SQNR, guarded by bisection.
    brute          evaluates every point; right even when quality is not monotone.
    When no point meets the target, the best-quality evaluated point is returned with met=False.
    """
    _check_front(front)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    target = _number(baseline_quality, "baseline_quality") - _number(allowed_drop, "allowed_drop")
    run = _Run(front, evaluate)
    n = len(front)
    found: Optional[int]
    if method == "binary":
        lo, hi = -1, n  # invariant: lo meets (or is the virtual -1), hi fails (or the virtual n)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(mid) >= target:
                lo = mid
            else:
                hi = mid
        found = lo if lo >= 0 else None
    elif method == "interpolation":
        found = _interpolation(front, run, target)
    else:
        for i in range(n):
            run(i)
        meeting = [i for i in range(n) if run.q[i] >= target]
        found = min(meeting, key=lambda i: (front[i].cost, -run.q[i], -i)) if meeting else None
    if found is not None:
        return run.selection(found, True, f"point #{found} of {n} (cost {front[found].cost:.6g}) reaches "
                                          f"{run.q[found]:.4g} >= target {target:.4g}; {method} search")
    best = max(run.q, key=lambda i: (run.q[i], i))
    return run.selection(best, False, f"no point of the front reaches {target:.4g} (baseline {baseline_quality:.4g}"
                                      f" - allowed drop {allowed_drop:.4g}); best evaluated is #{best} at "
                                      f"{run.q[best]:.4g}; {method} search")


def _interpolation(front, run: _Run, target: float) -> Optional[int]:
    n = len(front)
    if run(n - 1) >= target:
        return n - 1
    if n == 1 or run(0) < target:
        return None
    p = np.array([pt.predicted_sqnr_db for pt in front], dtype=float)
    lo, hi = 0, n - 1
    bisect, width = False, hi - lo
    while hi - lo > 1:
        mid = (lo + hi) // 2 if bisect else _guess(p, lo, hi, run.q[lo], run.q[hi], target)
        if run(mid) >= target:
            lo = mid
        else:
            hi = mid
        bisect, width = (hi - lo) > width / 2, hi - lo  # bisect next when a guess did not halve the bracket
    return lo


def _guess(p: np.ndarray, lo: int, hi: int, q_lo: float, q_hi: float, target: float) -> int:
    """Index in (lo, hi) where quality crosses target, reading quality as affine in predicted SQNR between
    the bracket's ends (dB for dB from the finite end when the other is exact, predicted +inf)."""
    if np.isfinite(p[lo]) and np.isfinite(p[hi]) and p[lo] != p[hi] and q_lo != q_hi:
        p_star = p[hi] + (target - q_hi) * (p[lo] - p[hi]) / (q_lo - q_hi)
    elif np.isfinite(p[hi]):
        p_star = p[hi] + (target - q_hi)
    elif np.isfinite(p[lo]):
        p_star = p[lo] + (target - q_lo)
    else:
        return (lo + hi) // 2
    inner = np.arange(lo + 1, hi)
    ok = inner[p[inner] >= p_star]
    return int(ok.max()) if ok.size else lo + 1


def select_within_budget(front: Sequence[ParetoPoint], evaluate: Union[Evaluator, CachedEvaluator],
                         budget: float, assume_monotonic: bool = True) -> Selection:
    """The best-quality point costing <= budget (the dual of `select_within_drop`).

    Affordable points are evaluated by decreasing cost; with `assume_monotonic` the first is the best
    and the search stops there (one evaluation), otherwise all affordable points are evaluated.
    None affordable: the cheapest point, unevaluated, met=False.
    """
    _check_front(front)
    budget = _number(budget, "budget")
    run = _Run(front, evaluate)
    affordable = [i for i, p in enumerate(front) if p.cost <= budget]
    if not affordable:
        i = len(front) - 1
        return run.selection(i, False, f"no point costs <= {budget:.6g}; the cheapest (#{i}) costs "
                                       f"{front[i].cost:.6g}")
    for i in affordable:
        run(i)
        if assume_monotonic:
            break
    best = max(run.q, key=lambda i: (run.q[i], i))
    how = ("the most expensive affordable point (quality assumed monotone)" if assume_monotonic
           else f"best of {len(affordable)} affordable points")
    return run.selection(best, True, f"point #{best} (cost {front[best].cost:.6g} <= {budget:.6g}) at "
                                     f"{run.q[best]:.4g}: {how}")


def evaluate_curve(front: Sequence[ParetoPoint], evaluate: Union[Evaluator, CachedEvaluator],
                   max_points: Optional[int] = None) -> list[ParetoPoint]:
    """Points with evaluated_sqnr_db filled: the whole front, or `max_points` spread evenly along it
    (both ends included)."""
    _check_front(front)
    n = len(front)
    if max_points is None or max_points >= n:
        idx = list(range(n))
    else:
        if max_points < 1:
            raise ValueError(f"max_points is {max_points}; it must be >= 1")
        idx = sorted(set(np.round(np.linspace(0, n - 1, max_points)).astype(int).tolist()))
    run = _Run(front, evaluate)
    for i in idx:
        run(i)
    return list(run.evaluated())


def check_monotonic(points: Sequence[ParetoPoint], tolerance: float = 0.0) -> list[int]:
    """Indices (into `points`) where evaluated quality rises above the previous evaluated point's by
    more than `tolerance`; points without an evaluation are skipped."""
    bad, prev = [], None
    for i, p in enumerate(points):
        if p.evaluated_sqnr_db is None:
            continue
        if prev is not None and p.evaluated_sqnr_db > prev + tolerance:
            bad.append(i)
        prev = p.evaluated_sqnr_db
    return bad
