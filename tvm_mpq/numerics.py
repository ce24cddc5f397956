"""The quantization spec shared by the PyTorch simulator and the TVM lowering.

Everything here is NumPy: both executors take their quantized weights and activation
encodings from these functions, so the two agree by construction.

Spec
- Weights: symmetric, per output channel, narrow range [-(2^(b-1)-1), 2^(b-1)-1] (int8: ±127, int4: ±7).
  int4 weights are stored packed two per byte (see `pack_int4`).
- Activations: per tensor, asymmetric; 8 bit → uint8 [0, 255], 16 bit → int16 [-32768, 32767].
  The range always contains 0, so zero padding is exact in the quantized domain.
- Quantizing an activation: round(x × float32(1 / scale)) + zero point, clamped.
- Rounding: round half to even (np.rint / torch.round / llvm nearbyint); saturating clamp.
- Accumulation: int32 for 8-bit activations, int64 for 16-bit activations
  (a 16-bit × 8-bit product sum overflows int32 beyond ~500 terms).
- Requantization: the integer accumulator (converted to float32) is divided by the float32 divisor
  1 / (activation scale × weight scale of the output channel) (`requant_divisor`), the bias correction
  subtracted and the float bias added, in that order. A division rather than a multiply because TVM's
  LLVM backend contracts a float multiply followed by an add or subtract (the correction, the bias, a
  residual add, a pooling sum) into one FMA, which rounds once where the simulator rounds twice; a
  division is never contracted, so both executors round at the same points.
- Bias correction: rounding the weights shifts each output channel's mean by E[conv(x, Q(w) - w)];
  the shift is measured on the calibration inputs of the float model (`bias_correction`) and taken
  off the output. It costs nothing at run time (it joins the requantize) and matters most for
  depthwise convs, whose few taps do not average rounding errors out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A precision choice for a layer: weight bits, activation bits, or a float dtype."""

    name: str
    weight_bits: Optional[int]  # None: weights stay float
    act_bits: Optional[int]  # None: activations stay float
    float_dtype: str = "float32"  # dtype of the float compute when unquantized

    @property
    def is_quantized(self) -> bool:
        return self.act_bits is not None

    @property
    def acc_dtype(self) -> str:
        return "int64" if (self.act_bits or 0) > 8 else "int32"


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate("FP32", None, None, "float32"),
        Candidate("FP16", None, None, "float16"),
        Candidate("W8A8", 8, 8),
        Candidate("W4A8", 4, 8),
        Candidate("W8A16", 8, 16),
        Candidate("W4A16", 4, 16),
    )
}


def get_candidate(name: str) -> Candidate:
    key = name.upper()
    if key not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
    return CANDIDATES[key]


# ----------------------------------------------------------------------------- weights


def weight_qmax(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"weight bits must be 4 or 8, got {bits}")
    return 2 ** (bits - 1) - 1


