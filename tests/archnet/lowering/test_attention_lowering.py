"""Attention on the shared pipeline: a patch-embedding conv, token rows through fully connected
layers, scaled scores (matmul of two activations), softmax, a context matmul, transposes and a
residual add lower to student steps that start as the teacher in float, hold only ops the chip
runs, and whose integers equal the simulator's."""

import math

import pytest
import torch
from torch import nn

from archnet.capture import capture
from archnet.lowering import assert_deployable, calibrate_activations
from archnet.lowering.graph import build_graph_student
from archnet.rules import plan_conversion
from lowering_helpers import simulator_block_outputs
from simulator.profiles import load_profile

CHIPS = ("ethos-u55-128", "rk3588-npu-core")


def without_mean(profile):
    """``profile`` without a mean op: no ``layer_norm.per_token``; with ``layer_norm="fixed"``
    the paper's affine is chosen (``layer_norm.per_token_fc`` would fit otherwise)."""
    from dataclasses import replace
    from types import MappingProxyType
    ops = dict(profile.ops)
    ops["mean"] = replace(ops["mean"], supported=False)
    return replace(profile, ops=MappingProxyType(ops))


class TinyAttention(nn.Module):
    """Patches of 4x4 as tokens, one self-attention layer with two heads, a linear head."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(16 * dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)              # [B, 16, dim]
        b, n, d = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim))
        ctx = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        t = t + self.proj(ctx)
        return self.head(t.flatten(1))


class TinyAttentionSplit(TinyAttention):
    """The same with separate query, key and value layers (no 5-D tensor)."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__(dim, heads)
        del self.qkv
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        b, n, d = t.shape
        q, k, v = (m(t).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for m in (self.q, self.k, self.v))
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim))
        ctx = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        t = t + self.proj(ctx)
        return self.head(t.flatten(1))


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    model = TinyAttentionSplit().eval()
    return model, capture(model, (torch.rand(1, 1, 16, 16),))


@pytest.mark.parametrize("chip", CHIPS)
def test_attention_starts_as_the_teacher(attention, chip):
    model, graph = attention
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (8, 8))
    fired = plan.rules_fired()
    assert fired["matmul.native"] == 2 and fired["softmax.native"] == 1
    assert fired["mul.requantize_scale"] == 1          # 1/sqrt(d) folds into the scores' matmul
    student, low = build_graph_student(graph, plan, profile)
    kinds = [s["kind"] for b in low.config["blocks"] for s in b["steps"]]
    assert kinds.count("matmul") == 2 and kinds.count("softmax") == 1
    assert "transpose" in kinds
    x = torch.rand(3, 1, 16, 16)
    teacher = graph.values(x, keep=set(low.taps))
    for block, feature, tap in zip(student.blocks, student.features(x, quantize=False), low.taps):
        assert torch.allclose(feature, teacher[tap], atol=1e-4), block.name
    assert torch.allclose(student(x, quantize=False), model(x), atol=1e-4)
    assert_deployable(student, profile)


@pytest.mark.parametrize("chip", CHIPS)
def test_attention_integers_equal_the_simulator(attention, chip):
    _, graph = attention
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (8, 8))
    student, _ = build_graph_student(graph, plan, profile)
    images = torch.rand(6, 1, 16, 16)
    calibrate_activations(student, images, seed=0)
    student.eval()
    logits = simulator_block_outputs(student, images, profile)["logits"]
    # the fake-quant student follows its integers: the same predictions
    with torch.no_grad():
        fq = student(images).argmax(1).numpy()
    assert (fq == logits.argmax(1)).mean() >= 5 / 6


