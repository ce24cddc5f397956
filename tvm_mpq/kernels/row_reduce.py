"""Max or sum over the last axis of a float32 tensor, vectorized across the row (TVMScript).

Softmax's max and sum passes reduce rows of a few hundred floats (MiniLM-L6: 12 x 128 rows of 128 per
attention layer). TVM's CPU reduction schedule runs them with a scalar loop-carried max / add per element;
here each row is read `lanes` floats at a time into one vector accumulator, which is reduced once at the
end (then a scalar tail). One parallel task per row block. The max is exact whatever the order; the sum
adds in a different order than a sequential loop (float32 rounding differences only).
"""

from __future__ import annotations

import math

import numpy as np
from tvm.script import tirx as T

OPS = ("max", "sum")


def row_reduce_func(shape, op: str, lanes: int = 8):
    """PrimFunc ``main(X, Y)``: Y[..., 0] = op over X[..., :] for float32 X of `shape` (Y: shape with the
    last axis 1); `lanes` 8 (AVX2) or 16 (AVX-512)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if lanes not in (8, 16):
        raise ValueError(f"lanes must be 8 or 16, got {lanes}")
    shape = tuple(int(v) for v in shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"a row reduction needs a non-empty last axis, got shape {shape}")
    n = shape[-1]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    out_shape = shape[:-1] + (1,)
    full = n // lanes
    init = -math.inf if op == "max" else 0.0

    def combine(a, b):
        return T.max(a, b) if op == "max" else a + b

    @T.prim_func(check_well_formed=False)  # the root block (see below) is not plain TIR
    def main(X_nd: T.Buffer(shape, "float32"), Y_nd: T.Buffer(out_shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        # a root block: Relax's reshape analysis expects one in every one-input function
        with T.sblock("root"):
            X = T.decl_buffer((rows * n,), "float32", data=X_nd.data)
            Y = T.decl_buffer((rows,), "float32", data=Y_nd.data)
            for r in T.parallel(rows):
                acc = T.alloc_buffer((lanes,), "float32", scope="global")
                s = T.alloc_buffer((1,), "float32", scope="global")
                acc[T.ramp(0, 1, lanes)] = T.broadcast(T.float32(init), lanes)
                for v in range(full):
                    acc[T.ramp(0, 1, lanes)] = combine(acc[T.ramp(0, 1, lanes)],
                                                       X[T.ramp(r * n + v * lanes, 1, lanes)])
                s[0] = T.float32(init)
                for lane in range(lanes):
                    s[0] = combine(s[0], acc[lane])
                for t in range(full * lanes, n):
                    s[0] = combine(s[0], X[r * n + t])
                Y[r] = s[0]

    return main
