"""A lookup table with a gain holds f(gain * x) / gain on the student's grids: GELU as SiLU of
1.702 x, on ethos-u55-128's integers, equal to the fake-quant forward and near GELU."""

import numpy as np
import torch
import torch.nn.functional as F

from archnet.quant.elementwise import QLookupTable
from archnet.quant.lsq import LsqQuantizer
from archnet.quant.qtensor import QTensor
from archnet.rules.activation import SIGMOID_GELU_GAIN, sigmoid_gelu_error
from simulator.contract import IntType
from simulator.profiles import load_profile


def test_gained_silu_table_is_gelu_on_the_grids():
    arith = load_profile("ethos-u55-128").arithmetic
    s8 = IntType(8, True)
    in_step = 6.0 / 127
    q = torch.arange(s8.qmin, s8.qmax + 1, dtype=torch.int64)
    lut = QLookupTable("silu", LsqQuantizer(8, signed=True), gain=SIGMOID_GELU_GAIN)
    with torch.no_grad():
        lut.output_quant.scale.fill_(6.0 / 127)      # GELU's range on the input's step
        lut.output_quant.initialised.fill_(True)
    out_step = float(lut.output_quant.step())
    ints = lut.integer_forward(QTensor(q, in_step, s8), arith=arith).value
    with torch.no_grad():
        fake = lut(q.double() * in_step) / out_step
    assert (torch.round(fake).to(torch.int64) == ints).float().mean() >= 0.99
    gelu = F.gelu(q.double() * in_step).numpy()
    err = np.abs(ints.numpy() * out_step - gelu)
    # half an output step of rounding plus the approximation's bound, and not plain SiLU
    assert err.max() <= out_step / 2 + sigmoid_gelu_error() + 1e-9
    plain = QLookupTable("silu", lut.output_quant).integer_forward(QTensor(q, in_step, s8),
                                                                    arith=arith).value
    assert np.abs(plain.numpy() * out_step - gelu).max() > 3 * err.max()