def test_an_attention_network_converts_bit_exactly(tmp_path):
    """``archnet.convert`` end to end: the 4x4/4 patch conv Ethos-U55 lacks becomes two exact
    stride-2 convs, attention stays native, and the run's integers equal the simulator's."""
    import json

    import archnet
    torch.manual_seed(0)
    images = torch.rand(48, 1, 16, 16)
    summary = archnet.convert(TinyAttention().eval(), images[:1], images, chip="ethos-u55-128",
                              out=str(tmp_path / "run"), bits="8w8a", steps_per_period=2,
                              batch_size=16, log=lambda *a: None)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    fired = summary["plan"]["rules_fired"]
    assert fired["conv2d.patchify_2x2"] == 1 and fired["softmax.native"] == 1
    saved = json.loads((tmp_path / "run" / "convert.json").read_text())
    assert saved["plan"]["student_fallbacks"] == 0


class TinyPreNorm(nn.Module):
    """A pre-LayerNorm Transformer layer on 4x4 patches: LayerNorm, attention, LayerNorm, GELU
    MLP, both with residual adds (a ViT block without class token or positions)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TinyAttentionSplit(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(16 * dim, 10)

    def _attend(self, t):
        a = self.attn
        b, n, d = t.shape
        q, k, v = (m(t).reshape(b, n, a.heads, a.head_dim).transpose(1, 2)
                   for m in (a.q, a.k, a.v))
        ctx = ((q @ k.transpose(-2, -1) * (1.0 / math.sqrt(a.head_dim))).softmax(-1) @ v)
        return a.proj(ctx.transpose(1, 2).reshape(b, n, d))

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self._attend(self.norm1(t))
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm2(t))))
        return self.head(t.flatten(1))


def _prenorm_with_affine():
    """TinyPreNorm whose first LayerNorm has a scale and shift far from 1 and 0, and its graph."""
    torch.manual_seed(0)
    model = TinyPreNorm().eval()
    with torch.no_grad():
        model.norm1.weight.uniform_(0.5, 1.5)
        model.norm1.bias.uniform_(-0.5, 0.5)
    return model, capture(model, (torch.rand(1, 1, 16, 16),))


def test_layer_norm_becomes_a_fixed_statistics_affine():
    """LayerNorm -> one per-channel affine step whose statistics calibration fixes to the data's
    (the paper's replacement); the student keeps LayerNorm's own scale and shift, and its
    integers equal the simulator's."""
    from archnet.lowering import calibrate_batchnorm
    model, graph = _prenorm_with_affine()
    profile = without_mean(load_profile("ethos-u55-128"))
    plan = plan_conversion(graph, profile, (8, 8), layer_norm="fixed")
    fired = plan.rules_fired()
    assert fired["layer_norm.fixed_affine"] == 2 and fired["gelu.native"] == 1
    student, low = build_graph_student(graph, plan, profile)
    affines = [(b, s["name"]) for b in student.blocks for s in b.spec["steps"]
               if s["kind"] == "channel_affine" and not s.get("narrows")]
    assert len(affines) == 2
    images = torch.rand(12, 1, 16, 16)
    assert len(calibrate_batchnorm(student, images)) == 2
    block, name = affines[0]
    bn = block.layers[name].bn
    assert torch.allclose(bn.weight, model.norm1.weight) and torch.allclose(bn.bias, model.norm1.bias)
    tokens = model.patch(images).flatten(2).transpose(1, 2).reshape(-1, 16)
    assert torch.allclose(bn.running_mean, tokens.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, tokens.var(0, unbiased=False), atol=1e-4)
    calibrate_activations(student, images, seed=0)
    assert_deployable(student, profile)
    simulator_block_outputs(student, images, profile)


def test_layer_norm_is_normalised_per_token_from_fully_connected_layers_on_rk3588(tmp_path):
    """RK3588 has no mean, sub, broadcast mul or rsqrt table: LayerNorm per token from its
    fully connected layers, add, mul and sigmoid table (``layer_norm.per_token_fc``), ranked
    above the fixed statistics; prepared as a conversion prepares it, in float within the
    fitted rsqrt's tolerance of the teacher and its fake-quant close to that (the form is
    calibrated before the fits read the float path), on the chip's integers within 1 % of
    LayerNorm, and a converted run is bit-exact with no host op."""
    import archnet
    from archnet.quant.norm_fc import RSQRT_TOLERANCE
    from archnet.quant.qtensor import QTensor
    from simulator.contract import IntType
    model, graph = _prenorm_with_affine()
    profile = load_profile("rk3588-npu-core")
    plan = plan_conversion(graph, profile, (8, 8))
    norms = [d for d in plan.decisions if d.op == "layer_norm"]
    assert [d.rule for d in norms] == ["layer_norm.per_token_fc"] * 2
    assert "cheapest approximate" in norms[0].reason
    student, low = build_graph_student(graph, plan, profile)
    images = torch.rand(24, 1, 16, 16)
    from archnet.distill.inputs import as_inputs
    from archnet.lowering.prepare import prepare_student
    prepare_student(student, as_inputs(images), torch.arange(24), graph)
    with torch.no_grad():
        want_out = model(images)
        for quantize in (False, True):
            got_out = student(images, quantize=quantize)
            assert float((got_out - want_out).norm() / want_out.norm()) < 0.05, quantize
    # at 4w4a the smoothing of the narrowed inputs reads the form's float output: calibrated
    # first, the fake-quant student is 0.17 off the teacher (read unfitted, the form refuses)
    narrow, _ = build_graph_student(graph, plan_conversion(graph, profile, (4, 4)), profile)
    prepare_student(narrow, as_inputs(images), torch.arange(24), graph)
    with torch.no_grad():
        assert float((narrow(images) - want_out).norm() / want_out.norm()) < 0.25
    norm = next(s for b in student.blocks for s in b.spec["steps"]
                if s["kind"] == "token_norm_fc")
    module = next(b for b in student.blocks if norm in b.spec["steps"]).layers[norm["name"]]
    assert float(module.rsqrt_error) <= RSQRT_TOLERANCE
    tokens = model.patch(images).flatten(2).transpose(1, 2).detach()
    want = model.norm1(tokens).detach().double()
    with torch.no_grad():
        assert float((module.float_forward(tokens) - want).abs().max()) <= \
            2 * RSQRT_TOLERANCE * float(want.abs().max())
    scale = float(tokens.abs().max()) / 127
    q = QTensor(torch.round(tokens / scale).to(torch.int64), scale, IntType(8, True))
    got = module.integer_forward(q, profile.arithmetic).dequantize()
    want = model.norm1(q.dequantize().float()).detach().double()
    err = (got - want).abs().max(dim=-1).values / want.abs().max(dim=-1).values
    assert float(err.max()) <= 0.01     # per token, of its largest value (0.2 % seen)
    assert_deployable(student, profile)
    simulator_block_outputs(student, images, profile)
    summary = archnet.convert(model, images[:1], images, chip="rk3588-npu-core",
                              out=str(tmp_path / "run"), bits="8w8a", steps_per_period=2,
                              batch_size=12, log=lambda *a: None)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    assert summary["plan"]["rules_fired"]["layer_norm.per_token_fc"] == 2


@pytest.mark.parametrize("chip", ["ethos-u55-128", "ethos-u85-256"])
def test_layer_norm_is_normalised_per_token_where_the_chip_has_the_ops(chip, tmp_path):
    """On Ethos-U (mean, sub, minimum, broadcast mul, interpolated 16-bit tables) LayerNorm
    stays LayerNorm: the per-token form, exact in float, whose integers equal the simulator's
    and stay close to the teacher's LayerNorm before any training; a converted run is
    bit-exact with no host op."""
    import archnet
    model, graph = _prenorm_with_affine()
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (8, 8))
    assert plan.rules_fired()["layer_norm.per_token"] == 2
    student, low = build_graph_student(graph, plan, profile)
    images = torch.rand(24, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(student(images, quantize=False), model(images), atol=1e-4)
    calibrate_activations(student, images, seed=0)
    assert_deployable(student, profile)
    simulator_block_outputs(student, images, profile)
    # the normalisation itself on the chip's integers: within a few output steps of LayerNorm
    norm = next(s for b in student.blocks for s in b.spec["steps"] if s["kind"] == "token_norm")
    block = next(b for b in student.blocks if norm in b.spec["steps"])
    module = block.layers[norm["name"]]
    tokens = model.patch(images).flatten(2).transpose(1, 2).detach()
    from archnet.quant.qtensor import QTensor
    from simulator.contract import IntType
    scale = float(tokens.abs().max()) / 32767
    q = QTensor(torch.round(tokens / scale).to(torch.int64), scale, IntType(16, True))
    got = module.integer_forward(q, profile.arithmetic).dequantize()
    want = model.norm1(tokens).detach().double()
    assert float((got - want).abs().max()) <= 4 * float(module.output_quant.step())
    summary = archnet.convert(model, images[:1], images, chip=chip, out=str(tmp_path / "run"),
                              bits="8w8a", steps_per_period=2, batch_size=12, log=lambda *a: None)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    assert (summary["layer_norm"], summary["stream_bits"], summary["stream_width"]) == \
        ("auto", None, 16)
    # the paper's form on an 8-bit stream, when asked: recorded, and bit-exact too
    summary = archnet.convert(model, images[:1], images, chip=chip, out=str(tmp_path / "fixed"),
                              bits="8w8a", layer_norm="fixed", stream_bits=8, steps_per_period=2,
                              batch_size=12, log=lambda *a: None)
    assert (summary["layer_norm"], summary["stream_bits"]) == ("fixed", 8)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    assert summary["stream_width"] == 8 and "layer_norm.per_token" not in \
        summary["plan"]["rules_fired"]


def test_layer_norm_per_token_needs_every_piece():
    """Without a mean (or a sub, a minimum, interpolated tables) the chip cannot normalise per
    token: the plan names why and falls back to the paper's affine."""
    torch.manual_seed(0)
    graph = capture(TinyPreNorm().eval(), (torch.rand(1, 1, 16, 16),))
    plan = plan_conversion(graph, without_mean(load_profile("ethos-u55-128")), (8, 8))
    decision = next(d for d in plan.decisions if d.op == "layer_norm")
    assert decision.rule != "layer_norm.per_token"
    per_token = next(c for c in decision.candidates if c.rule == "layer_norm.per_token")
    assert not per_token.fits and "ops.mean.supported = false" in per_token.why_not


class TinyPositions(TinyPreNorm):
    """TinyPreNorm with a learned position table added to the patch tokens (as a ViT's)."""

    def __init__(self, dim: int = 16):
        super().__init__(dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        t = t + self._attend(self.norm1(t))
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm2(t))))
        return self.head(t.flatten(1))


