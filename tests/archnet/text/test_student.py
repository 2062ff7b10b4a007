"""The Arch-Net text student: lowered from a tiny BERT for each operator choice and arithmetic,
its Program holds only NPU operators, runs on no host, and the simulator computes every block
output bit for bit as archnet's integer emulation does; padding never moves a real token's
value; checkpoints round-trip exactly; bad configurations are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from archnet.errors import ArchnetError, CheckpointError, ConversionError
from simulator.constraints import place
from simulator.contract import Overflow, SaturationPoint
from simulator.execute import execute
from simulator.ir.ops import OpKind
from simulator.profiles import load_profile

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from archnet.text.lowering import lower_bert, student_config  # noqa: E402
from archnet.text.student import TextStudent, TextStudentConfig, two_hot  # noqa: E402
from archnet.text.student_io import load_text_student, save_text_student  # noqa: E402
from archnet.torchfile import save_torch  # noqa: E402

# a vocabulary past 256 entries: the two-hot embedding rows are long enough (vocab + positions)
# for the simulator's sparse fully connected path
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
         *(f"w{i:03d}" for i in range(290))]
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40)
MAX_LEN = 16
ALLOWED_OPS = {"fully_connected", "requantize", "matmul", "softmax", "lookup_table", "add",
               "concat", "reshape", "transpose"}
BANNED_OPS = {"layer_norm", "LayerNormalization", "gather", "Gather", "gelu", "Erf", "fallback"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random 2-layer, hidden-32, 4-head BERT with a 300-word vocabulary, saved and loaded as
    a user's own checkpoint."""
    from archnet.text.teacher import load_text_teacher
    folder = tmp_path_factory.mktemp("bert4")
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=len(WORDS), **SHAPE)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return load_text_teacher(folder)


