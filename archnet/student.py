"""The Arch-Net student: an ordered list of blocks made only of the chip's ops.

A student is described completely by a JSON-able ``config`` (its architecture: blocks, their
steps, which activation quantizer each step writes to) and a ``state_dict`` (its numbers):
``build_student(config)`` makes the modules, ``load_state_dict`` fills them. The lowering passes
(``archnet.lowering``) write configs; distillation trains the result; export hands it to the
simulator.

Each block is one ``GraphBlock``: a small straight-line program of steps over named tensors,

- ``conv``     QConv2d (3x3 'same' by default; any ``kernel``, ``strides``, ``pads``,
  ``dilations``, ``groups``; folded BN, optional ReLU)
- ``linear``   QLinear (fully connected, optional ReLU)
- ``maxpool``, ``avgpool``  QPool2d (``kernel``, ``stride``, ``pads``; 2x2/2 by default)
- ``flatten``, ``reshape``  QFlatten, QReshape (views; ``shape`` without the batch axis)
- ``concat``   channel concat of tensors that share one activation quantizer
- ``global_avgpool``  QGlobalAvgPool2d
- ``add``, ``mul``  QAdd, QMul (two operands on their own grids, onto the step's quantizer)
- ``lut``      QLookupTable (an activation ``function`` on the chip's table unit)
- ``matmul``   QMatMul (``scale`` times the product of two activations, onto the step's quantizer)
- ``softmax``  QSoftmax (last axis, onto a fixed u8 grid of 1/256)
- ``transpose`` QTranspose (``perm`` of the axes after the batch axis)
- ``constant`` QConstant (a learned constant operand of ``shape``, per sample, on its own
  grid: a position table; no inputs)
- ``channel_affine`` QChannelAffine (a per-channel affine over the last axis with fixed
  statistics: LayerNorm's replacement; ``features``)
- ``token_norm`` QTokenNorm (LayerNorm over the last axis per token, from mean, sub, mul and an
  interpolated 16-bit table, then its per-channel affine; ``features``, ``eps``)
- ``token_norm_fc`` QTokenNormFc (the same from fully connected layers, add, mul and a sigmoid
  table: the rsqrt a fitted sigmoid network; ``features``, ``eps``)

A ``linear`` step applies to the last axis of any rank (token rows stay rows).

The student's input is the host's encoding of the network's first input (``input_encoding``:
``pixels``, images on the u8 grid of 1/255, or ``one_hot``, token rows as one-hot vectors for the
embedding); further inputs the host writes as they are (``side_inputs``: a key mask
``[tokens]``) are read by steps as ``side:<name>`` in any block.

and it has the three faces of every Arch-Net module: ``forward`` (fake-quant float, or plain
float with ``quantize=False``), ``integer_forward`` (the chip's arithmetic) and ``export``
(simulator nodes). A block reads and writes *pieces*: when a chip's channel limit forces a tensor
to be split, its channel groups stay separate tensors (the chips have no slice op), all on one
quantizer grid so that any run of them may be concatenated. ``forward`` takes and returns the
pieces concatenated along channels (a lossless view, since they share a grid), so that a block's
output is one tensor the teacher's feature can be compared with. ``export`` takes and returns the
list of piece names.

Training-only parts (feature adapters, attention) never live here (ANCHORS style rule 9).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from torch import nn

from archnet.errors import ArchnetError
from archnet.quant.attention import QMatMul, QSoftmax, QTranspose
from archnet.quant.elementwise import FUNCTIONS, QAdd, QLookupTable, QMul, QPool2d
from archnet.quant.lsq import LsqQuantizer, round_ste
from archnet.quant.modules import (ENCODINGS, QChannelAffine, QConstant, QConv2d, QEmbedding,
                                   QFlatten, QInput, QLinear, QReshape, concat, concat_float)
from archnet.quant.norm import OPS as TOKEN_NORM_OPS
from archnet.quant.norm import QTokenNorm, TokenNormBase
from archnet.quant.norm_fc import OPS as TOKEN_NORM_FC_OPS
from archnet.quant.norm_fc import QTokenNormFc
from archnet.quant.qtensor import QTensor
from simulator.contract import ArithmeticSpec, IntType
from simulator.ir.builder import ProgramBuilder
from simulator.ir.program import Program
from simulator.numerics import fixed_point as fp

CONFIG_FORMAT = "archnet-student"
CONFIG_VERSION = 1
IMAGE = "image"        # quantizer key of the student's input: QInput's fixed u8 grid, scale 1/255
STEP_KINDS = ("conv", "linear", "maxpool", "flatten", "concat", "global_avgpool", "avgpool",
              "add", "mul", "lut", "reshape", "matmul", "softmax", "transpose",
              "channel_affine", "constant", "token_norm", "token_norm_fc", "embedding")
MULTI_INPUT = ("concat", "add", "mul", "matmul", "softmax")   # softmax: scores and a key mask
REQUANTIZING = ("conv", "linear", "add", "mul", "lut", "matmul", "softmax",
                "channel_affine", "constant", "token_norm", "token_norm_fc", "embedding")   # write their grid
TOKEN_NORMS = ("token_norm", "token_norm_fc")    # LayerNorm per token, from chip ops
NO_RELU = ("lut", "matmul", "softmax", "channel_affine", "constant", *TOKEN_NORMS, "embedding")
AFFINE_STEPS = ("channel_affine", *TOKEN_NORMS)     # per-channel over the last axis, w_bits
_IDENT = re.compile(r"[A-Za-z0-9_]+")
_NODE_OPS = {  # simulator op kinds each step exports
    "conv": ("conv2d", "requantize"), "linear": ("fully_connected", "requantize"),
    "maxpool": ("maxpool2d",), "flatten": ("flatten",), "concat": ("concat",),
    "global_avgpool": ("global_avgpool2d",), "avgpool": ("avgpool2d",), "add": ("add",),
    "mul": ("mul",), "lut": ("lookup_table",), "reshape": ("reshape",),
    "matmul": ("matmul", "requantize"), "softmax": ("softmax",), "transpose": ("transpose",),
    "channel_affine": ("reshape", "conv2d", "requantize"), "constant": (),
    "token_norm": TOKEN_NORM_OPS, "token_norm_fc": TOKEN_NORM_FC_OPS,
    "embedding": ("gather",),
}


class QGlobalAvgPool2d(nn.Module):
    """Global average pool on the chip's integers: the sum of each channel divided by H*W with
    the chip's rounding (``simulator.numerics.reference.global_avgpool2d``); the output stays on
    the input's grid, so the module holds that grid's quantizer (shared, not owned)."""

    def __init__(self, input_quant: LsqQuantizer):
        super().__init__()
        self.input_quant = input_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = self.input_quant.step()
        return round_ste(x.mean(dim=(2, 3), keepdim=True) / step) * step

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        h, w = x.value.shape[2:]
        sums = x.value.sum(dim=(2, 3), keepdim=True).numpy()
        value = fp.round_div(sums, h * w, arith.requant.rounding)
        return QTensor(torch.from_numpy(np.ascontiguousarray(value)).to(torch.int64), x.scale, x.dtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        return b.node("global_avgpool2d", [x], name)


# ----------------------------------------------------------------------------- config checks

def _fail(where: str, message: str) -> ArchnetError:
    return ArchnetError(f"student config {where}: {message}")


def _need(d: dict, key: str, kind, where: str):
    if key not in d:
        raise _fail(where, f"missing field {key!r}")
    value = d[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise _fail(where, f"field {key!r} must be an integer, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise _fail(where, f"field {key!r} must be true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise _fail(where, f"field {key!r} must be a string, got {value!r}")
    if kind is list and not isinstance(value, list):
        raise _fail(where, f"field {key!r} must be a list, got {value!r}")
    return value


def _pair_field(step: dict, key: str, default, where: str) -> tuple[int, int]:
    value = step.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise _fail(where, f"field {key!r} must be an integer or a pair of integers >= 0, "
                           f"got {value!r}")
    return tuple(value)


def conv_geometry(step: dict, where: str = "") -> dict:
    """kernel, strides, pads, dilations (pairs) and groups of a conv step; a step without them
    is the paper's 3x3 'same' conv of its ``stride``."""
    kernel = _pair_field(step, "kernel", 3, where)
    stride = step.get("strides", step.get("stride", 1))
    strides = _pair_field({"s": stride}, "s", 1, where)
    pads = _pair_field(step, "pads", [kernel[0] // 2, kernel[1] // 2], where)
    dilations = _pair_field(step, "dilations", 1, where)
    groups = step.get("groups", 1)
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1 or \
            not isinstance(groups, int) or groups < 1:
        raise _fail(where, "kernel, strides, dilations and groups must be >= 1")
    return {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations,
            "groups": groups}


def _window_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_geometry(step: dict, where: str = "") -> dict:
    kernel = _pair_field(step, "kernel", 2, where)
    strides = _pair_field(step, "stride", list(kernel), where)
    pads = _pair_field(step, "pads", 0, where)
    if min(kernel) < 1 or min(strides) < 1:
        raise _fail(where, "pool kernel and stride must be >= 1")
    return {"kernel": kernel, "strides": strides, "pads": pads}


SIDE = "side"     # quantizer key of side inputs: integers written as they are
SIDE_TYPE = IntType(8, False)


def _trace_shapes(block: dict, in_shapes: list[tuple[int, ...]], in_quant: str,
                  quantizers: dict, side: dict | None = None) -> tuple[dict, dict]:
    """Shapes (without batch) and quantizer keys of every tensor of a block; checks each step."""
    where = f"block {block['name']!r}"
    shapes = {f"in:{k}": s for k, s in enumerate(in_shapes)}
    quant = {ref: in_quant for ref in shapes}
    for name, shape in (side or {}).items():
        shapes[f"side:{name}"], quant[f"side:{name}"] = tuple(shape), SIDE
    for step in block["steps"]:
        name = _need(step, "name", str, where)
        at = f"{where} step {name!r}"
        if not _IDENT.fullmatch(name) or name in shapes:
            raise _fail(at, "step names are unique identifiers of letters, digits and _")
        kind = _need(step, "kind", str, at)
        if kind not in STEP_KINDS:
            raise _fail(at, f"kind {kind!r} not one of {', '.join(STEP_KINDS)}")
        inputs = _need(step, "inputs", list, at)
        for ref in inputs:
            if ref not in shapes:
                raise _fail(at, f"input {ref!r} is not an earlier tensor of the block")
        if kind == "constant":
            if inputs:
                raise _fail(at, "a constant takes no inputs")
            shape = _need(step, "shape", list, at)
            if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                    for d in shape):
                raise _fail(at, f"shape {shape} must be positive integers")
            key = _need(step, "quant", str, at)
            if key not in quantizers:
                raise _fail(at, f"quantizer {key!r} is not declared in 'quantizers'")
            shapes[name], quant[name] = tuple(shape), key
            continue
        if kind not in MULTI_INPUT and len(inputs) != 1:
            raise _fail(at, f"{kind} takes one input, got {len(inputs)}")
        if kind == "concat" and len(inputs) < 2:
            raise _fail(at, "concat takes at least two inputs")
        if kind in ("add", "mul", "matmul") and len(inputs) != 2:
            raise _fail(at, f"{kind} takes two inputs, got {len(inputs)}")
        if kind == "softmax" and len(inputs) not in (1, 2):
            raise _fail(at, f"softmax takes scores and an optional key mask, got {len(inputs)}")
        x = shapes[inputs[0]]
        if kind in REQUANTIZING:
            key = _need(step, "quant", str, at)
            if key not in quantizers:
                raise _fail(at, f"quantizer {key!r} is not declared in 'quantizers'")
            relu = _need(step, "relu", bool, at) if kind not in NO_RELU else False
            if not relu and not quantizers[key]["signed"] and kind not in ("lut", "softmax"):
                raise _fail(at, f"no ReLU, so its quantizer {key!r} must be signed")
            if kind in ("conv", "linear", *AFFINE_STEPS):
                _need(step, "w_bits", int, at)
            cmax = step.get("clamp_max")
            if cmax is not None and (not isinstance(cmax, (int, float)) or isinstance(cmax, bool)
                                     or not relu or not math.isfinite(cmax) or cmax <= 0):
                raise _fail(at, f"clamp_max {cmax!r} needs ReLU and a finite bound > 0")
            quant[name] = key
        else:
            quant[name] = quant[inputs[0]]
        if kind == "conv":
            cin, cout = (_need(step, k, int, at) for k in ("in_channels", "out_channels"))
            if "strides" not in step:
                _need(step, "stride", int, at)
            g = conv_geometry(step, at)
            _need(step, "batch_norm", bool, at)
            if len(x) != 3 or x[0] != cin:
                raise _fail(at, f"expects {cin} input channels of a map, input shape is {x}")
            if cin % g["groups"] or cout % g["groups"]:
                raise _fail(at, f"groups {g['groups']} do not divide {cin} -> {cout} channels")
            hw = tuple(_window_out(x[1 + i], g["kernel"][i], g["strides"][i], g["pads"][i],
                                   g["dilations"][i]) for i in range(2))
            if min(hw) < 1:
                raise _fail(at, f"a {g['kernel']} kernel does not fit input shape {x}")
            shapes[name] = (cout, *hw)
        elif kind == "linear":
            fin, fout = (_need(step, k, int, at) for k in ("in_features", "out_features"))
            if not x or x[-1] != fin:
                raise _fail(at, f"expects {fin} input features, input shape is {x}")
            shapes[name] = (*x[:-1], fout)
        elif kind in ("maxpool", "avgpool"):
            g = pool_geometry(step, at)
            hw = tuple(_window_out(x[1 + i], g["kernel"][i], g["strides"][i], g["pads"][i])
                       for i in range(2)) if len(x) == 3 else (0, 0)
            if len(x) != 3 or min(hw) < 1:
                raise _fail(at, f"a {g['kernel']} pool does not fit input shape {x}")
            if kind == "avgpool" and quant[name] == IMAGE:
                raise _fail(at, "avgpool takes a quantized feature map")
            shapes[name] = (x[0], *hw)
        elif kind == "global_avgpool":
            if len(x) != 3 or quant[name] == IMAGE:
                raise _fail(at, "global_avgpool takes a quantized feature map")
            shapes[name] = (x[0], 1, 1)
        elif kind == "flatten":
            shapes[name] = (math.prod(x),)
        elif kind == "reshape":
            target = _need(step, "shape", list, at)
            if not all(isinstance(d, int) and d >= 1 for d in target) or \
                    math.prod(target) != math.prod(x):
                raise _fail(at, f"cannot reshape {x} to {target}")
            shapes[name] = tuple(target)
        elif kind == "add":
            if shapes[inputs[1]] != x:
                raise _fail(at, f"add operands differ in shape: {x} and {shapes[inputs[1]]}")
            shapes[name] = x
        elif kind == "mul":
            b = shapes[inputs[1]]
            if len(b) > len(x) or any(db not in (1, da) for da, db in zip(x[::-1], b[::-1])):
                raise _fail(at, f"mul operand {b} does not broadcast to {x}")
            shapes[name] = x
        elif kind in AFFINE_STEPS:
            features = _need(step, "features", int, at)
            eps = step.get("eps", 1e-5)
            if kind in TOKEN_NORMS and (not isinstance(eps, (int, float)) or isinstance(eps, bool)
                                         or not math.isfinite(eps) or eps <= 0):
                raise _fail(at, f"eps {eps!r} must be a finite number > 0")
            if not x or x[-1] != features:
                raise _fail(at, f"expects {features} features on the last axis, input shape is {x}")
            shapes[name] = x
        elif kind == "embedding":
            vocab, features = (_need(step, k, int, at) for k in ("vocab", "features"))
            if quant[inputs[0]] != IMAGE or len(x) != 1:
                raise _fail(at, f"an embedding reads the student's token ids, got {x}")
            shapes[name] = (x[0], features)
        elif kind == "matmul":
            b = shapes[inputs[1]]
            scale = step.get("scale", 1.0)
            if not isinstance(scale, (int, float)) or isinstance(scale, bool) or \
                    not math.isfinite(scale) or scale <= 0:
                raise _fail(at, f"scale {scale!r} must be a finite number > 0")
            if len(x) < 2 or len(b) != len(x) or x[:-2] != b[:-2] or x[-1] != b[-2]:
                raise _fail(at, f"matmul operands {x} and {b} do not multiply")
            shapes[name] = (*x[:-1], b[-1])
        elif kind == "softmax":
            if len(inputs) == 2:
                mask = shapes[inputs[1]]
                if quant[inputs[1]] != SIDE or len(mask) != len(x) or mask[-1] != x[-1] or \
                        any(d != 1 for d in mask[:-1]):
                    raise _fail(at, f"a softmax's key mask is a side input shaped "
                                    f"[1, ..., {x[-1]}], got {mask}")
            spec = quantizers[step["quant"]]
            if spec.get("step") != 1.0 / 256 or spec["bits"] != 8 or spec["signed"]:
                raise _fail(at, "softmax writes the fixed unsigned 8-bit grid of 1/256")
            shapes[name] = x
        elif kind == "transpose":
            perm = _need(step, "perm", list, at)
            if sorted(perm) != list(range(len(x))):
                raise _fail(at, f"perm {perm} is not a permutation of the {len(x)} axes of {x}")
            shapes[name] = tuple(x[p] for p in perm)
        elif kind == "lut":
            if _need(step, "function", str, at) not in FUNCTIONS:
                raise _fail(at, f"function {step['function']!r} not one of {', '.join(FUNCTIONS)}")
            gain = step.get("gain", 1.0)
            if not isinstance(gain, (int, float)) or isinstance(gain, bool) or \
                    not math.isfinite(gain) or gain <= 0:
                raise _fail(at, f"gain {gain!r} is not a positive number")
            shapes[name] = x
        else:  # concat
            keys = {quant[ref] for ref in inputs}
            if len(keys) != 1:
                raise _fail(at, f"concat operands must share one quantizer, got {sorted(keys)}")
            ranks = {len(shapes[ref]) for ref in inputs}
            rest = {shapes[ref][1:] for ref in inputs}
            if len(ranks) != 1 or len(rest) != 1:
                raise _fail(at, f"concat operands differ outside channels: "
                                f"{[shapes[ref] for ref in inputs]}")
            shapes[name] = (sum(shapes[ref][0] for ref in inputs), *x[1:])
    for ref in _need(block, "outputs", list, where):
        if ref not in shapes:
            raise _fail(where, f"output {ref!r} is not a tensor of the block")
    if len({quant[ref] for ref in block["outputs"]}) != 1:
        raise _fail(where, "output pieces must share one quantizer")
    return shapes, quant


def validate_config(config: dict) -> dict:
    """A checked deep copy of a student config (through JSON, so it is JSON-able by proof).

    Checks every field, every tensor reference, channel and feature counts through the whole
    network, and that concatenated tensors share a quantizer; raises ``ArchnetError`` naming the
    block and step at fault.
    """
    try:
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        raise ArchnetError(f"student config is not JSON-able: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise _fail("", f"'format' must be {CONFIG_FORMAT!r}")
    if config.get("version") != CONFIG_VERSION:
        raise _fail("", f"'version' {config.get('version')!r} unsupported (this is {CONFIG_VERSION})")
    shape = _need(config, "input_shape", list, "")
    encoding = config.get("input_encoding", "pixels")
    if encoding not in ENCODINGS:
        raise _fail("", f"'input_encoding' {encoding!r} not one of {', '.join(ENCODINGS)}")
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape) or (encoding == "pixels" and len(shape) != 3):
        raise _fail("", f"'input_shape' must be [channels, height, width] for pixels, positive "
                        f"sizes for {encoding}, got {shape}")
    if encoding == "token_ids":
        vocab = config.get("vocab")
        if not isinstance(vocab, int) or isinstance(vocab, bool) or not 1 <= vocab <= 1 << 16:
            raise _fail("", f"'vocab' of token_ids must be the table's rows, 1..65536 (u16 "
                            f"ids), got {vocab!r}")
    side = config.get("side_inputs", {})
    if not isinstance(side, dict) or not all(
            isinstance(k, str) and _IDENT.fullmatch(k) and isinstance(v, list) and v and
            all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
            for k, v in side.items()):
        raise _fail("", f"'side_inputs' must map names to shapes, got {side!r}")
    quantizers = _need(config, "quantizers", dict, "")
    for key, spec in quantizers.items():
        if not _IDENT.fullmatch(key) or key == IMAGE:
            raise _fail(f"quantizer {key!r}", "keys are identifiers of letters, digits and _ "
                                              f"(and {IMAGE!r} is the input's)")
        bits = _need(spec, "bits", int, f"quantizer {key!r}")
        if not 2 <= bits <= 16:
            raise _fail(f"quantizer {key!r}", f"bits {bits} outside 2..16")
        _need(spec, "signed", bool, f"quantizer {key!r}")
    blocks = _need(config, "blocks", list, "")
    if not blocks:
        raise _fail("", "a student needs at least one block")
    names = [b.get("name") for b in blocks]
    if len(set(names)) != len(names):
        raise _fail("", f"block names repeat: {names}")
    in_shapes, in_quant = [tuple(shape)], IMAGE
    for block in blocks:
        where = f"block {block.get('name')!r}"
        for key in ("name", "tap"):
            _need(block, key, str, where)
        for key in ("w_bits", "a_bits"):
            _need(block, key, int, where)
        sizes = _need(block, "inputs", list, where)
        if sizes != [s[0] for s in in_shapes]:
            raise _fail(where, f"input pieces {sizes} != previous outputs {[s[0] for s in in_shapes]}")
        if _need(block, "input_quant", str, where) != in_quant:
            raise _fail(where, f"input_quant {block['input_quant']!r} != previous block's {in_quant!r}")
        shapes, quant = _trace_shapes(block, in_shapes, in_quant, quantizers, side)
        in_shapes = [shapes[ref] for ref in block["outputs"]]
        in_quant = quant[block["outputs"][0]]
    return config


# ----------------------------------------------------------------------------- blocks

def _make_quantizer(spec: dict) -> LsqQuantizer:
    q = LsqQuantizer(spec["bits"], spec["signed"])
    if spec.get("step") is not None:  # a grid fixed by construction (e.g. lossless pixel shifts)
        with torch.no_grad():
            q.scale.fill_(float(spec["step"]))
            q.initialised.fill_(True)
    return q


class GraphBlock(nn.Module):
    """One student block: a straight-line program of chip steps over named tensors."""

    def __init__(self, spec: dict, quantizers: nn.ModuleDict, tensor_quant: dict[str, str]):
        super().__init__()
        self.spec = spec
        self.name: str = spec["name"]
        self.tap: str = spec["tap"]
        self.in_sizes: list[int] = list(spec["inputs"])
        self.layers = nn.ModuleDict()
        for step in spec["steps"]:
            kind = step["kind"]
            if kind == "conv":
                g = conv_geometry(step)
                m = QConv2d(step["in_channels"], step["out_channels"], g["kernel"], g["strides"],
                            w_bits=step["w_bits"], relu=step["relu"], batch_norm=step["batch_norm"],
                            output_quant=quantizers[step["quant"]], padding=g["pads"],
                            dilation=g["dilations"], groups=g["groups"])
            elif kind == "linear":
                m = QLinear(step["in_features"], step["out_features"], w_bits=step["w_bits"],
                            relu=step["relu"], output_quant=quantizers[step["quant"]])
            elif kind in ("maxpool", "avgpool"):
                g = pool_geometry(step)
                grid = quantizers[tensor_quant[step["inputs"][0]]] if kind == "avgpool" else None
                m = QPool2d(kind[:3], g["kernel"], g["strides"], g["pads"], grid)
            elif kind == "flatten":
                m = QFlatten()
            elif kind == "reshape":
                m = QReshape(step["shape"])
            elif kind == "global_avgpool":
                m = QGlobalAvgPool2d(quantizers[tensor_quant[step["inputs"][0]]])
            elif kind == "add":
                m = QAdd(quantizers[step["quant"]], step["relu"])
            elif kind == "mul":
                m = QMul(quantizers[step["quant"]], step["relu"])
            elif kind == "lut":
                m = QLookupTable(step["function"], quantizers[step["quant"]],
                                 step.get("gain", 1.0))
            elif kind == "constant":
                m = QConstant(step["shape"], quantizers[step["quant"]])
            elif kind == "channel_affine":
                m = QChannelAffine(step["features"], w_bits=step["w_bits"],
                                   output_quant=quantizers[step["quant"]])
            elif kind == "embedding":
                m = QEmbedding(step["vocab"], step["features"], quantizers[step["quant"]])
            elif kind in TOKEN_NORMS:
                m = (QTokenNorm if kind == "token_norm" else QTokenNormFc)(
                    step["features"], w_bits=step["w_bits"], eps=step.get("eps", 1e-5),
                    output_quant=quantizers[step["quant"]])
            elif kind == "matmul":
                m = QMatMul(quantizers[step["quant"]], step.get("scale", 1.0))
            elif kind == "softmax":
                m = QSoftmax()
            elif kind == "transpose":
                m = QTranspose(step["perm"])
            else:
                continue
            if step.get("clamp_max") is not None:
                m.clamp_max = float(step["clamp_max"])
            self.layers[step["name"]] = m

    def mac_layers(self) -> dict[str, QConv2d | QLinear]:
        """Every MAC layer by its path under ``layers`` (a token norm's affine is
        ``<step>.affine``)."""
        out = {}
        for k, m in self.layers.items():
            if isinstance(m, (QConv2d, QLinear)):
                out[k] = m
            elif isinstance(m, TokenNormBase):
                out[f"{k}.affine"] = m.affine
        return out

    def trace(self, x: torch.Tensor, quantize: bool = True, side: dict | None = None,
              until: str | None = None) -> dict[str, torch.Tensor]:
        """Every tensor of the block by name (inputs are ``in:<k>``, side inputs
        ``side:<name>``), for calibration and tests; with ``until``, only those computed
        before that step."""
        env = dict(zip((f"in:{k}" for k in range(len(self.in_sizes))),
                       torch.split(x, self.in_sizes, dim=1), strict=True))
        env.update({f"side:{k}": v for k, v in (side or {}).items()})
        for step in self.spec["steps"]:
            if step["name"] == until:
                break
            args = [env[ref] for ref in step["inputs"]]
            name, kind = step["name"], step["kind"]
            if kind == "concat":
                env[name] = concat_float(args)
            elif kind in ("conv", "linear", *AFFINE_STEPS) and not quantize:
                env[name] = self.layers[name].float_forward(args[0])
            elif kind == "global_avgpool" and not quantize:
                env[name] = args[0].mean(dim=(2, 3), keepdim=True)
            elif kind == "avgpool" and not quantize:
                env[name] = self.layers[name].float_forward(args[0])
            elif kind in ("add", "mul") and not quantize:
                y = args[0] + args[1] if kind == "add" else args[0] * args[1]
                env[name] = self.layers[name].activation(y)
            elif kind == "lut" and not quantize:
                env[name] = self.layers[name].float_forward(args[0])
            elif kind in ("matmul", "softmax", "constant", "embedding") and not quantize:
                env[name] = self.layers[name].float_forward(*args)
            else:
                env[name] = self.layers[name](*args)
        return env

    def forward(self, x: torch.Tensor, quantize: bool = True, side: dict | None = None
                ) -> torch.Tensor:
        """The block's output pieces concatenated along channels; ``quantize=False`` runs the
        same network in plain float (folded BN, no quantizers)."""
        env = self.trace(x, quantize, side)
        outs = [env[ref] for ref in self.spec["outputs"]]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec, side: dict | None = None
                        ) -> QTensor:
        pieces = torch.split(x.value, self.in_sizes, dim=1)
        env = {f"in:{k}": QTensor(v.contiguous(), x.scale, x.dtype) for k, v in enumerate(pieces)}
        env.update({f"side:{k}": QTensor(v.to(torch.int64), 1.0, SIDE_TYPE)
                    for k, v in (side or {}).items()})
        for step in self.spec["steps"]:
            args = [env[ref] for ref in step["inputs"]]
            name, kind = step["name"], step["kind"]
            if kind == "concat":
                env[name] = concat(args)
            elif kind in ("conv", "linear", "global_avgpool", "maxpool", "avgpool", "embedding",
                          *AFFINE_STEPS):
                env[name] = self.layers[name].integer_forward(args[0], arith)
            elif kind == "softmax":
                env[name] = self.layers[name].integer_forward(*args, arith=arith)
            elif kind == "matmul":
                env[name] = self.layers[name].integer_forward(*args, arith)
            elif kind == "constant":
                env[name] = self.layers[name].integer_forward()
            elif kind in ("add", "mul", "lut"):
                env[name] = self.layers[name].integer_forward(*args, arith=arith)
            else:
                env[name] = self.layers[name].integer_forward(args[0])
        outs = [env[ref] for ref in self.spec["outputs"]]
        return outs[0] if len(outs) == 1 else concat(outs)

    def export(self, b: ProgramBuilder, x: str | Sequence[str], prefix: str | None = None,
               side: dict | None = None) -> list[str]:
        """Append the block's nodes; ``x`` names its input pieces (``side`` the program's side
        inputs by name), the result its output pieces.

        Tensor names are ``<prefix>.<step>`` (prefix defaults to the block name)."""
        prefix = self.name if prefix is None else prefix
        pieces = [x] if isinstance(x, str) else list(x)
        if len(pieces) != len(self.in_sizes):
            raise ArchnetError(f"block {self.name!r} takes {len(self.in_sizes)} input pieces, "
                               f"got {len(pieces)}")
        env = {f"in:{k}": name for k, name in enumerate(pieces)}
        env.update({f"side:{k}": v for k, v in (side or {}).items()})
        for step in self.spec["steps"]:
            name, kind = step["name"], step["kind"]
            out = f"{prefix}.{name}"
            if kind == "concat":
                env[name] = b.node("concat", _batched_constants(b, [env[r] for r in step["inputs"]]),
                                   out, axis=1)
            elif kind in ("add", "mul", "lut", "matmul", "softmax"):
                env[name] = self.layers[name].export(b, [env[r] for r in step["inputs"]], out)
            elif kind == "constant":
                env[name] = self.layers[name].export(b, out)
            else:
                env[name] = self.layers[name].export(b, env[step["inputs"][0]], out)
        return [env[ref] for ref in self.spec["outputs"]]


