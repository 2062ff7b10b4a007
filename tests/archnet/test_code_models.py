"""A user's own network, named as code (``file.py:factory``), through ``archnet convert`` and
``archnet verify`` on ``.npy`` images: converted by the chip-driven converter, bit-exact on the
simulator, the teacher's code run only when the user names it, accuracy only with labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from archnet.cli import main

MODEL = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build():
    return Tiny()
'''
FAST = ["--steps-per-period", "2", "--batch-size", "8", "--calibration-images", "32",
        "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("code")
    (tmp / "tiny.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.save(tmp / "train.npy", rng.integers(0, 256, (48, 1, 8, 8), dtype=np.uint8))
    np.save(tmp / "test.npy", rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8))
    np.save(tmp / "labels.npy", rng.integers(0, 4, 20))
    spec = f"{tmp / 'tiny.py'}:build"
    out = tmp / "run"
    assert main(["convert", spec, "--chip", "ethos-u55-128", "--bits", "8w8a",
                 "--data", str(tmp / "train.npy"), "--out", str(out), *FAST]) == 0
    return tmp, spec, out


def test_a_model_built_by_code_converts_natively(converted):
    _, spec, out = converted
    summary = json.loads((out / "convert.json").read_text())
    assert summary["teacher"] == spec
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    assert summary["plan"]["recipe"] == "native"


def test_verify_runs_the_teachers_code_only_when_named(converted, capsys):
    tmp, spec, out = converted
    capsys.readouterr()
    assert main(["verify", str(out / "model.program"), "--chip", "ethos-u55-128",
                 "--data", str(tmp / "test.npy"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--teacher {spec}" in err and len(err.strip().splitlines()) == 1


def test_verify_on_npy_images_with_and_without_labels(converted):
    tmp, spec, out = converted
    base = ["verify", str(out / "model.program"), "--chip", "ethos-u55-128", "--teacher", spec,
            "--data", str(tmp / "test.npy"), "--no-progress"]
    assert main([*base, "--labels", str(tmp / "labels.npy"), "--out", str(tmp / "l.json")]) == 0
    labelled = json.loads((tmp / "l.json").read_text())
    assert labelled["bit_exact"] and labelled["labelled"] and labelled["images"] == 20
    assert labelled["teacher_matches_conversion"]
    y = np.load(tmp / "labels.npy")
    assert labelled["simulator_correct"] == round(labelled["simulator_accuracy"] * 20)
    assert 0 <= labelled["simulator_correct"] <= len(y)
    assert main([*base, "--out", str(tmp / "u.json")]) == 0
    unlabelled = json.loads((tmp / "u.json").read_text())
    assert unlabelled["bit_exact"] and not unlabelled["labelled"]
    assert unlabelled["simulator_accuracy"] is None and unlabelled["teacher_accuracy"] is None
    # what the simulator predicts, against the teacher, does not depend on labels
    assert unlabelled["sim_teacher_agreement"] == labelled["sim_teacher_agreement"]


@pytest.mark.parametrize("labels, message", [
    (np.zeros(7, np.int64), "7 labels for 20 images"),
    (np.zeros((20, 2), np.int64), "1-d integer array"),
    (np.full(20, -1), "class indices"),
])
def test_bad_labels_are_one_line_naming_the_file(converted, capsys, labels, message):
    tmp, spec, out = converted
    np.save(tmp / "bad.npy", labels)
    capsys.readouterr()
    assert main(["verify", str(out / "model.program"), "--chip", "ethos-u55-128", "--teacher",
                 spec, "--data", str(tmp / "test.npy"), "--labels", str(tmp / "bad.npy"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "bad.npy" in err and len(err.splitlines()) == 1


def test_a_code_model_needs_npy_images(converted, capsys, tmp_path):
    _, spec, _ = converted
    capsys.readouterr()
    assert main(["convert", spec, "--chip", "ethos-u55-128", "--out", str(tmp_path / "r"),
                 *FAST]) == 2
    assert "--data IMAGES.npy" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (np.zeros((0, 1, 8, 8), np.float32), "holds no images"),
    (b"not an npy file", "not a NumPy image array"),
    (np.zeros((4, 8, 8), np.float32), "must be (N, C, H, W)"),
])
def test_unusable_npy_images_are_one_line_naming_the_file(converted, capsys, content, message):
    tmp, spec, out = converted
    bad = tmp / "bad_images.npy"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        np.save(bad, content)
    capsys.readouterr()
    assert main(["verify", str(out / "model.program"), "--chip", "ethos-u55-128", "--teacher",
                 spec, "--data", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "bad_images.npy" in err and len(err.splitlines()) == 1
