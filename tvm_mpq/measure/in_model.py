"""Per-layer latency inside the compiled model.

Isolated layer tasks (`measure.tasks`) time each kernel with its own operand packing, requantize
epilogue and call overhead, and each convert as a standalone quantize; the compiled model fuses the
next layer's quantize and packing into the previous epilogue. Summed, isolated tasks overestimate a
compiled model (about 2x for EfficientNet-Lite0 on the AVX2 kernels).

Here the model itself is compiled once per candidate (homogeneous plan), run with a VM instrument that
times every call, and the call sequence is cut at each layer's kernel: a layer's *segment* is its
kernel plus every call after it up to the next layer's kernel (its epilogue, the next layer's quantize
and packing, the float ops in between). The first segment also takes what runs before the first
kernel. Segments are scaled so that they add up to the uninstrumented latency of the same build
(time_evaluator), so the instrument's own overhead is not counted. A plan's latency is then the sum
of its layers' segments at their candidates: exact for every homogeneous build, an approximation at
precision changes (the fused quantize of the next layer is the one of the layer's own build).
All builds of one `measure_model` call are compiled first and then timed together in interleaved rounds
(`measure.interleaved`), so a burst of host noise shifts every build alike instead of one row of the table.

Precision boundaries. Where a layer's next layer (in execution order) takes another activation
precision, the calls between the two kernels differ from both homogeneous builds: an int8 layer's
epilogue dequantizes instead of requantizing, and a float layer's output is quantized (and packed) in a
pass of its own. `measure_boundaries` compiles, for each pair of activation precisions, two plans that
alternate them layer by layer (quantizer groups kept whole), so every layer is measured once followed
by each other precision; `tvm_mpq.latency` adds the difference to the homogeneous segment (a
*boundary correction*) for every edge of a plan where the precision changes.

Segments are stored as kind "model" measurements keyed by a fingerprint of the model's layer
structure (`segment_key`), so `tvm_mpq.latency` uses them for exactly that model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..graph import LayerGraph
from ..store import Measurement

IN_MODEL = "model"  # store kind of in-model measurements


class InModelError(RuntimeError):
    """The compiled model's calls cannot be attributed to its layers."""


def model_fingerprint(graph: LayerGraph) -> str:
    """A hash of the model's layer structure (names and workloads, shapes included): in-model segments
    are valid for a model with exactly these layers."""
    h = hashlib.sha256()
    for name, layer in graph.layers.items():
        h.update(f"{name}|{layer.workload.key()}\n".encode())
    return h.hexdigest()[:16]


def segment_key(fingerprint: str, layer: Optional[str], *, next_candidate: Optional[str] = None,
                build: Optional[str] = None) -> str:
    """Store workload key of one layer's segment, or of the whole model when `layer` is None.

    `next_candidate`: the segment of a boundary build, where the next layer ran at that candidate.
    `build`: names a boundary build (its whole-model row)."""
    data: dict = {"in_model": fingerprint, "layer": layer}
    if next_candidate is not None:
        data["next"] = next_candidate
    if build is not None:
        data["build"] = build
    return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class SegmentKey:
    fingerprint: str
    layer: Optional[str]
    next_candidate: Optional[str] = None  # set for a segment of a boundary build
    build: Optional[str] = None  # set for the whole-model row of a boundary build


def parse_segment_key(key: str) -> Optional[SegmentKey]:
    try:
        data = json.loads(key)
    except ValueError:
        return None
    if not isinstance(data, dict) or "in_model" not in data:
        return None
    return SegmentKey(data["in_model"], data.get("layer"), data.get("next"), data.get("build"))


def act_class(candidate: str) -> int:
    """Activation precision of a candidate in bits (32 for float activations): what decides whether a
    quantize or dequantize sits between two layers."""
    from ..numerics import get_candidate

    return get_candidate(candidate).act_bits or 32


