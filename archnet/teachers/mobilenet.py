"""MobileNet V1, V2 and V3 (Howard et al. 2017, Sandler et al. 2018, Howard et al. 2019).

V2 and V3 follow torchvision's layout, so their ``state_dict`` keys are torchvision's
(``features.{i}...``, ``classifier.{j}``) and its ImageNet weights would load by key. V1 has no
torchvision model; it is the Keras/TFLite ``MobileNet(alpha=1.0)``: ReLU6 after every batch-norm,
a 1x1 classifier written as ``nn.Linear``. The helpers here (``make_divisible``,
``ConvBNActivation``, ``SqueezeExcitation``) are shared with ``efficientnet.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Activation = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (the MobileNet/EfficientNet rule):
    to the nearest multiple, never below ``min_value`` nor more than 10% below ``value``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNActivation(nn.Sequential):
    """Conv (no bias, "same" padding) -> batch-norm -> activation, keyed ``0``, ``1``, ``2`` as
    torchvision's ``Conv2dNormActivation``; ``activation=None`` leaves the linear bottleneck."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: Activation | None = nn.ReLU,
                 bn_eps: float = 1e-5):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Hu et al. 2018: global average pool -> 1x1 conv (squeeze) -> activation -> 1x1 conv ->
    gate, and the input scaled by the gate per channel."""

    def __init__(self, channels: int, squeeze_channels: int, activation: Activation = nn.ReLU,
                 gate: Activation = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = activation()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


def init_imagenet_weights(model: nn.Module, linear_std: float = 0.01) -> None:
    """He-normal convs, unit batch-norms, small normal fc: random weights whose activations
    neither vanish nor blow up through the depth. Fan-in, not torchvision's fan-out: a fresh
    eval-mode batch-norm is the identity, and fan-out counts a depthwise conv's every channel,
    which shrinks activations by sqrt(channels) per block (1e-18 logits from MobileNet V1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


class ImageClassifier(nn.Module):
    """``features`` -> global average pool -> flatten -> ``classifier``: the MobileNet and
    EfficientNet trunk-and-head shape."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        init_imagenet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ------------------------------------------------------------------------------------- V1

# (output channels, stride) of the 13 depthwise-separable blocks (Howard et al. 2017, table 1)
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 1e-3) -> ImageClassifier:
    """3x3/2 conv, 13 x (3x3 depthwise, 1x1 pointwise), each conv batch-normed with ReLU6 as in
    TFLite's model; Keras scales channels by ``int(c * alpha)`` and drops out 1e-3 before fc."""
    channels = int(32 * width_mult)
    layers: list[nn.Module] = [ConvBNActivation(3, channels, 3, 2, activation=nn.ReLU6)]
    for out, stride in MOBILENET_V1_BLOCKS:
        out = int(out * width_mult)
        layers.append(nn.Sequential(
            ConvBNActivation(channels, channels, 3, stride, groups=channels, activation=nn.ReLU6),
            ConvBNActivation(channels, out, 1, activation=nn.ReLU6)))
        channels = out
    return ImageClassifier(nn.Sequential(*layers),
                           nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes)))


# ------------------------------------------------------------------------------------- V2

