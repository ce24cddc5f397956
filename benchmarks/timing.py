"""Wall-clock timing of a Python callable, reported like TVM's timings (`tvm_mpq.build.LatencyStats`).

The peers (PyTorch eager, ONNX Runtime) run from Python, so they are timed here with `perf_counter`:
`warmup` untimed calls, then `repeat` repeats of `number` calls each; a repeat's figure is its mean
per call. With `min_repeat_ms` > 0, `number` is raised (as TVM's `time_evaluator` does) until one repeat
lasts that long, so sub-millisecond calls are not dominated by the timer's resolution.

Thread counts are the caller's business (`THREADS`, `set_torch_threads`): every executor in one benchmark
run uses the same number of threads.
"""

from __future__ import annotations

import os
import time
from typing import Callable

THREADS = 2  # intra-op threads of every executor in the benchmarks (ORT, PyTorch, TVM)


def set_torch_threads(threads: int = THREADS) -> None:
    import torch

    torch.set_num_threads(threads)


def set_tvm_threads(threads: int = THREADS) -> None:
    """TVM's CPU thread pool size; read when the pool starts, so call this before the first TVM run."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def time_callable(fn: Callable[[], object], *, repeat: int = 20, warmup: int = 3, number: int = 1,
                  min_repeat_ms: float = 0.0):
    """`LatencyStats` (median, min, max, IQR in ms per call) of `fn()` over `repeat` repeats."""
    from tvm_mpq.build import LatencyStats

    if repeat < 1 or warmup < 0 or number < 1 or min_repeat_ms < 0:
        raise ValueError(f"repeat and number must be >= 1, warmup and min_repeat_ms >= 0 "
                         f"(got repeat={repeat}, warmup={warmup}, number={number}, min_repeat_ms={min_repeat_ms})")
    for _ in range(max(warmup, 1) if min_repeat_ms > 0 else warmup):
        fn()
    if min_repeat_ms > 0:
        while True:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if elapsed_ms >= min_repeat_ms or number >= 1 << 20:
                break
            # aim past the target so the next try usually suffices
            number = max(number * 2, int(number * 1.2 * min_repeat_ms / max(elapsed_ms, 1e-6)))
    per_repeat = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        per_repeat.append((time.perf_counter() - start) / number)
    return LatencyStats.from_seconds(per_repeat, number)


def callable_sampler(fn: Callable[[], object], calls: int = 3, warmup: int = 2) -> Callable[[], list[float]]:
    """A sampler for `tvm_mpq.measure.interleaved.interleave`: `calls` timed calls of `fn()` (seconds each),
    after `warmup` untimed ones on the first use."""
    for _ in range(warmup):
        fn()

    def sample() -> list[float]:
        out = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    return sample
