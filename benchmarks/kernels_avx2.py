"""The x86 AVX2 kernels against ONNX Runtime on this CPU, in one run: peak, reference conv, every layer, whole models.

1. Peak: the machine's int16-pair multiply-accumulate rate (vpmaddwd + vpaddd on registers only, 12
   independent accumulators per thread) and its float32 FMA rate, measured here with the same thread count.
   Every kernel figure below is also given as a fraction of the matching peak.
2. The reference conv 1x64x56x56, 64 filters 3x3 (pad 1): TVM FP32 and W8A8 layer tasks (the profiler's
   compile path: the kernels the compiled models run) against ONNX Runtime fp32 and static int8.
3. Every conv / linear / matmul workload of EfficientNet-Lite0 and MiniLM-L6 (benchmarks/kernels.py),
   TVM / ONNX Runtime ratios.
4. Whole models at batch 1: TVM FP32 and W8A8 against ONNX Runtime fp32 and int8 (static QDQ for
   EfficientNet-Lite0, dynamic for MiniLM-L6), with the output SQNR against PyTorch fp32 beside each.

    python benchmarks/kernels_avx2.py [--skip-layers] [--models efficientnet_lite0,minilm_l6] [--repeat 20]

Writes benchmarks/results/kernels_avx2.json. Needs onnxruntime (scripts/install.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir  # noqa: E402
from benchmarks.timing import THREADS, set_torch_threads, set_tvm_threads, time_callable  # noqa: E402

REFERENCE_CONV = dict(op="conv2d", input_shape=(1, 64, 56, 56), weight_shape=(64, 64, 3, 3),
                      output_shape=(1, 64, 56, 56), strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1),
                      groups=1, has_bias=False)


def peak_func(kind: str, tasks: int, iters: int):
    """Registers-only loop: 12 independent accumulators, `iters` iterations per parallel task."""
    from tvm.script import tirx as T

    if kind == "int16":
        @T.prim_func
        def peak(src: T.Buffer((32,), "int16"), out: T.Buffer((tasks * 8,), "int32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for t in T.parallel(tasks):
                acc = T.alloc_buffer((96,), "int32", scope="global")
                for i in T.unroll(12):
                    acc[T.ramp(i * 8, 1, 8)] = T.broadcast(T.int32(0), 8)
                for _ in range(iters):
                    for i in T.unroll(12):
                        # the accumulator feeds the multiply, so LLVM cannot hoist it out of the loop
                        acc[T.ramp(i * 8, 1, 8)] = acc[T.ramp(i * 8, 1, 8)] + T.call_llvm_pure_intrin(
                            "int32x8", "llvm.x86.avx2.pmadd.wd",
                            T.reinterpret("int16x16", acc[T.ramp(i * 8, 1, 8)]), src[T.ramp(i % 2 * 16, 1, 16)])
                for i in T.unroll(12):
                    if i > 0:
                        acc[T.ramp(0, 1, 8)] = acc[T.ramp(0, 1, 8)] + acc[T.ramp(i * 8, 1, 8)]
                out[T.ramp(t * 8, 1, 8)] = acc[T.ramp(0, 1, 8)]
        macs_per_iter = 12 * 16
    else:
        @T.prim_func
        def peak(src: T.Buffer((16,), "float32"), out: T.Buffer((tasks * 8,), "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for t in T.parallel(tasks):
                acc = T.alloc_buffer((96,), "float32", scope="global")
                for i in T.unroll(12):
                    acc[T.ramp(i * 8, 1, 8)] = T.broadcast(T.float32(0), 8)
                for _ in range(iters):
                    for i in T.unroll(12):
                        acc[T.ramp(i * 8, 1, 8)] = T.call_llvm_pure_intrin(
                            "float32x8", "llvm.fma.v8f32", src[T.ramp(i % 2 * 8, 1, 8)],
                            src[T.ramp((i + 1) % 2 * 8, 1, 8)], acc[T.ramp(i * 8, 1, 8)])
                for i in T.unroll(12):
                    if i > 0:
                        acc[T.ramp(0, 1, 8)] = acc[T.ramp(0, 1, 8)] + acc[T.ramp(i * 8, 1, 8)]
                out[T.ramp(t * 8, 1, 8)] = acc[T.ramp(0, 1, 8)]
        macs_per_iter = 12 * 8
    return peak, macs_per_iter


def measure_peak(target, threads: int = THREADS, repeat: int = 20) -> dict:
    import tvm

    out = {}
    iters = 2_000_000
    for kind in ("int16", "float32"):
        func, per_iter = peak_func(kind, threads, iters)
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        dev = tvm.cpu()
        src = tvm.runtime.tensor(np.ones(32 if kind == "int16" else 16, kind), dev)
        dst = tvm.runtime.tensor(np.zeros(threads * 8, "int32" if kind == "int16" else "float32"), dev)
        res = lib.mod.time_evaluator("main", dev, number=1, repeat=repeat)(src, dst).results
        best = min(res)  # the peak: the least disturbed repeat
        out[kind] = {"gmacs_per_s": threads * iters * per_iter / best / 1e9,
                     "median_gmacs_per_s": threads * iters * per_iter / float(np.median(res)) / 1e9}
    return out


def tvm_task_ms(wl, op_type: str, candidate: str, target, workdir: Path, repeat: int) -> dict:
    from benchmarks.kernels import tvm_layer_latency
    from tvm_mpq.measure import TimingConfig

    t = tvm_layer_latency(wl, op_type, candidate, target, workdir,
                          TimingConfig(number=1, repeat=repeat, min_repeat_ms=50, warmup=1))
    return {"median_ms": t.median_ms, "min_ms": t.min_ms, "max_ms": t.max_ms}


def reference_conv(target, peak: dict, repeat: int) -> dict:
    from benchmarks.ort_kernels import ort_workload_latency
    from tvm_mpq.graph import Workload

    wl = Workload(**REFERENCE_CONV)
    macs = wl.macs
    row = {"workload": REFERENCE_CONV, "macs": macs}
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_refconv_") as tmp:
        for cand in ("FP32", "W8A8"):
            row[f"tvm_{cand}"] = tvm_task_ms(wl, "conv2d", cand, target, Path(tmp), repeat)
    for prec in ("fp32", "int8"):
        row[f"ort_{prec}"] = ort_workload_latency(wl, prec, repeat=repeat).to_dict()
    row["ratio_W8A8_vs_ort_int8"] = row["tvm_W8A8"]["median_ms"] / row["ort_int8"]["median_ms"]
    row["ratio_FP32_vs_ort_fp32"] = row["tvm_FP32"]["median_ms"] / row["ort_fp32"]["median_ms"]
    row["tvm_W8A8_gmacs"] = macs / row["tvm_W8A8"]["median_ms"] / 1e6
    row["tvm_FP32_gmacs"] = macs / row["tvm_FP32"]["median_ms"] / 1e6
    row["tvm_W8A8_fraction_of_int_peak"] = row["tvm_W8A8_gmacs"] / peak["int16"]["gmacs_per_s"]
    row["tvm_FP32_fraction_of_fp32_peak"] = row["tvm_FP32_gmacs"] / peak["float32"]["gmacs_per_s"]
    row["ort_int8_gmacs"] = macs / row["ort_int8"]["median_ms"] / 1e6
    return row


def whole_models(models, target, repeat: int, log=print) -> dict:
    from benchmarks.baselines import (ORT_DYNAMIC_INT8, ORT_FP32, ORT_STATIC_INT8, TORCH_FP32, baseline_executors,
                                      batch_of, split_samples)
    from tvm_mpq.build import build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.models import load_model
    from tvm_mpq.numerics import sqnr_db
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.simulate import Simulator

    profile = load_profile("x86_avx2")
    out = {}
    for name in models:
        spec = load_model(name)
        n_cal, n_eval = (64, 16) if name == "minilm_l6" else (128, 32)
        calib, held = split_samples(spec, n_cal, n_eval)
        imported = import_model(spec.module, spec.example_inputs, name=name)
        stats = Simulator(imported).calibrate(calib)
        x1 = batch_of(held, 1)
        ref = spec.module(*[__import__("torch").as_tensor(a) for a in x1])
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).detach().numpy()
        row = {}
        for plan_name in ("fp32", "w8a8"):
            start = time.perf_counter()
            compiled = build(imported, make_plan(plan_name, imported, profile, stats, "minmax", name),
                             profile.tvm_target())
            y = compiled.run(list(x1))
            st = compiled.benchmark(list(x1), number=1, repeat=repeat, min_repeat_ms=0)
            row[f"tvm_{plan_name}"] = {**st.to_dict(), "sqnr_db_vs_torch_fp32": sqnr_db(ref, y),
                                       "compile_s": time.perf_counter() - start}
            log(f"{name} TVM {plan_name}: {st.median_ms:.2f} ms")
        with tempfile.TemporaryDirectory(prefix="tvm_mpq_onnx_") as tmp:
            execs = baseline_executors(spec, calib, Path(tmp))
            for label, ex in execs.items():
                if label == TORCH_FP32:
                    continue
                y = np.asarray(ex(x1))
                st = time_callable(lambda: ex(x1), repeat=repeat, warmup=3)
                row[label] = {**st.to_dict(), "sqnr_db_vs_torch_fp32": sqnr_db(ref, y)}
                log(f"{name} {label}: {st.median_ms:.2f} ms")
                if hasattr(ex, "close"):
                    ex.close()
        ort_int8 = ORT_DYNAMIC_INT8 if ORT_DYNAMIC_INT8 in row else ORT_STATIC_INT8
        row["ratios"] = {
            f"tvm_w8a8/{ORT_FP32}": row["tvm_w8a8"]["median_ms"] / row[ORT_FP32]["median_ms"],
            f"tvm_w8a8/{ort_int8}": row["tvm_w8a8"]["median_ms"] / row[ort_int8]["median_ms"],
            f"tvm_fp32/{ORT_FP32}": row["tvm_fp32"]["median_ms"] / row[ORT_FP32]["median_ms"],
        }
        out[name] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,minilm_l6")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--skip-layers", action="store_true", help="no per-workload sweep (section 3)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    set_tvm_threads(THREADS)
    set_torch_threads(THREADS)
    from tvm_mpq.hardware import load_profile

    target = load_profile("x86_avx2").tvm_target()
    models = [m for m in args.models.split(",") if m]
    result = {"machine": machine_info(), "threads": THREADS, "target": str(target)}
    t0 = time.perf_counter()
    result["peak"] = measure_peak(target)
    print(f"peak: int16-pair {result['peak']['int16']['gmacs_per_s']:.1f} GMAC/s, "
          f"fp32 FMA {result['peak']['float32']['gmacs_per_s']:.1f} GMAC/s", flush=True)
    result["reference_conv"] = ref = reference_conv(target, result["peak"], args.repeat)
    print(f"reference conv: TVM W8A8 {ref['tvm_W8A8']['median_ms']:.3f} ms vs ORT int8 "
          f"{ref['ort_int8']['median_ms']:.3f} ms (x{ref['ratio_W8A8_vs_ort_int8']:.2f}); TVM FP32 "
          f"{ref['tvm_FP32']['median_ms']:.3f} vs ORT fp32 {ref['ort_fp32']['median_ms']:.3f} ms "
          f"(x{ref['ratio_FP32_vs_ort_fp32']:.2f}); W8A8 at {100 * ref['tvm_W8A8_fraction_of_int_peak']:.0f} % "
          "of the int16-pair peak", flush=True)
    result["whole_models"] = whole_models(models, target, args.repeat)
    for name, row in result["whole_models"].items():
        print(name, {k: round(v, 3) for k, v in row["ratios"].items()}, flush=True)
    if not args.skip_layers:
        from benchmarks import layer_kernels as layer_bench

        result["layers"] = layer_bench.run(models, repeat=args.repeat, ort_repeat=args.repeat)
    result["seconds"] = time.perf_counter() - t0
    path = Path(args.out) if args.out else results_dir() / "kernels_avx2.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