class InvertedResidualV2(nn.Module):
    """1x1 expansion (absent for t=1), 3x3 depthwise, 1x1 linear projection; ReLU6; a residual
    add when the block keeps shape."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [ConvBNActivation(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, first stride s) (Sandler et al. 2018, table 2)
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2) -> ImageClassifier:
    channels = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))  # the head never narrows below 1280
    layers: list[nn.Module] = [ConvBNActivation(3, channels, 3, 2, activation=nn.ReLU6)]
    for t, c, n, s in MOBILENET_V2_SETTING:
        out = make_divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidualV2(channels, out, s if i == 0 else 1, t))
            channels = out
    layers.append(ConvBNActivation(channels, last, 1, activation=nn.ReLU6))
    return ImageClassifier(nn.Sequential(*layers),
                           nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes)))


# ------------------------------------------------------------------------------------- V3

class MobileBottleneck(nn.Module):
    """The inverted bottleneck of MobileNetV3 and EfficientNet: 1x1 expansion (dropped when it
    would not widen), k x k depthwise, an optional squeeze-excitation (``se``, built by the
    caller: each family squeezes and gates its own way), linear 1x1 projection."""

    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int,
                 se: nn.Module | None, activation: Activation, stride: int,
                 bn_eps: float = 1e-3):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNActivation(in_channels, expanded, 1, activation=activation,
                                           bn_eps=bn_eps))
        layers.append(ConvBNActivation(expanded, expanded, kernel, stride, groups=expanded,
                                       activation=activation, bn_eps=bn_eps))
        if se is not None:
            layers.append(se)
        layers.append(ConvBNActivation(expanded, out_channels, 1, activation=None, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


RE, HS = nn.ReLU, nn.Hardswish
# (in, kernel, expanded, out, squeeze-excitation, activation, stride) (Howard et al. 2019,
# tables 1 and 2), then the penultimate fc's width
MOBILENET_V3_LARGE = ((
    (16, 3, 16, 16, False, RE, 1), (16, 3, 64, 24, False, RE, 2), (24, 3, 72, 24, False, RE, 1),
    (24, 5, 72, 40, True, RE, 2), (40, 5, 120, 40, True, RE, 1), (40, 5, 120, 40, True, RE, 1),
    (40, 3, 240, 80, False, HS, 2), (80, 3, 200, 80, False, HS, 1),
    (80, 3, 184, 80, False, HS, 1), (80, 3, 184, 80, False, HS, 1),
    (80, 3, 480, 112, True, HS, 1), (112, 3, 672, 112, True, HS, 1),
    (112, 5, 672, 160, True, HS, 2), (160, 5, 960, 160, True, HS, 1),
    (160, 5, 960, 160, True, HS, 1)), 1280)
MOBILENET_V3_SMALL = ((
    (16, 3, 16, 16, True, RE, 2), (16, 3, 72, 24, False, RE, 2), (24, 3, 88, 24, False, RE, 1),
    (24, 5, 96, 40, True, HS, 2), (40, 5, 240, 40, True, HS, 1), (40, 5, 240, 40, True, HS, 1),
    (40, 5, 120, 48, True, HS, 1), (48, 5, 144, 48, True, HS, 1),
    (48, 5, 288, 96, True, HS, 2), (96, 5, 576, 96, True, HS, 1),
    (96, 5, 576, 96, True, HS, 1)), 1024)


def _mobilenet_v3(setting: tuple[Sequence[tuple], int], num_classes: int, width_mult: float,
                  dropout: float) -> ImageClassifier:
    blocks, last_channel = setting

    def width(channels: int) -> int:
        return make_divisible(channels * width_mult)

    layers: list[nn.Module] = [ConvBNActivation(3, width(blocks[0][0]), 3, 2, activation=HS,
                                                bn_eps=1e-3)]
    for cin, k, exp, cout, se, act, stride in blocks:
        gate = SqueezeExcitation(width(exp), make_divisible(width(exp) // 4),
                                 gate=nn.Hardsigmoid) if se else None
        layers.append(MobileBottleneck(width(cin), k, width(exp), width(cout), gate, act, stride))
    last_in = width(blocks[-1][3])
    layers.append(ConvBNActivation(last_in, 6 * last_in, 1, activation=HS, bn_eps=1e-3))
    last_channel = make_divisible(last_channel * width_mult)
    classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel), nn.Hardswish(inplace=True),
                               nn.Dropout(dropout), nn.Linear(last_channel, num_classes))
    return ImageClassifier(nn.Sequential(*layers), classifier)


def mobilenet_v3_large(num_classes: int = 1000, width_mult: float = 1.0,
                       dropout: float = 0.2) -> ImageClassifier:
    return _mobilenet_v3(MOBILENET_V3_LARGE, num_classes, width_mult, dropout)


def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0,
                       dropout: float = 0.2) -> ImageClassifier:
    return _mobilenet_v3(MOBILENET_V3_SMALL, num_classes, width_mult, dropout)
