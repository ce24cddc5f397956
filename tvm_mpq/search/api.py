"""The search job: model + unlabeled data + hardware profile → Pareto front → plan.

Phase 1 (sensitivity) runs the integer-domain simulator once per (quantizer group, candidate) with
everything else at the baseline and keeps the output SQNR; results are cached by a content hash of
(model weights, calibration data, profile, settings) and checkpointed group by group, so a rerun or an
interrupted run never redoes finished work. Phase 2 builds the front over the group cost table (device
latency from the measurement store / latency model / roofline, or BOPs for comparison). Phase 3 picks a
point by evaluating plans on held-out samples: output SQNR against the float model, or a task metric
(`tvm_mpq.metrics.Metric`: a labeled set, or a user callable of the held-out outputs). The phases
themselves are pure functions in this package.

Each evaluation runs the simulator on a fixed sample set; a `PrefixCache` keeps the activations the
evaluations share (everything before the first layer that differs from the baseline), so phase 1 runs
only the part of the network from each group onwards and phase 3 only the part from each plan's first
quantized layer. `search(prefix_cache_bytes=0)` runs the whole network every time (same results).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..numerics import get_candidate, sqnr_db
from ..smoothing import CANDIDATE as SMOOTHED
from ..plan import Plan, resolve
from .tables import CostTable, SensitivityTable

SEARCH_VERSION = 2  # 2: smoothing factors for W8A8


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's result (and so its cache key)."""

    calib_samples: int = 256  # range calibration
    sensitivity_samples: int = 64  # of the calibration samples, scored in phase 1
    eval_samples: int = 64  # held out from calibration, scored in phase 3
    range_method: str = "minmax"
    bias_correction: bool = True  # take each quantized layer's mean weight-rounding shift off its output
    smoothing: bool = True  # per-layer smoothing factors for W8A8 (`tvm_mpq.smoothing`)
    baseline: str = "FP32"
    order: str = "quality_per_cost"  # or "sensitivity" (the paper's order)
    cost: str = "latency"  # or "bops" (the reference implementation's cost)
    min_sqnr_db: Optional[float] = None  # phase 3: the fastest point whose output SQNR vs float is >= this
    max_drop_db: Optional[float] = None  # phase 3: allowed drop from a finite baseline quality (dB)
    min_score: Optional[float] = None  # phase 3 with a task metric: the fastest point scoring >= this
    max_score_drop: Optional[float] = None  # phase 3 with a task metric: allowed drop from the baseline's score
    latency_budget_ms: Optional[float] = None  # phase 3 dual: best quality within this latency
    selection: str = "binary"  # binary | interpolation | brute
    measure_points: int = 4  # phase 3: points compiled and timed on the device for the final choice (0: none)
    measure_rounds: int = 15  # interleaved timing rounds of those points

    def to_dict(self) -> dict:
        return {"version": SEARCH_VERSION, **asdict(self)}

    def phase1_dict(self) -> dict:
        """The settings phase 1 depends on (its cache key): a new target or selection reuses its scores."""
        return {"version": SEARCH_VERSION, "calib_samples": self.calib_samples,
                "sensitivity_samples": self.sensitivity_samples, "range_method": self.range_method,
                "bias_correction": self.bias_correction, "smoothing": self.smoothing, "baseline": self.baseline}


@dataclass
class SearchResult:
    plan: Plan
    front: list
    selection: object  # select.Selection, or None when the whole curve was asked for
    sensitivity: SensitivityTable
    cost: CostTable
    group_layers: dict
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    latency_table: object = None  # latency.LatencyTable behind the cost (None for BOPs-only use)
    reference_points: dict = field(default_factory=dict)  # homogeneous and BOPs-chosen configs, same tables
    analysis: dict = field(default_factory=dict)  # front orders compared, greedy vs exact, predicted vs evaluated
    baseline_quality_db: float = float("inf")  # held-out SQNR of the baseline (inf when it is float)
    metric: Optional[dict] = None  # the task metric phase 3 selected by (None: output SQNR)
    measured: Optional[dict] = None  # the final choice on measured latency (`measured.MeasuredChoice.to_dict`)


