#!/usr/bin/env python3
"""Time a folder prepared by `prepare.py` on this machine: each task library and each whole model with TVM's
`time_evaluator`, and PyTorch on the same workloads in the same run.

Runs where TVM is not installed: only Python, numpy, (torch for the baselines) and the runtime bundle of
`bundle_runtime.py` (`--bundle`, put first on sys.path; `TVM_USE_RUNTIME_LIB=1` is set here). The CUDA
kernels were compiled by nvcc on the preparing host (`DIR/kernels/<sha256 of source>.fatbin`); this
script answers the runtime's compile callback from that folder, so nothing is compiled here.

Writes to `--out`:
- `measurements.jsonl`: the measurement store's export format (`tvm_mpq.store`: a header line, then one
  record per line), layer/convert tasks and whole models; `tvm-mpq store import` reads it. A record's
  `meta.torch` holds the PyTorch timings of its workload (never the record's own times).
- `models.json`: whole-model timings per model and plan, and the whole-model PyTorch baselines (plan
  "pytorch": the float model exported as ATen code without its weights, `torch_model_baselines`).
- `results.json`: everything, including failures, skipped items, the run's settings and each item's output
  check: its output against the reference `prepare.py` computed on the CPU from the same seeded inputs and
  weights (`compare`). A timing whose output disagrees goes to `wrong_output.jsonl` instead of the store file.
Each file is rewritten after every item, so a run stopped by its time limit keeps what it measured.

    python3 scripts/device/measure.py out/gpu/prepared --bundle out/gpu/runtime --out $OUT --budget-s 420
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

HEADER = {"tvm_mpq_measurements": 1}
KERNEL_SUFFIX = ".fatbin"


# ----------------------------------------------------------------------------- TVM runtime


def kernel_key(source) -> str:
    """SHA-256 of a CUDA source's UTF-8 text (as `tvm_mpq.kernels.cuda_schedule.kernel_key`)."""
    data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
    return hashlib.sha256(data).hexdigest()


def kernel_lookup(kernel_dir: Path):
    """The compile callback: CUDA source → the fatbin cross-compiled for it."""
    kernel_dir = Path(kernel_dir)

    def compile_from_dir(code):
        path = kernel_dir / f"{kernel_key(code)}{KERNEL_SUFFIX}"
        if not path.exists():
            raise RuntimeError(f"no cross-compiled kernel {path.name} in {kernel_dir}; rerun prepare.py")
        return bytearray(path.read_bytes())

    return compile_from_dir


