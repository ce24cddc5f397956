"""Features of a (workload, candidate) pair for the latency model. Pure NumPy.

Shapes follow `tvm_mpq.graph.Workload`:
- conv2d: input (N, C, H, W), weight (O, C/groups, KH, KW), output (N, O, HO, WO)
- linear: input (..., IN), weight (OUT, IN), output (..., OUT)
- matmul: input (..., M, K), second operand (..., K, N), output (..., M, N); activation x activation,
  so the second operand is quantized (and moved) at the *activation* precision.

Bytes moved = input activation bytes + weight bytes (int4 packed: 0.5 B each) + output bytes (the
candidate's float dtype: float32 for quantized candidates, whose integer result is scaled back to
float32; float16 for FP16).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Union

import numpy as np

from ..numerics import Candidate, get_candidate

if TYPE_CHECKING:  # tvm_mpq.graph imports torch; features only read the dataclass's fields
    from ..graph import Workload

__all__ = ["FEATURE_NAMES", "OP_KINDS", "featurize", "featurize_many", "workload_macs", "bytes_moved",
           "as_candidate"]

OP_KINDS = ("conv2d", "linear", "matmul")

FEATURE_NAMES: tuple[str, ...] = (
    "op_conv2d", "op_linear", "op_matmul",
    "log2_macs", "log2_out_elems", "log2_in_elems", "log2_weight_elems",
    "kernel_h", "kernel_w", "stride_h", "stride_w", "groups", "is_depthwise", "channels_in", "channels_out",
    "weight_bits", "act_bits", "float_bits",
    "log2_in_bytes", "log2_weight_bytes", "log2_out_bytes", "log2_bytes_moved", "arith_intensity",
    "log2_macs_x_wbits", "log2_macs_x_abits",
)
_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}

_FLOAT_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "float64": 64}


def as_candidate(candidate: Union[Candidate, str]) -> Candidate:
    return candidate if isinstance(candidate, Candidate) else get_candidate(candidate)


def _prod(shape: Iterable[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _check(workload) -> None:
    if workload.op not in OP_KINDS:
        raise ValueError(f"unknown workload op {workload.op!r}; the latency model knows {', '.join(OP_KINDS)}")


def workload_macs(workload: "Workload") -> int:
    """Multiply-accumulates of one execution of the workload."""
    _check(workload)
    return int(workload.macs)


def _float_bits(c: Candidate) -> int:
    if c.float_dtype not in _FLOAT_BITS:
        raise ValueError(f"candidate {c.name}: unknown float dtype {c.float_dtype!r}")
    return _FLOAT_BITS[c.float_dtype]


def _bytes(workload: "Workload", c: Candidate) -> tuple[float, float, float]:
    """(input activation bytes, weight / second-operand bytes, output bytes) at `c`'s precision."""
    fbytes = _float_bits(c) / 8
    act_bytes = c.act_bits / 8 if c.act_bits is not None else fbytes
    in_b = _prod(workload.input_shape) * act_bytes
    if workload.op == "matmul":
        w_b = _prod(workload.weight_shape) * act_bytes
    else:
        w_b = _prod(workload.weight_shape) * (c.weight_bits / 8 if c.weight_bits is not None else fbytes)
    out_b = _prod(workload.output_shape) * fbytes
    return in_b, w_b, out_b


def bytes_moved(workload: "Workload", candidate: Union[Candidate, str]) -> float:
    """Minimum bytes read and written by the layer at that precision."""
    _check(workload)
    return float(sum(_bytes(workload, as_candidate(candidate))))


def _log2(v: float) -> float:
    return math.log2(1.0 + v)


def featurize(workload: "Workload", candidate: Union[Candidate, str]) -> np.ndarray:
    """The feature vector (float64, ``len(FEATURE_NAMES)``) of running `workload` at `candidate`."""
    _check(workload)
    c = as_candidate(candidate)
    x, w, y = workload.input_shape, workload.weight_shape, workload.output_shape
    op = workload.op
    macs = workload_macs(workload)
    groups = int(workload.groups or 1)
    if op == "conv2d":
        kh, kw = int(w[2]), int(w[3])
        sh, sw = (tuple(workload.strides) + (1, 1))[:2] if workload.strides else (1, 1)
        cin, cout = int(x[1]), int(w[0])
        depthwise = float(groups > 1 and groups == cin and int(w[1]) == 1)
    else:
        kh = kw = sh = sw = 1
        cin, cout = int(x[-1]), int(w[0]) if op == "linear" else int(w[-1])
        depthwise = 0.0
    fbits = _float_bits(c)
    wbits = 0 if c.weight_bits is None else c.weight_bits
    abits = 0 if c.act_bits is None else c.act_bits
    in_b, w_b, out_b = _bytes(workload, c)
    total_b = in_b + w_b + out_b
    lm = _log2(macs)
    eff_w = c.act_bits if op == "matmul" and c.act_bits else (wbits or fbits)

    f = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
    f[_INDEX["op_" + op]] = 1.0
    f[_INDEX["log2_macs"]] = lm
    f[_INDEX["log2_out_elems"]] = _log2(_prod(y))
    f[_INDEX["log2_in_elems"]] = _log2(_prod(x))
    f[_INDEX["log2_weight_elems"]] = _log2(_prod(w))
    f[_INDEX["kernel_h"]], f[_INDEX["kernel_w"]] = kh, kw
    f[_INDEX["stride_h"]], f[_INDEX["stride_w"]] = sh, sw
    f[_INDEX["groups"]] = groups
    f[_INDEX["is_depthwise"]] = depthwise
    f[_INDEX["channels_in"]], f[_INDEX["channels_out"]] = cin, cout
    f[_INDEX["weight_bits"]] = wbits
    f[_INDEX["act_bits"]] = abits
    f[_INDEX["float_bits"]] = fbits
    f[_INDEX["log2_in_bytes"]] = _log2(in_b)
    f[_INDEX["log2_weight_bytes"]] = _log2(w_b)
    f[_INDEX["log2_out_bytes"]] = _log2(out_b)
    f[_INDEX["log2_bytes_moved"]] = _log2(total_b)
    f[_INDEX["arith_intensity"]] = macs / total_b if total_b > 0 else 0.0
    f[_INDEX["log2_macs_x_wbits"]] = lm * eff_w
    f[_INDEX["log2_macs_x_abits"]] = lm * (abits or fbits)
    return f


def featurize_many(pairs: Iterable[tuple["Workload", Union[Candidate, str]]]) -> np.ndarray:
    """Stacked `featurize` rows: shape (len(pairs), len(FEATURE_NAMES))."""
    rows = [featurize(w, c) for w, c in pairs]
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float64)
    return np.stack(rows)
