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


def call_times(vm_factory: Callable[[], object], args: Sequence, runs: int) -> tuple[list[str], np.ndarray]:
    """(symbols of the calls of one `main` run, seconds [runs, calls]) from an instrumented VM.

    `vm_factory` makes a fresh VM (the instrument stays installed on it). One warm-up run; every run
    must make the same calls."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    vm = vm_factory()
    symbols: list[str] = []
    times: list[float] = []
    started = [0.0]

    def instrument(func, symbol, before_run, ret_value, *call_args):
        now = time.perf_counter()
        if before_run:
            symbols.append(str(symbol))
            started[0] = now
        else:
            times.append(now - started[0])
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    vm["main"](*args)  # warm-up
    reference: Optional[list[str]] = None
    rows = []
    for _ in range(runs):
        symbols.clear()
        times.clear()
        vm["main"](*args)
        if reference is None:
            reference = list(symbols)
        elif symbols != reference:
            raise InModelError("the compiled model made different calls in two runs of the same input")
        if len(times) != len(symbols):
            raise InModelError(f"instrument saw {len(symbols)} calls start and {len(times)} end")
        rows.append(list(times))
    return reference or [], np.asarray(rows, dtype=np.float64)


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


def segment_ms(segments: dict[str, tuple[np.ndarray, int]], model_ms: float) -> tuple[dict, dict]:
    """(median ms, spread ms) per layer: segments with the instrument's per-call overhead removed and
    scaled so they add up to the uninstrumented whole-model latency `model_ms`.

    The overhead per call is (instrumented total − model_ms) / calls; what remains is apportioned."""
    calls = sum(n for _, n in segments.values())
    totals = sum(s for s, _ in segments.values())  # per run, seconds
    per_call = max(float(np.median(totals)) * 1e3 - model_ms, 0.0) / max(calls, 1) / 1e3
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


def _time_build(imported, plan, target, inputs, repeat: int, runs: int, log, label: str):
    """(whole-model stats, segment ms, segment spread, calls, instrumented ms) of one plan's build."""
    import tvm
    from tvm import relax

    from ..build import build

    log(f"in-model: compiling {imported.name} at {label}")
    compiled = build(imported, plan, target)
    whole = compiled.benchmark(inputs, number=1, repeat=repeat)
    args = [tvm.runtime.tensor(a) for a in inputs]
    symbols, seconds = call_times(lambda: relax.VirtualMachine(compiled.executable, tvm.cpu()), args, runs)
    segments = layer_segments(symbols, seconds, imported.graph)
    ms, spread = segment_ms(segments, whole.median_ms)
    instrumented_ms = float(np.median(seconds.sum(axis=1))) * 1e3
    log(f"in-model: {label} {whole.median_ms:.2f} ms (instrumented {instrumented_ms:.2f} ms, {len(symbols)} calls)")
    return whole, ms, spread, len(symbols), instrumented_ms


def _check_local(profile):
    target = profile.tvm_target()
    if target.kind.name != "llvm":
        raise InModelError(f"in-model profiling runs the model on this machine; profile {profile.name} "
                           f"targets {target.kind.name}")
    return target


