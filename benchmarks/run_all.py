"""Every side-by-side benchmark in one command, in order:

1. (with --search) `tvm-mpq search` for each model without a search result yet: the latency-aware plan into
   benchmarks/results/search_<model>/ and the BOPs-chosen one (`--cost bops`) into search_bops_<model>/.
   Latency-aware search reads the device's measurements (`tvm-mpq profile --model M --hw x86_avx2` first).
2. `benchmarks/end_to_end.py`: PyTorch, ONNX Runtime and TVM (homogeneous and searched plans), latency at
   batch 1 and 8 and quality → end_to_end.json / end_to_end.png.
3. `benchmarks/layer_kernels.py`: every layer workload, TVM FP32/W8A8/W4A8 vs ONNX Runtime fp32/int8 → kernels.json.
4. `benchmarks/workflow_cost.py`: profiling and search time and peak memory, and how they grow with model depth
   and calibration size → workflow_cost.json / workflow_cost.png.
5. `benchmarks/epilogues.py`: what the int8 operand packing and softmax schedules are worth (each model built
   with and without them, timed side by side) → epilogues.json.
6. `benchmarks/bias_correction.py`: quality of homogeneous plans and of each quantizer group alone, with and
   without bias correction → bias_correction.json.

    python benchmarks/run_all.py [--fast] [--models efficientnet_lite0,minilm_l6,small_cnn] [--search]

`--fast` runs the tiny test models with few samples and runs (a couple of minutes) into
benchmarks/results/fast/. Run the full benchmark on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bias_correction, end_to_end, epilogues, layer_kernels, workflow_cost  # noqa: E402
from benchmarks.common import results_dir  # noqa: E402

MIN_SQNR_DB = 30.0


def run_searches(models, hw: str, out: Path) -> list[str]:
    """Search each model that has no plan under `out` yet (latency-aware and BOPs-chosen); returns the dirs written."""
    from tvm_mpq.cli import main as cli

    written = []
    for name in models:
        for prefix, extra in (("search", []), ("search_bops", ["--cost", "bops"])):
            target = out / f"{prefix}_{name}"
            if (target / "plan.yaml").is_file():
                continue
            print(f"[run_all] tvm-mpq search {name} {' '.join(extra)} → {target}", flush=True)
            rc = cli(["search", "--model", name, "--hw", hw, "--min-sqnr", str(MIN_SQNR_DB), "--out", str(target),
                      *extra])
            if rc != 0:
                raise RuntimeError(f"tvm-mpq search of {name} {' '.join(extra)} failed (exit {rc})")
            written.append(str(target))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny models, few samples and runs (smoke test)")
    parser.add_argument("--models", default=",".join(end_to_end.MODELS))
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (after warm-up)")
    parser.add_argument("--search", action="store_true", help="first search the models that have no plan yet")
    args = parser.parse_args(argv)
    models = end_to_end.FAST_MODELS if args.fast else tuple(args.models.split(","))
    repeat = 3 if args.fast else args.repeat
    out = results_dir(args.fast)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.search and not args.fast:
        run_searches(models, args.hw, out)

    e2e = end_to_end.run(models, args.hw, fast=args.fast, repeat=repeat, labeled=0 if args.fast else 1000)
    (out / "end_to_end.json").write_text(json.dumps(e2e, indent=2))
    end_to_end.plot(e2e, out / "end_to_end.png")
    print(f"[run_all] wrote {out / 'end_to_end.json'}, {out / 'end_to_end.png'}", flush=True)

    kern = layer_kernels.run(models, args.hw, repeat=repeat, ort_repeat=repeat, min_repeat_ms=5 if args.fast else None)
    (out / "kernels.json").write_text(json.dumps(kern, indent=2))
    print(f"[run_all] wrote {out / 'kernels.json'}", flush=True)

    workflow_cost.main(["--fast"] if args.fast else [])
    epilogues.main(["--fast"] if args.fast else [])
    bias_correction.main(["--fast"] if args.fast else [])
    print(f"[run_all] done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
