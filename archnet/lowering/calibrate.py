"""Initial quantizer steps and batch-norm statistics of a freshly lowered student.

``init_weight_quantizers``: LSQ's step ``2 mean|w| / sqrt(qmax)`` is computed over the *non-zero*
taps (a 1x1 kernel in a 3x3 centre, or a shift kernel, is mostly structural zeros that would
shrink the step and clip the real weights), and capped at ``max|w| / qmax``, the finest step
that still covers the channel's largest weight. Structural kernels of 0/1 (shift, identity sum)
land exactly on the grid that way, at any width.

``calibrate_batchnorm``: layers the teacher has no batch-norm for (the residual merge convs)
start with an identity batch-norm. Calibration sets their fixed running statistics to the data's
(per channel mean and variance of the conv output over the images, in float). With
``preserve_function`` (the default) the affine weight and bias are moved with them so that the
folded layer is unchanged: the student still starts at the teacher, and training sees
normalised statistics. Without it the batch-norm becomes a fresh one (weight 1, bias 0) that
normalises its input, as in a network initialised from scratch.
"""

from __future__ import annotations

import math

import torch

from archnet.quant.modules import QConv2d
from archnet.student import TOKEN_NORMS


@torch.no_grad()
def init_weight_quantizers(student, layers: list[tuple[int, str]] | None = None) -> None:
    """Set every MAC layer's per-channel weight step from its folded weights (see module doc);
    ``layers``: only these (block index, step name), e.g. those whose batch-norm calibration
    just moved the folded weights."""
    for i, block in enumerate(student.blocks):
        for name, m in block.mac_layers().items():
            if layers is not None and (i, name) not in layers:
                continue
            weight, _ = m.folded()
            w = weight.detach().reshape(weight.shape[0], -1).abs()
            q = m.weight_quant
            nonzero = (w > 0).sum(dim=1).clamp_min(1)
            lsq = 2 * (w.sum(dim=1) / nonzero) / math.sqrt(q.qmax)
            cover = w.max(dim=1).values / q.qmax
            step = torch.minimum(lsq, cover)
            step = torch.where(step > 0, step, torch.full_like(step, 1.0 / q.qmax))
            q.scale.copy_(step)
            q.initialised.fill_(True)


def new_batchnorm_layers(student) -> list[tuple[int, str]]:
    """(block index, step name) of every conv whose batch-norm statistics calibration sets:
    those the teacher did not provide (``bn_init`` "new") and LayerNorm's fixed-statistics
    replacements (``bn_init`` "statistics": the statistics from the data, the affine kept)."""
    return [(i, step["name"]) for i, block in enumerate(student.blocks)
            for step in block.spec["steps"] if step.get("bn_init") in ("new", "statistics")]


@torch.no_grad()
def calibrate_batchnorm(student, images: torch.Tensor, *, preserve_function: bool = True,
                        side: dict | None = None) -> list[tuple[int, str]]:
    """Fixed running statistics of the new batch-norms from ``images`` (float, no quantizers;
    ``side``: the student's side inputs for them); returns the (block index, step) pairs it
    set."""
    todo = new_batchnorm_layers(student)
    x = images
    for i, block in enumerate(student.blocks):
        for _, name in [t for t in todo if t[0] == i]:
            m: QConv2d = block.layers[name]
            step = next(s for s in block.spec["steps"] if s["name"] == name)
            env = block.trace(x, quantize=False, side=side)
            z = m.pre_bn(env[step["inputs"][0]])
            mean = z.mean(dim=(0, 2, 3))
            var = z.var(dim=(0, 2, 3), unbiased=False)
            bn = m.bn
            if step.get("bn_init") == "statistics":
                pass
            elif preserve_function:
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                new_weight = scale * torch.sqrt(var + bn.eps)
                bn.bias.add_(scale * (mean - bn.running_mean))
                bn.weight.copy_(new_weight)
            else:
                bn.weight.fill_(1.0)
                bn.bias.zero_()
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        x = block(x, quantize=False, side=side)
    # new statistics under a kept affine (or a reset one) move the folded weights: their steps
    # follow (steps set for the old ones would clip them); a preserved function keeps them
    moved = [(i, name) for i, name in todo if not preserve_function or next(
        s for s in student.blocks[i].spec["steps"] if s["name"] == name).get("bn_init") == "statistics"]
    init_weight_quantizers(student, moved)
    return todo



