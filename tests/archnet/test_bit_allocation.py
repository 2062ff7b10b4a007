"""Per-block latency tables and HAQ-style bit allocation on the digits ResNet-8 teacher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from archnet.bit_allocation import (BIT_OPTIONS, GraphStudents, ResNetStudents, _calibration,
                                    _candidates,
                                    allocate_bits, block_names, feasible_options,
                                    format_latency_table, latency_table, logit_distortion)
from archnet.cli.bit_allocation import add_commands
from archnet.data import load_dataset
from archnet.errors import ConversionError
from archnet.lowering.calibrate import calibrate_activations, calibrate_batchnorm
from archnet.lowering.resnet import convert_resnet
from archnet.student_io import save_student
from archnet.teachers import load_teacher
from simulator import cli as simulator_cli
from simulator.cost import estimate
from simulator.profiles import load_profile

TEACHER = Path(__file__).resolve().parents[2] / "reports" / "teachers" / "digits_resnet8.pt"
BLOCKS = ["stem", "layer1.0", "layer2.0", "layer3.0", "head"]
RK = "rk3588-npu-core"


@pytest.fixture(scope="module")
def teacher():
    model, meta = load_teacher(TEACHER)
    return model, meta["input_shape"]


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits", split="train", labels=False).images[:128]


@pytest.fixture(scope="module")
def rk_table(teacher):
    model, shape = teacher
    return latency_table(model, RK, shape)


def exact_ms(model, profile, bits, shape) -> float:
    return estimate(convert_resnet(model, profile, bits, shape).export(),
                    load_profile(profile)).total_latency_ms


# ----------------------------------------------------------------------------- latency table

@pytest.mark.parametrize("chip", ["ideal", RK, "ethos-u55-128"])
def test_block_latencies_sum_to_the_estimate(teacher, chip):
    model, shape = teacher
    df = latency_table(model, chip, shape)
    assert block_names(model) == BLOCKS
    assert list(df.index) == BLOCKS + ["total"]
    assert df.attrs["options"] == list(BIT_OPTIONS)
    for opt in BIT_OPTIONS:
        col = df[f"{opt} ms"]
        assert col.loc[BLOCKS].sum() == pytest.approx(col.loc["total"], rel=1e-12, abs=0)
        assert col.loc["total"] == pytest.approx(exact_ms(model, chip, opt, shape), rel=1e-12)
        assert (col.loc[BLOCKS] > 0).all()
        assert (df[f"{opt} fallbacks"] == 0).all()   # a converted student never falls back
    text = format_latency_table(df)
    assert chip in text and all(b in text for b in BLOCKS + ["total"])


def test_rk3588_runs_4bit_faster(rk_table):
    total = rk_table.loc["total"]
    assert total["4w4a ms"] < total["8w8a ms"]
    assert (rk_table.loc[BLOCKS, "4w4a ms"] <= rk_table.loc[BLOCKS, "8w8a ms"]).all()
    # 2-bit weights run on the 4w4a datapath: no faster than 4w4a
    assert total["2w4a ms"] == total["4w4a ms"]


def test_8bit_only_chip_runs_narrow_bits_on_its_8bit_datapath(teacher):
    """ethos-u55-128 runs 8w8a/8w16a only: resolve_bits accepts 2w4a and 4w4a (narrow integers
    run exactly on a wider datapath), so they are feasible, but they give no MAC speed-up."""
    model, shape = teacher
    chip = "ethos-u55-128"
    assert feasible_options(model, chip, shape) == list(BIT_OPTIONS)
    assert feasible_options(model, chip, shape, ["4w4a", "16w16a"]) == ["4w4a"]
    prof = load_profile(chip)
    narrow = estimate(convert_resnet(model, prof, "4w4a", shape).export(), prof)
    wide = estimate(convert_resnet(model, prof, "8w8a", shape).export(), prof)
    changed = set()
    for a, b in zip(narrow.ops, wide.ops, strict=True):
        assert a.name == b.name
        if a.type in ("conv2d", "fully_connected"):
            assert (a.weight_bits, a.activation_bits) == (8, 8)   # the chip's mode
            assert a.cycles == b.cycles
        elif a.cycles != b.cycles:
            changed.add(a.type)
    # the cost model moves concat data at the values' width, not the 8-bit storage width: the
    # only difference, and never a slow-down
    assert changed <= {"concat"}
    assert narrow.total_latency_ms <= wide.total_latency_ms
    assert narrow.total_latency_ms > 0.99 * wide.total_latency_ms


def test_explicit_option_the_chip_cannot_run_is_an_error(teacher):
    model, shape = teacher
    with pytest.raises(ConversionError, match="16w16a.*ethos-u55-128"):
        latency_table(model, "ethos-u55-128", shape, ["8w8a", "16w16a"])
    with pytest.raises(ConversionError, match="expected '<w>w<a>a'"):
        latency_table(model, "ideal", shape, ["4bits"])


# ----------------------------------------------------------------------------- calibration

def _graph_students(model, shape, profile):
    from archnet.capture import capture
    return GraphStudents(capture(model, (torch.zeros(1, *shape),)), load_profile(profile))


@pytest.mark.parametrize("lowering", ["resnet", "graph"])
def test_cached_calibration_equals_direct_calibration(teacher, images, lowering):
    model, shape = teacher
    x = images[:64]
    students = ResNetStudents(model, load_profile(RK), shape) if lowering == "resnet" else \
        _graph_students(model, shape, RK)
    bits = ["8w8a", "4w4a", "8w8a", "2w4a", "4w4a"][:len(students.blocks)]
    cached = _candidates(students, _calibration(x), BIT_OPTIONS).student(bits)
    direct = students.build(bits)
    calibrate_batchnorm(direct, x)
    calibrate_activations(direct, x)
    with torch.no_grad():
        assert torch.equal(cached(x), direct.eval()(x))
        ref = model(x)
    assert 0 <= logit_distortion(cached, x, ref) < 1


# ----------------------------------------------------------------------------- allocation

def test_allocation_fits_a_budget_between_4bit_and_8bit(teacher, images, rk_table):
    model, shape = teacher
    low, high = rk_table.loc["total", "4w4a ms"], rk_table.loc["total", "8w8a ms"]
    budget = (low + high) / 2
    lines = []
    a = allocate_bits(model, RK, shape, budget, images, log=lines.append)
    assert len(a.bits) == len(BLOCKS) and set(a.bits) <= set(BIT_OPTIONS)
    assert a.estimated_ms <= budget
    assert a.estimated_ms == pytest.approx(exact_ms(model, RK, a.bits, shape), rel=1e-12)
    assert set(a.bits) != {"2w4a"} and set(a.bits) != {"4w4a"}      # not all-lowest
    assert "8w8a" in a.bits and a.bits != ["8w8a"] * len(BLOCKS)
    downs = [s for s in a.steps if s["action"] == "downgrade"]
    assert downs and all(s["saved_ms"] > 0 for s in downs)
    assert a.steps[-1]["estimated_ms"] == a.estimated_ms
    assert any(f"{s['block']} {s['from']} -> {s['to']}" in line for s in a.steps for line in lines)
    assert set(a.sensitivity) == set(BLOCKS)
    for row in a.sensitivity.values():        # narrower is more distorted
        assert row["2w4a"] > row["8w8a"] and row["4w4a"] > row["8w8a"]
    d = json.loads(json.dumps(a.to_dict()))
    assert d["bits"] == a.bits and d["budget_ms"] == budget and d["chip"] == RK


def test_impossible_budget_names_budget_chip_and_smallest_latency(teacher, images, rk_table):
    model, shape = teacher
    low = rk_table.loc["total", "4w4a ms"]
    with pytest.raises(ConversionError) as err:
        allocate_bits(model, RK, shape, 0.05, images, log=None)
    msg = str(err.value)
    assert "0.05 ms" in msg and RK in msg and f"{low:.6f}" in msg
    with pytest.raises(ConversionError, match="positive"):
        allocate_bits(model, RK, shape, -1, images, log=None)


def test_huge_budget_keeps_every_block_widest(teacher, images):
    model, shape = teacher
    a = allocate_bits(model, "ideal", shape, 1e6, images, log=None)
    assert a.bits == ["8w8a"] * len(BLOCKS) and a.steps == []
    assert a.estimated_ms == a.widest_ms


# ----------------------------------------------------------------------------- command line

def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="archnet")
    add_commands(parser.add_subparsers(dest="command"))
    return simulator_cli.run(parser, list(argv), prog="archnet")


def test_cli_prints_a_table_for_a_teacher(capsys, tmp_path):
    csv = tmp_path / "out" / "table.csv"
    assert run_cli("latency-table", str(TEACHER), "--chip", RK, "--recipe", "resnet",
                   "--csv", str(csv)) == 0
    out = capsys.readouterr().out
    assert all(b in out for b in BLOCKS + ["total", "4w4a ms", "8w8a ms"])
    df = pd.read_csv(csv, index_col="block")
    assert df.loc[BLOCKS, "4w4a ms"].sum() == pytest.approx(df.loc["total", "4w4a ms"], rel=1e-6)
    assert not [p for p in csv.parent.iterdir() if p.name != "table.csv"]   # no temporary left


def test_cli_tables_the_chip_driven_converters_blocks(capsys, tmp_path):
    csv = tmp_path / "table.csv"       # a teacher's default: the chip-driven converter's blocks
    assert run_cli("latency-table", str(TEACHER), "--chip", RK, "--csv", str(csv)) == 0
    df = pd.read_csv(csv, index_col="block")
    blocks = [b for b in df.index if b != "total"]
    assert blocks == ["conv1", "layer1.0", "layer2.0", "layer3.0", "fc"]   # the graph's blocks
    assert df.loc[blocks, "8w8a ms"].sum() == pytest.approx(df.loc["total", "8w8a ms"], rel=1e-6)


def test_cli_marks_a_students_own_bits(capsys, tmp_path, teacher):
    model, shape = teacher
    bits = ["8w8a", "8w8a", "4w4a", "4w4a", "8w8a"]
    path = tmp_path / "student.pt"
    save_student(path, convert_resnet(model, RK, bits, shape), {"teacher": str(TEACHER), "bits": bits,
                                                             "teacher_sha256": model.content_sha256})
    assert run_cli("latency-table", str(path), "--chip", RK, "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert [r.get("model_bits") for r in d["rows"]] == bits + [None]
    total = d["rows"][-1]["ms"]
    assert total["model"] == pytest.approx(exact_ms(model, RK, bits, shape), rel=1e-12)
    assert run_cli("latency-table", str(path), "--chip", RK, "--options", "8w8a,4w4a") == 0
    out = capsys.readouterr().out
    assert "* the model's own bits" in out and out.count("*") == len(BLOCKS) + 1


@pytest.mark.parametrize("make", ["missing", "not_a_checkpoint", "no_teacher"])
def test_cli_bad_model_is_one_line(capsys, tmp_path, teacher, make):
    path = tmp_path / "model.pt"
    if make == "not_a_checkpoint":
        path.write_text("hello")
    elif make == "no_teacher":
        model, shape = teacher
        save_student(path, convert_resnet(model, RK, "8w8a", shape), {})
    assert run_cli("latency-table", str(path), "--chip", RK) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and err.startswith("archnet: error: ")


def test_the_chip_driven_students_get_bits_per_block_under_a_budget(teacher, images):
    """HAQ-style allocation over the chip-driven converter's blocks: the widths fit the budget,
    differ between blocks, and the student built with them costs what the allocation says."""
    model, shape = teacher
    students = _graph_students(model, shape, RK)
    wide = estimate(students.build(["8w8a"] * len(students.blocks)).export(),
                    load_profile(RK)).total_latency_ms
    narrow = estimate(students.build(["4w4a"] * len(students.blocks)).export(),
                      load_profile(RK)).total_latency_ms
    assert narrow < wide
    budget = (wide + narrow) / 2
    alloc = allocate_bits(model, RK, shape, budget, images[:64], options=["4w4a", "8w8a"],
                          log=None, students=students)
    assert alloc.estimated_ms <= budget and len(set(alloc.bits)) == 2
    built = students.build(alloc.bits)
    assert built.config["meta"]["bits"] == alloc.bits
    assert estimate(built.export(), load_profile(RK)).total_latency_ms == \
        pytest.approx(alloc.estimated_ms)