def _preload_cudart() -> None:
    """libtvm_runtime_cuda needs libcudart.so.13: take the one already loaded (torch), else search."""
    import ctypes
    import glob

    try:
        import torch  # noqa: F401 - loads its CUDA libraries globally

        if torch.cuda.is_available():
            torch.cuda.init()
    except Exception:  # noqa: BLE001
        pass
    try:
        ctypes.CDLL("libcudart.so.13", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    patterns = [os.path.join(p, "nvidia", "**", "libcudart.so.13") for p in sys.path if p]
    patterns += ["/usr/local/cuda*/lib64/libcudart.so.13", "/usr/local/cuda*/lib/libcudart.so.13",
                 "/usr/lib/x86_64-linux-gnu/libcudart.so.13"]
    for pattern in patterns:
        for path in glob.glob(pattern, recursive=True):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


def load_runtime(bundle: Path | None, device_type: str, kernel_dir: Path | None):
    """Import tvm (runtime only) from `bundle`; for cuda also load the CUDA runtime module and register the
    kernel folder as the compile callback. Returns the tvm module."""
    if bundle is not None:
        sys.path.insert(0, str(Path(bundle).resolve()))
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    if device_type == "cuda":
        _preload_cudart()
    import tvm
    import tvm_ffi

    if device_type == "cuda":
        from tvm.base import _LOADED_LIBS
        from tvm_ffi.libinfo import load_lib_ctypes

        if "tvm_runtime_cuda" not in _LOADED_LIBS:  # runtime-only mode loads no device backend itself
            runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_GLOBAL")
        if kernel_dir is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", kernel_lookup(kernel_dir), override=True)
    return tvm


# ----------------------------------------------------------------------------- inputs


def make_array(spec: dict, rng: np.random.Generator, root: Path | None = None) -> np.ndarray:
    """An input or weight for a spec {"shape", "dtype"[, "file"]}: the saved file, else seeded random values
    (integers over the dtype's range up to ±127 / 0..255, floats N(0, 0.05))."""
    if spec.get("file"):
        return np.load(Path(root) / spec["file"], allow_pickle=False)
    shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 0.05).astype(dtype)
    if dtype.kind == "u":
        return rng.integers(0, min(255, np.iinfo(dtype).max) + 1, size=shape).astype(dtype)
    if dtype.kind == "i":
        return rng.integers(max(-127, np.iinfo(dtype).min), min(127, np.iinfo(dtype).max) + 1,
                            size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    raise ValueError(f"unsupported dtype {dtype}")


def entry_rng(entry: dict) -> np.random.Generator:
    """The generator of one item's random inputs and weights, seeded by the item (its task id, or model and
    plan), so `prepare.py` draws the same values for the reference output it computes."""
    key = entry.get("id") or f"{entry['model']}.{entry['plan']}"
    return np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def entry_arrays(entry: dict, folder: Path) -> list[np.ndarray]:
    """The arguments of an item's `main`: its inputs (saved files or random), then its lifted weights."""
    rng = entry_rng(entry)
    return [make_array(s, rng, folder) for s in entry["inputs"]] + [make_array(s, rng) for s in entry["weights"]]


# ----------------------------------------------------------------------------- output check

CHECK_POINTS = 4096  # output elements compared per item (all of a smaller output)
CHECK_MIN_SQNR_DB = 20.0  # below this the output is wrong, not rounded differently (see `compare`)


def flatten_outputs(value) -> list[np.ndarray]:
    """A VM result (a tensor or nested tuples of them) as a list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [a for v in value for a in flatten_outputs(v)]


def output_sample(outputs: list[np.ndarray], key: str) -> np.ndarray:
    """float32 values of the outputs (float32 or narrower: exact) at up to CHECK_POINTS positions, chosen by
    `key` (the same positions on both hosts)."""
    flat = np.concatenate([np.asarray(o, np.float32).reshape(-1) for o in outputs])
    if flat.size <= CHECK_POINTS:
        return flat
    rng = np.random.default_rng(int(hashlib.sha256(("points\0" + key).encode()).hexdigest()[:16], 16))
    return flat[np.sort(rng.choice(flat.size, CHECK_POINTS, replace=False))]


def compare(got: np.ndarray, ref: np.ndarray) -> dict:
    """How close an output sample is to the reference's. The GPU's float math rounds differently from the
    CPU reference's (FMA contraction, fp16 tensor cores, math functions), and in a quantized network such a
    difference can move a value across a rounding boundary of a later quantize, so outputs agree to tens of
    dB, not bit for bit; a kernel that computes the wrong thing lands near 0 dB. `ok`: bit-exact, or
    SQNR >= CHECK_MIN_SQNR_DB with non-finite values at the same positions."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return {"ok": False, "reason": f"{got.size} output values sampled, the reference has {ref.size}"}
    finite = np.isfinite(ref) & np.isfinite(got)
    same_nonfinite = bool(np.array_equal(~np.isfinite(ref), ~np.isfinite(got)))
    err = got[finite] - ref[finite]
    signal, noise = float(np.sum(ref[finite] ** 2)), float(np.sum(err ** 2))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    exact = bool(np.array_equal(got, ref, equal_nan=True))
    return {"ok": exact or (same_nonfinite and sqnr >= CHECK_MIN_SQNR_DB), "bit_exact": exact,
            "sqnr_db": sqnr if math.isfinite(sqnr) else str(sqnr),
            "max_abs_diff": float(np.max(np.abs(err))) if err.size else 0.0,
            "points": int(ref.size), "nonfinite_reference": int(np.sum(~np.isfinite(ref)))}


# ----------------------------------------------------------------------------- timing


def time_library(tvm, path: Path, device, arrays, number: int, repeat: int, min_repeat_ms: int, warmup: int = 1,
                 outputs: list | None = None):
    """Mean ms per call of each of `repeat` repeats of `main` (inputs and weights placed on the device once).
    With `outputs` (a list), the outputs of the first call are appended to it as numpy arrays."""
    from tvm.runtime.vm import VirtualMachine

    lib = tvm.runtime.load_module(str(path))
    vm = VirtualMachine(lib, device)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
    vm.set_input("main", *args)
    for i in range(max(warmup, 1 if outputs is not None else 0)):
        vm.invoke_stateful("main")
        if i == 0 and outputs is not None:
            outputs.extend(flatten_outputs(vm.get_outputs("main")))
    timer = vm.time_evaluator("invoke_stateful", device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    ms = [float(s) * 1e3 for s in timer("main").results]
    if len(ms) != repeat or not all(math.isfinite(v) and v > 0 for v in ms):
        raise RuntimeError(f"time_evaluator returned {ms!r}")
    return ms


def time_callable(fn, device_type: str, repeat: int, min_repeat_ms: int, warmup: int = 3):
    """Like time_evaluator for a Python callable: `number` raised until a repeat lasts `min_repeat_ms`;
    CUDA time from events (synchronised), CPU time from perf_counter."""
    import torch

    cuda = device_type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()

    def run(number):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t) * 1e3

    number = 1
    while True:
        total = run(number)
        if total >= min_repeat_ms or number >= 1 << 20:
            break
        number = min(1 << 20, max(number * 2, int(number * min_repeat_ms / max(total, 1e-3) * 1.1) + 1))
    return [run(number) / number for _ in range(repeat)], number


def torch_baselines(workload: dict, device_type: str, repeat: int, min_repeat_ms: int) -> dict:
    """PyTorch timings of a layer workload: fp16 and fp32 (cuBLAS / cuDNN on CUDA, TF32 off), and int8
    `torch._int_mm` for 2-D linear workloads it accepts. {name: {"median_ms", "per_repeat_ms", "number",
    "op"} or {"skipped": reason}}."""
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device(device_type)
    gen = torch.Generator(device="cpu").manual_seed(0)
    op = workload["op"]
    xs, ws = tuple(workload["input_shape"]), tuple(workload["weight_shape"])
    out: dict = {}

    def record(name, fn, what):
        try:
            per, number = time_callable(fn, device_type, repeat, min_repeat_ms)
            out[name] = {"median_ms": float(np.median(per)), "per_repeat_ms": per, "number": number, "op": what}
        except Exception as err:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            out[name] = {"skipped": f"{type(err).__name__}: {err}"[:300]}

    for dtype, name in ((torch.float16, "fp16"), (torch.float32, "fp32")):
        if dtype == torch.float16 and device_type == "cpu":
            out[name] = {"skipped": "fp16 baselines are timed on CUDA only"}
            continue
        x = torch.randn(xs, generator=gen).to(dev, dtype)
        w = torch.randn(ws, generator=gen).to(dev, dtype)
        if op == "conv2d":
            pt, pl, pb, pr = workload["padding"]
            if (pt, pl) != (pb, pr):  # asymmetric: pad outside the timed call, conv without padding
                x = F.pad(x, (pl, pr, pt, pb))
                pad = (0, 0)
            else:
                pad = (pt, pl)
            stride, dil, groups = tuple(workload["strides"]), tuple(workload["dilation"]), workload["groups"]
            record(name, lambda x=x, w=w: F.conv2d(x, w, None, stride, pad, dil, groups),
                   f"torch conv2d {'cuDNN' if device_type == 'cuda' else 'CPU'} {name}")
        elif op == "linear":
            x2 = x.reshape(-1, xs[-1])
            wt = w.t().contiguous()
            record(name, lambda x2=x2, wt=wt: torch.matmul(x2, wt),
                   f"torch matmul {'cuBLAS' if device_type == 'cuda' else 'CPU'} {name}")
        else:
            record(name, lambda x=x, w=w: torch.matmul(x, w),
                   f"torch matmul {'cuBLAS' if device_type == 'cuda' else 'CPU'} {name}")
    if op == "linear":
        m, k, n = int(np.prod(xs[:-1])), xs[-1], ws[0]
        if device_type != "cuda":
            out["int8"] = {"skipped": "torch._int_mm is timed on CUDA only"}
        elif m <= 16 or k % 8 or n % 8:
            out["int8"] = {"skipped": f"torch._int_mm needs M > 16 and K, N multiples of 8 (M={m}, K={k}, N={n})"}
        else:
            a = torch.randint(-127, 128, (m, k), generator=gen, dtype=torch.int8).to(dev)
            b = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8).to(dev).t()
            record("int8", lambda a=a, b=b: torch._int_mm(a, b), "torch._int_mm int8 -> int32")
    else:
        out["int8"] = {"skipped": f"no PyTorch int8 GPU kernel for {op}"
                       + (" (torch._int_mm is 2-D only)" if op == "matmul" else "")}
    return out


