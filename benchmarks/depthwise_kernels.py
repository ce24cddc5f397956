"""uint8 depthwise convs: the VNNI quad kernel against the float32-FMA kernel, layer by layer, interleaved.

For every distinct depthwise workload of the models (EfficientNet-Lite0 by default), both kernels are
built for the profile's target with their int32 accumulator output (no epilogue), checked to give the
same sums on random uint8 data, and timed side by side in interleaved rounds (2 threads): medians and
the ratio quad / float per layer, and the sum over the model's depthwise layers (each workload counted
as often as the model has it).

    python benchmarks/depthwise_kernels.py [--hw x86_avx512_vnni] [--models efficientnet_lite0] [--rounds 25]

Writes benchmarks/results/<hw>/depthwise_kernels.json. Needs a CPU with AVX-512 VNNI.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir, write_result  # noqa: E402
from benchmarks.timing import callable_sampler, set_tvm_threads  # noqa: E402


def depthwise_workloads(model: str) -> collections.Counter:
    """{depthwise Workload: how many layers of `model` have it}."""
    from tvm_mpq.frontend import import_model
    from tvm_mpq.models import load_model

    spec = load_model(model)
    graph = import_model(spec.module, spec.example_inputs, name=spec.name).graph
    return collections.Counter(layer.workload for layer in graph.layers.values()
                               if layer.workload.op == "conv2d" and layer.workload.groups > 1
                               and layer.workload.groups == layer.workload.input_shape[1])


def _kernels(wl, zero_point: int):
    from tvm_mpq.kernels import depthwise_vnni as dv
    from tvm_mpq.kernels import x86_avx2 as k
    from tvm_mpq.transform.x86_avx2_lowering import row_lanes

    _, _, kh, kw = wl.weight_shape
    geo = dict(strides=wl.strides, padding=wl.padding, dilation=wl.dilation)
    lanes = row_lanes(wl.output_shape[3], 16)
    quad = dv.depthwise_u8s8_func(wl.input_shape, (kh, kw), **geo, data_zero_point=zero_point, lanes=lanes)
    flt = k.depthwise_func(wl.input_shape, (kh, kw), **geo, data_dtype="uint8", data_zero_point=zero_point,
                           out_dtype="int32", lanes=lanes)
    return quad, flt, lanes


def compare(wl, target, rounds: int, rng) -> dict:
    import tvm

    from tvm_mpq.build import LatencyStats
    from tvm_mpq.kernels import depthwise_vnni as dv
    from tvm_mpq.measure.interleaved import interleave

    zp = 11
    quad, flt, lanes = _kernels(wl, zp)
    x = rng.integers(0, 256, wl.input_shape).astype(np.uint8)
    w = rng.integers(-127, 128, wl.weight_shape).astype(np.int8)
    quads, corr = dv.pack_weight_quads(w, zp)
    dev = tvm.cpu()
    out_q = tvm.runtime.tensor(np.zeros(wl.output_shape, np.int32), dev)
    out_f = tvm.runtime.tensor(np.zeros(wl.output_shape, np.int32), dev)
    args_q = [tvm.runtime.tensor(a, dev) for a in (x, quads, corr)] + [out_q]
    args_f = [tvm.runtime.tensor(a, dev) for a in (x, w.reshape(-1).astype(np.float32))] + [out_f]
    fq = tvm.compile(tvm.IRModule({"main": quad.with_attr("global_symbol", "main")}), target=target).mod["main"]
    ff = tvm.compile(tvm.IRModule({"main": flt.with_attr("global_symbol", "main")}), target=target).mod["main"]
    fq(*args_q)
    ff(*args_f)
    if not np.array_equal(out_q.numpy(), out_f.numpy()):
        raise SystemExit(f"the quad and float depthwise kernels disagree on {wl.key()}")
    seconds = interleave({"quad": callable_sampler(lambda: fq(*args_q), calls=5),
                          "float": callable_sampler(lambda: ff(*args_f), calls=5)}, rounds)
    q, f = (LatencyStats.from_seconds(seconds[n], 1) for n in ("quad", "float"))
    ratios = np.asarray(seconds["quad"]) / np.asarray(seconds["float"])
    return {"workload": wl.key(), "lanes": lanes, "quad": q.to_dict(), "float": f.to_dict(),
            "ratio_quad_over_float": float(np.median(ratios)), "identical_sums": True}


def run(models, hw: str, rounds: int) -> dict:
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import host_runs

    if not host_runs("x86_avx512_vnni"):
        raise SystemExit("this CPU has no AVX-512 VNNI: the quad depthwise kernel cannot run here")
    set_tvm_threads()
    target = load_profile(hw).tvm_target()
    rng = np.random.default_rng(0)
    out = {"machine": machine_info(), "profile": hw, "rounds": rounds, "calls_per_round": 5, "models": {}}
    for model in models:
        rows, total_q, total_f = [], 0.0, 0.0
        for wl, count in depthwise_workloads(model).items():
            row = compare(wl, target, rounds, rng)
            row["layers"] = count
            total_q += count * row["quad"]["median_ms"]
            total_f += count * row["float"]["median_ms"]
            print(f"[depthwise] {model} {list(wl.input_shape)} {wl.weight_shape[2]}x{wl.weight_shape[3]} "
                  f"s{wl.strides[0]} x{count}: quad {row['quad']['median_ms'] * 1e3:.1f} us, float "
                  f"{row['float']['median_ms'] * 1e3:.1f} us ({row['ratio_quad_over_float']:.2f}x)", flush=True)
            rows.append(row)
        out["models"][model] = {"workloads": rows, "sum_quad_ms": total_q, "sum_float_ms": total_f,
                                "ratio_of_sums": total_q / total_f}
        print(f"[depthwise] {model}: all depthwise layers quad {total_q:.3f} ms, float {total_f:.3f} ms "
              f"({total_q / total_f:.2f}x)", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", default="x86_avx512_vnni")
    parser.add_argument("--models", default="efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<hw>/depthwise_kernels.json)")
    args = parser.parse_args(argv)
    result = run(args.models.split(","), args.hw, args.rounds)
    write_result(Path(args.out) if args.out else results_dir() / args.hw / "depthwise_kernels.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
