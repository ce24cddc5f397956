"""Lower a plan to Relax, compile it with TVM, run it, time it, export it."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .frontend import ImportedModel, to_relax
from .plan import Plan


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency over `repeat` repeats of `number` calls each (seconds → ms)."""

    median_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    repeats: int
    number: int

    @staticmethod
    def from_seconds(per_repeat: Sequence[float], number: int) -> "LatencyStats":
        ms = np.asarray(per_repeat, dtype=np.float64) * 1e3
        q1, q3 = np.percentile(ms, [25, 75])
        return LatencyStats(float(np.median(ms)), float(ms.min()), float(ms.max()), float(q3 - q1), len(ms), number)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lower(imported: ImportedModel, plan: Plan, kernels: str = "generic"):
    """The Relax IRModule of `imported` at the precisions of a resolved plan, on a kernel library
    ("generic" or "x86_avx2", see `tvm_mpq.kernels.kernel_library`)."""
    from .transform.quantize_mixed_precision import QuantizeMixedPrecision

    weights = {
        name: imported.parameter(layer.weight) for name, layer in imported.graph.layers.items() if layer.weight
    }
    return QuantizeMixedPrecision(plan, imported.graph, weights, kernels)(to_relax(imported))


def compile_module(mod, target):
    """`tvm.compile` with this project's CPU schedules on LLVM targets (TVM's default pipeline otherwise)."""
    import tvm

    if target.kind.name == "llvm":
        from .kernels.cpu_schedule import cpu_pipeline

        return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))
    if target.kind.name == "cuda":  # GPU schedules (and the int8 rule dlight lacks)
        from .kernels.cuda_schedule import compile_relax

        return compile_relax(mod, target)
    return tvm.compile(mod, target=target)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence native-code warnings (the VM logs one line per function when saving or loading)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # stderr replaced by an object without a descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


class CompiledModel:
    """A compiled Relax executable on the local CPU (or a module loaded from an exported library)."""

    def __init__(self, executable, compile_seconds: float = 0.0, device=None):
        import tvm

        self.executable = executable
        self.device = device if device is not None else tvm.cpu()
        self.compile_seconds = compile_seconds
        self._vm = None

    @property
    def vm(self):
        """The Relax VM on `device`, made on first use (a CUDA library compiled here is run elsewhere)."""
        if self._vm is None:
            from tvm import relax

            self._vm = relax.VirtualMachine(self.executable, self.device)
        return self._vm

    def _args(self, inputs):
        import tvm

        return [tvm.runtime.tensor(np.ascontiguousarray(np.asarray(a)), self.device) for a in inputs]

    def run(self, inputs: Sequence) -> np.ndarray:
        out = self.vm["main"](*self._args(inputs))
        if not hasattr(out, "numpy"):  # a tuple of outputs: the first is the model output
            out = out[0]
        return out.numpy()

    def benchmark(self, inputs: Sequence, number: int = 5, repeat: int = 10, min_repeat_ms: int = 0) -> LatencyStats:
        args = self._args(inputs)
        self.vm["main"](*args)  # warm-up
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        return LatencyStats.from_seconds(timer(*args).results, number)

    def export_library(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _quiet_native_stderr():
            self.executable.export_library(str(path))
        return path

    @staticmethod
    def load(path) -> "CompiledModel":
        import tvm

        with _quiet_native_stderr():
            return CompiledModel(tvm.runtime.load_module(str(path)))


def build(imported: ImportedModel, plan: Plan, target, kernels: str | None = None) -> CompiledModel:
    """Lower and compile; `target` is a tvm.target.Target (e.g. `profile.tvm_target()`); `kernels` defaults
    to the target's kernel library (`tvm_mpq.kernels.kernel_library`)."""
    import tvm

    from .kernels import kernel_library

    start = time.perf_counter()
    mod = lower(imported, plan, kernels or kernel_library(target))
    executable = compile_module(mod, target)
    device = tvm.cuda() if target.kind.name == "cuda" else None
    return CompiledModel(executable, time.perf_counter() - start, device)