class _CallProfiler:
    """`call_times` in installments: an instrumented VM whose runs accumulate across `run` calls."""

    def __init__(self, vm, args):
        self.args = args
        self.vm = vm
        self.symbols: list[str] = []
        self.times: list[float] = []
        self.rows: list[list[float]] = []
        self.reference: Optional[list[str]] = None
        self.started = 0.0
        vm.set_instrument(self._instrument)
        vm["main"](*args)  # warm-up

    def _instrument(self, func, symbol, before_run, ret_value, *call_args):
        now = time.perf_counter()
        if before_run:
            self.symbols.append(str(symbol))
            self.started = now
        else:
            self.times.append(now - self.started)
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    def run(self, runs: int) -> None:
        for _ in range(runs):
            self.symbols, self.times = [], []
            self.vm["main"](*self.args)
            if self.reference is None:
                self.reference = list(self.symbols)
            elif self.symbols != self.reference:
                raise InModelError("the compiled model made different calls in two runs of the same input")
            if len(self.times) != len(self.symbols):
                raise InModelError(f"instrument saw {len(self.symbols)} calls start and {len(self.times)} end")
            self.rows.append(list(self.times))

    def result(self) -> tuple[list[str], np.ndarray]:
        return self.reference or [], np.asarray(self.rows, dtype=np.float64)


def call_times(vm_factory: Callable[[], object], args: Sequence, runs: int) -> tuple[list[str], np.ndarray]:
    """(symbols of the calls of one `main` run, seconds [runs, calls]) from an instrumented VM.

    `vm_factory` makes a fresh VM (the instrument stays installed on it). One warm-up run; every run
    must make the same calls."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    profiler = _CallProfiler(vm_factory(), args)
    profiler.run(runs)
    return profiler.result()


def layer_segments(symbols: Sequence[str], seconds: np.ndarray, graph: LayerGraph) -> dict[str, tuple[np.ndarray, int]]:
    """Per-layer (segment times [runs], number of calls) from a call profile of a model lowered with
    layer tags.

    Calls whose symbol carries a layer tag (`mpqL<i>_`) are the layers' kernels, one per layer in
    execution order. TVM merges structurally identical functions, so a kernel may carry the tag of an
    earlier identical layer: the position in the call sequence decides, and the tag is checked to
    name this layer or an earlier one with the same workload."""
    from ..transform.quantize_mixed_precision import LAYER_TAG

    names = list(graph.layers)
    kernel_calls = [(i, int(m.group(1))) for i, s in enumerate(symbols) if (m := LAYER_TAG.search(s))]
    if len(kernel_calls) != len(names):
        raise InModelError(
            f"{len(kernel_calls)} tagged kernel calls for {len(names)} layers: every layer must be lowered "
            "by QuantizeMixedPrecision (layers left to TVM's own operators carry no tag; in-model profiling "
            "needs a kernel library that lowers every layer, e.g. x86_avx2)")
    for pos, (_, tag) in enumerate(kernel_calls):
        if tag > pos or tag >= len(names) or (
                graph.layers[names[tag]].workload.key() != graph.layers[names[pos]].workload.key()):
            raise InModelError(f"kernel call {pos} ({symbols[kernel_calls[pos][0]]}) does not belong to layer "
                               f"{names[pos]}: the call order differs from the layer order")
    bounds = [0] + [i for i, _ in kernel_calls[1:]] + [len(symbols)]
    return {name: (seconds[:, bounds[p]:bounds[p + 1]].sum(axis=1), bounds[p + 1] - bounds[p])
            for p, name in enumerate(names)}


def fastest_call_ms(seconds: np.ndarray) -> float:
    """The median time of the fastest call of a call profile (seconds [runs, calls]): a bound on the
    instrument's own overhead per call."""
    return float(np.median(seconds, axis=0).min()) * 1e3 if seconds.size else 0.0


def segment_ms(segments: dict[str, tuple[np.ndarray, int]], model_ms: float,
               max_call_overhead_ms: Optional[float] = None) -> tuple[dict, dict]:
    """(median ms, spread ms) per layer: segments with the instrument's per-call overhead removed and
    scaled so they add up to the uninstrumented whole-model latency `model_ms`.

    The overhead per call is (instrumented total − model_ms) / calls, at most `max_call_overhead_ms`
    (pass the median of the fastest call: every measured call contains the overhead, so it cannot be
    more). Without that bound, a build whose uninstrumented runs met a faster window of the host than
    its instrumented ones (slow builds: tens of ms, ms of noise) had the difference taken off every
    call, which wiped out its short segments; the bound leaves that difference to the rescaling."""
    calls = sum(n for _, n in segments.values())
    totals = sum(s for s, _ in segments.values())  # per run, seconds
    per_call = max(float(np.median(totals)) * 1e3 - model_ms, 0.0) / max(calls, 1)
    if max_call_overhead_ms is not None:
        per_call = min(per_call, max_call_overhead_ms)
    per_call /= 1e3
    corrected = {name: np.maximum(s - n * per_call, 1e-9) for name, (s, n) in segments.items()}
    run_totals = sum(corrected.values())
    shares = {name: c / run_totals for name, c in corrected.items()}
    med = {name: float(np.median(sh)) for name, sh in shares.items()}
    norm = sum(med.values())
    return ({name: model_ms * v / norm for name, v in med.items()},
            {name: model_ms * float(np.std(sh)) / norm for name, sh in shares.items()})