def torch_model_forward(entry: dict, folder: Path, device_type: str, params: dict | None = None):
    """(call, args) of a float model exported by `prepare.export_torch_model`: its ATen code executed with
    every `device(...)` it names mapped to this run's device; parameters seeded random N(0, 0.05) (timing does
    not depend on them) unless `params` ({placeholder name: tensor}) gives them; buffers, constants and
    inputs their saved values."""
    import torch

    dev = torch.device(device_type)
    namespace = {"torch": torch, "device": lambda *a, **k: dev, "inf": math.inf, "nan": math.nan}
    code_path = Path(folder) / entry["code"]
    exec(compile(code_path.read_text(), str(code_path), "exec"), namespace)  # noqa: S102 - our own export
    forward = namespace["forward"]
    values = np.load(Path(folder) / entry["values"], allow_pickle=False)
    gen = torch.Generator().manual_seed(int(hashlib.sha256(entry["model"].encode()).hexdigest()[:8], 16))
    args = []
    for p in entry["placeholders"]:
        if p["kind"] == "parameter":
            t = params[p["name"]] if params is not None else torch.randn(p["shape"], generator=gen) * 0.05
            t = t.to(getattr(torch, p["dtype"]))
        else:
            t = torch.from_numpy(np.array(values[p["name"]]))
        args.append(t.to(dev))
    return (lambda: forward(None, *args)), args


