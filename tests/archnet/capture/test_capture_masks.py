"""A padding mask added to attention scores is captured as the softmax's key mask: the
captured graph equals the model on masks with dropped keys, none of the model's mask
arithmetic is left, and the converter plans the whole BERT encoder on a chip that runs
softmax with a mask (the embedding as one-hot x fully connected, LayerNorm as the paper's
fixed-statistics affine)."""

import pytest
import torch

from archnet.capture import capture
from archnet.rules import plan_conversion
from simulator.profiles import load_profile

transformers = pytest.importorskip("transformers")


class _Encoder(torch.nn.Module):
    def __init__(self, attention: str = "eager"):
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32,
                                         max_position_embeddings=16,
                                         attn_implementation=attention)
        self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    def forward(self, ids, mask):
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def _token_set(n: int, every: int, keep: int, seed: int, mask_name: str):
    """``n`` random 8-token sentences of a 40-word vocabulary, every ``every``-th padded after
    ``keep`` tokens: ids, mask and their TokenInputs."""
    from archnet.distill.inputs import TokenInputs
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (n, 8), generator=gen)
    mask = torch.ones(n, 8, dtype=torch.long)
    mask[::every, keep:] = 0
    return ids, mask, TokenInputs(ids, mask, 40, mask_name)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def encoder(request):
    """Both of transformers' attentions: written out, and torch's fused
    scaled_dot_product_attention with a boolean mask (decomposed at capture)."""
    model = _Encoder(request.param).eval()
    ids = torch.randint(0, 40, (1, 8))
    return model, capture(model, (ids, torch.ones(1, 8, dtype=torch.long)))


