"""Capture: any torch.nn.Module becomes a TeacherGraph that computes what the module computes,
on other batch sizes than the example's too; calls outside the vocabulary keep their ATen name
and module path so that planning can list them."""

import pytest
import torch
from torch import nn

from archnet.capture import capture, export_graph
from archnet.capture.graph import OPS
from archnet.errors import ConversionError
from archnet.teachers import build_teacher
from archnet.teachers.imagenet import build_architecture


def _same(model, graph, x, atol=1e-5):
    with torch.no_grad():
        want = model(x)
    got = graph.run(x)[0]
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=atol), float((got - want).abs().max())


@pytest.mark.parametrize("arch,kw,shape", [
    ("resnet8", {"in_channels": 1, "num_classes": 10, "width": 8}, (1, 28, 28)),
])
def test_zoo_resnet_equals_model_on_another_batch(arch, kw, shape):
    torch.manual_seed(0)
    model = build_teacher(arch, **kw).eval()
    graph = capture(model, (torch.rand(1, *shape),))
    _same(model, graph, torch.rand(3, *shape))
    assert "batch_norm" not in graph.op_counts()          # folded into the convs
    assert all(n.op in OPS for n in graph.nodes)


@pytest.mark.parametrize("arch,size", [("mobilenet_v3_small", 64), ("efficientnet_b0", 64)])
def test_imagenet_architectures_capture_every_op(arch, size):
    torch.manual_seed(0)
    model = build_architecture(arch, num_classes=10).eval()
    graph = capture(model, (torch.randn(1, 3, size, size),))
    assert all(n.op in OPS for n in graph.nodes), [n.op for n in graph.nodes if n.op not in OPS]
    _same(model, graph, torch.randn(2, 3, size, size), atol=1e-4)
    assert graph.op_counts()["mul"] > 0                   # the squeeze-excitation gates


def test_vit_class_token_and_qkv_split_run():
    torch.manual_seed(0)
    model = build_architecture("deit_tiny", num_classes=10, image_size=32).eval()
    graph = capture(model, (torch.randn(1, 3, 32, 32),))
    ops = graph.op_counts()
    assert ops["select"] > 0 and ops["layer_norm"] > 0 and ops["softmax"] > 0
    _same(model, graph, torch.randn(2, 3, 32, 32), atol=1e-4)


class _Positions(nn.Module):
    """A constant computed in forward (positions) and a functional ReLU6."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        pos = torch.arange(8, dtype=torch.float32) / 8.0
        return nn.functional.relu6(self.fc(x + pos))


def test_constant_subgraphs_fold_at_capture():
    model = _Positions().eval()
    graph = capture(model, (torch.randn(1, 8),))
    assert [n.op for n in graph.nodes] == ["add", "linear", "clamp"]
    assert "other" in graph.nodes[0].params                # the folded positions
    _same(model, graph, torch.randn(4, 8))


class _Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.up(self.conv(x))


def test_unknown_call_keeps_aten_name_and_module_path():
    graph = export_graph(_Upsampler().eval(), (torch.randn(1, 3, 8, 8),))
    unknown = [n for n in graph.nodes if n.op not in OPS]
    assert len(unknown) == 1
    assert unknown[0].op.startswith("aten.upsample") and unknown[0].module == "up"
    with pytest.raises(ConversionError, match="up: no float evaluation"):
        graph.run(torch.randn(1, 3, 8, 8))


def test_capture_leaves_the_model_in_its_mode():
    model = _Upsampler().train()
    capture(model, (torch.randn(1, 3, 8, 8),))
    assert model.training


def test_untraceable_model_is_one_line_error():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:      # data-dependent control flow: torch.export refuses
                return x
            return -x
    with pytest.raises(ConversionError, match="torch.export cannot capture Branchy"):
        capture(Branchy(), (torch.randn(1, 4),))
