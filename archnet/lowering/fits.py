"""Fits from the teacher's values on calibration data, made once after lowering and before
distillation: each puts a student parameter where least squares (or the data's range) says it
belongs, so distillation starts from the best start its form allows. They move weights, so each
re-initialises the weight quantizers it touched.
"""

from __future__ import annotations

import math

import torch

from archnet.capture.graph import TeacherGraph
from archnet.lowering.calibrate import init_weight_quantizers
from archnet.rules.norm import embedding_sum


@torch.no_grad()
def fit_layer_norms(student, graph: TeacherGraph, teacher_inputs, mask=None) -> int:
    """LayerNorm's fixed-statistics replacements fitted to the teacher: with the statistics
    calibration fixed, each channel's scale and shift are the least-squares fit of the teacher's
    LayerNorm output on its own input normalised by them (over the tokens ``mask`` keeps), the
    best start a per-channel affine can have. A folded replacement (``layer_norm.folded_affine``)
    fits the affine on LayerNorm's raw input and puts it where the fold says: its scale on the
    skip's depthwise 1x1, scale and shift into the rows of the layer writing the other operand.
    LayerNorm folded into an embedding sum (``layer_norm.folded_embedding``) goes further: after
    the affine, the token columns and position rows are fitted too (``_fit_embedding_sum``).
    Returns how many it fitted."""
    steps = [(i, block, st) for i, block in enumerate(student.blocks) for st in block.spec["steps"]
             if st.get("teacher_node") and (st["kind"] == "channel_affine" or "folded_norm" in st)]
    if not steps:
        return 0
    keep_values = set()
    for _, _, st in steps:
        node = graph.node(st["teacher_node"])
        keep_values |= {node.name, node.inputs[0]}
        if "folded_norm" in st:
            keep_values.add(embedding_sum(graph, node.inputs[0], lambda v: True).inputs[0])
    values = graph.values(*teacher_inputs, keep=keep_values)
    keep = None if mask is None else (mask != 0).reshape(-1)
    moved = set()
    for i, block, st in steps:
        node = graph.node(st["teacher_node"])
        d = node.shape[-1]
        x = values[node.inputs[0]].reshape(-1, d).double()
        y = values[node.name].reshape(-1, d).double()
        rows = torch.ones(x.shape[0], dtype=torch.bool)
        if keep is not None and keep.numel() == x.shape[0]:
            rows = keep
        x, y = x[rows], y[rows]
        if "folded_norm" in st:     # the embedding sum's own scale: no statistics
            slope, shift = _affine_fit(x, y)
            ids = values[embedding_sum(graph, node.inputs[0], lambda v: True).inputs[0]]
            _fit_embedding_sum(block, st, ids, y, rows, slope, shift)
            moved.add((i, st["name"]))
            continue
        affine = block.layers[st["name"]]
        bn = affine.bn
        folded = st.get("folded_into")
        if folded:          # the raw sum's own scale: no statistics
            xhat = x
        else:
            xhat = (x - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps)
        slope, shift = _affine_fit(xhat, y)
        if folded:
            # the depthwise 1x1 folds to weight x bn.weight / sqrt(var + eps): make that slope
            bn.weight.fill_(1.0)
            bn.bias.zero_()
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            affine.weight.copy_((slope * math.sqrt(1.0 + bn.eps)).float().view_as(affine.weight))
            mac = block.layers[folded]
            rows = slope.float().view(-1, *([1] * (mac.weight.dim() - 1)))
            mac.weight.mul_(rows)
            mac.bias.copy_(mac.bias * slope.float() + shift.float())
            moved.add((i, folded))
        else:
            bn.weight.copy_(slope.float())
            bn.bias.copy_(shift.float())
        moved.add((i, st["name"]))
    init_weight_quantizers(student, sorted(moved))      # the fits moved these weights
    return len(steps)


