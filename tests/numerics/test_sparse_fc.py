"""The sparse path of ``kernels.fully_connected`` (``_sparse_fully_connected``): inputs that are
mostly the zero point (a Transformer's one-hot and two-hot embedding rows) are summed over their
nonzero columns only. It must give the reference's integers and the reference's OverflowStats
(events, outputs, required_bits) wherever it runs, and decline (the dense path running instead,
still equal to the reference) wherever the accumulator's order matters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics.strategies import edgy_integers, int_arrays, int_types
from simulator.contract import AccumulatorSpec, IntType, MacOrder, Overflow, SaturationPoint
from simulator.numerics import kernels, reference
from simulator.numerics.fixed_point import OverflowStats

FAST = settings(deadline=None)
MIN_K = 256                      # the sparse path only runs on rows at least this long
ACC_BITS = (16, 24, 32)


@st.composite
def sparse_fc_cases(draw, max_nonzeros: int = 4):
    """x [N, K >= 256] all at a nonzero zero point but for 0..max_nonzeros entries a row (often
    at the ends of the type), w [M, K] of 4/8/16 bits drawn from a seed (often at the type's
    ends), one weight zero point per output channel, a bias or none."""
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    k = draw(st.integers(MIN_K, 700))
    xt = draw(int_types(bits=(8, 16)))
    wt = draw(int_types(bits=(4, 8, 16)))
    x_zp = draw(edgy_integers(xt.qmin, xt.qmax).filter(lambda v: v != 0))
    x = np.full((n, k), x_zp, np.int64)
    for row in range(n):
        count = draw(st.integers(0, max_nonzeros))
        cols = draw(st.lists(st.integers(0, k - 1), min_size=count, max_size=count, unique=True))
        for col in cols:
            x[row, col] = draw(edgy_integers(xt.qmin, xt.qmax))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    w = rng.integers(wt.qmin, wt.qmax, (m, k), endpoint=True)
    ends = rng.random((m, k)) < 0.3
    w[ends] = rng.choice([wt.qmin, wt.qmax], int(ends.sum()))
    w_zp = draw(int_arrays((m,), wt.qmin, wt.qmax))
    bias = draw(st.one_of(st.none(), int_arrays((m,), -(1 << 20), 1 << 20)))
    return x, w, bias, x_zp, w_zp


@st.composite
def order_independent_accumulators(draw) -> AccumulatorSpec:
    """Wrap at any saturation point (modular: any order), or saturation of the final sum."""
    overflow = draw(st.sampled_from(list(Overflow)))
    point = draw(st.sampled_from(list(SaturationPoint))) if overflow is Overflow.WRAP \
        else SaturationPoint.FINAL
    tile = draw(st.integers(1, 64)) if point is SaturationPoint.PER_TILE else 0
    acc = AccumulatorSpec(draw(st.sampled_from(ACC_BITS)), overflow, point, tile,
                          draw(st.sampled_from(list(MacOrder))))
    assert acc.order_independent
    return acc


@st.composite
def order_dependent_accumulators(draw) -> AccumulatorSpec:
    point = draw(st.sampled_from([SaturationPoint.PER_MAC, SaturationPoint.PER_TILE]))
    tile = draw(st.integers(1, 64)) if point is SaturationPoint.PER_TILE else 0
    acc = AccumulatorSpec(draw(st.sampled_from(ACC_BITS)), Overflow.SATURATE, point, tile,
                          draw(st.sampled_from(list(MacOrder))))
    assert not acc.order_independent
    return acc


def _sparse_direct(x, w, bias, x_zp, w_zp, acc):
    """``_sparse_fully_connected`` called as ``fully_connected`` calls it."""
    m = w.shape[0]
    wz = np.asarray(w, np.int64) - reference._channel_zero_points(w_zp, m)[:, None]
    b = np.zeros(m, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(m)
    return kernels._sparse_fully_connected(np.asarray(x, np.int64), int(x_zp), wz, b, acc)


def _assert_equal(got, want):
    (values, stats), (want_values, want_stats) = got, want
    assert isinstance(stats, OverflowStats)
    assert stats == want_stats, f"stats {stats} != reference {want_stats}"
    assert values.dtype == np.int64 and values.shape == want_values.shape
    np.testing.assert_array_equal(values, want_values)


# ============================================================================ properties

@FAST
@given(sparse_fc_cases(), order_independent_accumulators())
def test_sparse_path_equals_reference(case, acc):
    want = reference.fully_connected(*case, acc)
    sparse = _sparse_direct(*case, acc)
    assert sparse is not None, "the sparse path declined a row of <= 4 nonzeros in K >= 256"
    _assert_equal(sparse, want)
    _assert_equal(kernels.fully_connected(*case, acc), want)


@FAST
@given(sparse_fc_cases(), order_dependent_accumulators())
def test_order_dependent_saturation_declines_and_dense_path_agrees(case, acc):
    assert _sparse_direct(*case, acc) is None
    _assert_equal(kernels.fully_connected(*case, acc), reference.fully_connected(*case, acc))


@FAST
@given(sparse_fc_cases(), order_independent_accumulators())
def test_sparse_input_as_the_executor_passes_it(case, acc):
    """The executor hands u8/i8/u16/i16 arrays, not int64: the same answer."""
    x, w, bias, x_zp, w_zp = case
    lo, hi = int(x.min()), int(x.max())
    for dt in (np.uint8, np.int8, np.uint16, np.int16):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            _assert_equal(kernels.fully_connected(x.astype(dt), w, bias, x_zp, w_zp, acc),
                          reference.fully_connected(x, w, bias, x_zp, w_zp, acc))
            break


# ============================================================================ targeted cases

def _two_hot(ids, vocab: int, positions: int, zp: int = 0) -> np.ndarray:
    rows = np.full((len(ids), vocab + positions), zp, np.int64)
    rows[np.arange(len(ids)), ids] = zp + 1
    rows[np.arange(len(ids)), vocab + np.arange(len(ids))] = zp + 1
    return rows


def test_two_hot_rows_overflow_a_narrow_accumulator_like_the_reference():
    """Embedding rows (token + position, as a two-hot embedding input feeds them) whose sums leave
    a 16-bit accumulator: events and required_bits counted as the reference counts them."""
    rng = np.random.default_rng(7)
    x = _two_hot([3, 250, 299, 0, 17], vocab=300, positions=40)
    w = rng.integers(-128, 128, (6, x.shape[1]))
    w[:, :300] = rng.choice([-128, 127], (6, 300))
    bias = np.array([32000, -32000, 0, 5, -(1 << 20), 1 << 20])
    for overflow in Overflow:
        acc = AccumulatorSpec(16, overflow, SaturationPoint.FINAL)
        want = reference.fully_connected(x, w, bias, 0, 0, acc)
        assert want[1].events > 0 and want[1].required_bits > 16
        _assert_equal(_sparse_direct(x, w, bias, 0, 0, acc), want)
        _assert_equal(kernels.fully_connected(x, w, bias, 0, 0, acc), want)


@pytest.mark.parametrize("x_zp", [0, 1, 128, -128, 255])
def test_rows_with_no_nonzero_give_the_bias(x_zp):
    xt = IntType(8, signed=x_zp < 0)
    x = np.full((4, 300), x_zp, np.int64)
    x[1, 299] = x_zp + 1 if x_zp < xt.qmax else x_zp - 1    # one row with one nonzero
    w = np.random.default_rng(1).integers(-8, 8, (3, 300))
    bias = np.array([7, -7, 1 << 40])   # beyond every accumulator: saturated or wrapped
    for acc in (AccumulatorSpec(24, Overflow.SATURATE), AccumulatorSpec(24, Overflow.WRAP)):
        want = reference.fully_connected(x, w, bias, x_zp, 3, acc)
        assert want[1].events >= 3
        _assert_equal(_sparse_direct(x, w, bias, x_zp, 3, acc), want)
        _assert_equal(kernels.fully_connected(x, w, bias, x_zp, 3, acc), want)
    all_zero = np.full((2, 300), x_zp, np.int64)
    acc = AccumulatorSpec(32, Overflow.WRAP)
    _assert_equal(_sparse_direct(all_zero, w, None, x_zp, 3, acc),
                  reference.fully_connected(all_zero, w, None, x_zp, 3, acc))


def test_scalar_weight_zero_point():
    x = _two_hot([1, 2, 3], vocab=260, positions=8, zp=5)
    w = np.random.default_rng(2).integers(0, 256, (4, x.shape[1]))
    acc = AccumulatorSpec(16, Overflow.SATURATE)
    want = reference.fully_connected(x, w, None, 5, 128, acc)
    _assert_equal(_sparse_direct(x, w, None, 5, 128, acc), want)
    _assert_equal(kernels.fully_connected(x, w, None, 5, 128, acc), want)


def test_the_sparse_path_declines_short_or_dense_rows_and_the_dense_path_agrees():
    rng = np.random.default_rng(3)
    acc = AccumulatorSpec(16, Overflow.SATURATE)
    short = _two_hot([1, 2], vocab=200, positions=8)            # K = 208 < 256
    dense = rng.integers(-3, 4, (3, 300))                        # most entries nonzero
    for x in (short, dense):
        w = rng.integers(-128, 128, (5, x.shape[1]))
        assert _sparse_direct(x, w, None, 0, 0, acc) is None
        _assert_equal(kernels.fully_connected(x, w, None, 0, 0, acc),
                      reference.fully_connected(x, w, None, 0, 0, acc))


def test_per_mac_saturation_on_two_hot_rows_declines_and_agrees():
    """The order matters under per-MAC saturation: w[tok] saturates before w[pos] comes back."""
    x = _two_hot([0, 1], vocab=300, positions=4)
    w = np.zeros((1, x.shape[1]), np.int64)
    w[0, :2] = 32767            # the token column: the accumulator reaches its top
    w[0, 300:] = -32768         # the position column: falls far below
    bias = np.array([32767])
    for point, tile in ((SaturationPoint.PER_MAC, 0), (SaturationPoint.PER_TILE, 16)):
        acc = AccumulatorSpec(16, Overflow.SATURATE, point, tile)
        want = reference.fully_connected(x, w, bias, 0, 0, acc)
        assert want[0][0, 0] == 32767 - 32768          # saturated at 32767, then the position
        assert _sparse_direct(x, w, bias, 0, 0, acc) is None
        _assert_equal(kernels.fully_connected(x, w, bias, 0, 0, acc), want)
    final = AccumulatorSpec(16, Overflow.SATURATE)
    want = reference.fully_connected(x, w, bias, 0, 0, final)
    assert want[0][0, 0] == 32767 + 32767 - 32768      # the exact sum, in range
    _assert_equal(_sparse_direct(x, w, bias, 0, 0, final), want)
