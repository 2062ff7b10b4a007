"""Divergence reports: the first differing element, both values, and the semantic that explains it."""

import dataclasses

import numpy as np

from simulator.compare import find_divergence
from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode, RequantSpec,
                                RoundingMode, SaturationPoint)
from simulator.examples import example_input, example_program
from simulator.execute import execute
from simulator.ir import ProgramBuilder

CHIP = ArithmeticSpec(AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
                      RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32))


def _trace(arith, program=None, inputs=None):
    program = program or example_program()
    return execute(program, arith, inputs or {"image": example_input()}, backend="reference").tensors


def test_identical_runs_have_no_divergence():
    assert find_divergence(example_program(), _trace(CHIP), _trace(CHIP), CHIP) is None


def test_rounding_tie_is_named():
    b = ProgramBuilder("tie")
    x = b.input("x", (1, 4), "s32", scale=1.0)
    y = b.node("requantize", [x], "y", dtype="s8", scale=1.0, real_multiplier=[0.5])
    b.output(y)
    program, inputs = b.build(), {"x": np.array([[1, 3, 5, -3]], np.int32)}
    half_up = dataclasses.replace(CHIP, requant=RequantSpec(RequantMode.MULTIPLIER_SHIFT,
                                                            RoundingMode.HALF_UP, 32))
    half_even = dataclasses.replace(CHIP, requant=RequantSpec(RequantMode.MULTIPLIER_SHIFT,
                                                              RoundingMode.HALF_EVEN, 32))
    div = find_divergence(program, _trace(half_up, program, inputs), _trace(half_even, program, inputs),
                          half_up, ("chip", "peer"))
    assert div.node == "y" and div.index == (0, 0)
    assert (div.value_a, div.value_b) == (1, 0)
    text = div.format()
    assert "rounding tie" in text and "half_even instead of half_up" in text
    assert "chip=1 peer=0" in text


def test_accumulator_saturation_is_named():
    narrow = dataclasses.replace(CHIP, accumulator=AccumulatorSpec(16, Overflow.SATURATE,
                                                                   SaturationPoint.PER_MAC))
    div = find_divergence(example_program(), _trace(narrow), _trace(CHIP), narrow)
    assert div.node == "stem_acc" and div.op == "conv2d"
    assert any("no accumulator overflow" in e or "saturation final" in e for e in div.explanations)


def test_single_versus_double_rounding_is_named():
    single = dataclasses.replace(CHIP, requant=RequantSpec(RequantMode.MULTIPLIER_SHIFT,
                                                           RoundingMode.HALF_AWAY, 32))
    div = find_divergence(example_program(), _trace(CHIP), _trace(single), CHIP)
    if div is None:  # the example may hold no double-rounding case; force one
        b = ProgramBuilder("dr")
        x = b.input("x", (1, 64), "s32", scale=1.0)
        b.node("requantize", [x], "y", dtype="s16", scale=1.0, real_multiplier=[0.3])
        b.output("y")
        program, inputs = b.build(), {"x": np.arange(-32, 32, dtype=np.int32).reshape(1, 64) * 7919}
        div = find_divergence(program, _trace(CHIP, program, inputs), _trace(single, program, inputs), CHIP)
    assert div is not None
    assert any("single rounding half_away" in e for e in div.explanations)


def test_unexplained_difference_says_so():
    a = _trace(CHIP)
    b = {k: v.copy() for k, v in a.items()}
    b["pool"][0, 0, 0, 0] += 1
    div = find_divergence(example_program(), a, b, CHIP)
    assert div.node == "pool" and div.mismatches == 1
    assert "no single contract variant" in div.format()