def torch_model_baselines(entry: dict, folder: Path, device_type: str, repeat: int, min_repeat_ms: int) -> dict:
    """Whole-model PyTorch timings of an exported float model, eager under `torch.no_grad`: fp32 (TF32 off)
    and, on CUDA, fp16 under `torch.autocast` (convs and matmuls in fp16 on tensor cores). Same result
    format as `torch_baselines`."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    call, _ = torch_model_forward(entry, folder, device_type)
    out: dict = {}
    variants = [("fp32", None)] + ([("fp16_autocast", torch.float16)] if device_type == "cuda" else [])
    for name, dtype in variants:
        def run(dtype=dtype):
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return call()
        try:
            per, number = time_callable(run, device_type, repeat, min_repeat_ms)
            out[name] = {"median_ms": float(np.median(per)), "per_repeat_ms": per, "number": number,
                         "op": f"torch eager {name} (exported ATen graph)"}
        except Exception as err:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            out[name] = {"skipped": f"{type(err).__name__}: {err}"[:300]}
    if device_type != "cuda":
        out["fp16_autocast"] = {"skipped": "fp16 baselines are timed on CUDA only"}
    return out


# ----------------------------------------------------------------------------- the run


def check_outputs(entry: dict, outputs: list[np.ndarray], folder: Path) -> dict:
    """`compare` of the item's outputs with its reference (`prepare.py`), or why there was none."""
    ref = entry.get("reference") or {}
    if not ref.get("file"):
        return {"ok": None, "reason": ref.get("skipped", "no reference prepared")}
    key = entry.get("id") or f"{entry['model']}.{entry['plan']}"
    return compare(output_sample(outputs, key), np.load(folder / ref["file"], allow_pickle=False))


