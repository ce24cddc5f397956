"""Per-layer × candidate latency tables for a model on a profile, and whole-plan latency.

Each entry comes from the best source available, and says which:
  measured  – timed on the device (the measurement store),
  predicted – the profile's XGBoost latency model (trained on the store), with its uncertainty,
  roofline  – the profile's analytic fallback (no measurements and no model for this profile),
  in-model  – the layer's segment of this very model compiled at that candidate (`measure.in_model`):
              kernel, fused epilogue and the next layer's fused quantize as the compiled model runs them.
Whole-model latency of a plan = Σ layer latencies at their candidates + Σ convert ops (quantize of a
float activation into a layer's integer input dtype). When the store holds in-model segments for every
(layer, candidate) the model can take, they are used instead of the isolated tasks and the converts
are zero (a segment already contains the quantize the compiled model fuses); isolated and in-model
entries are never mixed, since isolated tasks overestimate a compiled model's layers. In-model tables
also carry *boundary corrections* where they were measured (`measure.in_model.measure_boundaries`):
for a layer whose next layer runs at another activation precision, the difference between its segment
in that situation and its homogeneous segment, added per such edge of a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from .cost_model.roofline import roofline_ms
from .graph import LayerGraph
from .measure.in_model import act_class
from .measure.tasks import CONVERT, LAYER, convert_key
from .numerics import get_candidate

MEASURED, PREDICTED, ROOFLINE, IN_MODEL = "measured", "predicted", "roofline", "in-model"


@dataclass(frozen=True)
class Entry:
    ms: float
    std_ms: float
    source: str  # measured | predicted | roofline

    def to_dict(self) -> dict:
        return {"ms": self.ms, "std_ms": self.std_ms, "source": self.source}


@dataclass
class LatencyTable:
    profile: str
    layers: dict[str, dict[str, Entry]]  # layer → candidate → entry
    converts: dict[str, dict[int, list[Entry]]]  # layer → activation bits → one entry per activation input
    notes: list[str] = field(default_factory=list)
    # layer → (its activation bits, next layer's activation bits) → correction, where the next layer in
    # execution order takes another activation precision (32 = float); in-model tables only
    boundaries: dict[str, dict[tuple[int, int], Entry]] = field(default_factory=dict)

    def boundary_ms(self, layer: str, cand: str, next_cand: str) -> float:
        """Correction of `layer`'s latency at `cand` when the next layer runs at `next_cand` (0 when both
        take the same activation precision, or when it was not measured)."""
        a, b = act_class(cand), act_class(next_cand)
        if a == b:
            return 0.0
        e = self.boundaries.get(layer, {}).get((a, b))
        return e.ms if e is not None else 0.0

    def model_ms(self, plan_layers: Mapping[str, str]) -> float:
        """Predicted latency of a whole plan: layers at their candidates plus the converts they need and
        the boundary corrections of the edges where the activation precision changes."""
        total = 0.0
        names = list(self.layers)
        for i, (name, row) in enumerate(self.layers.items()):
            cand = get_candidate(plan_layers.get(name, "FP32"))
            total += row[cand.name].ms
            if cand.is_quantized:
                total += sum(e.ms for e in self.converts[name][cand.act_bits])
            if i + 1 < len(names):
                total += self.boundary_ms(name, cand.name, plan_layers.get(names[i + 1], "FP32"))
        return total

    def sources(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.layers.values():
            for e in row.values():
                counts[e.source] = counts.get(e.source, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "profile": self.profile,
            "sources": self.sources(),
            "notes": self.notes,
            "layers": {n: {c: e.to_dict() for c, e in row.items()} for n, row in self.layers.items()},
            "converts": {n: {f"A{b}": [e.to_dict() for e in es] for b, es in row.items()}
                         for n, row in self.converts.items()},
            "boundaries": {n: {f"A{a}->A{b}": e.to_dict() for (a, b), e in row.items()}
                           for n, row in self.boundaries.items()},
        }


def build_table(graph: LayerGraph, profile, measurements, model=None, device: Optional[str] = None,
                kernels: Optional[str] = None) -> LatencyTable:
    """Latency table from stored measurements (preferring `device`), else `model`, else the roofline.

    `measurements`: iterable of store.Measurement for this profile; `model`: a trained LatencyModel or None;
    `kernels`: the kernels id the model compiles with (`tvm_mpq.kernels.kernels_id`): measurements of
    other kernels are ignored.
    """
    from .kernels import UNVERSIONED

    measurements = list(measurements)
    in_model, in_model_note = _in_model_table(graph, profile, measurements, device, kernels)
    if in_model is not None:
        return in_model
    best: dict[tuple[str, str, str], object] = {}
    stale = 0
    for m in measurements:
        if m.kind not in (LAYER, CONVERT):
            continue
        if kernels is not None and m.meta.get("kernels", UNVERSIONED) != kernels:
            stale += 1
            continue
        key = (m.kind, m.workload, m.candidate)
        if key not in best or (device is not None and m.device == device):
            best[key] = m
    notes = [in_model_note] if in_model_note else []
    notes += _foreign_note(list(best.values()), device)
    if stale:
        notes.append(f"{stale} measurements of other kernels than {kernels} ignored "
                     f"(re-run `tvm-mpq profile` to measure the current ones)")
    if not best:
        notes.append(f"no measurements for profile {profile.name}: "
                     + ("latencies predicted by its cost model" if model is not None
                        else "latencies from the profile's roofline (analytic, not measured)"))
    pending: list[tuple[str, str, object]] = []  # (layer, candidate, workload) to predict
    layers: dict[str, dict[str, Entry]] = {}
    for name, layer in graph.layers.items():
        row = {}
        for cand in profile.candidates_for(layer.op_type):
            m = best.get((LAYER, layer.workload.key(), cand.name))
            if m is not None:
                row[cand.name] = Entry(m.median_ms, m.std_ms, MEASURED)
            elif model is not None:
                pending.append((name, cand.name, layer.workload))
            else:
                row[cand.name] = Entry(_roofline(layer.workload, cand, profile), 0.0, ROOFLINE)
        if "FP32" not in row and not any(p[0] == name and p[1] == "FP32" for p in pending):
            fp32 = get_candidate("FP32")
            m = best.get((LAYER, layer.workload.key(), "FP32"))
            row["FP32"] = (Entry(m.median_ms, m.std_ms, MEASURED) if m is not None
                           else Entry(_roofline(layer.workload, fp32, profile), 0.0, ROOFLINE))
        layers[name] = row
    if pending:
        mean, std = model.predict([(wl, c) for _, c, wl in pending])
        for (name, cand, _), mu, sd in zip(pending, mean, std):
            layers[name][cand] = Entry(float(mu), float(sd), PREDICTED)
    converts: dict[str, dict[int, list[Entry]]] = {}
    for name, layer in graph.layers.items():
        shapes = [layer.workload.input_shape] + ([layer.workload.weight_shape] if layer.op_type == "matmul" else [])
        row = {}
        for bits in sorted({c.act_bits for c in profile.candidates_for(layer.op_type) if c.is_quantized}):
            entries = []
            for shape in shapes:
                m = best.get((CONVERT, convert_key(shape, bits), f"FP32->A{bits}"))
                entries.append(Entry(m.median_ms, m.std_ms, MEASURED) if m is not None
                               else Entry(_convert_roofline(shape, bits, profile), 0.0, ROOFLINE))
            row[bits] = entries
        converts[name] = row
    return LatencyTable(profile.name, layers, converts, notes)


def _foreign_note(chosen, device) -> list[str]:
    """A note when some of the `chosen` measurements were taken on another device than `device`."""
    foreign = sorted({m.device for m in chosen if device is not None and m.device != device})
    if not foreign:
        return []
    n = sum(1 for m in chosen if m.device != device)
    return [f"{n} of {len(chosen)} measurements are from another device than {device} "
            f"({', '.join(foreign)}): run `tvm-mpq profile` on this one to measure it"]


def _in_model_table(graph: LayerGraph, profile, measurements, device, kernels):
    """(table, None) from in-model segments of exactly this model if every (layer, candidate) a plan can
    pick has one; else (None, why not) or (None, None) when there are none."""
    from .kernels import UNVERSIONED
    from .measure.in_model import IN_MODEL as KIND, model_fingerprint, parse_segment_key

    fingerprint = model_fingerprint(graph)
    best: dict[tuple[str, str], object] = {}
    edges: dict[tuple[str, str, str], object] = {}  # (layer, candidate, next candidate) → boundary segment
    for m in measurements:
        if m.kind != KIND or (kernels is not None and m.meta.get("kernels", UNVERSIONED) != kernels):
            continue
        key = parse_segment_key(m.workload)
        if key is None or key.fingerprint != fingerprint or key.layer is None:
            continue
        found = best if key.next_candidate is None else edges
        k = (key.layer, m.candidate) if key.next_candidate is None else (key.layer, m.candidate, key.next_candidate)
        if k not in found or (device is not None and m.device == device):
            found[k] = m
    if not best:
        return None, None
    layers: dict[str, dict[str, Entry]] = {}
    converts: dict[str, dict[int, list[Entry]]] = {}
    missing = []
    for name, layer in graph.layers.items():
        row = {}
        cands = list(profile.candidates_for(layer.op_type))
        if not any(c.name == "FP32" for c in cands):
            cands.append(get_candidate("FP32"))
        for cand in cands:
            m = best.get((name, cand.name))
            if m is None:
                missing.append((name, cand.name))
            else:
                row[cand.name] = Entry(m.median_ms, m.std_ms, IN_MODEL)
        layers[name] = row
        shapes = 1 + (layer.op_type == "matmul")
        converts[name] = {bits: [Entry(0.0, 0.0, IN_MODEL)] * shapes
                          for bits in sorted({c.act_bits for c in cands if c.is_quantized})}
    if missing:
        # a (layer, candidate) no homogeneous build reaches (e.g. a quantizer group with a member that
        # lacks the candidate) is one no plan can pick either: leave it out of the table
        reachable = [(n, c) for n, c in missing if _reachable(graph, profile, n, c)]
        if reachable:
            return None, (f"in-model segments incomplete ({len(reachable)} missing, e.g. {reachable[0]}): "
                          f"isolated layer tasks used; run `tvm-mpq profile --in-model` to complete them")
        for name, cand in missing:
            layers[name].pop(cand, None)
    notes = [f"latencies measured inside the compiled model (in-model segments of {len(best)} "
             f"layer x candidate builds; converts included in the segments)"]
    notes += _foreign_note(list(best.values()) + list(edges.values()), device)
    boundaries = _boundary_corrections(edges, layers)
    if boundaries:
        notes.append(f"boundary corrections for {sum(len(r) for r in boundaries.values())} "
                     f"(layer, precision change) pairs from alternating-precision builds")
    else:
        notes.append("no boundary builds: precision changes between layers are costed as in the homogeneous "
                     "builds (run `tvm-mpq profile` again to measure them)")
    return LatencyTable(profile.name, layers, converts, notes, boundaries), None


def _boundary_corrections(edges, layers) -> dict[str, dict[tuple[int, int], Entry]]:
    """layer → (act bits, next act bits) → boundary segment − the homogeneous segment of its candidate."""
    out: dict[str, dict[tuple[int, int], Entry]] = {}
    for (name, cand, nxt), m in edges.items():
        base = layers.get(name, {}).get(cand)
        if base is None:
            continue
        key = (act_class(cand), act_class(nxt))
        if key[0] == key[1]:
            continue
        std = (m.std_ms ** 2 + base.std_ms ** 2) ** 0.5
        out.setdefault(name, {})[key] = Entry(m.median_ms - base.ms, std, IN_MODEL)
    return out


def _reachable(graph: LayerGraph, profile, layer: str, cand: str) -> bool:
    """Whether a plan can put `layer` at `cand`: every member of its quantizer group supports it."""
    group = next((g for g in graph.groups if layer in g.layers), None)
    members = group.layers if group is not None else (layer,)
    return all(cand == "FP32" or profile.supports(graph.layers[n].op_type, cand) for n in members)


def _roofline(workload, cand, profile) -> float:
    if profile.roofline is None:
        raise ValueError(f"profile {profile.name} has no measurements for this workload and no roofline section; "
                         f"run `tvm-mpq profile` or add a roofline to {profile.source}")
    return roofline_ms(workload, cand, profile.roofline)


def _convert_roofline(shape, bits: int, profile) -> float:
    """A quantize is memory-bound: read float32, write the integer dtype."""
    elements = 1
    for d in shape:
        elements *= d
    if profile.roofline is None:
        return 0.0
    return elements * (4 + bits / 8) / (profile.roofline.memory_gbps * 1e9) * 1e3


def latency_report(model_ref, hw, *, store_path=None, device: Optional[str] = None):
    """(LatencyTable, LayerGraph) of a model on a profile from the store and the profile's latency model."""
    from .frontend import import_model
    from .hardware import load_profile
    from .models import load_model

    profile = load_profile(hw) if isinstance(hw, str) else hw
    spec = load_model(model_ref) if isinstance(model_ref, str) else model_ref
    graph = import_model(spec.module, spec.example_inputs, name=spec.name,
                         unified_input_ops=profile.constraints.unified_input_ops).graph
    return load_latency_table(graph, profile, store_path=store_path, device=device), graph


def load_latency_table(graph: LayerGraph, profile, *, store_path=None, device: Optional[str] = None) -> LatencyTable:
    """The latency table of an analysed model from the store and the profile's saved latency model.
    `device` (default: the profile's RPC key, or this machine) is preferred where several measured a
    workload; the table's notes say how many entries came from other devices."""
    from pathlib import Path

    from .measure.runner import local_device_name

    if device is None:
        device = f"rpc:{profile.rpc_key}" if profile.rpc_key else local_device_name()

    from .cost_model.xgb import LatencyModel
    from .measure.profiler import default_store_path, latency_model_path
    from .store import MeasurementStore

    store_path = Path(store_path) if store_path else default_store_path()
    measurements = []
    if store_path.exists():
        with MeasurementStore(store_path) as store:
            measurements = store.query(profile=profile.name)
    model_path = latency_model_path(store_path, profile.name)
    model = LatencyModel.load(model_path) if model_path.exists() else None
    from .kernels import kernels_id

    return build_table(graph, profile, measurements, model, device, kernels_id(profile.tvm_target()))
