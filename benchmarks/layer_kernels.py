"""TVM's layer kernels against ONNX Runtime's, workload by workload, on this machine.

For every distinct conv2d / linear / matmul workload of the models: the TVM layer task at FP32, W8A8 and
W4A8 (those the profile allows for the op) built by the project's measurement path
(`tvm_mpq.measure.profiler.compile_task`: the compile path's own lowering and kernels, so faster kernels in
`tvm_mpq/kernels/` show up here as soon as they land) and timed by `tvm_mpq.measure.LocalRunner`; beside
it the same workload as a single-op ONNX Runtime graph at fp32 and int8 (`benchmarks/ort_kernels.py`).
Ratios are TVM / ORT (above 1: TVM slower): FP32 / ORT fp32, W8A8 / ORT int8, W4A8 / ORT int8. Per
model, the sums over its layers (a workload counted once per layer) give the share of the whole model.

    python benchmarks/layer_kernels.py [--models efficientnet_lite0,minilm_l6,small_cnn] [--fast] [--out FILE]

Writes benchmarks/results/kernels.json (with --fast: benchmarks/results/fast/kernels.json, not kept in git).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir  # noqa: E402
from benchmarks.ort_kernels import ort_fused_ops, ort_workload_latency  # noqa: E402
from benchmarks.timing import THREADS, set_tvm_threads  # noqa: E402

MODELS = ("efficientnet_lite0", "minilm_l6", "small_cnn")
FAST_MODELS = ("tiny_cnn", "tiny_transformer")
TVM_CANDIDATES = ("FP32", "W8A8", "W4A8")
PEER = {"FP32": "fp32", "W8A8": "int8", "W4A8": "int8"}  # the ORT precision each TVM candidate is compared with


def model_workloads(models, log: Callable[[str], None] = lambda m: None) -> dict[str, dict]:
    """{workload key: {"workload": Workload, "op_type", "layers": {model: [layer names]}}} in first-seen order."""
    from tvm_mpq.frontend import import_model
    from tvm_mpq.models import load_model

    found: dict[str, dict] = {}
    for name in models:
        spec = load_model(name)
        graph = import_model(spec.module, spec.example_inputs, name=name).graph
        log(f"{name}: {len(graph.layers)} layers")
        for layer in graph.layers.values():
            entry = found.setdefault(layer.workload.key(), {"workload": layer.workload, "op_type": layer.op_type,
                                                            "layers": {}})
            entry["layers"].setdefault(name, []).append(layer.name)
    return found


def tvm_layer_latency(workload, op_type: str, candidate: str, target, workdir: Path, timing):
    """TVM's `Timing` of one layer task (the profiler's compile path, timed in this process)."""
    from tvm_mpq.measure import LocalRunner
    from tvm_mpq.measure.profiler import compile_task
    from tvm_mpq.measure.tasks import LAYER, Task

    task = Task(LAYER, workload.key(), candidate, op_type, workload.macs)
    library, inputs = compile_task(task, target, workdir)
    return LocalRunner(timing).run(library, inputs)


def _stats(timing) -> dict:
    """A TVM `Timing` as the same statistics as `LatencyStats` (median, IQR, min, max of per-repeat means)."""
    from tvm_mpq.build import LatencyStats

    return LatencyStats.from_seconds([ms / 1e3 for ms in timing.per_repeat_ms], 0).to_dict()


def run(models, hw: str = "x86_avx2", repeat: int = 20, ort_repeat: int = 20, min_repeat_ms: float | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Measure every workload of `models`; returns the JSON-ready result."""
    set_tvm_threads(THREADS)
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.measure import TimingConfig

    profile = load_profile(hw)
    min_ms = profile.measure.min_repeat_ms if min_repeat_ms is None else min_repeat_ms
    timing = TimingConfig(number=1, repeat=repeat, min_repeat_ms=int(min_ms), warmup=1)
    target = profile.tvm_target()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_kernels_") as tmp:
        for key, entry in model_workloads(models, log).items():
            wl, op_type = entry["workload"], entry["op_type"]
            row = {"key": key, "op": wl.op, "op_type": op_type, "input_shape": list(wl.input_shape),
                   "weight_shape": list(wl.weight_shape), "output_shape": list(wl.output_shape),
                   "groups": wl.groups, "macs": wl.macs, "layers": entry["layers"], "tvm": {}, "ort": {},
                   "ort_ops": {}, "ratios": {}, "errors": {}}
            allowed = {c.name for c in profile.candidates_for(op_type)}
            for cand in (c for c in TVM_CANDIDATES if c in allowed):
                start = time.perf_counter()
                try:
                    row["tvm"][cand] = _stats(tvm_layer_latency(wl, op_type, cand, target, Path(tmp), timing))
                except Exception as err:  # one failing task must not end the sweep; the JSON says why
                    row["errors"][f"tvm {cand}"] = f"{type(err).__name__}: {err}"[:500]
                row.setdefault("tvm_seconds", {})[cand] = time.perf_counter() - start
            for precision in sorted(set(PEER.values())):
                try:
                    row["ort"][precision] = ort_workload_latency(wl, precision, repeat=ort_repeat).to_dict()
                    row["ort_ops"][precision] = ort_fused_ops(wl, precision)
                except Exception as err:
                    row["errors"][f"ort {precision}"] = f"{type(err).__name__}: {err}"[:500]
            for cand, peer in PEER.items():
                if cand in row["tvm"] and peer in row["ort"]:
                    row["ratios"][f"{cand}/ort_{peer}"] = row["tvm"][cand]["median_ms"] / row["ort"][peer]["median_ms"]
            log(f"{wl.op} {tuple(wl.input_shape)}x{tuple(wl.weight_shape)} g{wl.groups}: "
                + "  ".join(f"TVM {c} {s['median_ms']:.3f}" for c, s in row["tvm"].items()) + "  "
                + "  ".join(f"ORT {p} {s['median_ms']:.3f}" for p, s in row["ort"].items()) + " ms"
                + (f"  errors: {list(row['errors'])}" if row["errors"] else ""))
            rows.append(row)
    return {"machine": machine_info(), "profile": profile.name, "target": profile.target, "threads": THREADS,
            "tvm_timing": {"number": timing.number, "repeat": timing.repeat, "min_repeat_ms": timing.min_repeat_ms},
            "ort_timing": {"repeat": ort_repeat}, "workloads": rows, "models": summarize(rows, models)}