def _batched_constants(b: ProgramBuilder, names: list[str]) -> list[str]:
    """Concat operands for the Program: a per-sample constant (a class token, batch 1) beside a
    batch of N becomes a constant of N copies (the chip's concat does not broadcast)."""
    batch = max(b.tensors[n].shape[0] for n in names)
    out = []
    for n in names:
        t = b.tensors[n]
        if t.data is not None and t.shape[0] == 1 and batch > 1:
            n = b.constant(f"{n}.x{batch}", np.repeat(t.data, batch, axis=0), t.dtype,
                           scale=list(t.scale), zero_point=list(t.zero_point))
        out.append(n)
    return out


# ----------------------------------------------------------------------------- the student

class ArchNetStudent(nn.Module):
    """``QInput`` then blocks; the last block is the head (its output the logits).

    ``block_taps[i]`` names the teacher module whose output block ``i`` imitates.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = validate_config(config)
        encoding = self.config.get("input_encoding", "pixels")
        vocab = {"one_hot": self.config["input_shape"][-1],
                 "token_ids": self.config.get("vocab")}.get(encoding)
        self.input = QInput(encoding, vocab)
        self.side_inputs = {k: tuple(v) for k, v in self.config.get("side_inputs", {}).items()}
        self.quantizers = nn.ModuleDict({k: _make_quantizer(s)
                                         for k, s in self.config["quantizers"].items()})
        blocks, in_shapes, in_quant = [], [tuple(self.config["input_shape"])], IMAGE
        self._shapes: list[dict] = []
        for spec in self.config["blocks"]:
            shapes, quant = _trace_shapes(spec, in_shapes, in_quant, self.config["quantizers"],
                                          self.side_inputs)
            blocks.append(GraphBlock(spec, self.quantizers, quant))
            self._shapes.append(shapes)
            in_shapes = [shapes[ref] for ref in spec["outputs"]]
            in_quant = quant[spec["outputs"][0]]
        self.blocks = nn.ModuleList(blocks)
        # a float32 requantization scale (ONNX QLinear*) is derived by the chip from the float32
        # scales: the multipliers are computed that way (configs without the key: float64)
        float32 = self.config.get("meta", {}).get("requantize") == "float_scale"
        for block in self.blocks:
            for mac in block.mac_layers().values():
                mac.float32_multiplier = float32

    # -- descriptions
    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def block_taps(self) -> list[str]:
        return [b.tap for b in self.blocks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config["input_shape"])

    # -- the three faces
    def features(self, images: torch.Tensor, quantize: bool = True, side: dict | None = None
                 ) -> list[torch.Tensor]:
        """Every block's output, in order (the last is the logits). ``quantize=False``: plain
        float, no quantizer anywhere (the input is used as given). ``side``: the side inputs
        by name."""
        x = self.input(images) if quantize else images
        out = []
        for block in self.blocks:
            x = block(x, quantize, side)
            out.append(x)
        return out

    def forward(self, images: torch.Tensor, quantize: bool = True, side: dict | None = None
                ) -> torch.Tensor:
        return self.features(images, quantize, side)[-1]

    def integer_features(self, images: torch.Tensor, arith, side: dict | None = None
                         ) -> list[QTensor]:
        """Every block's output on the chip's integers; ``arith`` is an ArithmeticSpec or a
        ChipProfile."""
        arith = arith if isinstance(arith, ArithmeticSpec) else arith.arithmetic
        x = self.input.integer_forward(images)
        out = []
        with torch.no_grad():
            for block in self.blocks:
                x = block.integer_forward(x, arith, side)
                out.append(x)
        return out

    def integer_forward(self, images: torch.Tensor, arith, side: dict | None = None) -> QTensor:
        return self.integer_features(images, arith, side)[-1]

    def full_input_shape(self, input_shape: Sequence[int] | None = None) -> tuple[int, ...]:
        if input_shape is None:
            return (1, *self.input_shape)
        shape = tuple(int(d) for d in input_shape)
        rank = len(self.input_shape)
        if len(shape) == rank:
            shape = (1, *shape)
        if len(shape) != rank + 1 or shape[1:] != self.input_shape:
            raise ArchnetError(f"input shape {tuple(input_shape)} does not match the student's "
                               f"[N, {', '.join(map(str, self.input_shape))}] (its head is sized "
                               f"for that map)")
        return shape

    def export(self, input_shape: Sequence[int] | None = None, *, feature_outputs: bool = False,
               name: str = "archnet_student", upto: int | None = None, start: int = 0) -> Program:
        """The student as a validated simulator Program with the image (u8) as its input.

        The outputs are the logits; with ``feature_outputs`` also every block's output pieces,
        listed per block in ``metadata['archnet']['block_outputs']``. ``upto=k`` exports only
        blocks 0..k-1 (a prefix, whose outputs are block k-1's pieces): what distillation runs
        on the simulator to feed the next blocks. ``start=j`` begins at block j: the Program's
        inputs are then block j-1's output pieces (``boundary:0``, ``boundary:1`` .. on their
        grids) and the side inputs, so a prefix can be advanced block by block.
        """
        n = len(self.blocks) if upto is None else int(upto)
        if not 1 <= n <= len(self.blocks):
            raise ArchnetError(f"export upto={upto}: the student has {len(self.blocks)} blocks")
        if not 0 <= start < n:
            raise ArchnetError(f"export start={start}: must be below upto={n}")
        b = ProgramBuilder(name)
        full = self.full_input_shape(input_shape)
        if start == 0:
            pieces = [self.input.export(b, full)]
        else:
            pieces = self._boundary_inputs(b, full, start)
        side = {k: b.input(k, (full[0], *shape), SIDE_TYPE, scale=1.0, zero_point=0)
                for k, shape in self.side_inputs.items()}
        per_block = []
        for block in list(self.blocks)[start:n]:
            pieces = block.export(b, pieces, block.name, side)
            per_block.append(pieces)
        outputs = [p for ps in per_block for p in ps] if feature_outputs else pieces
        b.output(*outputs)
        b.metadata["archnet"] = {"blocks": self.block_names[start:n],
                                 "block_taps": self.block_taps[start:n],
                                 "block_outputs": per_block}
        return b.build()

    def _boundary_inputs(self, b: ProgramBuilder, full: tuple[int, ...], start: int) -> list[str]:
        """Program inputs standing for block ``start-1``'s output pieces, with the shapes and
        grids the export of the blocks before ``start`` gives them."""
        before = self.export(full, upto=start, name="boundary")
        return [b.input(f"boundary:{j}", t.shape, t.dtype, scale=t.scale, zero_point=t.zero_point)
                for j, t in enumerate(before.tensors[p] for p in before.outputs)]

    # -- summary
    def summary(self) -> list[dict]:
        """Per block: name, tap, bits, simulator ops, parameters, MACs per image, output shape."""
        rows = []
        for block, shapes in zip(self.blocks, self._shapes, strict=True):
            ops: Counter = Counter()
            macs = 0
            for step in block.spec["steps"]:
                ops.update(_NODE_OPS[step["kind"]])
                out = shapes[step["name"]]
                if step["kind"] == "conv":
                    g = conv_geometry(step)
                    macs += step["in_channels"] // g["groups"] * math.prod(g["kernel"]) * \
                        math.prod(out)
                elif step["kind"] == "linear":
                    macs += step["in_features"] * step["out_features"]
            params = sum(p.numel() for m in block.mac_layers().values()
                         for n, p in m.named_parameters() if "quant" not in n)
            outs = [shapes[ref] for ref in block.spec["outputs"]]
            rows.append({"block": block.name, "tap": block.tap,
                         "bits": f"{block.spec['w_bits']}w{block.spec['a_bits']}a",
                         "ops": dict(sorted(ops.items())), "params": params, "macs": macs,
                         "pieces": len(outs),
                         "output": (sum(s[0] for s in outs), *outs[0][1:])})
        return rows

    def describe(self) -> str:
        """A table of ``summary()``: one line per block and a total."""
        rows = self.summary()
        lines = [f"{'block':<12} {'tap':<12} {'bits':<6} {'params':>10} {'MACs':>13} "
                 f"{'output':<16} ops"]
        for r in rows:
            ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items())
            out = "x".join(map(str, r["output"]))
            out += f" ({r['pieces']} pieces)" if r["pieces"] > 1 else ""
            lines.append(f"{r['block']:<12} {r['tap']:<12} {r['bits']:<6} {r['params']:>10,} "
                         f"{r['macs']:>13,} {out:<16} {ops}")
        lines.append(f"{'total':<12} {'':<12} {'':<6} {sum(r['params'] for r in rows):>10,} "
                     f"{sum(r['macs'] for r in rows):>13,}")
        return "\n".join(lines)


def build_student(config: dict) -> ArchNetStudent:
    """The student a config describes, with fresh parameters (``load_state_dict`` fills them)."""
    return ArchNetStudent(copy.deepcopy(config))
