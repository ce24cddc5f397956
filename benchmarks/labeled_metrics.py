"""Labeled quality of plans: each model's built-in labeled evaluator (`tvm_mpq.metrics.labeled_metric`)
on the float model, on the simulated plans and on the TVM-compiled plans, in one run.

- minilm_l6: accuracy of a logistic-regression probe (trained on FP32 mean-pooled embeddings of 1024
  reviews) on 256 held-out fresh/rotten reviews;
- efficientnet_lite0: top-1 on the 20 labeled ImageNet photos (a sanity check, not an accuracy figure);
- small_cnn: Fashion-MNIST test accuracy.

    python benchmarks/labeled_metrics.py [--models minilm_l6] [--plans fp32,w8a8,w8a16] [--no-compile]
                                         [--plan-file LABEL=plan.yaml ...]

Writes benchmarks/results/labeled_metrics.json.
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

from benchmarks.common import machine_info, write_result  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm_l6")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--plans", default="fp32,w8a8,w8a16")
    parser.add_argument("--plan-file", action="append", default=[], metavar="LABEL=PATH",
                        help="also score a plan file (e.g. a search's plan.yaml); LABEL names it")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--no-compile", action="store_true", help="simulated outputs only")
    args = parser.parse_args(argv)

    import torch

    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.metrics import labeled_metric
    from tvm_mpq.models import load_model
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.simulate import Simulator

    profile = load_profile(args.hw)
    result = {"machine": machine_info(), "profile": profile.name, "models": {}}
    for name in args.models.split(","):
        spec = load_model(name)
        t = time.perf_counter()
        metric = labeled_metric(spec)
        setup_s = time.perf_counter() - t
        inputs = list(metric.inputs)
        with torch.no_grad():
            eager = np.concatenate([spec.module(*s).float().numpy() for s in inputs])
        rows = {"FP32 (PyTorch eager)": {"score": metric.score(eager)}}
        print(f"[{name}] {metric.name}: {metric.note}; evaluator set up in {setup_s:.0f} s", flush=True)
        print(f"[{name}] FP32 (PyTorch eager): {rows['FP32 (PyTorch eager)']['score']:.4f}", flush=True)
        imported = import_model(spec.module, spec.example_inputs, name=name)
        sim = Simulator(imported)
        stats = sim.calibrate(spec.calibration(args.calib_samples))
        plans = {p.upper(): p for p in args.plans.split(",") if p}
        plans.update(dict(item.split("=", 1) for item in args.plan_file))
        for label, plan in plans.items():
            resolved = make_plan(plan, imported, profile, stats, "minmax", name)
            sim.configure_plan(resolved)
            row = {"simulated": metric.score(sim.run(inputs))}
            sim.reset()
            if not args.no_compile:
                from tvm_mpq.build import build

                t = time.perf_counter()
                compiled = build(imported, resolved, profile.tvm_target())
                y = np.concatenate([compiled.run([a.numpy() for a in s]) for s in inputs])
                row["compiled"] = metric.score(y)
                row["compile_and_run_s"] = time.perf_counter() - t
            rows[label] = row
            print(f"[{name}] {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
        result["models"][name] = {"metric": metric.to_dict(), "calib_samples": args.calib_samples, "plans": rows}
    out = ROOT / "benchmarks" / "results" / "labeled_metrics.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
