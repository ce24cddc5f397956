"""Profile a model on a device: compile every task for the profile's target, time it, store it.

Resumable by construction: tasks already in the store (same profile, device, workload, candidate) are
skipped, and each measurement is committed as soon as it completes, so an interrupted run loses at most
the measurement in flight. Compilation happens here (the host); timing happens where the runner says
(in-process, or on a remote device through a TVM RPC tracker).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..store import Measurement, MeasurementStore
from ..kernels import UNVERSIONED as UNVERSIONED_KERNELS
from .runner import local_device_name
from .tasks import Task, build_task_module


@dataclass
class ProfileReport:
    total: int = 0
    already_stored: int = 0
    measured: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (task, error)
    skipped_for_budget: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"total": self.total, "already_stored": self.already_stored, "measured": self.measured,
                "failed": [{"task": t, "error": e} for t, e in self.failed],
                "skipped_for_budget": self.skipped_for_budget, "seconds": self.seconds}


def compile_task(task: Task, target, workdir: Path, tuning_trials: int = 0, tuning_dir: Optional[Path] = None):
    """Build a task's module for `target` and export it; returns (library path, inputs).

    With `tuning_trials` > 0 the module is tuned by MetaSchedule first; its records live in `tuning_dir`
    (MetaSchedule's own JSON database), so a rerun reuses them instead of tuning again.
    """
    import tvm

    from ..kernels import kernel_library

    mod, inputs = build_task_module(task, kernels=kernel_library(target))
    if tuning_trials > 0:
        executable = _tuned_compile(mod, target, tuning_trials, tuning_dir or workdir / "tuning")
    elif target.kind.name == "cuda":  # GPU schedules: tvm_mpq/kernels/cuda_schedule.py
        from ..kernels.cuda_schedule import compile_relax

        executable = compile_relax(mod, target)
    else:
        from ..build import compile_module

        executable = compile_module(mod, target)
    path = workdir / f"task_{abs(hash((task.kind, task.workload, task.candidate))):x}.so"
    from ..build import _quiet_native_stderr

    with _quiet_native_stderr():
        executable.export_library(str(path))
    return path, inputs


def _is_scheduled(mod) -> bool:
    funcs = [f for _, f in mod.functions_items()]
    return bool(funcs) and all(f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False)) for f in funcs)


def _tuned_compile(mod, target, trials: int, work_dir: Path):
    """MetaSchedule-tune `mod` and compile it with the best records.

    Records stay in `work_dir` (MetaSchedule's JSON database); `tuned.json` there lists the modules
    already tuned with at least `trials` trials, so a rerun compiles from the records without tuning.
    """
    import json
    import os

    import tvm
    import tvm_ffi
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    if target.kind.name == "llvm" and "num-cores" not in target.attrs:  # MetaSchedule requires it
        target = tvm.target.Target({**dict(target.export()), "num-cores": os.cpu_count() or 1})
    # Tasks are the fused PrimFuncs: legalize and fuse as the CPU pipeline does, then tune those.
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
        ])(mod)
    index_path = work_dir / "tuned.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    key = f"{tvm_ffi.structural_hash(mod)}:{target.kind.name}:{target.attrs.get('mcpu', '')}"
    if index.get(key, 0) >= trials:
        database = ms.database.JSONDatabase(work_dir=str(work_dir))
    else:
        builder = ms.builder.LocalBuilder(timeout_sec=120, max_workers=1)  # 2-core hosts time out at 30 s
        # The hand-written kernels are tasks too; MetaSchedule's own check for scheduled ones reads the
        # task module's attributes, not its function's, so they are dropped here (tuning them fails).
        tasks = [t for t in ms.relax_integration.extract_tasks(mod, target, params={})
                 if not _is_scheduled(t.dispatched[0])]
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(work_dir))
        if contexts:
            database = ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                                     max_trials_global=trials, num_trials_per_iter=min(trials, 64),
                                     builder=builder)
        else:
            database = ms.database.JSONDatabase(work_dir=str(work_dir))
        index[key] = trials
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        tmp.replace(index_path)
    return ms.relax_integration.compile_relax(database, mod, target, params={})


def profile_tasks(
    tasks: Sequence[Task],
    *,
    profile,
    store: MeasurementStore,
    runner,
    device: str,
    budget_s: Optional[float] = None,
    progress: Callable[[int, int, str, float], None] = lambda done, total, what, eta: None,
    tuning_dir: Optional[Path] = None,
) -> ProfileReport:
    """Measure the tasks not yet stored for (profile, device); commit each one as it completes."""
    from ..kernels import kernels_id

    start = time.perf_counter()
    report = ProfileReport(total=len(tasks))
    target = profile.tvm_target()
    kernels = kernels_id(target)
    # measurements of other (older) kernels count as missing: they are measured again and replaced
    stored = {(m.kind, m.workload, m.candidate) for m in store.query(profile=profile.name, device=device)
              if m.meta.get("kernels", UNVERSIONED_KERNELS) == kernels}
    todo = [t for t in tasks if (t.kind, t.workload, t.candidate) not in stored]
    report.already_stored = len(tasks) - len(todo)
    trials = profile.measure.tuning_trials
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_profile_") as tmp:
        workdir = Path(tmp)
        for i, task in enumerate(todo):
            elapsed = time.perf_counter() - start
            if budget_s is not None and elapsed > budget_s:
                report.skipped_for_budget = len(todo) - i
                break
            eta = elapsed / i * (len(todo) - i) if i else float("nan")
            progress(i, len(todo), task.describe(), eta)
            task_start = time.perf_counter()
            try:
                library, inputs = compile_task(task, target, workdir, trials, tuning_dir)
                timing = runner.run(library, inputs)
            except Exception as err:  # one bad task must not lose the others; it is reported
                report.failed.append((task.describe(), f"{type(err).__name__}: {err}"[:500]))
                continue
            store.put(Measurement(
                profile=profile.name, device=device if device else timing.device, kind=task.kind,
                workload=task.workload, candidate=task.candidate, median_ms=timing.median_ms,
                min_ms=timing.min_ms, max_ms=timing.max_ms, std_ms=timing.std_ms,
                repeats=len(timing.per_repeat_ms), number=runner.timing.number, tuning_trials=trials,
                meta={"op": task.op, "macs": task.macs, "timed_on": timing.device, "kernels": kernels,
                      "seconds": time.perf_counter() - task_start},  # compile + timing wall time
            ))
            report.measured += 1
            library.unlink(missing_ok=True)
    progress(len(todo), len(todo), "done", 0.0)
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------- the profiling job


def tvm_mpq_home() -> Path:
    """Where tvm_mpq keeps measurements, latency models and caches: $TVM_MPQ_HOME or ~/.cache/tvm_mpq."""
    import os

    return Path(os.environ.get("TVM_MPQ_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tvm_mpq"))


def default_store_path() -> Path:
    return tvm_mpq_home() / "measurements.sqlite"


def latency_model_path(store_path: Path, profile_name: str) -> Path:
    """The profile's XGBoost latency model lives beside the store it was trained on."""
    return Path(store_path).with_name(f"{profile_name}.latency_model.json")




def train_latency_model(store: MeasurementStore, profile, store_path: Path, min_samples: int = 16):
    """Fit and save the profile's latency model on every layer measurement of the profile made with the
    target's current kernels; None if too few."""
    from ..cost_model.xgb import LatencyModel
    from ..kernels import kernels_id
    from .tasks import workload_from_key

    kernels = kernels_id(profile.tvm_target())
    samples = [(workload_from_key(m.workload), m.candidate, m.median_ms)
               for m in store.query(profile=profile.name, kind="layer")
               if m.meta.get("kernels", UNVERSIONED_KERNELS) == kernels]
    if len(samples) < min_samples:
        return None
    model = LatencyModel(profile=profile.name).fit(samples)
    model.save(latency_model_path(store_path, profile.name))
    return model


def profile_model(model_ref, hw, *, store_path=None, rpc: Optional[str] = None, budget_s: Optional[float] = None,
                  device: Optional[str] = None, timing=None, progress=None, log=lambda m: None,
                  sweep: int = 0, in_model: Optional[bool] = None) -> dict:
    """Measure every (workload, candidate) and convert of a model on a profile's device, plus `sweep`
    model-independent workloads (measure/sweep.py); then train the profile's latency model.
    `model_ref` may be None when only the sweep is measured.

    `in_model`: also time the model compiled at each candidate, layer by layer (`measure.in_model`);
    the latency tables then use those segments. Default: on where it can run (a model, measured on
    this machine, a kernel library that lowers every layer)."""
    from ..frontend import import_model
    from ..hardware import load_profile
    from ..models import load_model
    from .runner import LocalRunner, RPCRunner, TimingConfig
    from .tasks import model_tasks

    from .sweep import sweep_tasks

    profile = load_profile(hw) if isinstance(hw, str) else hw
    if model_ref is None and sweep <= 0:
        raise ValueError("nothing to profile: give a model, a sweep size, or both")
    spec = load_model(model_ref) if isinstance(model_ref, str) else model_ref
    store_path = Path(store_path) if store_path else default_store_path()
    store_path.parent.mkdir(parents=True, exist_ok=True)
    timing = timing or TimingConfig(number=profile.measure.number, repeat=profile.measure.repeat,
                                    min_repeat_ms=profile.measure.min_repeat_ms)
    rpc = rpc or None
    if rpc:
        runner = RPCRunner.from_spec(rpc, timing=timing)
        device = device or f"rpc:{runner.key}"
    else:
        runner = LocalRunner(timing)
        device = device or local_device_name()
    tasks = []
    if spec is not None:
        graph = import_model(spec.module, spec.example_inputs, name=spec.name,
                             unified_input_ops=profile.constraints.unified_input_ops).graph
        tasks = model_tasks(graph, profile)
    if sweep > 0:
        tasks += sweep_tasks(profile, sweep)
    name = spec.name if spec is not None else "sweep"
    log(f"{name}{f' + sweep of {sweep}' if sweep and spec else ''} on {profile.name} ({device}): "
        f"{len(tasks)} tasks, store {store_path}")
    from ..kernels import LIBRARY_LANES, kernel_library

    can_in_model = spec is not None and not rpc and kernel_library(profile.tvm_target()) in LIBRARY_LANES
    if in_model and not can_in_model:
        raise ValueError("in-model profiling needs a model, measurement on this machine (no --rpc) and a target "
                         "whose kernel library lowers every layer (x86_avx2, x86_avx512, x86_avx512_vnni)")
    in_model = can_in_model if in_model is None else in_model
    store = MeasurementStore(store_path)
    in_model_summary = None
    try:
        report = profile_tasks(tasks, profile=profile, store=store, runner=runner, device=device,
                               budget_s=budget_s, progress=progress or (lambda *a: None),
                               tuning_dir=store_path.with_name(f"{profile.name}.tuning"))
        model = train_latency_model(store, profile, store_path)
        measured_layers = len(store.query(profile=profile.name, kind="layer"))
        if in_model:
            in_model_summary = _profile_in_model(spec, profile, store, device, log)
    finally:
        store.close()
    summary = {"model": name, "sweep": sweep, "profile": profile.name, "device": device, "store": str(store_path),
               **report.to_dict(), "layer_measurements_for_profile": measured_layers,
               "latency_model": str(latency_model_path(store_path, profile.name)) if model else None,
               "in_model": in_model_summary}
    return summary


def _profile_in_model(spec, profile, store: MeasurementStore, device: str, log) -> dict:
    """In-model segments of the candidates whose build is not stored yet for this device and kernels, then
    the boundary builds (alternating precisions) not stored yet."""
    from ..frontend import import_model
    from ..kernels import kernels_id
    from .in_model import (IN_MODEL, build_candidates, measure_model, model_fingerprint,
                           parse_segment_key)

    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    kernels = kernels_id(profile.tvm_target())
    fingerprint = model_fingerprint(imported.graph)
    done, done_boundaries = set(), set()
    for m in store.query(profile=profile.name, device=device, kind=IN_MODEL):
        key = parse_segment_key(m.workload)
        if key is None or key.fingerprint != fingerprint or key.layer is not None or m.meta.get("kernels") != kernels:
            continue
        (done_boundaries.add(key.build) if key.build else done.add(m.candidate))
    todo = [c for c in build_candidates(profile) if c not in done]
    # homogeneous and boundary builds timed in one interleaved session: their differences are corrections
    result, edges = measure_model(imported, profile, candidates=todo, skip_boundaries=sorted(done_boundaries),
                                  device=device, store=store, log=log)
    return {"already_stored": sorted(done | done_boundaries),
            "measured": sorted(result.model_ms),
            "boundary_builds": sorted(edges.model_ms),
            "model_ms": {**result.model_ms, **edges.model_ms},
            "failed": {**result.failed, **edges.failed},
            "seconds": result.seconds}
