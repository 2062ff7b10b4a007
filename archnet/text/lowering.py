"""A BERT teacher lowered to the Arch-Net text student, and the student's first quantizer grids.

Weights are copied (the embedding tables become one fully connected layer's columns), each
LayerNorm becomes the least-squares per-channel affine of its own input and output on the
calibration tokens, and the operator choices follow the target profile: GELU on the lookup-table
unit only if the profile has one that takes 8-bit inputs and evaluates GELU, the residual add only if the profile
has ``add``. Activation grids are calibrated in forward order, each on the values the already
quantized layers before it write (MSE-optimal clipping); weight grids per output channel.
"""

from __future__ import annotations

import math

import torch

from archnet.errors import ConversionError
from archnet.quant.lsq import LsqQuantizer
from archnet.text.student import STREAM_BITS, TextStudent, TextStudentConfig


def operator_choices(chip) -> dict:
    """activation and residual for a profile: what the chip runs natively."""
    lut = chip.op("lookup_table")
    gelu_lut = lut.supported and (lut.max_input_bits is None or lut.max_input_bits >= STREAM_BITS) \
        and (lut.functions is None or "gelu" in lut.functions)
    return {"activation": "gelu_lut" if gelu_lut else "relu",
            "residual": "add" if chip.op("add").supported else "concat"}


def student_config(shape, max_positions: int, w_bits: int, a_bits: int, chip,
                   activation: str | None = None, residual: str | None = None,
                   layers: int | None = None) -> TextStudentConfig:
    """The student for a teacher of ``shape`` on ``chip``; ``layers`` keeps only the teacher's
    first layers (a truncated model: quick experiments, CI)."""
    if layers is not None and not 1 <= layers <= shape.layers:
        raise ConversionError(f"--layers {layers}: the teacher has 1..{shape.layers} layers")
    if max_positions > shape.max_positions:
        raise ConversionError(f"--max-len {max_positions} > the teacher's {shape.max_positions} positions")
    if shape.hidden_act not in ("gelu", "gelu_new", "gelu_python", "relu"):
        raise ConversionError(f"teacher activation {shape.hidden_act!r} is not one the student "
                              f"replaces (gelu or relu)")
    choice = operator_choices(chip)
    return TextStudentConfig(vocab_size=shape.vocab_size, max_positions=max_positions,
                             hidden=shape.hidden, heads=shape.heads,
                             intermediate=shape.intermediate, layers=layers or shape.layers,
                             w_bits=w_bits, a_bits=a_bits,
                             activation=activation or choice["activation"],
                             residual=residual or choice["residual"])


def _copy(dst, src) -> None:
    dst.weight.data.copy_(src.weight.data)
    dst.bias.data.copy_(src.bias.data)


@torch.no_grad()
def lower_bert(teacher, cfg: TextStudentConfig, ids: torch.Tensor, mask: torch.Tensor) -> TextStudent:
    """The student initialised from a transformers BertModel ``teacher.model`` and fitted on the
    calibration batch (ids, mask [N, T])."""
    bert = teacher.model
    if cfg.layers > len(bert.encoder.layer):
        raise ConversionError(f"student has {cfg.layers} layers, teacher {len(bert.encoder.layer)}")
    student = TextStudent(cfg)
    emb = bert.embeddings
    table = torch.cat([emb.word_embeddings.weight.T,
                       emb.position_embeddings.weight[:cfg.max_positions].T], dim=1)
    student.embedding.linear.weight.data.copy_(table)
    student.embedding.linear.bias.data.copy_(emb.token_type_embeddings.weight[0])
    norms = [(student.embedding.affine, emb.LayerNorm)]
    for layer, t in zip(student.layers, bert.encoder.layer):
        att = t.attention
        _copy(layer.query, att.self.query)
        _copy(layer.key, att.self.key)
        _copy(layer.value, att.self.value)
        _copy(layer.attn_out, att.output.dense)
        _copy(layer.ffn1, t.intermediate.dense)
        _copy(layer.ffn2, t.output.dense)
        norms += [(layer.norm1, att.output.LayerNorm), (layer.norm2, t.output.LayerNorm)]
    _fit_affines(teacher, norms, ids, mask)
    for layer in student.layers:
        for r in (layer.residual1, layer.residual2):
            if r.kind == "concat":
                r.init_merge()
    fit_smoothing(student, ids, mask)
    init_weight_grids(student)
    calibrate_activation_grids(student, ids, mask)
    return student


