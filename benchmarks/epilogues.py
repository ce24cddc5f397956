"""What the epilogue, packing, softmax and layer-norm choices of the CPU pipeline are worth, measured in one run.

Each model is compiled once per plan and variant — the project's CPU pipeline as it is; with TOPI's layer
norm instead of the vectorized kernel with its residual add folded in (`transform.lower_layer_norm` off);
with the elementwise chains after the hand-written kernels left as separate fused functions instead of
stored by the kernels (`transform.fuse_epilogues` off); with 16-bit activations on the generic int64
kernels instead of the VNNI GEMM in two byte planes (`x86_avx2_lowering.A16_PLANES` off); and additionally
with the requantize fused into the int16 operand packing, as FuseOps would do, and TOPI's one-function
softmax — and all builds are timed side by side in interleaved rounds (`tvm_mpq.measure.interleaved`).
Outputs of every build of a plan are checked against the current one (integer paths identical; softmax,
layer norm: within float32 rounding).

    python benchmarks/epilogues.py [--models efficientnet_lite0,minilm_l6] [--plans W8A8,FP32,path/plan.yaml]
                                   [--hw x86_avx2] [--rounds 20]

A plan is a homogeneous candidate or a plan file (its layers' candidates; ranges synthetic: latency does
not depend on them). Writes benchmarks/results/epilogues.json (for a profile other than x86_avx2:
benchmarks/results/<profile>/epilogues.json).
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


# variant → switches it sets (module, attribute, value); "current" sets none
VARIANTS = {
    "current": (),
    "TOPI layer norm": (("cpu_schedule", "FAST_LAYER_NORM", False),),
    "epilogues after the kernels": (("cpu_schedule", "FUSE_KERNEL_EPILOGUES", False),),
    "and fused packing and TOPI softmax": (("cpu_schedule", "FUSE_KERNEL_EPILOGUES", False),
                                        ("lowering", "UNFUSED_PACKING", False), ("cpu_schedule", "SPLIT_SOFTMAX", False)),
    "float-FMA uint8 depthwise": (("depthwise_vnni", "ENABLED", False),),
    "generic 16-bit activations": (("lowering", "A16_PLANES", False),),
}


def _switch_modules() -> dict:
    from tvm_mpq.kernels import cpu_schedule, depthwise_vnni
    from tvm_mpq.transform import x86_avx2_lowering

    return {"cpu_schedule": cpu_schedule, "lowering": x86_avx2_lowering, "depthwise_vnni": depthwise_vnni}


def _resolved_plan(ref: str, graph, profile, name: str):
    from tvm_mpq.measure.in_model import synthetic_ranges
    from tvm_mpq.plan import Plan, homogeneous_plan, resolve

    if ref.endswith((".yaml", ".yml")):
        p = Plan.load(ref)
        if p.model and p.model != name:
            return None
        return resolve(Plan(p.layers, synthetic_ranges(graph), name, profile.name, p.calibration, p.default,
                            p.source_lines), graph, profile)
    return resolve(homogeneous_plan(graph, profile, ref, synthetic_ranges(graph), model=name), graph, profile)


def _builds(name: str, plans, variants, hw: str) -> tuple[dict, dict, list, list]:
    from tvm_mpq.build import build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.models import load_model

    spec = load_model(name)
    profile = load_profile(hw)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    graph = imported.graph
    modules = _switch_modules()
    saved = {(m, a): getattr(modules[m], a) for sw in variants.values() for m, a, _ in sw}
    compiled, compile_s, done = {}, {}, []
    try:
        for ref in plans:
            plan = _resolved_plan(ref, graph, profile, name)
            if plan is None:  # a plan file of another model
                continue
            done.append(ref)
            for label, switches in variants.items():
                for (m, a), v in saved.items():
                    setattr(modules[m], a, v)
                for m, a, v in switches:
                    setattr(modules[m], a, v)
                t = time.perf_counter()
                compiled[f"{ref} {label}"] = build(imported, plan, profile.tvm_target())
                compile_s[f"{ref} {label}"] = time.perf_counter() - t
    finally:
        for (m, a), v in saved.items():
            setattr(modules[m], a, v)
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    return compiled, compile_s, inputs, done


def run(models, plans, rounds: int, hw: str = "x86_avx2", variants=None) -> dict:
    from tvm_mpq.measure.interleaved import time_compiled

    variants = dict(VARIANTS if variants is None else variants)
    out = {"machine": machine_info(), "profile": hw, "rounds": rounds, "calls_per_round": 3,
           "variants": list(variants), "models": {}}
    for name in models:
        compiled, compile_s, inputs, done = _builds(name, plans, variants, hw)
        if not compiled:
            continue
        outputs = {k: m.run(inputs) for k, m in compiled.items()}
        stats = time_compiled(compiled, inputs, rounds=rounds, calls=3)
        rows = {}
        for cand in done:
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
    parser.add_argument("--plans", default="W8A8,FP32", help="candidates and / or plan files, comma-separated")
    parser.add_argument("--hw", default="x86_avx2", help="hardware profile (its target picks the kernel library)")
    parser.add_argument("--variants", default=",".join(VARIANTS),  # variant names hold no comma
                        help=f"comma-separated, the first is the reference; of: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fast", action="store_true", help="tiny_cnn, 3 rounds (smoke test)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/[<hw>/]epilogues.json)")
    args = parser.parse_args(argv)
    models = ["tiny_cnn"] if args.fast else args.models.split(",")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from: {', '.join(VARIANTS)}")
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    result = run(models, args.plans.split(","), 3 if args.fast else args.rounds, args.hw, variants)
    sub = "" if args.hw == "x86_avx2" else args.hw
    path = write_result(Path(args.out) if args.out else results_dir(args.fast) / sub / "epilogues.json", result)
    print(f"[epilogues] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
