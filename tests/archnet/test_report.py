"""``archnet report RUN_DIR`` and ``archnet compare MODEL --chips``: one tiny digits run folder
(converted in a few steps, verified on 32 images on two chips), reported and compared."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from PIL import Image

from archnet.cli import report as report_cli
from archnet.errors import ReportError
from archnet.report import compare_model, write_report
from simulator.cli import run as run_cli
from simulator.cost import estimate
from simulator.ir.program import load_program
from simulator.profiles import load_profile

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "reports" / "teachers" / "digits_resnet8.pt"
CHIPS = ["k210-kpu", "ethos-u55-128"]
IMAGES = 8  # per-layer error images: enough to test, quick


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="archnet")
    report_cli.add_commands(parser.add_subparsers(dest="command"))
    return run_cli(parser, argv, prog="archnet")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from archnet.cli import main
    out = tmp_path_factory.mktemp("report") / "run"
    argv = ["convert", str(TEACHER), "--chip", CHIPS[0], "--bits", "4w4a", "--out", str(out),
            "--steps-per-period", "2", "--batch-size", "8", "--max-images", "64",
            "--calibration-images", "64", "--threads", "1", "--no-progress"]
    with mock.patch.object(sys, "argv", ["archnet", *argv]):  # convert records sys.argv
        assert main(argv) == 0
    for chip in CHIPS:
        assert main(["verify", str(out / "model.program"), "--chip", chip, "--limit", "32",
                     "--batch-size", "32", "--out", str(out / f"verify_{chip}.json"),
                     "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    return write_report(run_dir, images=IMAGES)


def _copy(run_dir: Path, dest: Path, *, without=()) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("report", "checkpoints", *without))
    return dest


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".report"))


def _valid_png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    im.load()
    assert im.width >= 600 and im.height >= 300, (path, im.size)
    return im


# ----------------------------------------------------------------------------- the report

def test_report_writes_markdown_tables_and_plots(report, run_dir):
    assert report == run_dir / "report"
    names = {p.name for p in report.iterdir()}
    expected = {"report.md", "chips.csv", "pareto.csv", "pareto.png", "layer_error.csv",
                "layer_error.png", "teacher_vs_archnet.csv", "teacher_vs_archnet.png",
                "history.csv", "history.png"}
    for chip in CHIPS:
        expected |= {f"ops_{chip}.csv", f"ops_{chip}.png", f"teacher_ops_{chip}.csv",
                     f"teacher_ops_{chip}.png"}
    assert expected <= names
    assert not _leftovers(run_dir)
    md = (report / "report.md").read_text()
    for name in names - {"report.md"}:
        assert f"({name})" in md, name  # every file is shown or linked from report.md
    summary = json.loads((run_dir / "convert.json").read_text())
    assert summary["command"] in md
    for chip in CHIPS:
        assert f"chip_profiles/{chip}.toml" in md


def test_csv_numbers_are_the_estimates(report, run_dir):
    program = load_program(run_dir / "model.program")
    for chip in CHIPS:
        est = estimate(program, load_profile(chip))
        df = pd.read_csv(report / f"ops_{chip}.csv")
        assert list(df["op"]) == [op.name for op in est.ops]
        assert df["cycles"].tolist() == pytest.approx([op.cycles for op in est.ops], rel=1e-12)
        assert df["latency_ms"].tolist() == pytest.approx([op.latency_ms for op in est.ops],
                                                          rel=1e-12)
        assert df["compute_cycles"].tolist() == pytest.approx(
            [op.cost.compute_cycles for op in est.ops], rel=1e-12)
        parts = df["compute_ms"] + df["memory_exposed_ms"] + df["overhead_ms"]
        assert parts.tolist() == pytest.approx(df["latency_ms"].tolist(), rel=1e-9, abs=1e-15)
        chips = pd.read_csv(report / "chips.csv").set_index("chip")
        assert chips.loc[chip, "latency_ms"] == pytest.approx(est.total_latency_ms, rel=1e-12)
        assert chips.loc[chip, "fallbacks"] == len(est.fallbacks)
    pareto = pd.read_csv(report / "pareto.csv").set_index("chip")
    for chip in CHIPS:
        v = json.loads((run_dir / f"verify_{chip}.json").read_text())
        assert pareto.loc[chip, "simulator_accuracy"] == pytest.approx(v["simulator_accuracy"])
        assert pareto.loc[chip, "latency_ms"] == pytest.approx(v["latency_ms"])
        assert pareto.loc[chip, "test_images"] == 32


def test_layer_error_teacher_and_history_tables(report, run_dir):
    from archnet.student_io import load_student
    student, _ = load_student(run_dir / "student.pt")
    steps = [f"{b.name}.{s['name']}" for b in student.blocks for s in b.spec["steps"]]
    layers = pd.read_csv(report / "layer_error.csv")
    for chip in CHIPS:
        d = layers[layers["chip"] == chip]
        assert d["tensor"].tolist() == steps  # every step, in network order
        assert (d["rel_error"] >= 0).all() and (d["rel_error_local"] >= 0).all()
        assert d["elements"].iloc[0] > 0
    teacher = pd.read_csv(report / "teacher_vs_archnet.csv")
    k210 = teacher[(teacher.chip == "k210-kpu")].set_index("graph")
    assert k210.loc["teacher", "fallbacks"] > 0       # the teacher's 7x7 conv, Add, pooling
    assert k210.loc["arch-net", "fallbacks"] == 0
    assert "7x7" in k210.loc["teacher", "fallback_ops"]
    history = pd.read_csv(report / "history.csv")
    summary = json.loads((run_dir / "convert.json").read_text())
    assert len(history) == len(summary["history"])
    assert history["loss_last"].tolist() == pytest.approx([h["loss_last"] for h in summary["history"]])


def test_every_png_is_an_image_that_names_its_sources(report, run_dir):
    summary = json.loads((run_dir / "convert.json").read_text())
    pngs = sorted(report.glob("*.png"))
    assert len(pngs) == 3 + 2 * len(CHIPS) + 1
    for png in pngs:
        im = _valid_png(png)
        text = im.text.get("Description", "")
        assert "profile" in text and ".toml" in text, png.name
        assert "archnet " in text, png.name               # the command that produced it
        assert "data" in text or "accuracy by" in text, png.name
        if png.name.startswith("ops_"):
            assert summary["command"] in text


def test_rewrite_keeps_the_old_report_until_the_new_one_is_complete(report, run_dir, monkeypatch):
    from archnet.report import plots
    before = {p.name: p.read_bytes() for p in report.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(plots, "plot_history", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(run_dir, images=IMAGES)
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert not _leftovers(run_dir)


# ----------------------------------------------------------------------------- bad input

def test_missing_student_is_one_line_naming_it_and_writes_nothing(run_dir, tmp_path, capsys):
    bad = _copy(run_dir, tmp_path / "bad", without=("student.pt",))
    with pytest.raises(ReportError) as err:
        write_report(bad)
    msg = str(err.value)
    assert "student.pt" in msg and "archnet convert" in msg and "\n" not in msg
    assert _cli(["report", str(bad)]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("archnet: error:") and "student.pt" in stderr
    assert len(stderr.splitlines()) == 1
    assert not (bad / "report").exists() and not _leftovers(bad)


def test_no_verify_json_is_a_clear_error_unless_latency_only(run_dir, tmp_path):
    bare = _copy(run_dir, tmp_path / "bare", without=("verify_*.json",))
    with pytest.raises(ReportError, match="no accuracy data") as err:
        write_report(bare)
    assert "archnet verify" in str(err.value) and "--out" in str(err.value)
    assert not (bare / "report").exists() and not _leftovers(bare)
    out = tmp_path / "latency-report"
    assert _cli(["report", str(bare), "--latency-only", "--out", str(out), "-q"]) == 0
    md = (out / "report.md").read_text()
    assert "Accuracy is absent" in md
    assert not (out / "pareto.png").exists() and not (out / "layer_error.csv").exists()
    assert (out / f"ops_{CHIPS[0]}.png").is_file()
    chips = pd.read_csv(out / "chips.csv")
    assert chips["chip"].tolist() == [CHIPS[0]] and "simulator_accuracy" not in chips
    assert not _leftovers(bare) and not (bare / "report").exists()


def test_other_runs_join_the_pareto_and_missing_folders_are_named(run_dir, tmp_path):
    other = _copy(run_dir, tmp_path / "other")
    out = write_report(run_dir, others=[other], out=tmp_path / "two", images=0)
    pareto = pd.read_csv(out / "pareto.csv")
    assert len(pareto) == 2 * len(CHIPS)
    assert not (out / "layer_error.csv").exists()  # --images 0
    with pytest.raises(ReportError, match="no such run folder"):
        write_report(run_dir, others=[tmp_path / "nowhere"], out=tmp_path / "three")
    assert not (tmp_path / "three").exists()


# ----------------------------------------------------------------------------- compare

def test_compare_run_folder_prints_plots_and_tables_all_chips(run_dir, tmp_path, capsys):
    chips = ["k210-kpu", "ethos-u55-128", "rk3588-npu-core"]
    plot, table = tmp_path / "cmp.png", tmp_path / "cmp.csv"
    assert _cli(["compare", str(run_dir), "--chips", ",".join(chips), "--plot", str(plot),
                 "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[3]
    for chip in chips:
        assert chip in head
    assert "latency ms" in out and "fallbacks" in out and "per-op latency" in out
    _valid_png(plot)
    df = pd.read_csv(table)
    program = load_program(run_dir / "model.program")
    for chip in chips:
        est = estimate(program, load_profile(chip))
        assert df[f"{chip} ms"].tolist() == pytest.approx([op.latency_ms for op in est.ops])
        assert f"{est.total_latency_ms:.4f}" in out


def test_compare_onnx_lists_fallbacks_with_reasons(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    model = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    if not model.is_file():
        pytest.skip("the onnx wheel has no light_squeezenet.onnx")
    chips = ["k210-kpu", "ethos-u55-128", "rk3588-npu-core"]
    assert _cli(["compare", str(model), "--chips", ",".join(chips)]) == 0
    out = capsys.readouterr().out
    for chip in chips:
        assert chip in out.splitlines()[3]
    c = compare_model(model, chips)
    k210 = c.estimates[0]
    assert k210.fallbacks  # 3x3 max pools, global pooling, softmax on the k210
    for op in k210.fallbacks:
        assert f"{op.name} ({op.type}) on k210-kpu: {op.fallback_reason}" in out
    assert _cli(["compare", str(model), "--chips", ",".join(chips), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["chip"] for c in doc["chips"]] == chips
    assert doc["chips"][0]["fallbacks"] == len(k210.fallbacks)


def test_compare_bad_input(tmp_path, capsys):
    assert _cli(["compare", str(tmp_path), "--chips", "k210-kpu"]) == 2
    assert "model.program" in capsys.readouterr().err
    assert _cli(["compare", str(tmp_path / "x.program"), "--chips", "k210-kpu"]) == 2
    assert "no such model" in capsys.readouterr().err
    assert _cli(["compare", str(tmp_path), "--chips", ","]) == 2
    assert "--chips" in capsys.readouterr().err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_the_plan_names_the_rule_per_teacher_node(report, run_dir):
    """Per teacher node, the rule that fired and why, as convert.json records the plan: the
    K210 keeps its 3x3 convs and replaces the 7x7 stem and the residual adds."""
    plan = json.loads((run_dir / "convert.json").read_text())["plan"]
    table = pd.read_csv(report / "plan.csv", keep_default_na=False)
    assert table["node"].tolist() == [d["node"] for d in plan["decisions"]]
    assert table["rule"].tolist() == [d["rule"] for d in plan["decisions"]]
    by_op = table.groupby("op")["kept"].agg(set)
    assert by_op["add"] == {"replaced"}                     # the K210 has no add
    assert "yes" in by_op["conv2d"] and "replaced" in by_op["conv2d"]   # 3x3 kept, 7x7 not
    assert all(table["reason"] != "")
    md = (report / "report.md").read_text()
    assert "## Conversion plan: the rule per teacher node" in md
    assert all(f"`{rule}` x{n}" in md for rule, n in plan["rules_fired"].items())


def test_history_shows_periods_trained_on_the_chips_integers():
    from archnet.report.tables import history_frame
    period = {"period": 0, "new_block": "b0", "blocks": ["b0"], "steps": 5, "seconds": 2.0}
    plain = history_frame({"history": [period]})
    assert "chip_forward" not in plain.columns          # records without it read as before
    mixed = history_frame({"history": [period, {**period, "period": 1, "final": True,
                                                 "chip_forward": True}]})
    assert mixed["chip_forward"].tolist() == [False, True]
    assert mixed["new_block"].tolist() == ["b0", "(last period)"]
