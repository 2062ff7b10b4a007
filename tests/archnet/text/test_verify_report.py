"""``archnet verify`` and ``archnet report`` on a text run folder: a tiny random BERT converted
for ethos-u55-128 by the shared pipeline in a few steps (the numbers are not the point: the
proofs, files and exit codes are)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil

import pytest

pytest.importorskip("transformers")

from archnet.errors import ArchnetError  # noqa: E402

CHIP = "ethos-u55-128"
MAX_LEN = 16
BLOCKS = ["model.embeddings", "model.encoder.layer.0", "model.encoder.layer.1"]
# the tiny BERT's vocabulary (conftest.TINY_WORDS), so that sentences tokenize to real ids
WORDS = ("the a cat dog sat on mat and ran far away quick brown fox jumps over lazy sleeps under "
         "tree").split()


def _main(argv) -> int:
    from archnet.cli import main
    return main(argv)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(7)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16)))
             for _ in range(60)]
    path = tmp_path_factory.mktemp("corpus") / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def heldout(corpus):
    from archnet.text.corpus import read_sentences, split_heldout
    sentences = split_heldout(read_sentences(corpus), 0.1)[1]
    assert len(sentences) >= 5, "the test corpus must hold out a few sentences"
    return sentences


def _convert(teacher, corpus, out, *extra) -> None:
    assert _main(["convert", str(teacher), "--chip", CHIP, "--out", str(out), "--corpus",
                  str(corpus), "--max-len", str(MAX_LEN), "--max-sentences", "40",
                  "--steps-per-period", "2", "--final-steps", "2", "--batch-size", "8",
                  "--threads", "1", "--no-progress", *extra]) == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bert_dir, corpus):
    out = tmp_path_factory.mktemp("text-run") / "run"
    _convert(tiny_bert_dir, corpus, out)
    return out


def _copy_run(run_dir, dest):
    return shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("verify_*", "report"))


# ----------------------------------------------------------------------------- verify_tokens

def test_verify_agrees_everywhere_and_writes_json(run_dir, heldout, tmp_path):
    from archnet.jobs.verify_tokens import format_text_verify, verify_tokens
    out = tmp_path / "records" / "verify.json"
    doc = verify_tokens(run_dir / "model.program", CHIP, out=out, batch=3, progress=False,
                        log=None)
    n = len(heldout)
    assert doc["bit_exact"] and doc["agreement_fraction"] == 1.0
    assert doc["first_divergent_block"] is None and doc["divergence"] is None
    assert [a["name"] for a in doc["agreement"]] == BLOCKS
    assert all(a["matched"] == a["total"] == n * MAX_LEN * 32 for a in doc["agreement"])
    assert doc["data"]["sentences"] == doc["data"]["heldout_sentences"] == n
    assert doc["data"]["max_len"] == MAX_LEN and doc["chunks"] == math.ceil(n / 3)
    quality = doc["quality"]
    sim = quality["simulator_vs_teacher"]
    assert sim["sentences"] == n and sim["pairs"] == n * (n - 1) // 2
    assert -1.0 <= sim["min_cosine"] <= sim["mean_cosine"] <= 1.0
    assert 0.0 <= sim["nn_agreement"] <= 1.0
    # bit-exact integers give the same embeddings; the float student is another forward
    assert quality["emulation_vs_teacher"] == sim
    assert set(quality["fake_quant_vs_teacher"]) == set(sim)
    summary = json.loads((run_dir / "convert.json").read_text())
    assert doc["latency_ms"] == pytest.approx(summary["estimated_latency_ms"])
    assert doc["fallback_count"] == 0 and doc["fallbacks"] == []
    assert doc["teacher_matches_conversion"] is True and doc["converted_for"] == CHIP
    assert doc["commands"]["verify"].startswith(f"archnet verify {run_dir / 'model.program'} ")
    assert doc["program_sha256"] and doc["inputs"] == "tokens"
    assert json.loads(out.read_text()) == doc
    assert not list(out.parent.glob(".*.tmp"))
    text = format_text_verify(doc)
    assert "BIT-EXACT" in text and "NN agreement" in text and "Spearman" in text
    ov = doc["overflow"]   # ethos-u55's 32-bit accumulator holds the tiny BERT
    assert ov["accumulator_bits"] == 32 and ov["events"] == 0 and ov["overflowed"] is False
    assert ov["layer_count"] == len(ov["layers"]) > 0 and ov["outputs"] > 0
    assert "WRAPPED" not in text and "SATURATED" not in text
    assert "no accumulator overflow: the chip's 32-bit accumulator held all" in text


def test_another_chip_and_fewer_sentences(run_dir):
    """A chip with other requantization arithmetic: the Program's real multipliers become that
    chip's integers, and emulation and simulator still agree."""
    from archnet.jobs.verify_tokens import verify_tokens
    doc = verify_tokens(run_dir / "model.program", "rk3588-npu-core", max_sentences=4, batch=16,
                        progress=False, log=None)
    assert doc["bit_exact"] and doc["chip"] == "rk3588-npu-core"
    assert doc["data"]["sentences"] == 4 and doc["chunks"] == 1
    assert doc["fallback_count"] == len(doc["fallbacks"]) and doc["latency_ms"] > 0
    with pytest.raises(ArchnetError, match="max_sentences must be an integer of at least 3"):
        verify_tokens(run_dir / "model.program", CHIP, max_sentences=2, log=None)


