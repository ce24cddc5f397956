"""The tables the search works on, and the points it produces.

Pure data: a sensitivity table (phase 1: the network's output SQNR with ONE quantizer group changed,
everything else at the baseline), a cost table (each group's cost at each candidate, additive over
groups: device milliseconds, or relative BOPs as in the reference implementation; optionally plus
pairwise terms for precision changes between groups), and Pareto points.
No torch, no TVM: everything here is arithmetic over mappings.

Noise model. A group at candidate c adds relative output-noise power noise(g, c) = 10**(-sqnr/10)
(0 for an exact candidate, sqnr = +inf). Noise from different groups is assumed independent, so
the predicted SQNR of a configuration is -10·log10(Σ_g noise(g, c_g)). If the baseline itself is
not exact (its table entry is a finite SQNR, equal for every group since it is the same network),
each single-change measurement already contains the baseline noise n0, and the prediction is
-10·log10(n0 + Σ_g (noise(g, c_g) - n0)).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

COST_UNITS = ("ms", "bops")


def _frozen_map(d) -> Mapping:
    return MappingProxyType(dict(d))


def _finite(x, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is {x!r}, not a number") from None
    if math.isnan(v):
        raise ValueError(f"{what} is NaN")
    return v


@dataclass(frozen=True)
class SensitivityTable:
    """Phase-1 output: quality of the network with one group changed, the rest at `baseline`."""

    baseline: str
    groups: tuple[str, ...]
    candidates: Mapping[str, tuple[str, ...]]  # group -> its candidates (baseline included)
    sqnr_db: Mapping[tuple[str, str], float]  # (group, candidate) -> output SQNR vs float, dB

    def __post_init__(self):
        groups = tuple(self.groups)
        if not groups:
            raise ValueError("sensitivity table has no groups")
        seen = set()
        for g in groups:
            if not isinstance(g, str):
                raise ValueError(f"group name {g!r} is not a string")
            if g in seen:
                raise ValueError(f"group {g!r} listed twice in the sensitivity table")
            seen.add(g)
        extra = set(self.candidates) - seen
        if extra:
            raise ValueError(f"candidates given for groups not in the table: {sorted(extra)}")
        cands: dict[str, tuple[str, ...]] = {}
        for g in groups:
            if g not in self.candidates:
                raise ValueError(f"group {g!r} has no candidate list")
            cs = tuple(self.candidates[g])
            if len(set(cs)) != len(cs):
                raise ValueError(f"group {g!r} lists a candidate twice: {cs}")
            if self.baseline not in cs:
                raise ValueError(f"group {g!r}: baseline {self.baseline!r} is not among its candidates {cs}")
            cands[g] = cs
        sqnr: dict[tuple[str, str], float] = {}
        for key, value in self.sqnr_db.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"sensitivity key {key!r} is not a (group, candidate) pair")
            g, c = key
            if g not in cands:
                raise ValueError(f"sensitivity entry for unknown group {g!r} (candidate {c!r})")
            if c not in cands[g]:
                raise ValueError(f"sensitivity entry for group {g!r} at {c!r}, which is not one of its candidates "
                                 f"{cands[g]}")
            v = _finite(value, f"SQNR of group {g!r} at {c!r}")
            if v == -math.inf:
                raise ValueError(f"SQNR of group {g!r} at {c!r} is -inf (the output is all noise); "
                                 "drop the candidate or give a finite value")
            sqnr[(g, c)] = v
        base_values = set()
        for g in groups:
            for c in cands[g]:
                if c == self.baseline:
                    sqnr.setdefault((g, c), math.inf)
                    base_values.add(sqnr[(g, c)])
                elif (g, c) not in sqnr:
                    raise ValueError(f"sensitivity table has no SQNR for group {g!r} at {c!r}")
        if len(base_values) > 1:
            raise ValueError(f"baseline SQNR differs between groups ({sorted(base_values)}); every entry at the "
                             "baseline measures the same network and must be equal (or omitted for +inf)")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "candidates", _frozen_map(cands))
        object.__setattr__(self, "sqnr_db", _frozen_map(sqnr))

    @property
    def baseline_sqnr_db(self) -> float:
        return self.sqnr_db[(self.groups[0], self.baseline)]

    @property
    def baseline_noise(self) -> float:
        return sqnr_to_noise(self.baseline_sqnr_db)

    def noise(self, group: str, cand: str) -> float:
        """Relative noise power 10**(-sqnr/10) of the network with only `group` at `cand`; 0 for +inf."""
        try:
            return sqnr_to_noise(self.sqnr_db[(group, cand)])
        except KeyError:
            raise ValueError(f"sensitivity table has no entry for group {group!r} at {cand!r}") from None

    def baseline_config(self) -> dict[str, str]:
        return {g: self.baseline for g in self.groups}

    def moves(self) -> list[tuple[str, str]]:
        """Every non-baseline (group, candidate), in table order."""
        return [(g, c) for g in self.groups for c in self.candidates[g] if c != self.baseline]

    def check_config(self, config: Mapping[str, str]) -> None:
        extra = set(config) - set(self.groups)
        if extra:
            raise ValueError(f"config names groups not in the sensitivity table: {sorted(extra)}")
        for g in self.groups:
            if g not in config:
                raise ValueError(f"config has no candidate for group {g!r}")
            if config[g] not in self.candidates[g]:
                raise ValueError(f"config puts group {g!r} at {config[g]!r}, not one of its candidates "
                                 f"{self.candidates[g]}")


@dataclass(frozen=True)
class CostTable:
    """Cost of each group at each candidate, additive over groups (plus a constant `offset` for what
    no group controls, e.g. layers left in float), plus optional pairwise terms.

    `pairs[(g1, g2)][(c1, c2)]`: what is added when group g1 is at c1 and g2 at c2 (e.g. the dequantize
    or quantize pass where one layer's output feeds the next at another precision); any sign, missing
    entries are 0. Without pairs the cost is purely additive over groups."""

    unit: str  # "ms" | "bops"
    cost: Mapping[tuple[str, str], float]
    offset: float = 0.0
    pairs: Mapping[tuple[str, str], Mapping[tuple[str, str], float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.unit not in COST_UNITS:
            raise ValueError(f"cost unit {self.unit!r} is not one of {COST_UNITS}")
        cost = {}
        for key, value in self.cost.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"cost key {key!r} is not a (group, candidate) pair")
            g, c = key
            v = _finite(value, f"cost of group {g!r} at {c!r}")
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"cost of group {g!r} at {c!r} is {v}; costs must be finite and >= 0")
            cost[(g, c)] = v
        offset = _finite(self.offset, "cost offset")
        if not math.isfinite(offset):
            raise ValueError(f"cost offset is {offset}")
        pairs: dict[tuple[str, str], Mapping[tuple[str, str], float]] = {}
        neighbours: dict[str, list[tuple[str, tuple[str, str], bool]]] = {}
        for key, table in self.pairs.items():
            if not (isinstance(key, tuple) and len(key) == 2) or key[0] == key[1]:
                raise ValueError(f"pair key {key!r} is not a pair of two different groups")
            for g in key:
                if not any(k[0] == g for k in cost):
                    raise ValueError(f"pair {key!r} names group {g!r}, which has no cost entry")
            entries = {}
            for ck, value in table.items():
                if not (isinstance(ck, tuple) and len(ck) == 2):
                    raise ValueError(f"pair {key!r}: candidate key {ck!r} is not a (candidate, candidate) pair")
                for g, c in zip(key, ck):
                    if (g, c) not in cost:
                        raise ValueError(f"pair {key!r} has a term at {ck!r}, but group {g!r} has no cost at {c!r}")
                v = _finite(value, f"pair term {key!r} at {ck!r}")
                if not math.isfinite(v):
                    raise ValueError(f"pair term {key!r} at {ck!r} is {v}")
                entries[ck] = v
            if key in pairs or key[::-1] in pairs:
                raise ValueError(f"pair {key!r} given twice (in either order): merge its terms")
            pairs[key] = _frozen_map(entries)
            neighbours.setdefault(key[0], []).append((key[1], key, True))
            neighbours.setdefault(key[1], []).append((key[0], key, False))
        object.__setattr__(self, "cost", _frozen_map(cost))
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "pairs", _frozen_map(pairs))
        object.__setattr__(self, "_neighbours", {g: tuple(v) for g, v in neighbours.items()})

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g for g, _ in self.cost))

    def get(self, group: str, cand: str) -> float:
        try:
            return self.cost[(group, cand)]
        except KeyError:
            raise ValueError(f"cost table has no entry for group {group!r} at {cand!r}") from None

    def neighbours(self, group: str) -> tuple[str, ...]:
        """Groups that share a pair term with `group`."""
        return tuple(other for other, _, _ in self._neighbours.get(group, ()))

    def cost_in(self, group: str, cand: str, config: Mapping[str, str]) -> float:
        """cost[group, cand] plus the pair terms between `group` at `cand` and its neighbours at their
        candidates in `config`: what `config_cost` changes by, up to a constant, when `group` moves."""
        total = self.get(group, cand)
        for other, key, first in self._neighbours.get(group, ()):
            ck = (cand, config[other]) if first else (config[other], cand)
            total += self.pairs[key].get(ck, 0.0)
        return total

    def change(self, config: Mapping[str, str], changes: Mapping[str, str]) -> float:
        """config_cost(config updated with `changes`) − config_cost(config), from the terms they touch."""
        delta = math.fsum(self.get(g, c) - self.get(g, config[g]) for g, c in changes.items())
        seen = set()
        new = {**config, **changes}
        for g in changes:
            for _, key, _ in self._neighbours.get(g, ()):
                if key in seen:
                    continue
                seen.add(key)
                t = self.pairs[key]
                delta += t.get((new[key[0]], new[key[1]]), 0.0) - t.get((config[key[0]], config[key[1]]), 0.0)
        return delta

    def config_cost(self, config: Mapping[str, str]) -> float:
        """offset + Σ_g cost[g, config[g]] + Σ pair terms; the config must name every group of the table."""
        groups = self.groups
        missing = [g for g in groups if g not in config]
        if missing:
            raise ValueError(f"config has no candidate for group(s) {missing}")
        extra = set(config) - set(groups)
        if extra:
            raise ValueError(f"config names groups not in the cost table: {sorted(extra)}")
        terms = [self.offset] + [self.get(g, config[g]) for g in groups]
        terms += [t.get((config[a], config[b]), 0.0) for (a, b), t in self.pairs.items()]
        return math.fsum(terms)

    def check_covers(self, sens: SensitivityTable) -> None:
        """Every (group, candidate) of the sensitivity table has a cost, and no group is unknown to it."""
        for g in sens.groups:
            for c in sens.candidates[g]:
                if (g, c) not in self.cost:
                    raise ValueError(f"cost table ({self.unit}) has no entry for group {g!r} at {c!r}")
        extra = set(self.groups) - set(sens.groups)
        if extra:
            raise ValueError(f"cost table has groups the sensitivity table lacks: {sorted(extra)}")


@dataclass(frozen=True)
class ParetoPoint:
    config: Mapping[str, str]  # group -> candidate
    cost: float
    predicted_sqnr_db: float  # additive-noise estimate
    moves: int  # number of moves applied from the baseline
    evaluated_sqnr_db: Optional[float] = None
    last_move: Optional[tuple[str, str]] = None  # the (group, candidate) that produced this point

    def __post_init__(self):
        object.__setattr__(self, "config", _frozen_map(self.config))

    def to_dict(self) -> dict:
        return {
            "config": dict(self.config), "cost": self.cost, "predicted_sqnr_db": self.predicted_sqnr_db,
            "moves": self.moves, "evaluated_sqnr_db": self.evaluated_sqnr_db,
            "last_move": list(self.last_move) if self.last_move else None,
        }


def sqnr_to_noise(sqnr_db: float) -> float:
    return 0.0 if sqnr_db == math.inf else 10.0 ** (-sqnr_db / 10.0)


def noise_to_sqnr(noise: float) -> float:
    return math.inf if noise <= 0 else -10.0 * math.log10(noise)


def predicted_noise(sens: SensitivityTable, config: Mapping[str, str]) -> float:
    """n0 + Σ_g (noise(g, c_g) - n0): the additive-noise model's output noise power."""
    sens.check_config(config)
    n0 = sens.baseline_noise
    return n0 + math.fsum(sens.noise(g, config[g]) - n0 for g in sens.groups)


def predicted_sqnr_db(sens: SensitivityTable, config: Mapping[str, str]) -> float:
    """-10·log10 of the predicted noise; +inf when it is 0 (every group exact)."""
    return noise_to_sqnr(predicted_noise(sens, config))


_WA = re.compile(r"^W(\d+)A(\d+)$", re.IGNORECASE)
_FLOAT_BITS = {"FP32": 32, "FP16": 16, "BF16": 16}


def candidate_bits(name: str) -> tuple[int, int]:
    """(weight bits, activation bits) of a candidate name: W8A16 -> (8, 16); FP32 -> (32, 32); FP16 -> (16, 16)."""
    key = name.upper()
    if key in _FLOAT_BITS:
        return _FLOAT_BITS[key], _FLOAT_BITS[key]
    m = _WA.match(key)
    if m is None:
        raise ValueError(f"cannot read bit-widths from candidate {name!r}; pass bits= for it")
    return int(m.group(1)), int(m.group(2))


def bops_cost_table(groups_macs: Mapping[str, int], candidates: Mapping[str, Sequence[str]],
                    bits: Callable[[str], tuple[int, int]] = candidate_bits) -> CostTable:
    """The reference implementation's cost: MACs × w_bits × a_bits per group, relative to all-FP32 = 1.0."""
    missing = set(groups_macs) ^ set(candidates)
    if missing:
        raise ValueError(f"groups_macs and candidates name different groups: {sorted(missing)}")
    macs = {}
    for g, m in groups_macs.items():
        v = _finite(m, f"MACs of group {g!r}")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"MACs of group {g!r} is {m}; must be >= 0")
        macs[g] = v
    total = math.fsum(macs.values()) * 32 * 32
    if total <= 0:
        raise ValueError("total MACs is 0: relative BOPs are undefined")
    cost = {}
    for g, cands in candidates.items():
        for c in cands:
            wb, ab = bits(c)
            if wb <= 0 or ab <= 0:
                raise ValueError(f"candidate {c!r} of group {g!r} has bit-widths {(wb, ab)}")
            cost[(g, c)] = macs[g] * wb * ab / total
    return CostTable("bops", cost)