@torch.no_grad()
def fit_smoothing(student: TextStudent, ids: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> None:
    """SmoothQuant's per-channel factors for the narrow FC inputs: ``s_c = max|x_c|**alpha /
    max|W[:, c]|**(1 - alpha)`` over the FCs reading the input, so that the outlier channels'
    range moves from the activation grid into the (per-output-channel) weight grids."""
    pairs = []
    for layer in student.layers:
        if layer.attn_in is not None:
            pairs.append((layer.attn_in, [layer.query, layer.key, layer.value]))
        if layer.ffn_in is not None:
            pairs.append((layer.ffn_in, [layer.ffn1]))
    if not pairs:
        return
    valid = mask.reshape(-1).bool()
    top: dict[int, torch.Tensor] = {}

    def pre_hook(module, args):
        top[id(module)] = args[0].reshape(-1, args[0].shape[-1])[valid].abs().amax(0)

    hooks = [src.register_forward_pre_hook(pre_hook) for src, _ in pairs]
    try:
        student.features(ids, mask)
    finally:
        for h in hooks:
            h.remove()
    for src, fcs in pairs:
        src.smooth.fill_(1.0)
        w_top = torch.stack([fc.folded()[0].abs().amax(0) for fc in fcs]).amax(0).clamp_min(1e-8)
        s = top[id(src)].clamp_min(1e-8).pow(alpha) / w_top.pow(1 - alpha)
        src.smooth.copy_(s / s.median())


def _fit_affines(teacher, norms, ids, mask) -> None:
    """Each LayerNorm's input and output on the valid tokens -> its FixedAffine."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    valid = mask.reshape(-1).bool()
    hooks = []
    for i, (_, ln) in enumerate(norms):
        def hook(module, args, out, i=i):
            h = out.shape[-1]
            seen[i] = (args[0].reshape(-1, h)[valid], out.reshape(-1, h)[valid])
        hooks.append(ln.register_forward_hook(hook))
    try:
        teacher.forward(ids, mask)
    finally:
        for h in hooks:
            h.remove()
    for i, (affine, ln) in enumerate(norms):
        if i not in seen:
            raise ConversionError(f"teacher LayerNorm {i} did not run: not a BERT encoder layout")
        affine.fit(*seen[i])


def mse_steps(values: torch.Tensor, qmin: int, qmax: int, candidates: int = 48) -> torch.Tensor:
    """Per row of ``values`` [C, K]: the step among clipping points (a fraction of the row's
    max |v|) with the least squared error on the grid."""
    top = values.abs().amax(dim=1).clamp_min(1e-12)
    best = top / qmax
    best_err = torch.full_like(top, math.inf)
    for frac in torch.linspace(0.25, 1.0, candidates).tolist():
        s = (top * frac / qmax)[:, None]
        err = (torch.clamp(torch.round(values / s), qmin, qmax) * s - values).pow(2).mean(dim=1)
        better = err < best_err
        best = torch.where(better, s[:, 0], best)
        best_err = torch.where(better, err, best_err)
    return best


@torch.no_grad()
def init_weight_grids(student: TextStudent) -> None:
    fcs = [student.embedding.linear] + [fc for layer in student.layers for fc in layer.fc_layers().values()]
    for fc in fcs:
        weight, _ = fc.folded()
        q = fc.weight_quant
        w = weight.detach().reshape(weight.shape[0], -1)
        rows = []
        for chunk in w.split(64):
            rows.append(mse_steps(chunk, q.qmin, q.qmax))
        q.scale.copy_(torch.cat(rows).clamp_min(1e-8))
        q.initialised.fill_(True)


def activation_quantizers(student: TextStudent) -> list[LsqQuantizer]:
    weights = {id(m.weight_quant) for m in student.modules() if hasattr(m, "weight_quant")}
    return [m for m in student.modules() if isinstance(m, LsqQuantizer) and id(m) not in weights]


@torch.no_grad()
def calibrate_activation_grids(student: TextStudent, ids: torch.Tensor, mask: torch.Tensor,
                               max_samples: int = 400_000, seed: int = 0) -> None:
    """Every activation grid, in the order the forward meets it: a pre-hook sets a quantizer's
    step from the first values it sees, which the calibrated quantizers upstream produced. A
    grid written twice (the concat residual's, by the branch and by the skip) is set from all
    its writers, then everything after it is calibrated again, one such grid per pass in
    forward order (a later one's values depend on the earlier ones' steps)."""
    gen = torch.Generator().manual_seed(seed)
    quants = activation_quantizers(student)
    seen: dict[int, list[torch.Tensor]] = {}
    order: list[int] = []
    fixed: set[int] = set()

    def sample(x):
        v = x.detach().reshape(-1)
        v = v[torch.isfinite(v)]
        return v[torch.randint(v.numel(), (max_samples,), generator=gen)] if v.numel() > max_samples else v

    def pre_hook(module, args):
        if id(module) not in seen:
            order.append(id(module))
        seen.setdefault(id(module), []).append(sample(args[0]))
        if not bool(module.initialised):
            module.scale.copy_(mse_steps(seen[id(module)][0].view(1, -1), module.qmin, module.qmax)[0].reshape(1))
            module.initialised.fill_(True)

    by_id = {id(q): q for q in quants}
    hooks = [q.register_forward_pre_hook(pre_hook) for q in quants]
    try:
        while True:
            seen.clear()
            order.clear()
            for q in quants:
                if id(q) not in fixed:
                    q.initialised.fill_(False)
            student.features(ids, mask)
            shared = [i for i in order if len(seen[i]) > 1 and i not in fixed]
            if not shared:
                break
            q = by_id[shared[0]]
            q.scale.copy_(mse_steps(torch.cat(seen[shared[0]]).view(1, -1), q.qmin, q.qmax)[0].reshape(1))
            fixed.add(shared[0])
    finally:
        for h in hooks:
            h.remove()
    missing = [q for q in quants if not bool(q.initialised)]
    if missing:
        raise ConversionError(f"{len(missing)} activation quantizer(s) never ran in calibration")
