"""Search job time with and without the fast evaluation path, measured in one run on this machine.

1. The search as shipped (`fast=True`: evaluations resume from the activations they share,
   `PrefixCache`, and run in channels-last layout), phases 1-3 timed, with a fresh phase-1 cache.
2. The reference path (`fast=False`: the whole network in the default layout at every evaluation), in the
   same process on the same data: either the whole search (`--full-reference`) or, to keep the run short,
   phase-1 evaluations of every k-th (group, candidate) pair (`--reference-every k`) and phase-3
   evaluations of points spread along the found front, each interleaved with the fast path's evaluation
   of the same point. Reports medians per evaluation, the measured phase times, and the largest
   difference between the fast and the reference values (float32 rounding of the float ops).

    python benchmarks/search_speed.py [--model efficientnet_lite0] [--calib 256 --sens 64 --eval 64]
    python benchmarks/search_speed.py --fast        # tiny_cnn, few samples (smoke test)

Writes benchmarks/results/search_speed_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, write_result  # noqa: E402


def timed_search(spec, profile, cfg, store, fast: bool, label: str):
    from tvm_mpq.search.api import search

    stamps = []
    with tempfile.TemporaryDirectory() as cache_dir:
        t = time.perf_counter()
        result = search(spec, profile, cfg, store_path=store, cache_dir=Path(cache_dir), fast=fast,
                        progress=lambda done, total, what: stamps.append(time.perf_counter()),
                        log=lambda m: print(f"[{label}] {m}", flush=True))
        wall = time.perf_counter() - t
    per_eval = np.diff(stamps).tolist()  # one interval per phase-1 evaluation (the last ends at "done")
    out = {"wall_s": wall, "timings_s": result.timings, "phase1_per_evaluation_s": _summary(per_eval)}
    print(f"[{label}] {wall:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
          + f"; phase-1 evaluation median {out['phase1_per_evaluation_s']['median']:.3f} s", flush=True)
    return out, result


def _summary(times) -> dict:
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "min": min(times),
            "max": max(times), "count": len(times)}


def sampled_reference(spec, profile, cfg, fast_result, every: int, front_points: int) -> dict:
    """Reference (whole network, default layout) evaluations of a sample of phase-1 pairs, and phase-3
    points evaluated by both paths, interleaved."""
    from tvm_mpq.frontend import import_model
    from tvm_mpq.numerics import get_candidate, sqnr_db
    from tvm_mpq.search.api import _encodings, make_evaluator
    from tvm_mpq.simulate import Simulator

    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    graph = imported.graph
    data = spec.calibration(cfg.calib_samples + cfg.eval_samples)
    calib, held = data[:cfg.calib_samples], data[cfg.calib_samples:]
    scored = calib[:cfg.sensitivity_samples]
    ref_sim, fast_sim = Simulator(imported), Simulator(imported, channels_last=True)
    ref_stats, fast_stats = ref_sim.calibrate(calib), fast_sim.calibrate(calib)
    y_scored = ref_sim.run(scored)
    members = {g.name: g.layers for g in graph.groups}
    first = {g: min(ref_sim.positions[n] for n in m) for g, m in members.items()}
    pairs = sorted((k for k in fast_result.sensitivity.sqnr_db if k[1] != cfg.baseline), key=lambda k: first[k[0]])
    times, diffs = [], []
    for group, cand in pairs[::every]:
        c = get_candidate(cand)
        t = time.perf_counter()
        ref_sim.configure({n: c for n in members[group]},
                          {n: _encodings(ref_stats[n], c, cfg.range_method) for n in members[group]})
        value = sqnr_db(y_scored, ref_sim.run(scored))
        times.append(time.perf_counter() - t)
        diffs.append(abs(value - fast_result.sensitivity.sqnr_db[(group, cand)]))
    ref_sim.reset()
    y_held_ref, y_held_fast = ref_sim.run(held), fast_sim.run(held)
    ref_eval = make_evaluator(ref_sim, graph, ref_stats, held, y_held_ref, cfg.range_method, prefix_cache_bytes=0)
    fast_eval = make_evaluator(fast_sim, graph, fast_stats, held, y_held_fast, cfg.range_method)
    front = fast_result.front
    idx = sorted(set(np.linspace(1, len(front) - 1, front_points).round().astype(int).tolist()))
    p3 = {"reference": [], "fast": []}
    p3_diffs = []
    for i in idx:  # front order, as phase 3 walks it
        values = {}
        for label, ev in (("fast", fast_eval), ("reference", ref_eval)):
            t = time.perf_counter()
            values[label] = ev(dict(front[i].config))
            p3[label].append(time.perf_counter() - t)
        p3_diffs.append(abs(values["fast"] - values["reference"]))
    return {"phase1_pairs_sampled": len(times), "phase1_reference_per_evaluation_s": _summary(times),
            "phase1_reference_projected_s": statistics.fmean(times) * len(pairs),
            "phase1_max_abs_diff_db": max(diffs),
            "phase3_points": len(idx), "phase3_per_evaluation_s": {k: _summary(v) for k, v in p3.items()},
            "phase3_max_abs_diff_db": max(p3_diffs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--store", default=None)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--sens", type=int, default=64)
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--min-sqnr", type=float, default=30.0)
    parser.add_argument("--full-reference", action="store_true", help="run the whole reference search too")
    parser.add_argument("--reference-every", type=int, default=10, help="reference phase-1 sample: every k-th pair")
    parser.add_argument("--front-points", type=int, default=8, help="phase-3 points evaluated by both paths")
    parser.add_argument("--fast", action="store_true", help="tiny_cnn, few samples (smoke test)")
    args = parser.parse_args(argv)

    import torch

    from tvm_mpq.hardware import load_profile
    from tvm_mpq.models import load_model
    from tvm_mpq.search.api import SearchConfig

    if args.fast:
        args.model, args.calib, args.sens, args.eval = "tiny_cnn", 24, 8, 8
    spec, profile = load_model(args.model), load_profile(args.hw)
    cfg = SearchConfig(calib_samples=args.calib, sensitivity_samples=args.sens, eval_samples=args.eval,
                       min_sqnr_db=args.min_sqnr)
    runs, agreement = {}, {}
    runs["fast"], fast = timed_search(spec, profile, cfg, args.store, True, "fast")
    if args.full_reference:
        runs["reference"], ref = timed_search(spec, profile, cfg, args.store, False, "reference")
        diffs = [abs(fast.sensitivity.sqnr_db[k] - v) for k, v in ref.sensitivity.sqnr_db.items() if np.isfinite(v)]
        agreement = {"sensitivity_max_abs_diff_db": max(diffs),
                     "front_same_configs": [dict(p.config) for p in fast.front] == [dict(p.config) for p in ref.front],
                     "same_plan": dict(fast.plan.layers) == dict(ref.plan.layers)}
        speedup = {k: runs["reference"]["timings_s"][k] / runs["fast"]["timings_s"][k]
                   for k in ("phase1_s", "phase3_s", "total_s")}
        print(f"agreement: {agreement}\nspeed-up (reference / fast): "
              + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()), flush=True)
    else:
        speedup = None
    sample = sampled_reference(spec, profile, cfg, fast, args.reference_every, args.front_points)
    print(f"[sampled] phase-1 evaluation median: reference {sample['phase1_reference_per_evaluation_s']['median']:.3f} s"
          f" vs fast {runs['fast']['phase1_per_evaluation_s']['median']:.3f} s; reference phase 1 projected "
          f"{sample['phase1_reference_projected_s']:.0f} s vs fast measured {runs['fast']['timings_s']['phase1_s']:.0f} s;"
          f" phase-3 evaluation median: reference {sample['phase3_per_evaluation_s']['reference']['median']:.3f} s vs "
          f"fast {sample['phase3_per_evaluation_s']['fast']['median']:.3f} s; max |diff| phase 1 "
          f"{sample['phase1_max_abs_diff_db']:.2g} dB, phase 3 {sample['phase3_max_abs_diff_db']:.2g} dB", flush=True)
    result = {"machine": machine_info(), "torch_threads": torch.get_num_threads(), "model": args.model,
              "profile": profile.name, "config": cfg.to_dict(), "runs": runs, "speedup": speedup,
              "agreement": agreement, "sampled_reference": sample}
    out = ROOT / "benchmarks" / "results" / f"search_speed_{args.model}.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
