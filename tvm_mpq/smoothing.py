"""Activation smoothing: per-input-channel factors that move activation outliers into the weights.

A layer y = x · W^T computes the same y from (x / s) · (W · s)^T for any positive per-input-channel
vector s. Dividing the activation by s before its per-tensor quantization shrinks the channels with
outliers, so the 8-bit grid fits the rest; multiplying the weight's input channels by s widens the
weight's per-output-channel ranges instead (SmoothQuant, Xiao et al. 2023). The factor

    s_c = max|x_c|^alpha / max_o |W_oc|^(1 - alpha),   scaled to geometric mean 1,

trades the two errors; which alpha (or none) is best depends on the layer, so each layer takes the one
with the least output error on its own calibration rows (`choose`). Nothing is added at run time: the
quantize that precedes the layer multiplies by a per-channel vector instead of a scalar, and the
scaled weights are quantized at compile time.

Scope: layers whose candidate has 8-bit weights and 8-bit activations (W8A8), linear layers and convs
without groups whose kernel is 1x1 (the rows of a 1x1 conv are its pixels). With 16-bit activations the
activation error is already negligible; with 4-bit weights the weight error dominates.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import numerics

ALPHAS = (0.25, 0.5, 0.75)  # migration strengths tried per layer, besides no smoothing
CANDIDATE = "W8A8"  # the candidate the factors are chosen for and applied to
MAX_ROWS = 2048  # calibration rows a layer keeps to choose its factors


def eligible(layer) -> bool:
    """A linear layer, or a conv without groups whose kernel is 1x1."""
    if layer.weight is None:
        return False
    if layer.op_type == "linear":
        return True
    wl = layer.workload
    return layer.op_type == "conv2d" and wl.groups == 1 and tuple(wl.weight_shape[2:]) == (1, 1)


def factors(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """float32 [C]: max|x_c|^alpha / max|W_c|^(1 - alpha), geometric mean 1. Channels that never carry a
    value, or whose weights are all zero, get factor 1 before the scaling."""
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(weight_absmax, np.float64)
    live = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[live] = a[live] ** alpha / w[live] ** (1.0 - alpha)
    s /= np.exp(np.mean(np.log(s)))
    return s.astype(np.float32)


def scale_weight(weight: np.ndarray, s) -> np.ndarray:
    """W · s along the input-channel axis (axis 1 of [O, K] and of [O, C, KH, KW]), in float32."""
    w = np.asarray(weight, np.float32)
    shape = (1, -1) + (1,) * (w.ndim - 2)
    return (w * np.asarray(s, np.float32).reshape(shape)).astype(np.float32)


def weight_absmax(weight: np.ndarray) -> np.ndarray:
    """max over output channels (and kernel taps) of |W| per input channel: [C]."""
    w = np.abs(np.asarray(weight, np.float32))
    return w.max(axis=tuple(i for i in range(w.ndim) if i != 1))


def _output_error(rows: np.ndarray, w2d: np.ndarray, y_ref: np.ndarray, s: Optional[np.ndarray],
                  lo: np.ndarray, hi: np.ndarray) -> float:
    """Mean squared error of the W8A8 layer output on `rows` ([N, C]) with factors `s` (None: none)."""
    ones = np.ones(rows.shape[1], np.float32)
    s = ones if s is None else s
    enc = numerics.encoding_from_range(float(np.min(lo / s)), float(np.max(hi / s)), 8)
    xq = numerics.dequantize_act(numerics.quantize_act(rows / s, enc), enc).astype(np.float64)
    q, scale = numerics.quantize_weight(w2d * s, 8)
    wq = numerics.dequantize_weight(q, scale).astype(np.float64)
    return float(np.mean((xq @ wq.T - y_ref) ** 2))


def choose(rows: np.ndarray, weight: np.ndarray, channel_lo: np.ndarray, channel_hi: np.ndarray,
           alphas=ALPHAS) -> Optional[np.ndarray]:
    """The factors (float32 [C]) of the alpha whose W8A8 layer output on `rows` ([N, C] calibration
    inputs) is closest to the float output, or None when no smoothing is closest. `channel_lo/hi` are the
    per-channel extremes over all calibration data, which set the activation range."""
    rows = np.asarray(rows, np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        return None
    w2d = np.asarray(weight, np.float32).reshape(weight.shape[0], weight.shape[1])
    lo, hi = np.asarray(channel_lo, np.float32), np.asarray(channel_hi, np.float32)
    y_ref = rows.astype(np.float64) @ w2d.astype(np.float64).T
    amax = np.maximum(np.abs(lo), np.abs(hi))
    wmax = weight_absmax(weight)
    best, best_err = None, _output_error(rows, w2d, y_ref, None, lo, hi)
    for alpha in alphas:
        s = factors(amax, wmax, alpha)
        err = _output_error(rows, w2d, y_ref, s, lo, hi)
        if err < best_err:
            best, best_err = s, err
    return best