@pytest.mark.parametrize("chip", CHIPS)
def test_a_position_table_is_a_learned_constant_operand(chip, tmp_path):
    """The position table stays the chip's add of a constant, shared by the batch: a student
    constant starting at the teacher's table, and the converted run is bit-exact."""
    import archnet
    torch.manual_seed(0)
    model = TinyPositions().eval()
    graph = capture(model, (torch.rand(1, 1, 16, 16),))
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (8, 8))
    student, low = build_graph_student(graph, plan, profile)
    consts = [(b, s["name"]) for b in student.blocks for s in b.spec["steps"]
              if s["kind"] == "constant"]
    assert len(consts) == 1
    block, name = consts[0]
    assert torch.equal(block.layers[name].value, model.pos.detach())
    images = torch.rand(48, 1, 16, 16)
    summary = archnet.convert(model, images[:1], images, chip=chip, out=str(tmp_path / "run"),
                              bits="8w8a", steps_per_period=2, batch_size=16, log=lambda *a: None)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0


@pytest.mark.parametrize("k, rule", [(8, "conv2d.patchify_2x2_x2"), (16, "conv2d.patchify_2x2_x3")])
def test_a_large_patch_conv_is_exact_space_to_depth_stages(k, rule):
    """ViT's 16x16/16 patch embedding on a chip whose conv strides stop at 3: space-to-depth
    2x2/2 copies, then a 2x2/2 conv with the weights moved onto the copies' channels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, k, stride=k), nn.Flatten(),
                          nn.Linear(5 * (32 // k) ** 2, 4)).eval()
    graph = capture(model, (torch.rand(1, 3, 32, 32),))
    profile = load_profile("ethos-u55-128")
    plan = plan_conversion(graph, profile, (8, 8))
    assert plan.decisions[0].rule == rule
    student, _ = build_graph_student(graph, plan, profile)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(student(x, quantize=False), model(x), atol=1e-5)
    assert_deployable(student, profile)


def test_layer_norm_replacements_are_fitted_to_the_teacher():
    """With the statistics fixed, each channel's scale and shift fitted by least squares to the
    teacher's LayerNorm output: the student's values move closer to the teacher's."""
    from archnet.lowering import calibrate_batchnorm
    from archnet.lowering.fits import fit_layer_norms
    torch.manual_seed(0)
    model = TinyPreNorm().eval()
    graph = capture(model, (torch.rand(1, 1, 16, 16),))
    profile = without_mean(load_profile("ethos-u55-128"))
    student, low = build_graph_student(graph, plan_conversion(graph, profile, (8, 8), layer_norm="fixed"),
                                       profile)
    images = torch.rand(32, 1, 16, 16)
    calibrate_batchnorm(student, images)
    norm = next(n.name for n in graph.nodes if n.op == "layer_norm")
    block = next(b for b in student.blocks
                 if any(s.get("teacher_node") == norm for s in b.spec["steps"]))
    step = next(s["name"] for s in block.spec["steps"] if s.get("teacher_node") == norm)
    index = list(student.blocks).index(block)

    def error():
        with torch.no_grad():
            x = images
            for b in list(student.blocks)[:index]:
                x = b(x, quantize=False)
            got = block.trace(x, quantize=False)[step]
        return float((got - graph.values(images, keep={norm})[norm]).pow(2).mean())
    before = error()
    assert fit_layer_norms(student, graph, (images,)) == 2
    assert error() < before


