"""The ResNet builder's state_dict equals torchvision's, key for key and shape for shape.

The expected ResNet-18 table is written out by hand from torchvision.models.resnet18() (nothing is
downloaded, torchvision is not installed); ResNet-34/50 are checked by their known parameter and
state-dict entry counts plus the shapes that distinguish them.
"""

import pytest
import torch
from torch import nn

from archnet.errors import TeacherError
from archnet.teachers import ARCHS, build_teacher
from archnet.teachers.resnet import BasicBlock, Bottleneck, ResNet, resnet

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# (module, weight shape) in torchvision's state_dict order; every "bn" row expands to the five
# batch-norm entries above (shape (C,), num_batches_tracked ()).
TORCHVISION_RESNET18 = [
    ("conv1", (64, 3, 7, 7)), ("bn1", 64),
    ("layer1.0.conv1", (64, 64, 3, 3)), ("layer1.0.bn1", 64),
    ("layer1.0.conv2", (64, 64, 3, 3)), ("layer1.0.bn2", 64),
    ("layer1.1.conv1", (64, 64, 3, 3)), ("layer1.1.bn1", 64),
    ("layer1.1.conv2", (64, 64, 3, 3)), ("layer1.1.bn2", 64),
    ("layer2.0.conv1", (128, 64, 3, 3)), ("layer2.0.bn1", 128),
    ("layer2.0.conv2", (128, 128, 3, 3)), ("layer2.0.bn2", 128),
    ("layer2.0.downsample.0", (128, 64, 1, 1)), ("layer2.0.downsample.1", 128),
    ("layer2.1.conv1", (128, 128, 3, 3)), ("layer2.1.bn1", 128),
    ("layer2.1.conv2", (128, 128, 3, 3)), ("layer2.1.bn2", 128),
    ("layer3.0.conv1", (256, 128, 3, 3)), ("layer3.0.bn1", 256),
    ("layer3.0.conv2", (256, 256, 3, 3)), ("layer3.0.bn2", 256),
    ("layer3.0.downsample.0", (256, 128, 1, 1)), ("layer3.0.downsample.1", 256),
    ("layer3.1.conv1", (256, 256, 3, 3)), ("layer3.1.bn1", 256),
    ("layer3.1.conv2", (256, 256, 3, 3)), ("layer3.1.bn2", 256),
    ("layer4.0.conv1", (512, 256, 3, 3)), ("layer4.0.bn1", 512),
    ("layer4.0.conv2", (512, 512, 3, 3)), ("layer4.0.bn2", 512),
    ("layer4.0.downsample.0", (512, 256, 1, 1)), ("layer4.0.downsample.1", 512),
    ("layer4.1.conv1", (512, 512, 3, 3)), ("layer4.1.bn1", 512),
    ("layer4.1.conv2", (512, 512, 3, 3)), ("layer4.1.bn2", 512),
]


def _expected_resnet18():
    out = []
    for name, shape in TORCHVISION_RESNET18:
        if isinstance(shape, int):
            out += [(f"{name}.{p}", () if p == "num_batches_tracked" else (shape,)) for p in BN]
        else:
            out.append((f"{name}.weight", shape))
    return out + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]


def _shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_resnet18_keys_order_and_shapes_equal_torchvision():
    model = build_teacher("resnet18")
    expected = _expected_resnet18()
    assert len(expected) == 122
    assert _shapes(model) == expected
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_a_torchvision_resnet18_state_dict_loads_strictly():
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
          for k, s in _expected_resnet18()}
    model = build_teacher("resnet18")
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.layer3[0].conv2.weight,
                       sd["layer3.0.conv2.weight"])
    assert torch.equal(model.fc.bias, sd["fc.bias"])


@pytest.mark.parametrize("arch, params, entries, spot", [
    ("resnet34", 21_797_672, 218, {"layer3.5.conv2.weight": (256, 256, 3, 3),
                                   "layer4.2.bn2.running_var": (512,),
                                   "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                                   "fc.weight": (1000, 512)}),
    ("resnet50", 25_557_032, 320, {"layer1.0.conv1.weight": (64, 64, 1, 1),
                                   "layer1.0.conv3.weight": (256, 64, 1, 1),
                                   "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                                   "layer2.0.conv2.weight": (128, 128, 3, 3),
                                   "layer3.5.bn3.weight": (1024,),
                                   "layer4.2.conv3.weight": (2048, 512, 1, 1),
                                   "fc.weight": (1000, 2048)}),
])
def test_resnet34_and_50_match_torchvision(arch, params, entries, spot):
    model = build_teacher(arch)
    sd = model.state_dict()
    assert len(sd) == entries
    assert sum(p.numel() for p in model.parameters()) == params
    for key, shape in spot.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision's "v1.5": the stride sits on the bottleneck's 3x3 conv, not on its first 1x1
    if arch == "resnet50":
        assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    # no downsample where torchvision has none
    assert not any(k.startswith("layer1.1.downsample") or k.startswith("layer2.1.downsample") for k in sd)


def test_torchvision_forward_shapes():
    model = build_teacher("resnet18").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    feats = model.features(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (64, 16, 16), (128, 8, 8),
                                                   (256, 4, 4), (512, 2, 2)]


def test_small_teacher_keeps_the_constructs_to_eliminate():
    model = build_teacher("resnet8", in_channels=1, num_classes=10, width=16, stem_stride=1,
                          stem_pool=False)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    one_by_one = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(one_by_one) == 2  # the shortcuts of layer2 and layer3
    assert isinstance(model.layer2[0], BasicBlock) and model.layer2[0].downsample is not None
    assert model.num_stages == 3 and not hasattr(model, "layer4")
    x = torch.rand(2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4)]
    with torch.no_grad():
        assert torch.allclose(model.head(feats[-1]), model(x), atol=1e-6)
    # the residual add is real: the block's output is relu(residual + shortcut)
    blk = model.layer2[0]
    with torch.no_grad():
        expect = torch.relu(blk.residual(feats[1]) + blk.downsample(feats[1]))
        assert torch.allclose(blk(feats[1]), expect)
    # torchvision's stem pool when asked
    pooled = build_teacher("resnet8", in_channels=1, num_classes=10, width=8)
    assert isinstance(pooled.maxpool, nn.MaxPool2d) and pooled.conv1.stride == (2, 2)


def test_one_builder_for_every_depth():
    assert resnet("bottleneck", [3, 4, 6, 3]).state_dict().keys() == build_teacher("resnet50").state_dict().keys()
    assert {ARCHS[a][0] for a in ARCHS} == {"basic", "bottleneck"}
    assert isinstance(build_teacher("resnet50").layer1[0], Bottleneck)


@pytest.mark.parametrize("kw, message", [
    (dict(arch="resnet19"), "unknown teacher architecture 'resnet19'"),
    (dict(arch="resnet8", depth=3), "unknown option"),
    (dict(arch="resnet8", width=0), "width=0 for resnet8: must be an integer from 1 to 4096"),
    (dict(arch="resnet8", stem_stride=3), "stem_stride=3 .* from 1 to 2"),
    (dict(arch="resnet8", width="16"), "width='16'"),
    (dict(arch="resnet8", stem_pool=1), "stem_pool=1 .* true or false"),
])
def test_build_errors(kw, message):
    arch = kw.pop("arch")
    with pytest.raises(TeacherError, match=message):
        build_teacher(arch, **kw)
    with pytest.raises(TeacherError, match="layers"):
        ResNet("basic", [])