def summarize(rows: list[dict], models) -> dict:
    """Per model and executor: the sum of layer latencies (median, each layer counted) and the geometric
    mean of the workload ratios."""
    out = {}
    for name in models:
        totals: dict[str, float] = {}
        counted: dict[str, int] = {}
        logs: dict[str, list[float]] = {}
        for row in rows:
            n = len(row["layers"].get(name, []))
            if not n:
                continue
            for label, stats in [(f"tvm {c}", s) for c, s in row["tvm"].items()] + \
                                [(f"ort {p}", s) for p, s in row["ort"].items()]:
                totals[label] = totals.get(label, 0.0) + n * stats["median_ms"]
                counted[label] = counted.get(label, 0) + n
            for label, ratio in row["ratios"].items():
                logs.setdefault(label, []).append(math.log(ratio))
        layers = max(counted.values(), default=0)
        out[name] = {"layers": layers,
                     "sum_of_layers_ms": {k: v for k, v in totals.items() if counted[k] == layers},
                     "geomean_ratio": {k: math.exp(sum(v) / len(v)) for k, v in logs.items()}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--fast", action="store_true", help="tiny models, few repeats (smoke test)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/[fast/]kernels.json)")
    args = parser.parse_args(argv)
    models = FAST_MODELS if args.fast else tuple(args.models.split(","))
    repeat = 3 if args.fast else args.repeat
    result = run(models, args.hw, repeat=repeat, ort_repeat=repeat, min_repeat_ms=5 if args.fast else None)
    out = Path(args.out) if args.out else results_dir(args.fast) / "kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, s in result["models"].items():
        print(f"[{name}] sum of layers (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in s["sum_of_layers_ms"].items()))
        print(f"[{name}] geomean TVM/ORT: " + ", ".join(f"{k} {v:.2f}" for k, v in s["geomean_ratio"].items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
