"""Quantized modules whose float fake-quant forward trains and whose integer forward is the chip.

Every module here has three faces: ``forward`` (float, fake-quant, straight-through gradients),
``integer_forward`` (the simulator's arithmetic contract, computed independently in torch int64
and ``simulator.numerics.fixed_point``) and ``export`` (nodes of a simulator Program). Tests
prove the second equals the simulator running the third, element for element.
"""
from archnet.quant.lsq import LsqQuantizer, round_ste
from archnet.quant.qtensor import QTensor

__all__ = ["LsqQuantizer", "QTensor", "round_ste"]
