"""What bias correction is worth in quality, measured with and without it in one run.

For each model: the logit / last-hidden-state SQNR against the float model on held-out samples of every
homogeneous quantized plan (W8A8, W8A16, W4A8), and of each quantizer group quantized alone at W8A8
(the rest float), each with the corrections (`numerics.bias_correction`, the default) and without. Plans are made
by `pipeline.make_plan` and scored by the simulator, which matches the compiled model (see
tests/test_bias_correction.py). No timing: the correction is a constant that joins the requantize.

    python benchmarks/bias_correction.py [--models efficientnet_lite0,minilm_l6] [--calib 64] [--held-out 32]

Writes benchmarks/results/bias_correction.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import calibrated_model, machine_info, results_dir, write_result  # noqa: E402

PLANS = ("w8a8", "w8a16", "w4a8")


def run_model(name: str, calib_samples: int, held_out: int, per_layer: bool = True) -> dict:
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.numerics import sqnr_db
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.plan import Plan

    t0 = time.perf_counter()
    profile = load_profile("x86_avx2")
    imported, sim, stats, held, y_float = calibrated_model(name, profile, calib_samples, held_out)

    def score(plan, on: bool) -> float:
        resolved = make_plan(plan, imported, profile, stats, "minmax", name, bias_correction=on)
        sim.configure_plan(resolved)
        y = sim.run(held)
        sim.reset()
        return sqnr_db(y_float, y)

    homogeneous = {}
    for plan in PLANS:
        plain, corrected = score(plan, False), score(plan, True)
        homogeneous[plan.upper()] = {"plain_db": plain, "corrected_db": corrected, "gain_db": corrected - plain}
        print(f"[bias_correction] {name} {plan.upper()}: {plain:.2f} dB plain, {corrected:.2f} dB corrected",
              flush=True)
    groups = {}
    if per_layer:
        for group in imported.graph.groups:  # a quantizer group shares one precision: quantized together
            if all(imported.graph.layers[n].weight is None for n in group.layers):
                continue  # activation x activation matmuls: no weights to correct
            alone = Plan({n: "W8A8" for n in group.layers})  # the rest FP32
            plain, corrected = score(alone, False), score(alone, True)
            groups[group.name] = {"plain_db": plain, "corrected_db": corrected, "gain_db": corrected - plain}
        for gname, r in sorted(groups.items(), key=lambda kv: kv[1]["plain_db"])[:5]:
            print(f"[bias_correction] {name} {gname} W8A8 alone: {r['plain_db']:.2f} -> {r['corrected_db']:.2f} dB",
                  flush=True)
    return {"calib_samples": calib_samples, "held_out_samples": len(held), "homogeneous": homogeneous,
            "groups_w8a8_alone": groups, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,minilm_l6")
    parser.add_argument("--calib", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--held-out", type=int, default=32, help="held-out samples scored (default 32)")
    parser.add_argument("--fast", action="store_true", help="tiny_cnn, few samples (smoke test)")
    args = parser.parse_args(argv)
    models = ["tiny_cnn"] if args.fast else args.models.split(",")
    calib, held = (16, 8) if args.fast else (args.calib, args.held_out)
    result = {"machine": machine_info(), "models": {m: run_model(m, calib, held) for m in models}}
    write_result(results_dir(args.fast) / "bias_correction.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
