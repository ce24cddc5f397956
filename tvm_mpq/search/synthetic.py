"""Seeded synthetic tables, for tests and for comparing search orders without a model or a device."""

from __future__ import annotations

import numpy as np

from .tables import CostTable, SensitivityTable

# name, typical SQNR (dB) when one group is at it, typical latency relative to FP32
_POOL = (("FP16", 65.0, 0.6), ("W8A16", 45.0, 0.55), ("W8A8", 33.0, 0.35), ("W4A8", 18.0, 0.28))


def synthetic_tables(seed: int = 0, n_groups: int = 8, n_candidates: int = 4,
                     unit: str = "ms") -> tuple[SensitivityTable, CostTable]:
    """`n_groups` groups, each with FP32 (the baseline) and `n_candidates - 1` others drawn from
    FP16/W8A16/W8A8/W4A8. Per-group sensitivity offsets and latency factors are random, so some
    candidates are slower than a more precise one (as on real devices) and orders disagree."""
    if not 2 <= n_candidates <= len(_POOL) + 1:
        raise ValueError(f"n_candidates must be in 2..{len(_POOL) + 1}")
    rng = np.random.default_rng(seed)
    groups = tuple(f"g{i}" for i in range(n_groups))
    candidates, sqnr, cost = {}, {}, {}
    for g in groups:
        pick = sorted(rng.choice(len(_POOL), size=n_candidates - 1, replace=False))
        cands = ("FP32",) + tuple(_POOL[i][0] for i in pick)
        candidates[g] = cands
        base_ms = float(rng.lognormal(0.0, 1.0))
        offset = float(rng.normal(0.0, 8.0))  # how sensitive this group is
        cost[(g, "FP32")] = base_ms
        for i in pick:
            name, db, rel = _POOL[i]
            sqnr[(g, name)] = db + offset + float(rng.normal(0.0, 2.0))
            cost[(g, name)] = base_ms * rel * float(rng.lognormal(0.0, 0.3))
    return SensitivityTable("FP32", groups, candidates, sqnr), CostTable(unit, cost)
