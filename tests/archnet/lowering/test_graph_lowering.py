"""Lowering a conversion plan: the student starts as the teacher wherever the chosen forms are
exact (every chip, both recipes), its blocks are cut where one value is live, it holds only
ops the chip runs, and its integers equal the simulator's."""

import pytest
import torch
from torch import nn

from archnet.capture import capture
from archnet.lowering import assert_deployable, calibrate_activations
from archnet.lowering.graph import build_graph_student, partition
from archnet.rules import plan_conversion
from lowering_helpers import simulator_block_outputs
from archnet.teachers import build_teacher
from simulator.profiles import load_profile

CHIPS = ("k210-kpu", "ethos-u55-128", "rk3588-npu-core", "edgetpu")


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, ReLU6, 3x3 depthwise, ReLU6, linear 1x1 project,
    residual add without activation."""

    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False),
                                nn.BatchNorm2d(h), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class TinyMobile(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU6())
        self.block1 = InvertedResidual(8)
        self.block2 = InvertedResidual(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = _randomise_bn(build_teacher("resnet8", in_channels=1, num_classes=10, width=8,
                                        stem_pool=False))
    return model, capture(model, (torch.rand(1, 1, 16, 16),))


@pytest.fixture(scope="module")
def mobile():
    torch.manual_seed(0)
    model = _randomise_bn(TinyMobile())
    return model, capture(model, (torch.rand(1, 1, 16, 16),))


def test_blocks_cut_where_one_value_is_live(resnet):
    _, graph = resnet
    blocks = partition(graph)
    assert [b[-1].module for b in blocks] == ["relu", "layer1.0.relu", "layer2.0.relu",
                                              "layer3.0.relu", "fc"]
    for i, nodes in enumerate(blocks[1:], 1):
        before = {n.name for b in blocks[:i] for n in b}
        reads = {v for n in nodes for v in n.inputs if v in before}
        assert reads == {blocks[i - 1][-1].name}


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("recipe", ["native", "paper"])
@pytest.mark.parametrize("net", ["resnet", "mobile"])
def test_exact_forms_start_as_the_teacher(request, net, chip, recipe):
    model, graph = request.getfixturevalue(net)
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (8, 8), recipe)
    student, low = build_graph_student(graph, plan, profile)
    x = torch.rand(3, 1, 16, 16)
    teacher = graph.values(x, keep=set(low.taps))
    inexact = {d.node for d in plan.decisions if not d.form.exact}
    exact_so_far = True
    for block, feature, tap in zip(student.blocks, student.features(x, quantize=False), low.taps):
        exact_so_far &= not any(n.name in inexact for n in next(
            b for b in partition(graph) if b[-1].name == tap))
        if exact_so_far:
            assert torch.allclose(feature, teacher[tap], atol=1e-4), (block.name, chip, recipe)
    assert_deployable(student, profile)


@pytest.mark.parametrize("chip", ["ethos-u55-128", "k210-kpu"])
def test_student_integers_equal_the_simulator(mobile, chip):
    _, graph = mobile
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (4, 4))
    student, _ = build_graph_student(graph, plan, profile)
    images = torch.rand(8, 1, 16, 16)
    calibrate_activations(student, images, seed=0)
    simulator_block_outputs(student, images, profile)


def test_relu6_and_depthwise_stay_native_where_the_chip_runs_them(mobile):
    _, graph = mobile
    plan = plan_conversion(graph, load_profile("ethos-u55-128"), (8, 8))
    fired = plan.rules_fired()
    assert fired["clamp.fused"] == 5 and fired["add.native"] == 2
    assert all(d.form.native for d in plan.decisions)
    student, low = build_graph_student(graph, plan, load_profile("ethos-u55-128"))
    groups = [s.get("groups", 1) for b in low.config["blocks"] for s in b["steps"]
              if s["kind"] == "conv"]
    assert groups.count(32) == 2 and low.learned == []


def test_depthwise_halving_averages_2x2_cells():
    from archnet.lowering.graph import _depthwise_sum_pool
    x = torch.rand(2, 5, 8, 6)
    y = torch.nn.functional.conv2d(x, _depthwise_sum_pool(5), stride=2, padding=1, groups=5)
    assert torch.allclose(y, torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("net", ["resnet", "mobile"])
def test_the_plan_estimates_the_student_it_builds(request, net, chip):
    """What ``archnet plan`` promises before training is what the converted student's Program
    costs: the same ops, the same widths (the image read as 8-bit pixels)."""
    from simulator.cost import estimate
    _, graph = request.getfixturevalue(net)
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (4, 4))
    student, _ = build_graph_student(graph, plan, profile)
    built = estimate(student.export((1, 1, 16, 16)), profile)
    # within 1e-4: the student's head writes its logits on at least 8 bits, which the plan
    # counts at the student's width (a fraction of a cycle of output traffic)
    assert built.total_cycles == pytest.approx(plan.student.total_cycles, rel=1e-4), chip


def test_paper_recipe_builds_the_hand_written_resnet_student():
    """``--recipe paper`` on a ResNet for the K210 plans the layers the hand-written ResNet
    lowering builds (the paper's construction): same MAC layers, same estimated latency."""
    from archnet.lowering import convert_resnet
    from archnet.student import conv_geometry
    from simulator.cost import estimate
    torch.manual_seed(0)
    model = _randomise_bn(build_teacher("resnet8", in_channels=1, num_classes=10, width=8))
    graph = capture(model, (torch.rand(1, 1, 28, 28),))
    k210 = load_profile("k210-kpu")
    plan = plan_conversion(graph, k210, (4, 4), "paper")
    assert plan.rules_fired()["linear.global_pool_head"] == 1
    ours, _ = build_graph_student(graph, plan, k210)
    theirs = convert_resnet(model, k210, "4w4a", [1, 28, 28])

    def layers(student):
        out = []
        for block in student.config["blocks"]:
            for s in block["steps"]:
                if s["kind"] == "conv":
                    g = conv_geometry(s)
                    out.append(("conv", tuple(g["kernel"]), tuple(g["strides"]),
                                s["in_channels"], s["out_channels"], g["groups"], s["relu"]))
                elif s["kind"] == "linear":
                    out.append(("linear", (), (), s["in_features"], s["out_features"], 1, False))
        return sorted(out)
    assert layers(ours) == layers(theirs)
    assert estimate(ours.export((1, 1, 28, 28)), k210).total_cycles == pytest.approx(
        estimate(theirs.export((1, 1, 28, 28)), k210).total_cycles)


def test_an_inverted_residual_carries_its_input_where_the_chip_has_no_add(mobile):
    """On the K210 (no add) MobileNetV2's residual rides through its own block: the input as
    extra channels relu(x/s), relu(-x/s) through the expand and the depthwise conv, added back
    by the projection. No concat and no layer of its own, cheaper than merging the add into
    the projection; with ``s`` fitted to the teacher's values the student equals the teacher
    even where the input goes far beyond ReLU6's 6 (at s = 1 it would not)."""
    from archnet.lowering.fits import fit_carried_residuals
    model, graph = mobile
    profile = load_profile("k210-kpu")
    plan = plan_conversion(graph, profile, (8, 8))
    fired = plan.rules_fired()
    assert fired["add.carry_through_block"] == 2 and "concat" not in {
        s.op for d in plan.decisions for s in d.form.steps}
    for d in plan.decisions:
        if d.rule == "add.carry_through_block":
            merge = next(c for c in d.candidates if c.rule == "add.merge_into_conv")
            assert merge.fits
    student, low = build_graph_student(graph, plan, profile)
    x = torch.rand(4, 1, 16, 16) * 40.0            # block inputs well beyond 6
    with torch.no_grad():
        want = model(x)
        assert not torch.allclose(student(x, quantize=False), want, atol=1e-3)
        assert fit_carried_residuals(student, graph, (x,)) == 2
        assert torch.allclose(student(x, quantize=False), want, atol=1e-3)
    assert_deployable(student, profile)
    convs = [s for b in low.config["blocks"] for s in b["steps"] if s["kind"] == "conv"]
    assert [s["out_channels"] for s in convs].count(32 + 16) == 4   # expand and depthwise, x2


class _OddHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_a_global_pool_on_an_odd_map_is_one_average_window_and_the_head():
    """The K210's fully connected layer cannot read a 64x7x7 map and it has no global pool:
    one 4x4/4 average window (the 7x7 map padded to 8x8, the padding not counted) and the
    classifier over the 2x2 cells, each weighted by its share of the map, compute pool and
    classifier exactly, in one pooling op instead of a stack of halving convs."""
    torch.manual_seed(0)
    model = _OddHead().eval()
    graph = capture(model, (torch.rand(1, 1, 14, 14),))
    profile = load_profile("k210-kpu")
    plan = plan_conversion(graph, profile, (8, 8))
    head = next(d for d in plan.decisions if d.rule == "linear.global_pool_head")
    assert [s.op for s in head.form.steps] == ["avgpool2d", "flatten", "fully_connected"]
    assert head.form.steps[0].attrs["kernel"] == [4, 4]
    student, _ = build_graph_student(graph, plan, profile)
    x = torch.rand(5, 1, 14, 14)
    with torch.no_grad():
        assert torch.allclose(student(x, quantize=False), model(x), atol=1e-5)
    calibrate_activations(student, x, seed=0)
    simulator_block_outputs(student, x, profile)