def group_candidates(graph, profile, baseline: str) -> dict[str, tuple[str, ...]]:
    """A group's candidates: those every member's op supports, in the profile's priority order."""
    out = {}
    for group in graph.groups:
        sets = [[c.name for c in profile.candidates_for(graph.layers[n].op_type)] for n in group.layers]
        common = [c for c in sets[0] if all(c in s for s in sets[1:])]
        if baseline not in common:
            common.append(baseline)
        out[group.name] = tuple(common)
    return out


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    from ..measure.profiler import tvm_mpq_home

    return tvm_mpq_home() / "sensitivity"


def sensitivity_table(sim, graph, candidates, stats, samples, y_float, *, baseline: str, range_method: str,
                      cache_path: Optional[Path] = None, progress=lambda done, total, what: None,
                      prefix_cache_bytes: int = 1 << 30) -> SensitivityTable:
    """Phase 1: output SQNR with one group at one candidate, the rest at the baseline.

    Groups are scored in execution order of their first layer, each from the baseline's activations
    at that layer (kept in a `PrefixCache` of at most `prefix_cache_bytes`; 0: whole network each time).
    """
    from ..simulate import PrefixCache

    done: dict = {}
    if cache_path is not None and cache_path.exists():
        try:
            done = {tuple(k.split("\t")): v for k, v in json.loads(cache_path.read_text())["sqnr_db"].items()}
        except (ValueError, KeyError):
            done = {}  # a damaged cache is recomputed, never trusted
    members_of = {g.name: g.layers for g in graph.groups}
    first = {g: min(sim.positions[n] for n in members) for g, members in members_of.items()}
    todo = sorted(((g.name, c) for g in graph.groups for c in candidates[g.name] if c != baseline),
                  key=lambda gc: first[gc[0]])
    base = get_candidate(baseline)
    encode = _encoding_cache(stats, range_method)
    base_layers, base_enc = {}, {}
    if base.name != "FP32":
        base_layers = {n: base for n in graph.layers}
        base_enc = {n: encode(n, base) for n in graph.layers}
    cache = PrefixCache(sim, samples, (base_layers, base_enc), max_bytes=prefix_cache_bytes)
    for i, (group, cand) in enumerate(todo):
        if (group, cand) in done:
            continue
        progress(i, len(todo), f"{group} @ {cand}")
        c = get_candidate(cand)
        layers = {**base_layers, **{n: c for n in members_of[group]}}
        encodings = {**base_enc, **{n: encode(n, c) for n in members_of[group]}}
        y = cache.run(layers, encodings) if prefix_cache_bytes > 0 else _full_run(sim, layers, encodings, samples)
        if not np.isfinite(y).all():
            raise ValueError(f"phase 1: {group} at {cand} produced NaN or Inf in the model output")
        done[(group, cand)] = sqnr_db(y_float, y)
        if cache_path is not None:  # checkpoint: an interrupted run resumes from here
            _write_json(cache_path, {"sqnr_db": {f"{g}\t{k}": v for (g, k), v in done.items()}})
    sim.reset()
    progress(len(todo), len(todo), "done")
    values = {(g, k): v for (g, k), v in done.items()}
    for g in graph.groups:
        values[(g.name, baseline)] = float("inf")
    return SensitivityTable(baseline, tuple(g.name for g in graph.groups), dict(candidates), values)


