"""``archnet.convert``: a user's own nn.Module, converted from Python, bit-exact on the chip."""

import json

import pytest
import torch
from torch import nn

import archnet
from archnet.errors import ArchnetError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


FAST = dict(steps_per_period=2, batch_size=8, progress=False)


@pytest.mark.parametrize("chip", ["ethos-u55-128", "k210-kpu"])
def test_convert_a_user_model(tmp_path, chip):
    images = torch.rand(32, 1, 12, 12)
    out = tmp_path / "run"
    summary = archnet.convert(_net(), images[:1], images, chip=chip, bits="8w8a", out=str(out),
                              log=lambda _m: None, **FAST)
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    assert json.loads((out / "convert.json").read_text())["teacher"] == "python:Sequential"


@pytest.mark.parametrize("bad, message", [
    (dict(unlabeled=torch.rand(4, 1, 10, 10)), "unlabeled: a float tensor [N, 1, 12, 12]"),
    (dict(unlabeled=torch.rand(4, 1, 12, 12) * 2), "in [0, 1]"),
    (dict(recipe="fast"), "recipe 'fast'"),
    (dict(stepz=3), "unknown distillation option(s) stepz"),
])
def test_bad_arguments_are_named(tmp_path, bad, message):
    kw = dict(unlabeled=torch.rand(4, 1, 12, 12), chip="k210-kpu", out=str(tmp_path / "r"))
    kw.update(bad)
    with pytest.raises(ArchnetError) as e:
        archnet.convert(_net(), torch.rand(1, 1, 12, 12), kw.pop("unlabeled"), **kw)
    assert message in str(e.value)
