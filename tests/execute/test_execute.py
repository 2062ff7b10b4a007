"""The executor: input checking, overflow accounting, host fallbacks, both backends agree."""

import numpy as np
import pytest

from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode, RequantSpec,
                                RoundingMode, SaturationPoint)
from simulator.errors import InputError, UnsupportedOpError
from simulator.examples import example_input, example_program
from simulator.execute import execute
from simulator.ir import ProgramBuilder

TFLITE = RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32)
WIDE = ArithmeticSpec(AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL), TFLITE)
NARROW = ArithmeticSpec(AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC), TFLITE)


@pytest.mark.parametrize("value, message", [
    (np.zeros((1, 1, 16, 15), np.uint8), "shape"),
    (np.zeros((1, 1, 16, 16), np.float32), "not an integer type"),
    (np.full((1, 1, 16, 16), 300, np.int32), "outside u8 range"),
    (np.full((1, 1, 16, 16), -1, np.int16), "outside u8 range"),
])
def test_bad_inputs_are_named(value, message):
    with pytest.raises(InputError, match=f"'image'.*{message}"):
        execute(example_program(), WIDE, {"image": value}, backend="reference")


def test_missing_and_unknown_inputs():
    with pytest.raises(InputError, match="missing input"):
        execute(example_program(), WIDE, {}, backend="reference")
    with pytest.raises(InputError, match="unknown input"):
        execute(example_program(), WIDE, {"image": example_input(), "x": 1}, backend="reference")


def test_overflow_counted_and_safe_width_reported():
    x = {"image": example_input()}
    wide = execute(example_program(), WIDE, x, backend="reference")
    narrow = execute(example_program(), NARROW, x, backend="reference")
    assert all(s.events == 0 for s in wide.overflow.values())
    assert narrow.overflow["stem_acc"].events > 0
    # the narrowest safe accumulator for the final-saturating wide run is what the exact sums need
    for name, stats in wide.overflow.items():
        acc = wide.tensors[name]
        needed = max(int(acc.max()).bit_length(), int(-acc.min() - 1).bit_length()) + 1
        assert stats.required_bits == needed
    # and a 16-bit per-MAC accumulator changes the stem's output exactly where it overflowed
    changed = (wide.tensors["stem_acc"] != narrow.tensors["stem_acc"]).sum()
    assert 0 < changed <= narrow.overflow["stem_acc"].events


def test_float_mac_is_not_executable():
    b = ProgramBuilder("f", metadata={"estimate_only": True})
    x = b.input("x", (1, 2, 4, 4), "f32")
    w = b.tensor("w", (2, 2, 3, 3), "f32")
    b.node("conv2d", [x, w], "y", dtype="f32")
    b.output("y")
    with pytest.raises(UnsupportedOpError, match="estimation only"):
        execute(b.build(), WIDE, {"x": np.zeros((1, 2, 4, 4), np.float32)}, backend="reference")


def test_host_fallback_runs_in_float_and_requantizes():
    b = ProgramBuilder("fb")
    x = b.input("x", (2, 5), "s8", scale=0.1)
    y = b.node("fallback", [x], "y", dtype="u8", scale=1 / 256, out_shape=(2, 5),
               op_type="Softmax", attributes={"axis": -1})
    b.output(y)
    xs = np.array([[0, 10, 20, 30, 40], [-5, -5, -5, -5, -5]], np.int8)
    out = execute(b.build(), WIDE, {"x": xs}, backend="reference").outputs["y"]
    expected = np.exp(xs * 0.1) / np.exp(xs * 0.1).sum(axis=1, keepdims=True)
    assert np.abs(out / 256 - expected).max() <= 1 / 256
    b2 = ProgramBuilder("fb2")
    x = b2.input("x", (2,), "s8", scale=0.1)
    b2.node("fallback", [x], "y", dtype="s8", scale=0.1, out_shape=(2,), op_type="LRN")
    b2.output("y")
    with pytest.raises(UnsupportedOpError, match="'LRN' has no float implementation"):
        execute(b2.build(), WIDE, {"x": np.zeros(2, np.int8)}, backend="reference")


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_attention_over_padded_keys(backend):
    """Scores [N, heads, T, T] with a key mask [N, 1, 1, T] (a graph input or a constant):
    padded keys get the zero point, and the valid keys the softmax of those keys alone."""
    lengths, heads, t = [5, 2, 0], 2, 5
    mask = (np.arange(t) < np.array(lengths)[:, None]).astype(np.uint8).reshape(3, 1, 1, t)
    scores = np.random.default_rng(7).integers(-128, 128, (3, heads, t, t))
    table = [int(round(np.exp(-d * 0.1) * (1 << 15))) for d in range(256)]

    def run(x, key_mask=None, as_constant=False):
        b = ProgramBuilder("attention")
        ins = [b.input("scores", x.shape, "s8", scale=0.1)]
        if key_mask is not None:
            ins.append(b.constant("key_mask", key_mask, "u1") if as_constant
                       else b.input("key_mask", key_mask.shape, "u1"))
        b.output(b.node("softmax", ins, "probs", dtype="s8", scale=1 / 256, zero_point=-128,
                        exp_table=table))
        feeds = {"scores": x}
        if key_mask is not None and not as_constant:
            feeds["key_mask"] = key_mask
        return execute(b.build(), WIDE, feeds, backend=backend).outputs["probs"]

    for as_constant in (False, True):
        got = run(scores, mask, as_constant)
        for n, length in enumerate(lengths):
            assert np.all(got[n, ..., length:] == -128)
            if length:
                np.testing.assert_array_equal(got[n, ..., :length],
                                              run(scores[n:n + 1, ..., :length])[0])
    np.testing.assert_array_equal(run(scores, np.ones_like(mask)), run(scores))


