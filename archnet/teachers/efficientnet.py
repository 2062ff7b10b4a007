"""EfficientNet-B0 (Tan & Le 2019) as torchvision builds it, EfficientNet-Lite0, and
EfficientNet-EdgeTPU S, M and L (Gupta & Tan 2019).

B0's module tree and ``state_dict`` keys are torchvision's (``features.0`` stem, ``features.1-7``
stages of mobile bottlenecks (``.block``), ``features.8`` head, ``classifier.1``). Stochastic depth is left out:
at inference it is the identity and it holds no weights.

Lite is the edge variant of TensorFlow's ``efficientnet-lite``: squeeze-excitation removed and
SiLU replaced by ReLU6 (both quantise badly), stem and head widths fixed rather than scaled.
TF pads stride-2 convs "same" (more at the bottom/right); symmetric padding here gives the same
shapes, parameters and MACs.

EdgeTPU follows tensorflow/tpu ``models/official/efficientnet/edgetpu/
efficientnet_edgetpu_builder.py`` (commit ef273dd, the last to touch it) with the blocks of
``efficientnet_model.py``: ReLU, no squeeze-excitation, batch-norm epsilon 1e-3, and the first
three stages built of fused blocks (``conv_type=1``: one full 3x3 conv expands and strides,
in place of 1x1 expansion plus depthwise). Its "local pooling" (an average pool whose window is
the whole feature map) is the global average pool. The reference classifies 1001 classes
(label 0 is background); the default here is 1000.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archnet.teachers.mobilenet import (
    Activation,
    ConvBNActivation,
    ImageClassifier,
    MobileBottleneck,
    SqueezeExcitation,
    make_divisible,
)


def mbconv(in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int,
           activation: Activation, use_se: bool, bn_eps: float) -> MobileBottleneck:
    """EfficientNet's MBConv: the mobile bottleneck with its squeeze-excitation squeezing to a
    quarter of the block's *input* width, with a SiLU inside."""
    expanded = make_divisible(in_channels * expand_ratio)
    se = SqueezeExcitation(expanded, max(1, in_channels // 4), activation=nn.SiLU) \
        if use_se else None
    return MobileBottleneck(in_channels, kernel, expanded, out_channels, se, activation, stride,
                            bn_eps)


# (expand ratio, kernel, first stride, in, out, repeats) of B0's seven stages (Tan & Le 2019,
# table 1); other members scale the widths and repeats
EFFICIENTNET_B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                          (6, 3, 1, 192, 320, 1))


def efficientnet(num_classes: int = 1000, width_mult: float = 1.0, depth_mult: float = 1.0,
                 dropout: float = 0.2, lite: bool = False) -> ImageClassifier:
    """B0's stages scaled by ``width_mult``/``depth_mult``; ``lite`` makes the Lite variant."""
    activation = nn.ReLU6 if lite else nn.SiLU
    bn_eps = 1e-3 if lite else 1e-5  # TF's batch-norm epsilon; torchvision's B0 keeps 1e-5

    def width(channels: int) -> int:
        return make_divisible(channels * width_mult)

    stem = 32 if lite else width(EFFICIENTNET_B0_STAGES[0][3])
    layers: list[nn.Module] = [ConvBNActivation(3, stem, 3, 2, activation=activation,
                                                bn_eps=bn_eps)]
    channels = stem
    for expand, kernel, stride, _, out, repeats in EFFICIENTNET_B0_STAGES:
        out = width(out)
        stage = []
        for i in range(math.ceil(repeats * depth_mult)):
            stage.append(mbconv(channels, out, kernel, stride if i == 0 else 1, expand,
                                activation, not lite, bn_eps))
            channels = out
        layers.append(nn.Sequential(*stage))
    head = 1280 if lite else 4 * channels
    layers.append(ConvBNActivation(channels, head, 1, activation=activation, bn_eps=bn_eps))
    return ImageClassifier(nn.Sequential(*layers),
                           nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes)))


def efficientnet_b0(num_classes: int = 1000, dropout: float = 0.2) -> ImageClassifier:
    return efficientnet(num_classes, 1.0, 1.0, dropout)


def efficientnet_lite0(num_classes: int = 1000, dropout: float = 0.2) -> ImageClassifier:
    return efficientnet(num_classes, 1.0, 1.0, dropout, lite=True)


