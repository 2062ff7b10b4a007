"""``archnet convert`` with a text teacher, end to end through the command line: a tiny BERT
folder and a sentence file -> a verified run folder; and its bad-input messages, each one line
naming the thing at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from archnet.cli import main
from simulator.execute import execute
from simulator.ir.program import load_program
from simulator.profiles import load_profile

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from archnet.text.student import two_hot  # noqa: E402
from archnet.text.student_io import load_text_student  # noqa: E402

WORDS = ("the a cat dog sat on mat and ran far away quick brown fox jumps over lazy sleeps under "
         "tree").split()
FAST = ["--max-len", "16", "--max-sentences", "40", "--steps-per-period", "2", "--final-steps",
        "2", "--batch-size", "8", "--threads", "1", "--no-progress"]


def _write_corpus(path: Path, count: int, long: int = 0, seed: int = 0) -> Path:
    """``count`` distinct sentences of 3..11 words (at most 13 tokens with [CLS] and [SEP]) and
    ``long`` of 20..25 words (more than 16 tokens)."""
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    while len(lines) < count + long:
        n = int(rng.integers(3, 12)) if len(lines) < count else int(rng.integers(20, 26))
        s = " ".join(rng.choice(WORDS, n))
        if s not in lines:
            lines.append(s)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "sentences.txt", 50, long=12)


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "short.txt", 40, seed=1)


def _convert(teacher: str, chip: str, out: Path, corpus: Path, *extra: str) -> int:
    return main(["convert", teacher, "--chip", chip, "--out", str(out), "--corpus", str(corpus),
                 *FAST, *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("archnet: error: ")
    return err


def test_convert_writes_a_verified_run_folder(tiny_bert_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert _convert(tiny_bert_dir, "ethos-u55-128", out, corpus) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "convert.json").read_text())
    check = summary["emulation_vs_simulator"]
    assert check["agreement"] == 1.0 and check["matching"] == check["elements"] > 0
    assert check["first_divergent_block"] is None
    assert summary["fallbacks"] == 0
    assert summary["family"] == "text" and summary["chip"] == "ethos-u55-128"
    assert summary["bits"] == "8w8a" and summary["max_len"] == 16
    assert summary["distill_sentences"] == 40
    assert summary["student"]["activation"] == "gelu_lut" and summary["student"]["residual"] == "add"
    assert [h["period"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["estimated_latency_ms"] > 0
    assert summary["command"].startswith("archnet convert ")
    # sentences longer than --max-len: one warning line, and the count in the summary
    warnings = [line for line in stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, stdout
    assert warnings[0].endswith("sentences were truncated to 16 positions")
    assert int(warnings[0].split()[1]) == summary["truncated"] > 0

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        [f"period_{k:02d}.pt" for k in range(4)]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    student, meta = load_text_student(out / "student.pt")
    assert meta["teacher_path"] == tiny_bert_dir and meta["profile"] == "ethos-u55-128"
    assert meta["corpus"] == str(corpus)
    program = load_program(out / "model.program")
    assert program.metadata["student_checkpoint"] == "student.pt"
    assert program.tensors["tokens"].shape == (16, student.cfg.vocab_size + 16)
    assert {n.op.value for n in program.nodes} <= {"fully_connected", "requantize", "matmul",
                                                   "softmax", "lookup_table", "add", "reshape",
                                                   "transpose"}
    # the saved Program runs on the chip as the saved student computes, padded rows and all
    chip = load_profile("ethos-u55-128")
    ids = torch.zeros((1, 16), dtype=torch.long)
    ids[0, :6] = torch.tensor([2, 5, 9, 12, 7, 3])
    mask = (ids != 0).long()
    got = execute(program, chip, {"tokens": two_hot(ids.numpy(), student.cfg.vocab_size, 16),
                                  "attention_mask": mask.numpy().astype(np.uint8)}).outputs
    for name, q in zip(program.outputs, student.integer_features(ids, mask, chip.arithmetic),
                       strict=True):
        assert np.array_equal(got[name], q.value.numpy()), name

    # a second convert into the same folder without --resume would mix two runs
    assert _convert(tiny_bert_dir, "ethos-u55-128", out, corpus) == 2
    assert "--resume" in _one_line_error(capsys)
    # --resume of the finished run trains nothing and writes the same student
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert _convert(tiny_bert_dir, "ethos-u55-128", out, corpus, "--resume") == 0
    assert "resume: period 4 complete" in capsys.readouterr().out
    again, _ = load_text_student(out / "student.pt")
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())


def test_a_chip_without_attention_is_refused_unless_fallback_is_allowed(tiny_bert_dir,
                                                                       short_corpus, tmp_path,
                                                                       capsys):
    out = tmp_path / "k210"
    capsys.readouterr()
    assert _convert(tiny_bert_dir, "k210-kpu", out, short_corpus) == 2
    err = _one_line_error(capsys)
    assert "k210-kpu" in err and "on the host" in err
    assert "matmul" in err and "softmax" in err and "--allow-fallback" in err
    assert not (out / "student.pt").exists()

    assert _convert(tiny_bert_dir, "k210-kpu", out, short_corpus, "--allow-fallback") == 0
    stdout = capsys.readouterr().out
    assert not [line for line in stdout.splitlines() if line.startswith("warning: ")]
    summary = json.loads((out / "convert.json").read_text())
    assert summary["fallbacks"] > 0 and summary["truncated"] == 0
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0
    # no LUT and no add on the K210: ReLU and the concat residual
    assert summary["student"]["activation"] == "relu"
    assert summary["student"]["residual"] == "concat"
    kinds = {n.op.value for n in load_program(out / "model.program").nodes}
    assert "concat" in kinds and "add" not in kinds and "lookup_table" not in kinds


def _split_corpus(path: Path, train: int, heldout: int) -> Path:
    """A corpus whose held-out split (by each sentence's hash, at the default 0.1) has exactly
    these sizes."""
    from archnet.text.corpus import _unit_hash
    rng = np.random.default_rng(5)
    sides: dict[bool, list[str]] = {False: [], True: []}
    while len(sides[False]) < train or len(sides[True]) < heldout:
        s = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
        held = _unit_hash(s) < 0.1
        if len(sides[held]) < (heldout if held else train) and s not in sides[held]:
            sides[held].append(s)
    path.write_text("\n".join(sides[False] + sides[True]) + "\n")
    return path


def _no_tokenizer(src: str, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(src, tmp_path / "no-tokenizer"))
    for name in ("vocab.txt", "tokenizer.json"):
        if (folder / name).exists():
            (folder / name).unlink()
    return folder


def _gpt2(src: str, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(src, tmp_path / "gpt"))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    return folder


@pytest.mark.parametrize("fault", ["empty corpus", "missing corpus", "no tokenizer",
                                   "gpt2 family", "bad bits", "max-len too long",
                                   "corpus smaller than a batch", "corpus too small to split"])
def test_bad_input_is_one_line_naming_the_fault(fault, tiny_bert_dir, short_corpus, tmp_path,
                                                capsys):
    teacher, corpus, extra = tiny_bert_dir, short_corpus, []
    if fault == "empty corpus":
        corpus = tmp_path / "empty.txt"
        corpus.write_text("\n\nhi there\n")            # no line of 3 or more words
        needle = f"corpus {corpus} is empty"
    elif fault == "missing corpus":
        corpus = tmp_path / "absent.txt"
        needle = f"{corpus}: no such corpus file"
    elif fault == "no tokenizer":
        teacher = str(_no_tokenizer(tiny_bert_dir, tmp_path))
        needle = f"teacher {teacher}: no tokenizer"
    elif fault == "gpt2 family":
        teacher = str(_gpt2(tiny_bert_dir, tmp_path))
        needle = f"teacher {teacher}: family 'gpt2' is not supported"
    elif fault == "bad bits":
        extra = ["--bits", "3x3"]
        needle = "--bits: invalid choice: '3x3'"
    elif fault == "max-len too long":
        extra = ["--max-len", "41"]
        needle = "max_len 41 is above the model's 40 positions"
    elif fault == "corpus smaller than a batch":
        corpus = _split_corpus(tmp_path / "few.txt", train=5, heldout=1)
        needle = f"corpus {corpus}: 5 distillation sentences, need at least 8"
    else:
        # so few sentences that none is held out: the message must still say which corpus
        corpus = _split_corpus(tmp_path / "tiny.txt", train=5, heldout=0)
        needle = str(corpus)
    out = tmp_path / "run"
    capsys.readouterr()
    assert _convert(teacher, "ethos-u55-128", out, corpus, *extra) == 2
    err = _one_line_error(capsys)
    assert needle in err, err
    assert not (out / "student.pt").exists() and not (out / "convert.json").exists()


def test_a_text_teacher_converts_on_the_shared_pipeline(tiny_bert_dir, corpus, tmp_path):
    """``archnet convert BERT --recipe native``: the chip-driven converter on token data (the
    shared student, loop and checks); the run's Program reads one-hot tokens and the mask and
    its integers equal the simulator's."""
    from simulator.ir.program import load_program
    out = tmp_path / "graph"
    assert main(["convert", tiny_bert_dir, "--chip", "ethos-u55-128", "--recipe", "native",
                 "--out", str(out), "--corpus", str(corpus), "--max-len", "16",
                 "--max-sentences", "40", "--steps-per-period", "2", "--batch-size", "8",
                 "--threads", "1", "--no-progress"]) == 0
    summary = json.loads((out / "convert.json").read_text())
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    fired = summary["plan"]["rules_fired"]
    assert fired["embedding.one_hot_fc"] == 1 and fired["softmax.native"] == 2
    assert load_program(out / "model.program").inputs == ["tokens", "mask"]


def test_verify_a_text_run_of_the_shared_pipeline(tiny_bert_dir, corpus, tmp_path):
    """``archnet verify`` on that run: the held-out sentences bit-exact on the simulator, and
    the sentence embeddings' closeness to the teacher's reported."""
    out = tmp_path / "graph"
    assert main(["convert", tiny_bert_dir, "--chip", "ethos-u55-128", "--recipe", "native",
                 "--out", str(out), "--corpus", str(corpus), "--max-len", "16",
                 "--max-sentences", "40", "--steps-per-period", "2", "--batch-size", "8",
                 "--threads", "1", "--no-progress"]) == 0
    record = tmp_path / "v.json"
    assert main(["verify", str(out / "model.program"), "--chip", "ethos-u55-128",
                 "--out", str(record), "--no-progress"]) == 0
    doc = json.loads(record.read_text())
    assert doc["bit_exact"] and doc["data"]["sentences"] >= 3
    # image-only options are refused, not ignored
    assert main(["verify", str(out / "model.program"), "--chip", "ethos-u55-128",
                 "--limit", "4", "--no-progress"]) == 2
    quality = doc["quality"]["simulator_vs_teacher"]
    assert -1.0 <= quality["mean_cosine"] <= 1.0


def test_archnet_plan_takes_a_text_teacher(tiny_bert_dir, tmp_path, capsys):
    record = tmp_path / "plan.json"
    assert main(["plan", tiny_bert_dir, "--chip", "ethos-u55-128", "--max-len", "16",
                 "--json", str(record)]) == 0
    plan = json.loads(record.read_text())
    assert plan["rules_fired"]["softmax.native"] == 2 and plan["student_fallbacks"] == 0
    assert "embedding.one_hot_fc" in capsys.readouterr().out