def check_smoothing(sim, graph, stats, sens: SensitivityTable, samples, y_float, *, range_method: str,
                    cache_path: Optional[Path] = None, prefix_cache_bytes: int = 1 << 30):
    """Keep a group's smoothing only where it helps the network output. Calibration chooses each layer's
    factors on its own output error, which is not always what reaches the model's output; so every group
    with smoothed W8A8 layers is also scored at W8A8 without them (phase 1's way) and keeps the better.
    Returns (sensitivity table with the better W8A8 score, stats with the dropped factors removed,
    {group: {"smoothed_db", "unsmoothed_db", "kept"}})."""
    smoothed = [g for g in graph.groups if SMOOTHED in sens.candidates[g.name]
                and any(stats[n] and stats[n][0].smoothed is not None for n in g.layers)]
    if not smoothed:
        return sens, stats, {}
    plain = dict(stats)
    for g in smoothed:
        for n in g.layers:
            if stats[n]:
                plain[n] = (replace(stats[n][0], smoothed=None),) + tuple(stats[n][1:])
    names = {g.name for g in smoothed}
    todo = {g.name: ((sens.baseline, SMOOTHED) if g.name in names else (sens.baseline,)) for g in graph.groups}
    without = sensitivity_table(sim, graph, todo, plain, samples, y_float, baseline=sens.baseline,
                                range_method=range_method, cache_path=cache_path,
                                prefix_cache_bytes=prefix_cache_bytes)
    values, out, checked = dict(sens.sqnr_db), dict(stats), {}
    for g in smoothed:
        on, off = sens.sqnr_db[(g.name, SMOOTHED)], without.sqnr_db[(g.name, SMOOTHED)]
        checked[g.name] = {"smoothed_db": on, "unsmoothed_db": off, "kept": bool(on >= off)}
        if off > on:
            values[(g.name, SMOOTHED)] = off
            out.update({n: plain[n] for n in g.layers})
    return SensitivityTable(sens.baseline, sens.groups, sens.candidates, values), out, checked


def _full_run(sim, layers, encodings, samples) -> np.ndarray:
    sim.configure(layers, encodings)
    return sim.run(samples)


def _encoding_cache(stats, method: str) -> Callable:
    """(layer, candidate) → its activation encodings, each computed once (the range methods can be slow)."""
    memo: dict = {}

    def encode(name: str, cand) -> tuple:
        key = (name, cand.name)
        if key not in memo:
            memo[key] = _encodings(stats[name], cand, method)
        return memo[key]

    return encode


def _encodings(stats_for_layer, cand, method):
    from ..numerics import encoding_from_range

    if not cand.is_quantized:
        return ()
    out = []
    for s in stats_for_layer:
        s = s.for_candidate(cand.name)  # the smoothed input where the layer's W8A8 is smoothed
        enc = encoding_from_range(*s.range(method, cand.act_bits), cand.act_bits)
        out.append(replace(enc, channel_scale=s.factors) if s.factors is not None else enc)
    return tuple(out)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=float))
    tmp.replace(path)


def make_evaluator(sim, graph, stats, samples, y_float, range_method: str, *, score=None,
                   prefix_cache_bytes: int = 1 << 30) -> Callable[[dict], float]:
    """config {group: candidate} → quality on `samples` via the simulator: output SQNR (dB) against
    `y_float`, or `score(outputs)` when given (higher is better). Runs resume from the float model's
    activations before the config's first quantized layer (`PrefixCache`; 0 bytes: whole network)."""
    from ..simulate import PrefixCache

    group_members = {g.name: g.layers for g in graph.groups}
    encode = _encoding_cache(stats, range_method)
    cache = PrefixCache(sim, samples, max_bytes=prefix_cache_bytes) if prefix_cache_bytes > 0 else None

    def evaluate(config) -> float:
        layers, encodings = {}, {}
        for group, cand in config.items():
            c = get_candidate(cand)
            for n in group_members[group]:
                layers[n] = c
                encodings[n] = encode(n, c)
        y = cache.run(layers, encodings) if cache is not None else _full_run(sim, layers, encodings, samples)
        sim.reset()
        if not np.isfinite(y).all():
            return float("-inf")
        return float(score(y)) if score is not None else sqnr_db(y_float, y)

    return evaluate