def _batch(lengths, t: int, seed: int, vocab: int = len(WORDS)):
    """ids/mask [N, t]: [CLS] words [SEP] then [PAD]s; some words from ids >= 256, which share a
    64-wide K-tile with the position columns (vocab 300 + position j = column 300 + j)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, vocab, n)
        ids[i, 1:n:3] = rng.integers(256, vocab, len(range(1, n, 3)))
        ids[i, 0] = 2
        if n > 1:
            ids[i, n - 1] = 3
        mask[i, :n] = 1
    return torch.as_tensor(ids), torch.as_tensor(mask)


@pytest.fixture(scope="module")
def calibration():
    lengths = np.random.default_rng(0).integers(2, MAX_LEN + 1, 24)
    return _batch(lengths, MAX_LEN, seed=0)


def _arith(chip, point: SaturationPoint, tile_k: int = 0, overflow: Overflow = Overflow.SATURATE,
           bits: int = 16):
    """The chip's arithmetic with a narrow accumulator, saturating per MAC or per tile (no
    bundled profile saturates inside the reduction, where order matters), or wrapping."""
    acc = dataclasses.replace(chip.arithmetic.accumulator, bits=bits, overflow=overflow,
                              saturation_point=point, tile_k=tile_k)
    return dataclasses.replace(chip.arithmetic, accumulator=acc)


# id: (profile, w_bits, a_bits, residual override, saturation override, expected choices)
CASES = {
    "ethos-8w8a": ("ethos-u55-128", 8, 8, None, None, ("gelu_lut", "add")),
    "ethos-4w4a": ("ethos-u55-128", 4, 4, None, None, ("gelu_lut", "add")),
    "rk3588-4w4a-relu": ("rk3588-npu-core", 4, 4, None, None, ("relu", "add")),
    "ethos-8w8a-concat": ("ethos-u55-128", 8, 8, "concat", None, ("gelu_lut", "concat")),
    "rk3588-4w4a-relu-concat": ("rk3588-npu-core", 4, 4, "concat", None, ("relu", "concat")),
    "onnx-qlinear-float-scale": ("onnx-qlinear", 8, 8, None, None, ("gelu_lut", "add")),
    "ideal-half-even-m24": ("ideal", 8, 8, None, None, ("gelu_lut", "add")),
    "rk3566-m16-4w4a": ("rk3566-npu", 4, 4, None, None, ("relu", "add")),
    "acc16-wrap": ("ethos-u55-128", 8, 8, None, (SaturationPoint.FINAL, 0, Overflow.WRAP),
                   ("gelu_lut", "add")),
    "acc16-per-mac": ("ethos-u55-128", 8, 8, None, (SaturationPoint.PER_MAC, 0),
                      ("gelu_lut", "add")),
    "acc16-per-tile-concat": ("ethos-u55-128", 8, 8, "concat", (SaturationPoint.PER_TILE, 64),
                              ("gelu_lut", "concat")),
}


def _lowered(teacher, calibration, case: str):
    name, w, a, residual, saturation, _ = CASES[case]
    chip = load_profile(name)
    arith = _arith(chip, *saturation) if saturation else chip.arithmetic
    cfg = student_config(teacher.config, MAX_LEN, w, a, chip, residual=residual)
    return lower_bert(teacher, cfg, *calibration), chip, arith


@pytest.fixture(scope="module")
def students(teacher, calibration):
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = _lowered(teacher, calibration, case)
        return cache[case]
    return get


def _simulate(student, arith, ids, mask, backend="kernels"):
    n, t = ids.shape
    program = student.export(n, t)
    res = execute(program, arith, {"tokens": two_hot(ids.numpy(), student.cfg.vocab_size,
                                                     student.cfg.max_positions),
                                   "attention_mask": mask.numpy().astype(np.uint8)}, backend,
                  trace=False)
    return program, res


# ----------------------------------------------------------------------------- bit-exact

@pytest.mark.parametrize("case", list(CASES))
def test_program_equals_integer_emulation_bit_for_bit(students, case):
    student, chip, arith = students(case)
    assert (student.cfg.activation, student.cfg.residual) == CASES[case][5]
    assert (student.cfg.w_bits, student.cfg.a_bits) == CASES[case][1:3]
    # a full row, padded rows, a one-token row and an all-padding row (no valid key at all)
    ids, mask = _batch([11, 6, 1, 0], 11, seed=5)
    program, res = _simulate(student, arith, ids, mask)
    emulated = student.integer_features(ids, mask, arith)
    assert program.outputs == ["embedding", "layer0.out", "layer1.out"]
    assert len(emulated) == student.num_blocks == 3
    for name, q in zip(program.outputs, emulated, strict=True):
        sim = res.outputs[name]
        assert sim.shape == tuple(q.value.shape) == (4 * 11, 32)
        assert np.array_equal(sim, q.value.numpy()), \
            f"{case} {name}: {int((sim != q.value.numpy()).sum())} elements differ"
        assert program.tensors[name].scale[0] == q.scale
    # the stream is not constant: a vacuous equality would prove nothing
    assert all(len(np.unique(res.outputs[n])) > 20 for n in program.outputs)
    if CASES[case][4]:
        # the 16-bit accumulator really overflowed (saturated, or wrapped)
        overflowed = {n for n, s in res.overflow.items() if s.events}
        assert overflowed, res.overflow


@pytest.mark.parametrize("case", list(CASES))
def test_training_on_chip_values_sees_the_integers_and_keeps_every_gradient(students, case):
    """``features(arith=...)``, the forward distillation trains with, is the integer emulation
    (so the simulator) value for value, whole or from a stream in the middle, and gives a
    gradient to every parameter the plain fake-quant forward gives one."""
    student, _, arith = students(case)
    ids, mask = _batch([MAX_LEN, 9, 4, 1], MAX_LEN, seed=11)
    n, t = ids.shape
    ints = student.integer_features(ids, mask, arith)

    def trained(**kw) -> set[str]:
        student.zero_grad(set_to_none=True)
        feats = student.features(ids, mask, **kw)
        feats[-1][mask.bool()].pow(2).sum().backward()
        return feats, {k for k, p in student.named_parameters()
                       if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    feats, tied = trained(arith=arith)
    for i, (f, q) in enumerate(zip(feats, ints)):
        assert torch.equal(f.detach().reshape(n * t, -1), q.value.float() * q.scale), i
    _, plain = trained()
    assert tied == plain and any(k.startswith("layers.1.") for k in tied)
    student.zero_grad(set_to_none=True)
    middle = (ints[1].value.float() * ints[1].scale).view(n, t, -1)
    rest = student.features(None, mask, start=2, stream=middle, arith=arith)
    assert torch.equal(rest[-1].detach().reshape(n * t, -1), ints[-1].value.float() * ints[-1].scale)


@pytest.mark.parametrize("case", list(CASES))
def test_the_lowered_student_computes_what_the_teacher_does(teacher, students, case):
    """Before any distillation, the chip's integers already follow the teacher at every depth
    (the LayerNorm replacements are fitted, the grids calibrated in forward order): whatever
    the operator choice, the residual stream must survive each block."""
    from archnet.text.student import pooled
    student, _, arith = students(case)
    ids, mask = _batch(np.random.default_rng(4).integers(2, MAX_LEN + 1, 12), MAX_LEN, seed=4)
    target = teacher.forward(ids, mask)
    streams = student.integer_features(ids, mask, arith)
    valid = mask.bool()
    for b, (q, hidden) in enumerate(zip(streams, target.hidden_states, strict=True)):
        y = (q.value.double() * q.scale).view(*mask.shape, -1)[valid]
        h = hidden.double()[valid]
        rel = float((y - h).pow(2).mean() / h.pow(2).mean())
        assert rel < 0.1, f"{case}: block {student.block_names()[b]} relative MSE {rel:.3f} " \
                          f"(stream step {q.scale:.3g}, max |stream| {float(y.abs().max()):.3g}, " \
                          f"teacher max {float(h.abs().max()):.3g})"
    emb = pooled(streams[-1].value.double() * streams[-1].scale, mask)
    cos = torch.nn.functional.cosine_similarity(emb, target.embedding.double())
    assert float(cos.min()) > 0.95, (case, cos)


@pytest.mark.parametrize("case", ["ethos-8w8a", "acc16-per-mac"])
def test_reference_backend_agrees_too(students, case):
    student, chip, arith = students(case)
    ids, mask = _batch([5, 3], 5, seed=9)
    program, res = _simulate(student, arith, ids, mask, backend="reference")
    _, fast = _simulate(student, arith, ids, mask, backend="kernels")
    for name, q in zip(program.outputs, student.integer_features(ids, mask, arith), strict=True):
        assert np.array_equal(res.outputs[name], q.value.numpy()), name
        assert np.array_equal(res.outputs[name], fast.outputs[name]), name


@pytest.mark.parametrize("case", [c for c in CASES if not CASES[c][4]])
def test_program_holds_only_npu_operators_and_runs_on_no_host(students, case):
    student, chip, _ = students(case)
    program = student.export(2, MAX_LEN)
    kinds = {n.op.value for n in program.nodes}
    assert kinds <= ALLOWED_OPS, kinds - ALLOWED_OPS
    assert not kinds & BANNED_OPS
    assert not any(n.op is OpKind.FALLBACK for n in program.nodes)
    assert not any("op_type" in n.attrs for n in program.nodes)
    if student.cfg.activation == "gelu_lut":
        assert "lookup_table" in kinds
    else:
        assert "lookup_table" not in kinds
    assert ("add" in kinds) == (student.cfg.residual == "add")
    assert ("concat" in kinds) == (student.cfg.residual == "concat")
    host = [(p.node, p.reasons) for p in place(program, chip) if p.on_host]
    assert host == [], host
    # the inputs are what a chip reads: u8 two-hot rows and a u8 key mask
    assert str(program.tensors["tokens"].dtype) == "u8"
    assert program.tensors["tokens"].shape == (2 * MAX_LEN, len(WORDS) + MAX_LEN)
    assert str(program.tensors["attention_mask"].dtype) == "u8"


@pytest.mark.parametrize("case", ["ethos-4w4a", "acc16-per-tile-concat"])
def test_block_programs_chain_to_the_whole_program(students, case):
    """Distillation runs the frozen blocks one Program at a time, feeding each the stream the
    last one wrote: the chain must give what the whole Program gives, and so must the
    emulation started from a block's stream."""
    from archnet.quant.qtensor import QTensor
    student, _, arith = students(case)
    ids, mask = _batch([8, 5], 8, seed=3)
    _, whole = _simulate(student, arith, ids, mask)
    names = student.block_names()
    stream = None
    for b in range(student.num_blocks):
        program = student.export(2, 8, start=b, stop=b + 1)
        inputs = {"attention_mask": mask.numpy().astype(np.uint8)}
        if b == 0:
            assert program.inputs == ["tokens", "attention_mask"]
            inputs["tokens"] = two_hot(ids.numpy(), student.cfg.vocab_size, MAX_LEN)
        else:
            assert program.inputs == ["stream", "attention_mask"]
            assert program.tensors["stream"].scale[0] == float(student.stream_quant(b - 1).step())
            inputs["stream"] = stream.astype(np.int8)
        out = execute(program, arith, inputs, trace=False).outputs
        assert program.metadata["blocks"] == [names[b]]
        stream = out[program.outputs[-1]]
        assert np.array_equal(stream, whole.outputs[student.export(2, 8).outputs[b]]), names[b]
        if b > 0:
            prev = whole.outputs[student.export(2, 8).outputs[b - 1]]
            q = student.stream_quant(b - 1)
            start = QTensor(torch.from_numpy(prev), float(q.step()), q.qtype)
            emulated = student.integer_features(None, mask, arith, start=b, stop=b + 1,
                                                stream=start)
            assert len(emulated) == 1
            assert np.array_equal(emulated[-1].value.numpy(), stream), names[b]


