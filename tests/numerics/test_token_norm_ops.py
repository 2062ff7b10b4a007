"""The ops a LayerNorm decomposed into chip ops needs (issue 17): a mean over axes, a subtract
with a broadcast operand, and TOSA's interpolated 16-bit table.

The kernels equal the reference; the reference equals the definitions written out here
independently (TOSA's TABLE for int16 inputs; the mean as one rounding of the exact sum).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.contract import RequantMode, RequantSpec, RoundingMode
from simulator.errors import ProgramError
from simulator.numerics.tables import rsqrt_table
from simulator.ir.builder import ProgramBuilder
from simulator.execute import execute
from simulator.numerics import fixed_point as fp
from simulator.numerics import kernels, reference
from simulator.profiles import load_profile

FAST = settings(deadline=None, max_examples=60)
ROUNDINGS = st.sampled_from([RoundingMode.TFLITE, RoundingMode.HALF_UP, RoundingMode.HALF_AWAY,
                             RoundingMode.HALF_EVEN, RoundingMode.FLOOR])


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and np.array_equal(a, b), np.argwhere(a != b)[:3]


def _tosa_table16(value: int, table: list[int]) -> int:
    """TOSA's apply_lookup for one int16 input, as the specification writes it."""
    unsigned = value + 32768
    index, fraction = unsigned >> 7, unsigned & 0x7F
    base, nxt = table[index], table[index + 1]
    return base * 128 + (nxt - base) * fraction


tables = st.lists(st.integers(-16000, 16000), min_size=513, max_size=513)
s16 = st.integers(-32768, 32767)


@FAST
@given(tables, st.lists(s16, min_size=1, max_size=40))
def test_interpolated_lookup_is_tosa_table(table, xs):
    x = np.asarray(xs, np.int64)
    expected = [_tosa_table16(v, table) for v in xs]
    _same(reference.lookup_interpolated(x, table), expected)
    _same(kernels.lookup_interpolated(x, table), expected)


def test_interpolated_lookup_hits_entries_and_ends():
    table = list(range(-256, 257))
    x = np.asarray([-32768, -32768 + 128, 0, 32767 - 127, 32767], np.int64)
    # an input on a sample point reads that entry exactly (x 2**7); the top input interpolates
    # 127/128 of the way to the 513th entry
    _same(kernels.lookup_interpolated(x, table), [-256 * 128, -255 * 128, 0, 255 * 128,
                                                  255 * 128 + 127])


@FAST
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 40), st.data(), ROUNDINGS,
       st.floats(1e-4, 1.0), st.floats(1e-4, 1.0))
def test_mean_kernel_equals_reference_and_rounds_once(n, rows, d, data, rounding, s_in, s_out):
    x = np.asarray(data.draw(st.lists(s16, min_size=n * rows * d, max_size=n * rows * d)),
                   np.int64).reshape(n, rows, d)
    zx, zy = data.draw(st.integers(-100, 100)), data.draw(st.integers(-100, 100))
    axes = data.draw(st.sampled_from([(2,), (1, 2), (1,)]))
    keepdims = data.draw(st.booleans())
    spec = RequantSpec(RequantMode.MULTIPLIER_SHIFT, rounding, 32)
    count = math.prod(x.shape[a] for a in axes)
    prepared = fp.prepare_mean(s_in / s_out, count, spec)
    args = (x, zx, axes, keepdims, prepared, zy, -32768, 32767)
    got = kernels.mean(*args)
    _same(got, reference.mean(*args))
    # one rounding of the exact mean: within one step (two for TFLite's double rounding) of
    # the real value, before clipping
    exact = (x - zx).sum(axis=axes, keepdims=keepdims) * (s_in / s_out) / count + zy
    inside = (exact > -32760) & (exact < 32760)
    assert np.all(np.abs(got - exact)[inside] <= 1.0 + 1e-6)


@FAST
@given(st.floats(1e-4, 0.1), st.floats(1e-4, 0.1), st.floats(1e-4, 0.1), st.data())
def test_sub_is_add_of_the_negated_operand(sa, sb, sy, data):
    """sub(a, b) equals the real a - b rounded once, one value per row broadcast along it, on
    the ideal chip (kernels and reference alike)."""
    a = np.asarray(data.draw(st.lists(s16, min_size=12, max_size=12)), np.int64).reshape(3, 4)
    m = np.asarray(data.draw(st.lists(s16, min_size=3, max_size=3)), np.int64).reshape(3, 1)
    za, zb = data.draw(st.integers(-50, 50)), data.draw(st.integers(-50, 50))
    b = ProgramBuilder("sub")
    xa = b.input("a", (3, 4), "s16", scale=sa, zero_point=za)
    xb = b.input("b", (3, 1), "s16", scale=sb, zero_point=zb)
    b.output(b.node("sub", [xa, xb], "y", dtype="s32", scale=sy))
    prog = b.build()
    chip = load_profile("ideal")
    ours = execute(prog, chip, {"a": a, "b": m}, backend="kernels").outputs["y"]
    _same(ours, execute(prog, chip, {"a": a, "b": m}, backend="reference").outputs["y"])
    terms = np.abs((a - za) * sa / sy) + np.abs((m - zb) * sb / sy)
    real = ((a - za) * sa - (m - zb) * sb) / sy
    # one rounding, plus what the ideal chip's 24-bit multipliers (sharing one shift) lose
    assert np.all(np.abs(ours - real) <= 0.5 + terms * 2.0 ** -18 + 1e-6)


