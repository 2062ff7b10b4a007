"""The per-token LayerNorm chain (``layer_norm.per_token``) on the chip's integers, on tokens as a
Transformer's residual stream holds them: outlier channels and variances spread 500x between
tokens. The integers must stay within 0.4 % of LayerNorm for every token, the quiet ones
included: what the fine squares, the fine variance and the tables' minimum are there for."""

import torch
import torch.nn.functional as F

from archnet.quant.lsq import LsqQuantizer
from archnet.quant.norm import QTokenNorm
from archnet.quant.qtensor import QTensor
from simulator.contract import IntType
from simulator.profiles import load_profile

D = 64


def _stream(tokens: int = 96, seed: int = 0) -> torch.Tensor:
    """Tokens with per-token spreads from 1 to 1/sqrt(500) (variance 500x apart) and two
    outlier channels 15x and 20x the rest, as MiniLM's residual stream has."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, D, generator=g, dtype=torch.float64)
    x[:, 0], x[:, 1] = 20.0, -15.0
    spread = torch.logspace(0, -0.5 * torch.log10(torch.tensor(500.0)).item(), tokens,
                            dtype=torch.float64)
    return (x * spread[:, None] + 0.3).unsqueeze(0)


def _norm(x: torch.Tensor, form=QTokenNorm):
    """``form`` over ``x``'s features, calibrated on ``x``; its output grid holds LayerNorm's."""
    want = F.layer_norm(x, (D,), eps=1e-5)
    out = LsqQuantizer(16, True)
    out.scale.data.fill_(float(want.abs().max()) * 1.1 / out.qmax)
    out.initialised.fill_(True)
    norm = form(D, output_quant=out).double()
    norm.calibrate(x)
    return norm


def _relative_error(norm, x: torch.Tensor, chip: str = "ethos-u55-128",
                    bits: int = 16) -> torch.Tensor:
    """Per token, the largest distance between ``chip``'s integers and LayerNorm (of the same
    ``bits``-bit input) over LayerNorm's largest value."""
    qmax = (1 << (bits - 1)) - 1
    scale = float(x.abs().max()) * 1.05 / qmax
    q = QTensor(torch.round(x / scale).to(torch.int64), scale, IntType(bits, True))
    got = norm.integer_forward(q, load_profile(chip).arithmetic).dequantize()
    want = F.layer_norm(q.dequantize(), (D,), eps=1e-5)
    return ((got - want).abs().amax(dim=-1) / want.abs().amax(dim=-1))[0]


def test_every_token_is_normalised_within_four_permille():
    x = _stream()
    error = _relative_error(_norm(x), x)
    assert float(error.max()) <= 4e-3, error


def test_the_fine_grids_are_what_keeps_the_quiet_tokens():
    """With the fine squares and variance on the coarse grids (one reading), the quiet tokens
    are normalised 10x worse than the loud ones and the test above fails."""
    x = _stream()
    norm = _norm(x)
    norm.square_fine_step.copy_(norm.square_step)
    norm.variance_fine_step.copy_(norm.variance_step)
    error = _relative_error(norm, x)
    assert float(error[-8:].mean()) > 10 * float(error[:8].mean())
    assert float(error.max()) > 4e-3