def test_two_hot_rows():
    ids = np.array([[4, 0, 7], [1, 1, 2]])
    rows = two_hot(ids, vocab_size=8, max_positions=5)
    assert rows.dtype == np.uint8 and rows.shape == (6, 13)
    assert (rows.sum(1) == 2).all()
    for r, (n, j) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]):
        assert rows[r, ids[n, j]] == 1 and rows[r, 8 + j] == 1


# ----------------------------------------------------------------------------- padding

@pytest.mark.parametrize("case", ["ethos-8w8a", "rk3588-4w4a-relu-concat", "acc16-per-mac"])
def test_padding_never_changes_a_real_token(students, case):
    student, _, arith = students(case)
    lengths, t = [9, 4, 6], 9
    short_ids, short_mask = _batch(lengths, t, seed=11)
    long_ids = torch.zeros((3, t + 5), dtype=torch.long)
    long_mask = torch.zeros((3, t + 5), dtype=torch.long)
    long_ids[:, :t], long_mask[:, :t] = short_ids, short_mask
    program, short = _simulate(student, arith, short_ids, short_mask)
    _, long = _simulate(student, arith, long_ids, long_mask)
    alone = [_simulate(student, arith, short_ids[i:i + 1, :n], short_mask[i:i + 1, :n])[1]
             for i, n in enumerate(lengths)]
    for name in program.outputs:
        a = short.outputs[name].reshape(3, t, -1)
        b = long.outputs[name].reshape(3, t + 5, -1)
        for i, n in enumerate(lengths):
            assert np.array_equal(a[i, :n], b[i, :n]), (name, i)
            assert np.array_equal(a[i, :n], alone[i].outputs[name]), (name, i)
    # and the emulation pads the same way
    ea = student.integer_features(short_ids, short_mask, arith)[-1].value.view(3, t, -1)
    eb = student.integer_features(long_ids, long_mask, arith)[-1].value.view(3, t + 5, -1)
    for i, n in enumerate(lengths):
        assert torch.equal(ea[i, :n], eb[i, :n])