def latency_cost_table(latency, groups, candidates: Optional[Mapping[str, Sequence[str]]] = None) -> CostTable:
    """Per-group device milliseconds from a `tvm_mpq.latency.LatencyTable` (duck-typed: `.layers`,
    `.converts`) and quantizer groups (objects with `.name`, `.layers`).

    cost[g, c] = Σ_{layer in g} (layer ms at c + its convert ops if c is quantized), the same terms
    `LatencyTable.model_ms` adds up; layers in no group stay at FP32 and go into `offset`. Boundary
    corrections (`LatencyTable.boundary_ms`, for consecutive layers at different activation precisions)
    become pair terms between the two layers' groups, or fold into the group's own cost where the other
    layer is in no group (always FP32). So `config_cost(config)` equals `model_ms` of the plan that puts
    each group's layers at its candidate.
    `candidates`: group -> candidates to cost (default: those every layer of the group has a latency for).
    """
    from ..numerics import get_candidate  # NumPy-only module

    cost: dict[tuple[str, str], float] = {}
    grouped = set()

    def layer_ms(name: str, cand: str) -> float:
        row = latency.layers.get(name)
        if row is None:
            raise ValueError(f"latency table has no layer {name!r}")
        c = get_candidate(cand)
        if c.name not in row:
            raise ValueError(f"latency table has no latency for layer {name!r} at {cand!r}")
        total = row[c.name].ms
        if c.is_quantized:
            conv = latency.converts.get(name, {})
            if c.act_bits not in conv:
                raise ValueError(f"latency table has no convert cost for layer {name!r} at A{c.act_bits}")
            total += math.fsum(e.ms for e in conv[c.act_bits])
        return total

    for grp in groups:
        names = tuple(grp.layers)
        if not names:
            raise ValueError(f"quantizer group {grp.name!r} has no layers")
        grouped.update(names)
        if candidates is not None:
            if grp.name not in candidates:
                raise ValueError(f"no candidate list for group {grp.name!r}")
            cands = tuple(candidates[grp.name])
        else:
            rows = [latency.layers.get(n) for n in names]
            if any(r is None for r in rows):
                raise ValueError(f"latency table lacks layer(s) of group {grp.name!r}")
            cands = tuple(c for c in rows[0] if all(c in r for r in rows[1:]))
        for c in cands:
            cost[(grp.name, c)] = math.fsum(layer_ms(n, c) for n in names)
    offset = math.fsum(layer_ms(n, "FP32") for n in latency.layers if n not in grouped)
    pairs = _boundary_pairs(latency, groups, cost)
    return CostTable("ms", {k: max(v, 0.0) for k, v in cost.items()}, offset, pairs)