@dataclass
class InModelProfile:
    """What `measure_in_model` measured for one model on one profile."""

    fingerprint: str
    model_ms: dict[str, float] = field(default_factory=dict)  # candidate → uninstrumented latency of its build
    segments_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate → layer → ms
    plans: dict[str, dict[str, str]] = field(default_factory=dict)  # candidate → the build's layer → candidate
    failed: dict[str, str] = field(default_factory=dict)  # candidate → error
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "model_ms": self.model_ms, "segments_ms": self.segments_ms,
                "failed": self.failed, "seconds": self.seconds}


def synthetic_ranges(graph: LayerGraph) -> dict:
    """Activation ranges for timing builds: latency does not depend on the scales, only on the code."""
    return {name: tuple((-4.0, 4.0) for _ in range(layer.num_act_inputs)) for name, layer in graph.layers.items()}


def build_candidates(profile) -> list[str]:
    """The candidates of a profile's homogeneous builds, in the profile's order, FP32 last."""
    seen: list[str] = []
    for op in ("conv2d", "linear", "matmul"):
        for c in profile.candidates_for(op):
            if c.name not in seen:
                seen.append(c.name)
    return sorted(seen, key=lambda c: c == "FP32")


@dataclass
class _Timing:
    """One build's interleaved measurement: whole-model stats and per-layer segments."""

    whole: object  # build.LatencyStats
    ms: dict
    spread: dict
    calls: int
    instrumented_ms: float