def test_a_fitted_layer_norm_keeps_its_values_on_the_weight_grid():
    """Calibration and the fit move a LayerNorm replacement's folded weights (1/sigma times the
    fitted scale, far from the identity it was built as): its weight steps follow, so the
    fake-quant affine equals the float one up to the output grid (no clipped weights)."""
    from archnet.lowering import calibrate_batchnorm
    from archnet.lowering.fits import fit_layer_norms
    from archnet.quant.modules import QChannelAffine
    torch.manual_seed(0)
    model = TinyPreNorm().eval()
    with torch.no_grad():       # LayerNorm scales far from 1, as trained models have
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.mul_(8.0)
    graph = capture(model, (torch.rand(1, 1, 16, 16),))
    profile = without_mean(load_profile("ethos-u55-128"))
    student, _ = build_graph_student(graph, plan_conversion(graph, profile, (8, 8), layer_norm="fixed"),
                                       profile)
    images = torch.rand(32, 1, 16, 16) * 0.1
    calibrate_batchnorm(student, images)
    fit_layer_norms(student, graph, (images,))
    checked = 0
    for block in student.blocks:
        narrows = {s["name"] for s in block.spec["steps"] if s.get("narrows")}
        for name, m in block.layers.items():
            if isinstance(m, QChannelAffine) and name not in narrows:
                weight, _ = m.folded()
                assert torch.allclose(m.weight_quant(weight), weight, rtol=1e-2), name
                checked += 1
    assert checked == 2


