"""Whole models, side by side in one run on this machine: what a user would otherwise pick and what
tvm_mpq compiles, each with its latency (batch 1 and 8) and its quality against the float PyTorch model.

Per model:
- baselines (`benchmarks/baselines.py`): PyTorch eager fp32, ONNX Runtime fp32, ONNX Runtime static int8
  (QDQ, per-channel, MinMax on the calibration samples below), ONNX Runtime dynamic int8 (transformers);
- TVM, compiled by tvm_mpq for the profile's target: homogeneous FP32, W8A8 and W4A8 plans, and the mixed
  plans that `tvm-mpq search` wrote under benchmarks/results/search_*/plan.yaml for this model (labelled
  latency-aware or BOPs-chosen from the search report's cost unit; the plan's own calibrated ranges kept).

Every executor runs with 2 threads. Calibration (ranges of the TVM plans, ONNX Runtime's static
quantizer) uses the same samples: the first N of the model's calibration set; quality is measured on the
next M (held out), one sample at a time, against PyTorch fp32: output SQNR, top-1/top-5 agreement
(classifiers), mean-pooled cosine (MiniLM), and Fashion-MNIST test accuracy (small_cnn, at batch 8).
Latency: median, IQR, min, max over `--repeat` runs after warm-up, on held-out samples stacked to the batch,
each executor timed on its own; and at batch 1 also every executor and build of a model side by side
(`--rounds` interleaved rounds of 3 calls, order rotated each round: `latency_interleaved_ms`), which is the
figure to compare rows by on a host whose speed drifts.

    python benchmarks/end_to_end.py [--models efficientnet_lite0,minilm_l6,small_cnn] [--fast]

Writes benchmarks/results/end_to_end.json and end_to_end.png (with --fast: under benchmarks/results/fast/).
Timings are only comparable on an otherwise idle machine: the JSON records the load average around the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import baselines  # noqa: E402
from benchmarks.common import machine_info, results_dir  # noqa: E402
from benchmarks.quality import accuracy, attention_mask, output_quality  # noqa: E402
from benchmarks.timing import THREADS, set_torch_threads, set_tvm_threads  # noqa: E402

MODELS = ("efficientnet_lite0", "minilm_l6", "small_cnn")
FAST_MODELS = ("tiny_cnn", "tiny_transformer")
HOMOGENEOUS = {"TVM FP32": "fp32", "TVM W8A8": "w8a8", "TVM W4A8": "w4a8"}
LABELED_MODELS = {"small_cnn"}  # labeled sets large enough for an accuracy figure (Fashion-MNIST test)
RANGE_METHOD = "minmax"


def search_plans(model: str, results: Path) -> dict[str, Path]:
    """{label: plan.yaml} of the searches under `results`/search_*/ whose plan names `model`."""
    import yaml

    plans = {}
    for path in sorted(results.glob("search_*/plan.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if data.get("model") != model:
            continue
        report = path.parent / "report.json"
        unit = json.loads(report.read_text()).get("cost_unit") if report.is_file() else None
        kind = {"ms": "latency-aware"}.get(unit, "BOPs-chosen" if unit else "mixed")
        plans[f"TVM mixed {kind} ({path.parent.name})"] = path
    return plans


def _torch_batch(samples, batch: int) -> tuple:
    import torch

    return tuple(torch.from_numpy(a) for a in baselines.batch_of(samples, batch))


def tvm_rows(spec, profile, calib, held_out, plans: dict, *, batches=(1, 8), repeat: int = 20,
             labeled_inputs=None, labeled_batch: int = 8, keep_b1: Optional[dict] = None,
             log: Callable[[str], None] = lambda m: None) -> dict:
    """Compile each plan at each batch size; {label: {"latency", "outputs", "labeled_outputs", ...}}.
    `keep_b1` (a dict) receives each plan's batch-1 build, for the interleaved timing."""
    from tvm_mpq.build import build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.simulate import Simulator

    unified = profile.constraints.unified_input_ops
    imported = {1: import_model(spec.module, spec.example_inputs, name=spec.name, unified_input_ops=unified)}
    for batch in batches:
        if batch not in imported:
            imported[batch] = import_model(spec.module, _torch_batch(held_out, batch), name=spec.name,
                                           unified_input_ops=unified)
    stats = Simulator(imported[1]).calibrate(calib)
    target = profile.tvm_target()
    rows = {}
    for label, plan in plans.items():
        resolved = make_plan(str(plan) if isinstance(plan, Path) else plan, imported[1], profile, stats,
                             RANGE_METHOD, spec.name)
        counts: dict[str, int] = {}
        for c in resolved.layers.values():
            counts[c] = counts.get(c, 0) + 1
        row = {"plan": str(plan), "candidates": counts, "latency": {}, "compile_s": {}}
        for batch in batches:
            compiled = build(imported[batch], resolved, target)
            row["compile_s"][batch] = compiled.compile_seconds
            row["latency"][batch] = compiled.benchmark(list(baselines.batch_of(held_out, batch)), number=1,
                                                       repeat=repeat)
            log(f"{label:<18} batch {batch}: {row['latency'][batch].median_ms:9.3f} ms "
                f"(IQR {row['latency'][batch].iqr_ms:.3f}, compile {compiled.compile_seconds:.1f} s)")
            if batch == 1:
                row["outputs"] = np.concatenate([compiled.run(list(baselines.batch_of([s], 1))) for s in held_out])
                if keep_b1 is not None:
                    keep_b1[label] = compiled
            if batch == labeled_batch and labeled_inputs:
                row["labeled_outputs"] = _run_fixed_batch(compiled, labeled_inputs, batch)
        rows[label] = row
    return rows


