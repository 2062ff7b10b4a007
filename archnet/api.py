"""The Python API: ``archnet.convert(model, example_inputs, unlabeled, chip=..., bits=...)``.

Any ``torch.nn.Module`` whose input is images in [0, 1] (NCHW float) converts as a checkpoint
does on the command line: captured, planned for the chip (native first, ``recipe``), lowered,
calibrated, distilled on the unlabeled images with the simulator in the loop, exported and
checked bit for bit; the run folder ``out`` holds ``student.pt``, ``model.program`` and
``convert.json``. No labels are read.
"""

from __future__ import annotations

import time
from dataclasses import fields

import torch
from torch import nn

from archnet.errors import ConversionError, DataError


def convert(model: nn.Module, example_inputs, unlabeled, *, chip: str, out: str,
            bits: str = "8w8a", recipe: str = "native", layer_norm: str = "auto",
            stream_bits: int | None = None, embedding: str = "auto", resume: bool = False,
            log=print,
            **distill) -> dict:
    """Convert ``model`` for ``chip``; returns the ``convert.json`` summary.

    ``example_inputs``: one image batch (or a 1-tuple of it) fixing the input shape;
    ``unlabeled``: a float tensor of images [N, C, H, W] in [0, 1]. A text network takes token
    ids and a padding mask: ``example_inputs`` ``(ids, mask)`` and ``unlabeled`` an
    ``archnet.distill.inputs.TokenInputs``. ``layer_norm`` (auto, per_token, fixed) and
    ``stream_bits`` (8, 16, None: the chip's) choose LayerNorm's form and the residual stream's
    width, as ``archnet convert --layer-norm --stream-bits`` do; ``embedding`` (auto, gather,
    one_hot) an embedding's form, as ``--embedding``. ``distill``: any
    ``archnet.distill.loop.DistillConfig`` field (``steps_per_period``, ``batch_size``, ``lr``,
    ``seed`` ...)."""
    from archnet import distributed as dist
    from archnet.distill.loop import DistillConfig
    from archnet.jobs.convert import ConvertOptions, run_conversion
    from archnet.runs import run_folder
    from archnet.torchfile import tensor_leaf
    from simulator.digest import content_digest
    from simulator.profiles import load_profile
    from archnet.distill.inputs import TokenInputs
    if recipe not in ("native", "paper"):
        raise ConversionError(f"recipe {recipe!r}: native or paper")
    if isinstance(unlabeled, TokenInputs):      # a text network: ids and a mask per sentence
        example = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else ()
        if len(example) != 2 or any(not isinstance(t, torch.Tensor) or t.dim() != 2
                                    for t in example):
            raise ConversionError("example_inputs: token ids and a mask, each [1, tokens]")
        example = tuple(t[:1] for t in example)
        images = unlabeled
        meta_shape = list(example[0].shape[1:])
    else:
        example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        if not isinstance(example, torch.Tensor) or example.dim() != 4:
            raise ConversionError("example_inputs: one image batch [N, C, H, W] (or a 1-tuple "
                                  "of it)")
        images = unlabeled.detach().float() if isinstance(unlabeled, torch.Tensor) else None
        if images is None or images.dim() != 4 or tuple(images.shape[1:]) != tuple(example.shape[1:]):
            raise DataError(f"unlabeled: a float tensor [N, {', '.join(map(str, example.shape[1:]))}] "
                            f"of images in [0, 1] (or archnet.distill.inputs.TokenInputs)")
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError("unlabeled: images must be finite and in [0, 1] (the student's input "
                            "grid is the 8-bit pixel grid)")
        meta_shape = list(example.shape[1:])
        example = None
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(distill) - known)
    if unknown:
        raise ConversionError(f"unknown distillation option(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
    t0 = time.perf_counter()
    dist.init_from_env()
    profile = load_profile(chip)
    run = run_folder(out, resume)
    name = type(model).__name__
    meta = {"input_shape": meta_shape, "arch": name, "test_accuracy": None,
            "example_inputs": example}
    source = {"teacher": f"python:{name}",
              "dataset": "token inputs" if example is not None else "unlabeled tensor",
              "teacher_sha256": content_digest(dict(model.state_dict()), tensor_leaf)}
    opts = ConvertOptions(teacher=source["teacher"], chip=chip, out=str(out), bits=bits,
                          recipe=recipe, layer_norm=layer_norm, stream_bits=stream_bits,
                          embedding=embedding,
                          resume=resume, command="archnet.convert(...)",
                          report=False)   # reports read the teacher from a checkpoint
    cfg = DistillConfig(**distill)
    return run_conversion(model.eval(), meta, images, profile, run, opts, cfg, source, t0, log)