# ----------------------------------------------------------------------------- checkpoints

def _same_program(a, b) -> None:
    assert a.name == b.name and a.inputs == b.inputs and a.outputs == b.outputs
    assert a.nodes == b.nodes
    assert a.metadata == b.metadata
    assert a.tensors.keys() == b.tensors.keys()
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert t == u, name
        assert (t.data is None) == (u.data is None), name
        if t.data is not None:
            assert t.data.dtype == u.data.dtype and np.array_equal(t.data, u.data), name


@pytest.mark.parametrize("case", ["ethos-4w4a", "ethos-8w8a-concat"])
def test_checkpoint_round_trip_is_exact(students, case, tmp_path):
    student, chip, arith = students(case)
    path = save_text_student(tmp_path / "student.pt", student, {"teacher": "tiny", "bits": "4w4a"})
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    loaded, meta = load_text_student(path)
    assert meta == {"teacher": "tiny", "bits": "4w4a"}
    assert loaded.cfg == student.cfg and not loaded.training
    a, b = student.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    _same_program(student.export(2, 7), loaded.export(2, 7))
    _same_program(student.export(1, MAX_LEN, start=1, stop=3), loaded.export(1, MAX_LEN, start=1, stop=3))
    ids, mask = _batch([7, 3], 7, seed=2)
    for x, y in zip(student.integer_features(ids, mask, arith),
                    loaded.integer_features(ids, mask, arith), strict=True):
        assert torch.equal(x.value, y.value) and x.scale == y.scale


