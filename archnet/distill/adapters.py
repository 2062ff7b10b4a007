"""Feature-adaptation heads: training-only maps from a student block's output to the teacher's.

Arch-Net compares a student block with its teacher feature through a small learned adapter, so
that the loss asks the student for the teacher's *information* rather than its exact basis; the
adapter is dropped at export (it never enters the student's config, state or Program). Each is
a 1x1 convolution (fully connected over the features of vectors and token rows) initialised
to the identity, so distillation
starts by asking for the teacher's features exactly. The head (logits) has none: the logits must
match the teacher's as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def _identity_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return conv


def _identity_linear(features: int) -> nn.Linear:
    fc = nn.Linear(features, features)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(features))
        fc.bias.zero_()
    return fc


def build_adapters(block_names, targets: list[torch.Tensor], head_index: int) -> nn.ModuleDict:
    """One identity-initialised adapter per block except the head, shaped like its target."""
    adapters = nn.ModuleDict()
    for i, (name, t) in enumerate(zip(block_names, targets, strict=True)):
        if i == head_index:
            continue
        key = adapter_key(name)
        # maps: over channels; vectors and token rows: over the last (feature) axis
        adapters[key] = _identity_conv(t.shape[1]) if t.dim() == 4 else _identity_linear(t.shape[-1])
    return adapters


def adapter_key(block_name: str) -> str:
    return block_name.replace(".", "_")


def adapt(adapters: nn.ModuleDict, block_name: str, y: torch.Tensor) -> torch.Tensor:
    key = adapter_key(block_name)
    return adapters[key](y) if key in adapters else y