def _mse_step(values: torch.Tensor, qmin: int, qmax: int, candidates: int = 64) -> float:
    """The step among ``candidates`` clipping points (a fraction of max|x| over the grid) with
    the least squared quantization error on ``values``: for 4-bit grids the max-covering step
    wastes levels on rare outliers, and LSQ's mean-based start clips too much after ReLU."""
    top = float(values.abs().max())
    if top <= 0:
        return 1.0 / qmax
    best, best_err = top / qmax, math.inf
    for frac in torch.linspace(0.2, 1.0, candidates).tolist():
        s = top * frac / qmax
        err = float((torch.clamp(torch.round(values / s), qmin, qmax) * s - values).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


@torch.no_grad()
def calibrate_token_norms(student, images: torch.Tensor, side: dict | None = None) -> int:
    """Fix every per-token LayerNorm's internal grids (and a fitted form's rsqrt network)
    from its float input, in order, each traced up to it after the ones before it are set;
    returns how many. First of all: a fitted form refuses to be read until then, and the fits
    and the smoothing read the float path."""
    done = 0
    x = images
    for block in student.blocks:
        for step in [st for st in block.spec["steps"] if st["kind"] in TOKEN_NORMS]:
            env = block.trace(x, quantize=False, side=side, until=step["name"])
            block.layers[step["name"]].calibrate(env[step["inputs"][0]])
            done += 1
        x = block(x, quantize=False, side=side)
    return done


@torch.no_grad()
def calibrate_activations(student, images: torch.Tensor, max_samples: int = 200_000,
                          seed: int = 0, side: dict | None = None) -> dict[str, float]:
    """Initial steps of every learned activation quantizer from ``images`` (float path, no
    quantizers): the MSE-optimal clipping of the values written to it (by every writer, for
    a quantizer shared across a concat); returns ``{quantizer key: step}``. Quantizers whose
    grid is fixed by construction (``step`` in the config) are left alone. A token norm's
    internal grids are fixed here again first (``calibrate_token_norms``), on the values as
    the fits and smoothing before left them."""
    gen = torch.Generator().manual_seed(seed)
    fixed = {k for k, s in student.config["quantizers"].items() if s.get("step") is not None}
    written: dict[str, list[torch.Tensor]] = {}
    calibrate_token_norms(student, images, side=side)
    x = images
    for block in student.blocks:
        env = block.trace(x, quantize=False, side=side)
        for step in block.spec["steps"]:
            key = step.get("quant")
            if key is not None and key not in fixed:    # every step writing a learned grid
                v = env[step["name"]].reshape(-1)
                if v.numel() > max_samples:
                    v = v[torch.randint(v.numel(), (max_samples,), generator=gen)]
                written.setdefault(key, []).append(v)
        outs = [env[ref] for ref in block.spec["outputs"]]
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    steps = {}
    for key, parts in written.items():
        q = student.quantizers[key]
        steps[key] = _mse_step(torch.cat(parts), q.qmin, q.qmax)
        q.scale.fill_(steps[key])
        q.initialised.fill_(True)
    return steps


# SmoothQuant's migration strength: how much of an activation channel's range moves into the
# weights. MiniLM at 4w4a, each block fed the teacher's input, before training (relative MSE,
# layers 0-4): 0.10-0.17 at 0.75, 0.15-0.17 at 0.5, 0.18-0.24 at 0.25, 0.19-0.26 without;
# 0.9 and 1.0 no better than 0.75. 4-bit activations cost more than 4-bit weights there.
SMOOTHING_ALPHA = 0.75


@torch.no_grad()
def smooth_narrowed_inputs(student, images: torch.Tensor, side: dict | None = None,
                           alpha: float = SMOOTHING_ALPHA) -> int:
    """Per-channel smoothing of every requantize that narrows a wide grid for the MACs reading
    it (``archnet.lowering.widths``): channel ``c`` is divided by
    ``s_c = max|x_c|^alpha / max|w_c|^(1 - alpha)`` (SmoothQuant, Xiao et al. 2023) and the
    readers' weight columns for it multiplied by ``s_c``, so outlier channels of the stream do
    not set the narrow grid's step for all the others; the float function is unchanged.
    Readers with grouped convs keep the identity. Returns how many it smoothed."""
    x, done = images, 0
    for i, block in enumerate(student.blocks):
        steps = block.spec["steps"]
        narrowing = [st for st in steps if st.get("narrows")]
        if narrowing:
            env = block.trace(x, quantize=False, side=side)
        for st in narrowing:
            readers = [block.layers[r["name"]] for r in steps if st["name"] in r["inputs"]]
            if not readers or any(getattr(m, "groups", 1) != 1 for m in readers):
                continue
            v = env[st["inputs"][0]]
            conv = st["kind"] == "conv"
            v = v.transpose(0, 1).reshape(v.shape[1], -1) if conv else v.reshape(-1, v.shape[-1]).t()
            act = v.abs().amax(dim=1).clamp_min(1e-8)
            wmax = torch.stack([m.weight.abs().transpose(0, 1).reshape(act.numel(), -1).amax(dim=1)
                                for m in readers]).amax(dim=0).clamp_min(1e-8)
            s = act.pow(alpha) / wmax.pow(1 - alpha)
            narrow = block.layers[st["name"]]
            narrow.weight.div_(s.view(-1, *([1] * (narrow.weight.dim() - 1))))
            for m in readers:
                m.weight.mul_(s.view(1, -1, *([1] * (m.weight.dim() - 2))))
            init_weight_quantizers(student, [(i, st["name"])] + [
                (i, r["name"]) for r in steps if st["name"] in r["inputs"]])
            done += 1
        x = block(x, quantize=False, side=side)
    return done
