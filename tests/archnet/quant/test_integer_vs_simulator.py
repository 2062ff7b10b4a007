"""archnet's integer forward equals the simulator running the exported Program, bit for bit."""

import numpy as np
import pytest
import torch

from archnet.quant.elementwise import QAdd, QLookupTable, QMul, QPool2d
from archnet.quant.lsq import LsqQuantizer
from archnet.quant.modules import QConv2d, QFlatten, QInput, QLinear, concat
from simulator.contract import (AccumulatorSpec, ArithmeticSpec, MacOrder, Overflow, RequantMode,
                                RequantSpec, RoundingMode, SaturationPoint)
from simulator.execute import execute
from simulator.ir.builder import ProgramBuilder

SPECS = {
    "tflite_acc32": ArithmeticSpec(AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
                                   RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32)),
    "half_up_acc16_per_mac": ArithmeticSpec(
        AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC, mac_order=MacOrder.KH_KW_CIN),
        RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.HALF_UP, 16)),
    "floor_acc18_tile": ArithmeticSpec(
        AccumulatorSpec(18, Overflow.SATURATE, SaturationPoint.PER_TILE, tile_k=5),
        RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.FLOOR, 12)),
    "wrap_acc20_half_even": ArithmeticSpec(AccumulatorSpec(20, Overflow.WRAP),
                                           RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.HALF_EVEN, 24)),
    "onnx_float": ArithmeticSpec(AccumulatorSpec(32, Overflow.WRAP),
                                 RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN)),
}


class TinyStudent(torch.nn.Module):
    """input -> conv -> pool -> [x, conv(x)] concat -> conv s2 -> fc: every module kind once."""

    def __init__(self, w_bits, a_bits):
        super().__init__()
        self.inp = QInput()
        self.c1 = QConv2d(1, 4, w_bits=w_bits, a_bits=a_bits)
        self.pool = QPool2d("max", (2, 2), (2, 2), (0, 0), None)
        self.c2 = QConv2d(4, 4, w_bits=w_bits, a_bits=a_bits, output_quant=self.c1.output_quant)
        self.c3 = QConv2d(8, 8, stride=2, w_bits=w_bits, a_bits=a_bits)
        self.flat = QFlatten()
        self.fc = QLinear(8 * 4 * 4, 10, w_bits=w_bits, a_bits=8)

    def forward(self, x):
        h = self.pool(self.c1(self.inp(x)))
        h = self.c3(torch.cat([h, self.c2(h)], dim=1))
        return self.fc(self.flat(h))

    def integer_forward(self, x, arith):
        h = self.pool.integer_forward(self.c1.integer_forward(self.inp.integer_forward(x), arith),
                                      arith)
        h = self.c3.integer_forward(concat([h, self.c2.integer_forward(h, arith)]), arith)
        return self.fc.integer_forward(self.flat.integer_forward(h), arith)

    def export(self, shape):
        b = ProgramBuilder("tiny")
        x = self.inp.export(b, shape)
        h = self.pool.export(b, self.c1.export(b, x, "c1"), "pool")
        cat = b.node("concat", [h, self.c2.export(b, h, "c2")], "cat", axis=1)
        h = self.flat.export(b, self.c3.export(b, cat, "c3"), "flat")
        b.output(self.fc.export(b, h, "fc"))
        return b.build()


@pytest.fixture(scope="module", params=[(8, 8), (4, 4), (2, 4)], ids=["8w8a", "4w4a", "2w4a"])
def trained(request):
    torch.manual_seed(0)
    model = TinyStudent(*request.param)
    images = torch.rand(6, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):  # move weights and scales off their initial values
        loss = model(images).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():
        if getattr(m, "bn", None) is not None:
            m.bn.running_mean.uniform_(-0.1, 0.1)
            m.bn.running_var.uniform_(0.5, 2.0)
    return model.eval(), images