def _run_fixed_batch(compiled, samples, batch: int) -> np.ndarray:
    """Outputs of a model compiled for `batch` on `samples` (the last batch filled by cycling, then cut)."""
    outs = []
    for start in range(0, len(samples), batch):
        chunk = list(samples[start:start + batch])
        outs.append(compiled.run(list(baselines.batch_of(chunk, batch)))[:len(chunk)])
    return np.concatenate(outs)


SETTLE_S = 0.1  # pause before each executor's turn: the previous runtime's worker threads stop spinning
WARM_CALLS = 3  # untimed calls at the start of each turn: its weights back in cache, its threads awake


def _settled(run: Callable[[], object], sampler: Callable[[], list]) -> Callable[[], list]:
    """`sampler` preceded by a pause and one untimed call. Every runtime here keeps its worker threads
    spinning for a while after a call (ONNX Runtime, TVM, PyTorch's OpenMP); on 2 cores, an executor
    timed right after another ran against those spinners (ONNX Runtime fp32 4x slower)."""

    def sample() -> list:
        time.sleep(SETTLE_S)
        for _ in range(WARM_CALLS):
            run()
        return sampler()

    return sample


def _interleaved_b1(executors: dict, builds: dict, held_out, rounds: int, log) -> dict:
    """Batch-1 latency of every executor and build of a model, timed side by side: `rounds` rounds of 3 calls
    each, the order rotated every round (`interleave`), so that the host's drift hits every row alike."""
    from benchmarks.timing import callable_sampler
    from tvm_mpq.build import LatencyStats
    from tvm_mpq.measure.interleaved import interleave, vm_sampler

    inputs = baselines.batch_of(held_out, 1)
    runs = {label: (lambda ex=ex: ex(inputs)) for label, ex in executors.items()}
    samplers = {label: callable_sampler(fn) for label, fn in runs.items()}
    for label, c in builds.items():
        samplers[label] = vm_sampler(c, list(inputs), calls=3)
        runs[label] = lambda c=c: c.run(list(inputs))
    stats = {label: LatencyStats.from_seconds(s, 1)
             for label, s in interleave({k: _settled(runs[k], v) for k, v in samplers.items()}, rounds).items()}
    log("interleaved batch 1 (" + str(rounds) + " rounds): " +
        ", ".join(f"{label} {s.median_ms:.3f} ms" for label, s in stats.items()))
    return stats


