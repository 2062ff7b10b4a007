"""What a user names as the network to convert, turned into a model and its example inputs.

- a teacher checkpoint (``archnet teacher train``; read weights-only, its content hash checked):
  the architecture is rebuilt from its metadata, the example is one image of its input shape;
- ``path/to/file.py:factory``: the user's own code, named as code: the file is imported and
  ``factory()`` called; it returns the model, or ``(model, example_inputs)``;
  ``--input-shape`` gives the example otherwise.

``torch.export.save`` files (``.pt2``) are refused: ``torch.export.load`` unpickles, and no file
a user hands archnet may run code. Name the code that builds the model instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from archnet.errors import ConversionError


def _example(shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    shape = tuple(int(d) for d in shape)
    return (torch.zeros(1, *shape),)


def _from_factory(spec: str, input_shape) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    file, _, name = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise ConversionError(f"model {spec!r}: no file {file}")
    if not name.isidentifier():
        raise ConversionError(f"model {spec!r}: {name!r} is not a function name")
    mod_name = f"archnet_user_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as e:
        raise ConversionError(f"model {spec!r}: importing {file} failed: {type(e).__name__}: {e}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConversionError(f"model {spec!r}: {file} has no function {name!r}")
    made = factory()
    model, example = (made if isinstance(made, tuple) and len(made) == 2 else (made, None))
    if not isinstance(model, nn.Module):
        raise ConversionError(f"model {spec!r}: {name}() returned {type(model).__name__}, "
                              f"not a torch.nn.Module (or (module, example_inputs))")
    if example is None:
        if input_shape is None:
            raise ConversionError(f"model {spec!r}: {name}() gave no example inputs; pass "
                                  f"--input-shape C,H,W")
        example = _example(input_shape)
    elif isinstance(example, torch.Tensor):
        example = (example,)
    return model, tuple(example), {"source": spec}


def is_code(spec) -> bool:
    """Whether ``spec`` names code (``path/to/file.py:factory``) rather than a checkpoint."""
    return ".py:" in str(spec)


def model_digest(model: nn.Module) -> str:
    """The content hash of a model built by code: of its parameters and buffers (what a run
    records, so that verify can tell the same model from another)."""
    from archnet.torchfile import tensor_leaf
    from simulator.digest import content_digest
    return content_digest(dict(model.state_dict()), tensor_leaf)


def load_code_teacher(spec: str, input_shape: Sequence[int]) -> tuple[nn.Module, dict]:
    """A teacher built by the user's code, as ``load_teacher`` returns a checkpoint's: the model
    (in eval mode, its ``content_sha256`` set) and metadata (``input_shape``, ``arch``)."""
    model, example, _ = _from_factory(spec, input_shape)
    shape = list(example[0].shape[1:])
    if shape != [int(d) for d in input_shape]:
        raise ConversionError(f"model {spec!r}: its example inputs are {shape}, the images "
                              f"{list(input_shape)}")
    model.eval()
    model.content_sha256 = model_digest(model)
    return model, {"input_shape": shape, "arch": type(model).__name__, "test_accuracy": None,
                   "dataset": None}


def load_model(spec: str, input_shape: Sequence[int] | None = None
               ) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    """(model in eval mode, example inputs of batch 1, metadata) for what ``spec`` names."""
    if spec.endswith(".pt2"):
        raise ConversionError(f"model {spec}: torch.export files are read by unpickling, which "
                              f"can run code; name the code that builds the model instead "
                              f"(path/to/file.py:factory)")
    if is_code(spec):
        model, example, meta = _from_factory(spec, input_shape)
    else:
        from archnet.teachers import load_teacher
        model, meta = load_teacher(spec)
        example = _example(input_shape or meta["input_shape"])
        meta = {"source": spec, "arch": meta.get("arch"), "dataset": meta.get("dataset"),
                "test_accuracy": meta.get("test_accuracy")}
    example = tuple(x[:1] for x in example)      # batch 1: shapes and costs per input
    return model.eval(), example, meta
