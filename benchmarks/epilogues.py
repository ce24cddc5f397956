"""What the epilogue, packing and softmax choices of the CPU pipeline are worth, measured in one run.

Each model is compiled three times per plan — with the project's CPU pipeline as it is; with the
elementwise chains after the AVX2 kernels left as separate fused functions instead of stored by the
kernels (`transform.fuse_epilogues` off); and additionally with the requantize fused into the int16
operand packing, as FuseOps would do, and TOPI's one-function softmax — and all builds are timed side by
side in interleaved rounds (`tvm_mpq.measure.interleaved`). Outputs of every build of a plan are checked
against the current one (identical; softmax: within float32 rounding).

    python benchmarks/epilogues.py [--models efficientnet_lite0,minilm_l6] [--plans W8A8,FP32] [--rounds 20]

Writes benchmarks/results/epilogues.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir, write_result  # noqa: E402


def _builds(name: str, plans, variants) -> tuple[dict, dict, list]:
    from tvm_mpq.build import build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import cpu_schedule
    from tvm_mpq.measure.in_model import synthetic_ranges
    from tvm_mpq.models import load_model
    from tvm_mpq.plan import homogeneous_plan, resolve
    from tvm_mpq.transform import x86_avx2_lowering as low

    spec = load_model(name)
    profile = load_profile("x86_avx2")
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    graph = imported.graph
    compiled, compile_s = {}, {}
    try:
        for cand in plans:
            plan = resolve(homogeneous_plan(graph, profile, cand, synthetic_ranges(graph), model=name), graph, profile)
            for label, (unfused, split, kernel_epilogues) in variants.items():
                low.UNFUSED_PACKING, cpu_schedule.SPLIT_SOFTMAX = unfused, split
                cpu_schedule.FUSE_KERNEL_EPILOGUES = kernel_epilogues
                t = time.perf_counter()
                compiled[f"{cand} {label}"] = build(imported, plan, profile.tvm_target())
                compile_s[f"{cand} {label}"] = time.perf_counter() - t
    finally:
        low.UNFUSED_PACKING, cpu_schedule.SPLIT_SOFTMAX, cpu_schedule.FUSE_KERNEL_EPILOGUES = True, True, True
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    return compiled, compile_s, inputs


def run(models, plans, rounds: int) -> dict:
    from tvm_mpq.measure.interleaved import time_compiled

    variants = {"current": (True, True, True), "epilogues after the kernels": (True, True, False),
                "and fused packing, TOPI softmax": (False, False, False)}
    out = {"machine": machine_info(), "rounds": rounds, "calls_per_round": 3, "variants": list(variants), "models": {}}
    for name in models:
        compiled, compile_s, inputs = _builds(name, plans, variants)
        outputs = {k: m.run(inputs) for k, m in compiled.items()}
        stats = time_compiled(compiled, inputs, rounds=rounds, calls=3)
        rows = {}
        for cand in plans:
            cur = f"{cand} current"
            row = {"current": stats[cur].to_dict(), "compile_s": {"current": compile_s[cur]}, "variants": {}}
            for label in list(variants)[1:]:
                key = f"{cand} {label}"
                diff = float(np.abs(outputs[cur].astype(np.float64) - outputs[key].astype(np.float64)).max())
                row["variants"][label] = {"latency": stats[key].to_dict(),
                                          "ratio_current_over_variant": stats[cur].median_ms / stats[key].median_ms,
                                          "max_abs_output_difference": diff, "compile_s": compile_s[key]}
                print(f"[epilogues] {name} {cand}: current {stats[cur].median_ms:.2f} ms vs {label} "
                      f"{stats[key].median_ms:.2f} ms "
                      f"({row['variants'][label]['ratio_current_over_variant']:.2f}x), max output diff {diff:.3g}",
                      flush=True)
            rows[cand] = row
        out["models"][name] = rows
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,minilm_l6")
    parser.add_argument("--plans", default="W8A8,FP32")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fast", action="store_true", help="tiny_cnn, 3 rounds (smoke test)")
    args = parser.parse_args(argv)
    models = ["tiny_cnn"] if args.fast else args.models.split(",")
    result = run(models, args.plans.split(","), 3 if args.fast else args.rounds)
    path = write_result(results_dir(args.fast) / "epilogues.json", result)
    print(f"[epilogues] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