def measure_in_model(imported, profile, *, candidates: Optional[Sequence[str]] = None, runs: int = 20,
                     repeat: Optional[int] = None, device: str = "local",
                     store=None, log: Callable[[str], None] = lambda m: None) -> InModelProfile:
    """Compile `imported` once per candidate, time it whole and call by call, and return (and `store`,
    committing each build as it completes) every layer's segment at that build's candidate.

    A layer's segment is stored only for the candidate it has in the build (a group or an op without the
    candidate falls back, see `plan.homogeneous_plan`)."""
    from ..kernels import kernels_id
    from ..plan import homogeneous_plan, resolve

    start = time.perf_counter()
    graph = imported.graph
    target = _check_local(profile)
    kernels = kernels_id(target)
    result = InModelProfile(model_fingerprint(graph))
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    repeat = repeat or max(profile.measure.repeat, 10)
    for cand in candidates or build_candidates(profile):
        try:
            plan = resolve(homogeneous_plan(graph, profile, cand, synthetic_ranges(graph), model=imported.name),
                           graph, profile)
            whole, ms, spread, calls, instrumented_ms = _time_build(imported, plan, target, inputs, repeat, runs,
                                                                    log, cand)
        except Exception as err:  # one build that fails must not lose the others; it is reported
            result.failed[cand] = f"{type(err).__name__}: {err}"[:500]
            log(f"in-model: {cand} failed: {result.failed[cand]}")
            continue
        own = dict(plan.layers)
        result.model_ms[cand] = whole.median_ms
        result.segments_ms[cand] = {n: v for n, v in ms.items() if own[n] == cand}
        result.plans[cand] = own
        if store is not None:
            meta = {"kernels": kernels, "model": imported.name, "runs": runs, "calls": calls,
                    "instrumented_ms": instrumented_ms}
            rows = [Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, None), cand,
                                whole.median_ms, whole.min_ms, whole.max_ms, whole.iqr_ms / 1.349, whole.repeats,
                                whole.number, meta={**meta, "part": "whole"})]
            for n, v in result.segments_ms[cand].items():
                rows.append(Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, n), cand,
                                        v, v, v, spread[n], runs, 1,
                                        meta={**meta, "part": "segment", "share": v / whole.median_ms}))
            store.put_many(rows)
    result.seconds = time.perf_counter() - start
    return result


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
                       repeat: Optional[int] = None, device: str = "local", store=None,
                       skip: Sequence[str] = (), log: Callable[[str], None] = lambda m: None) -> InModelProfile:
    """Compile the two alternating plans of each pair (default `boundary_pairs`), and return (and store)
    the segment of every layer whose next layer runs at another activation precision, keyed by that next
    candidate. `skip`: build names (`boundary_build_name`) already measured."""
    from ..kernels import kernels_id
    from ..plan import resolve

    start = time.perf_counter()
    graph = imported.graph
    target = _check_local(profile)
    kernels = kernels_id(target)
    names = list(graph.layers)
    result = InModelProfile(model_fingerprint(graph))
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    repeat = repeat or max(profile.measure.repeat, 10)
    for a, b in (boundary_pairs(profile) if pairs is None else pairs):
        for phase in (0, 1):
            label = boundary_build_name(a, b, phase)
            if label in skip:
                continue
            try:
                plan = resolve(alternating_plan(graph, profile, a, b, phase, synthetic_ranges(graph),
                                                model=imported.name), graph, profile)
                edges = [(n, plan.layers[n], plan.layers[m]) for n, m in zip(names, names[1:])
                         if act_class(plan.layers[n]) != act_class(plan.layers[m])]
                if not edges:
                    log(f"in-model: {label} has no precision boundary (groups or fallbacks): skipped")
                    continue
                whole, ms, spread, calls, instrumented_ms = _time_build(imported, plan, target, inputs, repeat,
                                                                        runs, log, label)
            except Exception as err:  # reported; the other builds go on
                result.failed[label] = f"{type(err).__name__}: {err}"[:500]
                log(f"in-model: {label} failed: {result.failed[label]}")
                continue
            result.model_ms[label] = whole.median_ms
            result.segments_ms[label] = {n: ms[n] for n, _, _ in edges}
            result.plans[label] = dict(plan.layers)
            if store is not None:
                meta = {"kernels": kernels, "model": imported.name, "runs": runs, "calls": calls,
                        "instrumented_ms": instrumented_ms, "build": label}
                rows = [Measurement(profile.name, device, IN_MODEL, segment_key(result.fingerprint, None, build=label),
                                    a, whole.median_ms, whole.min_ms, whole.max_ms, whole.iqr_ms / 1.349,
                                    whole.repeats, whole.number, meta={**meta, "part": "whole"})]
                for n, cand, nxt in edges:
                    rows.append(Measurement(profile.name, device, IN_MODEL,
                                            segment_key(result.fingerprint, n, next_candidate=nxt), cand,
                                            ms[n], ms[n], ms[n], spread[n], runs, 1,
                                            meta={**meta, "part": "boundary segment"}))
                store.put_many(rows)
    result.seconds = time.perf_counter() - start
    return result
