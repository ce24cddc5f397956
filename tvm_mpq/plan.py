"""The plan: which candidate each layer runs at, plus the calibrated activation ranges.

A plan is the single interface between search and lowering, and a human-editable YAML file:

    tvm_mpq_plan: 1
    model: efficientnet_lite0
    profile: x86_avx2
    default: FP32            # layers not listed below
    layers:
      _conv_stem: W8A8
      _blocks.0._depthwise_conv: FP32
    ranges:                  # per layer, one [lo, hi] per activation input (calibrated)
      _conv_stem: [[-1.0, 1.0]]
    bias_correction:         # per quantized layer: mean output shift of its rounded weights (calibrated)
      _conv_stem:
        bits: 8
        values: [0.0012, -0.0003, ...]
    smoothing:               # per W8A8 layer that uses it: one factor per input channel (`tvm_mpq.smoothing`)
      _blocks.1._expand_conv: [0.71, 1.93, ...]

A layer's range, bias correction and smoothing factors belong together: those left out are calibrated by
`tvm-mpq compile`, and a layer whose plan has ranges keeps the plan's smoothing (none if it lists none).
Factors apply to W8A8 only; a layer edited from W8A8 to another candidate has its smoothed range and
correction recalibrated. `calibration: {bias_correction: false}` turns the corrections off,
`calibration: {smoothing: false}` the smoothing of layers the plan gives no ranges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import yaml

from . import smoothing
from .graph import LayerGraph
from .numerics import ActEncoding, Candidate, encoding_from_range, get_candidate, CANDIDATES

PLAN_VERSION = 1
HOMOGENEOUS = ("fp32", "fp16", "w8a8", "w4a8", "w8a16", "w4a16")


class PlanError(ValueError):
    """A plan that cannot be lowered; the message names what is wrong and where."""


@dataclass(frozen=True)
class Plan:
    layers: Mapping[str, str]  # layer name → candidate name
    ranges: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    model: str = ""
    profile: str = ""
    calibration: Mapping[str, object] = field(default_factory=dict)
    default: Optional[str] = None  # candidate of layers not listed (resolved by `resolve`)
    source_lines: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)  # layer → file:line
    # layer → (weight bits, per-output-channel shift subtracted before the bias: `numerics.bias_correction`)
    bias_corrections: Mapping[str, tuple[int, tuple[float, ...]]] = field(default_factory=dict, repr=False)
    # layer → smoothing factors (one per input channel) its W8A8 divides the activation by
    smoothing: Mapping[str, tuple[float, ...]] = field(default_factory=dict, repr=False)

    def candidate(self, layer: str) -> Candidate:
        return get_candidate(self.layers.get(layer, "FP32"))

    def candidates(self) -> dict[str, Candidate]:
        return {name: get_candidate(c) for name, c in self.layers.items()}

    def encodings(self) -> dict[str, tuple[ActEncoding, ...]]:
        out = {}
        for name, cname in self.layers.items():
            c = get_candidate(cname)
            if c.is_quantized:
                encs = tuple(encoding_from_range(lo, hi, c.act_bits) for lo, hi in self.ranges[name])
                factors = self.smoothing.get(name) if c.name == smoothing.CANDIDATE else None
                if factors is not None:
                    encs = (dataclasses.replace(encs[0], channel_scale=tuple(factors)),) + encs[1:]
                out[name] = encs
        return out

    def corrections(self) -> dict[str, np.ndarray]:
        """layer → float32 bias correction, for the quantized layers whose stored weight bits are theirs."""
        out = {}
        for name, (bits, values) in self.bias_corrections.items():
            c = get_candidate(self.layers.get(name, "FP32"))
            if c.is_quantized and c.weight_bits == bits:
                out[name] = np.asarray(values, np.float32)
        return out

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        out = {
            "tvm_mpq_plan": PLAN_VERSION,
            "model": self.model,
            "profile": self.profile,
            "calibration": dict(self.calibration),
            "layers": dict(self.layers),
            "ranges": {k: [list(map(float, r)) for r in v] for k, v in self.ranges.items()},
        }
        if self.bias_corrections:
            # shortest float32 text: the values read back to the same float32
            out["bias_correction"] = {k: {"bits": int(b), "values": _float32_list(vs)}
                                      for k, (b, vs) in self.bias_corrections.items()}
        if self.smoothing:
            out["smoothing"] = {k: _float32_list(vs) for k, vs in self.smoothing.items()}
        return out

    def save(self, path) -> Path:
        path = Path(path)
        data = self.to_dict()
        corrections = data.pop("bias_correction", None)
        text = yaml.safe_dump(data, sort_keys=False, width=120)
        if corrections:  # long number lists on wrapped lines, the rest of the file in block style
            text += ("# per layer: the weight bits it was measured for and one value per output channel, "
                     "subtracted before the bias\n")
            text += yaml.safe_dump({"bias_correction": corrections}, sort_keys=False, width=120,
                                   default_flow_style=None)
        factors = data.pop("smoothing", None)
        if factors:
            text += ("# per W8A8 layer: the factor each input channel of the activation is divided by (and of the "
                     "weight multiplied by)\n")
            text += yaml.safe_dump({"smoothing": factors}, sort_keys=False, width=120, default_flow_style=None)
        path.write_text(text)
        return path

    @staticmethod
    def load(path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        text = path.read_text()
        try:
            root = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise PlanError(f"{path}: not valid YAML: {err}") from err
        lines = _key_lines(root)

        def where(*keys) -> str:
            line = lines.get(keys)
            return f"{path}:{line}" if line else str(path)

        if not isinstance(data, dict):
            raise PlanError(f"{path}: a plan is a mapping with keys tvm_mpq_plan, layers, ranges")
        version = data.get("tvm_mpq_plan")
        if version != PLAN_VERSION:
            raise PlanError(f"{where('tvm_mpq_plan')}: tvm_mpq_plan must be {PLAN_VERSION}, got {version!r}")
        allowed = {"tvm_mpq_plan", "model", "profile", "calibration", "default", "layers", "ranges", "bias_correction",
                   "smoothing"}
        for key in data:
            if key not in allowed:
                raise PlanError(f"{where(key)}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
        layers = data.get("layers") or {}
        if not isinstance(layers, dict):
            raise PlanError(f"{where('layers')}: 'layers' must map layer names to candidates")
        for name, cand in layers.items():
            if not isinstance(cand, str) or cand.upper() not in CANDIDATES:
                raise PlanError(
                    f"{where('layers', name)}: layer {name!r} has candidate {cand!r}; "
                    f"allowed: {', '.join(CANDIDATES)}"
                )
        default = data.get("default")
        if default is not None and (not isinstance(default, str) or default.upper() not in CANDIDATES):
            raise PlanError(f"{where('default')}: default {default!r} is not one of {', '.join(CANDIDATES)}")
        ranges = {}
        for name, rs in (data.get("ranges") or {}).items():
            ok = isinstance(rs, list) and all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r) and r[0] <= r[1]
                for r in rs
            )
            if not ok:
                raise PlanError(f"{where('ranges', name)}: ranges of {name!r} must be a list of [lo, hi] with lo <= hi")
            ranges[name] = tuple((float(lo), float(hi)) for lo, hi in rs)
        corrections = {}
        for name, entry in (data.get("bias_correction") or {}).items():
            values = entry.get("values") if isinstance(entry, dict) else None
            ok = (isinstance(entry, dict) and set(entry) == {"bits", "values"} and entry["bits"] in (4, 8)
                  and isinstance(values, list) and values
                  and all(isinstance(v, (int, float)) and np.isfinite(v) for v in values))
            if not ok:
                raise PlanError(f"{where('bias_correction', name)}: bias_correction of {name!r} must be "
                                "{bits: 4 or 8, values: [finite numbers, one per output channel]}")
            corrections[name] = (int(entry["bits"]), tuple(float(v) for v in values))
        factors = {}
        for name, values in (data.get("smoothing") or {}).items():
            ok = (isinstance(values, list) and values
                  and all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in values))
            if not ok:
                raise PlanError(f"{where('smoothing', name)}: smoothing of {name!r} must be a list of positive "
                                "finite numbers, one per input channel")
            factors[name] = tuple(float(v) for v in values)
        return Plan(
            {k: v.upper() for k, v in layers.items()},
            ranges,
            str(data.get("model") or ""),
            str(data.get("profile") or ""),
            dict(data.get("calibration") or {}),
            default.upper() if default else None,
            {k[1]: where(*k) for k in lines if len(k) == 2 and k[0] == "layers"},
            corrections,
            factors,
        )


def _key_lines(node, prefix=()) -> dict[tuple, int]:
    """Map key paths of a composed YAML mapping to 1-based line numbers."""
    out = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            out[key] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, key))
    return out


def resolve(plan: Plan, graph: LayerGraph, profile) -> Plan:
    """Check a plan against a model and a hardware profile; expand the default. Raises PlanError."""
    lines = plan.source_lines
    default = plan.default
    named = dict(plan.layers)
    unknown = [k for k in named if k not in graph.layers]
    if unknown:
        where = "; ".join(f"{k} ({lines[k]})" if k in lines else k for k in unknown[:10])
        raise PlanError(
            f"plan names {len(unknown)} layer(s) the model does not have: {where}. "
            f"Model layers: {', '.join(list(graph.layers)[:8])}{' …' if len(graph.layers) > 8 else ''}"
        )
    full = {name: named.get(name, default or "FP32") for name in graph.layers}
    problems = []
    for name, cand in full.items():
        op = graph.layers[name].op_type
        if cand != "FP32" and not profile.supports(op, cand):
            allowed = ", ".join(c.name for c in profile.candidates_for(op))
            problems.append(f"{name}{' (' + lines[name] + ')' if name in lines else ''}: {cand} not supported "
                            f"for {op} on {profile.name} (allowed: {allowed})")
    if problems:
        raise PlanError("plan uses candidates the target lacks:\n  " + "\n  ".join(problems[:20]))
    for group in graph.groups:
        used = {full[name] for name in group.layers}
        if len(used) > 1:
            detail = ", ".join(f"{n}={full[n]}" for n in group.layers)
            raise PlanError(f"quantizer group {group.name} must share one precision but the plan mixes: {detail}")
    missing = []
    for name, cand in full.items():
        c = get_candidate(cand)
        if c.is_quantized:
            rs = plan.ranges.get(name)
            if rs is None or len(rs) != graph.layers[name].num_act_inputs:
                missing.append(name)
    if missing:
        raise PlanError(
            f"plan quantizes {len(missing)} layer(s) without calibrated activation ranges: "
            f"{', '.join(missing[:10])}. Calibrate (tvm-mpq compile does) or add ranges: entries."
        )
    ranges = {k: v for k, v in plan.ranges.items() if k in graph.layers}
    factors = {}
    for name, values in plan.smoothing.items():
        layer = graph.layers.get(name)
        if layer is None or full.get(name) != smoothing.CANDIDATE:
            continue  # smoothing applies to W8A8 only (make_plan recalibrates an edited layer)
        if not smoothing.eligible(layer):
            raise PlanError(f"smoothing of {name!r}: only linear layers and 1x1 convs without groups take "
                            "smoothing factors")
        if len(values) != layer.workload.weight_shape[1]:
            raise PlanError(f"smoothing of {name!r} has {len(values)} factors; the layer has "
                            f"{layer.workload.weight_shape[1]} input channels")
        factors[name] = tuple(values)
    corrections = {}
    for name, (bits, values) in plan.bias_corrections.items():
        c = get_candidate(full.get(name, "FP32"))
        layer = graph.layers.get(name)
        if layer is None or not c.is_quantized or layer.weight is None or c.weight_bits != bits:
            continue  # a correction for other weight bits (the candidate was edited) is recomputed by make_plan
        if name in plan.smoothing and name not in factors:
            continue  # the correction of smoothed weights, for a layer no longer smoothed
        if len(values) != layer.workload.weight_shape[0]:
            raise PlanError(f"bias_correction of {name!r} has {len(values)} values; the layer has "
                            f"{layer.workload.weight_shape[0]} output channels")
        corrections[name] = (bits, tuple(values))
    return Plan(full, ranges, plan.model, plan.profile, plan.calibration, bias_corrections=corrections,
                smoothing=factors)


def homogeneous_plan(graph: LayerGraph, profile, candidate: str, ranges: Mapping, **meta) -> Plan:
    """Every layer at `candidate` where its op supports it.

    Fallback where it does not: an activation-only layer (matmul) takes the candidate with the same
    activation bits and 8-bit weights (the weight bits do not apply to it); otherwise FP32.
    """
    want = get_candidate(candidate)
    layers = {}
    for name, layer in graph.layers.items():
        choice = "FP32"
        if want.name == "FP32" or profile.supports(layer.op_type, want.name):
            choice = want.name
        elif layer.op_type == "matmul" and want.is_quantized:
            alt = f"W8A{want.act_bits}"
            if profile.supports("matmul", alt):
                choice = alt
        layers[name] = choice
    # Groups must agree: a group takes the least aggressive choice of its members.
    order = list(CANDIDATES)
    for group in graph.groups:
        choices = {layers[n] for n in group.layers}
        if len(choices) > 1:
            pick = "FP32" if "FP32" in choices else min(choices, key=order.index)
            for n in group.layers:
                layers[n] = pick
    return Plan(layers, {k: tuple(v) for k, v in ranges.items()}, **meta)


def _input_stats(inputs, name: str, cand: str, smoothed) -> tuple:
    """The stats of what `cand` quantizes at each input: the first smoothed where the layer is (`smoothed`:
    the set of smoothed layers, None: wherever calibration chose factors)."""
    if not inputs or (smoothed is not None and name not in smoothed):
        return tuple(inputs)
    return (inputs[0].for_candidate(cand),) + tuple(inputs[1:])


def smoothing_from_stats(stats: Mapping, plan_layers: Mapping[str, str]) -> dict:
    """layer → smoothing factors for the W8A8 layers calibration chose factors for."""
    out = {}
    for name, inputs in stats.items():
        if plan_layers.get(name) == smoothing.CANDIDATE and inputs and inputs[0].smoothed is not None:
            out[name] = tuple(inputs[0].smoothed.factors)
    return out


def corrections_from_stats(stats: Mapping, plan_layers: Mapping[str, str], smoothed=None) -> dict:
    """layer → (weight bits, bias correction) for the quantized layers, from what calibration measured
    (of the smoothed weights where the layer is smoothed: `smoothed` as in `ranges_from_stats`)."""
    out = {}
    for name, inputs in stats.items():
        c = get_candidate(plan_layers.get(name, "FP32"))
        first = _input_stats(inputs, name, c.name, smoothed)[:1]
        if c.is_quantized and first and c.weight_bits in first[0].bias_correction:
            out[name] = (c.weight_bits, tuple(float(v) for v in first[0].bias_correction[c.weight_bits]))
    return out


def ranges_from_stats(stats: Mapping, plan_layers: Mapping[str, str], method: str = "minmax",
                      smoothed=None) -> dict:
    """Per-layer (lo, hi) per activation input for the bits each layer's candidate uses; of the smoothed
    input where the layer is smoothed (`smoothed`: the set of smoothed layers; None: each W8A8 layer
    calibration chose factors for)."""
    out = {}
    for name, inputs in stats.items():
        c = get_candidate(plan_layers.get(name, "FP32"))
        bits = c.act_bits or 8
        out[name] = tuple(s.range(method, bits) for s in _input_stats(inputs, name, c.name, smoothed))
    return out


def _float32_list(values) -> list:
    """Shortest float32 text of each value: it reads back to the same float32."""
    return [float(str(np.float32(v))) for v in values]
