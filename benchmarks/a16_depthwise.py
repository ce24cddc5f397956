"""16-bit activation depthwise convs: on the x86 uint8 depthwise kernels in two byte planes, against the generic
kernels with int32 sums (exact here) and with the int64 sums they used before.

EfficientNet-Lite0's depthwise shapes, each compiled for the profile's target at
- W8A16: `x86_avx2_lowering.depthwise_a16`, the uint8 depthwise kernel (VNNI quads or float32 FMAs) once per
  byte plane of x + 2^15;
- W8A16 generic int32: the generic TE kernel, `numerics.accumulator_dtype`'s int32 sums (planes off);
- W8A16 generic int64: the same with int64 sums (the accumulator choice forced back): the previous kernels;
- FP32 and W8A8 beside them.
The three W8A16 builds are checked to give identical outputs, then all are timed side by side in
interleaved rounds (TVM's threads: all cores).

    python benchmarks/a16_depthwise.py [--hw host] [--rounds 15]

Writes benchmarks/results/<hw>/a16_depthwise.json.
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
    from tvm_mpq.transform import x86_avx2_lowering

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(*shape, generator=gen),) for _ in range(8)]
    imported = import_model(module, data[0])
    stats = Simulator(imported).calibrate(data)
    target = profile.tvm_target()
    chosen = numerics.accumulator_dtype
    builds = {}
    for label, plan, planes, int64 in (("FP32", "fp32", True, False), ("W8A8", "w8a8", True, False),
                                       ("W8A16", "w8a16", True, False),
                                       ("W8A16 generic int32", "w8a16", False, False),
                                       ("W8A16 generic int64", "w8a16", False, True)):
        x86_avx2_lowering.A16_PLANES = planes
        if int64:
            numerics.accumulator_dtype = lambda cand, q, enc: cand.acc_dtype
        try:
            builds[label] = build(imported, make_plan(plan, imported, profile, stats, "minmax"), target)
        finally:
            numerics.accumulator_dtype = chosen
            x86_avx2_lowering.A16_PLANES = True
    x = [data[0][0].numpy()]
    outputs = [builds[label].run(x) for label in ("W8A16", "W8A16 generic int32", "W8A16 generic int64")]
    identical = all(np.array_equal(outputs[0], o) for o in outputs[1:])
    if not identical:
        raise SystemExit("the W8A16 builds disagree")
    seconds = interleave({label: vm_sampler(b, x, calls=5) for label, b in builds.items()}, rounds)
    stats_ms = {label: LatencyStats.from_seconds(s, 1).to_dict() for label, s in seconds.items()}
    ref = np.asarray(seconds["W8A16"])
    ratios = {f"W8A16 / {label}": float(np.median(ref / np.asarray(seconds[label])))
              for label in builds if label != "W8A16"}
    return {"input_shape": list(shape), "latency": stats_ms, "ratios": ratios, "identical_w8a16_outputs": identical}


def run(hw: str, rounds: int, blocks=None) -> dict:
    from tvm_mpq.hardware import load_profile

    set_tvm_threads()
    profile = load_profile(hw)
    out = {"machine": machine_info(), "profile": profile.name, "rounds": rounds, "calls_per_round": 5, "blocks": {}}
    for name in blocks or BLOCKS:
        channels, size, kernel, stride = BLOCKS[name]
        row = compare(_depthwise(channels, kernel, stride), (1, channels, size, size), profile, rounds)
        out["blocks"][name] = row
        lat = ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in row["latency"].items())
        rat = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items())
        print(f"[a16 depthwise] {name}: {lat}; {rat}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", default="host")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--blocks", nargs="+", choices=sorted(BLOCKS), help="default: all")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<hw>/a16_depthwise.json)")
    args = parser.parse_args(argv)
    result = run(args.hw, args.rounds, args.blocks)
    write_result(Path(args.out) if args.out else results_dir() / result["profile"] / "a16_depthwise.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