def benchmark_model(name: str, profile, *, fast: bool = False, batches=(1, 8), repeat: int = 20,
                    labeled: int = 1000, include_search_plans: bool = True, tvm_plans: Optional[dict] = None,
                    onnx_dir=None, rounds: int = 15, plans_dir: Optional[Path] = None,
                    log: Callable[[str], None] = print) -> dict:
    """The JSON-ready rows of one model: every executor's latency per batch and quality; with `rounds` > 0
    (and an `onnx_dir` that outlives the call) batch 1 is also timed with every row side by side. Search
    plans are read from `plans_dir`/search_*/ (default benchmarks/results)."""
    from tvm_mpq.models import load_model

    spec = load_model(name)
    n_calib, n_eval = baselines.FAST_SAMPLES if fast else baselines.SAMPLES.get(name, baselines.DEFAULT_SAMPLES)
    calib, held_out = baselines.split_samples(spec, n_calib, n_eval)
    labeled_inputs, labels = None, None
    if name in LABELED_MODELS and spec.labeled_eval is not None and labeled > 0:
        inputs, labels = spec.labeled_eval()
        labeled_inputs, labels = inputs[:labeled], list(labels[:labeled])
    plog = lambda m: log(f"[{name}] {m}")  # noqa: E731
    start = time.perf_counter()
    interleave_b1 = rounds > 0 and 1 in batches and onnx_dir is not None
    executors, builds = ({}, {}) if interleave_b1 else (None, None)
    try:
        base = baselines.run_baselines(spec, calib, held_out, batches=batches, repeat=repeat, workdir=onnx_dir,
                                       labeled_inputs=labeled_inputs, keep_open=executors, log=plog)
        plans = dict(HOMOGENEOUS if tvm_plans is None else tvm_plans)
        if include_search_plans:
            plans.update(search_plans(name, plans_dir or results_dir()))
        tvm = tvm_rows(spec, profile, calib, held_out, plans, batches=batches, repeat=repeat,
                       labeled_inputs=labeled_inputs, keep_b1=builds, log=plog)
        interleaved = _interleaved_b1(executors, builds, held_out, rounds, plog) if interleave_b1 else {}
    finally:
        for ex in (executors or {}).values():
            if isinstance(ex, baselines.OrtExecutor):
                ex.close()

    reference, mask = base[baselines.TORCH_FP32].outputs, attention_mask(held_out)
    rows = {}
    for label, r in base.items():
        rows[label] = {"executor": "pytorch" if label == baselines.TORCH_FP32 else "onnxruntime",
                       "latency_ms": {str(b): s.to_dict() for b, s in r.latency.items()},
                       "quality": output_quality(reference, r.outputs, mask), **({"files": r.files} if r.files else {})}
        if labels is not None and r.labeled_outputs is not None:
            rows[label]["accuracy"] = accuracy(r.labeled_outputs, labels)
    for label, r in tvm.items():
        rows[label] = {"executor": "tvm", "plan": r["plan"], "candidates": r["candidates"],
                       "latency_ms": {str(b): s.to_dict() for b, s in r["latency"].items()},
                       "compile_s": {str(b): s for b, s in r["compile_s"].items()},
                       "quality": output_quality(reference, r["outputs"], mask)}
        if labels is not None and "labeled_outputs" in r:
            rows[label]["accuracy"] = accuracy(r["labeled_outputs"], labels)
    for label, stats in interleaved.items():
        rows[label]["latency_interleaved_ms"] = {"1": stats.to_dict()}
    for label, row in rows.items():
        q = row["quality"]
        log(f"[{name}] {label:<40} " + "  ".join(f"b{b} {s['median_ms']:.3f} ms" for b, s in row["latency_ms"].items())
            + "  " + "  ".join(f"{k} {v:.4g}" for k, v in q.items())
            + (f"  accuracy {row['accuracy']:.4f}" if "accuracy" in row else ""))
    return {"description": spec.description, "calibration_samples": len(calib), "held_out_samples": len(held_out),
            "labeled_samples": len(labels) if labels is not None else 0, "reference": baselines.TORCH_FP32,
            "seconds": time.perf_counter() - start, "rows": rows}


