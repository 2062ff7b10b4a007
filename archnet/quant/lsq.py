"""Learned step-size quantization (LSQ, Esser et al. 2020) with integer-exportable semantics.

A quantizer maps x to ``clamp(round(x / s), qmin, qmax)`` on a symmetric signed grid (weights,
per output channel) or an unsigned grid with zero point 0 (activations after ReLU). ``round`` is
torch.round (ties to even) in both the fake-quant forward and ``integer()``, so the integers the
exporter writes are exactly the ones training saw.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simulator.contract import IntType


class _RoundSte(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return _RoundSte.apply(x)


class _LsqFakeQuant(torch.autograd.Function):
    """``clamp(round(x / s), qmin, qmax) * s`` as one autograd node with LSQ's gradients (the
    composition's, computed in three passes over x instead of a dozen): d/dx is 1 where the
    rounded value lies inside [qmin, qmax] (the straight-through estimator, clamp's mask),
    else 0; d/ds is the value on the grid less x / s inside, the clamped end outside. s: one
    step, or one per channel broadcast against x."""

    @staticmethod
    def forward(ctx, x, s, qmin: int, qmax: int):
        v = x / s
        r = torch.round(v)
        c = torch.clamp(r, qmin, qmax)
        inside = c == r
        ctx.save_for_backward(inside, torch.where(inside, c - v, c))
        ctx.step_shape = s.shape
        return c * s

    @staticmethod
    def backward(ctx, grad):
        inside, ds = ctx.saved_tensors
        gx = torch.where(inside, grad, 0.0) if ctx.needs_input_grad[0] else None
        gs = (grad * ds).sum_to_size(ctx.step_shape) if ctx.needs_input_grad[1] else None
        return gx, gs, None, None


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Exactly the value of x, gradient scaled by ``factor`` (LSQ's step-size normalisation).

    ``x.detach() + (y - y.detach())`` keeps x's bits: the fake-quant grid must be the exported one.
    """
    y = x * factor
    return x.detach() + (y - y.detach())


class LsqQuantizer(nn.Module):
    """``bits``-bit quantizer with a learned step size, per tensor or per channel (axis 0)."""

    def __init__(self, bits: int, signed: bool, channels: int = 1):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"quantizer bits {bits} outside 2..16")
        self.qtype = IntType(bits, signed)
        self.channels = channels
        self.scale = nn.Parameter(torch.ones(channels))
        self.register_buffer("initialised", torch.tensor(False))

    @property
    def qmin(self) -> int:
        return self.qtype.qmin

    @property
    def qmax(self) -> int:
        return self.qtype.qmax

    def _shaped(self, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return scale.view(-1, *([1] * (x.dim() - 1))) if self.channels > 1 else scale.view(())

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """LSQ's initial step 2 * mean|x| / sqrt(qmax), per channel where the quantizer has them."""
        if self.channels > 1:
            mean_abs = x.detach().abs().reshape(self.channels, -1).mean(dim=1)
        else:
            mean_abs = x.detach().abs().mean().reshape(1)
        self.scale.copy_((2 * mean_abs / math.sqrt(self.qmax)).clamp_min(1e-8))
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialised):
            self.initialise(x)
        grad_factor = 1.0 / math.sqrt(x.numel() / self.channels * self.qmax)
        s = self._shaped(_scale_grad(self.scale.abs().clamp_min(1e-8), grad_factor), x)
        return _LsqFakeQuant.apply(x, s, self.qmin, self.qmax)

    def step(self) -> torch.Tensor:
        """The step sizes as they are exported (float32, positive)."""
        return self.scale.detach().abs().clamp_min(1e-8).to(torch.float32)

    @torch.no_grad()
    def integer(self, x: torch.Tensor) -> torch.Tensor:
        """The integers ``forward`` puts on the grid, as int64."""
        s = self._shaped(self.step(), x)
        return torch.clamp(torch.round(x.to(torch.float32) / s), self.qmin, self.qmax).to(torch.int64)
