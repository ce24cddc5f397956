"""What the tvm_mpq workflow costs on this machine, and how that cost grows, measured in one run.

1. Cost: wall time of profiling (`profile_tasks` over every task of the model, into a fresh store, so
   nothing is reused) and of each search phase (calibration, phase 1, 2, 3: the `timings` the search
   returns, with a fresh phase-1 cache), each stage in its own spawned process so that its peak RSS
   (`VmHWM` of that process: `ru_maxrss` is not used, Linux carries it over from the parent through fork
   and exec, so a stage spawned by a large parent read the parent's peak) is its own and not cumulative. Inside the search
   process the RSS is also sampled, which gives a peak per phase (a lower bound: sampled).
2. Scaling: profiling and search time against model depth (a family of synthetic CNNs with N conv
   blocks, each block's channel count different so that every layer is a distinct workload and has its
   own tasks), and search time against the calibration-set size on one of them. Each series gets a
   least-squares fit of log time vs log size (the exponent) and a linear fit time = a + b·n, residuals
   included.

    python benchmarks/workflow_cost.py            # depths 2..32 blocks, calibration 16..512 (~7 min on 2 idle cores)
    python benchmarks/workflow_cost.py --fast     # tiny sizes, into benchmarks/results/fast/
    python benchmarks/workflow_cost.py --depths 2,4,8 --calib-sizes 16,32 --ref-blocks 4 --ref-calib 16

Writes workflow_cost.json and workflow_cost.png under benchmarks/results/ (or results/fast/). The
stages run one after another (one heavy process at a time); the load average is recorded around each.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir, write_result  # noqa: E402

# (depths in conv blocks, calibration sizes, reference model's blocks, reference calibration size)
DEFAULT = {"depths": (2, 4, 8, 16, 32), "calib_sizes": (16, 32, 64, 128, 256, 512), "ref_blocks": 8, "ref_calib": 64}
FAST = {"depths": (1, 2, 4), "calib_sizes": (8, 16, 32), "ref_blocks": 2, "ref_calib": 16}
RESOLUTION = 16  # input [1, 3, 16, 16]: small enough that profiling, not the simulator, dominates
BASE_WIDTH = 16  # channels of the stem; block i has BASE_WIDTH + i + 1 (distinct workloads per layer)
MIN_SQNR_DB = 30.0
RSS_SAMPLE_S = 0.01
MIB = 1024.0  # /proc's VmHWM is in KiB


def peak_rss_mib() -> float:
    """This process image's peak resident set size (VmHWM). Not `ru_maxrss`: Linux keeps the maximum of
    the parent's at fork through exec, so a spawned child would report its parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / MIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


# ---------------------------------------------------------------------- the synthetic model family


def synthetic_cnn(blocks: int = 8, resolution: int = RESOLUTION, width: int = BASE_WIDTH, seed: int = 0):
    """A ModelSpec: stem conv3x3 (3→width) + BN + ReLU, `blocks` × [conv3x3 + BN + ReLU] with width+1,
    width+2, … channels, global average pool, linear → 10. Untrained, seeded, with non-trivial BN statistics (as
    tiny_cnn); Gaussian calibration. `blocks` + 2 quantizable layers."""
    import torch
    import torch.nn as nn

    from tvm_mpq.models import ModelSpec

    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be an integer >= 1, got {blocks!r}")
    if not isinstance(resolution, int) or resolution < 4:
        raise ValueError(f"resolution must be an integer >= 4, got {resolution!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    torch.manual_seed(seed)
    widths = [width] + [width + i + 1 for i in range(blocks)]
    layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10)]
    model = nn.Sequential(*layers).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)

    def calibration(n: int, calib_seed: int = 1234) -> list[tuple]:
        gen = torch.Generator().manual_seed(calib_seed)
        return [(torch.randn(1, 3, resolution, resolution, generator=gen),) for _ in range(n)]

    return ModelSpec(
        name=f"synthetic_cnn_{blocks}b_{width}c_{resolution}px",
        module=model,
        example_inputs=(torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)),),
        calibration=calibration,
        description=f"untrained seeded CNN, {blocks} conv blocks, input [1,3,{resolution},{resolution}]",
    )


