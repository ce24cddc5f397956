"""Layer norm over the last axis of a float32 tensor, vectorized across the row (TVMScript).

A transformer normalizes rows of a few hundred floats (MiniLM-L6: 128 rows of 384, twice per layer).
TOPI's layer norm is one function of four stages (sum, mean, sum of squared deviations, normalize) that
TVM's CPU reduction schedule runs with a scalar loop-carried add per element: 50 µs a call on MiniLM-L6,
about a tenth of the whole model. Here each row (one parallel task per row) is read three times from L1,
`lanes` floats at a time: the sum into one vector accumulator, then the sum of squared deviations from the
mean (the same two-pass formula as TOPI, stable when the mean is large against the spread), then
``(x - mean) * rsqrt(var + eps) * gamma + beta`` stored as vectors; a scalar tail where the row is not a
whole number of vectors.

With ``residual=True`` the function takes two tensors and normalizes their sum (BERT's
``LayerNorm(x + sublayer(x))``): the add is done on the fly in each pass, so the sum is never written to
memory (`fuse_residual_layer_norm` rewrites a model's add → layer norm pairs to it).

Results differ from TOPI's by float32 summation order only.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T


def layer_norm_func(shape, epsilon: float, lanes: int = 8, residual: bool = False):
    """PrimFunc ``main(X, gamma, beta, Y)`` (``main(X, R, gamma, beta, Y)`` with `residual`): Y = layer norm of X
    (of X + R) over the last axis, for float32 tensors of `shape`; gamma, beta: [shape[-1]]; `lanes` 8 (AVX2)
    or 16 (AVX-512)."""
    if lanes not in (8, 16):
        raise ValueError(f"lanes must be 8 or 16, got {lanes}")
    shape = tuple(int(v) for v in shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"a layer norm needs a non-empty last axis, got shape {shape}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be a non-negative number, got {epsilon}")
    n = shape[-1]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    full = n // lanes
    eps = float(epsilon)

    def vec(i):
        return T.ramp(i, 1, lanes)

    def bc(x):
        return T.broadcast(x, lanes)

    def x_at(X, R, i):  # the value normalized at flat index (or vector of indices) i: X, or X + R
        return X[i] + R[i] if residual else X[i]

    @T.macro
    def body(X, R, G, B, Y):
        for r in T.parallel(rows):
            acc = T.alloc_buffer((lanes,), "float32", scope="global")
            s = T.alloc_buffer((2,), "float32", scope="global")
            acc[vec(0)] = bc(T.float32(0))
            for v in range(full):
                acc[vec(0)] = acc[vec(0)] + x_at(X, R, vec(r * n + v * lanes))
            s[0] = T.float32(0)
            for lane in range(lanes):
                s[0] = s[0] + acc[lane]
            for t in range(full * lanes, n):
                s[0] = s[0] + x_at(X, R, r * n + t)
            s[0] = s[0] / T.float32(n)
            acc[vec(0)] = bc(T.float32(0))
            for v in range(full):
                acc[vec(0)] = acc[vec(0)] + (x_at(X, R, vec(r * n + v * lanes)) - bc(s[0])) * (
                    x_at(X, R, vec(r * n + v * lanes)) - bc(s[0]))
            s[1] = T.float32(0)
            for lane in range(lanes):
                s[1] = s[1] + acc[lane]
            for t in range(full * lanes, n):
                s[1] = s[1] + (x_at(X, R, r * n + t) - s[0]) * (x_at(X, R, r * n + t) - s[0])
            s[1] = T.rsqrt(s[1] / T.float32(n) + T.float32(eps))
            for v in range(full):
                Y[vec(r * n + v * lanes)] = (x_at(X, R, vec(r * n + v * lanes)) - bc(s[0])) * bc(s[1]) * G[
                    vec(v * lanes)] + B[vec(v * lanes)]
            for t in range(full * lanes, n):
                Y[r * n + t] = (x_at(X, R, r * n + t) - s[0]) * s[1] * G[t] + B[t]

    if residual:
        @T.prim_func(check_well_formed=False)  # the root block (see row_reduce) is not plain TIR
        def main(X_nd: T.Buffer(shape, "float32"), R_nd: T.Buffer(shape, "float32"), G: T.Buffer((n,), "float32"),
                 B: T.Buffer((n,), "float32"), Y_nd: T.Buffer(shape, "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            with T.sblock("root"):
                X = T.decl_buffer((rows * n,), "float32", data=X_nd.data)
                R = T.decl_buffer((rows * n,), "float32", data=R_nd.data)
                Y = T.decl_buffer((rows * n,), "float32", data=Y_nd.data)
                body(X, R, G, B, Y)

        return main

    @T.prim_func(check_well_formed=False)
    def main(X_nd: T.Buffer(shape, "float32"), G: T.Buffer((n,), "float32"), B: T.Buffer((n,), "float32"),
             Y_nd: T.Buffer(shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            X = T.decl_buffer((rows * n,), "float32", data=X_nd.data)
            Y = T.decl_buffer((rows * n,), "float32", data=Y_nd.data)
            body(X, None, G, B, Y)

    return main
