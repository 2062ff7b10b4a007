"""Small teachers for 28x28 images beyond ResNet: the MobileNetV2 and VGG families as their
papers define them, scaled to Fashion-MNIST, so that the converter meets depthwise convs,
inverted residuals with linear bottlenecks, ReLU6, plain conv stacks and max-pooling.

Module paths follow torchvision's (``features.N``, ``classifier.N``), so that blocks of the
converted students carry the familiar names.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expansion (skipped at t = 1), 3x3
    depthwise, linear 1x1 projection; the input is added back where shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2Small(nn.Module):
    """MobileNetV2 for 28x28: a 3x3 stem at stride 2 (as the paper's), inverted residual
    stages (t, c, n, s) = (1, w, 1, 1), (6, 1.5w, 2, 1), (6, 2w, 3, 2), (6, 4w, 2, 1),
    (6, 6w, 1, 1) on 14x14 and 7x7 maps, a 1x1 conv to 16w channels, global average pooling,
    dropout and a linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        stages = [(1, width, 1, 1), (6, width * 3 // 2, 2, 1), (6, width * 2, 3, 2),
                  (6, width * 4, 2, 1), (6, width * 6, 1, 1)]
        layers: list[nn.Module] = [_conv_bn(in_channels, width, 3, stride=2)]
        c = width
        for t, cout, n, s in stages:
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        last = width * 16
        layers.append(_conv_bn(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class VGGSmall(nn.Module):
    """VGG (Simonyan and Zisserman 2015) for small images: three stages of two 3x3 convs (w, 2w,
    3w channels) with batch-norm and ReLU, each closed by a 2x2 max-pool (28 -> 14 -> 7 -> 3),
    then two fully connected layers with dropout. The first reads 3w x 3 x 3 = 864 features at
    width 32, within the 1024 a K210's fully connected layer takes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 image_size: int = 28):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for cout in (width, width * 2, width * 3):
            for _ in range(2):
                layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU()]
                c = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.classifier = nn.Sequential(nn.Linear(c * side * side, 256), nn.ReLU(), nn.Dropout(0.3),
                                        nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _vit(**kw):
    from archnet.teachers.vit import vit_small_images
    return vit_small_images(**kw)


SMALL = {"mobilenetv2": MobileNetV2Small, "vgg": VGGSmall, "vit": _vit}
