"""The quantization spec against direct NumPy arithmetic."""

import numpy as np
import pytest

from tvm_mpq import numerics


def test_weight_quantization_is_symmetric_per_channel_narrow_range():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0  # an all-zero channel must not divide by zero
    for bits, qmax in ((8, 127), (4, 7)):
        q, scale = numerics.quantize_weight(w, bits)
        assert q.dtype == np.int8 and scale.shape == (5,)
        assert q.min() >= -qmax and q.max() <= qmax
        # The largest magnitude of every nonzero channel maps to ±qmax.
        for o in (0, 1, 3, 4):
            assert np.abs(q[o]).max() == qmax
        assert np.all(q[2] == 0)
        err = np.abs(numerics.dequantize_weight(q, scale) - w)
        assert np.all(err <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-6)


def test_rounding_is_half_to_even():
    q, _ = numerics.quantize_weight(np.array([[0.5, 1.5, 2.5, -0.5, 127.0]], np.float32), 8)
    assert q.tolist() == [[0, 2, 2, 0, 127]]
    enc = numerics.ActEncoding(scale=1.0, zero_point=10, bits=8)
    assert numerics.quantize_act(np.array([0.5, 1.5, -0.5, 300.0, -20.0]), enc).tolist() == [10, 12, 10, 255, 0]


@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 3, 3), (2, 1, 5, 5), (1, 1)])
def test_int4_pack_roundtrip_odd_sizes(shape):
    rng = np.random.default_rng(1)
    q = rng.integers(-8, 8, size=shape).astype(np.int8)
    packed = numerics.pack_int4(q)
    k = int(np.prod(shape[1:]))
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], (k + 1) // 2)
    assert np.array_equal(numerics.unpack_int4(packed, shape), q)
    # Layout: element 0 in the low nibble, element 1 in the high nibble, offset by 8.
    flat = q.reshape(shape[0], -1).astype(np.int16) + 8
    assert packed[0, 0] == (flat[0, 0] | ((flat[0, 1] << 4) if k > 1 else 8 << 4))


def test_int4_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="int4"):
        numerics.pack_int4(np.array([[9]], np.int8))


@pytest.mark.parametrize("bits", [8, 16])
def test_activation_encoding_covers_range_and_zero_exactly(bits):
    enc = numerics.encoding_from_range(0.5, 6.0, bits)  # range extended to contain 0
    qmin, qmax = numerics.act_qrange(bits)
    assert enc.qmin == qmin and enc.qmax == qmax
    x = np.array([0.0, 6.0, 3.3], np.float32)
    q = numerics.quantize_act(x, enc)
    assert q.dtype == np.dtype(numerics.act_dtype(bits))
    assert q[0] == enc.zero_point  # real zero is exactly representable (zero padding is exact)
    assert np.all(np.abs(numerics.dequantize_act(q, enc) - x) <= enc.scale / 2 + 1e-6)


def test_encoding_rejects_non_finite_ranges():
    with pytest.raises(ValueError, match="NaN or Inf"):
        numerics.encoding_from_range(float("nan"), 1.0, 8)


def test_range_estimators_clip_outliers():
    rng = np.random.default_rng(2)
    sample = np.concatenate([rng.normal(size=100_000), [80.0]]).astype(np.float32)
    lo, hi = float(sample.min()), float(sample.max())
    _, p_hi = numerics.range_percentile(sample, lo, hi, 99.9)
    _, m_hi = numerics.range_mse(sample, lo, hi, 8)
    assert p_hi < 10 and m_hi < hi
    enc_mse = numerics.encoding_from_range(lo * m_hi / hi, m_hi, 8)
    enc_mm = numerics.encoding_from_range(lo, hi, 8)
    mse = lambda e: np.mean((numerics.dequantize_act(numerics.quantize_act(sample, e), e) - sample) ** 2)
    assert mse(enc_mse) < mse(enc_mm)


def test_sqnr():
    x = np.ones(100)
    assert numerics.sqnr_db(x, x) == float("inf")
    assert numerics.sqnr_db(x, x * 1.1) == pytest.approx(20.0)


def test_candidates():
    assert numerics.get_candidate("w4a8").weight_bits == 4
    assert numerics.get_candidate("W8A16").acc_dtype == "int64"
    with pytest.raises(ValueError, match="known: FP32"):
        numerics.get_candidate("W3A3")


def test_accumulator_is_int32_exactly_where_no_sum_can_overflow():
    """16-bit activations accumulate in int32 where sum_k |w[o, k]| * max|x - zp| stays within int32 for every
    output channel, checked against the worst-case sum NumPy forms in int64."""
    w8a16, w4a16, w8a8 = (numerics.get_candidate(n) for n in ("W8A16", "W4A16", "W8A8"))
    enc = numerics.encoding_from_range(-1.0, 3.0, 16)  # zero point inside the range: reach = qmax - zp
    reach = max(enc.qmax - enc.zero_point, enc.zero_point - enc.qmin)
    assert reach > 32767
    depthwise = np.full((32, 1, 5, 5), 127, np.int8)  # 25 * 127 * reach = 2.1e8
    assert numerics.accumulator_dtype(w8a16, depthwise, enc) == "int32"
    for k in (200, 257, 258, 4000):  # full-scale weights: int32 holds up to 2^31 - 1 // (127 * reach) terms
        q = np.full((3, k), -127, np.int8)
        worst = int(np.abs(q.astype(np.int64)).sum(axis=1).max()) * reach
        assert (numerics.accumulator_dtype(w8a16, q, enc) == "int32") == (worst <= 2**31 - 1)
    limit8, limit4 = (2**31 - 1) // (127 * reach), (2**31 - 1) // (7 * reach)  # full-scale terms int32 holds
    assert numerics.accumulator_dtype(w8a16, np.full((3, limit8), 127, np.int8), enc) == "int32"
    assert numerics.accumulator_dtype(w8a16, np.full((3, limit8 + 1), 127, np.int8), enc) == "int64"
    sparse = np.zeros((3, 4000), np.int8)
    sparse[:, :100] = 127  # what bounds the sum is the weights, not K
    assert numerics.accumulator_dtype(w8a16, sparse, enc) == "int32"
    assert numerics.accumulator_dtype(w4a16, np.full((8, limit4), 7, np.int8), enc) == "int32"
    assert numerics.accumulator_dtype(w4a16, np.full((8, limit4 + 1), -7, np.int8), enc) == "int64"
    assert numerics.accumulator_dtype(w8a8, np.full((3, 10**5), 127, np.int8),
                                      numerics.encoding_from_range(0, 1, 8)) == "int32"  # 8-bit: always int32
