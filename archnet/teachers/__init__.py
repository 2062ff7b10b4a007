"""Teachers: torchvision-style ResNets and the small MobileNetV2 and VGG by name, and their
checkpoints.

``build_teacher("resnet18", in_channels=1, num_classes=10, width=16, stem_stride=1,
stem_pool=False)`` builds a model; ``save_teacher(path, model, metadata)`` writes it atomically
with the metadata needed to rebuild it (arch, kwargs, data set, input shape, normalisation,
test accuracy, seed, command); ``load_teacher(path)`` returns ``(model in eval mode, metadata)``.

A checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "archnet-teacher", "version": 1, "metadata": {...}, "state_dict": {...},
     "content_sha256": "..."}

(``archnet.torchfile``: read without running code, the content hash verified.)
"""

from __future__ import annotations

import os
from pathlib import Path

from archnet.errors import CheckpointError, TeacherError
from simulator.digest import HASH_KEY

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
# the non-ResNet families (archnet.teachers.small), built from the same checkpoint metadata;
# they take in_channels, num_classes, width and (VGG, whose classifier reads the last map)
# image_size
SMALL_ARCHS = ("mobilenetv2", "vgg", "vit")
SMALL_OPTIONS = {"mobilenetv2": ("num_classes", "in_channels", "width"),
                 "vgg": ("num_classes", "in_channels", "width", "image_size"),
                 "vit": ("num_classes", "in_channels", "width", "image_size")}
RESNET_OPTIONS = ("num_classes", "in_channels", "width", "stem_stride", "stem_pool",
                  "zero_init_residual")
# option -> (type, lowest, highest), for every family: a checkpoint's kwargs are checked against
# these before a model is built, so a damaged or crafted file cannot ask for a wrong type or a
# 360 GB model
BUILD_OPTIONS: dict[str, tuple[type, int, int]] = {
    "num_classes": (int, 1, 100_000),
    "in_channels": (int, 1, 64),
    "width": (int, 1, 4096),
    "stem_stride": (int, 1, 2),
    "stem_pool": (bool, 0, 1),
    "zero_init_residual": (bool, 0, 1),
    "image_size": (int, 8, 4096),
}
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
    if arch not in ARCHS and arch not in SMALL_ARCHS:
        raise TeacherError(f"unknown teacher architecture {arch!r} (known: "
                           f"{', '.join([*ARCHS, *SMALL_ARCHS])})")
    allowed = SMALL_OPTIONS[arch] if arch in SMALL_ARCHS else RESNET_OPTIONS
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TeacherError(f"unknown option(s) {', '.join(unknown)} for {arch} "
                           f"(known: {', '.join(allowed)})")
    for key, value in kw.items():
        kind, lo, hi = BUILD_OPTIONS[key]
        if type(value) is not kind or not lo <= value <= hi:
            raise TeacherError(f"option {key}={value!r} for {arch}: must be "
                               + ("true or false" if kind is bool else
                                  f"an integer from {lo} to {hi}"))
    if arch in SMALL_ARCHS:
        from archnet.teachers.small import SMALL
        model = SMALL[arch](**kw)
    else:
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
    from archnet.torchfile import build_with_state, load_torch
    path = Path(path)
    obj = load_torch(path, "teacher checkpoint")
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an archnet teacher checkpoint "
                              f"(format {obj.get('format')!r})")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: teacher checkpoint version {obj.get('version')!r}, "
                              f"this archnet reads {CHECKPOINT_VERSION}")
    meta, state = obj.get("metadata"), obj.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: teacher checkpoint lacks metadata or state_dict")
    if "arch" not in meta or not isinstance(meta.get("kwargs"), dict):
        raise CheckpointError(f"{path}: teacher metadata lacks 'arch' or 'kwargs'")
    if not isinstance(meta["arch"], str) or not all(isinstance(k, str) for k in meta["kwargs"]):
        raise CheckpointError(f"{path}: teacher metadata 'arch' and 'kwargs' must be named by strings")
    model = build_with_state(lambda: build_teacher(meta["arch"], **meta["kwargs"]), state, path,
                             f"weights of {meta['arch']} {meta['kwargs']}")
    model.content_sha256 = obj[HASH_KEY]
    return model, meta


def teacher_content_hash(model) -> str:
    """The content hash of the checkpoint ``model`` was loaded from: what students record."""
    found = getattr(model, "content_sha256", None)
    if not isinstance(found, str):
        raise CheckpointError("the teacher was not loaded from a checkpoint (no content hash)")
    return found


def load_recorded_teacher(student_meta: dict, student_path: str | os.PathLike,
                          given: str | os.PathLike | None = None):
    """``(model, metadata, path, matches)``: the teacher a student was converted from.

    Without ``given``, the student's recorded ``teacher`` (as given, else relative to the
    student's folder), and its content hash must equal the recorded ``teacher_sha256``: another
    teacher under that name is an error. ``given`` is a teacher chosen on purpose: loaded
    whatever its hash, and ``matches`` says whether it is the recorded one (the caller warns).
    """
    from archnet.runs import resolve_recorded
    student_path = Path(student_path)
    recorded_hash = student_meta.get("teacher_sha256")
    if not isinstance(recorded_hash, str):
        raise CheckpointError(f"{student_path}: metadata records no teacher hash (teacher_sha256)")
    if given is not None:
        path = Path(given)
    else:
        recorded = student_meta.get("teacher")
        if not isinstance(recorded, str) or not recorded:
            raise CheckpointError(f"{student_path}: metadata names no teacher; give one with --teacher")
        path = resolve_recorded(recorded, student_path.parent)
        if path is None or not path.is_file():
            where = "" if Path(recorded).is_absolute() else \
                f" and relative to {student_path.parent} and its parents"
            raise CheckpointError(f"{recorded}: no such teacher checkpoint (named by {student_path}; "
                                  f"looked there{where}); give one with --teacher")
    model, meta = load_teacher(path)
    matches = teacher_content_hash(model) == recorded_hash
    if not matches and given is None:
        raise CheckpointError(f"{path}: not the teacher {student_path} was converted from (its "
                              f"content hash {teacher_content_hash(model)[:12]}... differs from the "
                              f"recorded {recorded_hash[:12]}...); give --teacher {path} to use it "
                              f"anyway")
    return model, meta, path, matches


__all__ = ["ARCHS", "BUILD_OPTIONS", "SMALL_ARCHS", "build_teacher", "save_teacher", "load_teacher",
           "teacher_content_hash", "load_recorded_teacher"]
