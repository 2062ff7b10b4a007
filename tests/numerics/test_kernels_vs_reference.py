"""Every numba kernel equals the NumPy reference, bit for bit, statistics included.

Style rule 1 ("reference first, ports second"): the reference is the oracle; a kernel that
moves one bit, one overflow event or one bit of ``required_bits`` fails here. Property tests
draw random small cases over the whole arithmetic contract; targeted tests pin the edges
(ties, INT32_MIN * INT32_MIN, accumulators exactly at their limits, order-dependent
saturation, the exactness bounds of the fast GEMM paths).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numerics.strategies import (ConvCase, accumulator_specs, conv_cases, edgy_integers,
                                 fc_cases, int_arrays, int_types, matmul_cases,
                                 narrow_accumulators, of_type, prepared_scales, roundings,
                                 zero_points)
from simulator.contract import (AccumulatorSpec, MacOrder, Overflow, RequantMode, RequantSpec,
                                RoundingMode, SaturationPoint)
from simulator.numerics import fixed_point as fp
from simulator.numerics import kernels, reference, tasks
from simulator.numerics.fixed_point import INT32_MAX, INT32_MIN, OverflowStats, PreparedScale

FAST = settings(deadline=None)

# Each engine behind the order-independent and order-dependent plans, switched off in turn so
# that every one of them is compared with the reference on whatever machine runs the tests.
GEMM_ENGINES = {
    "best": set(),
    "vnni16": {"vnni8"},
    "float32": {"vnni8", "vnni16", "depthwise"},
    "float64": {"vnni8", "vnni16", "depthwise", "float32"},
    "int64": {"vnni8", "vnni16", "depthwise", "float32", "float64"},
}
LANE_ENGINES = {"best": set(), "int32-ymm": {"zmm"}, "int64": {"int32"}}


@contextlib.contextmanager
def disabled(paths):
    saved = set(kernels.DISABLED_PATHS)
    kernels.DISABLED_PATHS.clear()
    kernels.DISABLED_PATHS.update(paths)
    try:
        yield
    finally:
        kernels.DISABLED_PATHS.clear()
        kernels.DISABLED_PATHS.update(saved)


def engines_for(acc: AccumulatorSpec):
    return GEMM_ENGINES if acc.order_independent else LANE_ENGINES


def _check(fn_name, want, got):
    if isinstance(want, tuple):
        (want, want_stats), (got, got_stats) = want, got
        assert isinstance(got_stats, OverflowStats)
        assert got_stats == want_stats, f"{fn_name} stats {got_stats} != reference {want_stats}"
    assert got.dtype == np.int64 and want.dtype == np.int64
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want, err_msg=f"{fn_name} differs from the reference")
    return got


def assert_same(fn_name, *args):
    """kernels.fn(*args) == reference.fn(*args): values, dtype, shape and (MAC ops) stats."""
    return _check(fn_name, getattr(reference, fn_name)(*args), getattr(kernels, fn_name)(*args))


def assert_mac_same(fn_name, *args):
    """Every engine the plan could pick agrees with the reference."""
    want = getattr(reference, fn_name)(*args)
    for paths in engines_for(args[-1]).values():
        with disabled(paths):
            _check(fn_name, want, getattr(kernels, fn_name)(*args))


# ============================================================================ MAC properties

@FAST
@given(conv_cases(), accumulator_specs())
def test_conv2d_equals_reference(case: ConvCase, acc):
    assert_mac_same("conv2d", *case.args(acc))


@FAST
@given(conv_cases(), narrow_accumulators())
def test_conv2d_narrow_accumulators_equal_reference(case: ConvCase, acc):
    assert_mac_same("conv2d", *case.args(acc))


@settings(deadline=None, max_examples=max(5, settings.default.max_examples // 4))
@given(st.data(), accumulator_specs())
def test_conv2d_wide_layer_equals_reference(data, acc):
    """More than 64 output channels and widths that do not fill a VNNI micro-tile."""
    xt, wt = data.draw(int_types(bits=(4, 8))), data.draw(int_types(bits=(2, 4, 8)))
    c = data.draw(st.integers(1, 5))
    oc = data.draw(st.sampled_from([16, 65, 70]))
    dilation = data.draw(st.integers(1, 2))
    w = data.draw(st.integers(2 * dilation - 1, 9))
    x = data.draw(of_type((1, c, 3, w), xt))
    wts = data.draw(of_type((oc, c, 3, 3), wt))
    stride = data.draw(st.integers(1, 2))
    case = ConvCase(x, wts, data.draw(int_arrays((oc,), -500, 500)),
                    data.draw(edgy_integers(xt.qmin, xt.qmax)), 0, (1, stride), (1, 1, 1, 1),
                    (1, dilation), 1)
    assert_mac_same("conv2d", *case.args(acc))


def assert_conv_requantize_same(case: ConvCase, acc, prepared, axis, acc_zp, y_zp, qmin, qmax):
    """kernels.conv2d_requantize == reference.requantize(reference.conv2d(...)): the output,
    the accumulators and their statistics, on every engine the plan could pick."""
    want_acc, want_stats = reference.conv2d(*case.args(acc))
    want = reference.requantize(want_acc, acc_zp, prepared, axis, y_zp, qmin, qmax)
    conv = kernels.PreparedConv(case.w, case.bias, case.w_zp, case.strides, case.pads,
                                case.dilations, case.groups)
    x = np.asarray(case.x)
    narrow = next((np.dtype(t) for t in (np.uint8, np.int8, np.int16)
                   if x.size and np.iinfo(t).min <= x.min() and x.max() <= np.iinfo(t).max),
                  np.dtype(np.int64))
    for paths in engines_for(acc).values():
        with disabled(paths):
            for keep, xs in ((True, x), (False, x.astype(narrow))):
                y, got_acc, stats = kernels.conv2d_requantize(
                    xs, conv, case.x_zp, acc, prepared, axis, acc_zp, y_zp, qmin, qmax, keep)
                assert stats == want_stats
                assert y.dtype == kernels.narrow_dtype(qmin, qmax)
                np.testing.assert_array_equal(y, want)
                if keep:
                    np.testing.assert_array_equal(got_acc, want_acc)
                else:
                    assert got_acc is None


@FAST
@given(st.data(), accumulator_specs())
def test_conv2d_requantize_equals_reference(data, acc):
    """The requantize fused into the conv's epilogue: per tensor or per output channel, every
    rounding mode and the float32 scale, any input and output zero point."""
    case = data.draw(conv_cases())
    oc = case.w.shape[0]
    prepared, per_channel = data.draw(prepared_scales(oc))
    dst = data.draw(int_types(bits=(4, 8, 16)))
    y_zp = data.draw(edgy_integers(dst.qmin, dst.qmax))
    acc_zp = data.draw(st.sampled_from([0, 0, 3, -7]))
    assert_conv_requantize_same(case, acc, prepared, 1, acc_zp, y_zp, dst.qmin, dst.qmax)


@settings(deadline=None, max_examples=max(5, settings.default.max_examples // 4))
@given(st.data(), accumulator_specs())
def test_conv2d_requantize_wide_layer_equals_reference(data, acc):
    """More than 64 output channels (two channel blocks of the VNNI epilogue), u8 or s8 inputs
    with any zero point, a clamp narrower than the type."""
    xt = data.draw(int_types(bits=(8,)))
    oc = data.draw(st.sampled_from([64, 70, 130]))
    c = data.draw(st.integers(1, 9))
    x = data.draw(of_type((1, c, 5, data.draw(st.integers(3, 14))), xt))
    wts = data.draw(of_type((oc, c, 3, 3), data.draw(int_types(bits=(4, 8)))))
    case = ConvCase(x, wts, data.draw(int_arrays((oc,), -5000, 5000)),
                    data.draw(edgy_integers(xt.qmin, xt.qmax)), 0, (1, 1), (1, 1, 1, 1),
                    (1, 1), 1)
    prepared, _ = data.draw(prepared_scales(oc))
    assert_conv_requantize_same(case, acc, prepared, 1, 0, data.draw(st.integers(0, 255)),
                                data.draw(st.integers(0, 20)), data.draw(st.integers(200, 255)))


@pytest.mark.skipif(not kernels.VNNI_AVAILABLE, reason="the fused epilogue is the VNNI engines'")
@pytest.mark.parametrize("mode", [RequantMode.MULTIPLIER_SHIFT, RequantMode.FLOAT_SCALE])
def test_vnni_engines_requantize_in_their_epilogue(monkeypatch, mode):
    """No separate requantize pass (and no accumulator array unless asked) on the VNNI path."""
    rng = np.random.default_rng(5)
    case = ConvCase(rng.integers(0, 256, (1, 16, 9, 9)), rng.integers(-128, 128, (64, 16, 3, 3)),
                    rng.integers(-999, 999, 64), 3, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    acc = AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL)
    prepared = fp.prepare_scale(0.0021, RequantSpec(mode, RoundingMode.HALF_EVEN))
    want = reference.requantize(reference.conv2d(*case.args(acc))[0], 0, prepared, 1, 7, 0, 255)

    def unfused(*args, **kwargs):
        raise AssertionError("requantized in a second pass")
    monkeypatch.setattr(kernels, "requantize", unfused)
    conv = kernels.PreparedConv(case.w, case.bias, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    y, got_acc, _ = kernels.conv2d_requantize(case.x, conv, 3, acc, prepared, 1, 0, 7, 0, 255,
                                              keep_acc=False)
    assert got_acc is None
    np.testing.assert_array_equal(y, want)


@pytest.mark.skipif(not kernels.VNNI_AVAILABLE, reason="the batched engine is the VNNI one")
@pytest.mark.parametrize("x_range,oc", [(None, 70), ((0, 255), 70), (None, 20)])
def test_a_batch_of_images_runs_in_one_vnni_call(monkeypatch, x_range, oc):
    """Many small images (a distillation batch) go through one pack and one task list, two
    channel blocks (70) or the narrow tile (20) and the fused requantize included; each
    image's output is its own."""
    calls = []
    original = kernels._VnniConv.run

    def counted(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)
    monkeypatch.setattr(kernels._VnniConv, "run", counted)
    rng = np.random.default_rng(11)
    case = ConvCase(rng.integers(0, 256, (5, 7, 6, 29)), rng.integers(-128, 128, (oc, 7, 3, 3)),
                    rng.integers(-999, 999, oc), 9, 0, (1, 2), (1, 1, 0, 2), (1, 1), 1)
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL)
    prepared = fp.prepare_scale(0.0017, RequantSpec(RequantMode.MULTIPLIER_SHIFT,
                                                    RoundingMode.HALF_AWAY))
    want_acc, want_stats = reference.conv2d(*case.args(acc))
    want = reference.requantize(want_acc, 0, prepared, 1, 4, 0, 255)
    conv = kernels.PreparedConv(case.w, case.bias, 0, case.strides, case.pads, case.dilations, 1)
    y, got_acc, stats = kernels.conv2d_requantize(case.x.astype(np.uint8), conv, 9, acc,
                                                  prepared, 1, 0, 4, 0, 255, True,
                                                  x_range=x_range)
    assert calls == [5]
    engine, = (e for key, e in conv._engines.items() if key[0] == "vnni8")
    assert engine.n32 == (oc <= 32)      # the 12 x 32 tile for at most 32 channels
    assert stats == want_stats
    np.testing.assert_array_equal(got_acc, want_acc)
    np.testing.assert_array_equal(y, want)