@pytest.mark.parametrize("arith", [WIDE, NARROW], ids=["acc32_final", "acc16_per_mac"])
def test_kernels_equal_reference_on_the_example(arith):
    x = {"image": example_input()}
    a = execute(example_program(), arith, x, backend="kernels")
    b = execute(example_program(), arith, x, backend="reference")
    for name in b.tensors:
        assert np.array_equal(a.tensors[name], b.tensors[name]), name
    assert a.overflow == b.overflow


def test_a_node_reading_one_tensor_twice_runs_without_trace():
    """x * x reads x twice: dropping dead tensors (trace=False) must count it as one use."""
    b = ProgramBuilder("square")
    x = b.input("x", (2, 3), "s8", scale=0.1)
    c = b.node("clamp", [x], "c", min=-100, max=100)
    b.output(b.node("mul", [c, c], "y", dtype="s16", scale=0.01))
    prog = b.build()
    x_value = np.arange(-3, 3).reshape(2, 3)
    traced = execute(prog, WIDE, {"x": x_value}).outputs["y"]
    lean = execute(prog, WIDE, {"x": x_value}, trace=False).outputs["y"]
    assert np.array_equal(traced, lean) and np.array_equal(lean, x_value * x_value)


ORT_LIKE = ArithmeticSpec(AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL),
                          RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32))


def _conv_chain(x_zp: int = 3):
    """Two 3x3 convs, each read only by its requantize (fused on the kernels backend), then a
    max-pool: a compact intermediate feeding both a fused conv and an unfused op."""
    rng = np.random.default_rng(11)
    b = ProgramBuilder("chain")
    x = b.input("x", (2, 5, 9, 9), "u8", scale=0.02, zero_point=x_zp)
    h = x
    for i, c_out in enumerate((70, 8)):
        c_in = 5 if i == 0 else 70
        w = b.constant(f"w{i}", rng.integers(-128, 128, (c_out, c_in, 3, 3)), "s8", scale=0.01)
        bias = b.constant(f"b{i}", rng.integers(-3000, 3000, c_out), "s32", scale=2e-4)
        acc = b.node("conv2d", [h, w, bias], f"acc{i}", strides=[1, 1], pads=[1, 1, 1, 1],
                     scale=2e-4)
        h = b.node("requantize", [acc], f"y{i}", dtype="u8", scale=0.05, zero_point=7,
                   real_multiplier=[2e-4 / 0.05 * (1 + i)])
    b.output(b.node("maxpool2d", [h], "pool", kernel=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]))
    b.output(h)
    return b.build()


@pytest.mark.parametrize("arith", [WIDE, NARROW, ORT_LIKE], ids=["acc32", "acc16_per_mac", "ort"])
def test_prepared_program_runs_as_the_program_does(arith):
    """prepare() once, execute many times: the same tensors, outputs (int64) and statistics as
    the reference, traced or not, with the convs' requantizes fused into them."""
    from simulator.execute import prepare
    prog = _conv_chain()
    x = {"x": np.random.default_rng(2).integers(0, 256, (2, 5, 9, 9)).astype(np.uint8)}
    want = execute(prog, arith, x, backend="reference")
    prepared = prepare(prog, arith)
    assert [s.requantize.outputs[0] for s in prepared.steps if s.requantize is not None] == [
        "y0", "y1"]
    for _ in range(2):
        got = execute(prepared, arith, x)
        assert set(got.tensors) == set(want.tensors)
        for name, value in want.tensors.items():
            assert got.tensors[name].dtype == value.dtype, name
            np.testing.assert_array_equal(got.tensors[name], value, err_msg=name)
        assert got.overflow == want.overflow
        lean = execute(prepared, arith, x, trace=False)
        assert set(lean.outputs) == {"pool", "y1"}
        for name in lean.outputs:
            assert lean.outputs[name].dtype == np.int64
            np.testing.assert_array_equal(lean.outputs[name], want.outputs[name])
        assert lean.overflow == want.overflow
        narrow = execute(prepared, arith, x, trace=False, narrow_outputs=True).outputs
        for name in narrow:     # u8 outputs: the fused requantize's and the max-pool's own dtype
            assert narrow[name].dtype == np.uint8, name
            np.testing.assert_array_equal(narrow[name], want.outputs[name])


def test_a_program_prepared_for_another_chip_is_refused():
    from simulator.execute import prepare
    prepared = prepare(_conv_chain(), WIDE)
    x = {"x": np.zeros((2, 5, 9, 9), np.uint8)}
    with pytest.raises(InputError, match="prepared for another arithmetic"):
        execute(prepared, NARROW, x)
    with pytest.raises(InputError, match="prepared for another arithmetic"):
        execute(prepared, WIDE, x, backend="reference")
