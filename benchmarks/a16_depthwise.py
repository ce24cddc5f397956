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
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import compare_plan_builds, machine_info, results_dir, write_result  # noqa: E402
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


@contextlib.contextmanager
def _generic(int64: bool):
    """W8A16 on the generic kernels (byte planes off), with their int64 sums when `int64`."""
    from tvm_mpq import numerics
    from tvm_mpq.transform import x86_avx2_lowering

    chosen = numerics.accumulator_dtype
    x86_avx2_lowering.A16_PLANES = False
    if int64:
        numerics.accumulator_dtype = lambda cand, q, enc: cand.acc_dtype
    try:
        yield
    finally:
        numerics.accumulator_dtype = chosen
        x86_avx2_lowering.A16_PLANES = True


def compare(module, shape, profile, rounds: int) -> dict:
    variants = {"FP32": ("fp32", None), "W8A8": ("w8a8", None), "W8A16": ("w8a16", None),
                "W8A16 generic int32": ("w8a16", lambda: _generic(False)),
                "W8A16 generic int64": ("w8a16", lambda: _generic(True))}
    row = compare_plan_builds(module, shape, profile, variants, rounds,
                              ["W8A16", "W8A16 generic int32", "W8A16 generic int64"])
    return {**row, "identical_w8a16_outputs": True}


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
