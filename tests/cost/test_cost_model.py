"""Properties of the cost model: monotone in work, honest about bits, fallbacks and formula."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cost_programs import conv_program, fallback_sandwich, float_conv_program, small_cnn
from simulator.constraints import check_node
from simulator.cost import estimate, estimate_csv, format_estimate
from simulator.cost.memory import tensor_bits
from simulator.ir import ProgramBuilder
from simulator.cost.breakdown import BOUNDS
from simulator.profiles import list_profiles, load_profile

PROFILES = {name: load_profile(name) for name in list_profiles()}
CHIPS = sorted(PROFILES)


# ----------------------------------------------------------------------------- monotone in work

conv_shapes = st.fixed_dictionaries({
    "cin": st.integers(1, 64), "cout": st.integers(1, 64), "hw": st.integers(4, 32),
    "k": st.sampled_from([1, 3]), "stride": st.sampled_from([1, 2])})


@pytest.mark.parametrize("chip", CHIPS)
@given(shape=conv_shapes, grow=st.sampled_from(["cin", "cout", "hw"]), extra=st.integers(1, 40))
def test_more_macs_are_never_cheaper(chip, shape, grow, extra):
    bigger = dict(shape, **{grow: shape[grow] + extra})
    small = estimate(conv_program(**shape), PROFILES[chip])
    large = estimate(conv_program(**bigger), PROFILES[chip])
    assume(large.total.macs > small.total.macs)  # a wider input may not add an output pixel
    assert large.total_cycles >= small.total_cycles * (1 - 1e-12)


# ----------------------------------------------------------------------------- bits

@pytest.mark.parametrize("chip", CHIPS)
def test_four_bits_pay_only_where_the_chip_runs_them_faster(chip):
    prof = PROFILES[chip]
    w8 = estimate(conv_program(64, 64, 16, wdtype="s8", adtype="s8"), prof)
    w4 = estimate(conv_program(64, 64, 16, wdtype="s4", adtype="s4"), prof)
    rate4, rate8 = prof.mode_for(4, 4).macs_per_cycle, prof.mode_for(8, 8).macs_per_cycle
    stores_int4 = any(m.weight_bits < 8 for m in prof.precision)
    if rate4 > rate8:
        assert w4.total_cycles < w8.total_cycles
    elif stores_int4:  # same rate; only the bytes shrink
        assert w4.op("conv_acc").cost.compute_cycles == w8.op("conv_acc").cost.compute_cycles
    else:  # runs and is stored as int8: nothing changes
        assert w4.to_dict()["ops"] == w8.to_dict()["ops"]


def test_rk3588_runs_int4_at_twice_the_int8_rate():
    prof = PROFILES["rk3588-npu-core"]
    w8 = estimate(conv_program(64, 64, 32), prof).op("conv_acc").cost.compute_cycles
    w4 = estimate(conv_program(64, 64, 32, wdtype="s4", adtype="s4"), prof)
    assert w4.op("conv_acc").cost.compute_cycles == pytest.approx(w8 / 2)


@pytest.mark.parametrize("chip", CHIPS)
def test_float_graphs_cost_as_the_default_widths(chip):
    prof = PROFILES[chip]
    assert (prof.default_weight_bits, prof.default_activation_bits) == (8, 8)
    f32 = estimate(float_conv_program(16, 32, 16, 3), prof).op("conv")
    s8 = estimate(conv_program(16, 32, 16, 3), prof).op("conv_acc")
    assert f32.fallback_reason is None
    assert f32.cost.compute_cycles == pytest.approx(s8.cost.compute_cycles)
    assert (f32.weight_bits, f32.activation_bits) == (s8.weight_bits, s8.activation_bits)


# ----------------------------------------------------------------------------- fallbacks

def test_7x7_conv_is_a_fallback_on_k210_not_on_ideal():
    program = conv_program(16, 16, 32, k=7)
    k210 = estimate(program, PROFILES["k210-kpu"]).op("conv_acc")
    assert k210.on_host and k210.bound == "host"
    assert k210.fallback_reason == "conv2d kernel 7x7 not in ops.conv2d.kernel_sizes [[1,1],[3,3]]"
    ideal = estimate(program, PROFILES["ideal"]).op("conv_acc")
    assert not ideal.on_host and ideal.fallback_reason is None


@pytest.mark.parametrize("chip", CHIPS)
def test_fallback_ops_are_listed_with_reasons_and_pay_both_transfers(chip):
    est = estimate(fallback_sandwich("LRN"), PROFILES[chip])
    assert est.fallbacks[0].name == "host_op"
    assert est.fallbacks[0].fallback_reason == "no NPU op for ONNX LRN"
    op = est.op("host_op")
    # the s8 input is brought over, and the output sent back unless the rest stays on the host
    moved = 16 * 16 * 16 * (1 if PROFILES[chip].host.sticky_fallback else 2)
    assert op.cost.activation_bytes == moved and op.bound == "host"
    assert op.cost.overhead_cycles == pytest.approx(PROFILES[chip].host.fallback_overhead_s * est.clock_hz)
    assert est.to_dict()["fallbacks"][0] == {"name": "host_op", "reason": "no NPU op for ONNX LRN"}


def test_sticky_fallback_keeps_the_rest_on_the_host():
    edge = estimate(fallback_sandwich(), PROFILES["edgetpu"])
    assert edge.op("after_acc").on_host and "sticky_fallback" in edge.op("after_acc").fallback_reason
    rk = estimate(fallback_sandwich(), PROFILES["rk3588-npu-core"])
    assert not rk.op("after_acc").on_host


def test_requantize_of_a_host_conv_stays_on_the_host():
    est = estimate(small_cnn(), PROFILES["k210-kpu"])
    assert est.op("stem_acc").on_host and est.op("stem").on_host
    assert est.op("stem").fallback_reason == "epilogue of host op 'stem_acc'"


# ----------------------------------------------------------------------------- fusion, formula

@pytest.mark.parametrize("chip", CHIPS)
def test_requantize_after_a_mac_op_is_fused(chip):
    est = estimate(conv_program(), PROFILES[chip])
    req = est.op("conv")
    assert req.fused_into == "conv_acc" and req.cycles == 0 and req.bound == est.op("conv_acc").bound
    # the conv writes the requantized s8 tensor, not its int32 accumulator
    assert est.op("conv_acc").activation_bits == 8


@pytest.mark.parametrize("chip", CHIPS)
def test_every_number_follows_the_formula(chip):
    prof = PROFILES[chip]
    est = estimate(small_cnn(), prof)
    for op in est.ops:
        c = op.cost
        assert op.bound in BOUNDS
        if op.on_host:
            assert c.cycles == pytest.approx(c.compute_cycles + c.memory_cycles + c.overhead_cycles)
        else:
            assert c.cycles == pytest.approx(c.overhead_cycles + max(c.compute_cycles, c.memory_cycles))
            act = c.activation_bytes / (prof.memory.activation_bytes_per_s / prof.clock_hz)
            wgt = c.weight_bytes / (prof.memory.weight_bytes_per_s / prof.clock_hz)
            ports = prof.memory.weight_port.value
            assert c.memory_cycles == pytest.approx(max(act, wgt) if ports == "separate" else
                                                    act + wgt)
        assert op.latency_ms == pytest.approx(c.cycles / prof.clock_hz * 1e3)
    invoke = prof.host.invoke_overhead_s * prof.clock_hz   # once per inference, in no op
    assert est.invoke.cycles == pytest.approx(invoke)
    assert est.total_cycles == pytest.approx(sum(op.cycles for op in est.ops) + invoke)
    assert est.total_latency_ms == pytest.approx(est.total_cycles / prof.clock_hz * 1e3)


def test_utilisation_follows_the_array_geometry():
    k210, rk = PROFILES["k210-kpu"], PROFILES["rk3588-npu-core"]
    one = estimate(conv_program(64, 64, 16, k=1), k210).op("conv_acc")
    three = estimate(conv_program(64, 64, 16, k=3), k210).op("conv_acc")
    assert one.utilisation == pytest.approx(1 / 9) and three.utilisation == pytest.approx(1.0)
    # an array reducing over input channels has one lane of work per depthwise channel
    dw = estimate(conv_program(64, 64, 16, k=3, groups=64), rk).op("conv_acc")
    assert dw.utilisation == pytest.approx(1 / 32)
    edge = estimate(conv_program(64, 64, 16, k=3, groups=64), PROFILES["edgetpu"])
    assert edge.op("conv_acc").utilisation == pytest.approx(9 / 64)   # im2col: taps on lanes
    stem = estimate(conv_program(3, 64, 32, k=7), rk).op("conv_acc")  # 3 of 32 lanes
    assert stem.utilisation == pytest.approx(3 / 32)


def test_edge_tpu_streams_what_the_parameter_cache_cannot_hold():
    edge = PROFILES["edgetpu"]
    assert estimate(conv_program(64, 64, 16), edge).total.weight_bytes == 0
    big = estimate(conv_program(1024, 4096, 4, k=3), edge)  # 37.7 MB of int8 weights
    weights = 1024 * 4096 * 9 + 4 * 4096
    assert big.total.weight_bytes == weights and big.op("conv_acc").bound == "memory"


# ----------------------------------------------------------------------------- output, layering

def test_to_dict_json_and_table():
    est = estimate(small_cnn(), PROFILES["ethos-u55-128"])
    doc = json.loads(json.dumps(est.to_dict()))
    assert {"chip", "total_cycles", "total_latency_ms", "ops", "formula"} <= set(doc)
    for op in doc["ops"]:
        assert {"name", "type", "cycles", "latency_ms", "bound", "fallback_reason"} <= set(op)
    table = format_estimate(est)
    assert all(op.name in table for op in est.ops) and "total" in table and "formula" in table
    rows = estimate_csv(est).strip().splitlines()
    assert len(rows) == len(est.ops) + 1 and rows[0].startswith("name,type")


def _attention_softmax(masked: bool, keys: int = 64):
    """Attention probabilities [N=2, heads=4, T, T], with a key mask [N, 1, 1, T] or without."""
    b = ProgramBuilder("attention_softmax")
    inputs = [b.input("scores", (2, 4, keys, keys), "s8", scale=0.1)]
    if masked:
        inputs.append(b.input("key_mask", (2, 1, 1, keys), "u8"))
    b.output(b.node("softmax", inputs, "probs", dtype="u8", scale=1 / 256, axis=-1,
                    exp_table=list(range(256, 0, -1))))
    return b.build()


@pytest.mark.parametrize("chip", CHIPS)
def test_a_key_mask_costs_a_softmax_plus_reading_the_mask(chip):
    prof = PROFILES[chip]
    programs = [_attention_softmax(False), _attention_softmax(True)]
    plain_reasons, masked_reasons = (check_node(p, p.nodes[0], prof) for p in programs)
    assert masked_reasons == plain_reasons
    plain, masked = (estimate(p, prof).op("probs") for p in programs)
    assert (masked.on_host, masked.fallback_reason) == (plain.on_host, plain.fallback_reason)
    assert masked.cost.compute_cycles == plain.cost.compute_cycles
    mask_bytes = 2 * 64 * tensor_bits(programs[1].tensors["key_mask"], prof) / 8
    extra = masked.cost.activation_bytes - plain.cost.activation_bytes
    assert extra == (0 if masked.on_host else mask_bytes)  # the host holds its own inputs
    assert masked.cost.cycles >= plain.cost.cycles


COST_FILES = sorted((Path(__file__).resolve().parents[2] / "simulator" / "cost").glob("*.py"))
CONSTRAINTS = Path(__file__).resolve().parents[2] / "simulator" / "constraints.py"


@pytest.mark.parametrize("path", COST_FILES + [CONSTRAINTS], ids=lambda p: p.name)
def test_cost_and_constraints_never_import_numerics(path):
    tree = ast.parse(path.read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    forbidden = ("simulator.numerics", "simulator.execute", "simulator.onnx_import", "numpy", "torch")
    assert not [m for m in mods if m.startswith(forbidden)], mods


def test_importing_cost_loads_no_numerics():
    code = ("import sys, simulator.cost; "
            "bad = [m for m in sys.modules if m.startswith('simulator.numerics')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])


def test_token_norm_ops_cost_on_their_units():
    """A mean reads every input element on the pooling unit, a sub is an add on the elementwise
    unit; none is a fallback on Ethos-U55."""
    from test_cost_constraints import token_norm_program
    chip = load_profile("ethos-u55-128")
    est = estimate(token_norm_program(d=384, rows=8), chip)
    assert est.fallbacks == []
    rates = chip.elementwise
    assert est.op("mean").cost.compute_cycles == pytest.approx(8 * 384 / rates.pool_elements_per_cycle)
    assert est.op("centred").cost.compute_cycles == pytest.approx(8 * 384 / rates.add_elements_per_cycle)
    # the table reads the variance as the mean writes it: fused into the mean's output stage
    assert est.op("rsqrt_wide").fused_into == "var"