def config_to_plan(config, graph, stats, range_method: str, profile, model_name: str,
                   bias_correction: bool = True, smoothing: bool = True) -> Plan:
    from ..plan import corrections_from_stats, ranges_from_stats, smoothing_from_stats

    layers = {n: config[g.name] for g in graph.groups for n in g.layers}
    ranges = ranges_from_stats(stats, layers, range_method)
    corrections = corrections_from_stats(stats, layers) if bias_correction else {}
    factors = smoothing_from_stats(stats, layers)
    calibration = {"method": range_method, "bias_correction": bias_correction, "smoothing": smoothing}
    return resolve(Plan(layers, ranges, model_name, profile.name, calibration, bias_corrections=corrections,
                        smoothing=factors), graph, profile)


# ---------------------------------------------------------------------- the job


def search(model, hw, config: SearchConfig = SearchConfig(), *, calibration=None, store_path=None,
           cache_dir: Optional[Path] = None, log: Callable[[str], None] = lambda m: None,
           progress=lambda done, total, what: None, metric=None,
           prefix_cache_bytes: int = 1 << 30, fast: bool = True) -> SearchResult:
    """Phases 1–3 for `model` on `hw`; `calibration`: list of input tuples (default: the model's bundled set).

    `metric`: what phase 3 selects by. None or "sqnr": output SQNR vs the float model on the held-out
    samples (targets `min_sqnr_db` / `max_drop_db`); "labeled": the model's built-in labeled evaluator
    (`tvm_mpq.metrics.labeled_metric`); a `tvm_mpq.metrics.Metric` (a labeled set); or a callable
    outputs → score (higher is better) of the outputs on the held-out samples. With a metric the targets
    are `min_score` / `max_score_drop` (or a latency budget). Phase 1 always scores output SQNR.
    `prefix_cache_bytes`: memory for the activations evaluations share (0: run the whole network each time).
    `fast`: evaluations resume from shared activations and run in channels-last layout (float ops round
    within float32 noise of the default layout); False: the whole network in the default layout every time.
    """
    from ..frontend import import_model
    from ..hardware import load_profile
    from ..latency import load_latency_table
    from ..models import load_model
    from ..simulate import Simulator
    from .pareto import pareto_front
    from .select import CachedEvaluator, check_monotonic, evaluate_curve, select_within_budget, select_within_drop
    from .tables import bops_cost_table, latency_cost_table

    from ..metrics import as_metric

    targets = [t for t in (config.min_sqnr_db, config.max_drop_db, config.min_score, config.max_score_drop,
                           config.latency_budget_ms) if t is not None]
    if len(targets) > 1:
        raise ValueError("give one of: a minimum SQNR or score, an allowed quality drop, a latency budget")
    for drop in (config.max_drop_db, config.max_score_drop):
        if drop is not None and drop < 0:
            raise ValueError(f"the allowed drop must be >= 0, got {drop}")
    timings, notes = {}, []
    t0 = time.perf_counter()
    spec = load_model(model) if isinstance(model, str) else model
    task = as_metric(metric, spec)
    if task is None and (config.min_score is not None or config.max_score_drop is not None):
        raise ValueError("min_score / max_score_drop need a task metric (metric='labeled', a Metric or a callable); "
                         "with output SQNR give min_sqnr_db / max_drop_db")
    if task is not None and (config.min_sqnr_db is not None or config.max_drop_db is not None):
        raise ValueError(f"phase 3 selects by the metric {task.name!r}: give min_score / max_score_drop "
                         "(in its unit), not an SQNR target")
    profile = load_profile(hw) if isinstance(hw, str) else hw
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    graph = imported.graph
    need = config.calib_samples + config.eval_samples
    data = list(calibration) if calibration is not None else spec.calibration(need)
    _check_calibration(data, spec.example_inputs, need)
    calib, held_out = data[:config.calib_samples], data[config.calib_samples:need]
    scored = calib[:config.sensitivity_samples]

    sim = Simulator(imported, channels_last=fast)
    sim.bias_correction = config.bias_correction
    sim.smoothing = config.smoothing
    prefix_cache_bytes = prefix_cache_bytes if fast else 0
    stats = sim.calibrate(calib)
    y_scored, y_held = sim.run(scored), sim.run(held_out)
    if not (np.isfinite(y_scored).all() and np.isfinite(y_held).all()):
        raise ValueError(f"{spec.name}: the float model outputs NaN or Inf on the calibration data")
    timings["calibrate_s"] = time.perf_counter() - t0

    candidates = group_candidates(graph, profile, config.baseline)
    key = _digest(spec.name, [imported.parameter(l.weight) for l in graph.layers.values() if l.weight],
                  [np.asarray(a) for s in scored for a in s], profile.to_dict(), config.phase1_dict(),
                  [np.asarray(a) for s in calib for a in s][:1], len(calib))
    cache_path = (cache_dir or default_cache_dir()) / f"{spec.name}-{key}.json"
    t = time.perf_counter()
    sens = sensitivity_table(sim, graph, candidates, stats, scored, y_scored, baseline=config.baseline,
                             range_method=config.range_method, cache_path=cache_path, progress=progress,
                             prefix_cache_bytes=prefix_cache_bytes)
    smoothing_checked = {}
    if config.smoothing and config.baseline == "FP32":
        sens, stats, smoothing_checked = check_smoothing(
            sim, graph, stats, sens, scored, y_scored, range_method=config.range_method,
            cache_path=cache_path.with_name(cache_path.stem + "-unsmoothed.json"),
            prefix_cache_bytes=prefix_cache_bytes)
        kept = sum(v["kept"] for v in smoothing_checked.values())
        if smoothing_checked:
            notes.append(f"smoothing: W8A8 scored with and without for {len(smoothing_checked)} groups; "
                         f"kept where better ({kept}), dropped elsewhere ({len(smoothing_checked) - kept})")
    timings["phase1_s"] = time.perf_counter() - t
    log(f"phase 1: {len(sens.sqnr_db) - len(graph.groups)} (group, candidate) scores in {timings['phase1_s']:.1f} s")

    t = time.perf_counter()
    table = load_latency_table(graph, profile, store_path=store_path)
    notes += table.notes
    if config.cost == "latency":
        cost = latency_cost_table(table, graph.groups, candidates)
    elif config.cost == "bops":
        macs = {g.name: sum(graph.layers[n].macs for n in g.layers) for g in graph.groups}
        cost = bops_cost_table(macs, candidates)
    else:
        raise ValueError(f"cost must be 'latency' or 'bops', got {config.cost!r}")
    front = pareto_front(sens, cost, config.order)
    timings["phase2_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if task is None:
        evaluate = CachedEvaluator(make_evaluator(sim, graph, stats, held_out, y_held, config.range_method,
                                                  prefix_cache_bytes=prefix_cache_bytes))
    else:
        inputs = held_out if task.inputs is None else list(task.inputs)
        _check_calibration(inputs, spec.example_inputs, len(inputs))
        evaluate = CachedEvaluator(make_evaluator(sim, graph, stats, inputs, None, config.range_method,
                                                  score=task.score, prefix_cache_bytes=prefix_cache_bytes))
    baseline_quality = evaluate(front[0].config)
    selection = None
    if config.max_drop_db is not None and not np.isfinite(baseline_quality):
        raise ValueError(f"the {config.baseline} baseline is the float model itself: its output SQNR is infinite, "
                         "so a drop from it is undefined. Give a minimum SQNR instead (--min-sqnr, e.g. 30)")
    minimum = config.min_sqnr_db if task is None else config.min_score
    drop = config.max_drop_db if task is None else config.max_score_drop
    target = minimum if minimum is not None else (baseline_quality - drop if drop is not None else None)
    if target is not None:
        selection = select_within_drop(front, evaluate, target, 0.0, config.selection)
    elif config.latency_budget_ms is not None:
        if config.cost != "latency":
            raise ValueError("a latency budget needs cost='latency'")
        selection = select_within_budget(front, evaluate, config.latency_budget_ms)
    curve = evaluate_curve(front, evaluate, max_points=None if len(front) <= 40 else 40)
    violations = check_monotonic(curve)
    if violations:
        notes.append(f"quality does not fall monotonically along the front at {len(violations)} of "
                     f"{len(curve)} evaluated points; binary search assumes it does (use --selection brute)")
    if selection is not None and not selection.met:
        notes.append(selection.message)
    chosen = selection.point if selection is not None else front[0]
    plan = config_to_plan(chosen.config, graph, stats, config.range_method, profile, spec.name,
                          config.bias_correction, config.smoothing)

    # Reference points on the same tables: homogeneous precisions, and what BOPs as the cost would choose.
    key = "sqnr_db" if task is None else "score"
    references = {}
    for name in ("W8A8", "W4A8"):
        cfg = {}
        for g, cands in candidates.items():
            alt = "W8A8" if name == "W4A8" else config.baseline
            cfg[g] = name if name in cands else (alt if alt in cands else config.baseline)
        references[name] = {"config": cfg, "cost": cost.config_cost(cfg), key: evaluate(cfg)}
    references[config.baseline] = {"config": dict(front[0].config), "cost": front[0].cost, key: baseline_quality}
    if config.cost == "latency" and target is not None:
        macs = {g.name: sum(graph.layers[n].macs for n in g.layers) for g in graph.groups}
        bops_front = pareto_front(sens, bops_cost_table(macs, candidates), "sensitivity")
        bops_pick = select_within_drop(bops_front, evaluate, target, 0.0, config.selection)
        references["BOPs-chosen"] = {"config": dict(bops_pick.point.config),
                                     "cost": cost.config_cost(bops_pick.point.config),
                                     key: evaluate(bops_pick.point.config), "met": bops_pick.met}
    timings["phase3_s"] = time.perf_counter() - t

    measured = None
    if selection is not None:
        t = time.perf_counter()
        measured = _measured_choice(config, imported, profile, stats, front, curve, selection, references, key,
                                    target, notes, log)
        timings["measure_s"] = time.perf_counter() - t
        if measured is not None and measured.chosen.label != "selected":
            selection = replace(selection, point=measured.chosen.point,
                                message=f"{selection.message}; {measured.message}")
            plan = config_to_plan(measured.chosen.point.config, graph, stats, config.range_method, profile,
                                  spec.name, config.bias_correction, config.smoothing)
    analysis = _analysis(sens, cost, front, curve, config.order) if task is None else _analysis(
        sens, cost, front, [], config.order)  # predicted SQNR and a task score are not comparable
    if smoothing_checked:
        analysis["smoothing"] = smoothing_checked
    timings["total_s"] = time.perf_counter() - t0
    return SearchResult(plan, curve, selection, sens, cost, {g.name: list(g.layers) for g in graph.groups},
                        timings, notes, latency_table=table, reference_points=references,
                        baseline_quality_db=baseline_quality if task is None else float("nan"), analysis=analysis,
                        metric=None if task is None else {**task.to_dict(), "baseline_score": baseline_quality},
                        measured=None if measured is None else measured.to_dict())


def _measured_choice(config, imported, profile, stats, front, curve, selection, references, key, target, notes,
                     log):
    """Compile and time a few qualifying points side by side and keep the fastest (`search.measured`);
    None (with a note) where nothing is measured: BOPs cost, no point meeting the target, a device this
    machine cannot run."""
    from ..measure.interleaved import compile_and_time, local_target
    from .measured import (Candidate, candidates_for_budget, candidates_for_target, config_key, pick_fastest,
                           pick_within_budget)
    from .tables import ParetoPoint

    if config.measure_points <= 0 or config.cost != "latency":
        return None
    if not selection.met:
        notes.append("the final choice is not measured: no point meets the target")
        return None
    device_target, why = local_target(profile)
    if device_target is None:
        notes.append(f"the final choice is on predicted latency, not measured: {why}")
        return None
    index = {config_key(p.config): i for i, p in enumerate(front)}
    chosen = Candidate("selected", selection.point, selection.point.evaluated_sqnr_db)
    base_quality = references[config.baseline][key]
    pool = [Candidate(config.baseline, replace(front[0], evaluated_sqnr_db=base_quality), base_quality)]
    for name, ref in references.items():
        if name in ("W8A8", "W4A8") and np.isfinite(ref[key]):
            pool.append(Candidate(name, ParetoPoint(ref["config"], ref["cost"], float("nan"), 0, ref[key]), ref[key]))
    evaluated = {config_key(p.config): p for p in (*curve, *selection.evaluated) if p.evaluated_sqnr_db is not None}
    pool += [Candidate(f"front[{index.get(k, '?')}]", p, p.evaluated_sqnr_db)
             for k, p in sorted(evaluated.items(), key=lambda kp: kp[1].cost)]
    if target is not None:
        candidates = candidates_for_target(chosen, pool, target, config.measure_points)
    else:
        candidates = candidates_for_budget(chosen, pool, config.measure_points)
    plans = {c.label: config_to_plan(c.point.config, imported.graph, stats, config.range_method, profile,
                                     imported.name, config.bias_correction, config.smoothing)
             for c in candidates}
    log(f"phase 3: compiling and timing {len(plans)} points side by side: {', '.join(plans)}")
    stats, failed, _ = compile_and_time(imported, plans, device_target, rounds=config.measure_rounds, log=log)
    for label, err in failed.items():
        notes.append(f"measuring {label} failed: {err}")
    measured_ms = {label: s.median_ms for label, s in stats.items()}
    if target is not None:
        choice = pick_fastest(candidates, measured_ms, target)
    else:
        choice = pick_within_budget(candidates, measured_ms, config.latency_budget_ms)
    notes.append(choice.message)
    log(f"phase 3: {choice.message}")
    return choice


def _analysis(sens, cost, front, curve, order: str) -> dict:
    """Which move order gives the better front, how far greedy is from the exact optimum of the additive
    model, and how well the additive model predicts the evaluated quality."""
    from .exact import exact_front_for, optimality_gap
    from .pareto import compare_fronts, pareto_front

    other = "sensitivity" if order == "quality_per_cost" else "quality_per_cost"
    comparison = compare_fronts(front, pareto_front(sens, cost, other))
    step = max(1, len(front) // 12)
    sample = [p for p in front[::step] if np.isfinite(p.predicted_sqnr_db)]
    gap = optimality_gap(sample, exact_front_for(sens, cost, sample, time_limit=10.0)).to_dict() if sample else {}
    pairs = [(p.predicted_sqnr_db, p.evaluated_sqnr_db) for p in curve
             if p.evaluated_sqnr_db is not None and np.isfinite(p.evaluated_sqnr_db) and np.isfinite(p.predicted_sqnr_db)]
    errors = [e - pr for pr, e in pairs]
    return {
        "orders": {"chosen": order, "other": other, "comparison_chosen_vs_other": comparison},
        "greedy_vs_exact": gap,
        "additive_model": {"points": len(pairs),
                           "mean_error_db": float(np.mean(errors)) if errors else None,
                           "max_abs_error_db": float(np.max(np.abs(errors))) if errors else None},
    }


def _check_calibration(data, example_inputs, need: int) -> None:
    if len(data) == 0:
        raise ValueError("the calibration set is empty: give at least a few dozen unlabeled samples")
    if len(data) < need:
        raise ValueError(f"the calibration set has {len(data)} samples; {need} are needed "
                         f"(calibration + held-out evaluation): lower calib_samples / eval_samples or give more")
    for i, sample in enumerate(data[:need]):
        if len(sample) != len(example_inputs):
            raise ValueError(f"calibration sample {i} has {len(sample)} inputs, the model takes {len(example_inputs)}")
        for j, (a, e) in enumerate(zip(sample, example_inputs)):
            if tuple(a.shape) != tuple(e.shape):
                raise ValueError(f"calibration sample {i} input {j} has shape {tuple(a.shape)}, "
                                 f"the model is compiled for {tuple(e.shape)}")