def quantize_weight(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization of `w` ([O, ...]).

    Returns (q int8 with the same shape, scale float32 [O]). An all-zero channel gets scale 1.
    """
    w = np.asarray(w, dtype=np.float32)
    qmax = weight_qmax(bits)
    absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    bshape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(bshape)), -qmax, qmax).astype(np.int8)
    return q, scale


def requant_divisor(act_scale, weight_scale) -> np.ndarray:
    """float32 divisor that scales an integer accumulator back to float: 1 / (act_scale × weight_scale),
    each factor and the product and quotient rounded to float32 (one value per output channel, or a
    scalar for two activation scales)."""
    mult = (np.float32(act_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    return (np.float32(1.0) / mult).astype(np.float32)


def dequantize_weight(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    bshape = (-1,) + (1,) * (q.ndim - 1)
    return (q.astype(np.float32) * scale.reshape(bshape)).astype(np.float32)


def bias_correction(weight: np.ndarray, bits: int, mean_patch: np.ndarray, groups: int = 1) -> np.ndarray:
    """Mean output shift of each output channel from quantizing `weight` to `bits`: (Q(w) - w) · m.

    weight [O, C/groups, KH, KW] (conv) or [O, K] (linear); mean_patch is the mean input patch seen by
    the layer over the calibration data, [C, KH, KW] or [K] (zero padding included), so the result is
    exactly the mean over those inputs of conv(x, Q(w) - w) per channel. float32 [O].
    """
    w = np.asarray(weight, np.float32)
    q, scale = quantize_weight(w, bits)
    delta = (dequantize_weight(q, scale).astype(np.float64) - w.astype(np.float64)).reshape(w.shape[0], -1)
    o = w.shape[0]
    m = np.asarray(mean_patch, np.float64).reshape(groups, -1)
    if o % groups or m.shape[1] != delta.shape[1]:
        raise ValueError(f"mean patch {np.shape(mean_patch)} does not match weight {w.shape} with {groups} group(s)")
    per_group = delta.reshape(groups, o // groups, -1)
    return np.einsum("gok,gk->go", per_group, m).reshape(o).astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack int4 values ([O, ...], each in [-8, 7]) two per byte → uint8 [O, ceil(K/2)].

    K is the product of the non-leading dims; element k of a row sits in byte k // 2,
    in the low nibble when k is even and the high nibble when odd, stored offset by +8.
    """
    q = np.asarray(q)
    if q.min(initial=0) < -8 or q.max(initial=0) > 7:
        raise ValueError("int4 values must lie in [-8, 7]")
    rows = q.reshape(q.shape[0], -1).astype(np.int16) + 8
    k = rows.shape[1]
    if k % 2:
        rows = np.concatenate([rows, np.full((rows.shape[0], 1), 8, np.int16)], axis=1)
    packed = rows[:, 0::2] | (rows[:, 1::2] << 4)
    return packed.astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_int4`: uint8 [O, ceil(K/2)] → int8 of `shape`."""
    packed = np.asarray(packed, dtype=np.uint8).astype(np.int16)
    lo = (packed & 0xF) - 8
    hi = (packed >> 4) - 8
    rows = np.stack([lo, hi], axis=2).reshape(packed.shape[0], -1)
    k = int(np.prod(shape[1:]))
    return rows[:, :k].reshape(shape).astype(np.int8)


# ----------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class ActEncoding:
    """Per-tensor affine encoding of an activation: real = (q - zero_point) * scale.

    With `channel_scale` (smoothing factors s, `tvm_mpq.smoothing`) the encoded tensor is the activation
    divided by s along its channel axis: real_c = (q - zero_point) * scale * s_c."""

    scale: float
    zero_point: int
    bits: int
    channel_scale: Optional[tuple[float, ...]] = None

    @property
    def dtype(self) -> str:
        return act_dtype(self.bits)

    @property
    def inv_scale(self) -> float:
        """float32 1 / scale: quantizing multiplies by it (a multiply is cheaper than a division, and the
        rounding that follows keeps the compiler from contracting it into an FMA)."""
        return float(np.float32(1.0) / np.float32(self.scale))

    @property
    def qmin(self) -> int:
        return act_qrange(self.bits)[0]

    @property
    def qmax(self) -> int:
        return act_qrange(self.bits)[1]

    def multiplier(self):
        """What quantizing multiplies by before rounding: the float32 `inv_scale`, or with smoothing
        factors the float32 vector inv_scale / s (one multiply per element either way)."""
        if self.channel_scale is None:
            return np.float32(self.inv_scale)
        return (np.float32(self.inv_scale) / np.asarray(self.channel_scale, np.float32)).astype(np.float32)

    def to_dict(self) -> dict:
        out = {"scale": self.scale, "zero_point": self.zero_point, "bits": self.bits}
        if self.channel_scale is not None:
            out["channel_scale"] = list(self.channel_scale)
        return out


def act_dtype(bits: int) -> str:
    if bits == 8:
        return "uint8"
    if bits == 16:
        return "int16"
    raise ValueError(f"activation bits must be 8 or 16, got {bits}")


INT32_MAX = 2**31 - 1


def accumulator_dtype(cand: "Candidate", q: np.ndarray, enc: "ActEncoding") -> str:
    """The narrowest exact accumulator of a layer with integer weights `q` ([O, ...]) and input encoding
    `enc`: int32 wherever no sum can leave its range, sum_k |q[o, k]| * max|x - zp| <= 2^31 - 1 for every
    output channel o (padded conv positions hold the zero point and add 0), else the candidate's own
    (int64 for 16-bit activations). Depthwise and small-K 16-bit layers fit: 25 terms of 65535 * 127 are
    2.1e8. The sums are the same integers either way."""
    if cand.acc_dtype == "int32":
        return "int32"
    reach = max(enc.qmax - enc.zero_point, enc.zero_point - enc.qmin)
    worst = int(np.abs(np.asarray(q, np.int64)).reshape(len(q), -1).sum(axis=1).max(initial=0)) * int(reach)
    return "int32" if worst <= INT32_MAX else cand.acc_dtype


def act_qrange(bits: int) -> tuple[int, int]:
    if bits == 8:
        return 0, 255
    if bits == 16:
        return -32768, 32767
    raise ValueError(f"activation bits must be 8 or 16, got {bits}")


def encoding_from_range(lo: float, hi: float, bits: int) -> ActEncoding:
    """Asymmetric encoding covering [lo, hi] (extended to contain 0)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite (NaN or Inf in calibration outputs?)")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = act_qrange(bits)
    span = hi - lo
    scale = np.float32(span / (qmax - qmin)) if span > 0 else np.float32(1.0)
    zero_point = int(np.clip(np.rint(qmin - lo / float(scale)), qmin, qmax))
    return ActEncoding(float(scale), zero_point, bits)


def quantize_act(x: np.ndarray, enc: ActEncoding) -> np.ndarray:
    q = np.rint(np.asarray(x, np.float32) * np.float32(enc.inv_scale)) + enc.zero_point
    return np.clip(q, enc.qmin, enc.qmax).astype(enc.dtype)


def dequantize_act(q: np.ndarray, enc: ActEncoding) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(enc.zero_point)) * np.float32(enc.scale)).astype(np.float32)


# ----------------------------------------------------------------------------- range estimation

RANGE_METHODS = ("minmax", "percentile", "mse")


def range_percentile(sample: np.ndarray, lo: float, hi: float, percentile: float = 99.99) -> tuple[float, float]:
    """Clip the observed range to the given two-sided percentile of `sample`."""
    if sample.size == 0:
        return lo, hi
    plo, phi = np.percentile(sample, [100.0 - percentile, percentile])
    return max(lo, float(plo)), min(hi, float(phi))


def range_mse(sample: np.ndarray, lo: float, hi: float, bits: int, steps: int = 40) -> tuple[float, float]:
    """Shrink [lo, hi] by the factor that minimises the quantize-dequantize MSE on `sample`."""
    if sample.size == 0 or hi <= lo:
        return lo, hi
    best, best_err = (lo, hi), np.inf
    for alpha in np.linspace(1.0, 0.2, steps):
        enc = encoding_from_range(lo * alpha, hi * alpha, bits)
        err = float(np.mean((dequantize_act(quantize_act(sample, enc), enc) - sample) ** 2))
        if err < best_err:
            best, best_err = (lo * alpha, hi * alpha), err
    return float(best[0]), float(best[1])


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `test` against `reference`, in dB (inf if equal)."""
    ref = np.asarray(reference, np.float64)
    err = ref - np.asarray(test, np.float64)
    noise = float(np.mean(err**2))
    signal = float(np.mean(ref**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)
