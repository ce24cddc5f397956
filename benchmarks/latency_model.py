"""Latency side of tvm_mpq, measured on this machine in one run:

1. profiling time per model (every distinct layer workload × candidate + convert ops), resumable store;
2. the XGBoost latency model on held-out workloads (grouped k-fold) and on each held-out model
   (trained on the other models only): MAPE and Spearman rank correlation;
3. whole-model check: predicted latency (Σ layers + converts) against the measured latency of the whole
   compiled model, for FP32, W8A8 and a mixed plan.

    python benchmarks/latency_model.py                 # full run (tens of minutes on 2 cores)
    python benchmarks/latency_model.py --fast          # small models only (CI smoke test)

Writes benchmarks/results/latency_model[_fast].json (date, machine, CPU flags, commit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, write_result  # noqa: E402


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def mape(y, p) -> float:
    y, p = np.asarray(y), np.asarray(p)
    return float(np.mean(np.abs(p - y) / y) * 100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny models only (smoke test)")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--store", default=None, help="measurement store (default: the user's tvm_mpq store)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per whole model")
    parser.add_argument("--sweep", type=int, default=64,
                        help="model-independent workloads profiled too and used for training (0: none)")
    args = parser.parse_args(argv)

    from tvm_mpq.build import build
    from tvm_mpq.cost_model.xgb import LatencyModel
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.latency import build_table
    from tvm_mpq.measure.profiler import default_store_path, local_device_name, profile_model
    from tvm_mpq.measure.tasks import LAYER, model_tasks, workload_from_key
    from tvm_mpq.models import load_model
    from tvm_mpq.plan import Plan, homogeneous_plan, resolve
    from tvm_mpq.store import MeasurementStore

    profile = load_profile(args.hw)
    if args.fast:
        args.sweep = min(args.sweep, 8)
    models = ["tiny_cnn", "tiny_transformer"] if args.fast else [
        "efficientnet_lite0", "minilm_l6", "tiny_cnn", "tiny_transformer"]
    suffix = "_fast" if args.fast else ""
    store_path = Path(args.store) if args.store else default_store_path()
    device = local_device_name()
    result = {"machine": machine_info(), "profile": profile.name, "device": device, "models": {}}

    # 1. profiling: the device sweep once, then each model
    if args.sweep:
        t = time.perf_counter()
        report = profile_model(None, profile, store_path=store_path, device=device, sweep=args.sweep,
                               log=lambda m: print(f"[profile] {m}", flush=True))
        result["sweep"] = {"workloads": args.sweep, "tasks": report["total"], "measured_now": report["measured"],
                           "seconds_this_run": time.perf_counter() - t}
    graphs = {}
    for name in models:
        spec = load_model(name)
        graphs[name] = (spec, import_model(spec.module, spec.example_inputs, name=name).graph)
        t = time.perf_counter()
        report = profile_model(spec, profile, store_path=store_path, device=device,
                               log=lambda m: print(f"[profile] {m}", flush=True))
        result["models"][name] = {
            "layers": len(graphs[name][1].layers),
            "tasks": report["total"],
            "measured_now": report["measured"],
            "already_stored": report["already_stored"],
            "failed": report["failed"],
            "profile_seconds_this_run": time.perf_counter() - t,
        }
        print(f"[profile] {name}: {report['total']} tasks, {report['measured']} measured now "
              f"in {time.perf_counter() - t:.0f} s", flush=True)

    with MeasurementStore(store_path) as store:
        measurements = store.query(profile=profile.name, device=device)
        # The measurements travel with the results (tvm-mpq can import them into another store).
        exported = ROOT / "benchmarks" / "results" / f"{args.hw}_measurements{suffix}.jsonl"
        exported.parent.mkdir(parents=True, exist_ok=True)
        result["measurements_file"] = str(exported.relative_to(ROOT))
        result["measurements"] = store.export_json(exported, profile=profile.name)
    for name, (_, graph) in graphs.items():
        keys = {(t.workload, t.candidate) for t in model_tasks(graph, profile)}
        rows = [m for m in measurements if (m.workload, m.candidate) in keys]
        # What profiling this model from scratch costs (compile + timing of each task), resumes included.
        result["models"][name]["measurement_seconds"] = float(sum(m.meta.get("seconds", 0.0) for m in rows))
    layer_rows = [m for m in measurements if m.kind == LAYER]
    samples = [(workload_from_key(m.workload), m.candidate, m.median_ms) for m in layer_rows]

    # 2a. held-out workloads: grouped k-fold over workload keys
    workloads = sorted({m.workload for m in layer_rows})
    rng = np.random.default_rng(0)
    rng.shuffle(workloads)
    folds = 5 if len(workloads) >= 10 else 2
    def held_out(held: set):
        """Fit on every row whose workload is not in `held`; (true ms, predicted ms, train size) on the rest."""
        train = [s for s, m in zip(samples, layer_rows) if m.workload not in held]
        test = [s for s, m in zip(samples, layer_rows) if m.workload in held]
        if len(train) < 8 or not test:
            return None
        pred, _ = LatencyModel(profile=profile.name).fit(train).predict([(w, c) for w, c, _ in test])
        return [ms for _, _, ms in test], list(pred), len(train)

    y_all, p_all = [], []
    for k in range(folds):
        fold = held_out(set(workloads[k::folds]))
        if fold is not None:
            y_all += fold[0]
            p_all += fold[1]
    result["held_out_workloads"] = {"folds": folds, "n": len(y_all), "mape_pct": mape(y_all, p_all),
                                    "spearman": spearman(y_all, p_all)}
    print(f"[cost model] held-out workloads: MAPE {result['held_out_workloads']['mape_pct']:.1f} %, "
          f"Spearman {result['held_out_workloads']['spearman']:.3f} (n={len(y_all)})", flush=True)

    # 2b. held-out models
    result["held_out_models"] = {}
    for name, (_, graph) in graphs.items():
        fold = held_out({t.workload for t in model_tasks(graph, profile)})
        if fold is None:
            continue
        y, pred, train_n = fold
        result["held_out_models"][name] = {"n": len(y), "train_n": train_n, "mape_pct": mape(y, pred),
                                           "spearman": spearman(y, pred)}
        print(f"[cost model] held-out model {name}: MAPE {mape(y, pred):.1f} %, "
              f"Spearman {spearman(y, pred):.3f} (trained on {train_n} rows of other models)", flush=True)

    # 3. whole-model check: Σ layers + converts (all measured) vs the compiled model, same run
    result["whole_model"] = {}
    full_model = LatencyModel(profile=profile.name).fit(samples) if len(samples) >= 8 else None
    for name, (spec, graph) in graphs.items():
        imported = import_model(spec.module, spec.example_inputs, name=name)
        table = build_table(graph, profile, measurements, full_model, device)
        rng = np.random.default_rng(1)
        plans = {"FP32": homogeneous_plan(graph, profile, "fp32", {}),
                 "W8A8": homogeneous_plan(graph, profile, "w8a8", {})}
        mixed = {}
        for group in graph.groups:
            options = sorted(set.intersection(*({c.name for c in profile.candidates_for(graph.layers[n].op_type)}
                                                for n in group.layers)))
            pick = str(rng.choice(options))
            mixed.update({n: pick for n in group.layers})
        plans["mixed"] = Plan(mixed)
        rows = {}
        example = [a.numpy() for a in spec.example_inputs]
        for label, plan in plans.items():
            ranges = {n: tuple((-1.0, 1.0) for _ in range(l.num_act_inputs)) for n, l in graph.layers.items()}
            resolved = resolve(Plan(dict(plan.layers), ranges), graph, profile)
            predicted = table.model_ms(resolved.layers)
            compiled = build(imported, resolved, profile.tvm_target())
            measured = compiled.benchmark(example, number=1, repeat=args.repeat).median_ms
            rows[label] = {"predicted_ms": predicted, "measured_ms": measured,
                           "error_pct": (predicted - measured) / measured * 100,
                           "candidates": {c: list(resolved.layers.values()).count(c)
                                          for c in set(resolved.layers.values())}}
            print(f"[whole model] {name} {label}: predicted {predicted:.2f} ms, measured {measured:.2f} ms "
                  f"({rows[label]['error_pct']:+.1f} %)", flush=True)
        result["whole_model"][name] = rows

    out = ROOT / "benchmarks" / "results" / f"latency_model{suffix}.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