def _timed_builds(imported, plans: Mapping[str, object], target, inputs, *, runs: int, rounds: int, log
                  ) -> tuple[dict[str, _Timing], dict[str, str]]:
    """Compile every plan, then time all builds in interleaved rounds (`measure.interleaved`): each round
    times every build whole (2 calls, uninstrumented) and call by call (its share of `runs` instrumented
    runs), so host noise hits every build alike. Returns (timing per build, error per build that failed)."""
    import tvm
    from tvm import relax

    from ..build import LatencyStats
    from .interleaved import compile_all, interleave, vm_sampler

    compiled, failed, _ = compile_all(imported, plans, target, log, what="in-model")
    if not compiled:
        return {}, failed
    rounds = max(1, min(rounds, runs))
    per_round = -(-runs // rounds)
    args = [tvm.runtime.tensor(a) for a in inputs]
    profilers, samplers = {}, {}
    for label, c in compiled.items():
        profilers[label] = _CallProfiler(relax.VirtualMachine(c.executable, tvm.cpu()), args)
        whole = vm_sampler(c, inputs, calls=2)
        samplers[label] = (lambda w=whole, p=profilers[label]: (p.run(per_round), w())[1])
    log(f"in-model: timing {len(compiled)} builds in {rounds} interleaved rounds")
    try:
        seconds = interleave(samplers, rounds)
    except InModelError as err:
        return {}, {**failed, **{label: str(err) for label in compiled}}
    out = {}
    for label, prof in profilers.items():
        whole = LatencyStats.from_seconds(seconds[label], 1)
        symbols, calls = prof.result()
        try:
            segments = layer_segments(symbols, calls, imported.graph)
        except InModelError as err:
            failed[label] = str(err)
            continue
        ms, spread = segment_ms(segments, whole.median_ms, fastest_call_ms(calls))
        instrumented_ms = float(np.median(calls.sum(axis=1))) * 1e3
        log(f"in-model: {label} {whole.median_ms:.2f} ms (instrumented {instrumented_ms:.2f} ms, {len(symbols)} calls)")
        out[label] = _Timing(whole, ms, spread, len(symbols), instrumented_ms)
    return out, failed


def _check_local(profile):
    from .interleaved import local_target

    target, why = local_target(profile)
    if target is None:
        raise InModelError(f"in-model profiling runs the model on this machine: {why}")
    return target


def measure_in_model(imported, profile, *, candidates: Optional[Sequence[str]] = None, runs: int = 20,
                     rounds: int = 10, device: str = "local",
                     store=None, log: Callable[[str], None] = lambda m: None) -> InModelProfile:
    """Compile `imported` once per candidate, time the builds whole and call by call in `rounds`
    interleaved rounds, and return (and `store`) every layer's segment at that build's candidate.

    A layer's segment is stored only for the candidate it has in the build (a group or an op without the
    candidate falls back, see `plan.homogeneous_plan`)."""
    homogeneous, _ = measure_model(imported, profile, candidates=candidates or build_candidates(profile), pairs=[],
                                   runs=runs, rounds=rounds, device=device, store=store, log=log)
    return homogeneous


def measure_model(imported, profile, *, candidates: Sequence[str], pairs: Optional[Sequence[tuple[str, str]]] = None,
                  skip_boundaries: Sequence[str] = (), runs: int = 20, rounds: int = 10, device: str = "local",
                  store=None, log: Callable[[str], None] = lambda m: None) -> tuple[InModelProfile, InModelProfile]:
    """The homogeneous builds of `candidates` and the boundary builds of `pairs` (None: `boundary_pairs`;
    `skip_boundaries`: build names already measured), compiled first and then timed together in
    interleaved rounds; returns (homogeneous, boundaries) and stores both."""
    from ..kernels import kernels_id
    from ..plan import homogeneous_plan, resolve

    start = time.perf_counter()
    graph = imported.graph
    target = _check_local(profile)
    kernels = kernels_id(target)
    homogeneous, boundaries = InModelProfile(model_fingerprint(graph)), InModelProfile(model_fingerprint(graph))
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    plans = {}
    for cand in candidates:
        try:
            plans[cand] = resolve(homogeneous_plan(graph, profile, cand, synthetic_ranges(graph), model=imported.name),
                                  graph, profile)
        except Exception as err:  # reported; the other builds go on
            homogeneous.failed[cand] = f"{type(err).__name__}: {err}"[:500]
    edges_of = {}
    for label, (plan, edges) in _boundary_plans(imported, profile, pairs, skip_boundaries, boundaries, log).items():
        plans[label], edges_of[label] = plan, edges
    timings, failed = _timed_builds(imported, plans, target, inputs, runs=runs, rounds=rounds, log=log)
    meta = {"kernels": kernels, "model": imported.name, "runs": runs}
    for label, err in failed.items():
        (boundaries if label in edges_of else homogeneous).failed[label] = err
    for label, t in timings.items():
        if label in edges_of:
            _keep_boundary(boundaries, label, plans[label], edges_of[label], t, profile, device, meta, store)
        else:
            _keep_homogeneous(homogeneous, label, plans[label], t, profile, device, meta, store)
    homogeneous.seconds = boundaries.seconds = time.perf_counter() - start
    return homogeneous, boundaries


def _keep_homogeneous(result: InModelProfile, cand: str, plan, t: _Timing, profile, device: str, meta: dict,
                      store) -> None:
    own = dict(plan.layers)
    result.model_ms[cand] = t.whole.median_ms
    result.segments_ms[cand] = {n: v for n, v in t.ms.items() if own[n] == cand}
    result.plans[cand] = own
    if store is None:
        return
    w, runs = t.whole, meta["runs"]
    meta = {**meta, "calls": t.calls, "instrumented_ms": t.instrumented_ms}
    rows = [Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, None), cand, w.median_ms,
                        w.min_ms, w.max_ms, w.iqr_ms / 1.349, w.repeats, w.number, meta={**meta, "part": "whole"})]
    for n, v in result.segments_ms[cand].items():
        rows.append(Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, n), cand, v, v, v,
                                t.spread[n], runs, 1, meta={**meta, "part": "segment", "share": v / w.median_ms}))
    store.put_many(rows)


