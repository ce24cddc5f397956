"""What every benchmark result records about where and when it was measured."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def results_dir(fast: bool = False) -> Path:
    """Where benchmark results go: benchmarks/results, or its fast/ (smoke runs, not kept in git)."""
    return ROOT / "benchmarks" / "results" / ("fast" if fast else "")


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512bw", "f16c", "sse4_2"}
    return model, sorted(f for f in flags if f in wanted)


def machine_info() -> dict:
    model, flags = _cpu()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    versions = {}
    for pkg in ("tvm", "torch", "numpy", "xgboost", "onnxruntime"):
        try:
            from importlib.metadata import version

            versions[pkg] = version({"tvm": "apache-tvm", "xgboost": "xgboost-cpu"}.get(pkg, pkg))
        except Exception:
            versions[pkg] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "commit": commit + ("+dirty" if dirty else ""),
        "python": platform.python_version(),
        "versions": versions,
    }


def write_result(path: Path, result: dict) -> Path:
    """Write a benchmark's JSON result (parents created) and say where."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {path}")
    return path


def calibrated_model(name: str, profile, calib_samples: int, held_out: int):
    """A built-in model imported for `profile` and calibrated by the simulator on its first `calib_samples`
    calibration samples: (imported, simulator, stats, held-out samples, float outputs on them)."""
    from tvm_mpq.frontend import import_model
    from tvm_mpq.models import load_model
    from tvm_mpq.simulate import Simulator

    spec = load_model(name)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    data = spec.calibration(calib_samples + held_out)
    calib, held = data[:calib_samples], data[calib_samples:]
    sim = Simulator(imported)
    stats = sim.calibrate(calib)
    return imported, sim, stats, held, sim.run(held)


def compare_plan_builds(module, shape, profile, variants: dict, rounds: int, same_output: list[str]) -> dict:
    """`module` on one seeded input of `shape`, calibrated by the simulator and compiled for `profile` once
    per variant — {label: (homogeneous plan name, switches)}, `switches` a context manager factory held while
    that build compiles (or None) — the builds in `same_output` checked to give identical outputs (SystemExit
    otherwise), all timed side by side in `rounds` interleaved rounds of 5 calls. Returns the input shape, each
    build's latency, and the ratios of the first `same_output` build to each other build."""
    import numpy as np
    import torch

    from tvm_mpq.build import LatencyStats, build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.measure.interleaved import interleave, vm_sampler
    from tvm_mpq.pipeline import make_plan
    from tvm_mpq.simulate import Simulator

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(*shape, generator=gen),) for _ in range(8)]
    imported = import_model(module, data[0])
    stats = Simulator(imported).calibrate(data)
    builds = {}
    for label, (plan, switches) in variants.items():
        resolved = make_plan(plan, imported, profile, stats, "minmax")
        if switches is None:
            builds[label] = build(imported, resolved, profile.tvm_target())
        else:
            with switches():
                builds[label] = build(imported, resolved, profile.tvm_target())
    x = [data[0][0].numpy()]
    outputs = [builds[label].run(x) for label in same_output]
    if not all(np.array_equal(outputs[0], o) for o in outputs[1:]):
        raise SystemExit(f"the builds {', '.join(same_output)} disagree")
    seconds = interleave({label: vm_sampler(b, x, calls=5) for label, b in builds.items()}, rounds)
    ref_label = same_output[0]
    ref = np.asarray(seconds[ref_label])
    return {"input_shape": list(shape),
            "latency": {label: LatencyStats.from_seconds(s, 1).to_dict() for label, s in seconds.items()},
            "ratios": {f"{ref_label} / {label}": float(np.median(ref / np.asarray(seconds[label])))
                       for label in builds if label != ref_label}}