def test_the_mask_becomes_the_softmax_operand(encoder):
    model, graph = encoder
    softmaxes = [n for n in graph.nodes if n.op == "softmax"]
    assert len(softmaxes) == 2
    assert all(n.inputs[1] == graph.inputs[1] and n.attrs["key_mask"] for n in softmaxes)
    assert not [n for n in graph.nodes if n.op.startswith("aten.")], graph.op_counts()
    ids = torch.randint(0, 40, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        want = model(ids, mask)
    assert torch.allclose(graph.run(ids, mask)[0], want, atol=1e-5)


def without_mean(profile):
    """``profile`` without a mean op: no ``layer_norm.per_token`` there (and with
    ``layer_norm="fixed"`` no per-token form at all)."""
    from dataclasses import replace
    from types import MappingProxyType
    ops = dict(profile.ops) | {"mean": replace(profile.ops["mean"], supported=False)}
    return replace(profile, ops=MappingProxyType(ops))


def test_an_encoder_is_planned_without_host_ops(encoder):
    _, graph = encoder
    plan = plan_conversion(graph, load_profile("ethos-u55-128"), (8, 8))
    fired = plan.rules_fired()
    # the embedding's rows are looked up: by the host as it writes the input (the U55 has no
    # gather), not streamed through a fully connected layer
    assert fired["softmax.native"] == 2 and fired["embedding.gather"] == 1
    # the embedding's LayerNorm folds into the table; the four after a sublayer stay LayerNorm,
    # per token from the chip's mean, sub, mul and tables
    assert fired["layer_norm.folded_embedding"] == 1 and fired["layer_norm.per_token"] == 4
    assert "layer_norm.fixed_affine" not in fired
    assert fired["gelu.native"] == 2
    assert not plan.student.fallbacks
    # a chip without a mean folds them into their adds instead (the paper's fixed statistics)
    fired = plan_conversion(graph, without_mean(load_profile("ethos-u55-128")), (8, 8),
                            layer_norm="fixed").rules_fired()
    assert fired["layer_norm.folded_embedding"] == 1 and fired["layer_norm.folded_affine"] == 4


@pytest.mark.parametrize("embedding", ["gather", "one_hot"])
def test_an_encoder_lowers_to_one_student_bit_exact_on_the_simulator(encoder, embedding):
    """The shared student represents the encoder: token ids in, looked up by a gather (the
    host's at the input on the U55), or one-hot token rows in (the embedding as a fully
    connected layer whose columns are the table); the key mask a side input read by every
    softmax; its integers equal the simulator's at every block, and the embedding block starts
    as the teacher's embedding sum."""
    import numpy as np

    from archnet.lowering import calibrate_activations, calibrate_batchnorm
    from archnet.lowering.graph import build_graph_student
    from simulator.execute import execute
    model, graph = encoder
    profile = load_profile("ethos-u55-128")
    plan = plan_conversion(graph, profile, (8, 8), embedding=embedding)
    student, low = build_graph_student(graph, plan, profile)
    gather = embedding == "gather"
    assert student.config["input_encoding"] == ("token_ids" if gather else "one_hot")
    assert student.config["input_shape"] == ([8] if gather else [8, 40])
    assert list(student.side_inputs) == [graph.inputs[1]]
    ids = torch.randint(0, 40, (6, 8))
    mask = torch.ones(6, 8, dtype=torch.long)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    onehot = ids if gather else torch.nn.functional.one_hot(ids, 40).float()
    side = {graph.inputs[1]: mask.float()}
    # before LayerNorm, the student's first values are the teacher's embedding sum
    teacher = graph.values(ids, mask, keep={"add_1"})["add_1"] if "add_1" in \
        {n.name for n in graph.nodes} else None
    env = student.blocks[0].trace(onehot, quantize=False, side=side)
    if teacher is not None:
        assert any(v.shape == teacher.shape and torch.allclose(v, teacher, atol=1e-5)
                   for v in env.values())
    calibrate_batchnorm(student, onehot, side=side)
    calibrate_activations(student, onehot, side=side)
    program = student.export((6, *student.input_shape), feature_outputs=True)
    feeds = {program.inputs[0]: student.input.host_values(onehot),
             program.inputs[1]: mask.numpy().astype(np.uint8)}
    assert ("gather" in {n.op.value for n in program.nodes}) == gather
    sim = execute(program, profile, feeds).outputs
    ints = student.integer_features(onehot, profile, side={graph.inputs[1]: mask})
    for q, pieces in zip(ints, program.metadata["archnet"]["block_outputs"]):
        assert np.array_equal(q.value.numpy(), sim[pieces[0]])


def test_an_encoder_distils_on_token_data_with_the_simulator_in_the_loop(encoder, tmp_path):
    """The one distillation loop on sentences: token ids and masks in (the student reads
    one-hot rows and the mask, the teacher the ids and the mask), the trained prefix on the
    simulator for later blocks, and the result bit-exact on the simulator."""
    import numpy as np

    from archnet.distill.loop import DistillConfig, distill
    from archnet.distill.taps import GraphTaps
    from archnet.lowering import calibrate_activations, calibrate_batchnorm
    from archnet.lowering.graph import build_graph_student
    from simulator.execute import execute
    model, graph = encoder
    profile = load_profile("ethos-u55-128")
    # the one-hot form: its training path reads ids standing for the rows the chip reads
    plan = plan_conversion(graph, profile, (8, 8), embedding="one_hot")
    student, low = build_graph_student(graph, plan, profile)
    ids, mask, data = _token_set(48, every=3, keep=5, seed=0, mask_name=graph.inputs[1])
    x, side = data.student(torch.arange(48))
    calibrate_batchnorm(student, x, side=side)
    calibrate_activations(student, x, side=side)
    before = [h.clone() for h in student.parameters()]
    cfg = DistillConfig(steps_per_period=3, batch_size=16, window=2, progress=False,
                        sim_batch=16, mixup_fraction=0.5)
    result = distill(student, model, data, profile, cfg, tmp_path, log=lambda _m: None,
                     taps=GraphTaps(graph, low.taps))
    assert any(h["simulator_in_loop"] for h in result.history) and \
        sum(h["mixup_batches"] for h in result.history) == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    program = student.export((48, 8, 40), feature_outputs=True)
    feeds = {program.inputs[0]: student.input.rows(x).numpy(),
             program.inputs[1]: mask.numpy().astype(np.uint8)}
    sim = execute(program, profile, feeds).outputs
    ints = student.integer_features(x, profile, side=side)
    # the ids the training path reads stand exactly for the one-hot rows the chip reads
    rows = student.input.rows(x).float()
    assert torch.equal(student(x, side=side), student(rows, side=side))
    assert torch.equal(student(x, quantize=False, side=side),
                       student(rows, quantize=False, side=side))
    for q, pieces in zip(ints, program.metadata["archnet"]["block_outputs"]):
        assert np.array_equal(q.value.numpy(), sim[pieces[0]])


def test_archnet_convert_takes_a_text_network(encoder, tmp_path):
    """``archnet.convert`` with token ids and masks: the run folder's Program reads the tokens
    (their ids, the table's rows looked up by a gather: the host's on the U55) and the key
    mask, and its integers equal the simulator's."""
    import json

    import archnet
    from archnet.distill.inputs import TokenInputs
    from simulator.ir.program import load_program
    model, graph = encoder
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (40, 8), generator=gen)
    mask = torch.ones(40, 8, dtype=torch.long)
    mask[1::4, 4:] = 0
    summary = archnet.convert(model, (ids[:1], mask[:1]), TokenInputs(ids, mask, 40, "mask"),
                              chip="ethos-u55-128", out=str(tmp_path / "run"), bits="8w8a",
                              steps_per_period=2, batch_size=8,
                              log=lambda *a: None)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    program = load_program(tmp_path / "run" / "model.program")
    assert program.inputs == ["tokens", graph.inputs[1]]
    assert program.tensors["tokens"].dtype.name == "u16" and summary["embedding"] == "auto"
    assert summary["plan"]["rules_fired"]["embedding.gather"] == 1
    assert json.loads((tmp_path / "run" / "convert.json").read_text())["plan"]["student_fallbacks"] == 0