def test_max_pooling_and_concat_keep_a_narrow_dtype():
    """A max and a concatenation are some of their inputs: no widening to int64 (unless a
    window may lie wholly in the padding, where the max of nothing is INT64_MIN)."""
    rng = np.random.default_rng(2)
    x = rng.integers(-300, 300, (2, 3, 7, 8)).astype(np.int16)
    got = kernels.maxpool2d(x, (3, 3), (2, 2), (1, 1, 1, 1))
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, reference.maxpool2d(x, (3, 3), (2, 2), (1, 1, 1, 1)))
    assert kernels.maxpool2d(x, (2, 2), (2, 2), (0, 0, 2, 0)).dtype == np.int64
    u = rng.integers(0, 256, (2, 4, 7, 8)).astype(np.uint8)
    for kernel, strides in (((2, 2), (2, 2)), ((3, 2), (1, 3)), ((7, 8), (1, 1))):
        unpadded = kernels.maxpool2d(u, kernel, strides, (0, 0, 0, 0))   # strided views' max
        assert unpadded.dtype == np.uint8
        np.testing.assert_array_equal(unpadded, reference.maxpool2d(u, kernel, strides,
                                                                    (0, 0, 0, 0)))
    joined = kernels.concat([x, u], 1)
    assert joined.dtype == np.int16
    np.testing.assert_array_equal(joined, reference.concat([x, u], 1))