def _check_line(check: dict) -> str:
    if check.get("ok") is None:
        return f"not checked ({check.get('reason')})"
    if check.get("bit_exact"):
        return "bit-exact"
    if "sqnr_db" not in check:
        return f"FAILED ({check.get('reason')})"
    sqnr = check["sqnr_db"]
    return (f"{'ok' if check['ok'] else 'WRONG'}, {sqnr if isinstance(sqnr, str) else f'{sqnr:.1f}'} dB, "
            f"max |diff| {check['max_abs_diff']:.3g}")


def estimate_seconds(manifest: dict, number: int, repeat: int, min_repeat_ms: int,
                     torch_baselines_on: bool = True, load_s: float = 0.15) -> float:
    """Seconds a run should take, from the settings alone (not a measurement): per library `load_s` plus
    `repeat` repeats of at least `min_repeat_ms` (a fast kernel) and one calibration pass; per layer
    workload the same for each PyTorch baseline (fp16, fp32, and int8 for linear), and two per exported
    float model (fp32, fp16)."""
    per_timing = (repeat + 1) * max(min_repeat_ms, 1) / 1e3
    items = len(manifest["tasks"]) + len(manifest["models"])
    total = items * (load_s + per_timing)
    if torch_baselines_on:
        workloads = {t["workload"]: t["op"] for t in manifest["tasks"] if t["kind"] == "layer"}
        total += sum((3 if op == "linear" else 2) * per_timing for op in workloads.values())
        total += 2 * per_timing * len(manifest.get("torch_models", []))
    return total


def _record(manifest, device_name, kind, workload, candidate, ms, number, meta):
    # the kernels id (library/version) the libraries were compiled with: latency tables use only
    # measurements of the kernels a model compiles with (`tvm_mpq.latency.build_table`)
    if manifest.get("kernels"):
        meta = {**meta, "kernels": manifest["kernels"]}
    return {"profile": manifest["profile"], "device": device_name, "kind": kind, "workload": workload,
            "candidate": candidate, "median_ms": float(np.median(ms)), "min_ms": float(min(ms)),
            "max_ms": float(max(ms)), "std_ms": float(np.std(ms)), "repeats": len(ms), "number": int(number),
            "tuning_trials": 0, "source": "measured", "meta": meta, "created_at": time.time()}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def model_key(entry: dict) -> tuple[str, str]:
    """(workload, candidate) of a whole-model record: the model and its input shapes; the plan name, with a
    hash of the per-layer choices for plans that are not homogeneous (mixed, plan files)."""
    workload = json.dumps({"model": entry["model"], "inputs": [[i["shape"], i["dtype"]] for i in entry["inputs"]]},
                          separators=(",", ":"))
    plan = entry["plan"].upper()
    if len(set(entry.get("layers", {}).values())) > 1 or entry["plan"] == "mixed":
        choices = json.dumps(entry["layers"], sort_keys=True).encode()
        plan = f"{entry['plan']}:{hashlib.sha256(choices).hexdigest()[:12]}"
    return workload, plan


