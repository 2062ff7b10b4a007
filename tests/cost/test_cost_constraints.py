"""The op-set rules: each names the profile field it checks; the generated doc is current."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from cost_programs import conv_program
from simulator import constraints
from simulator.constraints import check_node, place, supported_ops_markdown
from simulator.ir import ProgramBuilder
from simulator.profiles import load_profile

K210, ETHOS, IDEAL = load_profile("k210-kpu"), load_profile("ethos-u55-128"), load_profile("ideal")


def reasons(program, profile, node="conv_acc"):
    return check_node(program, next(n for n in program.nodes if n.name == node), profile)


def with_op(profile, kind, **limits):
    ops = dict(profile.ops)
    ops[kind] = replace(ops[kind], **limits)
    return replace(profile, ops=MappingProxyType(ops))


@pytest.mark.parametrize("kwargs,profile,expected", [
    (dict(k=5), K210, "conv2d kernel 5x5 not in ops.conv2d.kernel_sizes [[1,1],[3,3]]"),
    (dict(stride=3), K210, "conv2d stride 3x3 not in ops.conv2d.strides [[1,1],[2,2]]"),
    (dict(stride=4), ETHOS, "conv2d stride 4x4 exceeds ops.conv2d.max_stride 3"),
    (dict(dilation=2), K210, "conv2d dilation 2x2 not in ops.conv2d.dilations [1]"),
    (dict(cin=2048, hw=4), K210, "conv2d 2048 input channels exceed ops.conv2d.max_input_channels 1024"),
    (dict(cout=2048, hw=4), K210, "conv2d 2048 output channels exceed ops.conv2d.max_output_channels 1024"),
    (dict(hw=299, cin=3), K210, "conv2d input 299x299 exceeds ops.conv2d.max_input_hw [240, 320]"),
    (dict(cin=16, cout=16, groups=4), ETHOS, "conv2d with 4 groups not supported (ops.conv2d.grouped = false)"),
    (dict(wdtype="s16"), K210, "conv2d w16a8 not covered by precision.modes [w8a8]"),
    (dict(k=65, hw=70), ETHOS, "conv2d kernel extent 65x65 exceeds ops.conv2d.max_kernel_hw [64, 64]"),
])
def test_conv_rules_name_their_field(kwargs, profile, expected):
    assert expected in reasons(conv_program(**kwargs), profile)
    assert reasons(conv_program(**kwargs), IDEAL) == []


def test_every_violation_is_listed():
    assert reasons(conv_program(dilation=2), K210) == [
        "conv2d kernel extent 5x5 exceeds ops.conv2d.max_kernel_hw [3, 3]",
        "conv2d dilation 2x2 not in ops.conv2d.dilations [1]"]


def test_depthwise_rule():
    prog = conv_program(16, 16, groups=16)
    assert reasons(prog, K210) == []
    assert reasons(prog, with_op(K210, "conv2d", depthwise=False)) == \
        ["depthwise conv2d not supported (ops.conv2d.depthwise = false)"]


def test_unsupported_kind_stops_at_one_reason():
    prof = with_op(K210, "conv2d", supported=False)
    assert reasons(conv_program(k=7, stride=3), prof) == \
        ["conv2d not supported (ops.conv2d.supported = false)"]


def test_sixteen_bit_data_exceeds_an_eight_bit_chip():
    b = ProgramBuilder("pool")
    x = b.input("x", (1, 4, 8, 8), "s16", scale=0.1)
    b.output(b.node("maxpool2d", [x], "pool", kernel=[2, 2], strides=[2, 2]))
    prog = b.build()
    assert reasons(prog, K210, "pool") == \
        ["maxpool2d on 16-bit data exceeds the widest precision.modes activation_bits 8"]
    assert reasons(prog, ETHOS, "pool") == []


def quant_sandwich(mid_graph: bool):
    """f32 -> quantize -> clamp -> dequantize -> f32 (optionally twice, so one pair is inside)."""
    b = ProgramBuilder("q")
    x = b.input("x", (1, 4, 8, 8), "f32")
    rounds = 2 if mid_graph else 1
    for i in range(rounds):
        q = b.node("quantize", [x], f"q{i}", dtype="s8", scale=0.1)
        c = b.node("clamp", [q], f"c{i}", min=0, max=127)
        x = b.node("dequantize", [c], f"d{i}", dtype="f32", scale=None)
    b.output(x)
    return b.build()


def test_boundary_quantize_is_host_work_not_a_fallback():
    placed = {p.node: p for p in place(quant_sandwich(False), K210)}
    assert placed["q0"].on_host and placed["q0"].boundary and placed["q0"].fallback_reason is None
    assert placed["d0"].boundary and not placed["c0"].on_host
    inner = {p.node: p for p in place(quant_sandwich(True), K210)}
    assert "inside the graph" in inner["d0"].fallback_reason
    assert "inside the graph" in inner["q1"].fallback_reason
    assert inner["q0"].boundary and inner["d1"].boundary


def test_every_rule_has_its_rule_as_docstring():
    for _, rule in constraints.RULES:
        assert rule.__name__.startswith("constraint_") and len(rule.__doc__.split()) >= 5


def test_supported_ops_doc_is_current(monkeypatch):
    monkeypatch.delenv("ARCHNET_PROFILE_PATH", raising=False)
    committed = constraints.DOC_PATH.read_text()
    assert committed == supported_ops_markdown(), \
        "docs/SUPPORTED_OPS.md is stale: run `python -m simulator.constraints`"
    for _, rule in constraints.RULES:
        assert rule.__name__ in committed
    assert "constraint_sticky_fallback" in committed and "constraint_epilogue_of_host_op" in committed


@pytest.mark.parametrize("pads,expected", [
    ([0, 0, 0, 0], None),
    ([1, 1, 1, 1], "avgpool2d kernel extent 9x9 exceeds ops.avgpool2d.max_padded_kernel_hw [8, 8]"),
])
def test_avgpool_kernel_limit_depends_on_padding(pads, expected):
    """Ethos-U55 (Vela): an unpadded average pool takes kernels up to 256 high, a padded one up
    to 8x8; the whole-map pool of a squeeze-and-excitation block stays on the NPU."""
    b = ProgramBuilder("pool")
    x = b.input("x", (1, 8, 9, 9), "s8", scale=0.1)
    b.output(b.node("avgpool2d", [x], "pool", kernel=[9, 9], strides=[1, 1], pads=pads))
    got = reasons(b.build(), load_profile("ethos-u55-128"), node="pool")
    assert got == ([] if expected is None else [expected])


def token_norm_program(d: int = 384, rows: int = 8):
    """The per-token LayerNorm's chip ops on [rows, d] at 16 bits: mean, sub of the row's mean,
    square, mean, interpolated rsqrt table, multiply."""
    from simulator.numerics.tables import rsqrt_table
    b = ProgramBuilder("norm")
    x = b.input("x", (rows, d), "s16", scale=0.002)
    m = b.node("mean", [x], "mean", dtype="s16", scale=0.002, axes=[-1])
    c = b.node("sub", [x, m], "centred", dtype="s16", scale=0.002)
    sq = b.node("mul", [c, c], "square", dtype="s16", scale=8e-4, zero_point=-32768)
    v = b.node("mean", [sq], "var", dtype="s16", scale=1e-4, zero_point=-32768, axes=[-1])
    w = b.node("lookup_table", [v], "rsqrt_wide", dtype="s32", scale=1 / 8192 / 128,
               table=rsqrt_table(1e-4, 1 / 8192, 1e-5, in_zp=-32768), interpolated=True,
               function="rsqrt")
    r = b.node("requantize", [w], "rsqrt", dtype="s16", scale=1 / 8192, real_multiplier=[1 / 128])
    b.output(b.node("mul", [c, r], "norm", dtype="s16", scale=1 / 4096))
    return b.build()


def test_token_norm_runs_on_ethos_u55_and_names_each_missing_piece_elsewhere():
    prog = token_norm_program()
    assert not any(p.on_host for p in place(prog, ETHOS))
    assert not any(p.on_host for p in place(prog, IDEAL))
    base = load_profile("rk3588-npu-core")
    why = {p.node: p.fallback_reason for p in place(prog, base) if p.on_host}
    assert why["mean"] == "mean not supported (ops.mean.supported = false)"
    assert why["centred"] == "sub not supported (ops.sub.supported = false)"
    assert "ops.lookup_table.interpolated = false" in why["rsqrt_wide"]
    # a row's value broadcast along it is a mul the "channel" broadcast does not take
    assert "mul broadcast of (8, 1) to (8, 384)" in why["norm"]
    assert reasons(prog, with_op(ETHOS, "mul", broadcast=constraints.Broadcast.CHANNEL),
                   "norm") == ["mul broadcast of (8, 1) to (8, 384) is neither elementwise, per "
                               "channel nor scalar"]


def test_mean_limits_name_their_fields():
    prog = token_norm_program(d=5000, rows=2)
    assert reasons(prog, ETHOS, "mean") == ["mean axis of 5000 exceeds ops.mean.max_axis_length "
                                            "4095"]
    assert reasons(prog, with_op(ETHOS, "mean", max_reduced_elements=4096), "var") == [
        "mean over 5000 elements exceeds ops.mean.max_reduced_elements 4096",
        "mean axis of 5000 exceeds ops.mean.max_axis_length 4095"]
