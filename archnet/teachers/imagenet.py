"""The standard ImageNet architectures by name, built in code (torchvision is not importable
beside this torch), and their export to ONNX.

Each is built as its paper and torchvision define it (see each module's docstring for the
reference followed), with random weights: for the simulator's import and cost tests, for
calibrating the cost model against published chip latencies, and as teachers to convert.
ResNets come from ``archnet.teachers.resnet``, whose defaults are torchvision's ImageNet stem
(7x7/2 conv, 3x3/2 max-pool) and 1000 classes.

``build_architecture("mobilenet_v2")`` returns the model in eval mode;
``export_onnx(model, "mobilenet_v2.onnx")`` writes a batch-1 float graph atomically.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from archnet.errors import TeacherError
from archnet.teachers.efficientnet import (
    efficientnet_b0,
    efficientnet_edgetpu_l,
    efficientnet_edgetpu_m,
    efficientnet_edgetpu_s,
    efficientnet_lite0,
)
from archnet.teachers.inception import inception_v1
from archnet.teachers.mobilenet import (
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from archnet.teachers.resnet import resnet
from archnet.teachers.vit import deit_tiny, vit_b_16
from simulator.errors import OutputError
from simulator.fileio import current_umask, prepare_folder, temp_prefix


class UnknownArchitectureError(TeacherError, ValueError):
    """A name not in ``ARCHITECTURES``: a ``ValueError`` to Python callers, a one-line
    ``TeacherError`` (exit code 2) to the command line."""


def resnet18(num_classes: int = 1000, **kw) -> nn.Module:
    return resnet("basic", (2, 2, 2, 2), num_classes=num_classes, **kw)


def resnet50(num_classes: int = 1000, **kw) -> nn.Module:
    return resnet("bottleneck", (3, 4, 6, 3), num_classes=num_classes, **kw)


def resnet152(num_classes: int = 1000, **kw) -> nn.Module:
    return resnet("bottleneck", (3, 8, 36, 3), num_classes=num_classes, **kw)


# name -> factory(num_classes=1000, **options)
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_edgetpu_s": efficientnet_edgetpu_s,
    "efficientnet_edgetpu_m": efficientnet_edgetpu_m,
    "efficientnet_edgetpu_l": efficientnet_edgetpu_l,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet152": resnet152,
    "inception_v1": inception_v1,
    "deit_tiny": deit_tiny,
    "vit_b_16": vit_b_16,
}
# the transformers' learned positions fix their input size; the convnets take any size that
# their 32x total stride leaves at least 1x1 (32 and up; 64 exports in under a second)
FIXED_INPUT_SIZE = {"deit_tiny": 224, "vit_b_16": 224}


def build_architecture(name: str, num_classes: int = 1000, **kw) -> nn.Module:
    """The named architecture with random weights, in eval mode (``kw``: its factory's options,
    such as ``width_mult`` or ``dropout``)."""
    if name not in ARCHITECTURES:
        raise UnknownArchitectureError(f"unknown architecture {name!r} "
                                       f"(known: {', '.join(ARCHITECTURES)})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise TeacherError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    return ARCHITECTURES[name](num_classes=num_classes, **kw).eval()


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: int = 224,
                opset: int = 17) -> Path:
    """Export ``model`` on a (1, 3, input_size, input_size) input (names ``image`` and
    ``logits``) as a float ONNX graph, constants folded; written to a temporary name beside
    ``path`` and renamed over it, so a failed export never leaves a partial file there."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    prepare_folder(path.parent)
    model.eval()
    image = torch.zeros(1, 3, input_size, input_size)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None
    try:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer and deprecation notes, not the caller's
                torch.onnx.export(model, (image,), tmp, dynamo=False, opset_version=opset,
                                  do_constant_folding=True, input_names=["image"],
                                  output_names=["logits"])
        except Exception as exc:  # noqa: BLE001 - torch.onnx raises many kinds
            lines = str(exc).strip().splitlines() or [""]
            raise TeacherError(f"{type(model).__name__} cannot be exported to ONNX at "
                               f"{input_size}x{input_size} ({type(exc).__name__}: "
                               f"{lines[0][:200]})") from None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


__all__ = ["ARCHITECTURES", "FIXED_INPUT_SIZE", "UnknownArchitectureError", "build_architecture",
           "export_onnx"]
