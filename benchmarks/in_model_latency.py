"""How well each latency table predicts compiled models, measured in one run on this machine.

For each model: profile the isolated layer tasks and the in-model segments into a fresh store, then
compile homogeneous plans (FP32, W8A8, W4A8, W8A16), the searched plans under benchmarks/results/
(latency-aware and BOPs-chosen, where present) and seeded random mixed plans, time each compiled model
and compare with the whole-model latency each table predicts (Σ layers + converts for the isolated
table; Σ segments plus boundary corrections for the in-model one, and Σ segments alone to show what the
corrections change). Reports error per plan, MAPE and Spearman rank correlation.

    python benchmarks/in_model_latency.py [--models efficientnet_lite0,minilm_l6] [--random 4]
    python benchmarks/in_model_latency.py --fast      # tiny_cnn (smoke test)

Writes benchmarks/results/in_model_latency.json (fast: benchmarks/results/fast/).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir, write_result  # noqa: E402


def _random_plans(graph, profile, count: int, seed: int) -> dict[str, dict[str, str]]:
    """Seeded mixed plans: each quantizer group at a random candidate all its members support."""
    from tvm_mpq.search.api import group_candidates

    rng = random.Random(seed)
    cands = group_candidates(graph, profile, "FP32")
    plans = {}
    for i in range(count):
        layers = {n: "FP32" for n in graph.layers}
        for group in graph.groups:
            pick = rng.choice(cands[group.name])
            for n in group.layers:
                layers[n] = pick
        plans[f"random{i}"] = layers
    return plans


def _metrics(measured, predicted) -> dict:
    from scipy.stats import spearmanr

    y, p = np.asarray(measured), np.asarray(predicted)
    return {"mape_pct": float(np.mean(np.abs(p - y) / y) * 100),
            "median_ratio": float(np.median(p / y)),
            "spearman": float(spearmanr(y, p).statistic) if len(y) > 2 else float("nan")}


def run_model(name: str, hw: str, store_path: Path, n_random: int, repeat: int, log=print) -> dict:
    from tvm_mpq.build import build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.latency import load_latency_table
    from tvm_mpq.measure.in_model import synthetic_ranges
    from tvm_mpq.measure.profiler import profile_model
    from tvm_mpq.models import load_model
    from tvm_mpq.plan import Plan, homogeneous_plan, resolve

    profile = load_profile(hw)
    spec = load_model(name)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    graph = imported.graph
    t = time.perf_counter()
    summary = profile_model(name, hw, store_path=store_path, in_model=False, log=log)
    isolated_s = time.perf_counter() - t
    isolated = load_latency_table(graph, profile, store_path=store_path)
    t = time.perf_counter()
    summary_in = profile_model(name, hw, store_path=store_path, in_model=True, log=log)
    in_model_s = time.perf_counter() - t
    in_model = load_latency_table(graph, profile, store_path=store_path)
    if not any(e.source == "in-model" for row in in_model.layers.values() for e in row.values()):
        raise RuntimeError(f"{name}: the in-model table was not built: {in_model.notes}")
    segments_only = dataclasses.replace(in_model, boundaries={})

    plans: dict[str, dict[str, str]] = {}
    for cand in ("FP32", "W8A8", "W4A8", "W8A16"):
        plans[cand] = homogeneous_plan(graph, profile, cand, {}).layers
    for prefix in ("search", "search_bops"):
        path = ROOT / "benchmarks" / "results" / f"{prefix}_{name}" / "plan.yaml"
        if path.is_file():
            loaded = Plan.load(path)
            plans[prefix] = {n: loaded.layers.get(n, loaded.default or "FP32") for n in graph.layers}
    plans.update(_random_plans(graph, profile, n_random, seed=0))

    inputs = [np.ascontiguousarray(a.numpy()) for a in spec.example_inputs]
    rows = []
    for label, layers in plans.items():
        plan = resolve(Plan(layers, synthetic_ranges(graph), name, profile.name), graph, profile)
        compiled = build(imported, plan, profile.tvm_target())
        stats = compiled.benchmark(inputs, number=1, repeat=repeat)
        row = {"plan": label, "measured_ms": stats.median_ms, "iqr_ms": stats.iqr_ms,
               "isolated_ms": isolated.model_ms(plan.layers), "in_model_ms": in_model.model_ms(plan.layers),
               "segments_only_ms": segments_only.model_ms(plan.layers),
               "counts": {c: list(plan.layers.values()).count(c) for c in sorted(set(plan.layers.values()))}}
        rows.append(row)
        log(f"{name} {label}: measured {row['measured_ms']:.2f} ms, isolated table {row['isolated_ms']:.2f}, "
            f"in-model table {row['in_model_ms']:.2f} (segments alone {row['segments_only_ms']:.2f})")
    homogeneous = {"FP32", "W8A8", "W4A8", "W8A16"}
    mixed = [r for r in rows if r["plan"] not in homogeneous]
    return {
        "model": name, "layers": len(graph.layers), "groups": len(graph.groups),
        "profiling_s": {"isolated_tasks": isolated_s, "in_model_builds": in_model_s},
        "isolated_tasks": summary["total"], "in_model_builds": summary_in["in_model"],
        "plans": rows,
        "isolated_table": {"all": _metrics([r["measured_ms"] for r in rows], [r["isolated_ms"] for r in rows]),
                           "mixed": _metrics([r["measured_ms"] for r in mixed], [r["isolated_ms"] for r in mixed])},
        "in_model_table": {"all": _metrics([r["measured_ms"] for r in rows], [r["in_model_ms"] for r in rows]),
                           "mixed": _metrics([r["measured_ms"] for r in mixed], [r["in_model_ms"] for r in mixed])},
        "segments_only": {"all": _metrics([r["measured_ms"] for r in rows], [r["segments_only_ms"] for r in rows]),
                          "mixed": _metrics([r["measured_ms"] for r in mixed], [r["segments_only_ms"] for r in mixed])},
        "notes": in_model.notes,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny_cnn only, few runs (smoke test)")
    parser.add_argument("--models", default="efficientnet_lite0,minilm_l6")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--random", type=int, default=4, help="seeded random mixed plans per model")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per compiled plan")
    parser.add_argument("--store", help="measurement store to fill (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    models = ["tiny_cnn"] if args.fast else [m for m in args.models.split(",") if m]
    if not models:
        parser.error("--models is empty")
    result = {"machine": machine_info(), "loadavg_start": os.getloadavg(), "hw": args.hw, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store) if args.store else Path(tmp) / "store.sqlite"
        for name in models:
            result["models"][name] = run_model(name, args.hw, store, 2 if args.fast else args.random,
                                               3 if args.fast else args.repeat)
    result["loadavg_end"] = os.getloadavg()
    for name, r in result["models"].items():
        print(f"{name}: isolated table MAPE {r['isolated_table']['all']['mape_pct']:.1f} % "
              f"(median ratio {r['isolated_table']['all']['median_ratio']:.2f}), in-model table MAPE "
              f"{r['in_model_table']['all']['mape_pct']:.1f} % (median ratio "
              f"{r['in_model_table']['all']['median_ratio']:.2f}); mixed plans: isolated "
              f"{r['isolated_table']['mixed']['mape_pct']:.1f} %, in-model {r['in_model_table']['mixed']['mape_pct']:.1f} % "
              f"(segments alone {r['segments_only']['mixed']['mape_pct']:.1f} %)")
    write_result(results_dir(args.fast) / "in_model_latency.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
