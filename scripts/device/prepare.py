#!/usr/bin/env python3
"""Cross-compile, on this host, everything a GPU session times: every measurement task of the profile for
the given models (`tvm_mpq.measure.tasks.model_tasks` / `build_task_module`, the profiler's own task
list) and each whole model at FP16, W8A8 and a mixed plan. Writes a folder for `measure.py`:

    DIR/manifest.json       profile, target, timing settings, one entry per task and per model
    DIR/tasks/<id>.so       one exported library per task (weights lifted to parameters: shapes only)
    DIR/models/<m>.<p>.so   one per model and plan, its example inputs in DIR/models/<m>.<p>.input<i>.npy
    DIR/kernels/<sha>.fatbin  the CUDA kernels of every library, compiled here with nvcc
    DIR/references/<key>.npy  a sample of each library's output computed on this CPU (`make_reference`)
    DIR/models/<m>.torch.py   the float model as ATen code for the PyTorch whole-model baseline (`export_torch_model`)

Resumable: a task or model whose library and entry (`<lib>.json`) exist is not rebuilt.

    nice -n 15 .venv/bin/python scripts/device/prepare.py out/gpu/prepared \\
        --models efficientnet_lite0 minilm_l6 --hw cuda_sm90
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

MANIFEST_FORMAT = "tvm_mpq_device_bundle"
MANIFEST_VERSION = 1
PLANS = ("fp16", "w8a8", "mixed")


def task_id(task) -> str:
    return hashlib.sha256(f"{task.kind}\0{task.workload}\0{task.candidate}".encode()).hexdigest()[:20]


def _specs(arrays) -> list[dict]:
    return [{"shape": [int(v) for v in a.shape], "dtype": str(a.dtype)} for a in arrays]


def compile_for(mod, target, kernel_dir: Path):
    """(executable, {"weights", "kernels", "schedule"}) for `mod` on `target`. CUDA: the GPU schedule,
    weights lifted to parameters, kernels cross-compiled with nvcc. Other targets: the compile path's own
    build (`tvm_mpq.build.compile_module`)."""
    if target.kind.name == "cuda":
        from tvm_mpq.kernels import cuda_schedule

        log, lifted = {}, []
        executable = cuda_schedule.compile_relax(mod, target, log, lifted)
        keys = cuda_schedule.cross_compile_kernels(executable, target, kernel_dir)
        return executable, {"weights": [{"shape": s, "dtype": d} for s, d in lifted], "kernels": keys,
                            "schedule": log}
    from tvm_mpq.build import compile_module

    return compile_module(mod, target), {"weights": [], "kernels": [], "schedule": {}}


@functools.lru_cache(maxsize=None)
def _measure_module():
    """scripts/device/measure.py (the device side), for the seeded arrays and output sampling it uses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tvm_mpq_device_measure", Path(__file__).with_name("measure.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_reference(mod, entry: dict, target, out: Path) -> dict:
    """The output the device library must reproduce, computed here: `mod` built for this CPU by TVM's generic
    pipeline without schedules (`cuda_schedule.compile_reference`; a CPU profile's own target, else plain
    LLVM), run on the seeded inputs and weights the measure script draws for the entry
    (`measure.entry_arrays`). A sample of the output (`measure.output_sample`) goes to
    DIR/references/<key>.npy; the measure script compares the device's output with it. Returns the entry's
    "reference" field: {"file", "points", "nonfinite"} or {"skipped": why}."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from tvm_mpq.kernels.cuda_schedule import compile_reference

    measure = _measure_module()
    key = entry.get("id") or f"{entry['model']}.{entry['plan']}"
    lifted = [] if entry["weights"] else None
    try:
        executable = compile_reference(mod, lifted, None if target.kind.name == "cuda" else target)
        expected = [(list(w["shape"]), w["dtype"]) for w in entry["weights"]]
        if lifted is not None and [(list(s), d) for s, d in lifted] != expected:
            return {"skipped": "the CPU build lifted other weights than the device build"}
        vm = VirtualMachine(executable, tvm.cpu())
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in measure.entry_arrays(entry, out)])
        sample = measure.output_sample(measure.flatten_outputs(result), key)
    except Exception as err:  # noqa: BLE001 - the library is still timed, unchecked
        return {"skipped": f"reference failed: {type(err).__name__}: {err}"[:500]}
    path = out / "references" / f"{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, sample, allow_pickle=False)
    return {"file": str(path.relative_to(out)), "points": int(sample.size),
            "nonfinite": int(np.sum(~np.isfinite(sample)))}


def _export(executable, path: Path) -> None:
    from tvm_mpq.build import _quiet_native_stderr

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.so")
    with _quiet_native_stderr():
        executable.export_library(str(tmp))
    tmp.replace(path)


def _cached(entry_path: Path, lib: Path):
    if entry_path.exists() and lib.exists():
        return json.loads(entry_path.read_text())
    return None


def prepare_tasks(tasks, target, out: Path, *, models_of=None, references: bool = True,
                  log=print) -> tuple[list, list]:
    """Compile and export each task (and its reference output, `make_reference`); returns (entries, failures)."""
    from tvm_mpq.kernels import kernel_library
    from tvm_mpq.measure.tasks import build_task_module

    kernels = kernel_library(target)  # the kernel library the compiled model uses, as the profiler does
    entries, failed = [], []
    for i, task in enumerate(tasks):
        tid = task_id(task)
        lib = out / "tasks" / f"{tid}.so"
        entry_path = lib.with_suffix(".json")
        entry = _cached(entry_path, lib)
        if entry is None or (references and "reference" not in entry):
            start = time.perf_counter()
            try:
                mod, inputs = build_task_module(task, kernels=kernels)
                executable, extra = compile_for(mod, target, out / "kernels")
                _export(executable, lib)
            except Exception as err:  # one task must not stop the others; it is listed
                failed.append({"id": tid, "task": task.describe(), "error": f"{type(err).__name__}: {err}"[:2000]})
                log(f"[{i + 1}/{len(tasks)}] FAILED {task.describe()}: {type(err).__name__}")
                continue
            entry = {"id": tid, "kind": task.kind, "workload": task.workload, "candidate": task.candidate,
                     "op": task.op, "macs": task.macs, "describe": task.describe(),
                     "library": str(lib.relative_to(out)), "inputs": _specs(inputs), **extra,
                     "compile_s": round(time.perf_counter() - start, 3)}
            if references:
                entry["reference"] = make_reference(mod, entry, target, out)
            entry_path.write_text(json.dumps(entry))
            log(f"[{i + 1}/{len(tasks)}] {task.describe()} ({entry['compile_s']:.1f} s)")
        entry["models"] = sorted(models_of.get((task.kind, task.workload, task.candidate), ())) if models_of else []
        entries.append(entry)
    return entries, failed


def mixed_plan_layers(graph, profile) -> dict[str, str]:
    """A hand-written mixed plan, per quantizer group: W4A16 for groups of batch-1 linear layers (GEMV:
    memory-bound, where 4-bit weights can pay); FP16 for groups holding the first or last layer, a depthwise
    conv or an activation x activation matmul; W8A8 for the rest. A choice the profile lacks becomes FP16, else FP32."""
    names = list(graph.layers)
    ends = {names[0], names[-1]}
    layers = {}
    for group in graph.groups:
        members = [graph.layers[n] for n in group.layers]
        if all(m.op_type == "linear" and int(np.prod(m.workload.input_shape[:-1])) == 1 for m in members):
            choice = "W4A16"
        elif ends & set(group.layers) or any(
                m.op_type == "matmul" or (m.op_type == "conv2d" and m.workload.groups > 1) for m in members):
            choice = "FP16"
        else:
            choice = "W8A8"
        for fallback in ("FP16", "FP32"):
            if all(profile.supports(m.op_type, choice) for m in members):
                break
            choice = fallback
        layers.update({n: choice for n in group.layers})
    for name in names:  # every layer is in a group; this only guards a graph without groups
        layers.setdefault(name, "FP16" if profile.supports(graph.layers[name].op_type, "FP16") else "FP32")
    return layers


def export_torch_model(spec, out: Path) -> dict:
    """The float model for the measure script's whole-model PyTorch baseline, without its weights:
    `torch.export`'s ATen graph as Python code (DIR/models/<m>.torch.py), its placeholders in call order
    with shapes and dtypes (parameters get seeded random values there, like the TVM libraries' weights),
    and the values of its buffers, constants and inputs, which are small and which the graph depends on
    (batch-norm statistics, position ids) in DIR/models/<m>.torch.npz. Returns the manifest entry."""
    import torch
    from torch.export.graph_signature import InputKind

    code_path = out / "models" / f"{spec.name}.torch.py"
    values_path = code_path.with_suffix(".npz")
    ep = torch.export.export(spec.module.eval(), tuple(spec.example_inputs))
    named = {**dict(ep.named_buffers()), **dict(ep.constants)}
    placeholders, values, user = [], {}, iter(spec.example_inputs)
    for input_spec in ep.graph_signature.input_specs:
        name = input_spec.arg.name
        if input_spec.kind == InputKind.PARAMETER:
            tensor, kind = ep.state_dict[input_spec.target], "parameter"
        elif input_spec.kind == InputKind.USER_INPUT:
            tensor, kind = next(user), "input"
        elif input_spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor, kind = named[input_spec.target], "value"
        else:
            raise ValueError(f"{spec.name}: unsupported exported input {input_spec.kind} ({name})")
        placeholders.append({"name": name, "kind": kind, "shape": [int(v) for v in tensor.shape],
                             "dtype": str(tensor.dtype).replace("torch.", "")})
        if kind != "parameter":
            values[name] = tensor.detach().cpu().numpy()
    code_path.parent.mkdir(parents=True, exist_ok=True)
    code_path.write_text(ep.graph_module.code)
    np.savez(values_path, **values)
    return {"model": spec.name, "code": str(code_path.relative_to(out)), "values": str(values_path.relative_to(out)),
            "placeholders": placeholders}


def plan_files_for(model: str, plan_files: dict | None) -> dict[str, Path]:
    """{plan name: path} of the plan files (`--plan-file NAME=PATH`) written for `model` (their `model:`)."""
    from tvm_mpq.plan import Plan

    return {name: Path(path) for name, path in (plan_files or {}).items() if Plan.load(path).model == model}


def prepare_model(spec, profile, plans, out: Path, *, calib_samples: int = 8, references: bool = True,
                  plan_files: dict | None = None, log=print) -> tuple[list, list]:
    """Compile `spec` at each plan, and at each of `plan_files` ({name: plan YAML}, e.g. a `tvm-mpq search`
    result) written for it (and each library's reference output, `make_reference`); returns (entries,
    failures)."""
    files = plan_files_for(spec.name, plan_files)
    plans = list(plans) + [name for name in files if name not in plans]
    from tvm_mpq.build import lower
    from tvm_mpq.frontend import import_model
    from tvm_mpq.kernels import kernel_library
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.plan import Plan
    from tvm_mpq.simulate import Simulator

    target = profile.tvm_target()
    pending = []
    for plan in plans:
        lib = out / "models" / f"{spec.name}.{plan}.so"
        entry = _cached(lib.with_suffix(".json"), lib)
        if entry is None or (references and "reference" not in entry):
            pending.append(plan)
    entries, failed = [], []
    imported = stats = None
    if pending:
        imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                                unified_input_ops=profile.constraints.unified_input_ops)
        stats = Simulator(imported).calibrate(spec.calibration(calib_samples))
    example = [t.detach().cpu().numpy() for t in spec.example_inputs]
    for plan in plans:
        lib = out / "models" / f"{spec.name}.{plan}.so"
        entry = _cached(lib.with_suffix(".json"), lib)
        if entry is None or (references and "reference" not in entry):
            start = time.perf_counter()
            try:
                draft = (Plan(mixed_plan_layers(imported.graph, profile)) if plan == "mixed"
                         else files.get(plan, plan))
                resolved = make_plan(draft, imported, profile, stats, "minmax", spec.name)
                mod = lower(imported, resolved, kernel_library(target))
                executable, extra = compile_for(mod, target, out / "kernels")
                _export(executable, lib)
            except Exception as err:
                failed.append({"model": spec.name, "plan": plan, "error": f"{type(err).__name__}: {err}"[:2000],
                               "traceback": traceback.format_exc()[-3000:]})
                log(f"model {spec.name} {plan}: FAILED {type(err).__name__}: {err}")
                continue
            inputs = []
            for i, a in enumerate(example):
                path = lib.with_name(f"{spec.name}.{plan}.input{i}.npy")
                np.save(path, a, allow_pickle=False)
                inputs.append({**_specs([a])[0], "file": str(path.relative_to(out))})
            counts: dict[str, int] = {}
            for c in resolved.layers.values():
                counts[c] = counts.get(c, 0) + 1
            entry = {"model": spec.name, "plan": plan, "library": str(lib.relative_to(out)), "inputs": inputs,
                     **extra, "layers": dict(resolved.layers), "candidate_counts": counts,
                     "compile_s": round(time.perf_counter() - start, 3)}
            if references:
                entry["reference"] = make_reference(mod, entry, target, out)
            lib.with_suffix(".json").write_text(json.dumps(entry))
            log(f"model {spec.name} {plan}: {counts} ({entry['compile_s']:.1f} s)")
        entries.append(entry)
    return entries, failed


def prepare(out: Path, model_names, hw: str = "cuda_sm90", plans=PLANS, *, tasks: bool = True,
            limit: int | None = None, calib_samples: int = 8, references: bool = True,
            plan_files: dict | None = None, log=print) -> dict:
    """Everything into `out`; returns the manifest (also written to out/manifest.json)."""
    import tvm

    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.measure.tasks import model_tasks
    from tvm_mpq.models import load_model
    from tvm_mpq.plan import Plan

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(hw)
    target = profile.tvm_target()
    specs = [load_model(n) for n in model_names]
    for name, path in (plan_files or {}).items():
        written_for = Plan.load(path).model
        if written_for not in model_names:
            raise SystemExit(f"plan file {name}={path} is for model {written_for!r}, which is not in --models "
                             f"({', '.join(model_names)}); add it or drop the plan file")
    all_tasks, models_of = [], {}
    if tasks:
        for spec in specs:
            graph = import_model(spec.module, spec.example_inputs, name=spec.name,
                                 unified_input_ops=profile.constraints.unified_input_ops).graph
            for t in model_tasks(graph, profile):
                key = (t.kind, t.workload, t.candidate)
                if key not in models_of:
                    all_tasks.append(t)
                models_of.setdefault(key, set()).add(spec.name)
        if limit is not None:
            all_tasks = all_tasks[:limit]
    log(f"{len(all_tasks)} tasks for {', '.join(model_names)} on {profile.name}")
    task_entries, failed = prepare_tasks(all_tasks, target, out, models_of=models_of, references=references,
                                         log=log)
    model_entries, torch_models = [], []
    for spec in specs:
        if plans:
            e, f = prepare_model(spec, profile, plans, out, calib_samples=calib_samples, references=references,
                                 plan_files=plan_files, log=log)
            model_entries += e
            failed += f
            try:
                torch_models.append(export_torch_model(spec, out))
            except Exception as err:  # noqa: BLE001 - the TVM libraries are still timed
                failed.append({"model": spec.name, "plan": "torch", "error": f"{type(err).__name__}: {err}"[:2000]})
    from tvm_mpq.kernels import kernels_id

    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "profile": profile.name,
        "kernels": kernels_id(target),
        "target": dict(profile.target), "device_type": "cuda" if target.kind.name == "cuda" else "cpu",
        "measure": profile.measure.to_dict(), "tvm": tvm.__version__, "created_at": time.time(),
        "tasks": task_entries, "models": model_entries, "torch_models": torch_models, "failed": failed,
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "minilm_l6"])
    ap.add_argument("--hw", default="cuda_sm90")
    ap.add_argument("--plans", nargs="*", default=list(PLANS), choices=PLANS)
    ap.add_argument("--plan-file", action="append", default=[], metavar="NAME=PATH",
                    help="also compile the model a plan YAML names (its `model:`) at that plan, under NAME, e.g. "
                         "searched=out/gpu/search_minilm/plan.yaml from `tvm-mpq search --hw cuda_sm90`")
    ap.add_argument("--no-tasks", action="store_true", help="whole models only")
    ap.add_argument("--limit", type=int, help="first N tasks only")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--no-references", action="store_true",
                    help="skip the CPU reference outputs the measure script checks the device's against")
    args = ap.parse_args(argv)
    plan_files = {}
    for item in args.plan_file:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            ap.error(f"--plan-file {item!r}: expected NAME=PATH of an existing plan YAML")
        if name in PLANS:
            ap.error(f"--plan-file {item!r}: {name!r} is a built-in plan name; pick another")
        plan_files[name] = path
    m = prepare(args.out, args.models, args.hw, tuple(args.plans), tasks=not args.no_tasks, limit=args.limit,
                calib_samples=args.calib_samples, references=not args.no_references, plan_files=plan_files,
                log=lambda s: print(s, flush=True))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps({"tasks": len(m["tasks"]), "models": len(m["models"]), "failed": m["failed"],
                      "bytes": size}, indent=1))
    return 1 if m["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
