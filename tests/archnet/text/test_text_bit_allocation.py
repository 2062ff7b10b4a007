"""Per-block widths under a latency budget for a text network, as for images: the calibration
inputs are token ids and their mask, the distortion is that of the mean-pooled sentence
embedding, and every candidate student is prepared as the conversion prepares it."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from archnet.cli import main  # noqa: E402

CHIP = "rk3588-npu-core"
SEQ = 12
# the tiny BERT's vocabulary (conftest.TINY_WORDS), so that sentences tokenize to real ids
WORDS = ("the a cat dog sat on mat and ran far away quick brown fox jumps over lazy sleeps under "
         "tree").split()


@pytest.fixture(scope="module")
def encoder(tiny_teacher):
    """The tiny BERT as the conversion job captures it, and token inputs of it."""
    from archnet.capture import capture
    from archnet.distill.inputs import TokenInputs
    from archnet.jobs.convert import TokenEncoder
    model = TokenEncoder(tiny_teacher.model.eval()).eval()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, tiny_teacher.config.vocab_size, (24, SEQ), generator=gen)
    ids[:, 0] = 2                                    # [CLS]
    lengths = torch.randint(4, SEQ + 1, (24,), generator=gen)
    mask = (torch.arange(SEQ) < lengths[:, None]).long()
    ids = ids * mask                                 # [PAD] = 0 after each sentence
    data = TokenInputs(ids, mask, tiny_teacher.config.vocab_size, "mask")
    graph = capture(model, (ids[:1], mask[:1]))
    return model, graph, data


def test_candidates_are_prepared_as_the_conversion_prepares_its_student(encoder):
    """The student bit allocation measures is the one the conversion would distil from: the
    LayerNorm and embedding fits and the smoothing included, parameter for parameter."""
    from archnet.bit_allocation import GraphStudents, _calibration, _candidates
    from archnet.jobs.convert import ConvertOptions, build_student_for
    from simulator.profiles import load_profile
    model, graph, data = encoder
    profile = load_profile(CHIP)
    students = GraphStudents(graph, profile)
    bits = ["8w8a", "4w4a", "8w8a"]
    assert len(students.blocks) == len(bits)
    measured = _candidates(students, _calibration(data), ["4w4a", "8w8a"]).student(bits)
    opts = ConvertOptions(teacher="tiny", chip=CHIP, out="unused", calibration_images=len(data))
    meta = {"input_shape": [SEQ], "example_inputs": (data.ids[:1], data.mask[:1])}
    converted, _, _ = build_student_for(model, meta, profile, bits, data, opts, log=lambda m: None)
    a, b = measured.state_dict(), converted.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sensitivity_is_the_pooled_sentence_embedding_distortion(encoder):
    from archnet.bit_allocation import sensitivity_table
    model, graph, data = encoder
    from archnet.bit_allocation import GraphStudents
    from simulator.profiles import load_profile
    students = GraphStudents(graph, load_profile(CHIP))
    table = sensitivity_table(model, CHIP, [SEQ], data, ["2w4a", "8w8a"], students)
    assert list(table) == students.blocks
    base = table[students.blocks[0]]["8w8a"]
    assert 0 <= base < 0.05                          # 8-bit everywhere: close to the teacher
    for block, row in table.items():
        assert row["8w8a"] == base
        if block == "model.embeddings":
            # its one-hot table keeps 8-bit weights and writes an 8-bit stream (widths.py):
            # the same student at any width
            assert row["2w4a"] == base
        else:
            assert row["2w4a"] > base, block         # 2-bit weights in one block cost more


def _convert(tiny_bert_dir, corpus, out, *extra) -> int:
    return main(["convert", tiny_bert_dir, "--chip", CHIP, "--out", str(out), "--corpus",
                 str(corpus), "--max-len", "16", "--max-sentences", "40", "--steps-per-period",
                 "2", "--final-steps", "2", "--batch-size", "8", "--threads", "1",
                 "--no-progress", *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random
    rng = random.Random(5)
    lines = {" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 11)))
             for _ in range(80)}
    path = tmp_path_factory.mktemp("corpus") / "s.txt"
    path.write_text("\n".join(sorted(lines)) + "\n")
    return path


def test_convert_takes_a_latency_budget_for_a_text_teacher(tiny_bert_dir, corpus, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    assert _convert(tiny_bert_dir, corpus, out, "--latency-budget", "100") == 0
    summary = json.loads((out / "convert.json").read_text())
    alloc = summary["allocation"]
    assert alloc["budget_ms"] == 100 and summary["estimated_latency_ms"] <= 100
    assert summary["bits"] == alloc["bits"] == ["8w8a"] * len(alloc["bits"])  # widest fits
    capsys.readouterr()
    assert _convert(tiny_bert_dir, corpus, tmp_path / "tight", "--latency-budget", "0.001") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latency budget 0.001 ms cannot be met" in err, err
    assert _convert(tiny_bert_dir, corpus, tmp_path / "both", "--latency-budget", "1",
                    "--bits", "8w8a") == 2
    assert "--bits and --latency-budget: give one" in capsys.readouterr().err