@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_integer_forward_equals_simulator(trained, spec):
    model, images = trained
    arith = SPECS[spec]
    program = model.export((6, 1, 16, 16))
    with torch.no_grad():
        ours = model.integer_forward(images, arith)
    x_int = QInput().integer_forward(images).value.numpy().astype(np.uint8)
    for backend in ("reference", "kernels"):
        sim = execute(program, arith, {"image": x_int}, backend=backend).outputs["fc"]
        assert np.array_equal(ours.value.numpy(), sim), backend


def test_fake_quant_tracks_integer_layer_by_layer(trained):
    """On the same input grid a layer's fake-quant and integer outputs share grid and rounding:
    they differ by at most one step, where bias rounding or the requantization multiplier moves
    a value across a rounding boundary. Across layers the gap compounds and is measured, not
    assumed (archnet verify reports it)."""
    model, images = trained
    arith = SPECS["tflite_acc32"]
    with torch.no_grad():
        x_int = model.inp.integer_forward(images)
        fake = model.c1(x_int.dequantize().float())
        real = model.c1.integer_forward(x_int, arith)
    step = float(model.c1.output_quant.step())
    # fake-quant values are integers times the step, up to float32's rounding of the product
    # (relative 2**-24: on an 8-bit grid, up to 255 * 2**-24 off an integer)
    on_grid = fake.double() / step
    fake_int = torch.round(on_grid)
    assert ((on_grid - fake_int).abs() <= fake_int.abs() * 2.0 ** -23 + 1e-9).all()
    gap = (fake_int - real.value.double()).abs()
    assert gap.max() <= 1
    assert (gap == 0).double().mean() > 0.9


def test_exported_weights_are_the_trained_grid(trained):
    model, _ = trained
    program = model.export((6, 1, 16, 16))
    w = program.tensors["c1.weight"]
    assert w.dtype.bits == model.c1.weight_quant.qtype.bits and w.axis == 0
    folded, _ = model.c1.folded()
    assert np.array_equal(w.data, model.c1.weight_quant.integer(folded).numpy())


class GeneralStudent(torch.nn.Module):
    """The ops the chip-driven converter keeps native: a 5x5/2 conv, a dilated conv, a
    depthwise conv, SiLU on the table unit, a residual add, a squeeze-excitation mul,
    average and 3x3/2 padded max pooling."""

    def __init__(self, w_bits, a_bits):
        super().__init__()
        kw = dict(w_bits=w_bits, a_bits=a_bits, batch_norm=False)
        self.inp = QInput()
        self.stem = QConv2d(1, 8, 5, 2, padding=2, **kw)
        self.dil = QConv2d(8, 8, 3, 1, padding=2, dilation=2, relu=False, **kw)
        self.dw = QConv2d(8, 8, 3, 1, groups=8, relu=False, **kw)
        self.act = QLookupTable("silu", LsqQuantizer(a_bits, signed=True))
        self.add = QAdd(LsqQuantizer(a_bits, signed=False), relu=True)
        self.gate = QConv2d(8, 8, 1, 1, relu=True, **kw)
        self.mul = QMul(LsqQuantizer(a_bits, signed=False))
        self.avg = QPool2d("avg", (2, 2), (2, 2), (0, 0), self.mul.output_quant)
        self.max = QPool2d("max", (3, 3), (2, 2), (1, 1), None)
        self.flat = QFlatten()
        self.fc = QLinear(8 * 2 * 2, 10, w_bits=w_bits, a_bits=8)

    def forward(self, x):
        h = self.stem(self.inp(x))
        r = self.add(h, self.act(self.dw(self.dil(h))))
        g = self.gate(r.mean(dim=(2, 3), keepdim=True))
        h = self.max(self.avg(self.mul(r, g)))
        return self.fc(self.flat(h))

    def integer_forward(self, x, arith):
        from archnet.student import QGlobalAvgPool2d
        h = self.stem.integer_forward(self.inp.integer_forward(x), arith)
        a = self.act.integer_forward(self.dw.integer_forward(self.dil.integer_forward(h, arith),
                                                              arith), arith=arith)
        r = self.add.integer_forward(h, a, arith=arith)
        pooled = QGlobalAvgPool2d(self.add.output_quant).integer_forward(r, arith)
        g = self.gate.integer_forward(pooled, arith)
        h = self.mul.integer_forward(r, g, arith=arith)
        h = self.max.integer_forward(self.avg.integer_forward(h, arith), arith)
        return self.fc.integer_forward(self.flat.integer_forward(h), arith)

    def export(self, shape):
        b = ProgramBuilder("general")
        x = self.inp.export(b, shape)
        h = self.stem.export(b, x, "stem")
        a = self.act.export(b, [self.dw.export(b, self.dil.export(b, h, "dil"), "dw")], "act")
        r = self.add.export(b, [h, a], "add")
        pooled = b.node("global_avgpool2d", [r], "gap")
        g = self.gate.export(b, pooled, "gate")
        h = self.max.export(b, self.avg.export(b, self.mul.export(b, [r, g], "mul"), "avg"), "max")
        b.output(self.fc.export(b, self.flat.export(b, h, "flat"), "fc"))
        return b.build()


