"""A model-independent corpus of layer workloads to profile a device with once.

The latency model trained on this sweep (plus whatever models were profiled) predicts the layers of a
new model on an already-profiled device, so a new model needs few or no measurements of its own.
The sweep is deterministic (seeded) and spans the shapes vision and language models use: regular,
pointwise, depthwise and strided convolutions, linear layers over token batches, attention matmuls.
"""

from __future__ import annotations

import numpy as np

from ..graph import Workload
from .tasks import LAYER, Task, layer_macs


def _conv(n, c, h, o, k, s, groups) -> Workload:
    pad = k // 2
    oh = (h + 2 * pad - k) // s + 1
    return Workload("conv2d", (n, c, h, h), (o, c // groups, k, k), (n, o, oh, oh), strides=(s, s),
                    padding=(pad, pad, pad, pad), dilation=(1, 1), groups=groups, has_bias=True)


def sweep_workloads(count: int = 64, seed: int = 0) -> list[Workload]:
    """`count` distinct workloads: ~55 % convolutions, ~30 % linear, ~15 % attention matmuls."""
    rng = np.random.default_rng(seed)
    out: dict[str, Workload] = {}
    n_conv, n_linear = int(count * 0.55), int(count * 0.30)
    while len(out) < n_conv:
        kind = rng.choice(["regular", "pointwise", "depthwise"], p=[0.3, 0.4, 0.3])
        h = int(rng.choice([7, 14, 28, 56, 112]))
        c = int(rng.choice([16, 24, 32, 40, 64, 96, 128, 192, 256, 384]))
        s = int(rng.choice([1, 2], p=[0.75, 0.25]))
        if kind == "depthwise":
            wl = _conv(1, c, h, c, int(rng.choice([3, 5])), s, c)
        elif kind == "pointwise":
            o = int(rng.choice([16, 24, 32, 40, 64, 96, 128, 192, 256, 320, 384, 1280]))
            wl = _conv(1, c, h, o, 1, 1, 1)
        else:
            if h > 56:
                c = min(c, 32)
            wl = _conv(1, c, h, int(rng.choice([16, 32, 64, 128])), 3, s, 1)
        if layer_macs(wl) <= 2.5e8:  # keep single measurements under a few seconds with naive kernels
            out[wl.key()] = wl
    while len(out) < n_conv + n_linear:
        tokens = int(rng.choice([1, 16, 32, 64, 128]))
        k = int(rng.choice([64, 128, 256, 384, 512, 768, 1024, 1280, 1536]))
        n = int(rng.choice([10, 64, 128, 256, 384, 512, 768, 1000, 1536]))
        x = (1, tokens, k) if tokens > 1 else (1, k)
        y = (1, tokens, n) if tokens > 1 else (1, n)
        wl = Workload("linear", x, (n, k), y, has_bias=True)
        out[wl.key()] = wl
    while len(out) < count:
        heads = int(rng.choice([2, 4, 8, 12]))
        seq = int(rng.choice([16, 32, 64, 128]))
        dim = int(rng.choice([16, 32, 64]))
        if rng.random() < 0.5:  # Q·Kᵀ
            wl = Workload("matmul", (1, heads, seq, dim), (1, heads, dim, seq), (1, heads, seq, seq))
        else:  # P·V
            wl = Workload("matmul", (1, heads, seq, seq), (1, heads, seq, dim), (1, heads, seq, dim))
        out[wl.key()] = wl
    return list(out.values())


def sweep_tasks(profile, count: int = 64, seed: int = 0) -> list[Task]:
    """Layer tasks for the sweep at every candidate the profile allows for each op."""
    tasks = []
    for wl in sweep_workloads(count, seed):
        for cand in profile.candidates_for(wl.op):
            tasks.append(Task(LAYER, wl.key(), cand.name, wl.op, layer_macs(wl)))
    return tasks
