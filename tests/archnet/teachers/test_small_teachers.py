"""The zoo beyond ResNet: MobileNetV2 and VGG for 28x28 images train from the same command,
save and load as any teacher, and carry the constructs the converter must handle."""

import pytest
import torch

from archnet.capture import capture
from archnet.cli import main
from archnet.rules import plan_conversion
from archnet.teachers import build_teacher, load_teacher
from simulator.profiles import load_profile


@pytest.mark.parametrize("arch", ["mobilenetv2", "vgg"])
def test_train_save_load_and_reproduce(tmp_path, arch):
    out = tmp_path / f"{arch}.pt"
    assert main(["teacher", "train", "--dataset", "digits", "--arch", arch, "--width", "8",
                 "--epochs", "1", "--max-steps", "3", "--threads", "1", "--out", str(out)]) == 0
    model, meta = load_teacher(out)
    extra = {"image_size": 16} if arch == "vgg" else {}
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