def test_narrow_accumulator_is_said_plainly(run_dir, tmp_path):
    """A chip whose 8-bit accumulator wraps: the per-layer events, the safe width and WRAPPED
    next to the result, in the JSON and the text."""
    from archnet.jobs.verify_tokens import format_text_verify, verify_tokens
    from simulator.ir.ops import MAC_OPS
    from simulator.ir.program import load_program
    chip = tmp_path / "acc8.toml"
    chip.write_text(f'inherit = "{CHIP}"\nname = "acc8"\ndescription = "8-bit wrap"\n\n'
                    f'[arithmetic]\naccumulator_bits = 8\noverflow = "wrap"\n'
                    f'saturation_point = "final"\n')
    doc = verify_tokens(run_dir / "model.program", chip, max_sentences=3, batch=2,
                        progress=False, log=None)
    ov = doc["overflow"]
    program = load_program(run_dir / "model.program")
    assert [r["name"] for r in ov["layers"]] == [n.name for n in program.nodes
                                                 if n.op in MAC_OPS]
    hit = [r for r in ov["layers"] if r["events"]]
    assert hit and ov["wrapped"] is True and ov["saturated"] is False
    assert all(r["required_bits"] > 8 and not r["fits"] for r in hit)
    assert ov["events"] == sum(r["events"] for r in hit) and ov["safe_bits"] > 8
    text = format_text_verify(doc)
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("result: "))
    assert lines[i + 1] == "  " + ov["sentence"]
    assert "WRAPPED" in ov["sentence"] and f"{ov['events']:,}" in ov["sentence"]
    assert all(any(ln.startswith(f"  {r['name']} ") and ln.endswith("<- overflow")
                   for ln in lines) for r in hit)


def test_program_of_another_student_is_refused(run_dir, tmp_path):
    import torch

    from archnet.jobs.verify_tokens import verify_tokens
    from archnet.student_io import load_student, save_student
    run = _copy_run(run_dir, tmp_path / "run")
    student, meta = load_student(run / "student.pt")
    w = next(v for k, v in student.named_parameters()
             if ".layers.linear" in k and k.endswith(".weight"))
    with torch.no_grad():
        flat = w.view(-1)
        i = int(flat.abs().argmax())
        flat[i] = -flat[i]   # the largest weight: never on the zero step, so its integer flips
    save_student(run / "student.pt", student, meta)
    with pytest.raises(ArchnetError) as err:
        verify_tokens(run / "model.program", CHIP, log=None)
    msg = str(err.value)
    assert "\n" not in msg and "is not the export of" in msg
    assert str(run / "model.program") in msg and str(run / "student.pt") in msg


def test_edited_program_is_refused(run_dir, tmp_path):
    from archnet.jobs.verify_tokens import verify_tokens
    from simulator.ir.program import load_program, save_program
    run = _copy_run(run_dir, tmp_path / "run")
    program = load_program(run / "model.program")
    name = next(k for k, t in program.tensors.items()
                if t.data is not None and k.endswith("fc.weight") and t.data.size > 3)
    t = program.tensors[name]
    data = t.data.copy()
    data.flat[3] = 1 if data.flat[3] != 1 else 2
    program.tensors[name] = dataclasses.replace(t, data=data)
    save_program(program, run / "model.program")
    with pytest.raises(ArchnetError) as err:
        verify_tokens(run / "model.program", CHIP, log=None)
    msg = str(err.value)
    assert "\n" not in msg and f"constant {name!r} differs in 1 element" in msg