def test_interpolated_table_is_validated_on_load():
    def build(table, x_t="s16", out_t="s32"):
        b = ProgramBuilder("lut")
        x = b.input("x", (2, 3), x_t, scale=0.01)
        b.output(b.node("lookup_table", [x], "y", dtype=out_t, scale=1.0, table=table,
                        interpolated=True))
        return b.build()

    good = rsqrt_table(1e-3, 1 / 1024, 1e-5, in_zp=-32768)
    build(good)
    with pytest.raises(ProgramError, match="513 entries"):
        build(good[:-1])
    with pytest.raises(ProgramError, match="reads s16"):
        build(good, x_t="s8")
    with pytest.raises(ProgramError, match="entries must be s16"):
        build([40000] + good[1:])
    with pytest.raises(ProgramError, match="differ by more than s16"):
        build([-32768, 32767] + good[2:])
    with pytest.raises(ProgramError, match="entry x 2\\*\\*7"):
        build(good, out_t="s16")


def test_rsqrt_table_reads_variances_on_the_grid():
    """On a sample point the table's value is 1/sqrt(v + eps) on the output grid."""
    scale, zp, out = 1e-3, -32768, 1 / 2048
    table = rsqrt_table(scale, out, 1e-5, in_zp=zp)
    q = np.asarray([-32768 + 128 * 40, -32768 + 128 * 300], np.int64)
    got = kernels.lookup_interpolated(q, table) / 128 * out
    v = (q - zp) * scale
    assert np.allclose(got, 1 / np.sqrt(v + 1e-5), rtol=2e-3)


def test_minimum_keeps_one_grid():
    def build(scale_b):
        b = ProgramBuilder("min")
        x = b.input("a", (2, 3), "s16", scale=0.01)
        y = b.input("b", (2, 1), "s16", scale=scale_b)
        b.output(b.node("minimum", [x, y], "y", dtype="s16", scale=0.01))
        return b.build()

    prog = build(0.01)
    a, m = np.asarray([[5, -7, 9], [0, 3, -1]]), np.asarray([[4], [2]])
    for backend in ("kernels", "reference"):
        out = execute(prog, load_profile("ideal"), {"a": a, "b": m}, backend=backend)
        _same(out.outputs["y"], [[4, -7, 4], [0, 2, -1]])
    with pytest.raises(ProgramError, match="minimum operands must share dtype, scale and zero"):
        build(0.02)


def _lookup_program(vocab=40, tokens=7, width=6):
    b = ProgramBuilder("lookup")
    ids = b.input("ids", (2, tokens), "u16")
    table = b.constant("table", np.arange(vocab * width).reshape(vocab, width) % 200 - 100, "s8",
                       scale=0.02)
    rows = b.node("gather", [table, ids], "rows", dtype="s8", scale=0.02)
    b.output(b.node("clamp", [rows], "y", min=-50, max=50))
    return b.build()


def test_gather_reads_rows_and_refuses_an_index_outside_the_table():
    prog = _lookup_program()
    ids = np.asarray([[0, 3, 39, 3, 1, 2, 5], [7, 7, 7, 0, 0, 1, 38]])
    for backend in ("kernels", "reference"):
        out = execute(prog, load_profile("ideal"), {"ids": ids}, backend=backend)
        table = prog.tensors["table"].data.astype(np.int64)
        _same(out.tensors["rows"], table[ids])
    with pytest.raises(IndexError, match="outside the table's 40 rows"):
        execute(prog, load_profile("ideal"), {"ids": np.full((2, 7), 40)})


def test_an_input_lookup_is_the_chips_gather_or_the_hosts_at_the_boundary():
    """Ethos-U85 gathers rows itself (a DMA op, its cost the rows it reads); Ethos-U55 has no
    gather, so the host looks the rows up as it writes the input: boundary work, no fallback,
    and not the whole table's bytes either way."""
    from simulator.constraints import place
    from simulator.cost import estimate
    prog = _lookup_program(vocab=30000, tokens=64, width=384)
    u85, u55 = load_profile("ethos-u85-256"), load_profile("ethos-u55-128")
    on85 = {p.node: p for p in place(prog, u85)}["rows"]
    on55 = {p.node: p for p in place(prog, u55)}["rows"]
    assert not on85.on_host
    assert on55.on_host and on55.boundary and on55.fallback_reason is None
    est85, est55 = estimate(prog, u85), estimate(prog, u55)
    assert est85.fallbacks == [] and est55.fallbacks == []
    rows_bytes = 2 * 64 * 384
    assert est85.op("rows").cost.weight_bytes == rows_bytes        # not the 11.5 MB table
    assert est55.op("rows").cost.activation_bytes == rows_bytes    # the rows sent to the NPU
