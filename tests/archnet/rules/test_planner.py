"""The chip decides: the planner keeps every op the chip's constraints accept, replaces only
what they refuse, never leaves a student op the chip would run on the host, and names every
node it cannot place before any training."""

import pytest
import torch
from torch import nn

from archnet.capture import capture
from archnet.errors import ConversionError
from archnet.rules import plan_conversion
from archnet.rules.forms import PAPER_OPS
from archnet.rules.planner import whole_program
from archnet.teachers import build_teacher
from simulator.constraints import place
from simulator.profiles import load_profile

CHIPS = ("k210-kpu", "ethos-u55-128", "rk3588-npu-core", "edgetpu")


@pytest.fixture(scope="module")
def resnet_graph():
    torch.manual_seed(0)
    model = build_teacher("resnet8", in_channels=1, num_classes=10, width=16).eval()
    return capture(model, (torch.rand(1, 1, 28, 28),))


def _student_on_host(graph, plan):
    profile = load_profile(plan.chip)
    program = whole_program(graph, plan.decisions, plan.bits, "student")
    return [p for p in place(program, profile) if p.on_host and not p.boundary]


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("recipe", ["native", "paper"])
def test_student_runs_wholly_on_the_chip(resnet_graph, chip, recipe):
    plan = plan_conversion(resnet_graph, load_profile(chip), (8, 8), recipe)
    assert _student_on_host(resnet_graph, plan) == []
    assert plan.student.fallbacks == []


@pytest.mark.parametrize("chip", CHIPS)
def test_native_first_keeps_every_op_the_chip_runs(resnet_graph, chip):
    profile = load_profile(chip)
    plan = plan_conversion(resnet_graph, profile, (8, 8))
    for d in plan.decisions:
        native = d.candidates[0]
        assert native.rule.endswith((".native", ".fused", ".clamp"))
        # a conv merged into the add it writes is kept too, computed by the add's conv
        assert d.form.native == native.fits or d.rule == "conv2d.merged", \
            (d.node, d.rule, native.why_not)
    if not plan.teacher.fallbacks:       # nothing to replace: the student is the teacher's ops
        assert plan.replaced() == []
        assert plan.student.total_cycles == pytest.approx(plan.teacher.total_cycles)


def test_k210_replaces_what_it_lacks_and_beats_the_teacher(resnet_graph):
    plan = plan_conversion(resnet_graph, load_profile("k210-kpu"), (8, 8))
    fired = plan.rules_fired()
    assert fired["conv2d.shift_3x3"] == 1                   # the 7x7 stem
    assert "add.native" not in fired and sum(v for k, v in fired.items() if k.startswith("add.")) == 3
    assert fired["conv2d.native"] + fired["conv2d.merged"] == 8   # 3x3 and 1x1 convs stay
    assert len(plan.teacher.fallbacks) > 0
    assert plan.student.total_latency_ms < plan.teacher.total_latency_ms


def test_a_residual_add_merges_into_the_conv_that_writes_it(resnet_graph):
    """Each block's second 3x3 conv reads its input concatenated with the shortcut, so the add
    costs no layer of its own; the paper's recipe keeps its own merge layer."""
    k210 = load_profile("k210-kpu")
    native = plan_conversion(resnet_graph, k210, (8, 8))
    fired = native.rules_fired()
    assert fired["add.merge_into_conv"] == fired["conv2d.merged"] == 3
    merged = {d.node for d in native.decisions if d.rule == "conv2d.merged"}
    for d in native.decisions:
        if d.rule == "add.merge_into_conv":
            conv = resnet_graph.node(d.node).inputs[d.form.absorbs]
            assert conv in merged
            assert [s.op for s in d.form.steps] == ["concat", "conv2d"]
    paper = plan_conversion(resnet_graph, k210, (8, 8), "paper")
    assert "add.merge_into_conv" not in paper.rules_fired()
    assert native.student.total_cycles < paper.student.total_cycles


@pytest.mark.parametrize("chip", CHIPS)
def test_paper_recipe_uses_only_the_paper_op_set(resnet_graph, chip):
    plan = plan_conversion(resnet_graph, load_profile(chip), (8, 8), "paper")
    for d in plan.decisions:
        for step in d.form.steps:
            assert step.op in PAPER_OPS, (d.node, d.rule, step.op)
            if step.op == "conv2d":
                assert step.weight[2:] == (3, 3) and step.attrs.get("groups", 1) == 1
            if step.op == "maxpool2d":
                assert step.attrs["kernel"] == [2, 2]


