"""Search job time with and without the prefix cache, measured in one run on this machine.

Both searches run in the same process on the same model, data, profile and store, each with a fresh
phase-1 cache directory (nothing reused between them): first the default (evaluations resume from the
activations they share, `PrefixCache`), then the reference that runs the whole network for every
evaluation (`prefix_cache_bytes=0`). Reports the phase times, the median time per phase-1 evaluation,
and checks that both found the same sensitivity table (max |difference|), front and plan.

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

from benchmarks.common import machine_info  # noqa: E402


def timed_search(spec, profile, cfg, store, prefix_cache_bytes: int, label: str) -> dict:
    from tvm_mpq.search.api import search

    stamps = []
    with tempfile.TemporaryDirectory() as cache_dir:
        t = time.perf_counter()
        result = search(spec, profile, cfg, store_path=store, cache_dir=Path(cache_dir),
                        prefix_cache_bytes=prefix_cache_bytes,
                        progress=lambda done, total, what: stamps.append(time.perf_counter()),
                        log=lambda m: print(f"[{label}] {m}", flush=True))
        wall = time.perf_counter() - t
    per_eval = np.diff(stamps).tolist()  # one interval per phase-1 evaluation (the last ends at "done")
    out = {"wall_s": wall, "timings_s": result.timings,
           "phase1_per_evaluation_s": {"median": statistics.median(per_eval), "min": min(per_eval),
                                       "max": max(per_eval), "count": len(per_eval)}}
    print(f"[{label}] {wall:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
          + f"; phase-1 evaluation median {out['phase1_per_evaluation_s']['median']:.3f} s", flush=True)
    return out, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--store", default=None)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--sens", type=int, default=64)
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--min-sqnr", type=float, default=30.0)
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
    runs = {}
    cached, fast = timed_search(spec, profile, cfg, args.store, 1 << 30, "prefix cache")
    runs["prefix_cache"] = cached
    runs["whole_network"], ref = timed_search(spec, profile, cfg, args.store, 0, "whole network")

    diffs = [abs(fast.sensitivity.sqnr_db[k] - v) for k, v in ref.sensitivity.sqnr_db.items() if np.isfinite(v)]
    front_diffs = [abs(a.evaluated_sqnr_db - b.evaluated_sqnr_db) for a, b in zip(fast.front, ref.front)
                   if a.evaluated_sqnr_db is not None and b.evaluated_sqnr_db is not None
                   and np.isfinite(a.evaluated_sqnr_db) and np.isfinite(b.evaluated_sqnr_db)]
    agreement = {
        "sensitivity_max_abs_diff_db": max(diffs),
        "front_same_configs": [dict(p.config) for p in fast.front] == [dict(p.config) for p in ref.front],
        "front_evaluated_max_abs_diff_db": max(front_diffs) if front_diffs else None,
        "same_plan": dict(fast.plan.layers) == dict(ref.plan.layers),
    }
    speedup = {k: runs["whole_network"]["timings_s"][k] / runs["prefix_cache"]["timings_s"][k]
               for k in ("phase1_s", "phase3_s", "total_s")}
    print(f"agreement: {agreement}\nspeed-up (whole network / prefix cache): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    result = {"machine": machine_info(), "torch_threads": torch.get_num_threads(), "model": args.model,
              "profile": profile.name, "config": cfg.to_dict(), "runs": runs, "speedup": speedup,
              "agreement": agreement}
    out = ROOT / "benchmarks" / "results" / f"search_speed_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