def test_depthwise_layers_take_their_engine(monkeypatch):
    """A depthwise conv under an order-independent policy runs on the depthwise engine, fused
    requantize included (the property test below would pass on the im2col path alone)."""
    calls = []
    original = kernels.PreparedConv.run_depthwise

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(kernels.PreparedConv, "run_depthwise", counted)
    rng = np.random.default_rng(6)
    case = ConvCase(rng.integers(-128, 128, (1, 40, 9, 9)), rng.integers(-128, 128, (40, 1, 3, 3)),
                    rng.integers(-999, 999, 40), -3, 0, (2, 2), (1, 1, 1, 1), (1, 1), 40)
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL)
    scale = fp.prepare_scale(0.004, RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN))
    assert_conv_requantize_same(case, acc, scale, 1, 0, 5, -128, 127)
    assert calls


@settings(deadline=None, max_examples=max(5, settings.default.max_examples // 4))
@given(st.data(), accumulator_specs())
def test_depthwise_conv_equals_reference(data, acc):
    """Depthwise convs (one input plane per output channel, depth multiplier 1 or 2), strides
    and dilations, any zero points, with and without the fused requantize."""
    xt, wt = data.draw(int_types(bits=(4, 8, 16))), data.draw(int_types(bits=(2, 4, 8)))
    c, mult_ch = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 2))
    k, stride, dilation = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), \
        data.draw(st.integers(1, 2))
    pads = tuple(data.draw(st.integers(0, k - 1)) for _ in range(4))
    size = data.draw(st.integers(dilation * (k - 1) + 1, 11))
    x = data.draw(of_type((data.draw(st.integers(1, 2)), c, size, size + 1), xt))
    wts = data.draw(of_type((c * mult_ch, 1, k, k), wt))
    case = ConvCase(x, wts, data.draw(int_arrays((c * mult_ch,), -5000, 5000)),
                    data.draw(zero_points(xt)), data.draw(zero_points(wt, c * mult_ch)),
                    (stride, stride), pads, (dilation, dilation), c)
    assert_mac_same("conv2d", *case.args(acc))
    prepared, _ = data.draw(prepared_scales(c * mult_ch))
    assert_conv_requantize_same(case, acc, prepared, 1, 0, 3, -100, 100)


@pytest.mark.parametrize("c, oc, h, w", [(5, 7, 3, 3), (16, 96, 11, 13), (70, 13, 9, 8)])
def test_pointwise_layers_equal_reference(c, oc, h, w):
    """1x1 convs as MobileNets have them: channels not a multiple of 4, output channels not a
    multiple of 64, s8 and u8 inputs with their zero points, fused requantize or not, every
    accumulator policy that sums freely."""
    rng = np.random.default_rng(c * oc)
    for lo, hi, zx in ((-128, 127, -5), (0, 255, 200)):
        case = ConvCase(rng.integers(lo, hi + 1, (2, c, h, w)), rng.integers(-128, 128, (oc, c, 1, 1)),
                        rng.integers(-9999, 9999, oc), zx, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1)
        for acc in (AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
                    AccumulatorSpec(18, Overflow.WRAP, SaturationPoint.FINAL),
                    AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.FINAL)):
            assert_mac_same("conv2d", *case.args(acc))
            scale = fp.prepare_scale(np.linspace(1e-4, 3e-3, oc),
                                     RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE))
            assert_conv_requantize_same(case, acc, scale, 1, 0, -3, -128, 127)