# ---------------------------------------------------------------------- stages (each in a spawned process)


def _profile_for(hw: str, options: dict):
    """The hardware profile, with the smoke-test knobs of `options` applied (none by default)."""
    from tvm_mpq.hardware import load_profile

    profile = load_profile(hw)
    if options.get("candidates"):  # fewer candidates, fewer tasks
        allowed = {op: tuple(c for c in names if c in options["candidates"]) or ("FP32",)
                   for op, names in profile.candidates.items()}
        profile = replace(profile, candidates=allowed)
    if options.get("quick_timing"):  # shorter timing per task (not the profile's own settings)
        profile = replace(profile, measure=replace(profile.measure, number=1, repeat=2, min_repeat_ms=0))
    return profile


def _warm_imports() -> float:
    """Import what the stages import lazily (TVM, torch.export, the search and profiling modules) and
    return the seconds it took. Done before any stage is timed: otherwise the first phase to touch TVM
    (phase 2, through the target) or torch.export (calibration) carries a one-off import of seconds,
    which says nothing about how the work grows."""
    t = time.perf_counter()
    import torch.export  # noqa: F401
    import tvm  # noqa: F401

    import tvm_mpq.frontend  # noqa: F401
    import tvm_mpq.latency  # noqa: F401
    import tvm_mpq.measure.profiler  # noqa: F401
    import tvm_mpq.search.api  # noqa: F401
    import tvm_mpq.simulate  # noqa: F401

    return time.perf_counter() - t


class _CpuShare:
    """CPU time of this process (and its subprocesses) and of everything else on the machine while the
    block runs, from getrusage and /proc/stat: how much of the 2 cores other work took during a stage."""

    def _snapshot(self):
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        own = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        return time.perf_counter(), (v[0] + v[1] + v[2] + v[5] + v[6]) / ticks, v[7] / ticks, own

    def __enter__(self):
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc):
        (t0, busy0, steal0, own0), (t1, busy1, steal1, own1) = self._start, self._snapshot()
        wall, own = t1 - t0, own1 - own0
        others = max(0.0, (busy1 - busy0) - own)  # tick granularity: small negatives are rounding
        self.result = {"wall_s": wall, "own_cpu_s": own, "others_cpu_s": others,
                       "others_cores": others / wall if wall > 0 else None, "steal_s": steal1 - steal0}


class _RssSampler:
    """Samples this process's resident set size (from /proc/self/statm) every `interval` seconds."""

    def __init__(self, interval: float = RSS_SAMPLE_S):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / (1 << 20)

    def _loop(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._rss()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), self._rss()))

    def peak_between(self, start: float, end: float):
        inside = [r for t, r in self.samples if start <= t <= end]
        return max(inside) if inside else None


def _stage_profile(blocks: int, hw: str, options: dict, store_path: str) -> dict:
    """Profile every task of the synthetic model into `store_path` (must not exist yet)."""
    started = time.perf_counter()
    imports_s = _warm_imports()
    import torch

    from tvm_mpq.frontend import import_model
    from tvm_mpq.measure import LocalRunner, TimingConfig
    from tvm_mpq.measure.profiler import local_device_name, profile_tasks
    from tvm_mpq.measure.tasks import LAYER, model_tasks
    from tvm_mpq.store import MeasurementStore

    if Path(store_path).exists():
        raise RuntimeError(f"{store_path} exists: profiling must start from an empty store")
    profile = _profile_for(hw, options)
    spec = synthetic_cnn(blocks, options["resolution"], options["width"])
    rss_ready = peak_rss_mib()
    load_before = os.getloadavg()
    t = time.perf_counter()
    graph = import_model(spec.module, spec.example_inputs, name=spec.name,
                         unified_input_ops=profile.constraints.unified_input_ops).graph
    tasks = model_tasks(graph, profile)
    analyse_s = time.perf_counter() - t
    m = profile.measure
    runner = LocalRunner(TimingConfig(number=m.number, repeat=m.repeat, min_repeat_ms=m.min_repeat_ms))
    store = MeasurementStore(store_path)
    try:
        with _CpuShare() as cpu:
            t = time.perf_counter()
            report = profile_tasks(tasks, profile=profile, store=store, runner=runner, device=local_device_name())
            profile_s = time.perf_counter() - t
        per_task = [x.meta.get("seconds") for x in store.query(profile=profile.name)]
    finally:
        store.close()
    if report.failed or report.already_stored or report.measured != len(tasks):
        raise RuntimeError(f"profiling {spec.name}: {report.measured} of {len(tasks)} tasks measured, "
                           f"{report.already_stored} already stored, failures: {report.failed[:3]}")
    per_task = [s for s in per_task if s is not None]
    return {
        "model": spec.name, "blocks": blocks, "layers": len(graph.layers), "groups": len(graph.groups),
        "macs": int(sum(l.macs for l in graph.layers.values())),
        "tasks": len(tasks), "layer_tasks": sum(t.kind == LAYER for t in tasks),
        "convert_tasks": sum(t.kind != LAYER for t in tasks),
        "analyse_s": analyse_s, "profile_s": profile_s,
        "per_task_s": {"median": float(np.median(per_task)), "mean": float(np.mean(per_task)),
                       "max": float(np.max(per_task))} if per_task else None,
        "measure": m.to_dict(), "torch_threads": torch.get_num_threads(), "imports_s": imports_s,
        "rss_after_imports_mib": rss_ready,
        "peak_rss_mib": peak_rss_mib(),
        "load_average": {"before": load_before, "after": os.getloadavg()}, "cpu": cpu.result,
        "process_s": time.perf_counter() - started,
    }


