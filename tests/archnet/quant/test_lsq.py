"""LSQ's fake-quant node: the values are the exported grid's, the gradients the composition's."""

from __future__ import annotations

import pytest
import torch

from archnet.quant import lsq


def _composed(q: lsq.LsqQuantizer, x: torch.Tensor) -> torch.Tensor:
    """The quantizer written out op by op, autograd deriving every gradient."""
    factor = 1.0 / (x.numel() / q.channels * q.qmax) ** 0.5
    s = q._shaped(lsq._scale_grad(q.scale.abs().clamp_min(1e-8), factor), x)
    return torch.clamp(lsq.round_ste(x / s), q.qmin, q.qmax) * s


@pytest.mark.parametrize("bits,signed,channels,shape", [
    (4, False, 1, (6, 5, 7, 7)), (4, True, 6, (6, 5, 3, 3)), (2, True, 1, (9, 11)),
    (8, True, 3, (3, 40))])
def test_fake_quant_values_and_gradients_are_the_compositions(bits, signed, channels, shape):
    gen = torch.Generator().manual_seed(bits * 10 + channels)
    q = lsq.LsqQuantizer(bits, signed, channels)
    x = torch.randn(*shape, generator=gen) * 3
    q.initialise(x)
    # values on the grid's ends and exactly between two steps: the mask's and rounding's edges
    step = q.step().reshape(-1)[0]
    x.view(-1)[:4] = torch.tensor([q.qmin, q.qmax, q.qmax + 0.5, 1.5]) * step
    grad = torch.randn(*shape, generator=gen)
    got, want = [], []
    for f, out in ((q.forward, got), (lambda v: _composed(q, v), want)):
        xx = x.clone().requires_grad_()
        q.scale.grad = None
        y = f(xx)
        (y * grad).sum().backward()
        out += [y.detach(), xx.grad, q.scale.grad.clone()]
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[0], q.integer(x).to(torch.float32) * q._shaped(q.step(), x))
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)