@FAST
@given(st.data(), accumulator_specs())
def test_pointwise_conv_over_many_batches_equals_reference(data, acc):
    """A 1x1 stride-1 conv runs its batches as one image (a Transformer's per-channel
    requantize is [tokens, C, 1, 1]): values and overflow statistics stay the reference's,
    dense or depthwise, per-channel zero points included."""
    xt, wt = data.draw(int_types()), data.draw(int_types())
    groups = data.draw(st.sampled_from([1, 2, "depthwise"]))
    c = data.draw(st.integers(1, 6)) * (2 if groups == 2 else 1)
    groups = c if groups == "depthwise" else groups
    oc = groups * data.draw(st.integers(1, 3))
    n, h, w = data.draw(st.integers(2, 40)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    x = data.draw(of_type((n, c, h, w), xt))
    wts = data.draw(of_type((oc, c // groups, 1, 1), wt))
    bias = data.draw(st.one_of(st.none(), int_arrays((oc,), -(1 << 20), 1 << 20)))
    case = ConvCase(x, wts, bias, data.draw(zero_points(xt)), data.draw(zero_points(wt, oc)),
                    (1, 1), (0, 0, 0, 0), (1, 1), groups)
    assert_mac_same("conv2d", *case.args(acc))


@FAST
@given(fc_cases(), accumulator_specs())
def test_fully_connected_equals_reference(case, acc):
    assert_mac_same("fully_connected", *case, acc)


@FAST
@given(fc_cases(), narrow_accumulators())
def test_fully_connected_narrow_accumulators_equal_reference(case, acc):
    assert_mac_same("fully_connected", *case, acc)


@FAST
@given(matmul_cases(), accumulator_specs())
def test_matmul_equals_reference(case, acc):
    assert_mac_same("matmul", *case, acc)


@FAST
@given(matmul_cases(), narrow_accumulators())
def test_matmul_narrow_accumulators_equal_reference(case, acc):
    assert_mac_same("matmul", *case, acc)


# ============================================================================ other properties

@FAST
@given(st.data())
def test_requantize_equals_reference(data):
    shape = data.draw(st.sampled_from([(7,), (2, 3, 4), (1, 4, 3, 2), (2, 5)]))
    axis = data.draw(st.integers(0, len(shape) - 1))
    prepared, _ = data.draw(prepared_scales(shape[axis]))
    src = data.draw(int_types(bits=(8, 16, 24, 32)))
    x = data.draw(of_type(shape, src))
    dst = data.draw(int_types(bits=(2, 4, 8, 16)))
    y_zp = data.draw(edgy_integers(dst.qmin, dst.qmax))
    assert_same("requantize", x, data.draw(edgy_integers(src.qmin, src.qmax)), prepared, axis,
                y_zp, dst.qmin, dst.qmax)


@contextlib.contextmanager
def threaded_always():
    """Every kernel splits its tasks over the thread pool, however small the call."""
    saved = tasks.PARALLEL_WORK
    tasks.PARALLEL_WORK = 0
    try:
        yield
    finally:
        tasks.PARALLEL_WORK = saved


@settings(deadline=None, max_examples=max(5, settings.default.max_examples // 2))
@given(conv_cases(max_ocg=20), accumulator_specs(), st.data())
def test_threaded_task_split_equals_reference(case: ConvCase, acc, data):
    """The task ranges handed to the pool cover every output exactly once."""
    with threaded_always():
        assert_mac_same("conv2d", *case.args(acc))
        prepared, _ = data.draw(prepared_scales(4))
        x = data.draw(int_arrays((2, 4, 3, 5), -(1 << 31), (1 << 31) - 1))
        assert_same("requantize", x, 0, prepared, 1, 3, -128, 127)
        assert_same("avgpool2d", x, 1, (2, 2), (1, 2), (1, 0, 1, 1), True, RoundingMode.HALF_EVEN)
        assert_same("maxpool2d", x, (3, 2), (2, 1), (1, 1, 1, 0))
        assert_same("add", x, 1, x[::-1], -2, 37, -21, 6, RequantMode.MULTIPLIER_SHIFT,
                    RoundingMode.HALF_AWAY, 0, -99, 99)


@st.composite
def pool_cases(draw):
    t = draw(int_types())
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
            draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 7))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 7))
    x = draw(of_type((draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), t))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return t, x, (kh, kw), strides, pads


@FAST
@given(pool_cases())
def test_maxpool2d_equals_reference(case):
    _, x, kernel, strides, pads = case
    assert_same("maxpool2d", x, kernel, strides, pads)


@FAST
@given(pool_cases(), st.booleans(), roundings(), st.data())
def test_avgpool2d_equals_reference(case, include_pad, rounding, data):
    t, x, kernel, strides, pads = case
    assert_same("avgpool2d", x, data.draw(edgy_integers(t.qmin, t.qmax)), kernel, strides, pads,
                include_pad, rounding)


@FAST
@given(int_types(), roundings(), st.data())
def test_global_avgpool2d_equals_reference(t, rounding, data):
    x = data.draw(of_type((data.draw(st.integers(1, 2)), 3, data.draw(st.integers(1, 5)),
                           data.draw(st.integers(1, 5))), t))
    assert_same("global_avgpool2d", x, data.draw(edgy_integers(t.qmin, t.qmax)), rounding)


@FAST
@given(int_types(), int_types(), int_types(bits=(2, 4, 8)), st.sampled_from(list(RoundingMode)),
       st.integers(2, 32), st.data())
def test_add_equals_reference(ta, tb, ty, rounding, mbits, data):
    shape = data.draw(st.sampled_from([(5,), (2, 3, 2)]))
    a, b = data.draw(of_type(shape, ta)), data.draw(of_type(shape, tb))
    za = data.draw(edgy_integers(ta.qmin, ta.qmax))
    zb = data.draw(edgy_integers(tb.qmin, tb.qmax))
    zy = data.draw(edgy_integers(ty.qmin, ty.qmax))
    if rounding is RoundingMode.TFLITE:
        mbits = 32
    top = float(min(8, (1 << (mbits - 1)) - 1))  # ratios a right shift can express
    ra = data.draw(st.floats(1e-4, top))
    rb = data.draw(st.floats(1e-4, top))
    if data.draw(st.booleans()):
        assert_same("add", a, za, b, zb, np.float32(ra), np.float32(rb), 0,
                    RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, zy, ty.qmin, ty.qmax)
    else:
        ma, mb, shift = fp.quantize_multiplier_pair(ra, rb, mbits)
        assert_same("add", a, za, b, zb, ma, mb, shift, RequantMode.MULTIPLIER_SHIFT, rounding,
                    zy, ty.qmin, ty.qmax)


@FAST
@given(int_types(), int_types(), int_types(bits=(2, 4, 8)), st.sampled_from(list(RoundingMode)),
       st.integers(2, 32), st.booleans(), st.data())
def test_mul_equals_reference(ta, tb, ty, rounding, mbits, floating, data):
    """Elementwise and per-channel (squeeze-and-excitation) products, rescaled once."""
    a = data.draw(of_type((2, 3, 2, 2), ta))
    b = data.draw(of_type(data.draw(st.sampled_from([(2, 3, 2, 2), (2, 3, 1, 1), (1,)])), tb))
    za, zb = (data.draw(edgy_integers(t.qmin, t.qmax)) for t in (ta, tb))
    zy = data.draw(edgy_integers(ty.qmin, ty.qmax))
    if rounding is RoundingMode.TFLITE:
        mbits = 32
    spec = RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32) if floating else \
        RequantSpec(RequantMode.MULTIPLIER_SHIFT, rounding, mbits)
    top = float(min(4, (1 << (mbits - 1)) - 1))  # scales a right shift can express
    prepared = fp.prepare_scale(data.draw(st.floats(1e-6, top)), spec)
    assert_same("mul", a, za, b, zb, prepared, zy, ty.qmin, ty.qmax)


@FAST
@given(int_types(), st.data())
def test_clamp_equals_reference(t, data):
    x = data.draw(of_type((3, 4), t))
    lo = data.draw(edgy_integers(t.qmin, t.qmax))
    hi = data.draw(edgy_integers(t.qmin, t.qmax))
    assert_same("clamp", x, lo, hi)


@FAST
@given(int_types(bits=(2, 4, 8)), st.data())
def test_lookup_table_equals_reference(t, data):
    x = data.draw(of_type((2, 5), t))
    table = data.draw(int_arrays((t.qmax - t.qmin + 1,), -(1 << 15), 1 << 15))
    assert_same("lookup_table", x, table, t.qmin)


def test_lookup_table_out_of_range_raises_like_reference():
    with pytest.raises(IndexError):
        reference.lookup_table(np.array([300]), np.arange(256), 0)
    with pytest.raises(IndexError):
        kernels.lookup_table(np.array([300]), np.arange(256), 0)


@FAST
@given(int_types(bits=(4, 8)), roundings(), st.integers(0, 15), st.data())
def test_softmax_equals_reference(t, rounding, out_shift, data):
    shape = data.draw(st.sampled_from([(6,), (2, 5), (2, 3, 4)]))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(of_type(shape, t))
    span = t.qmax - t.qmin + 1
    table = data.draw(int_arrays((span,), 0, 1 << 16))
    y = int_types(bits=(8,))
    yt = data.draw(y)
    assert_same("softmax", x, axis, table, out_shift, data.draw(edgy_integers(yt.qmin, yt.qmax)),
                yt.qmin, yt.qmax, rounding)


def _softmax_before_key_masks(x, axis, exp_table, out_shift, y_zp, qmin, qmax, rounding):
    """The reference as it was before softmax took a key mask: unmasked results must not move."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exp_table, dtype=np.int64)[x.max(axis=axis, keepdims=True) - x]
    total = np.maximum(e.sum(axis=axis, keepdims=True), 1)
    return np.clip(fp.round_div(e << np.int64(out_shift), total, rounding) + np.int64(y_zp),
                   qmin, qmax)


@st.composite
def masked_softmax_cases(draw):
    """x of 2/4/8/16 bits and any rank; a key mask of a shape that broadcasts to x's (leading
    axes dropped, others kept or 1), in any integer or bool dtype, often with rows that have no
    valid position; a full exp_table; an 8- or 16-bit output."""
    t = draw(int_types(bits=(2, 4, 8, 16)))
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    axis = draw(st.integers(-rank, rank - 1))
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in shape[draw(st.integers(0, rank)):])
    valid = draw(st.sampled_from(["some", "none", "all"]))
    if valid == "some":
        values = st.sampled_from([0, 0, 1, 2, 127, -1, -128])
    else:
        values = st.just(0 if valid == "none" else 1)
    mask = draw(hnp.arrays(np.int64, mask_shape, elements=values))
    mask = mask.astype(draw(st.sampled_from([np.int64, np.int8, np.uint8, np.bool_])))
    x = draw(of_type(shape, t))
    seed = draw(st.integers(0, 2**32 - 1))
    # drawn from a seed: a 16-bit input needs a 65536-entry table
    table = np.random.default_rng(seed).integers(0, 1 << 16, t.qmax - t.qmin + 1, endpoint=True)
    yt = draw(int_types(bits=(8, 16)))
    return (x, axis, table, draw(st.integers(0, 15)), draw(edgy_integers(yt.qmin, yt.qmax)),
            yt.qmin, yt.qmax, draw(roundings()), mask)


@FAST
@given(masked_softmax_cases())
def test_masked_softmax_equals_reference(case):
    assert_same("softmax", *case)


@FAST
@given(masked_softmax_cases())
def test_masked_softmax_is_softmax_of_the_valid_positions(case):
    """Each row's valid positions get the unmasked softmax of those positions alone; masked
    ones, and every position of a row with none valid, get the clipped zero point."""
    x, axis, table, out_shift, y_zp, qmin, qmax, rounding, mask = case
    got = kernels.softmax(*case)
    rows = np.moveaxis(got, axis, -1).reshape(-1, x.shape[axis])
    xs = np.moveaxis(x, axis, -1).reshape(rows.shape)
    valid = np.moveaxis(np.broadcast_to(mask != 0, x.shape), axis, -1).reshape(rows.shape)
    for row, xrow, keep in zip(rows, xs, valid):
        assert np.all(row[~keep] == np.clip(y_zp, qmin, qmax))
        if keep.any():
            alone = reference.softmax(xrow[keep], -1, table, out_shift, y_zp, qmin, qmax, rounding)
            np.testing.assert_array_equal(row[keep], alone)


@FAST
@given(int_types(bits=(4, 8, 16)), roundings(), st.integers(0, 15), st.data())
def test_softmax_without_a_mask_or_with_all_ones_is_unchanged(t, rounding, out_shift, data):
    shape = data.draw(st.sampled_from([(6,), (2, 5), (2, 3, 4), (2, 1, 3, 5)]))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(of_type(shape, t))
    table = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(
        0, 1 << 16, t.qmax - t.qmin + 1, endpoint=True)
    yt = data.draw(int_types(bits=(8,)))
    args = (x, axis, table, out_shift, data.draw(edgy_integers(yt.qmin, yt.qmax)), yt.qmin,
            yt.qmax, rounding)
    before = _softmax_before_key_masks(*args)
    ones = np.ones(shape[data.draw(st.integers(0, len(shape))):], np.uint8)
    for backend in (reference, kernels):
        for mask in (None, ones):
            _check("softmax", before, backend.softmax(*args, mask=mask))


@pytest.mark.parametrize("rounding", list(RoundingMode))
def test_masked_softmax_edges(rounding):
    # scores [N=2, heads=1, T=3, T=3], key mask [2, 1, 1, 3]: sequence 0 padded after two
    # keys, sequence 1 wholly padded
    x = np.arange(18).reshape(2, 1, 3, 3) - 9
    mask = np.array([1, 1, 0, 0, 0, 0]).reshape(2, 1, 1, 3)
    table = np.array([8, 4, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    got = assert_same("softmax", x, -1, table, 3, -5, -8, 7, rounding, mask)
    np.testing.assert_array_equal(got[1], -5)
    np.testing.assert_array_equal(got[0, ..., 2], -5)
    # each row rises by 1, so its two valid keys get 4 and 8 of 12: 2.67 and 5.33 eighths
    first = 2 if rounding is RoundingMode.FLOOR else 3
    np.testing.assert_array_equal(got[0, ..., :2] + 5, np.broadcast_to([first, 5], (1, 3, 2)))
    # a masked position never indexes the table, however far it is from the row's maximum
    assert_same("softmax", np.array([[0, 300, -300]]), -1, table, 3, 0, -8, 7, rounding,
                np.array([1, 0, 0]))
    with pytest.raises(IndexError):
        reference.softmax(np.array([[0, 300]]), -1, table, 3, 0, -8, 7, rounding, np.array([1, 1]))
    with pytest.raises(IndexError):
        kernels.softmax(np.array([[0, 300]]), -1, table, 3, 0, -8, 7, rounding, np.array([1, 1]))


def test_data_movement_is_the_reference():
    assert kernels.reshape is reference.reshape
    assert kernels.transpose is reference.transpose
    # concat is the reference's values in a narrow dtype (test_max_pooling_and_concat_...)


# ============================================================================ rounding edges

TIES = np.arange(-7, 8, dtype=np.int64)  # with M = 1, S = 1: every odd value is a tie


@pytest.mark.parametrize("rounding, expected", [
    (RoundingMode.FLOOR, [-4, -3, -3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3, 3]),
    (RoundingMode.HALF_UP, [-3, -3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3, 3, 4]),
    (RoundingMode.HALF_EVEN, [-4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4]),
    (RoundingMode.HALF_AWAY, [-4, -3, -3, -2, -2, -1, -1, 0, 1, 1, 2, 2, 3, 3, 4]),
])
def test_requantize_ties_every_single_rounding_mode(rounding, expected):
    prepared = PreparedScale(RequantMode.MULTIPLIER_SHIFT, rounding, np.array([1]), np.array([1]))
    got = assert_same("requantize", TIES, 0, prepared, 0, 0, -100, 100)
    np.testing.assert_array_equal(got, expected)


def test_requantize_ties_tflite_double_rounding():
    # M = 2**30 is 0.5 in Q0.31; S = 31 means no extra shift: SRDHM rounds v/2 ties upward
    prepared = PreparedScale(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE,
                             np.array([1 << 30]), np.array([31]))
    got = assert_same("requantize", TIES, 0, prepared, 0, 0, -100, 100)
    np.testing.assert_array_equal(got, [-3, -3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3, 3, 4])
    # S = 32: SRDHM by 0.5 then a rounding divide by 2 (ties away): two roundings, so 5 / 4
    # becomes 3 (from 2.5) and then 2 (from 1.5), where one rounding of 1.25 would give 1
    prepared = PreparedScale(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE,
                             np.array([1 << 30]), np.array([32]))
    got = assert_same("requantize", TIES, 0, prepared, 0, 0, -100, 100)
    np.testing.assert_array_equal(got, [-2, -2, -1, -1, -1, -1, 0, 0, 1, 1, 1, 1, 2, 2, 2])


def test_requantize_float_scale_ties_to_even():
    prepared = fp.prepare_scale(0.5, RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN))
    got = assert_same("requantize", TIES, 0, prepared, 0, 0, -100, 100)
    np.testing.assert_array_equal(got, [-4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4])


def test_srdhm_int32_min_times_int32_min_saturates():
    prepared = PreparedScale(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE,
                             np.array([INT32_MIN]), np.array([31]))
    x = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX])
    got = assert_same("requantize", x, 0, prepared, 0, 0, -(1 << 40), 1 << 40)
    # INT32_MIN * INT32_MIN is the one product that does not fit: it saturates to INT32_MAX
    np.testing.assert_array_equal(got, [INT32_MAX, INT32_MAX, 1, 0, -1, -INT32_MAX])


def test_tflite_left_shift_wraps_in_int32():
    # S = 29: TFLite shifts left by 2 first, in int32: 2**29 << 2 wraps to INT32_MIN
    prepared = PreparedScale(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE,
                             np.array([1 << 30]), np.array([29]))
    x = np.array([1 << 29, 1 << 30, 3, -(1 << 29)])
    got = assert_same("requantize", x, 0, prepared, 0, 0, -(1 << 40), 1 << 40)
    np.testing.assert_array_equal(got, [-(1 << 30), 0, 6, -(1 << 30)])


@pytest.mark.parametrize("rounding", list(RoundingMode))
def test_pool_and_add_ties(rounding):
    # windows of 2 whose sums are odd: every mean is a tie
    x = np.array([[[[1, 2, -1, -2, 3, 4, -3, -4]]]])
    assert_same("avgpool2d", x, 0, (1, 2), (1, 1), (0, 0, 0, 0), False, rounding)
    assert_same("avgpool2d", x, 1, (1, 2), (1, 2), (0, 1, 0, 1), True, rounding)
    assert_same("global_avgpool2d", x[..., :2], 0, rounding)
    a = np.arange(-5, 6)
    assert_same("add", a, 0, a, 0, 1, 0, 1, RequantMode.MULTIPLIER_SHIFT, rounding, 0, -99, 99)
    assert_same("softmax", np.array([[0, 0, 1]]), -1, np.array([3, 1, 0]), 0, 0, -99, 99,
                rounding)


# ============================================================================ accumulator edges

@pytest.mark.parametrize("bits", [8, 16, 24, 32, 48])
@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("point", list(SaturationPoint))
def test_accumulator_exactly_at_its_limits(bits, overflow, point):
    tile_k = 2 if point is SaturationPoint.PER_TILE else 0
    acc = AccumulatorSpec(bits, overflow, point, tile_k=tile_k)
    lo, hi = acc.lo, acc.hi
    w = np.array([[1]])
    for paths in engines_for(acc).values():
        with disabled(paths):
            # exactly at hi / lo: no event, and the accumulator's own width is what it needed
            for target in (hi, lo):
                got = assert_same("fully_connected", np.array([[target]]), w, None, 0, 0, acc)
                _, stats = kernels.fully_connected(np.array([[target]]), w, None, 0, 0, acc)
                assert got[0, 0] == target and stats == OverflowStats(0, 1, bits)
            # one past: an event, one more bit needed, and the policy decides the value
            for target, step, wrapped, clamped in ((hi, 1, lo, hi), (lo, -1, hi, lo)):
                args = (np.array([[target]]), w, np.array([step]), 0, 0, acc)
                got = assert_same("fully_connected", *args)
                assert kernels.fully_connected(*args)[1] == OverflowStats(1, 1, bits + 1)
                assert got[0, 0] == (wrapped if overflow is Overflow.WRAP else clamped)


def test_conv_accumulator_at_limits_on_every_engine():
    # 2x2 kernel of 127s over 1s: each sum is 4 * 127 = 508; with bias 2**15 - 1 - 508 the sum
    # is exactly hi of a 16-bit accumulator; one more and all four outputs leave it
    x = np.ones((1, 1, 3, 3), np.int64)
    w = np.full((1, 1, 2, 2), 127)
    for point in SaturationPoint:
        acc = AccumulatorSpec(16, Overflow.SATURATE, point, tile_k=3)
        for extra, events in ((0, 0), (1, 4)):
            args = (x, w, np.array([(1 << 15) - 1 - 508 + extra]), 0, 0, (1, 1), (0, 0, 0, 0),
                    (1, 1), 1, acc)
            for paths in engines_for(acc).values():
                with disabled(paths):
                    got = assert_same("conv2d", *args)
                    stats = kernels.conv2d(*args)[1]
                    assert (got == (1 << 15) - 1).all()
                    assert stats == OverflowStats(events, 4, 16 + (extra > 0))


def _per_mac_order_case():
    """One output, two input channels, a 1x2 kernel: the MAC order decides the answer.

    Products in cin_kh_kw order (c0k0, c0k1, c1k0, c1k1) = (100, 100, -100, -100) and in
    kh_kw_cin order (c0k0, c1k0, c0k1, c1k1) = (100, -100, 100, -100). With an 8-bit accumulator
    saturating per MAC the first order clips at 200 -> 127 and ends at -73; the second never
    leaves the range and ends at 0, which is also the final-saturation answer.
    """
    x = np.array([[[[10, 10]], [[10, 10]]]])
    w = np.array([[[[10, 10]], [[-10, -10]]]])
    return x, w


@pytest.mark.parametrize("order, expected, events, bits", [
    (MacOrder.CIN_KH_KW, -73, 1, 9),
    (MacOrder.KH_KW_CIN, 0, 0, 8),
])
def test_per_mac_saturation_follows_the_declared_order(order, expected, events, bits):
    x, w = _per_mac_order_case()
    acc = AccumulatorSpec(8, Overflow.SATURATE, SaturationPoint.PER_MAC, mac_order=order)
    for paths in LANE_ENGINES.values():
        with disabled(paths):
            got = assert_same("conv2d", x, w, None, 0, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1, acc)
            _, stats = kernels.conv2d(x, w, None, 0, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1, acc)
            assert got.ravel().tolist() == [expected]
            assert stats == OverflowStats(events, 1, bits)
    final = AccumulatorSpec(8, Overflow.SATURATE, SaturationPoint.FINAL, mac_order=order)
    got = assert_same("conv2d", x, w, None, 0, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1, final)
    assert got.ravel().tolist() == [0]


def test_per_tile_saturation_differs_from_per_mac_and_final():
    # terms 100, 100, -100, -100 in k order; 8-bit saturating accumulator
    x = np.array([[1, 1, 1, 1]])
    w = np.array([[100, 100, -100, -100]])
    answers = {}
    for point, tile in ((SaturationPoint.PER_MAC, 0), (SaturationPoint.PER_TILE, 2),
                        (SaturationPoint.PER_TILE, 4), (SaturationPoint.FINAL, 0)):
        acc = AccumulatorSpec(8, Overflow.SATURATE, point, tile_k=tile)
        answers[(point, tile)] = int(assert_mac_same_value("fully_connected", x, w, None, 0, 0,
                                                           acc))
    assert answers == {(SaturationPoint.PER_MAC, 0): -73, (SaturationPoint.PER_TILE, 2): -73,
                       (SaturationPoint.PER_TILE, 4): 0, (SaturationPoint.FINAL, 0): 0}


def assert_mac_same_value(fn_name, *args):
    assert_mac_same(fn_name, *args)
    return getattr(kernels, fn_name)(*args)[0].ravel()[0]


def test_per_mac_int32_lanes_with_a_k_tail_and_many_lanes():
    """The int32 engines: K not a multiple of 8 (the ymm engine's unrolling), outputs not a
    multiple of 64 (the zmm engine's task), int16 and int32 operands."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (1, 3, 20, 19))
    w = rng.integers(-128, 128, (5, 3, 3, 3))  # K = 27 = 3 * 8 + 3
    for order in MacOrder:
        acc = AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC, mac_order=order)
        assert kernels.conv_plan(x, w, None, 128, 0, 1, acc).path == "int32"
        assert_mac_same("conv2d", x, w, rng.integers(-9000, 9000, 5), 128, 0, (1, 1),
                        (1, 1, 1, 1), (1, 1), 1, acc)
        wide = AccumulatorSpec(24, Overflow.SATURATE, SaturationPoint.PER_MAC, mac_order=order)
        x16 = rng.integers(0, 60000, (1, 3, 9, 11))  # operands past int16, sums within int32
        assert kernels.conv_plan(x16, w, None, 0, 0, 1, wide).dtype == np.int32
        assert_mac_same("conv2d", x16, w, None, 0, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1, wide)


# ============================================================================ fast-path bounds

def test_gemm_path_thresholds():
    assert kernels.gemm_path((1 << 24) - 1) == "float32"
    assert kernels.gemm_path(1 << 24) == "float64"
    assert kernels.gemm_path((1 << 53) - 1) == "float64"
    assert kernels.gemm_path(1 << 53) == "int64"
    if kernels.VNNI_AVAILABLE:
        assert kernels.gemm_path((1 << 31) - 1, (1 << 15) - 1, vnni_shape=True) == "vnni16"
        assert kernels.gemm_path(1 << 31, 100, vnni_shape=True) != "vnni16"
        assert kernels.gemm_path(100, 1 << 15, vnni_shape=True) != "vnni16"
        assert kernels.gemm_path(100, 100, vnni_shape=True, int8_bound=(1 << 31) - 1) == "vnni8"
        assert kernels.gemm_path(100, 100, vnni_shape=True, int8_bound=1 << 31) == "vnni16"
        assert kernels.gemm_path(100, 100, vnni_shape=False, int8_bound=100) == "float32"


def test_float64_bound_just_above_2_53_falls_back_to_exact_int64():
    # products 2**53 and 1: their sum 2**53 + 1 is not a float64, so float64 BLAS would give
    # 2**53; the bound max|x| * max L1(w) = 2**26 * (2**27 + 1) is just above 2**53
    x = np.array([[1 << 26, 1]])
    w = np.array([[1 << 27, 1]])
    assert float(np.float64(1 << 53) + np.float64(1)) == float(1 << 53)  # the trap is real
    acc = AccumulatorSpec(48, Overflow.WRAP, SaturationPoint.FINAL)
    plan = kernels.MacPlan(acc, (1 << 26) * ((1 << 27) + 1), 1 << 26, 1 << 27, 0)
    assert plan.path == "int64"
    got = assert_same("fully_connected", x, w, None, 0, 0, acc)
    # 2**53 + 1 wraps to 1 in 48 bits; the inexact float sum would have wrapped to 0
    assert got.tolist() == [[1]]
    assert fp.wrap(np.int64(np.float64(1 << 53) + np.float64(1)), 48) == 0


def test_float64_bound_just_below_2_53_uses_float64_exactly():
    # products 2**52 + (2**52 - 1) = 2**53 - 1, the largest odd float64 integer; bound = the sum
    x = np.array([[1, 1]])
    w = np.array([[1 << 52, (1 << 52) - 1]])
    acc = AccumulatorSpec(48, Overflow.WRAP, SaturationPoint.FINAL)
    with disabled({"vnni8", "vnni16"}):
        plan = kernels.MacPlan(acc, (1 << 53) - 1, 1, 1 << 52, 0)
        assert plan.path == "float64"
        got = assert_same("fully_connected", x, w, None, 0, 0, acc)
    assert got.tolist() == [[int(fp.wrap((1 << 53) - 1, 48))]]


def test_float32_bound_just_above_2_24_falls_back():
    # 2**24 + 1 is not a float32: x = [2**12, 1], w = [2**12, 1]
    x = np.array([[1 << 12, 1]])
    w = np.array([[1 << 12, 1]])
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL)
    with disabled({"vnni8", "vnni16"}):
        assert kernels.MacPlan(acc, (1 << 12) * ((1 << 12) + 1), 1 << 12, 1 << 12, 0).path \
            == "float64"
        got = assert_same("fully_connected", x, w, None, 0, 0, acc)
    assert got.tolist() == [[(1 << 24) + 1]]
    assert float(np.float32(1 << 24) + np.float32(1)) == float(1 << 24)  # the trap is real