def run(models, hw: str = "x86_avx2", *, fast: bool = False, batches=(1, 8), repeat: int = 20, labeled: int = 1000,
        include_search_plans: bool = True, tvm_plans: Optional[dict] = None, rounds: Optional[int] = None,
        plans_dir: Optional[Path] = None, log: Callable[[str], None] = print,
        on_model: Optional[Callable[[dict], None]] = None) -> dict:
    set_tvm_threads(THREADS)
    set_torch_threads(THREADS)
    from tvm_mpq.hardware import load_profile

    profile = load_profile(hw)
    load_before = os.getloadavg()
    rounds = (3 if fast else 15) if rounds is None else rounds
    result = {"machine": machine_info(), "profile": profile.name, "target": profile.target, "threads": THREADS,
              "batches": list(batches), "repeat": repeat, "interleaved_rounds": rounds, "range_method": RANGE_METHOD,
              "models": {}}
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_onnx_") as tmp:
        for name in models:
            result["models"][name] = benchmark_model(name, profile, fast=fast, batches=batches, repeat=repeat,
                                                     labeled=labeled, include_search_plans=include_search_plans,
                                                     tvm_plans=tvm_plans, onnx_dir=Path(tmp) / name,
                                                     rounds=rounds, plans_dir=plans_dir, log=log)
            if on_model is not None:  # what is measured so far, kept if a later model fails
                on_model(_json_safe({**result, "load_average": {"before": list(load_before),
                                                                "after": list(os.getloadavg())}}))
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    return _json_safe(result)


def _json_safe(obj):
    """inf / nan (an SQNR of identical outputs) become null: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def plot(result: dict, path, batch: str = "1") -> Path:
    """Latency (log) vs output SQNR per model, one panel each; float executors drawn at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    markers = {"pytorch": "^", "onnxruntime": "s", "tvm": "o"}
    for ax, name in zip(axes[0], models):
        rows = result["models"][name]["rows"]
        finite = [r["quality"]["sqnr_db"] for r in rows.values() if r["quality"]["sqnr_db"] is not None]
        top = max([v for v in finite if v < 90] + [40.0]) + 10  # float-vs-float agreement (>90 dB) drawn here
        for label, r in rows.items():
            if batch not in r["latency_ms"]:
                continue
            x = r["latency_ms"][batch]["median_ms"]
            sqnr = r["quality"]["sqnr_db"]
            y = top if sqnr is None or sqnr >= 90 else sqnr
            marker = "*" if "mixed" in label else markers.get(r["executor"], "o")
            ax.scatter([x], [y], marker=marker, s=90 if marker == "*" else 50)
            ax.annotate(label.replace("TVM mixed ", "mixed ").split(" (")[0], (x, y), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.axhline(top, color="0.85", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"latency, batch {batch} (ms, median, {result['threads']} threads)")
        ax.set_ylabel("output SQNR vs PyTorch fp32 (dB); top line: float")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    m = result["machine"]
    fig.suptitle(f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['date']}, commit {m['commit']}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--fast", action="store_true", help="tiny models, few samples and runs (smoke test)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per executor and batch (after warm-up)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of the side-by-side batch-1 timing (default 15, --fast 3; 0: none)")
    parser.add_argument("--labeled", type=int, default=1000, help="Fashion-MNIST test images for accuracy")
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (--fast: benchmarks/results/fast)")
    parser.add_argument("--plans-dir", default=None,
                        help="where the search_*/plan.yaml to compare are (default benchmarks/results), e.g. the "
                             "searches of another machine's results folder")
    args = parser.parse_args(argv)
    models = FAST_MODELS if args.fast else tuple(args.models.split(","))
    out_dir = Path(args.out_dir) if args.out_dir else results_dir(args.fast)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(partial: dict) -> None:
        (out_dir / "end_to_end.json").write_text(json.dumps(partial, indent=2))

    result = run(models, args.hw, fast=args.fast, batches=tuple(int(b) for b in args.batches.split(",")),
                 repeat=5 if args.fast else args.repeat, labeled=args.labeled, rounds=args.rounds,
                 plans_dir=Path(args.plans_dir) if args.plans_dir else None, on_model=save)
    save(result)
    plot(result, out_dir / "end_to_end.png")
    print(f"wrote {out_dir / 'end_to_end.json'}, {out_dir / 'end_to_end.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