def boundary_pairs(profile) -> list[tuple[str, str]]:
    """One representative candidate per activation precision of the profile (the first in the
    profile's order), and every pair of them: the boundary builds `measure_boundaries` compiles."""
    reps: dict[int, str] = {}
    for cand in build_candidates(profile):
        reps.setdefault(act_class(cand), cand)
    names = list(reps.values())
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def alternating_plan(graph: LayerGraph, profile, a: str, b: str, phase: int, ranges: Mapping, **meta):
    """Plan whose layers alternate between the homogeneous plans of `a` and `b` in execution order,
    starting with `a` (phase 0) or `b` (phase 1); a quantizer group takes one side as a whole, where its
    first layer falls."""
    from ..plan import Plan, homogeneous_plan

    pa = homogeneous_plan(graph, profile, a, ranges).layers
    pb = homogeneous_plan(graph, profile, b, ranges).layers
    group_of = {n: g.name for g in graph.groups for n in g.layers}
    side: dict[str, int] = {}
    layers = {}
    for name in graph.layers:
        unit = group_of.get(name, name)
        side.setdefault(unit, (len(side) + phase) % 2)
        layers[name] = (pa if side[unit] == 0 else pb)[name]
    return Plan(layers, {k: tuple(v) for k, v in ranges.items()}, **meta)


def boundary_build_name(a: str, b: str, phase: int) -> str:
    return f"{a}|{b}|{phase}"


def measure_boundaries(imported, profile, *, pairs: Optional[Sequence[tuple[str, str]]] = None, runs: int = 20,
                       rounds: int = 10, device: str = "local", store=None,
                       skip: Sequence[str] = (), log: Callable[[str], None] = lambda m: None) -> InModelProfile:
    """Compile the two alternating plans of each pair (default `boundary_pairs`), and return (and store)
    the segment of every layer whose next layer runs at another activation precision, keyed by that next
    candidate. `skip`: build names (`boundary_build_name`) already measured."""
    _, boundaries = measure_model(imported, profile, candidates=[], pairs=pairs, skip_boundaries=skip, runs=runs,
                                  rounds=rounds, device=device, store=store, log=log)
    return boundaries


def _boundary_plans(imported, profile, pairs, skip, result: InModelProfile, log) -> dict:
    """build name → (plan, [(layer, its candidate, next layer's candidate)] at each precision change)."""
    from ..plan import resolve

    graph = imported.graph
    names = list(graph.layers)
    out = {}
    for a, b in (boundary_pairs(profile) if pairs is None else pairs):
        for phase in (0, 1):
            label = boundary_build_name(a, b, phase)
            if label in skip:
                continue
            try:
                plan = resolve(alternating_plan(graph, profile, a, b, phase, synthetic_ranges(graph),
                                                model=imported.name), graph, profile)
            except Exception as err:  # reported; the other builds go on
                result.failed[label] = f"{type(err).__name__}: {err}"[:500]
                continue
            edges = [(n, plan.layers[n], plan.layers[m]) for n, m in zip(names, names[1:])
                     if act_class(plan.layers[n]) != act_class(plan.layers[m])]
            if not edges:
                log(f"in-model: {label} has no precision boundary (groups or fallbacks): skipped")
                continue
            out[label] = (plan, edges)
    return out


def _keep_boundary(result: InModelProfile, label: str, plan, edges, t: _Timing, profile, device: str, meta: dict,
                   store) -> None:
    result.model_ms[label] = t.whole.median_ms
    result.segments_ms[label] = {n: t.ms[n] for n, _, _ in edges}
    result.plans[label] = dict(plan.layers)
    if store is None:
        return
    w, runs = t.whole, meta["runs"]
    first = label.split("|")[0]
    meta = {**meta, "calls": t.calls, "instrumented_ms": t.instrumented_ms, "build": label}
    rows = [Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, None, build=label), first,
                        w.median_ms, w.min_ms, w.max_ms, w.iqr_ms / 1.349, w.repeats, w.number,
                        meta={**meta, "part": "whole"})]
    for n, cand, nxt in edges:
        rows.append(Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, n, next_candidate=nxt),
                                cand, t.ms[n], t.ms[n], t.ms[n], t.spread[n], runs, 1,
                                meta={**meta, "part": "boundary segment"}))
    store.put_many(rows)
