"""The zoo beyond ResNet: MobileNetV2, VGG and a ViT for 28x28 images train from the same
command, save and load as any teacher, and carry the constructs the converter must handle."""

import pytest
import torch

from archnet.capture import capture
from archnet.cli import main
from archnet.rules import plan_conversion
from archnet.teachers import build_teacher, load_teacher
from simulator.profiles import load_profile


@pytest.mark.parametrize("arch", ["mobilenetv2", "vgg", "vit"])
def test_train_save_load_and_reproduce(tmp_path, arch):
    out = tmp_path / f"{arch}.pt"
    assert main(["teacher", "train", "--dataset", "digits", "--arch", arch, "--width", "8",
                 "--epochs", "1", "--max-steps", "3", "--threads", "1", "--out", str(out)]) == 0
    model, meta = load_teacher(out)
    extra = {"image_size": 16} if arch in ("vgg", "vit") else {}
    assert meta["arch"] == arch and meta["kwargs"] == {"in_channels": 1, "num_classes": 10,
                                                       "width": 8, **extra}
    assert "--stem-stride" not in meta["command"] and f"--arch {arch}" in meta["command"]
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)


def test_mobilenetv2_has_depthwise_relu6_and_linear_bottlenecks():
    model = build_teacher("mobilenetv2", in_channels=1, num_classes=10, width=16).eval()
    graph = capture(model, (torch.rand(1, 1, 28, 28),))
    ops = graph.op_counts()
    depthwise = [n for n in graph.nodes if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert len(depthwise) == 9 and ops["clamp"] == 19 and ops["add"] == 5
    plan = plan_conversion(graph, load_profile("ethos-u55-128"), (8, 8))
    assert plan.replaced() == []                 # the U55 runs all of it


def test_vgg_is_plain_convs_and_max_pools():
    model = build_teacher("vgg", in_channels=1, num_classes=10, width=32).eval()
    graph = capture(model, (torch.rand(1, 1, 28, 28),))
    assert set(graph.op_counts()) == {"conv2d", "relu", "max_pool2d", "flatten", "linear"}
    plan = plan_conversion(graph, load_profile("k210-kpu"), (8, 8), "paper")
    assert plan.replaced() == [] and plan.student.fallbacks == []


def test_resnet_options_are_refused_for_other_families():
    with pytest.raises(Exception, match="unknown option.*stem_stride"):
        build_teacher("vgg", in_channels=1, num_classes=10, stem_stride=2)


def test_vit_has_a_class_token_positions_pre_norm_blocks_and_converts_per_chip():
    """The zoo's ViT: a 4x4/4 patch conv, a class token, learned positions, four pre-LayerNorm
    blocks (softmax attention, GELU MLP), the head on the class token. On Ethos-U55 and U85
    every form is exact (the student starts as the teacher); on RK3588 LayerNorm becomes the
    fixed-statistics affine and GELU a ReLU; no host op anywhere."""
    from archnet.lowering.graph import build_graph_student
    torch.manual_seed(0)
    model = build_teacher("vit", in_channels=1, num_classes=10, width=32, image_size=28).eval()
    graph = capture(model, (torch.rand(1, 1, 28, 28),))
    ops = graph.op_counts()
    assert ops["layer_norm"] == 9 and ops["softmax"] == 4 and ops["gelu"] == 4
    assert ops["cat"] == 1 and ops["select"] == 1
    x = torch.rand(3, 1, 28, 28)
    for chip, exact in (("ethos-u55-128", True), ("ethos-u85-256", True),
                        ("rk3588-npu-core", False)):
        profile = load_profile(chip)
        plan = plan_conversion(graph, profile, (8, 8))
        assert plan.student.fallbacks == [], chip
        fired = plan.rules_fired()
        assert fired.get("layer_norm.per_token", 0) == (9 if exact else 0), chip
        student, _ = build_graph_student(graph, plan, profile)
        if exact:
            with torch.no_grad():
                assert torch.allclose(student(x, quantize=False), model(x), atol=1e-4), chip
