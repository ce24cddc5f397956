"""Phase 3, last step: the final choice among a few points made on measured latency, not predicted.

The latency table predicts a mixed plan's latency from per-layer segments and boundary corrections; its
error on a mixed plan (a few percent to tens of percent on a shared CPU) can exceed the saving the plan
promises over a homogeneous one. So the search compiles a few points that meet the quality target —
the selected one, the baseline, the homogeneous references that qualify, the front's cheapest qualifying
points — times them side by side (`measure.interleaved`), and keeps the fastest. Pure functions over
the points and their measurements; compiling and timing happen in the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from .tables import ParetoPoint


def config_key(config: Mapping[str, str]) -> tuple:
    """A config as a hashable key (group order does not matter)."""
    return tuple(sorted(config.items()))


@dataclass(frozen=True)
class Candidate:
    """A point to measure: `quality` is its evaluated quality (held-out SQNR or task score)."""

    label: str
    point: ParetoPoint
    quality: float

    @property
    def key(self) -> tuple:
        return config_key(self.point.config)


@dataclass(frozen=True)
class MeasuredChoice:
    chosen: Candidate
    measured_ms: Mapping[str, float]  # label → measured median ms (failed builds absent)
    met: bool
    message: str
    candidates: tuple[Candidate, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.label, "met": self.met, "message": self.message,
                "points": [{"label": c.label, "predicted_ms": c.point.cost, "measured_ms": self.measured_ms.get(c.label),
                            "quality": c.quality, "config": dict(c.point.config)} for c in self.candidates]}


def candidates_for_target(selected: Candidate, evaluated: Sequence[Candidate], target: float,
                          limit: int) -> list[Candidate]:
    """Up to `limit` distinct points meeting `target` to measure: the selected point, then the other
    `evaluated` ones (give the baseline and homogeneous references first: they are kept in that order),
    then the front's qualifying points by increasing predicted cost."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    out, seen = [selected], {selected.key}
    for c in evaluated:
        if len(out) >= limit:
            break
        if c.quality >= target and c.key not in seen:
            out.append(c)
            seen.add(c.key)
    return out


def candidates_for_budget(selected: Candidate, evaluated: Sequence[Candidate], limit: int) -> list[Candidate]:
    """Up to `limit` points around the selected one by predicted cost: a measured budget may admit a
    predicted-dearer (better) point or exclude the selected one."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    others = {c.key: c for c in evaluated if c.key != selected.key}
    near = sorted(others.values(), key=lambda c: abs(c.point.cost - selected.point.cost))
    return [selected, *near[:limit - 1]]


def pick_fastest(candidates: Sequence[Candidate], measured_ms: Mapping[str, float], target: float
                 ) -> MeasuredChoice:
    """The measured-fastest candidate meeting `target` (candidates without a measurement are skipped;
    none measured: the first candidate, as predicted)."""
    timed = [c for c in candidates if _ok(measured_ms.get(c.label)) and c.quality >= target]
    if not timed:
        return MeasuredChoice(candidates[0], dict(measured_ms), candidates[0].quality >= target,
                              "no candidate could be timed: the predicted choice is kept", tuple(candidates))
    best = min(timed, key=lambda c: (measured_ms[c.label], -c.quality))
    first = candidates[0]
    if best is first:
        msg = f"the selected point is also the fastest measured ({_line(candidates, measured_ms)})"
    else:
        msg = (f"measured, {best.label} is faster than the predicted choice {first.label} "
               f"({_line(candidates, measured_ms)}): {best.label} is chosen")
    return MeasuredChoice(best, dict(measured_ms), True, msg, tuple(candidates))


def pick_within_budget(candidates: Sequence[Candidate], measured_ms: Mapping[str, float], budget: float
                       ) -> MeasuredChoice:
    """The best-quality candidate whose measured latency is within `budget`; none: the fastest measured,
    met False."""
    timed = [c for c in candidates if _ok(measured_ms.get(c.label))]
    if not timed:
        return MeasuredChoice(candidates[0], dict(measured_ms), candidates[0].point.cost <= budget,
                              "no candidate could be timed: the predicted choice is kept", tuple(candidates))
    within = [c for c in timed if measured_ms[c.label] <= budget]
    line = _line(candidates, measured_ms)
    if not within:
        best = min(timed, key=lambda c: measured_ms[c.label])
        return MeasuredChoice(best, dict(measured_ms), False,
                              f"no measured point is within {budget:.4g} ms ({line}); the fastest, {best.label}, "
                              "is returned", tuple(candidates))
    best = max(within, key=lambda c: (c.quality, -measured_ms[c.label]))
    return MeasuredChoice(best, dict(measured_ms), True,
                          f"best quality measured within {budget:.4g} ms: {best.label} ({line})", tuple(candidates))


def _ok(v: Optional[float]) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def _line(candidates: Sequence[Candidate], measured_ms: Mapping[str, float]) -> str:
    parts = []
    for c in candidates:
        m = measured_ms.get(c.label)
        parts.append(f"{c.label} {m:.3g} ms (predicted {c.point.cost:.3g})" if _ok(m) else f"{c.label} not timed")
    return "; ".join(parts)
