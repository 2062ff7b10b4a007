"""``archnet convert`` with a text teacher, end to end through the command line: a tiny BERT
folder and a sentence file -> a verified run folder of the shared, chip-driven pipeline (the
student, distillation loop and checks images use); and its bad-input messages, each one line
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

WORDS = ("the a cat dog sat on mat and ran far away quick brown fox jumps over lazy sleeps under "
         "tree").split()
FAST = ["--max-len", "16", "--max-sentences", "40", "--steps-per-period", "2", "--final-steps",
        "2", "--batch-size", "8", "--threads", "1", "--no-progress"]
# what a text student's Program may hold: no LayerNorm, Embedding (gather) or GELU op; the
# LayerNorms are per-channel affines (a depthwise 1x1 conv2d over the rows), the embedding a
# fully connected layer over one-hot rows, GELU the chip's lookup table
ALLOWED = {"fully_connected", "conv2d", "requantize", "matmul", "softmax", "lookup_table", "add",
           "reshape", "transpose",
           "mean", "sub", "mul", "minimum",      # LayerNorm per token (layer_norm.per_token)
           "gather"}                             # the embedding's rows, looked up by the host


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


@pytest.fixture(scope="module")
def converted(tiny_bert_dir, corpus, tmp_path_factory):
    """A text teacher converted without --recipe (the shared pipeline's native recipe), with
    every sentence that was tokenized on the way recorded."""
    from archnet.text import corpus as corpus_module
    real = corpus_module.tokenize
    seen: list[str] = []

    def spy(tokenizer, sentences, *a, **kw):
        seen.extend(sentences)
        return real(tokenizer, sentences, *a, **kw)
    out = tmp_path_factory.mktemp("text-convert") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(corpus_module, "tokenize", spy)
    try:
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = _convert(tiny_bert_dir, "ethos-u55-128", out, corpus)
        printed = buf.getvalue().splitlines()
    finally:
        mp.undo()
    assert rc == 0, printed
    return out, printed, seen


def test_convert_writes_a_verified_run_folder(converted, tiny_bert_dir, corpus):
    from archnet.student_io import load_student
    out, stdout, _ = converted
    summary = json.loads((out / "convert.json").read_text())
    check = summary["emulation_vs_simulator"]
    assert check["agreement"] == 1.0 and check["matching"] == check["elements"] > 0
    assert check["first_divergent_block"] is None
    assert summary["fallbacks"] == 0 and summary["inputs"] == "tokens"
    assert summary["chip"] == "ethos-u55-128" and summary["max_len"] == 16
    assert set(summary["bits"]) == {"8w8a"} and summary["distill_sentences"] == 40
    assert summary["plan"]["recipe"] == "native"
    assert [h["period"] for h in summary["history"]] == [0, 1, 2, 3]   # 3 blocks, last period
    assert summary["estimated_latency_ms"] > 0
    assert summary["command"].startswith("archnet convert ")
    assert summary["teacher_layers"] is None
    # sentences longer than --max-len: one warning line, and the count in the summary
    warnings = [line for line in stdout if line.startswith("warning: ")]
    assert len(warnings) == 1, stdout
    assert warnings[0].endswith("sentences were truncated to 16 positions")
    assert int(warnings[0].split()[1]) == summary["truncated"] > 0

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        [f"period_{k:02d}.pt" for k in range(4)]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    student, meta = load_student(out / "student.pt")
    assert meta["teacher_path"] == tiny_bert_dir and meta["profile"] == "ethos-u55-128"
    assert meta["corpus"] == str(corpus)
    program = load_program(out / "model.program")
    assert program.inputs == ["tokens", "mask"]
    assert program.metadata["archnet"]["student_checkpoint"] == "student.pt"
    assert {n.op.value for n in program.nodes} <= ALLOWED
    # the saved Program is the saved student's export; exported at batch 2 (as verify runs
    # it) it computes on the chip what the student's integer emulation does, padded rows and all
    from archnet.student_program import check_program_matches
    check_program_matches(program, student, out / "model.program", out / "student.pt")
    chip = load_profile("ethos-u55-128")
    ids = torch.zeros((2, 16), dtype=torch.long)
    ids[0, :6] = torch.tensor([2, 5, 9, 12, 7, 3])
    ids[1, :3] = torch.tensor([2, 8, 3])
    mask = (ids != 0).long()
    got = execute(student.export((2, *student.input_shape)), chip,
                  {"tokens": student.input.host_values(ids),
                   "mask": mask.numpy().astype(np.uint8)}).outputs
    ours = student.integer_forward(ids, chip, side={"mask": mask.float()})
    assert np.array_equal(got[program.outputs[0]], ours.value.numpy())


def test_heldout_sentences_are_never_distilled_on(converted, corpus):
    """Every sentence convert tokenized is a distillation one: the held-out split (by a hash of
    each sentence) never reaches the teacher, the student or the simulator."""
    from archnet.text.corpus import read_sentences, split_heldout
    _, _, seen = converted
    train, heldout = split_heldout(read_sentences(corpus), 0.1)
    assert heldout and len(seen) == 40
    assert set(seen) <= set(train) and not set(seen) & set(heldout)


def test_resume(converted, tiny_bert_dir, corpus, tmp_path, capsys):
    """A second convert into the same folder without --resume is refused; --resume of the
    finished run trains nothing and writes the same student; with the last periods' checkpoints
    lost, --resume trains them again to the same weights."""
    from archnet.student_io import load_student
    out = tmp_path / "run"
    shutil.copytree(converted[0], out)
    before, _ = load_student(out / "student.pt")
    before = {k: v.clone() for k, v in before.state_dict().items()}
    capsys.readouterr()
    assert _convert(tiny_bert_dir, "ethos-u55-128", out, corpus) == 2
    assert "--resume" in _one_line_error(capsys)
    assert _convert(tiny_bert_dir, "ethos-u55-128", out, corpus, "--resume") == 0
    assert "resume: continuing after period 3" in capsys.readouterr().out
    again, _ = load_student(out / "student.pt")
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())

    for k in (2, 3):
        (out / "checkpoints" / f"period_{k:02d}.pt").unlink()
    assert _convert(tiny_bert_dir, "ethos-u55-128", out, corpus, "--resume") == 0
    assert "resume: continuing after period 1" in capsys.readouterr().out
    again, _ = load_student(out / "student.pt")
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())


def test_a_chip_without_attention_is_refused(tiny_bert_dir, short_corpus, tmp_path, capsys):
    out = tmp_path / "k210"
    capsys.readouterr()
    assert _convert(tiny_bert_dir, "k210-kpu", out, short_corpus) == 2
    err = _one_line_error(capsys)
    assert "k210-kpu" in err and "matmul" in err and "softmax" in err
    assert not (out / "student.pt").exists() and not (out / "convert.json").exists()


def test_the_paper_recipe_goes_through_the_shared_pipeline(tiny_bert_dir, short_corpus, tmp_path,
                                                          capsys):
    """--recipe paper: the paper's op set has no attention (matmul, softmax, transpose), so the
    plan names each node it cannot place, in one line."""
    capsys.readouterr()
    assert _convert(tiny_bert_dir, "ethos-u55-128", tmp_path / "paper", short_corpus,
                    "--recipe", "paper") == 2
    err = _one_line_error(capsys)
    assert "with the paper recipe" in err and "softmax" in err


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
                                   "too many layers", "corpus smaller than a batch",
                                   "corpus too small to split"])
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
    elif fault == "too many layers":
        extra = ["--layers", "3"]
        needle = "--layers 3: teacher"
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


@pytest.mark.parametrize("extra, needle", [
    (["--recipe", "resnet"], "--recipe resnet lowers the zoo's ResNets only"),
    (["--dataset", "digits"], "--dataset: CNN teachers only"),
    (["--mixup", "0.5"], "--mixup: CNN teachers only"),
    (["--no-attention"], "--no-attention: CNN teachers only"),
    (["--calibration-images", "16"], "--calibration-images: CNN teachers only"),
    # the retired text student's options are gone, not ignored
    (["--attention-weight", "1"], "unrecognized arguments: --attention-weight"),
    (["--no-chip-values"], "unrecognized arguments: --no-chip-values"),
    (["--allow-fallback"], "unrecognized arguments: --allow-fallback"),
])
def test_options_that_do_not_apply_to_a_text_teacher_are_refused(extra, needle, tiny_bert_dir,
                                                                 short_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    try:
        rc = _convert(tiny_bert_dir, "ethos-u55-128", out, short_corpus, *extra)
    except SystemExit as exc:           # argparse
        rc = exc.code
    assert rc == 2
    err = _one_line_error(capsys)
    assert needle in err, err
    assert not out.exists()


def test_archnet_plan_takes_a_text_teacher(tiny_bert_dir, tmp_path, capsys):
    record = tmp_path / "plan.json"
    assert main(["plan", tiny_bert_dir, "--chip", "ethos-u55-128", "--max-len", "16",
                 "--json", str(record)]) == 0
    plan = json.loads(record.read_text())
    assert plan["rules_fired"]["softmax.native"] == 2 and plan["student_fallbacks"] == 0
    # the embedding's rows looked up by the host as it writes the input (the U55 has no gather),
    # not the one-hot layer that streams the whole table
    assert plan["rules_fired"]["embedding.gather"] == 1 and plan["embedding"] == "auto"
    assert "embedding.gather" in capsys.readouterr().out
    assert main(["plan", tiny_bert_dir, "--chip", "ethos-u55-128", "--max-len", "16",
                 "--embedding", "one_hot", "--json", str(record)]) == 0
    assert json.loads(record.read_text())["rules_fired"]["embedding.one_hot_fc"] == 1


def test_torchrun_two_cpu_processes(tiny_bert_dir, corpus, tmp_path):
    """A text teacher under torchrun as an image teacher: both ranks train their slice of each
    batch, rank 0 writes, the result is bit-exact."""
    import os
    import subprocess
    import sys
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "archnet", "convert", tiny_bert_dir, "--chip", "ethos-u55-128", "--out",
           str(out), "--corpus", str(corpus), *FAST]
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "convert.json").read_text())
    assert summary["world_size"] == 2 and summary["inputs"] == "tokens"
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0
    assert done.stdout.count("wrote ") == 1            # only rank 0 writes
