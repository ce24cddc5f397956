"""Several compiled models timed side by side, in interleaved rounds.

On a shared host the speed of the machine drifts by tens of percent within minutes; one timing window
per build lets a noise burst decide which build looks faster. Here every build is compiled first, then
each round times every build once (a few calls each), in an order rotated from round to round, and a
build's latency is the median over all rounds: a burst hits every build alike.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..build import LatencyStats

Sampler = Callable[[], Sequence[float]]  # one timing window → seconds per call


def interleave(samplers: Mapping[str, Sampler], rounds: int) -> dict[str, list[float]]:
    """Seconds per call for each sampler: `rounds` rounds, every sampler once per round, the order rotated
    by one each round so no sampler always runs first (after another's cache state) or last."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(samplers)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            out[name].extend(float(s) for s in samplers[name]())
    return out


def vm_sampler(compiled, inputs: Sequence, calls: int = 2) -> Sampler:
    """A sampler of a `build.CompiledModel`: `calls` timed calls of `main` (time_evaluator, number 1)."""
    args = compiled._args(inputs)
    compiled.vm["main"](*args)  # warm-up: first call allocates
    timer = compiled.vm.time_evaluator("main", compiled.device, number=1, repeat=calls)
    return lambda: list(timer(*args).results)


def time_compiled(models: Mapping[str, object], inputs: Sequence, *, rounds: int = 15, calls: int = 2
                  ) -> dict[str, LatencyStats]:
    """Latency of each compiled model on `inputs`, interleaved (`rounds` x `calls` samples each)."""
    samplers = {name: vm_sampler(m, inputs, calls) for name, m in models.items()}
    return {name: LatencyStats.from_seconds(s, 1) for name, s in interleave(samplers, rounds).items()}


def compile_all(imported, plans: Mapping[str, object], target, log: Callable[[str], None] = lambda m: None,
                what: str = "measure") -> tuple[dict, dict[str, str], dict[str, float]]:
    """Compile each resolved plan of `imported` for `target`: (compiled model per plan, error per plan that
    failed to build, compile seconds per plan). A plan that fails is reported; the others go on."""
    from ..build import build

    compiled, failed, seconds = {}, {}, {}
    for name, plan in plans.items():
        t = time.perf_counter()
        try:
            compiled[name] = build(imported, plan, target)
        except Exception as err:  # one failing build must not lose the others
            failed[name] = f"{type(err).__name__}: {err}"[:500]
            log(f"{what}: {name} failed to build: {failed[name]}")
            continue
        seconds[name] = time.perf_counter() - t
        log(f"{what}: compiled {imported.name} at {name} in {seconds[name]:.1f} s")
    return compiled, failed, seconds


def compile_and_time(imported, plans: Mapping[str, object], target, *, rounds: int = 15, calls: int = 2,
                     log: Callable[[str], None] = lambda m: None
                     ) -> tuple[dict[str, LatencyStats], dict[str, str], dict[str, float]]:
    """`compile_all`, then every build timed interleaved: (latency per plan, error per failed plan, compile
    seconds per plan)."""
    compiled, failed, seconds = compile_all(imported, plans, target, log)
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    stats = time_compiled(compiled, inputs, rounds=rounds, calls=calls) if compiled else {}
    return stats, failed, seconds


def local_target(profile) -> tuple[Optional[object], str]:
    """(the profile's TVM target, "") when its code runs on this machine's CPU, else (None, why not):
    another target kind, an RPC device, another architecture, or ISA extensions this CPU lacks."""
    import platform

    from tvm.target import codegen

    target = profile.tvm_target()
    if target.kind.name != "llvm":
        return None, f"profile {profile.name} targets {target.kind.name}, not this machine's CPU"
    if profile.rpc_key:
        return None, f"profile {profile.name} is measured over RPC (key {profile.rpc_key!r})"
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(platform.machine()):
        return None, f"profile {profile.name} targets {triple}, this machine is {platform.machine()}"
    needed = {f for f in codegen.llvm_get_cpu_features(target) if f.startswith(_ISA_PREFIXES)}
    missing = sorted(needed - _host_isa())
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}, which profile {profile.name} compiles for"
    return target, ""


_ISA_PREFIXES = ("avx", "fma", "f16c", "amx", "sse4")


def _host_isa() -> set[str]:
    """ISA extensions of this CPU in LLVM's spelling: /proc/cpuinfo where there is one (it reflects what a
    hypervisor exposes), else what LLVM detects."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    # cpuinfo spells avx512_vnni / sse4_2, LLVM avx512vnni / sse4.2
                    return {w.replace("_", "").replace("sse42", "sse4.2").replace("sse41", "sse4.1")
                            for w in line.split(":", 1)[1].split()}
    except OSError:
        pass
    import tvm
    from tvm.target import codegen

    host = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    return {f for f in codegen.llvm_get_cpu_features(host) if f.startswith(_ISA_PREFIXES)}
