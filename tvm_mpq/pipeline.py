"""The compile job: model + profile + plan → calibrated, lowered, compiled, checked, timed, exported."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .frontend import import_model
from .hardware import HardwareProfile, load_profile
from .models import ModelSpec, load_model
from .numerics import get_candidate, sqnr_db
from .plan import (HOMOGENEOUS, Plan, corrections_from_stats, homogeneous_plan, ranges_from_stats,
                   resolve, smoothing_from_stats)
from .simulate import Simulator
from .smoothing import CANDIDATE as SMOOTHED_CANDIDATE


def _top_k_agreement(ref: np.ndarray, test: np.ndarray, k: int) -> float:
    """Fraction of samples whose top-1 of `test` is among the top-k of `ref`."""
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    return float(np.mean([t in r for t, r in zip(test.argmax(axis=1), top_ref)]))


def make_plan(plan: Union[str, Path, Plan], imported, profile: HardwareProfile, stats: dict, range_method: str,
              model_name: str = "", bias_correction: Optional[bool] = None, smoothing: Optional[bool] = None) -> Plan:
    """A resolved plan from a homogeneous name (fp32, w8a8, …), a plan file, or a Plan; ranges, bias
    corrections and smoothing factors the plan lacks from `stats`. `bias_correction` and `smoothing` None:
    as the plan says (default on)."""
    if isinstance(plan, str) and plan.lower() in HOMOGENEOUS:
        draft = homogeneous_plan(imported.graph, profile, plan, {}, model=model_name)
    elif isinstance(plan, Plan):
        draft = plan
    else:
        path = Path(plan)
        if not path.suffix and not path.exists():
            raise ValueError(f"plan {plan!r} is neither a file nor one of: {', '.join(HOMOGENEOUS)}")
        draft = Plan.load(path)
    # Expand the default first so ranges are derived for the bits each layer ends up with.
    names = {n: draft.layers.get(n, draft.default or "FP32") for n in imported.graph.layers}
    calibration = dict(draft.calibration or {"method": range_method})
    calibration["bias_correction"] = bool(calibration.get("bias_correction", True) if bias_correction is None
                                          else bias_correction)
    calibration["smoothing"] = bool(calibration.get("smoothing", True) if smoothing is None else smoothing)
    # A layer's range, bias correction and smoothing belong together: the plan's where it gives the layer's
    # range (unless that range is of a smoothed input and the layer is no longer W8A8), else calibrated.
    stale = {n for n in draft.smoothing if names.get(n) != SMOOTHED_CANDIDATE}
    own = {n for n in draft.ranges if n in names and n not in stale}
    factors = {n: v for n, v in smoothing_from_stats(stats, names).items() if n not in own} \
        if calibration["smoothing"] else {}
    factors.update({n: draft.smoothing[n] for n in own if n in draft.smoothing})
    ranges = {**ranges_from_stats(stats, names, range_method, set(factors)),
              **{k: draft.ranges[k] for k in own}}
    corrections = {}
    if calibration["bias_correction"]:  # the plan's own where they are for the layer's weight bits
        corrections = corrections_from_stats(stats, names, set(factors))
        for name, values in factors.items():  # calibrated for other factors: not this layer's weights
            calibrated = stats[name][0].smoothed if stats.get(name) else None
            if calibrated is None or tuple(calibrated.factors) != tuple(values):
                corrections.pop(name, None)
        for name, (bits, values) in draft.bias_corrections.items():
            if name in names and name not in stale and get_candidate(names[name]).weight_bits == bits:
                corrections[name] = (bits, values)
    draft = Plan(draft.layers, ranges, draft.model or model_name, draft.profile or profile.name,
                 calibration, draft.default, draft.source_lines, corrections, factors)
    return resolve(draft, imported.graph, profile)


def quantize_and_compile(
    model: Union[str, ModelSpec],
    hw: Union[str, HardwareProfile],
    plan: Union[str, Path, Plan] = "w8a8",
    out_dir: Optional[Union[str, Path]] = None,
    *,
    calib_samples: int = 32,
    eval_samples: int = 16,
    range_method: str = "minmax",
    bias_correction: Optional[bool] = None,
    smoothing: Optional[bool] = None,
    compare_fp32: bool = False,
    repeat: int = 10,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Run the whole compile job and return its summary (also written to out_dir/summary.json)."""
    t0 = time.perf_counter()
    spec = load_model(model) if isinstance(model, str) else model
    profile = load_profile(hw) if isinstance(hw, str) else hw
    if calib_samples < 1 or eval_samples < 1:
        raise ValueError("calib_samples and eval_samples must be at least 1")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    log(f"importing {spec.name}")
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    timings = {"import_s": time.perf_counter() - t0}

    data = spec.calibration(calib_samples + eval_samples)
    if len(data) < calib_samples + eval_samples:
        raise ValueError(f"{spec.name}: calibration set has {len(data)} samples, "
                         f"{calib_samples + eval_samples} needed (calibration + held-out evaluation)")
    calib, evals = data[:calib_samples], data[calib_samples:calib_samples + eval_samples]
    t = time.perf_counter()
    sim = Simulator(imported)
    sim.smoothing = smoothing is not False
    stats = sim.calibrate(calib)
    timings["calibrate_s"] = time.perf_counter() - t
    log(f"calibrated {len(imported.graph.layers)} layers on {len(calib)} samples")

    resolved = make_plan(plan, imported, profile, stats, range_method, spec.name, bias_correction, smoothing)
    y_float = sim.run(evals)
    sim.configure_plan(resolved)
    y_sim = sim.run(evals)

    from .build import build  # imports TVM

    log(f"compiling for {profile.name}")
    target = profile.tvm_target()
    compiled = build(imported, resolved, target)
    timings["compile_s"] = compiled.compile_seconds
    if not compiled.device.exist:  # e.g. a CUDA library compiled on a machine without a GPU: export only
        return _export_only(compiled, resolved, spec, profile, plan, out, timings, t0, log)
    y_tvm = np.concatenate([compiled.run([a.numpy() for a in sample]) for sample in evals])
    example = [a.numpy() for a in spec.example_inputs]
    latency = compiled.benchmark(example, number=1, repeat=repeat)
    log(f"latency {latency.median_ms:.2f} ms (median of {latency.repeats})")

    counts: dict[str, int] = {}
    for name in imported.graph.layers:
        c = resolved.layers[name]
        counts[c] = counts.get(c, 0) + 1
    summary = {
        "model": spec.name,
        "profile": profile.name,
        "target": profile.target,
        "plan": str(plan) if not isinstance(plan, Plan) else "custom",
        "layers": {n: resolved.layers[n] for n in imported.graph.layers},
        "candidate_counts": counts,
        "groups": [list(g.layers) for g in imported.graph.groups if len(g.layers) > 1],
        "float_ops": dict(imported.graph.float_ops),
        "folded_batch_norms": len(imported.folded_batch_norms),
        "eval_samples": len(evals),
        "calib_samples": len(calib),
        "range_method": range_method,
        "bias_correction": resolved.calibration["bias_correction"],
        "smoothed_layers": len(resolved.smoothing),
        "sqnr_vs_float_db": sqnr_db(y_float, y_tvm),
        "sqnr_vs_simulation_db": sqnr_db(y_sim, y_tvm),
        "simulation_sqnr_vs_float_db": sqnr_db(y_float, y_sim),
        "latency_ms": latency.to_dict(),
        "timings_s": timings,
    }
    if y_float.ndim == 2 and y_float.shape[1] > 1:
        summary["top1_agreement"] = float(np.mean(y_float.argmax(1) == y_tvm.argmax(1)))
        if y_float.shape[1] >= 5:
            summary["top1_in_float_top5"] = _top_k_agreement(y_float, y_tvm, 5)
    if compare_fp32 and any(get_candidate(c).is_quantized or c != "FP32" for c in resolved.layers.values()):
        log("compiling the FP32 baseline for comparison")
        fp32 = build(imported, make_plan("fp32", imported, profile, stats, range_method, spec.name), target)
        base = fp32.benchmark(example, number=1, repeat=repeat)
        summary["fp32_latency_ms"] = base.to_dict()
        summary["speedup_vs_fp32"] = base.median_ms / latency.median_ms
    timings["total_s"] = time.perf_counter() - t0
    if out is not None:
        compiled.export_library(out / "model.so")
        resolved.save(out / "plan.yaml")
        summary["artifacts"] = {"library": str(out / "model.so"), "plan": str(out / "plan.yaml")}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _export_only(compiled, resolved, spec, profile, plan, out, timings, t0, log) -> dict:
    """Summary (and artifacts) of a model compiled for a device this machine does not have: not run here."""
    counts: dict[str, int] = {}
    for c in resolved.layers.values():
        counts[c] = counts.get(c, 0) + 1
    note = (f"not run or timed: the target's device ({compiled.device}) is not present on this machine; "
            f"run model.so where it is (see docs/gpu_measurement.md)")
    log(note)
    summary = {"model": spec.name, "profile": profile.name, "target": profile.target,
               "plan": str(plan) if not isinstance(plan, Plan) else "custom",
               "layers": dict(resolved.layers), "candidate_counts": counts, "executed": False, "note": note,
               "timings_s": timings}
    timings["total_s"] = time.perf_counter() - t0
    if out is not None:
        compiled.export_library(out / "model.so")
        resolved.save(out / "plan.yaml")
        summary["artifacts"] = {"library": str(out / "model.so"), "plan": str(out / "plan.yaml")}
        kernels = _cross_compile_gpu_kernels(compiled, profile, out, log)
        if kernels:
            summary["artifacts"]["kernels"] = kernels
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _cross_compile_gpu_kernels(compiled, profile, out: Path, log) -> Optional[str]:
    """For a CUDA target: the library's kernels compiled here with nvcc into out/kernels (a GPU host with
    only the TVM runtime has no compiler to build them when loading the library); the folder, or None."""
    import shutil

    from .kernels import cuda_schedule

    target = profile.tvm_target()
    if not cuda_schedule.is_gpu_target(target):
        return None
    if shutil.which("nvcc") is None:
        log("nvcc not found: model.so carries CUDA source, which the GPU host compiles when it loads the "
            "library (needs nvcc or NVRTC there)")
        return None
    folder = out / "kernels"
    keys = cuda_schedule.cross_compile_kernels(compiled.executable, target, folder)
    log(f"{len(keys)} CUDA module(s) compiled for {target.attrs['arch']} into {folder}: on the GPU host call "
        f"tvm_mpq.kernels.cuda_schedule.register_kernel_dir('{folder.name}') (or scripts/device/measure.py's "
        f"kernel_lookup) before loading model.so")
    return str(folder)
