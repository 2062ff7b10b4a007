"""Inception v1 / GoogLeNet (Szegedy et al. 2015) as torchvision builds it, without the two
auxiliary classifiers (training-only heads that torchvision drops once weights are loaded).

torchvision's details, kept so its ``state_dict`` keys and counts match: every conv is
``BasicConv2d`` (conv without bias, batch-norm eps 1e-3, ReLU), a model the paper trained
without batch-norm; the "5x5" branch uses a 3x3 conv (a known torchvision quirk that its weights
were trained with); max-pools round up (``ceil_mode``).
"""

from __future__ import annotations

import torch
from torch import nn

from archnet.teachers.mobilenet import init_imagenet_weights


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> "5x5"
    (3x3, as torchvision); 3x3/1 max-pool -> 1x1."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1),
                                     BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1),
                                     BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) (Szegedy et al. 2015, table 1)
INCEPTION_V1_MODULES = {
    "3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("3a", "3b"):
            self.add_module(f"inception{name}", Inception(*INCEPTION_V1_MODULES[name]))
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("4a", "4b", "4c", "4d", "4e"):
            self.add_module(f"inception{name}", Inception(*INCEPTION_V1_MODULES[name]))
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        for name in ("5a", "5b"):
            self.add_module(f"inception{name}", Inception(*INCEPTION_V1_MODULES[name]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        init_imagenet_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # children are registered in execution order, so the trunk is their sequence
        for name, module in self.named_children():
            if name == "avgpool":
                break
            x = module(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def inception_v1(num_classes: int = 1000, dropout: float = 0.2) -> GoogLeNet:
    return GoogLeNet(num_classes, dropout)