def test_int8_operands_past_the_int32_sum_bound_leave_the_vnni8_path():
    # VPDPBUSD sums (x + off) * (w - zw): x = 255 (off 0) by w = 127 is 32385 per tap; 66,312
    # taps reach 2**31, so a 1x1 conv with that many channels may not use it, one fewer may
    acc = AccumulatorSpec(48, Overflow.WRAP, SaturationPoint.FINAL)
    for k, allowed in ((66312, False), (66311, True)):
        x = np.full((1, k, 1, 1), 255)
        w = np.full((1, k, 1, 1), 127)
        path = kernels.conv_plan(x, w, None, 0, 0, 1, acc).path
        assert (path == "vnni8") == (allowed and kernels.VNNI_AVAILABLE)
        got = assert_same("conv2d", x, w, None, 0, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1, acc)
        assert got.item() == int(fp.wrap(255 * 127 * k, 48))


def test_vnni8_takes_any_input_zero_point():
    # the input goes in as x + off (unsigned), the zero point's share comes off per channel:
    # u8 with zero point 0 or 3, s8 with zero point -128, all on the 8-bit engine, all exact
    rng = np.random.default_rng(0)
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL)
    for lo, hi, zx in ((0, 255, 0), (0, 255, 3), (-128, 127, -128), (-128, 127, 5)):
        x = rng.integers(lo, hi + 1, (2, 5, 7, 9))
        w = rng.integers(-128, 128, (70, 5, 3, 3))
        if kernels.VNNI_AVAILABLE:
            assert kernels.conv_plan(x, w, None, zx, 0, 1, acc).path == "vnni8"
        assert_mac_same("conv2d", x, w, rng.integers(-999, 999, 70), zx, 0, (1, 1),
                        (1, 1, 1, 1), (1, 1), 1, acc)


