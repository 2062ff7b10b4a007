"""Teacher -> student parameters through an explicit table, never by matching key substrings.

A lowering pass writes one ``TransferRow`` per student tensor (weight, bias, batch-norm affine and
statistics of every MAC layer): the student ``state_dict`` key it fills, a *rule* (how the value
is made), the teacher ``state_dict`` key it reads (None for structural values such as an identity
kernel) and JSON-able ``args``. A rule builds the *logical* tensor of the teacher layer the student
layer belongs to (a 1x1 kernel placed in a 3x3 centre tap, a 7x7 stem kernel rearranged over
shift channels, an identity-sum kernel ...); ``args['out']`` and ``args['in']`` then cut the
student layer's share out of it (a channel-split layer holds a slice of output channels and one
or more ranges of input channels).

``apply_transfers`` checks the table is complete and exact: every weight tensor of every student
MAC layer is written once, each value has the target's shape. A missing, doubled or misshapen
row is an error, not a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from archnet.errors import ConversionError


@dataclass(frozen=True)
class TransferRow:
    target: str                 # student state_dict key
    rule: str                   # a key of RULES
    source: str | None = None   # teacher state_dict key
    args: Mapping = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"target": self.target, "rule": self.rule, "source": self.source,
                "args": dict(self.args)}


# ----------------------------------------------------------------------------- offsets

def split_offset(o: int, reach: int, grid: int) -> tuple[int, int]:
    """Write a kernel offset ``o`` (input pixels) as ``o_in + grid * tap``: ``o_in`` an offset
    already held in a shift channel (|o_in| <= reach), ``tap`` in -1..1 a 3x3 tap of a layer
    whose input grid is ``grid`` input pixels apart.

    The choice keeps zero padding exact: on the unit grid ``o_in`` and ``tap`` point the same way
    (every intermediate position lies between the output pixel and the tap it reads, so a padded
    zero is read exactly where the teacher reads one); on a stride-2 grid ``tap = trunc(o / 2)``,
    so a tap that leaves the coarse map on the far side comes with ``o_in >= 0`` and reads past
    the image's last row, as the teacher does.
    """
    if grid == 1:
        o_in = max(-reach, min(reach, o))
        tap = o - o_in
    elif grid == 2:
        tap = int(o / 2)
        o_in = o - 2 * tap
    else:
        raise ValueError(f"grid {grid} not 1 or 2")
    if abs(tap) > 1 or abs(o_in) > reach:
        raise ValueError(f"offset {o} not reachable with reach {reach} on grid {grid}")
    return o_in, tap


def offsets(reach: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of a (2 reach + 1)^2 window, row-major: shift-channel order."""
    return [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]


# ----------------------------------------------------------------------------- rules

def _copy(src, args):
    return src


def _centre_tap(src, args):
    """A 1x1 kernel [O, I, 1, 1] in the centre tap of a 3x3 kernel, zeros elsewhere."""
    if src.dim() != 4 or tuple(src.shape[2:]) != (1, 1):
        raise ConversionError(f"centre_tap needs a 1x1 kernel, got shape {tuple(src.shape)}")
    w = torch.zeros(src.shape[0], src.shape[1], 3, 3, dtype=src.dtype)
    w[:, :, 1, 1] = src[:, :, 0, 0]
    return w


def _shift(src, args):
    """Structural kernel of a shift layer: output channel (k, c) = input channel c moved by
    offset ``out_offsets[k]``, built from input channel (k', c) (held at ``in_offsets[k']``) and
    one tap. Channels are offset-major: index k * c_in + c."""
    c_in, grid, reach = args["c_in"], args["grid"], args["in_reach"]
    ins = {tuple(o): i for i, o in enumerate(offsets(reach))}
    outs = offsets(args["out_reach"])
    w = torch.zeros(len(outs) * c_in, len(ins) * c_in, 3, 3)
    for k, (oy, ox) in enumerate(outs):
        (iy, ty), (ix, tx) = split_offset(oy, reach, grid), split_offset(ox, reach, grid)
        k_in = ins[(iy, ix)]
        for c in range(c_in):
            w[k * c_in + c, k_in * c_in + c, ty + 1, tx + 1] = 1.0
    return w


def _stem_kernel(src, args):
    """A teacher k x k kernel [O, C, k, k] as the 3x3 kernel of the last stem layer, which reads
    shift channels of reach ``in_reach`` on a grid ``grid`` pixels apart (see ``split_offset``)."""
    c_in, grid, reach = args["c_in"], args["grid"], args["in_reach"]
    if src.dim() != 4 or src.shape[2] != src.shape[3] or src.shape[2] % 2 == 0 or src.shape[1] != c_in:
        raise ConversionError(f"stem_kernel needs an odd square kernel over {c_in} channels, got "
                              f"shape {tuple(src.shape)}")
    r = src.shape[2] // 2
    ins = {tuple(o): i for i, o in enumerate(offsets(reach))}
    w = torch.zeros(src.shape[0], len(ins) * c_in, 3, 3, dtype=src.dtype)
    for oy, ox in offsets(r):
        (iy, ty), (ix, tx) = split_offset(oy, reach, grid), split_offset(ox, reach, grid)
        k_in = ins[(iy, ix)]
        w[:, k_in * c_in:(k_in + 1) * c_in, ty + 1, tx + 1] = src[:, :, oy + r, ox + r]
    return w


def _identity_sum(src, args):
    """out[o] = sum over operands g of in[g * channels + o]: the centre tap of a 3x3 kernel
    (``linear``: a plain matrix). At init a concat conv computes the teacher's residual sum."""
    c, n = args["channels"], args["operands"]
    eye = torch.eye(c).repeat(1, n)
    if args.get("linear"):
        return eye
    w = torch.zeros(c, c * n, 3, 3)
    w[:, :, 1, 1] = eye
    return w


