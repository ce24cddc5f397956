"""What smoothing is worth, measured with and without it in one run: quality, and latency side by side.

For each model: the output SQNR against the float model on held-out samples of the homogeneous W8A8 plan
and of each quantizer group quantized alone at W8A8 (the rest float), with the smoothing factors
(`tvm_mpq.smoothing`, the default) and without; scored by the simulator, which matches the compiled model
bit for bit (tests/test_smoothing.py). Then both W8A8 plans compiled for the profile and timed in
interleaved rounds (the baseline beside it): smoothing changes only the quantize's multiplier from a
scalar to a per-channel vector, so the ratio should be ~1.

    python benchmarks/smoothing.py [--models minilm_l6,efficientnet_lite0] [--hw host] [--rounds 15]

Writes benchmarks/results/smoothing.json (--fast: tiny models, few samples, under results/fast/).
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


def run_model(name: str, hw: str, calib_samples: int, held_out: int, rounds: int, per_layer: bool = True) -> dict:
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.measure.interleaved import compile_and_time, local_target
    from tvm_mpq.numerics import sqnr_db
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.plan import Plan

    t0 = time.perf_counter()
    profile = load_profile(hw)
    imported, sim, stats, held, y_float = calibrated_model(name, profile, calib_samples, held_out)

    def resolved(plan, on: bool):
        return make_plan(plan, imported, profile, stats, "minmax", name, smoothing=on)

    def score(plan) -> float:
        sim.configure_plan(plan)
        y = sim.run(held)
        sim.reset()
        return sqnr_db(y_float, y)

    plans = {on: resolved("w8a8", on) for on in (False, True)}
    homogeneous = {"plain_db": score(plans[False]), "smoothed_db": score(plans[True]),
                   "smoothed_layers": len(plans[True].smoothing), "layers": len(imported.graph.layers)}
    homogeneous["gain_db"] = homogeneous["smoothed_db"] - homogeneous["plain_db"]
    print(f"[smoothing] {name} W8A8: {homogeneous['plain_db']:.2f} dB plain, {homogeneous['smoothed_db']:.2f} dB "
          f"smoothed ({homogeneous['smoothed_layers']} layers smoothed)", flush=True)
    groups = {}
    if per_layer:
        for group in imported.graph.groups:  # a quantizer group shares one precision: quantized together
            alone = Plan({n: "W8A8" for n in group.layers})  # the rest FP32
            on = resolved(alone, True)
            if not any(n in on.smoothing for n in group.layers):
                continue
            plain, smoothed = score(resolved(alone, False)), score(on)
            groups[group.name] = {"plain_db": plain, "smoothed_db": smoothed, "gain_db": smoothed - plain}
        for gname, r in sorted(groups.items(), key=lambda kv: kv[1]["plain_db"])[:5]:
            print(f"[smoothing] {name} {gname} W8A8 alone: {r['plain_db']:.2f} -> {r['smoothed_db']:.2f} dB",
                  flush=True)
    latency = None
    target, why = local_target(profile)
    if target is None:
        print(f"[smoothing] {name}: not timed ({why})", flush=True)
    else:
        timed, failed, _ = compile_and_time(imported, {"W8A8 plain": plans[False], "W8A8 smoothed": plans[True]},
                                            target, rounds=rounds)
        if failed:
            raise RuntimeError(f"{name}: compiling failed: {failed}")
        latency = {label: s.to_dict() for label, s in timed.items()}
        latency["ratio_smoothed_to_plain"] = timed["W8A8 smoothed"].median_ms / timed["W8A8 plain"].median_ms
        print(f"[smoothing] {name} W8A8 side by side ({rounds} rounds): plain {timed['W8A8 plain'].median_ms:.3f} ms, "
              f"smoothed {timed['W8A8 smoothed'].median_ms:.3f} ms ({latency['ratio_smoothed_to_plain']:.3f}x)",
              flush=True)
    return {"profile": profile.name, "calib_samples": calib_samples, "held_out_samples": len(held),
            "w8a8": homogeneous, "groups_w8a8_alone": groups, "latency_interleaved": latency,
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    from tvm_mpq.hardware import host_profile_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm_l6,efficientnet_lite0")
    parser.add_argument("--hw", default="host", help="hardware profile (default: host, this machine's CPU)")
    parser.add_argument("--calib", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--held-out", type=int, default=32, help="held-out samples scored (default 32)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    parser.add_argument("--fast", action="store_true", help="tiny models, few samples (smoke test)")
    args = parser.parse_args(argv)
    models = ["tiny_transformer"] if args.fast else args.models.split(",")
    calib, held, rounds = (16, 8, 3) if args.fast else (args.calib, args.held_out, args.rounds)
    hw = host_profile_name() if args.hw == "host" else args.hw
    result = {"machine": machine_info(),
              "models": {m: run_model(m, hw, calib, held, rounds, per_layer=not args.fast) for m in models}}
    write_result(results_dir(args.fast) / "smoothing.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
