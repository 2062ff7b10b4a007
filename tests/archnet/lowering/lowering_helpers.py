"""Teachers, images and chip profiles for the lowering tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from archnet.data import digits
from archnet.teachers import build_teacher
from archnet.teachers.resnet import resnet
from simulator.profiles import load_profile

PROFILES = ("ideal", "ethos-u55-128", "k210-kpu")
# Ops an Arch-Net student may contain (DESIGN.md: the chip-friendly set; ReLU is the requantize
# clamp, batch-norm is folded into the conv).
STUDENT_OPS = {"conv2d", "maxpool2d", "concat", "fully_connected", "requantize", "flatten"}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters (a fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def basic_teacher(seed: int = 0, **kw) -> nn.Module:
    """ResNet-8 (BasicBlock, three stages), grayscale, 10 classes, width 8."""
    torch.manual_seed(seed)
    opts = dict(in_channels=1, num_classes=10, width=8)
    opts.update(kw)
    return randomize_batchnorm(build_teacher("resnet8", **opts), seed)


def bottleneck_teacher(seed: int = 0, **kw) -> nn.Module:
    """Two Bottleneck stages (1x1 convs everywhere, downsample in both), grayscale, width 4."""
    torch.manual_seed(seed)
    opts = dict(in_channels=1, num_classes=10, width=4)
    opts.update(kw)
    return randomize_batchnorm(resnet("bottleneck", (1, 1), **opts), seed)


TEACHERS = {"basic": basic_teacher, "bottleneck": bottleneck_teacher}


@functools.lru_cache(maxsize=1)
def _digits() -> np.ndarray:
    return digits.load("test", labels=False)[0]


def digit_images(n: int = 32, size: int = 16) -> torch.Tensor:
    """Real (smooth) images in [0, 1]: scikit-learn digits, 16x16 or resized."""
    images = _digits()
    x = torch.from_numpy(images[:n]).float().div(digits.PIXEL_MAX).unsqueeze(1)
    if size != x.shape[-1]:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def teacher_taps(teacher: nn.Module, taps: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the named teacher modules on ``x`` (forward hooks, removed afterwards)."""
    out, handles = {}, []
    for tap in set(taps):
        handles.append(teacher.get_submodule(tap).register_forward_hook(
            lambda m, i, o, tap=tap: out.__setitem__(tap, o.detach().clone())))
    try:
        with torch.no_grad():
            teacher(x)
    finally:
        for h in handles:
            h.remove()
    return out


def tiny_profile(tmp_path: Path, channels: int = 8, fc_in: int = 64, fc_out: int = 8):
    """The ideal chip with conv channels capped at ``channels`` and small fc limits."""
    name = f"tiny-{channels}ch-{fc_in}f"
    path = tmp_path / f"{name}.toml"
    path.write_text(f'''inherit = "ideal"
name = "{name}"
description = "test chip: ideal arithmetic, conv at most {channels} channels, fc {fc_in} -> {fc_out}"

[ops.conv2d]
max_input_channels = {channels}
max_output_channels = {channels}

[ops.fully_connected]
max_input_features = {fc_in}
max_output_features = {fc_out}
''')
    return load_profile(path)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def simulator_block_outputs(student, images: torch.Tensor, profile, side: dict | None = None
                            ) -> dict[str, np.ndarray]:
    """Every block output of ``student``'s exported Program run by the simulator on ``images``
    (and its ``side`` inputs, a key mask, in the Program's input order), after asserting that
    archnet's integer emulation equals it element for element."""
    from simulator.execute import execute
    program = student.export(tuple(images.shape), feature_outputs=True)
    pixels = student.input.host_values(images)
    feeds = {program.inputs[0]: pixels}
    feeds.update({name: v.numpy().astype(np.uint8)
                  for name, v in zip(program.inputs[1:], (side or {}).values())})
    sim = execute(program, profile, feeds).outputs
    for q, pieces in zip(student.integer_features(images, profile, side=side),
                         program.metadata["archnet"]["block_outputs"]):
        assert np.array_equal(q.value.numpy(), sim[pieces[0]])
    return {pieces[0]: sim[pieces[0]] for pieces in program.metadata["archnet"]["block_outputs"]} \
        | {"logits": sim[program.metadata["archnet"]["block_outputs"][-1][0]]}
