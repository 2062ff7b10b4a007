"""Activation widths per grid (``archnet/lowering/widths.py``): below 8-bit activations, a
Transformer's residual stream, attention operands and table inputs keep 8-bit grids and each MAC
reads its 4-bit input through one per-channel requantize; the student still equals the teacher
in float and the simulator bit for bit; CNNs without such ops keep every grid at ``a_bits``."""

import pytest
import torch
from torch import nn

from lowering_helpers import simulator_block_outputs

from archnet.capture import capture
from archnet.lowering import calibrate_activations, calibrate_batchnorm
from archnet.lowering.fits import fit_layer_norms
from archnet.lowering.graph import build_graph_student, lower_plan
from archnet.lowering.widths import STREAM_BITS, WIDE_BITS
from archnet.rules import plan_conversion
from simulator.profiles import load_profile

transformers = pytest.importorskip("transformers")


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32,
                                         max_position_embeddings=16, attn_implementation="eager")
        self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    def forward(self, ids, mask):
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def _inputs(n: int = 32, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (n, 8), generator=gen)
    mask = torch.ones(n, 8, dtype=torch.long)
    mask[::3, 5:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def encoder():
    model = _Encoder().eval()
    ids, mask = _inputs(1)
    return capture(model, (ids, mask))


def _bits_read(config):
    """Per step: the widths of the grids it reads (through views), and the step itself."""
    q = config["quantizers"]
    for block in config["blocks"]:
        by_name = {s["name"]: s for s in block["steps"]}

        def grid_of(ref):
            while ref in by_name and "quant" not in by_name[ref]:
                ref = by_name[ref]["inputs"][0]
            if ref.startswith("side:"):          # a view of a side input (the key mask)
                return None
            return by_name[ref]["quant"] if ref in by_name else block["input_quant"]
        for st in block["steps"]:
            reads = [q[grid_of(r)]["bits"] if grid_of(r) in q else None
                     for r in st["inputs"] if not r.startswith("side:")]
            yield st, reads, q.get(st.get("quant"), {}).get("bits")


@pytest.mark.parametrize("stream", [None, 8])
def test_an_encoder_at_4w4a_keeps_its_stream_and_attention_on_wide_grids(encoder, stream):
    """At 4w4a the residual stream is 16-bit on Ethos-U55 (it runs 16-bit activations; 8 when
    asked), attention and tables 8-bit; every MAC reads a 4-bit per-channel copy."""
    profile = load_profile("ethos-u55-128")
    stream_bits = stream or STREAM_BITS
    plan = plan_conversion(encoder, profile, (4, 4), stream_bits=stream)
    config = lower_plan(encoder, plan, profile).config
    readers_of = {}
    for st, reads, writes in _bits_read(config):
        if st["kind"] == "linear" and st["in_features"] != 40:      # not the one-hot table
            assert reads == [4], st["name"]
            readers_of.setdefault(st["inputs"][0], []).append(st["name"])
        if st["kind"] in ("matmul", "lut", "softmax"):
            assert all(b == WIDE_BITS for b in reads if b is not None), st["name"]
            assert writes == WIDE_BITS, st["name"]
        if st["kind"] == "add":                  # the stream: LayerNorm's output and its sums
            assert reads == [stream_bits, stream_bits], st["name"]
    requantizes = [s for s in readers_of if s.endswith("_narrow")]
    # per layer: the query, key and value layers share one; the attention output and both FFN
    # layers have their own
    assert sorted(len(readers_of[s]) for s in requantizes) == [1] * 6 + [3, 3]
    # the embedding's rows, looked up by the host, are the values of the stream's first sum
    tables = [(st, writes) for st, reads, writes in _bits_read(config) if st["kind"] == "embedding"]
    assert [writes for _, writes in tables] == [stream_bits]
    one_hot = lower_plan(encoder, plan_conversion(encoder, profile, (4, 4), stream_bits=stream,
                                                  embedding="one_hot"), profile).config
    tables = [st for b in one_hot["blocks"] for st in b["steps"]
              if st["kind"] == "linear" and st["in_features"] == 40]
    assert [st["w_bits"] for st in tables] == [WIDE_BITS]   # the one-hot table's values


def test_an_encoder_at_4w4a_is_the_teacher_in_float_and_the_simulator_in_integers(encoder):
    profile = load_profile("ethos-u55-128")
    student4, _ = build_graph_student(encoder, plan_conversion(encoder, profile, (4, 4)), profile)
    student8, _ = build_graph_student(encoder, plan_conversion(encoder, profile, (8, 8)), profile)
    ids, mask = _inputs()            # the students read token ids (the embedding's gather)
    side = {encoder.inputs[1]: mask.float()}
    with torch.no_grad():    # the requantizes start as the identity
        for a, b in zip(student4.features(ids, quantize=False, side=side),
                        student8.features(ids, quantize=False, side=side)):
            assert torch.allclose(a, b, atol=1e-4)
    calibrate_batchnorm(student4, ids, side=side)
    fit_layer_norms(student4, encoder, (ids, mask), mask)
    calibrate_activations(student4, ids, side=side)
    simulator_block_outputs(student4, ids, profile, side={encoder.inputs[1]: mask})


class _SiluNet(nn.Module):
    """conv -> SiLU (the chip's table) -> conv, a residual add, a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = y + self.c(nn.functional.silu(self.b(y)))
        return self.fc(y.mean((2, 3)))


def test_a_cnn_keeps_a_bits_except_around_a_table():
    """ResNet-8 at 4w4a: every grid but the logits' is 4-bit, nothing inserted. A SiLU on the
    chip's table reads and writes 8 bits; the conv after it reads a narrowed copy."""
    from lowering_helpers import basic_teacher
    profile = load_profile("ethos-u55-128")
    graph = capture(basic_teacher(), (torch.zeros(1, 1, 8, 8),))
    config = lower_plan(graph, plan_conversion(graph, profile, (4, 4)), profile).config
    bits = sorted(q["bits"] for q in config["quantizers"].values())
    assert bits[:-1] == [4] * (len(bits) - 1) and bits[-1] == 8
    assert not [s for b in config["blocks"] for s in b["steps"] if s["name"].endswith("_narrow")]
    graph = capture(_SiluNet().eval(), (torch.zeros(1, 1, 8, 8),))
    config = lower_plan(graph, plan_conversion(graph, profile, (4, 4)), profile).config
    for st, reads, writes in _bits_read(config):
        if st["kind"] == "lut":
            assert reads == [WIDE_BITS] and writes == WIDE_BITS
        elif st.get("narrows"):
            assert reads == [WIDE_BITS] and writes == 4
        elif st["kind"] in ("conv", "linear") and st["inputs"] != ["in:0"]:
            assert reads == [4], st["name"]
    narrowed = [s for b in config["blocks"] for s in b["steps"] if s["name"].endswith("_narrow")]
    assert [(s["kind"], s["groups"]) for s in narrowed] == [("conv", 8)]


def test_smoothing_keeps_the_function_and_spares_the_narrow_grid_an_outlier_channel():
    """A stream channel four times the others (LayerNorm's own scale) would set the 4-bit
    grid's step for every channel; per-channel smoothing divides it out before the requantize
    and multiplies it back into the readers' weights: the float student is unchanged and the
    layers reading the narrowed stream are nearer their float values."""
    from archnet.lowering.calibrate import smooth_narrowed_inputs
    model = _Encoder().eval()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.output.LayerNorm.weight[5] = 4.0
        model.bert.embeddings.LayerNorm.weight[5] = 4.0
    ids, mask = _inputs(1)
    graph = capture(model, (ids, mask))
    profile = load_profile("ethos-u55-128")
    plan = plan_conversion(graph, profile, (4, 4))
    ids, mask = _inputs(48)
    onehot = ids                # the student reads token ids (the embedding's gather)
    side = {graph.inputs[1]: mask.float()}

    def prepared(smooth: bool):
        student, _ = build_graph_student(graph, plan, profile)
        calibrate_batchnorm(student, onehot, side=side)
        fit_layer_norms(student, graph, (ids, mask), mask)
        if smooth:
            assert smooth_narrowed_inputs(student, onehot, side=side) == 8
        calibrate_activations(student, onehot, side=side)
        with torch.no_grad():
            stream = student.features(onehot, quantize=False, side=side)[0]
            block = student.blocks[1]
            fl = block.trace(stream, quantize=False, side=side)
            fq = block.trace(stream, side=side)
        readers = [st["name"] for st in block.spec["steps"]
                   if st["kind"] == "linear" and st["inputs"][0].endswith("_narrow")]
        assert len(readers) == 6     # query, key, value, attention output, both FFN layers
        err = sum(float((fq[r] - fl[r]).pow(2).mean() / fl[r].pow(2).mean()) for r in readers)
        return student.features(onehot, quantize=False, side=side)[-1], err
    float_plain, err_plain = prepared(False)
    float_smooth, err_smooth = prepared(True)
    assert torch.allclose(float_plain, float_smooth, atol=1e-3)
    assert err_smooth < 0.75 * err_plain, (err_smooth, err_plain)
