"""An integer tensor with its real scale: what flows through the integer-emulation forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulator.contract import IntType


@dataclass
class QTensor:
    value: torch.Tensor  # int64, on the integer grid of ``dtype``
    scale: float         # real value = value * scale (zero point 0: activations follow ReLU)
    dtype: IntType

    def dequantize(self) -> torch.Tensor:
        return self.value.to(torch.float64) * self.scale

    def __post_init__(self) -> None:
        if self.value.dtype != torch.int64:
            raise TypeError(f"QTensor holds int64, got {self.value.dtype}")
