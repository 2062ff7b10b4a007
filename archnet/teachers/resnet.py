"""torchvision-style ResNets (He et al. 2016), one parametrised builder for every depth.

The module tree and ``state_dict`` keys equal torchvision's (``conv1``, ``bn1``,
``layer{i}.{j}.conv1/bn1/...``, ``layer{i}.0.downsample.0`` (1x1 conv) and ``.1`` (batch-norm),
``fc``), so a torchvision ResNet-18/34/50 ``state_dict`` loads with ``strict=True`` when built with
``in_channels=3, num_classes=1000, width=64`` and the default stem. Bottlenecks put the stride on
the 3x3 conv (torchvision's "ResNet v1.5").

These are the constructs an Arch-Net converter must eliminate: the 7x7 stem conv, the 3x3
stride-2 max-pool, 1x1 convs (bottlenecks and downsample shortcuts), residual adds, global average
pooling (``nn.AdaptiveAvgPool2d``) and the ``fc`` head. For small images, ``stem_stride=1`` and
``stem_pool=False`` keep resolution, but the stem stays a 7x7 conv.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from archnet.errors import TeacherError


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """3x3 conv-bn-relu, 3x3 conv-bn, + shortcut, relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class Bottleneck(nn.Module):
    """1x1 conv-bn-relu, 3x3 (strided) conv-bn-relu, 1x1 conv-bn (x4 channels), + shortcut, relu."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """stem (7x7 conv, bn, relu, optional 3x3/2 max-pool) -> stages -> global avg pool -> fc.

    Stage ``i`` (``layer{i+1}``) has ``layers[i]`` blocks of ``width * 2**i`` planes (times the
    block's expansion at the output); every stage after the first halves the resolution with a
    stride-2 first block whose shortcut is a 1x1 strided conv + batch-norm.
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), *,
                 num_classes: int = 1000, in_channels: int = 3, width: int = 64,
                 stem_stride: int = 2, stem_pool: bool = True, zero_init_residual: bool = False):
        super().__init__()
        if block not in BLOCKS:
            raise TeacherError(f"unknown ResNet block {block!r} (known: {', '.join(BLOCKS)})")
        layers = [int(n) for n in layers]
        if not layers or any(n < 1 for n in layers):
            raise TeacherError(f"ResNet layers must be one or more positive block counts, got {layers}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("width", width)):
            if int(value) < 1:
                raise TeacherError(f"ResNet {name} must be positive, got {value}")
        if stem_stride not in (1, 2):
            raise TeacherError(f"ResNet stem_stride must be 1 or 2, got {stem_stride}")
        block_cls = BLOCKS[block]
        self.block = block
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=stem_stride, padding=3,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        self.num_stages = len(layers)
        for i, n in enumerate(layers):
            stage = self._make_layer(block_cls, width * 2 ** i, n, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 2 ** (len(layers) - 1) * block_cls.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block_cls, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_cls.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block_cls.expansion, stride),
                                       nn.BatchNorm2d(planes * block_cls.expansion))
        mods = [block_cls(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block_cls.expansion
        mods += [block_cls(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's output and every stage's output, in order (the distillation targets)."""
        outs = [self.stem(x)]
        for stage in self.stages():
            outs.append(stage(outs[-1]))
        return outs

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        return self.head(x)


def resnet(block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), **kw) -> ResNet:
    """The one builder: ``resnet("basic", [2, 2, 2, 2])`` is torchvision's ``resnet18()``."""
    return ResNet(block, layers, **kw)