def _stage_search(blocks: int, calib: int, hw: str, options: dict, store_path: str) -> dict:
    """One search of the synthetic model with `calib` calibration samples, on the profiled store."""
    started = time.perf_counter()
    imports_s = _warm_imports()
    import torch

    from tvm_mpq.search.api import SearchConfig, search

    profile = _profile_for(hw, options)
    spec = synthetic_cnn(blocks, options["resolution"], options["width"])
    scored = max(2, calib // 4)  # sensitivity and held-out samples in the defaults' ratio (256 : 64 : 64)
    cfg = SearchConfig(calib_samples=calib, sensitivity_samples=scored, eval_samples=scored,
                       min_sqnr_db=MIN_SQNR_DB)
    rss_ready = peak_rss_mib()
    load_before = os.getloadavg()
    marks = {}

    def progress(done, total, what):  # phase 1 reports before each evaluation and once at the end
        marks.setdefault("phase1_start", time.perf_counter())
        if what == "done":
            marks["phase1_end"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="workflow_cost_cache_") as cache_dir, _RssSampler() as rss, \
            _CpuShare() as cpu:
        t0 = time.perf_counter()
        result = search(spec, profile, cfg, store_path=store_path, cache_dir=Path(cache_dir), progress=progress)
        t_end = time.perf_counter()
    timings = dict(result.timings)
    # phase windows: calibration from the call to phase 1's first progress report, phase 1 to its last,
    # then phases 2 and 3 for their measured durations (the analysis after phase 3 is in none)
    p1_start, p1_end = marks.get("phase1_start", t0 + timings["calibrate_s"]), marks.get("phase1_end")
    p1_end = p1_end if p1_end is not None else p1_start + timings["phase1_s"]
    p2_end = p1_end + timings["phase2_s"]
    windows = {"calibrate_s": (t0, p1_start), "phase1_s": (p1_start, p1_end), "phase2_s": (p1_end, p2_end),
               "phase3_s": (p2_end, p2_end + timings["phase3_s"])}
    table = result.latency_table  # measured / predicted / roofline entries: all measured after profiling
    sources = table.sources() if table is not None and hasattr(table, "sources") else None
    return {
        "model": spec.name, "blocks": blocks, "calib_samples": calib, "config": cfg.to_dict(),
        "timings_s": timings, "wall_s": t_end - t0, "imports_s": imports_s,
        # in total_s but in no phase: the cache key and the analysis after phase 3 (greedy vs exact MILP)
        "unattributed_s": timings["total_s"] - sum(timings[k] for k in PHASES[:-1]),
        "phase1_evaluations": len(result.sensitivity.sqnr_db) - len(result.group_layers),
        "front_points": len(result.front), "notes": list(result.notes),
        "latency_sources": sources,
        "torch_threads": torch.get_num_threads(),
        "rss_after_imports_mib": rss_ready,
        "peak_rss_mib": peak_rss_mib(),
        "sampled_peak_rss_mib": {k: rss.peak_between(*w) for k, w in windows.items()},
        "rss_sample_interval_s": RSS_SAMPLE_S,
        "load_average": {"before": load_before, "after": os.getloadavg()}, "cpu": cpu.result,
        "process_s": time.perf_counter() - started,
    }


def in_child(fn, *args):
    """Run `fn(*args)` in a fresh spawned process (its own peak RSS, nothing inherited) and return its result."""
    from concurrent.futures import ProcessPoolExecutor

    # an executor, not a Pool: a child that dies (out of memory, a crash) raises BrokenProcessPool here
    # instead of leaving the run waiting for it
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------- fits


def fit_trend(sizes, times) -> dict:
    """Least squares of log t = c + k·log n (k: the exponent) and of t = a + b·n, with residuals."""
    n, t = np.asarray(sizes, float), np.asarray(times, float)
    if len(n) < 2 or len(set(n.tolist())) < 2:
        raise ValueError(f"a trend needs at least two distinct sizes, got {sizes}")
    if not (np.all(n > 0) and np.all(t > 0)):
        raise ValueError(f"sizes and times must be > 0 for a log-log fit: {sizes}, {times}")
    k, c = np.polyfit(np.log(n), np.log(t), 1)
    log_res = np.log(t) - (c + k * np.log(n))
    b, a = np.polyfit(n, t, 1)
    lin_res = t - (a + b * n)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    return {
        "sizes": n.tolist(), "times_s": t.tolist(),
        "loglog": {"exponent": float(k), "coefficient_s": float(math.exp(c)),
                   "residuals_log": log_res.tolist(), "rms_residual_log": float(np.sqrt(np.mean(log_res ** 2)))},
        "linear": {"intercept_s": float(a), "slope_s_per_unit": float(b), "residuals_s": lin_res.tolist(),
                   "r2": float(1 - np.sum(lin_res ** 2) / ss_tot) if ss_tot > 0 else None},
    }


PHASES = ("calibrate_s", "phase1_s", "phase2_s", "phase3_s", "total_s")


def fits_for(rows: list[dict], size_key: str, series: dict) -> dict:
    """{name: fit} for each series name → function(row) → seconds."""
    sizes = [r[size_key] for r in rows]
    return {name: fit_trend(sizes, [get(r) for r in rows]) for name, get in series.items()}


# ---------------------------------------------------------------------- report


def _fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def print_tables(result: dict) -> None:
    wf = result["workflow"]
    p, s = wf["profiling"], wf["search"]
    print(f"\nworkflow, {p['model']} ({p['layers']} layers, {p['tasks']} tasks), {s['calib_samples']} calibration samples:")
    print(f"  {'stage':<26} {'seconds':>9} {'peak MiB':>9}")
    print(f"  {'imports (profiling proc.)':<26} {p['imports_s']:>9.2f}")
    print(f"  {'profiling':<26} {p['profile_s']:>9.2f} {p['peak_rss_mib']:>9.0f}")
    print(f"  {'imports (search proc.)':<26} {s['imports_s']:>9.2f}")
    for k in PHASES[:-1]:
        print(f"  {'  ' + k[:-2]:<26} {s['timings_s'][k]:>9.2f} {_fmt(s['sampled_peak_rss_mib'][k], '.0f'):>9}")
    print(f"  {'  not in a phase':<26} {s['unattributed_s']:>9.2f}")
    print(f"  {'search':<26} {s['timings_s']['total_s']:>9.2f} {s['peak_rss_mib']:>9.0f}")
    print("  (per-phase MiB: sampled every %g s, — where a phase was shorter)" % s["rss_sample_interval_s"])
    print("\nscaling with depth (seconds):")
    print(f"  {'blocks':>6} {'layers':>6} {'tasks':>5} {'profile':>8} {'calib':>7} {'phase1':>7} {'phase2':>7} "
          f"{'phase3':>7} {'search':>7} {'prof MiB':>8} {'srch MiB':>8} {'others':>6} {'others':>6}")
    for r in result["depth_sweep"]["rows"]:
        t = r["search"]["timings_s"]
        print(f"  {r['blocks']:>6} {r['layers']:>6} {r['tasks']:>5} {r['profiling']['profile_s']:>8.2f} "
              f"{t['calibrate_s']:>7.2f} {t['phase1_s']:>7.2f} {t['phase2_s']:>7.2f} {t['phase3_s']:>7.2f} "
              f"{t['total_s']:>7.2f} {r['profiling']['peak_rss_mib']:>8.0f} {r['search']['peak_rss_mib']:>8.0f} "
              f"{r['profiling']['cpu']['others_cores']:>6.2f} {r['search']['cpu']['others_cores']:>6.2f}")
    print("  (others: mean cores used by other processes during the profiling / the search)")
    print("\nscaling with calibration size (seconds), " + result["calib_sweep"]["model"] + ":")
    print(f"  {'calib':>6} {'calib':>7} {'phase1':>7} {'phase2':>7} {'phase3':>7} {'search':>7} {'srch MiB':>8} {'others':>6}")
    for r in result["calib_sweep"]["rows"]:
        t = r["timings_s"]
        print(f"  {r['calib_samples']:>6} {t['calibrate_s']:>7.2f} {t['phase1_s']:>7.2f} {t['phase2_s']:>7.2f} "
              f"{t['phase3_s']:>7.2f} {t['total_s']:>7.2f} {r['peak_rss_mib']:>8.0f} {r['cpu']['others_cores']:>6.2f}")
    print("\nfits (t ∝ n^k; t = a + b·n):")
    for sweep in ("depth_sweep", "calib_sweep"):
        for name, f in result[sweep]["fits"].items():
            lin = f["linear"]
            print(f"  {sweep[:-6]:<6} {name:<24} k = {f['loglog']['exponent']:6.2f} (rms log res "
                  f"{f['loglog']['rms_residual_log']:.2f})   a = {lin['intercept_s']:8.3f} s, b = "
                  f"{lin['slope_s_per_unit']:.4f} s/unit, R² = {_fmt(lin['r2'], '.3f')}")


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    colors = {"profiling": "C0", "calibrate_s": "C1", "phase1_s": "C2", "phase2_s": "C3", "phase3_s": "C4",
              "total_s": "C5"}

    def series(ax, x, rows_of):
        for k in PHASES:
            ax.loglog(x, rows_of(k), "s--" if k == "total_s" else ".-", color=colors[k],
                      label="search (total)" if k == "total_s" else k[:-2])

    def ticks(ax, x):  # the measured sizes as plain numbers on the log axis
        ax.xaxis.set_major_locator(FixedLocator(x))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    rows = result["depth_sweep"]["rows"]
    layers = [r["layers"] for r in rows]
    ax = axes[0]
    ax.loglog(layers, [r["profiling"]["profile_s"] for r in rows], "o-", color=colors["profiling"], label="profiling")
    series(ax, layers, lambda k: [r["search"]["timings_s"][k] for r in rows])
    ticks(ax, layers)
    ax.set(xlabel="quantizable layers", ylabel="seconds",
           title=f"time vs model depth ({result['depth_sweep']['calib_samples']} calibration samples)")
    ax.legend(fontsize=8)
    cal = result["calib_sweep"]["rows"]
    sizes = [r["calib_samples"] for r in cal]
    ax = axes[1]
    series(ax, sizes, lambda k: [r["timings_s"][k] for r in cal])
    ticks(ax, sizes)
    ax.set(xlabel="calibration samples (a quarter of them scored, a quarter more held out)", ylabel="seconds",
           title=f"search time vs calibration size ({result['calib_sweep']['model']})")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(layers, [r["profiling"]["peak_rss_mib"] for r in rows], "o-", label="profiling process")
    ax.plot(layers, [r["search"]["peak_rss_mib"] for r in rows], "s-", label="search process")
    ax.plot(layers, [r["search"]["rss_after_imports_mib"] for r in rows], ":", color="grey",
            label="search process after imports")
    ax.set(xlabel="quantizable layers", ylabel="peak RSS (MiB)", title="peak memory per stage")
    ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"tvm_mpq workflow cost — {m['cpu']}, {m['cores']} cores, commit {m['commit']}, {m['date']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- the run


def check_sizes(depths, calib_sizes, ref_blocks: int, ref_calib: int):
    """Sorted distinct depths and calibration sizes; ValueError saying what is wrong otherwise."""
    depths, calib_sizes = sorted(set(depths)), sorted(set(calib_sizes))
    for what, values in (("depths", depths), ("calibration sizes", calib_sizes)):
        if len(values) < 2 or not all(isinstance(v, int) and v >= 1 for v in values):
            raise ValueError(f"{what}: a trend needs at least two distinct integers >= 1, got {values}")
    if ref_blocks not in depths:
        raise ValueError(f"the reference model ({ref_blocks} blocks) must be one of the depths {depths}")
    if ref_calib not in calib_sizes:
        raise ValueError(f"the reference calibration size {ref_calib} must be one of {calib_sizes}")
    if min(calib_sizes) < 4:  # calibration plus a quarter of it scored and held out, at least 2 each
        raise ValueError(f"calibration sizes must be >= 4, got {calib_sizes}")
    return depths, calib_sizes


def run(depths, calib_sizes, ref_blocks: int, ref_calib: int, hw: str = "x86_avx2", *, candidates=None,
        quick_timing: bool = False, resolution: int = RESOLUTION, width: int = BASE_WIDTH, log=print) -> dict:
    """Profile each depth once and search it at `ref_calib`; search the `ref_blocks` model at each
    calibration size. Every stage in its own spawned process, one at a time."""
    depths, calib_sizes = check_sizes(depths, calib_sizes, ref_blocks, ref_calib)
    options = {"candidates": tuple(candidates) if candidates else None, "quick_timing": quick_timing,
               "resolution": resolution, "width": width}
    start = time.perf_counter()
    load_start = os.getloadavg()
    depth_rows, calib_rows = [], {}
    with tempfile.TemporaryDirectory(prefix="workflow_cost_") as tmp:
        stores = {}
        for blocks in depths:
            stores[blocks] = str(Path(tmp) / f"store_{blocks}.sqlite")
            prof = in_child(_stage_profile, blocks, hw, options, stores[blocks])
            log(f"[workflow_cost] profiled {prof['model']}: {prof['tasks']} tasks in {prof['profile_s']:.1f} s, "
                f"peak {prof['peak_rss_mib']:.0f} MiB, other processes {prof['cpu']['others_cores']:.2f} cores")
            srch = in_child(_stage_search, blocks, ref_calib, hw, options, stores[blocks])
            log(f"[workflow_cost] searched {srch['model']} @ {ref_calib} samples in {srch['timings_s']['total_s']:.1f} s, "
                f"peak {srch['peak_rss_mib']:.0f} MiB, other processes {srch['cpu']['others_cores']:.2f} cores")
            depth_rows.append({"blocks": blocks, "layers": prof["layers"], "tasks": prof["tasks"], "macs": prof["macs"],
                               "profiling": prof, "search": srch})
            if blocks == ref_blocks:
                calib_rows[ref_calib] = srch  # the same measurement serves both sweeps
        for calib in calib_sizes:
            if calib in calib_rows:
                continue
            srch = in_child(_stage_search, ref_blocks, calib, hw, options, stores[ref_blocks])
            log(f"[workflow_cost] searched {srch['model']} @ {calib} samples in {srch['timings_s']['total_s']:.1f} s, "
                f"peak {srch['peak_rss_mib']:.0f} MiB, other processes {srch['cpu']['others_cores']:.2f} cores")
            calib_rows[calib] = srch
    calib_list = [calib_rows[c] for c in calib_sizes]
    ref = next(r for r in depth_rows if r["blocks"] == ref_blocks)
    search_series = {f"search {k[:-2]}": (lambda r, k=k: r["search"]["timings_s"][k]) for k in PHASES}
    depth_fits = fits_for(depth_rows, "layers", {"profiling": lambda r: r["profiling"]["profile_s"], **search_series})
    depth_fits["profiling vs tasks"] = fit_trend([r["tasks"] for r in depth_rows],
                                                 [r["profiling"]["profile_s"] for r in depth_rows])
    calib_fits = fits_for(calib_list, "calib_samples",
                          {f"search {k[:-2]}": (lambda r, k=k: r["timings_s"][k]) for k in PHASES})
    return {
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "hw": hw, "candidates_restricted_to": list(candidates) if candidates else None, "quick_timing": quick_timing,
        "model_family": {"factory": "benchmarks.workflow_cost:synthetic_cnn", "resolution": resolution,
                         "width": width, "min_sqnr_db": MIN_SQNR_DB},
        "workflow": {"profiling": ref["profiling"], "search": ref["search"]},
        "depth_sweep": {"calib_samples": ref_calib, "rows": depth_rows, "fits": depth_fits},
        "calib_sweep": {"model": ref["profiling"]["model"], "blocks": ref_blocks, "rows": calib_list, "fits": calib_fits},
        "elapsed_s": time.perf_counter() - start,
    }


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(values)) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need at least two distinct integers >= 1 (a trend), got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="tiny sizes (smoke test), into benchmarks/results/fast/")
    parser.add_argument("--depths", type=_sizes, help="conv blocks per model, e.g. 2,4,8,16")
    parser.add_argument("--calib-sizes", type=_sizes, help="calibration sizes, e.g. 16,32,64")
    parser.add_argument("--ref-blocks", type=int, help="the model of the calibration sweep and of the cost table")
    parser.add_argument("--ref-calib", type=int, help="calibration size of the depth sweep and of the cost table")
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--candidates", default=None,
                        help="restrict the profile's candidates, e.g. W8A8,FP32 (fewer tasks; smoke tests)")
    parser.add_argument("--quick-timing", action="store_true",
                        help="time each task with 2 repeats of 1 call instead of the profile's settings (smoke tests)")
    parser.add_argument("--resolution", type=int, default=RESOLUTION, help="input height and width of the models")
    parser.add_argument("--width", type=int, default=BASE_WIDTH, help="channels of the stem (block i: width + i + 1)")
    parser.add_argument("--out-dir", default=None, help="where the JSON and PNG go (default: benchmarks/results[/fast])")
    args = parser.parse_args(argv)
    sizes = dict(FAST if args.fast else DEFAULT)
    for key in ("depths", "calib_sizes", "ref_blocks", "ref_calib"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.depths is not None and args.ref_blocks is None and sizes["ref_blocks"] not in sizes["depths"]:
        sizes["ref_blocks"] = sorted(sizes["depths"])[len(sizes["depths"]) // 2]
    if args.calib_sizes is not None and args.ref_calib is None and sizes["ref_calib"] not in sizes["calib_sizes"]:
        sizes["ref_calib"] = sorted(sizes["calib_sizes"])[len(sizes["calib_sizes"]) // 2]
    candidates = None
    if args.candidates:
        from tvm_mpq.numerics import get_candidate

        try:
            candidates = tuple(get_candidate(c.strip()).name for c in args.candidates.split(",") if c.strip())
        except ValueError as err:
            parser.error(f"--candidates: {err}")
    if args.resolution < 4 or args.width < 1:
        parser.error(f"--resolution must be >= 4 and --width >= 1, got {args.resolution} and {args.width}")
    try:
        check_sizes(sizes["depths"], sizes["calib_sizes"], sizes["ref_blocks"], sizes["ref_calib"])
        from tvm_mpq.hardware import load_profile

        offered = {c for names in load_profile(args.hw).candidates.values() for c in names}
        if candidates and not set(candidates) <= offered:
            raise ValueError(f"--candidates: {', '.join(sorted(set(candidates) - offered))} not offered by "
                             f"{args.hw} (it offers {', '.join(sorted(offered))})")
    except ValueError as err:  # bad arguments, before any stage starts
        parser.error(str(err))
    result = run(sizes["depths"], sizes["calib_sizes"], sizes["ref_blocks"], sizes["ref_calib"], args.hw,
                 candidates=candidates, quick_timing=args.quick_timing, resolution=args.resolution, width=args.width)
    result["mode"] = "fast" if args.fast else "default"
    out = Path(args.out_dir) if args.out_dir else results_dir(args.fast)
    print_tables(result)
    write_result(out / "workflow_cost.json", result)
    print(f"wrote {plot(result, out / 'workflow_cost.png')}")
    print(f"[workflow_cost] done in {result['elapsed_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