@pytest.mark.parametrize("chip", CHIPS)
def test_bits_the_chip_does_not_accelerate_are_reported(resnet_graph, chip):
    profile = load_profile(chip)
    plan = plan_conversion(resnet_graph, profile, (4, 4))
    mode = profile.mode_for(4, 4)
    assert bool(plan.notes) == ((mode.weight_bits, mode.activation_bits) != (4, 4))


class _Odd(nn.Module):
    """Two ops no rule has (an upsample, a cumulative sum) and one the K210 lacks (GELU)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.act = nn.GELU()

    def forward(self, x):
        return torch.cumsum(self.act(self.up(self.conv(x))), dim=1)


def test_every_unplaceable_node_is_named_before_training():
    graph = capture(_Odd().eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(ConversionError) as e:
        plan_conversion(graph, load_profile("ethos-u55-128"), (8, 8))
    msg = str(e.value)
    assert "2 teacher node(s) cannot run on ethos-u55-128" in msg
    assert "up (aten.upsample_nearest2d)" in msg and "aten.cumsum" in msg
    assert "\n" not in msg


def test_allow_fallback_costs_the_host_nodes():
    graph = capture(_Odd().eval(), (torch.randn(1, 3, 8, 8),))
    plan = plan_conversion(graph, load_profile("ethos-u55-128"), (8, 8), allow_fallback=True)
    host = [d for d in plan.decisions if d.form.host]
    assert [d.op for d in host] == ["aten.upsample_nearest2d", "aten.cumsum"]
    assert len(plan.student.fallbacks) == 2
    assert plan.decisions[2].rule == "gelu.native"          # the U55's table runs GELU


def test_learned_replacement_only_where_no_exact_form_fits():
    graph = capture(_Odd().eval(), (torch.randn(1, 3, 8, 8),))
    plan = plan_conversion(graph, load_profile("k210-kpu"), (8, 8), allow_fallback=True)
    gelu = next(d for d in plan.decisions if d.op == "gelu")
    assert gelu.rule == "gelu.relu.clamp" and not gelu.form.exact    # after a host op: no MAC
    assert "lookup_table not supported" in gelu.reason


def test_unknown_recipe_is_refused(resnet_graph):
    with pytest.raises(ConversionError, match="unknown recipe 'fast'"):
        plan_conversion(resnet_graph, load_profile("k210-kpu"), (8, 8), "fast")


@pytest.mark.parametrize("chip", CHIPS)
def test_teacher_estimate_equals_the_onnx_import_of_the_same_model(tmp_path, chip):
    """Two captures of one model (torch.export here, torch.onnx.export + the simulator's ONNX
    import there) cost the same on every chip: one cost model, one set of constraints."""
    from simulator.cost import estimate
    from simulator.model_files import load_model
    torch.manual_seed(0)
    model = build_teacher("resnet8", in_channels=1, num_classes=10, width=16).eval()
    x = torch.rand(1, 1, 28, 28)
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
    profile = load_profile(chip)
    onnx_est = estimate(load_model(str(path)), profile)
    plan = plan_conversion(capture(model, (x,)), profile, (8, 8))
    assert plan.teacher.total_cycles == pytest.approx(onnx_est.total_cycles, rel=1e-3)
    assert len(plan.teacher.fallbacks) == len(onnx_est.fallbacks)


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


def test_approximate_replacement_beats_a_learned_one():
    """rk3588's table unit has SiLU but no GELU: x * sigmoid(1.702 x) (within 0.021 in float)
    wins over ReLU although ReLU costs nothing; where no SiLU runs, ReLU stays."""
    graph = capture(_Mlp().eval(), (torch.randn(1, 16),))
    gelu = next(d for d in plan_conversion(graph, load_profile("rk3588-npu-core"), (8, 8)).decisions
                if d.op == "gelu")
    assert gelu.rule == "gelu.silu" and not gelu.form.exact
    assert gelu.form.max_error == pytest.approx(0.0203, abs=1e-4)
    assert "cheapest approximate (within 0.0203, absolute, in float) replacement of 2 that fit" in gelu.reason
    k210 = next(d for d in plan_conversion(graph, load_profile("k210-kpu"), (8, 8)).decisions
                if d.op == "gelu")
    assert k210.rule.startswith("gelu.relu") and "cheapest learned" in k210.reason
