"""``archnet teacher train`` end to end on digits: a real, reproducible, self-describing teacher."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archnet.cli import main
from archnet.data import load_dataset
from archnet.teachers import load_teacher
from archnet.teachers.train import augment_batch, evaluate

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of the digits preset (89 steps of 16): about two seconds on one thread."""
    out = tmp_path_factory.mktemp("teacher") / "digits.pt"
    code = main(["teacher", "train", "--dataset", "digits", "--epochs", "1", "--threads", "1",
                 "--seed", "0", "--out", str(out)])
    return code, out


def test_one_epoch_on_digits_learns(trained):
    code, out = trained
    assert code == 0 and out.is_file()
    model, meta = load_teacher(out)
    # chance is 10%; one epoch reaches about 90% on every seed tried, 50% leaves a wide margin
    assert meta["test_accuracy"] > 0.5
    images, labels = load_dataset("digits", split="test").tensors
    assert evaluate(model, images, labels) == meta["test_accuracy"]  # the file holds that model
    for key in ("arch", "kwargs", "dataset", "input_shape", "normalisation", "test_accuracy",
                "seed", "command", "history", "recipe"):
        assert key in meta, key
    assert meta["dataset"] == "digits" and meta["input_shape"] == [1, 16, 16]
    assert meta["normalisation"]["pixel_max"] == 16 and meta["kwargs"]["in_channels"] == 1
    assert meta["command"].startswith("archnet teacher train --dataset digits")
    assert len(meta["history"]) == 1 and meta["history"][0]["test_accuracy"] == meta["test_accuracy"]
    assert model.conv1.kernel_size == (7, 7)


def test_recorded_command_reproduces_the_checkpoint_bit_for_bit(trained, tmp_path, capsys):
    _, out = trained
    _, meta = load_teacher(out)
    argv = meta["command"].split()[1:]
    i = argv.index("--out")
    argv[i + 1] = str(tmp_path / "again.pt")
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "test accuracy" in stdout
    a = torch.load(out, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "again.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seed_changes_the_run(tmp_path, capsys):
    outs = []
    for seed in (1, 2):
        code, _, _ = run(capsys, "teacher", "train", "--dataset", "digits", "--epochs", "1",
                         "--max-steps", "3", "--threads", "1", "--seed", seed,
                         "--out", tmp_path / f"s{seed}.pt")
        assert code == 0
        outs.append(torch.load(tmp_path / f"s{seed}.pt", weights_only=True)["state_dict"])
    assert not torch.equal(outs[0]["conv1.weight"], outs[1]["conv1.weight"])


def test_eval_command(trained, capsys):
    _, out = trained
    code, stdout, _ = run(capsys, "teacher", "eval", out)
    assert code == 0 and "test accuracy" in stdout and "digits" in stdout


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: 0 is not at least 1"),
    (["--lr", "-1"], "argument --lr: -1 is not above 0"),
    (["--batch-size", "1"], "--batch-size 1: must be at least 2"),
    (["--data", "/tmp"], "--data does not apply"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "teacher", "train", "--dataset", "digits", "--out",
                       tmp_path / "t.pt", *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("archnet: error:")
    assert not (tmp_path / "t.pt").exists()


def test_out_is_a_folder_and_missing_fashion_data(tmp_path, capsys):
    (tmp_path / "dir.pt").mkdir()
    code, _, err = run(capsys, "teacher", "train", "--dataset", "digits", "--out", tmp_path / "dir.pt")
    assert code == 2 and "is a folder" in err
    code, _, err = run(capsys, "teacher", "train", "--dataset", "digits", "--out", tmp_path)
    assert code == 2 and "must end in .pt" in err
    code, _, err = run(capsys, "teacher", "train", "--dataset", "fashion-mnist",
                       "--data", tmp_path / "nowhere", "--out", tmp_path / "f.pt")
    assert code == 2 and "no such folder for Fashion-MNIST" in err
    code, _, err = run(capsys, "teacher", "eval", tmp_path / "missing.pt")
    assert code == 2 and "no such teacher checkpoint" in err


def test_augmentation_shifts_and_flips_within_the_padding():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 5] = 1.0  # one lit pixel
    gen = torch.Generator().manual_seed(0)
    y = augment_batch(x, gen, crop_pad=2, flip=True)
    assert y.shape == x.shape
    assert torch.equal(y.sum((1, 2, 3)), torch.ones(64))  # pad 2 never pushes (3, 5) out of 8x8
    rows, cols = (y[:, 0] == 1).nonzero()[:, 1], (y[:, 0] == 1).nonzero()[:, 2]
    assert rows.min() >= 1 and rows.max() <= 5
    assert set(cols.tolist()) - set(range(3, 8)) - set(range(0, 5)) == set()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # it does move
    z = augment_batch(x, torch.Generator().manual_seed(0), crop_pad=2, flip=True)
    assert torch.equal(y, z)
    assert torch.equal(augment_batch(x, gen, crop_pad=0, flip=False), x)


def test_archnet_help_does_not_import_torch():
    code = ("import sys; from archnet.cli import build_parser; build_parser().format_help(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
