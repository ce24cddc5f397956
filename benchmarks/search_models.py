"""Search → compile on real models, measured side by side in one run on this machine.

For each model: the latency-aware search at a quality target, then the chosen plan, the BOPs-chosen plan
(same sensitivity table, same target, the reference implementation's cost) and the homogeneous FP32 /
W8A8 / W4A8 plans are compiled with TVM and measured: whole-model latency (median of repeats, same
process, same machine) and quality of the compiled outputs on held-out samples.

    python benchmarks/search_models.py [--models efficientnet_lite0,minilm_l6,small_cnn] [--fast]

Needs the device's measurements in the store (`tvm-mpq profile --model M --hw x86_avx2`); without them
the search falls back to the latency model or the roofline and the report says so.
Writes benchmarks/results/search_models[_fast].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info  # noqa: E402

TARGETS = {"efficientnet_lite0": 30.0, "minilm_l6": 30.0, "small_cnn": 30.0, "tiny_cnn": 30.0,
           "tiny_transformer": 30.0}


def quality(name, spec, y_float, y_test, held_out) -> dict:
    from tvm_mpq.numerics import sqnr_db

    out = {"sqnr_db": sqnr_db(y_float, y_test)}
    if y_float.ndim == 2 and y_float.shape[1] > 1:
        out["top1_agreement"] = float(np.mean(y_float.argmax(1) == y_test.argmax(1)))
    if name == "minilm_l6":  # mean-pooled sentence embeddings, as sentence-transformers pools them
        masks = np.concatenate([s[1].numpy() for s in held_out]).astype(np.float32)[..., None]
        pool = lambda y: (y * masks).sum(1) / masks.sum(1)
        a, b = pool(y_float), pool(y_test)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out["pooled_cosine_mean"] = float(cos.mean())
        out["pooled_cosine_min"] = float(cos.min())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,minilm_l6,small_cnn")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--store", default=None)
    parser.add_argument("--fast", action="store_true", help="tiny models, few samples (smoke test)")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)

    from tvm_mpq.build import build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.models import load_model
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.plan import Plan
    from tvm_mpq.search.api import SearchConfig, search
    from tvm_mpq.simulate import Simulator

    models = ["tiny_cnn", "tiny_transformer"] if args.fast else args.models.split(",")
    sizes = dict(calib_samples=16, sensitivity_samples=8, eval_samples=8) if args.fast else \
        dict(calib_samples=256, sensitivity_samples=64, eval_samples=64)
    profile = load_profile(args.hw)
    result = {"machine": machine_info(), "profile": profile.name, "models": {}}
    for name in models:
        spec = load_model(name)
        if name == "minilm_l6" and not args.fast:  # sequence 128 is slow in the simulator: fewer samples
            sizes_m = dict(calib_samples=64, sensitivity_samples=16, eval_samples=16)
        else:
            sizes_m = sizes
        cfg = SearchConfig(min_sqnr_db=TARGETS.get(name, 30.0), **sizes_m)
        t = time.perf_counter()
        found = search(spec, profile, cfg, store_path=args.store,
                       log=lambda m: print(f"[{name}] {m}", flush=True))
        search_s = time.perf_counter() - t
        print(f"[{name}] search {search_s:.0f} s: {found.timings}", flush=True)

        imported = import_model(spec.module, spec.example_inputs, name=name)
        data = spec.calibration(cfg.calib_samples + cfg.eval_samples)
        calib, held_out = data[:cfg.calib_samples], data[cfg.calib_samples:]
        sim = Simulator(imported)
        stats = sim.calibrate(calib)
        y_float = sim.run(held_out)
        example = [a.numpy() for a in spec.example_inputs]
        plans = {"FP32": "fp32", "W8A8": "w8a8", "W4A8": "w4a8",
                 "BOPs-chosen": Plan(_layers(found.reference_points["BOPs-chosen"]["config"], found.group_layers)),
                 "latency-chosen": Plan(dict(found.plan.layers))}
        rows = {}
        for label, plan in plans.items():
            resolved = make_plan(plan, imported, profile, stats, cfg.range_method, name)
            compiled = build(imported, resolved, profile.tvm_target())
            lat = compiled.benchmark(example, number=1, repeat=args.repeat)
            y = np.concatenate([compiled.run([a.numpy() for a in s]) for s in held_out])
            counts = {}
            for c in resolved.layers.values():
                counts[c] = counts.get(c, 0) + 1
            rows[label] = {"latency_ms": lat.to_dict(), "predicted_ms": found.latency_table.model_ms(resolved.layers),
                           "candidates": counts, **quality(name, spec, y_float, y, held_out)}
            if label == "FP32":
                rows[label]["sqnr_db"] = None  # float vs float (TVM vs PyTorch summation order only)
            print(f"[{name}] {label:<15} {lat.median_ms:9.2f} ms  "
                  f"SQNR {rows[label]['sqnr_db'] if rows[label]['sqnr_db'] is None else round(rows[label]['sqnr_db'], 1)}"
                  f"  {counts}", flush=True)
        if spec.labeled_eval is not None and name in ("small_cnn", "tiny_cnn"):
            inputs, labels = spec.labeled_eval()
            inputs, labels = inputs[:1000], np.asarray(labels[:1000])
            for label, plan in plans.items():
                resolved = make_plan(plan, imported, profile, stats, cfg.range_method, name)
                sim.configure_plan(resolved)  # bit-exact with the compiled model on integer paths
                acc = float(np.mean(sim.run(inputs).argmax(1) == labels))
                rows[label]["test_accuracy_simulated"] = acc
            sim.reset()
        result["models"][name] = {"target_min_sqnr_db": cfg.min_sqnr_db, "search_seconds": search_s,
                                  "search_timings_s": found.timings, "notes": found.notes,
                                  "selection_met": found.selection.met, "plans": rows}
    out = ROOT / "benchmarks" / "results" / f"search_models{'_fast' if args.fast else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return 0


def _layers(group_config, group_layers) -> dict:
    return {n: group_config[g] for g, names in group_layers.items() for n in names}


if __name__ == "__main__":
    sys.exit(main())