def test_int16_operands_past_the_int32_sum_bound_leave_the_vnni_path():
    # 3 * 32767 * 32767 > 2**31: int32 lanes would wrap, so the plan must not choose them
    x = np.full((2, 3), 32767)
    w = np.full((70, 3), 32767)
    acc = AccumulatorSpec(48, Overflow.SATURATE, SaturationPoint.FINAL)
    got = assert_same("fully_connected", x, w, None, 0, 0, acc)
    assert (got == 3 * 32767 * 32767).all()
    xc, wc = np.full((1, 3, 2, 2), 32767), np.full((64, 3, 1, 1), -32767)
    assert kernels.conv_plan(xc, wc, None, 0, 0, 1, acc).path != "vnni16"
    assert_mac_same("conv2d", xc, wc, None, 0, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1, acc)


def test_int32_lanes_only_when_proven_safe():
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.PER_MAC)
    # |acc| + |term| can reach 2**31 + ...: int64 lanes
    assert kernels.MacPlan(acc, 1 << 10, 32, 32, 0).path == "int64"
    acc16 = AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC)
    assert kernels.MacPlan(acc16, 1 << 20, 255, 128, 1 << 20).path == "int32"
    assert kernels.MacPlan(acc16, 1 << 30, 255, 128, 1 << 30).path == "int64"
    x = np.array([[1 << 30, 1 << 30, -(1 << 30)]])
    w = np.array([[1, 1, 1]])
    # bias 2**30 is clipped at once to 32767, the adds keep it there, the last one pulls it down
    got = assert_same("fully_connected", x, w, np.array([1 << 30]), 0, 0, acc16)
    assert got.tolist() == [[-(1 << 15)]]