def _sum_pool(src, args):
    """A stride-2 3x3 conv that averages each channel over 2x2 blocks: taps (1,1), (1,2), (2,1),
    (2,2) at 1/4. With 'same' padding (1) output (i, j) reads input rows 2i, 2i+1 and columns 2j,
    2j+1, so the blocks tile the map (an odd edge pairs with a padded zero): the sum over the
    output map is exactly a quarter of the sum over the input map."""
    c = args["channels"]
    w = torch.zeros(c, c, 3, 3)
    for ty in (1, 2):
        for tx in (1, 2):
            w[:, :, ty, tx] = torch.eye(c) / 4
    return w


def _fc_spatial(src, args):
    """Teacher fc weights [M, C] over a flattened C x H x W map: feature c * HW + k gets
    W[:, c] * scale, with scale = 4**pools / (H0 * W0). Exactly the global average pool (over the
    H0 x W0 map, then ``pools`` 2x2 sum-pool layers) followed by the fc."""
    if src.dim() != 2:
        raise ConversionError(f"fc_spatial needs an fc weight [M, C], got shape {tuple(src.shape)}")
    return src.repeat_interleave(args["positions"], dim=1) * args["scale"]


def _zeros(src, args, shape):
    return torch.zeros(shape)


def _ones(src, args, shape):
    return torch.ones(shape)


def _fresh(src, args, shape):
    """A learned form's layer: He initialisation, as a new layer of the paper's student."""
    return torch.nn.init.kaiming_normal_(torch.empty(shape), nonlinearity="relu")


def _bn_var(src, args):
    """Teacher running variance moved to the student's epsilon: var + eps_teacher - eps_student,
    so that sqrt(var + eps) is the teacher's."""
    return src + args["eps_shift"]


def _bn_identity_var(src, args, shape):
    """1 - eps: a fresh batch-norm whose folded scale is exactly 1 (identity until calibrated)."""
    return torch.full(shape, 1.0 - args["eps"])


RULES: dict[str, Callable] = {
    "copy": _copy, "centre_tap": _centre_tap, "shift": _shift, "stem_kernel": _stem_kernel,
    "identity_sum": _identity_sum, "sum_pool": _sum_pool, "fc_spatial": _fc_spatial,
    "bn_var": _bn_var,
}
SHAPED_RULES: dict[str, Callable] = {"zeros": _zeros, "ones": _ones, "fresh": _fresh,
                                     "bn_identity_var": _bn_identity_var}
NEEDS_SOURCE = {"copy", "centre_tap", "stem_kernel", "fc_spatial", "bn_var"}


def _cut(logical: torch.Tensor, args: Mapping) -> torch.Tensor:
    out = args.get("out")
    if out is not None:
        logical = logical[out[0]:out[1]]
    ranges = args.get("in")
    if ranges is not None:
        logical = torch.cat([logical[:, a:b] for a, b in ranges], dim=1)
    return logical


def row_value(row: TransferRow, teacher_state: Mapping[str, torch.Tensor],
              shape: tuple[int, ...]) -> torch.Tensor:
    """The value a row writes into a target of ``shape``."""
    if row.rule in SHAPED_RULES:
        return SHAPED_RULES[row.rule](None, row.args, shape)
    if row.rule not in RULES:
        raise ConversionError(f"transfer row for {row.target!r}: unknown rule {row.rule!r}")
    src = None
    if row.rule in NEEDS_SOURCE:
        if row.source not in teacher_state:
            raise ConversionError(f"transfer row for {row.target!r}: teacher has no {row.source!r}")
        src = teacher_state[row.source].detach().to(torch.float32)
    return _cut(RULES[row.rule](src, row.args), row.args)


def transfer_targets(student) -> list[str]:
    """Every student tensor a complete table must write: weight and bias of each MAC layer, and
    its batch-norm's weight, bias, running mean and running variance; each constant's value."""
    from archnet.quant.modules import QConstant, QEmbedding
    keys = []
    for i, block in enumerate(student.blocks):
        for name, m in block.mac_layers().items():
            base = f"blocks.{i}.layers.{name}"
            keys += [f"{base}.weight", f"{base}.bias"]
            if m.bn is not None:
                keys += [f"{base}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        keys += [f"blocks.{i}.layers.{name}.value" for name, m in block.layers.items()
                 if isinstance(m, QConstant)]
        keys += [f"blocks.{i}.layers.{name}.weight" for name, m in block.layers.items()
                 if isinstance(m, QEmbedding)]
    return keys


@torch.no_grad()
def apply_transfers(teacher_state: Mapping[str, torch.Tensor], student,
                    rows: Iterable[TransferRow]) -> None:
    """Write every row into ``student`` (in place; the teacher is only read)."""
    rows = list(rows)
    state = student.state_dict(keep_vars=True)
    expected = set(transfer_targets(student))
    seen: set[str] = set()
    for row in rows:
        if row.target not in expected:
            raise ConversionError(f"transfer table writes {row.target!r}, not a MAC-layer tensor "
                                  f"of the student")
        if row.target in seen:
            raise ConversionError(f"transfer table writes {row.target!r} twice")
        seen.add(row.target)
        target = state[row.target]
        value = row_value(row, teacher_state, tuple(target.shape))
        if tuple(value.shape) != tuple(target.shape):
            raise ConversionError(f"transfer row for {row.target!r} ({row.rule} of {row.source}) "
                                  f"has shape {tuple(value.shape)}, target {tuple(target.shape)}")
        target.data.copy_(value)
    missing = sorted(expected - seen)
    if missing:
        raise ConversionError(f"transfer table leaves {len(missing)} student tensors unwritten: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