def run(folder: Path, out: Path, *, bundle: Path | None = None, device_type: str | None = None,
        device_name: str | None = None, budget_s: float | None = None, limit: int | None = None,
        torch_baselines_on: bool = True, number: int | None = None, repeat: int | None = None,
        min_repeat_ms: int | None = None, fail_fast: int = 3, log=print) -> dict:
    start = time.perf_counter()
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != "tvm_mpq_device_bundle" or manifest.get("version") != 1:
        raise SystemExit(f"{folder}/manifest.json is not a tvm_mpq device bundle (version 1)")
    device_type = device_type or manifest["device_type"]
    settings = dict(manifest["measure"])
    number = number or settings.get("number", 10)
    repeat = repeat or settings.get("repeat", 5)
    min_repeat_ms = settings.get("min_repeat_ms", 0) if min_repeat_ms is None else min_repeat_ms
    kernel_dir = folder / "kernels"
    tvm = load_runtime(bundle, device_type, kernel_dir if device_type == "cuda" else None)
    device = tvm.cuda(0) if device_type == "cuda" else tvm.cpu(0)
    if device_name is None:
        if device_type == "cuda":
            import torch

            device_name = "cuda:" + torch.cuda.get_device_name(0).replace(" ", "_")
        else:
            device_name = f"local:{socket.gethostname()}"
    log(f"{len(manifest['tasks'])} tasks, {len(manifest['models'])} models on {device_name}; "
        f"number={number} repeat={repeat} min_repeat_ms={min_repeat_ms}; estimated "
        f"{estimate_seconds(manifest, number, repeat, min_repeat_ms, torch_baselines_on):.0f} s")

    records, results, models, skipped = [], [], [], []
    wrong_records: list[dict] = []  # timings of libraries whose output disagreed with the reference
    baselines: dict[str, dict] = {}

    def keep(item, record):
        """A timing goes to measurements.jsonl only if the library computed the right output."""
        if item["check"].get("ok") is False:
            item["wrong_output"] = True
            wrong_records.append(record)
        else:
            records.append(record)

    def flush():
        _write(out / "measurements.jsonl",
               "\n".join([json.dumps(HEADER)] + [json.dumps(r, sort_keys=True) for r in records]) + "\n")
        _write(out / "models.json", json.dumps(models, indent=1))
        if wrong_records:
            _write(out / "wrong_output.jsonl", "\n".join(json.dumps(r, sort_keys=True) for r in wrong_records) + "\n")
        _write(out / "results.json", json.dumps({
            "device": device_name, "device_type": device_type, "profile": manifest["profile"],
            "runtime": {"tvm_file": tvm.__file__, "runtime_only": bool(getattr(tvm.base, "_RUNTIME_ONLY", False))},
            "settings": {"number": number, "repeat": repeat, "min_repeat_ms": min_repeat_ms},
            "seconds": time.perf_counter() - start, "results": results, "models": models,
            "skipped_for_budget": skipped, "prepare_failures": manifest.get("failed", [])}, indent=1))

    def over_budget():
        return budget_s is not None and time.perf_counter() - start > budget_s

    def failing_from_start():  # the first items all failed: the setup is broken, do not spend device time
        done = models + results
        return len(done) >= fail_fast and all("error" in r for r in done)

    # whole models first: the fewest items, the most informative
    for entry in manifest["models"]:
        if failing_from_start():
            break
        if over_budget():
            skipped.append(f"model {entry['model']} {entry['plan']}")
            continue
        item = {"model": entry["model"], "plan": entry["plan"], "candidate_counts": entry.get("candidate_counts")}
        try:
            outputs: list = []
            ms = time_library(tvm, folder / entry["library"], device, entry_arrays(entry, folder), number, repeat,
                              min_repeat_ms, outputs=outputs)
            item["check"] = check_outputs(entry, outputs, folder)
            workload, candidate = model_key(entry)
            meta = {"model": entry["model"], "plan": entry["plan"], "candidate_counts": entry.get("candidate_counts"),
                    "min_repeat_ms": min_repeat_ms, "timed_by": "scripts/device/measure.py", "check": item["check"]}
            item.update(tvm_ms={"median": float(np.median(ms)), "per_repeat": ms})
            log(f"model {entry['model']} {entry['plan']}: {np.median(ms):.3f} ms; output check "
                f"{_check_line(item['check'])}")
            keep(item, _record(manifest, device_name, "model", workload, candidate, ms, number, meta))
        except Exception as err:  # noqa: BLE001
            item["error"] = f"{type(err).__name__}: {err}"[:2000]
            log(f"model {entry['model']} {entry['plan']}: FAILED {item['error'][:200]}")
        models.append(item)
        flush()

    # whole-model PyTorch baselines of the same models, right after the TVM libraries
    for entry in manifest.get("torch_models", []) if torch_baselines_on else []:
        if over_budget():
            skipped.append(f"model {entry['model']} pytorch")
            continue
        item = {"model": entry["model"], "plan": "pytorch"}
        try:
            item["torch_ms"] = torch_model_baselines(entry, folder, device_type, repeat, min_repeat_ms)
            log(f"model {entry['model']} pytorch: " + ", ".join(
                f"{k} {v['median_ms']:.3f} ms" if "median_ms" in v else f"{k} skipped"
                for k, v in item["torch_ms"].items()))
        except Exception as err:  # noqa: BLE001
            item["error"] = f"{type(err).__name__}: {err}"[:2000]
            log(f"model {entry['model']} pytorch: FAILED {item['error'][:200]}")
        models.append(item)
        flush()

    tasks = manifest["tasks"][:limit] if limit is not None else manifest["tasks"]
    for i, entry in enumerate(tasks):
        if failing_from_start():
            log(f"the first {fail_fast} items failed; stopping (see results.json)")
            break
        if over_budget():
            skipped.append(entry["describe"])
            continue
        item = {"id": entry["id"], "task": entry["describe"], "kind": entry["kind"], "candidate": entry["candidate"]}
        try:
            outputs = []
            ms = time_library(tvm, folder / entry["library"], device, entry_arrays(entry, folder), number, repeat,
                              min_repeat_ms, outputs=outputs)
            item["tvm_ms"] = float(np.median(ms))
            item["check"] = check_outputs(entry, outputs, folder)
            meta = {"op": entry["op"], "macs": entry["macs"], "timed_on": device_name,
                    "min_repeat_ms": min_repeat_ms, "schedule": sorted(set(entry.get("schedule", {}).values())),
                    "timed_by": "scripts/device/measure.py", "check": item["check"]}
            if entry["kind"] == "layer" and torch_baselines_on:
                key = entry["workload"]
                if key not in baselines:
                    baselines[key] = torch_baselines(json.loads(key), device_type, repeat, min_repeat_ms)
                meta["torch"] = {k: ({"median_ms": v["median_ms"], "op": v["op"]} if "median_ms" in v else v)
                                 for k, v in baselines[key].items()}
                item["torch_ms"] = {k: v.get("median_ms") for k, v in baselines[key].items()}
            keep(item, _record(manifest, device_name, entry["kind"], entry["workload"], entry["candidate"],
                               ms, number, meta))
            log(f"[{i + 1}/{len(tasks)}] {entry['describe']}: {item['tvm_ms']:.4f} ms; output check "
                f"{_check_line(item['check'])}")
        except Exception as err:  # noqa: BLE001
            item["error"] = f"{type(err).__name__}: {err}"[:2000]
            log(f"[{i + 1}/{len(tasks)}] {entry['describe']}: FAILED {item['error'][:200]}")
        results.append(item)
        if i % 10 == 9:
            flush()

    flush()
    checks = [r["check"] for r in results + models if "check" in r]
    return {"records": len(records), "failed": sum("error" in r for r in results + models),
            "checked": sum(c.get("ok") is not None for c in checks), "wrong": sum(c.get("ok") is False for c in checks),
            "aborted": failing_from_start(),
            "skipped_for_budget": len(skipped), "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="folder written by prepare.py")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "measure_out")))
    ap.add_argument("--bundle", type=Path, help="runtime bundle folder (bundle_runtime.py)")
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: the manifest's device type")
    ap.add_argument("--device-name", help="the store's device field (default cuda:<GPU name> or local:<host>)")
    ap.add_argument("--budget-s", type=float, help="stop starting new items after this many seconds")
    ap.add_argument("--limit", type=int, help="first N tasks only")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    ap.add_argument("--number", type=int)
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--min-repeat-ms", type=int)
    ap.add_argument("--estimate", action="store_true", help="print the estimated run time and exit")
    args = ap.parse_args(argv)
    if args.estimate:
        manifest = json.loads((args.folder / "manifest.json").read_text())
        m = manifest["measure"]
        print(json.dumps({"tasks": len(manifest["tasks"]), "models": len(manifest["models"]),
                          "estimated_s": round(estimate_seconds(
                              manifest, args.number or m.get("number", 10), args.repeat or m.get("repeat", 5),
                              m.get("min_repeat_ms", 0) if args.min_repeat_ms is None else args.min_repeat_ms,
                              not args.no_torch))}))
        return 0
    summary = run(args.folder, args.out, bundle=args.bundle, device_type=args.device, device_name=args.device_name,
                  budget_s=args.budget_s, limit=args.limit, torch_baselines_on=not args.no_torch,
                  number=args.number, repeat=args.repeat, min_repeat_ms=args.min_repeat_ms,
                  log=lambda s: print(s, flush=True))
    print(json.dumps(summary))
    return 2 if summary["aborted"] else 1 if summary["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