@pytest.mark.parametrize("bits", [(8, 8), (4, 4)], ids=["8w8a", "4w4a"])
@pytest.mark.parametrize("spec", SPECS)
def test_general_ops_integer_forward_equals_simulator(bits, spec):
    torch.manual_seed(1)
    model = GeneralStudent(*bits)
    images = torch.rand(4, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        loss = model(images).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    arith = SPECS[spec]
    with torch.no_grad():
        ours = model.integer_forward(images, arith)
    x_int = QInput().integer_forward(images).value.numpy().astype(np.uint8)
    program = model.export((4, 1, 16, 16))
    for backend in ("reference", "kernels"):
        sim = execute(program, arith, {"image": x_int}, backend=backend).outputs["fc"]
        assert np.array_equal(ours.value.numpy(), sim), backend


@pytest.mark.parametrize("acc", [AccumulatorSpec(32, Overflow.WRAP),
                                 AccumulatorSpec(16, Overflow.WRAP),
                                 AccumulatorSpec(20, Overflow.SATURATE, SaturationPoint.FINAL)],
                         ids=["wrap32", "wrap16", "saturate20"])
@pytest.mark.parametrize("x_bits", [4, 8, 16], ids=lambda b: f"x{b}")
def test_mac_sums_equal_the_reference_on_both_exact_paths(acc, x_bits):
    """conv2d, linear and matmul of integers, as archnet computes them (float32 below 2**24,
    float64 above, nothing wrapped when the accumulator holds every sum), equal the simulator's
    reference under wrap and saturation alike."""
    from archnet.quant import integer
    from simulator.numerics import reference
    gen = np.random.default_rng(x_bits)
    hi = 2 ** (x_bits - 1)
    x = gen.integers(-hi, hi, (2, 6, 7, 7))
    w = gen.integers(-128, 128, (4, 3, 3, 3))
    bias = gen.integers(-2 ** 20, 2 ** 20, 4)
    ours = integer.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias),
                          (2, 1), (1, 0), acc, dilation=(1, 2), groups=2)
    ref, _ = reference.conv2d(x, w, bias, 0, 0, (2, 1), [1, 0, 1, 0], (1, 2), 2, acc)
    assert np.array_equal(ours.numpy(), ref)
    a, wl = gen.integers(-hi, hi, (5, 300)), gen.integers(-128, 128, (3, 300))
    ours = integer.linear(torch.from_numpy(a), torch.from_numpy(wl), torch.from_numpy(bias[:3]), acc)
    assert np.array_equal(ours.numpy(), reference.fully_connected(a, wl, bias[:3], 0, 0, acc)[0])
    b = gen.integers(-hi, hi, (2, 300, 4))
    ours = integer.matmul(torch.from_numpy(a[None].repeat(2, 0)), torch.from_numpy(b), acc)
    assert np.array_equal(ours.numpy(), reference.matmul(a[None].repeat(2, 0), b, 0, 0, acc)[0])