def test_a_truncated_teacher_is_converted_and_verified_as_truncated(tiny_bert_dir, corpus,
                                                                   tmp_path):
    """--layers 1: the student imitates the teacher's first layer, convert.json records it, and
    verify and report compare with the teacher cut to that layer."""
    import torch

    from archnet.jobs.verify_tokens import verify_tokens
    from archnet.text.teacher import load_text_teacher, recorded_teacher
    out = tmp_path / "one-layer"
    _convert(tiny_bert_dir, corpus, out, "--layers", "1")
    summary = json.loads((out / "convert.json").read_text())
    assert summary["teacher_layers"] == 1 and summary["emulation_vs_simulator"]["agreement"] == 1.0
    assert [b["block"] for b in summary["blocks"]] == BLOCKS[:2]
    cut = recorded_teacher(summary, out)
    full = load_text_teacher(tiny_bert_dir)
    assert cut.config.layers == 1 and full.config.layers == 2
    assert cut.fingerprint == full.fingerprint == summary["teacher_sha256"]
    ids = torch.tensor([[2, 5, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    assert torch.allclose(cut.forward(ids, mask).hidden_states[-1],
                          full.forward(ids, mask).hidden_states[1])
    doc = verify_tokens(out / "model.program", CHIP, max_sentences=4, log=None)
    assert doc["bit_exact"] and doc["teacher_layers"] == 1
    assert [a["name"] for a in doc["agreement"]] == BLOCKS[:2]


# ----------------------------------------------------------------------------- the CLI

def test_cli_exit_codes(run_dir, tmp_path, capsys, monkeypatch):
    program = str(run_dir / "model.program")
    out = tmp_path / "verify.json"
    rc = _main(["verify", program, "--chip", CHIP, "--batch", "4", "--max-sentences", "5",
                "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    for words in ("BIT-EXACT", "mean cosine", "NN agreement", "Spearman", "ms per sentence"):
        assert words in printed.out
    doc = json.loads(out.read_text())
    assert doc["data"]["sentences"] == 5 and doc["batch"] == 4 and doc["chunks"] == 2
    assert "--max-sentences 5 --batch 4" in doc["commands"]["verify"]
    assert not (run_dir / "report").exists()   # --out outside the run folder: no report

    from archnet.quant.qtensor import QTensor
    from archnet.student import GraphBlock
    real = GraphBlock.integer_forward

    def off_by_one(self, x, arith, side=None):
        q = real(self, x, arith, side)
        return QTensor(q.value + 1, q.scale, q.dtype) if self.name == BLOCKS[1] else q
    monkeypatch.setattr(GraphBlock, "integer_forward", off_by_one)
    rc = _main(["verify", program, "--chip", CHIP, "--max-sentences", "3", "--out",
                str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 1
    assert "MISMATCH" in printed and f"first divergent block {BLOCKS[1]!r}" in printed
    doc = json.loads(out.read_text())
    assert doc["bit_exact"] is False and doc["first_divergent_block"] == BLOCKS[1]
    assert doc["divergence"]["block"] == BLOCKS[1] and doc["divergence"]["sentence"] == 0
    assert doc["divergence"]["archnet"] == doc["divergence"]["simulator"] + 1
    assert [a["matched"] == a["total"] for a in doc["agreement"]] == [True, False, False]
    monkeypatch.undo()

    assert _main(["verify", program, "--chip", CHIP, "--limit", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--limit applies to CNN runs only" in err[0]
    assert _main(["verify", str(tmp_path / "none.program"), "--chip", CHIP]) == 2
    assert "none.program: no such Program file" in capsys.readouterr().err


@pytest.mark.parametrize("metadata, needle", [
    ({"family": "text", "student_checkpoint": "student.pt"}, "retired archnet/text student"),
    ({}, "not the Program of an `archnet convert` run"),
])
def test_a_program_no_run_of_the_shared_pipeline_wrote_is_refused(run_dir, tmp_path, capsys,
                                                                  metadata, needle):
    """The retired text student's Programs, and Programs no run wrote, are refused in one line
    naming the file."""
    from simulator.ir.program import load_program, save_program
    run = _copy_run(run_dir, tmp_path / "run")
    program = load_program(run / "model.program")
    save_program(dataclasses.replace(program, metadata=metadata), run / "model.program")
    capsys.readouterr()
    assert _main(["verify", str(run / "model.program"), "--chip", CHIP]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("archnet: error: "), err
    assert str(run / "model.program") in err[0] and needle in err[0]


def test_report_refuses_a_run_of_the_retired_text_student(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path / "old")
    summary = json.loads((run / "convert.json").read_text())
    summary.pop("inputs")
    (run / "convert.json").write_text(json.dumps({**summary, "family": "text"}))
    capsys.readouterr()
    assert _main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "retired archnet/text student" in err[0]
    assert not (tmp_path / "rep").exists()


def test_verify_into_the_run_and_report(run_dir, tmp_path, capsys):
    from simulator.profiles import list_profiles
    record = run_dir / f"verify_{CHIP}.json"
    assert _main(["verify", str(run_dir / "model.program"), "--chip", CHIP, "--out",
                  str(record), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert (run_dir / "report" / "report.md").is_file()   # a record in the run refreshes it
    assert f"report: {run_dir.resolve() / 'report' / 'report.md'}" in printed

    second = _copy_run(run_dir, tmp_path / "second")
    out = tmp_path / "both"
    assert _main(["report", str(run_dir), str(second), "--out", str(out), "-q"]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    lines = md.splitlines()

    def row(prefix: str) -> list[str]:
        found = [ln for ln in lines if ln.startswith(prefix)]
        assert len(found) == 1, prefix
        return [c.strip() for c in found[0].strip("|").split("|")]

    header = row("| chip | graph |")
    teacher = dict(zip(header, row(f"| {CHIP} | teacher ")))
    for op in ("LayerNormalization", "Gather"):   # GELU: the activation unit's table
        assert op in teacher["host op types"]
    assert "Erf" not in teacher["host op types"]
    assert int(teacher["fallbacks"]) > 0
    student = dict(zip(header, row(f"| {CHIP} | student {run_dir.name} |")))
    # the U55 has no gather: the host looks the embedding's rows up as it writes the input
    assert student["fallbacks"] == "0" and student["host op types"] == "gather 1"
    assert float(student["vs teacher"].rstrip("x")) > 1
    for chip in list_profiles():   # every bundled profile, teacher and both students
        assert sum(ln.startswith(f"| {chip} | ") for ln in lines) == 3

    qheader = row("| run | bits |")
    verified = dict(zip(qheader, row(f"| {run_dir.name} | 8w8a | {CHIP} |")))
    doc = json.loads(record.read_text())
    assert verified["mean cosine"] == f"{doc['quality']['simulator_vs_teacher']['mean_cosine']:.4f}"
    assert verified["element agreement"] == "100%" and verified["bit-exact"] == "yes"
    assert "not verified" in row(f"| second | 8w8a | {CHIP} |")
    assert doc["commands"]["verify"] in md and str(tmp_path / "second") in md

    import pandas as pd
    lat = pd.read_csv(out / "latency.csv")
    assert len(lat) == 3 * len(list_profiles())
    assert set(lat["kind"]) == {"teacher", "student"}
    qual = pd.read_csv(out / "quality.csv")
    assert list(qual["status"]) == ["verified", "not verified"]

    assert _main(["report", str(run_dir), "--images", "8"]) == 2
    assert "--images applies to CNN runs" in capsys.readouterr().err


def test_a_verify_record_of_an_earlier_program_is_stale(run_dir, tmp_path, capsys):
    """The record names the Program's SHA-256: a Program converted again since is reported
    stale, not with the old numbers as its own."""
    run = _copy_run(run_dir, tmp_path / "run")
    assert _main(["verify", str(run / "model.program"), "--chip", CHIP, "--out",
                  str(tmp_path / "v.json"), "--max-sentences", "3", "--no-progress"]) == 0
    record = json.loads((tmp_path / "v.json").read_text())
    (run / f"verify_{CHIP}.json").write_text(json.dumps({**record, "program_sha256": "0" * 64}))
    capsys.readouterr()
    assert _main(["report", str(run), "--out", str(tmp_path / "rep"), "--chips", CHIP,
                  "-q"]) == 0
    qual = (tmp_path / "rep" / "quality.csv").read_text()
    assert "stale: model.program changed since" in qual


def test_a_run_folder_of_json_records_only_is_reported_from_them(run_dir, tmp_path, capsys):
    """reports/minilm keeps a run's JSON and not its 90 MB student: quality and the verified
    chip's latency come from the verify record; the teacher is still costed on every chip."""
    run = _copy_run(run_dir, tmp_path / "run")
    assert _main(["verify", str(run / "model.program"), "--chip", CHIP, "--out",
                  str(run / f"verify_{CHIP}.json"), "--max-sentences", "3", "--no-progress"]) == 0
    record = json.loads((run / f"verify_{CHIP}.json").read_text())
    for name in ("student.pt", "model.program"):
        (run / name).unlink()
    capsys.readouterr()
    out = tmp_path / "rep"
    assert _main(["report", str(run), "--out", str(out), "--chips", f"{CHIP},k210-kpu",
                  "-q"]) == 0
    import pandas as pd
    lat = pd.read_csv(out / "latency.csv")
    student = lat[lat["kind"] == "student"]
    assert list(student["chip"]) == [CHIP]          # no record on the K210: no row
    assert student["latency_ms"].iloc[0] == pytest.approx(record["latency_ms"])
    assert set(lat[lat["kind"] == "teacher"]["chip"]) == {CHIP, "k210-kpu"}
    qual = pd.read_csv(out / "quality.csv")
    assert list(qual["status"]) == ["verified"]
    assert qual["mean_cosine"].iloc[0] == pytest.approx(
        record["quality"]["simulator_vs_teacher"]["mean_cosine"])
    assert "(verify record)" in (out / "report.md").read_text()
    plan = pd.read_csv(out / "plan.csv", keep_default_na=False)     # the rule per node
    summary = json.loads((run / "convert.json").read_text())
    assert plan["rule"].tolist() == [d["rule"] for d in summary["plan"]["decisions"]]
    layer_norms = plan[plan["op"] == "layer_norm"]
    assert len(layer_norms) and set(layer_norms["kept"]) == {"replaced"}   # none on this chip
    history = pd.read_csv(out / "history.csv")      # as an image run's report has it
    summary = json.loads((run / "convert.json").read_text())
    assert len(history) == len(summary["history"]) and (out / "history.png").is_file()
    assert list(history["new_block"])[-1] == "(last period)"     # on the sentence embedding

    (run / f"verify_{CHIP}.json").unlink()          # nothing left to report from
    assert _main(["report", str(run), "--out", str(tmp_path / "none")]) == 2
    assert "missing from the run folder" in capsys.readouterr().err


def test_verify_on_the_users_own_text(run_dir, tmp_path, capsys):
    """--corpus FILE: every line of the user's file is held out (no split), measured as the run's
    held-out sentences are; recorded and reported as that file's."""
    program = str(run_dir / "model.program")
    own = tmp_path / "mine.txt"
    lines = [f"my own sentence number {k} about the weather" for k in range(7)]
    own.write_text("\n".join(lines + [lines[0], "too short"]) + "\n")   # a repeat, a 2-word line
    out = tmp_path / "verify_own.json"
    assert _main(["verify", program, "--chip", CHIP, "--corpus", str(own), "--batch", "4",
                  "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "BIT-EXACT" in printed and "every line held out" in printed
    doc = json.loads(out.read_text())
    assert doc["data"]["split"] == "every line" and doc["data"]["corpus"] == str(own)
    assert doc["data"]["sentences"] == doc["data"]["heldout_sentences"] == 7
    assert doc["data"]["heldout_fraction"] is None
    assert f"--corpus {own}" in doc["commands"]["verify"]
    assert doc["data"]["in_run_training_split"] == 0 and "0 in the run's training split" in printed
    assert doc["quality"]["simulator_vs_teacher"]["mean_cosine"] > 0

    run = _copy_run(run_dir, tmp_path / "copy")
    shutil.copy(out, run / f"verify_{CHIP}.json")
    assert _main(["report", str(run), "--out", str(tmp_path / "rep"), "--chips", CHIP, "-q"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert f"(every line of {own})" in text and "every line held out, of 7" in text


def test_own_text_that_the_run_could_have_distilled_on_is_said(run_dir, tmp_path, capsys):
    """Lines of the user's file that lie in the run's training split are counted and warned of:
    a measure on them is not a held-out one."""
    from archnet.text.corpus import recorded_split
    info = json.loads((run_dir / "convert.json").read_text())
    train = recorded_split(info, run_dir)[0]
    own = tmp_path / "mine.txt"
    own.write_text("\n".join(train[:3] + [f"a sentence of mine, number {k}" for k in range(4)]))
    out = tmp_path / "v.json"
    assert _main(["verify", str(run_dir / "model.program"), "--chip", CHIP, "--corpus", str(own),
                  "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(out.read_text())["data"]["in_run_training_split"] == 3
    assert "warning: 3 of your 7 sentences are in the training split" in printed


@pytest.mark.parametrize("content, needle", [
    (None, "no such corpus file"),
    ("", "is empty"),
    (b"\xff\xfe bad bytes here\n", "not UTF-8"),
    ("one two three four\n" * 2, "needs at least"),
])
def test_an_unusable_own_corpus_is_one_line_naming_it(run_dir, tmp_path, capsys, content, needle):
    own = tmp_path / "mine.txt"
    if isinstance(content, bytes):
        own.write_bytes(content)
    elif content is not None:
        own.write_text(content)
    assert _main(["verify", str(run_dir / "model.program"), "--chip", CHIP, "--corpus",
                  str(own), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "mine.txt" in err[0], err