class TinyViT(TinyPreNorm):
    """A ViT in miniature: 4x4 patches, a class token concatenated before them, positions, one
    pre-LayerNorm block (attention, GELU MLP), the head reading the class token (``x[:, 0]``)."""

    def __init__(self, dim: int = 16):
        super().__init__(dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self._attend(self.norm1(t))
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm2(t))))
        return self.head(t[:, 0])


@pytest.mark.parametrize("chip", CHIPS)
def test_a_class_token_and_its_readout_convert_bit_exactly(chip, tmp_path):
    """The class token is a learned constant concatenated to every sample's tokens (on the
    tokens' grid, copied per sample in the Program: the chip's concat does not broadcast); the
    head's ``x[:, 0]`` is a fully connected layer with 0/1 weights over the flattened tokens.
    The student starts as the teacher in float, its integers equal the simulator's, and a
    converted run is bit-exact with no host op."""
    import archnet
    torch.manual_seed(0)
    model = TinyViT().eval()
    graph = capture(model, (torch.rand(1, 1, 16, 16),))
    profile = load_profile(chip)
    plan = plan_conversion(graph, profile, (8, 8))
    fired = plan.rules_fired()
    assert fired["cat.native"] == 1 and fired["select.fully_connected"] == 1
    student, _ = build_graph_student(graph, plan, profile)
    images = torch.rand(12, 1, 16, 16)
    with torch.no_grad():
        want = model(images)
        assert want.std(0).min() > 1e-3          # the class token read what the patches said
        if "layer_norm.per_token" in fired:      # every form exact: the student is the teacher
            assert torch.allclose(student(images, quantize=False), want, atol=1e-4)
    calibrate_activations(student, images, seed=0)
    assert_deployable(student, profile)
    simulator_block_outputs(student, images, profile)
    summary = archnet.convert(model, images[:1], images, chip=chip, out=str(tmp_path / "run"),
                              bits="8w8a", steps_per_period=2, batch_size=6, log=lambda *a: None)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    # the Program file, re-batched as ``archnet verify`` runs it: each sample's logits are the
    # ones it gets alone
    import numpy as np

    from archnet.student_program import rebatch
    from simulator.execute import execute
    from simulator.ir.program import load_program
    program = load_program(tmp_path / "run" / "model.program")
    x = program.tensors[program.inputs[0]]
    ints = np.clip(np.round(images.numpy() / x.scale[0]) + x.zp_scalar, x.dtype.qmin,
                   x.dtype.qmax).astype(np.int64)
    run = {n: execute(rebatch(program, n), profile.arithmetic, {program.inputs[0]: v}, trace=False)
           .outputs[program.outputs[0]] for n, v in ((5, ints[:5]), (1, ints[3:4]))}
    assert run[5].shape[0] == 5 and np.array_equal(run[5][3:4], run[1])
    # the report's per-layer error compares the traced class token with its copies
    from archnet.report.collect import open_run
    from archnet.report.measure import layer_errors
    rows = layer_errors(open_run(tmp_path / "run"), profile, images[:3])
    assert rows and max(r.rel_error for r in rows) < 0.5


def test_the_planned_per_token_form_is_the_chain_the_student_exports():
    """The rule probes the ops ``QTokenNorm.export`` writes, in its order: what the chip is
    asked about is what it will run (and the student's op summary lists the same)."""
    from archnet.quant import norm, norm_fc
    from archnet.rules.forms import Form, add_form
    from archnet.rules.norm import _per_token_fc_steps, _per_token_steps
    from simulator.ir.builder import ProgramBuilder
    for module, steps in ((norm.QTokenNorm, _per_token_steps),
                          (norm_fc.QTokenNormFc, _per_token_fc_steps)):
        ops = []
        for student in (True, False):
            b = ProgramBuilder("norm", {"estimate_only": not student})
            x = b.input("x", (2, 5, 16), "s8", scale=0.1)
            if student:
                module(16).export(b, x, "y")
            else:
                add_form(b, Form("p", "", steps((2, 5, 16), (2, 5, 16))), [x], (8, 8), "p")
            ops.append(tuple(n.op.value for n in b.nodes))
        assert ops[0] == ops[1] == (norm.OPS if module is norm.QTokenNorm else norm_fc.OPS)
