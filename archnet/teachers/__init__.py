"""Teachers: torchvision-style ResNets by name, and their checkpoints.

``build_teacher("resnet18", in_channels=1, num_classes=10, width=16, stem_stride=1,
stem_pool=False)`` builds a model; ``save_teacher(path, model, metadata)`` writes it atomically
with the metadata needed to rebuild it (arch, kwargs, data set, input shape, normalisation,
test accuracy, seed, command); ``load_teacher(path)`` returns ``(model in eval mode, metadata)``.

A checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "archnet-teacher", "version": 1, "metadata": {...}, "state_dict": {...}}
"""

from __future__ import annotations

import os
from pathlib import Path

from archnet.errors import CheckpointError, TeacherError

# name -> (block, blocks per stage). The 4-stage ones are torchvision's; the 3-stage ones are
# the small CIFAR-sized family (fewer, narrower stages) for 16x16 and 28x28 images.
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet8": ("basic", (1, 1, 1)),
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet14": ("basic", (2, 2, 2)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
BUILD_OPTIONS = ("num_classes", "in_channels", "width", "stem_stride", "stem_pool",
                 "zero_init_residual")
CHECKPOINT_FORMAT = "archnet-teacher"
CHECKPOINT_VERSION = 1
REQUIRED_METADATA = ("arch", "kwargs", "dataset", "input_shape", "normalisation",
                     "test_accuracy", "seed", "command")


def build_teacher(arch: str, **kw):
    """A ``ResNet`` of the named family; ``kw`` are ``ResNet`` options (``BUILD_OPTIONS``).

    The defaults are torchvision's (3 input channels, 1000 classes, width 64, 7x7/2 stem conv
    and 3x3/2 max-pool). The model carries ``teacher_spec = {"arch": ..., "kwargs": ...}``.
    """
    from archnet.teachers.resnet import ResNet
    if arch not in ARCHS:
        raise TeacherError(f"unknown teacher architecture {arch!r} (known: {', '.join(ARCHS)})")
    unknown = sorted(set(kw) - set(BUILD_OPTIONS))
    if unknown:
        raise TeacherError(f"unknown option(s) {', '.join(unknown)} for {arch} "
                           f"(known: {', '.join(BUILD_OPTIONS)})")
    block, layers = ARCHS[arch]
    model = ResNet(block, layers, **kw)
    model.teacher_spec = {"arch": arch, "kwargs": dict(kw)}
    return model


def _plain(value, where: str):
    """Metadata must survive ``torch.load(weights_only=True)``: plain Python values only."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, int, float, str):  # subclasses (torch.__version__, numpy scalars, enums)
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"{where}: metadata keys must be strings")
        return {k: _plain(v, where) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    raise CheckpointError(f"{where}: metadata value of type {type(value).__name__} is not "
                          f"a plain str/int/float/bool/list/dict")


def save_teacher(path: str | os.PathLike, model, metadata: dict | None = None) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically (temporary file, fsync, rename).

    ``arch`` and ``kwargs`` come from ``model.teacher_spec`` (set by ``build_teacher``) unless
    ``metadata`` gives them; they must agree with each other.
    """
    path = Path(path)
    meta = dict(metadata or {})
    spec = getattr(model, "teacher_spec", None)
    if spec is not None:
        for key in ("arch", "kwargs"):
            if key in meta and _plain(meta[key], str(path)) != _plain(spec[key], str(path)):
                raise CheckpointError(f"{path}: metadata {key}={meta[key]!r} disagrees with the "
                                      f"model's {spec[key]!r}")
            meta.setdefault(key, spec[key])
    if "arch" not in meta or "kwargs" not in meta:
        raise CheckpointError(f"{path}: metadata needs 'arch' and 'kwargs' to rebuild the model "
                              f"(build it with build_teacher)")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "metadata": _plain(meta, str(path)),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    from archnet.torchfile import save_torch
    return save_torch(payload, path)


def load_teacher(path: str | os.PathLike):
    """``(model, metadata)`` from a checkpoint written by ``save_teacher``; model in eval mode.

    A missing, damaged or foreign file, or weights that do not fit the recorded architecture,
    raise ``CheckpointError`` naming the file.
    """
    import torch

    from archnet.torchfile import load_torch
    path = Path(path)
    obj = load_torch(path, "teacher checkpoint")
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an archnet teacher checkpoint "
                              f"(format {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: teacher checkpoint version {obj.get('version')!r}, "
                              f"this archnet reads {CHECKPOINT_VERSION}")
    meta, state = obj.get("metadata"), obj.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: teacher checkpoint lacks metadata or state_dict")
    if "arch" not in meta or not isinstance(meta.get("kwargs"), dict):
        raise CheckpointError(f"{path}: teacher metadata lacks 'arch' or 'kwargs'")
    try:
        model = build_teacher(meta["arch"], **meta["kwargs"])
    except TeacherError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k, v in expected.items()
             if k in state and (not isinstance(state[k], torch.Tensor)
                                or tuple(state[k].shape) != tuple(v.shape))]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit {meta['arch']} {meta['kwargs']}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, meta



__all__ = ["ARCHS", "BUILD_OPTIONS", "build_teacher", "save_teacher", "load_teacher"]
