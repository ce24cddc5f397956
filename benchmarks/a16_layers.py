"""16-bit activations on the VNNI GEMM in two byte planes, layer pairs against FP32, W8A8 and the generic kernels.

Two blocks with the shapes of the models' layers, each compiled for the profile's target at FP32, W8A8,
W8A16 (dense layers and 1x1 convs on the two-plane u8 x s8 GEMM) and W8A16 on the generic
int64 kernels (`x86_avx2_lowering.A16_PLANES` off), checked to give identical outputs on the two W8A16
paths, and timed side by side in interleaved rounds (2 threads):

- `ffn`: MiniLM-L6's feed-forward block, Linear 384→1536, GELU, Linear 1536→384 on 128 tokens;
- `pointwise`: an EfficientNet-style 1x1 expand / project pair, Conv 40→240, ReLU, Conv 240→40 on 28×28.

    python benchmarks/a16_layers.py [--hw x86_avx512_vnni] [--rounds 15]

Writes benchmarks/results/<hw>/a16_layers.json. Needs a CPU with AVX-512 VNNI.
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


def _blocks():
    import torch

    class FFN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(384, 1536), torch.nn.Linear(1536, 384)

        def forward(self, x):
            return self.down(torch.nn.functional.gelu(self.up(x)))

    class Pointwise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.expand, self.project = torch.nn.Conv2d(40, 240, 1), torch.nn.Conv2d(240, 40, 1)

        def forward(self, x):
            return self.project(torch.relu(self.expand(x)))

    torch.manual_seed(0)
    return {"ffn": (FFN().eval(), (128, 384)), "pointwise": (Pointwise().eval(), (1, 40, 28, 28))}


@contextlib.contextmanager
def _generic():
    """W8A16 on the generic int64 kernels (byte planes off)."""
    from tvm_mpq.transform import x86_avx2_lowering

    x86_avx2_lowering.A16_PLANES = False
    try:
        yield
    finally:
        x86_avx2_lowering.A16_PLANES = True


def compare(module, shape, profile, rounds: int) -> dict:
    variants = {"FP32": ("fp32", None), "W8A8": ("w8a8", None), "W8A16": ("w8a16", None),
                "W8A16 generic": ("w8a16", _generic)}
    row = compare_plan_builds(module, shape, profile, variants, rounds, ["W8A16", "W8A16 generic"])
    return {**row, "identical_w8a16_outputs": True}


def run(hw: str, rounds: int) -> dict:
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import host_runs

    if not host_runs("x86_avx512_vnni"):
        raise SystemExit("this CPU has no AVX-512 VNNI: the byte-plane W8A16 kernels cannot run here")
    set_tvm_threads()
    profile = load_profile(hw)
    out = {"machine": machine_info(), "profile": hw, "rounds": rounds, "calls_per_round": 5, "blocks": {}}
    for name, (module, shape) in _blocks().items():
        row = compare(module, shape, profile, rounds)
        out["blocks"][name] = row
        lat = ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in row["latency"].items())
        rat = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items())
        print(f"[a16] {name}: {lat}; {rat}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", default="x86_avx512_vnni")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<hw>/a16_layers.json)")
    args = parser.parse_args(argv)
    result = run(args.hw, args.rounds)
    write_result(Path(args.out) if args.out else results_dir() / args.hw / "a16_layers.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