def test_checkpoint_errors_are_one_line(students, tmp_path):
    student, _, _ = students("ethos-8w8a")
    other = tmp_path / "other.pt"
    save_torch({"format": "something-else"}, other)
    with pytest.raises(CheckpointError) as info:
        load_text_student(other)
    assert str(other) in str(info.value) and "\n" not in str(info.value)
    assert "not an archnet text student checkpoint" in str(info.value)
    path = save_text_student(tmp_path / "s.pt", student)
    obj = torch.load(path, weights_only=True)
    obj["config"] = {**obj["config"], "hidden": 64, "heads": 4}      # weights of another shape
    save_torch(obj, tmp_path / "bad.pt")     # a valid content hash: the content itself is wrong
    with pytest.raises(CheckpointError) as info:
        load_text_student(tmp_path / "bad.pt")
    assert "weights do not fit the config" in str(info.value)
    assert "\n" not in str(info.value)
    missing = tmp_path / "absent.pt"
    with pytest.raises(ArchnetError) as info:
        load_text_student(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(missing)


# ----------------------------------------------------------------------------- config errors

BASE = dict(vocab_size=30, max_positions=16, hidden=32, heads=4, intermediate=64, layers=2)


@pytest.mark.parametrize("change, needle", [
    ({"hidden": 30}, "hidden 30 not divisible by heads 4"),
    ({"activation": "gelu"}, "activation 'gelu'"),
    ({"residual": "mul"}, "residual 'mul'"),
    ({"w_bits": 9}, "w_bits 9 outside 2..8"),
    ({"a_bits": 1}, "a_bits 1 outside 2..8"),
    ({"layers": 0}, "layers must be >= 1"),
    ({"vocab_size": 0}, "vocab_size must be >= 1"),
])
def test_config_errors_are_one_line(change, needle):
    with pytest.raises(ArchnetError) as info:
        TextStudentConfig(**{**BASE, **change})
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_unknown_config_keys_are_named():
    with pytest.raises(ArchnetError, match=r"unknown key\(s\) \['dropout'\]") as info:
        TextStudentConfig.from_dict({**BASE, "dropout": 0.1})
    assert "\n" not in str(info.value)
    assert TextStudentConfig.from_dict(TextStudentConfig(**BASE).to_dict()) == TextStudentConfig(**BASE)
    assert TextStudent(dict(BASE)).cfg == TextStudentConfig(**BASE)


def test_lowering_errors_are_one_line(teacher):
    chip = load_profile("ethos-u55-128")
    with pytest.raises(ConversionError) as info:
        student_config(teacher.config, 41, 8, 8, chip)
    assert "--max-len 41 > the teacher's 40 positions" in str(info.value)
    assert "\n" not in str(info.value)
    swish = dataclasses.replace(teacher.config, hidden_act="silu")
    with pytest.raises(ConversionError, match="teacher activation 'silu'"):
        student_config(swish, 16, 8, 8, chip)


def test_sequences_longer_than_the_student_are_refused(students):
    student, _, arith = students("ethos-8w8a")
    ids, mask = _batch([17], 17, seed=1)
    for call in (lambda: student.integer_features(ids, mask, arith),
                 lambda: student.features(ids, mask),
                 lambda: student.export(1, 17)):
        with pytest.raises(ArchnetError) as info:
            call()
        assert str(info.value) == "sequence length 17 > the student's 16 positions"