# ------------------------------------------------------------------------------ EdgeTPU

class FusedMBConv(nn.Module):
    """The reference's ``MBConvBlockWithoutDepthwise``: full 3x3 conv (stride and expansion
    at once) -> BN -> ReLU, 1x1 linear projection -> BN, and a residual add when the block
    keeps shape and ``skip`` allows. ``expanded`` is given, not derived from ``in_channels``:
    the reference expands its first block from the declared 24 channels, not the stem's 32."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expanded: int,
                 skip: bool, bn_eps: float = 1e-3):
        super().__init__()
        self.use_res_connect = skip and stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            ConvBNActivation(in_channels, expanded, 3, stride, activation=nn.ReLU,
                             bn_eps=bn_eps),
            ConvBNActivation(expanded, out_channels, 1, activation=None, bn_eps=bn_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


# (fused, kernel, first stride, expand ratio, declared in, out, repeats, skip) of the six
# stages, the reference's block strings r1_k3_s11_e4_i24_o24_c1_noskip, r2_k3_s22_e8_i24_o32_c1,
# r4_k3_s22_e8_i32_o48_c1, r5_k5_s22_e8_i48_o96, r4_k5_s11_e8_i96_o144, r2_k5_s22_e8_i144_o192
EDGETPU_STAGES = ((True, 3, 1, 4, 24, 24, 1, False), (True, 3, 2, 8, 24, 32, 2, True),
                  (True, 3, 2, 8, 32, 48, 4, True), (False, 5, 2, 8, 48, 96, 5, True),
                  (False, 5, 1, 8, 96, 144, 4, True), (False, 5, 2, 8, 144, 192, 2, True))


def efficientnet_edgetpu(num_classes: int = 1000, width_mult: float = 1.0,
                         depth_mult: float = 1.0, dropout: float = 0.2) -> ImageClassifier:
    """Stem 3x3/2 conv to 32, the six stages, 1x1 head conv to 1280, pool, dropout, fc; the
    stem, every stage width and the head rounded as ``round_filters`` (``make_divisible`` of
    ``c * width_mult``), the repeats as ``round_repeats`` (``ceil(depth_mult * r)``)."""
    bn_eps = 1e-3

    def width(channels: int) -> int:
        return make_divisible(channels * width_mult)

    stem = width(32)
    layers: list[nn.Module] = [ConvBNActivation(3, stem, 3, 2, activation=nn.ReLU,
                                                bn_eps=bn_eps)]
    channels = stem
    for fused, kernel, stride, expand, declared, out, repeats, skip in EDGETPU_STAGES:
        declared, out = width(declared), width(out)
        stage: list[nn.Module] = []
        for i in range(math.ceil(depth_mult * repeats)):
            s = stride if i == 0 else 1
            if fused:  # the reference hard-codes 3x3 here; every fused stage declares k3
                assert kernel == 3
                stage.append(FusedMBConv(channels, out, s, declared * expand, skip, bn_eps))
            else:  # declared == actual input in these stages, so MBConv's widths agree
                assert declared == channels and skip
                stage.append(mbconv(channels, out, kernel, s, expand, nn.ReLU, False, bn_eps))
            channels = declared = out
        layers.append(nn.Sequential(*stage))
    head = width(1280)
    layers.append(ConvBNActivation(channels, head, 1, activation=nn.ReLU, bn_eps=bn_eps))
    return ImageClassifier(nn.Sequential(*layers),
                           nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes)))


# (width_mult, depth_mult, dropout) as efficientnet_edgetpu_params gives them; native input
# sizes 224, 240 and 300
def efficientnet_edgetpu_s(num_classes: int = 1000, dropout: float = 0.2) -> ImageClassifier:
    return efficientnet_edgetpu(num_classes, 1.0, 1.0, dropout)


def efficientnet_edgetpu_m(num_classes: int = 1000, dropout: float = 0.2) -> ImageClassifier:
    return efficientnet_edgetpu(num_classes, 1.0, 1.1, dropout)


def efficientnet_edgetpu_l(num_classes: int = 1000, dropout: float = 0.3) -> ImageClassifier:
    return efficientnet_edgetpu(num_classes, 1.2, 1.4, dropout)