def _boundary_pairs(latency, groups, cost: dict) -> dict:
    """Pair terms (and, in place, folded unary terms of `cost`) from a latency table's boundary corrections."""
    boundary_ms = getattr(latency, "boundary_ms", None)
    if boundary_ms is None:
        return {}
    group_of = {n: grp.name for grp in groups for n in grp.layers}
    cands: dict[str, list[str]] = {}
    for g, c in cost:
        cands.setdefault(g, []).append(c)
    pairs: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    names = list(latency.layers)
    for n, m in zip(names, names[1:]):
        gn, gm = group_of.get(n), group_of.get(m)
        if gn == gm:  # same group (same candidate) or both in no group (both FP32)
            continue
        if gn is None:
            for cm in cands[gm]:
                cost[(gm, cm)] += boundary_ms(n, "FP32", cm)
        elif gm is None:
            for cn in cands[gn]:
                cost[(gn, cn)] += boundary_ms(n, cn, "FP32")
        else:
            flip = (gm, gn) in pairs
            table = pairs.setdefault((gm, gn) if flip else (gn, gm), {})
            for cn in cands[gn]:
                for cm in cands[gm]:
                    v = boundary_ms(n, cn, cm)
                    if v:
                        k = (cm, cn) if flip else (cn, cm)
                        table[k] = table.get(k, 0.0) + v
    return {k: v for k, v in pairs.items() if v}