def test_bias_outside_the_accumulator_counts_as_an_event():
    x = np.zeros((1, 2), np.int64)
    w = np.zeros((1, 2), np.int64)
    for point in SaturationPoint:
        acc = AccumulatorSpec(8, Overflow.SATURATE, point, tile_k=1)
        got = assert_same("fully_connected", x, w, np.array([300]), 0, 0, acc)
        assert got.tolist() == [[127]]
        stats = kernels.fully_connected(x, w, np.array([300]), 0, 0, acc)[1]
        assert stats == OverflowStats(1, 1, 10)


def test_batches_are_planned_one_by_one():
    """Batch 0 spans 256 values (the 8-bit VNNI engine where available), batch 1 does not fit
    int16: each exact on its own."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 3, 6, 7))
    x[1, 0, 2, 3] = 40000
    w = rng.integers(-128, 128, (66, 3, 3, 3))
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL)
    expected = "vnni8" if kernels.VNNI_AVAILABLE else "float32"
    assert kernels.conv_plan(x[:1], w, None, 7, 0, 1, acc).path == expected
    assert kernels.conv_plan(x[1:], w, None, 7, 0, 1, acc).path == "float64"
    assert_mac_same("conv2d", x, w, rng.integers(-99, 99, 66), 7, 0, (1, 2), (1, 0, 2, 1),
                    (2, 1), 1, acc)


def test_benchmark_layer_takes_the_fast_path():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (1, 64, 8, 8))
    w = rng.integers(-127, 128, (64, 64, 3, 3))
    acc = AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL)
    plan = kernels.conv_plan(x, w, None, 128, 0, 1, acc)
    assert plan.path == ("vnni8" if kernels.VNNI_AVAILABLE else "float32")
    assert kernels.conv_plan(x, w, None, 0, 0, 1, acc).path == (  # any zero point
        "vnni8" if kernels.VNNI_AVAILABLE else "float32")
    per_mac = AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC)
    assert kernels.conv_plan(x, w, None, 128, 0, 1, per_mac).path == "int32"
    assert_mac_same("conv2d", x, w, None, 128, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc)
