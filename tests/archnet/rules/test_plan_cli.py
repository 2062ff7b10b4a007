"""``archnet plan``: a teacher checkpoint or the user's own factory in, the rules that fired and
both latencies out; every user error one line with exit 2, naming the thing at fault."""

import json
from pathlib import Path

import pytest

from archnet.cli import main

ROOT = Path(__file__).resolve().parents[3]
TEACHER = ROOT / "reports" / "teachers" / "fashion_mnist_resnet.pt"

FACTORY = '''
import torch
from torch import nn

def small():
    return nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.SiLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

def with_example():
    return small(), torch.randn(2, 3, 16, 16)

def odd():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2)), torch.randn(1, 3, 8, 8)

def not_a_model():
    return 42
'''


@pytest.fixture()
def factory(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(FACTORY)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_of_the_zoo_teacher_on_k210(capsys, tmp_path):
    out_json = tmp_path / "plan.json"
    code, out, _ = _run(capsys, "plan", TEACHER, "--chip", "k210-kpu", "--bits", "4w4a",
                        "--json", out_json)
    assert code == 0
    assert "conv2d.shift_3x3" in out and "conv1" in out
    assert "no faster than 8w8a" in out                     # the K210 has no 4-bit mode
    plan = json.loads(out_json.read_text())
    assert plan["chip"] == "k210-kpu" and plan["student_fallbacks"] == 0
    assert plan["teacher_fallbacks"] > 0
    assert plan["student_latency_ms"] < plan["teacher_latency_ms"]
    assert {d["rule"] for d in plan["decisions"]} >= {"conv2d.shift_3x3", "relu.fused"}


def test_plan_of_a_user_factory(capsys, factory):
    code, out, _ = _run(capsys, "plan", f"{factory}:small", "--chip", "ethos-u55-128",
                        "--input-shape", "3,16,16", "--all")
    assert code == 0 and "silu.native" in out and "student" in out
    code, out, _ = _run(capsys, "plan", f"{factory}:with_example", "--chip", "k210-kpu")
    assert code == 0 and "silu.relu" in out


@pytest.mark.parametrize("spec,extra,message", [
    ("{f}:small", [], "gave no example inputs; pass --input-shape"),
    ("{f}:missing", [], "has no function 'missing'"),
    ("{f}:not_a_model", [], "returned int, not a torch.nn.Module"),
    ("{f}:odd", [], "1 teacher node(s) cannot run on ethos-u55-128: 1 (aten.upsample_nearest2d)"),
    ("net.pt2", [], "torch.export files are read by unpickling"),
    ("{f}:small", ["--input-shape", "3,x"], "expected C,H,W"),
])
def test_user_errors_are_one_line(capsys, factory, spec, extra, message):
    code, _, err = _run(capsys, "plan", spec.format(f=factory), "--chip", "ethos-u55-128", *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_plan_refuses_to_write_over_its_input(capsys, factory):
    code, _, err = _run(capsys, "plan", f"{factory}:with_example", "--chip", "k210-kpu",
                        "--json", factory)
    assert code == 2 and ".json" in err


PRE_NORM = '''
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16 * 16, 4)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.fc(self.norm(t))
        return self.head(t.flatten(1))

def block():
    return Block(), torch.rand(1, 1, 16, 16)
'''


def test_the_user_chooses_the_layer_norm_form_and_the_stream_width(capsys, tmp_path):
    """--layer-norm and --stream-bits: auto takes the per-token form on Ethos-U55 (it has the
    ops); fixed forces the paper's affine; both are recorded in the plan's JSON."""
    path = tmp_path / "prenorm.py"
    path.write_text(PRE_NORM)
    plans = {}
    for form in ("auto", "fixed"):
        out_json = tmp_path / f"{form}.json"
        code, out, _ = _run(capsys, "plan", f"{path}:block", "--chip", "ethos-u55-128",
                            "--layer-norm", form, "--stream-bits", "8", "--json", out_json)
        assert code == 0
        plans[form] = json.loads(out_json.read_text())
    rules = {k: {d["rule"] for d in p["decisions"] if d["op"] == "layer_norm"}
             for k, p in plans.items()}
    assert rules == {"auto": {"layer_norm.per_token"}, "fixed": {"layer_norm.fixed_affine"}}
    assert plans["fixed"]["layer_norm"] == "fixed" and plans["fixed"]["stream_bits"] == 8
    code, _, err = _run(capsys, "plan", f"{path}:block", "--chip", "ethos-u55-128",
                        "--stream-bits", "12")
    assert code == 2 and "--stream-bits" in err


def test_the_command_line_offers_what_the_planner_accepts():
    """cli/convert.py stays torch-free, so it spells the choices again: they must agree."""
    from archnet.cli import convert as cli
    from archnet.rules import planner
    assert cli.LAYER_NORMS == tuple(planner.LAYER_NORMS)
    assert cli.EMBEDDINGS == tuple(planner.EMBEDDINGS)
    assert cli.STREAM_WIDTHS == ("auto", *map(str, planner.STREAM_WIDTHS))