def test_a_folded_layer_norm_keeps_the_stream_on_the_normalised_scale():
    """BERT's post-sublayer LayerNorms fold into the residual add: the add writes LayerNorm's
    output (the fitted per-channel affine, as the unfolded form computes it), so an outlier
    channel of the sublayer's raw output (hundreds, as MiniLM's FFN writes) does not set the
    stream's 8-bit grid: every block's fake-quant output stays near its float one."""
    from archnet.distill.taps import GraphTaps
    from archnet.distill.losses import masked_token_loss
    from archnet.lowering import calibrate_activations, calibrate_batchnorm
    from archnet.lowering.fits import fit_layer_norms
    from archnet.lowering.graph import build_graph_student
    model = _Encoder().eval()
    with torch.no_grad():       # one FFN output channel two orders above the rest, which
        for layer in model.bert.encoder.layer:      # the LayerNorm after it scales back down
            layer.output.dense.weight[3] *= 100.0
            layer.output.dense.bias[3] += 300.0
            layer.output.LayerNorm.weight[3] = 0.01
    ids = torch.randint(0, 40, (1, 8))
    graph = capture(model, (ids, torch.ones(1, 8, dtype=torch.long)))
    profile = without_mean(load_profile("ethos-u55-128"))
    plan = plan_conversion(graph, profile, (8, 8), layer_norm="fixed")
    assert plan.rules_fired()["layer_norm.folded_affine"] == 4
    student, low = build_graph_student(graph, plan, profile)
    ids, mask, data = _token_set(64, every=4, keep=6, seed=1, mask_name=graph.inputs[1])
    x, side = data.student(torch.arange(64))
    calibrate_batchnorm(student, x, side=side)
    assert fit_layer_norms(student, graph, data.teacher(torch.arange(64)), mask) == 5
    calibrate_activations(student, x, side=side)
    taps = GraphTaps(graph, low.taps).features(*data.teacher(torch.arange(64)))
    with torch.no_grad():
        fq = student.features(x, side=side)
        fl = student.features(x, quantize=False, side=side)
    folded = {d.node for d in plan.decisions if d.rule == "layer_norm.folded_affine"}
    checked = 0
    for i, tap in enumerate(low.taps):
        if tap not in folded:
            continue
        # the float student there: the per-channel affine fitted to the teacher's LayerNorm
        assert float(masked_token_loss(fl[i], taps[i], mask)) < 0.01, tap
        # on the chip's grids: 1e-5 here; about 1e-3 when the add writes the raw sum instead
        assert float(masked_token_loss(fq[i], fl[i], mask)) < 1e-4, tap
        checked += 1
    assert checked == 2


def test_the_embedding_layer_norm_folds_into_the_table_and_fits_each_token():
    """The embedding's LayerNorm folds into the embedding sum (table columns, position and
    token-type rows): the float student's embedding is the least-squares additive fit of the
    teacher's LayerNorm output, far nearer than the per-channel affine alone, and exact for a
    token that always sits at one position (as [CLS] does)."""
    from archnet.lowering import calibrate_batchnorm
    from archnet.lowering.fits import fit_layer_norms
    from archnet.lowering.graph import build_graph_student
    from archnet.distill.inputs import TokenInputs
    model = _Encoder().eval()
    ids = torch.randint(0, 40, (1, 8))
    graph = capture(model, (ids, torch.ones(1, 8, dtype=torch.long)))
    profile = without_mean(load_profile("ethos-u55-128"))     # every LayerNorm a fitted affine
    plan = plan_conversion(graph, profile, (8, 8), layer_norm="fixed")
    student, low = build_graph_student(graph, plan, profile)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 40, (96, 8), generator=gen)
    ids[:, 0] = 1                                    # the sentence-start token, only at 0
    mask = torch.ones(96, 8, dtype=torch.long)
    mask[::3, 5:] = 0
    data = TokenInputs(ids, mask, 40, graph.inputs[1])
    x, side = data.student(torch.arange(96))
    calibrate_batchnorm(student, x, side=side)
    assert fit_layer_norms(student, graph, (ids, mask), mask) == 5
    tap = low.taps[0]
    ln = graph.node(tap)
    found = graph.values(ids, mask, keep={tap, ln.inputs[0]})
    want, raw = found[tap], found[ln.inputs[0]]
    with torch.no_grad():
        got = student.features(x, quantize=False, side=side)[0]
    keep = mask.bool()
    assert torch.allclose(got[:, 0], want[:, 0], atol=1e-4)
    # the paper's fold alone: each channel's least-squares affine of the raw sum
    xr, yr = raw[keep].double(), want[keep].double()
    xm, ym = xr.mean(0), yr.mean(0)
    slope = ((xr - xm) * (yr - ym)).mean(0) / (xr - xm).pow(2).mean(0)
    affine_only = ((slope * (xr - xm) + ym - yr).pow(2).mean() / yr.pow(2).mean()).item()
    fitted = ((got[keep] - want[keep]).pow(2).mean() / want[keep].pow(2).mean()).item()
    assert fitted < 0.5 * affine_only, (fitted, affine_only)