def _affine_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the least-squares ``slope * x + shift`` of ``y`` (rows [M, C])."""
    xm, ym = x.mean(0), y.mean(0)
    var = (x - xm).pow(2).mean(0).clamp_min(1e-12)
    slope = ((x - xm) * (y - ym)).mean(0) / var
    return slope, ym - slope * xm


EMBEDDING_FIT_ROUNDS = 10     # alternations of the token/position fit (converged well before)


def _fit_embedding_sum(block, st: dict, ids: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                       slope: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold LayerNorm's fitted affine into an embedding sum (``layer_norm.folded_embedding``):
    the one-hot layer's rows and every constant take ``slope``, the position table ``shift``.
    Then the best additive model of the teacher's output ``y`` (the kept ``rows`` of
    [sentences x positions]): a correction per seen token (its column) and per position (the
    position table's row), alternated to the least-squares fixed point. Unseen tokens keep the
    folded table."""
    fc = block.layers[st["name"]]
    fc.weight.mul_(slope.float().view(-1, 1))
    if fc.bias is not None:
        fc.bias.mul_(slope.float())
    consts = [block.layers[c] for c in st["folded_norm"]]
    seq, dim = ids.shape[-1], y.shape[1]
    positional = next((c for c in consts if c.value.reshape(-1, dim).shape[0] == seq), None)
    for c in consts:
        c.value.mul_(slope.float())
    (positional or consts[0]).value.add_(shift.float())
    token = ids.reshape(-1)[rows]
    pos = torch.arange(seq).repeat(ids.numel() // seq)[rows]
    total = sum(c.value.double().reshape(-1, dim).expand(seq, dim) for c in consts)
    resid = y - fc.weight.double().t()[token] - total[pos]
    if fc.bias is not None:
        resid -= fc.bias.double()
    vocab = fc.weight.shape[1]
    d_tok = torch.zeros(vocab, dim, dtype=torch.float64)
    d_pos = torch.zeros(seq, dim, dtype=torch.float64)
    n_tok = torch.zeros(vocab, dtype=torch.float64).index_add_(0, token, torch.ones(len(token), dtype=torch.float64))
    n_pos = torch.zeros(seq, dtype=torch.float64).index_add_(0, pos, torch.ones(len(pos), dtype=torch.float64))
    for _ in range(EMBEDDING_FIT_ROUNDS if positional is not None else 1):
        d_tok = torch.zeros_like(d_tok).index_add_(0, token, resid - d_pos[pos])
        d_tok /= n_tok.clamp_min(1).unsqueeze(1)
        if positional is None:
            break
        d_pos = torch.zeros_like(d_pos).index_add_(0, pos, resid - d_tok[token])
        d_pos /= n_pos.clamp_min(1).unsqueeze(1)
    fc.weight.add_(d_tok.t().float())
    if positional is not None:
        positional.value.add_(d_pos.float().view_as(positional.value))


CARRY_MARGIN = 1.25     # headroom over the largest carried value the calibration data shows


@torch.no_grad()
def fit_carried_residuals(student, graph: TeacherGraph, teacher_inputs) -> int:
    """The carried input's scale of each ``add.carry_through_block``: ``s`` so that the
    largest |x| the teacher shows on ``teacher_inputs`` (times ``CARRY_MARGIN``) passes under
    the activation's upper bound as ``x / s``; the expand's identity rows take ``1/s``, the
    projection's columns ``s``. Returns how many it fitted."""
    found = [(i, block, st) for i, block in enumerate(student.blocks) for st in block.spec["steps"]
             if st.get("carried")]
    if not found:
        return 0
    values = graph.values(*teacher_inputs, keep={st["carried"]["value"] for _, _, st in found})
    moved = []
    for i, block, st in found:
        carried = st["carried"]
        bounds = [s["clamp_max"] for s in block.spec["steps"]
                  if s["name"] in (st["name"], carried["through"]) and s.get("clamp_max") is not None]
        if not bounds:
            continue                    # plain ReLU: exact at any scale
        peak = float(values[carried["value"]].abs().max()) * CARRY_MARGIN
        s = max(peak / min(bounds), 1e-6)
        c = carried["channels"]
        expand, proj = block.layers[st["name"]], block.layers[carried["into"]]
        expand.weight[-2 * c:] /= s
        proj.weight[:, -2 * c:] *= s
        moved += [(i, st["name"]), (i, carried["into"])]
    init_weight_quantizers(student, moved)
    return len(found)
