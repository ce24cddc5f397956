"""16-bit activations with int32 sums where they are exact, against the int64 sums they replace.

`numerics.accumulator_dtype` gives a layer with 16-bit activations an int32 accumulator wherever its weights
bound every sum within int32 (depthwise convs always: 9 or 25 terms). EfficientNet-Lite0's depthwise
shapes, compiled for the profile's target at W8A16 with the int32 sums and with the int64 ones (the
choice forced back), FP32 and W8A8 beside them; the two W8A16 builds are checked to give identical outputs,
then all are timed side by side in interleaved rounds (TVM's threads: all cores).

    python benchmarks/a16_accumulator.py [--hw host] [--rounds 15]

Writes benchmarks/results/<hw>/a16_accumulator.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir, write_result  # noqa: E402
from benchmarks.timing import set_tvm_threads  # noqa: E402

# EfficientNet-Lite0 depthwise layers: (channels, input size, kernel, stride)
BLOCKS = {"dw3x3_144x56": (144, 56, 3, 2), "dw3x3_240x28": (240, 28, 3, 1), "dw5x5_480x14": (480, 14, 5, 1),
          "dw5x5_672x14": (672, 14, 5, 2)}


def _depthwise(channels: int, kernel: int, stride: int):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels),
        torch.nn.ReLU6()).eval()


def compare(module, shape, profile, rounds: int) -> dict:
    import torch

    from tvm_mpq import numerics
    from tvm_mpq.build import LatencyStats, build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.measure.interleaved import interleave, vm_sampler
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.simulate import Simulator

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(*shape, generator=gen),) for _ in range(8)]
    imported = import_model(module, data[0])
    stats = Simulator(imported).calibrate(data)
    target = profile.tvm_target()
    chosen = numerics.accumulator_dtype
    builds = {}
    for label, plan, forced in (("FP32", "fp32", False), ("W8A8", "w8a8", False), ("W8A16", "w8a16", False),
                                ("W8A16 int64", "w8a16", True)):
        if forced:
            numerics.accumulator_dtype = lambda cand, q, enc: cand.acc_dtype
        try:
            builds[label] = build(imported, make_plan(plan, imported, profile, stats, "minmax"), target)
        finally:
            numerics.accumulator_dtype = chosen
    x = [data[0][0].numpy()]
    identical = bool(np.array_equal(builds["W8A16"].run(x), builds["W8A16 int64"].run(x)))
    if not identical:
        raise SystemExit("the int32 and int64 W8A16 builds disagree")
    seconds = interleave({label: vm_sampler(b, x, calls=5) for label, b in builds.items()}, rounds)
    stats_ms = {label: LatencyStats.from_seconds(s, 1).to_dict() for label, s in seconds.items()}
    ref = np.asarray(seconds["W8A16"])
    ratios = {f"W8A16 / {label}": float(np.median(ref / np.asarray(seconds[label])))
              for label in builds if label != "W8A16"}
    return {"input_shape": list(shape), "latency": stats_ms, "ratios": ratios, "identical_w8a16_outputs": identical}


def run(hw: str, rounds: int) -> dict:
    from tvm_mpq.hardware import load_profile

    set_tvm_threads()
    profile = load_profile(hw)
    out = {"machine": machine_info(), "profile": profile.name, "rounds": rounds, "calls_per_round": 5, "blocks": {}}
    for name, (channels, size, kernel, stride) in BLOCKS.items():
        row = compare(_depthwise(channels, kernel, stride), (1, channels, size, size), profile, rounds)
        out["blocks"][name] = row
        lat = ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in row["latency"].items())
        rat = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items())
        print(f"[a16 acc] {name}: {lat}; {rat}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", default="host")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<hw>/a16_accumulator.json)")
    args = parser.parse_args(argv)
    result = run(args.hw, args.rounds)
    write_result(Path(args.out) if args.out else results_dir() / result["profile"] / "a16_accumulator.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
