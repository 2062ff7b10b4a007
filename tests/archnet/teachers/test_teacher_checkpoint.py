"""Teacher checkpoints: atomic, self-describing, loadable with weights_only, strict on load."""

import torch

import pytest

from archnet.errors import CheckpointError
from archnet.teachers import build_teacher, load_teacher, save_teacher
from archnet.torchfile import save_torch

META = {"dataset": "digits", "input_shape": [1, 16, 16], "normalisation": {"pixel_max": 16},
        "test_accuracy": 0.5, "seed": 3, "command": "archnet teacher train ...",
        "torch": torch.__version__}  # a str subclass: stored as plain str


def _small():
    torch.manual_seed(0)
    return build_teacher("resnet8", in_channels=1, num_classes=10, width=4, stem_stride=1,
                         stem_pool=False)


def test_round_trip_rebuilds_the_same_function(tmp_path):
    model = _small()
    with torch.no_grad():  # make running stats non-trivial
        model.train()(torch.rand(8, 1, 16, 16))
    path = save_teacher(tmp_path / "sub" / "t.pt", model, META)
    assert [p.name for p in path.parent.iterdir()] == ["t.pt"]  # no temporary left behind
    loaded, meta = load_teacher(path)
    assert not loaded.training
    assert meta["arch"] == "resnet8" and meta["kwargs"]["width"] == 4 and meta["seed"] == 3
    assert type(meta["torch"]) is str
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "archnet-teacher" and raw["version"] == 1


def test_overwrite_is_atomic(tmp_path):
    path = tmp_path / "t.pt"
    save_teacher(path, _small(), META)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="not a plain"):
        save_teacher(path, _small(), {**META, "bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]


def test_metadata_must_agree_with_the_model(tmp_path):
    with pytest.raises(CheckpointError, match="disagrees"):
        save_teacher(tmp_path / "t.pt", _small(), {**META, "arch": "resnet18"})
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="needs 'arch' and 'kwargs'"):
        save_teacher(tmp_path / "t.pt", plain, META)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such teacher checkpoint"):
        load_teacher(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_teacher(garbage)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    save_torch({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an archnet teacher checkpoint"):
        load_teacher(foreign)
    torch.save({"state_dict": {}}, foreign)    # torch.save alone: no content hash
    with pytest.raises(CheckpointError, match="no content hash"):
        load_teacher(foreign)
    good = save_teacher(tmp_path / "good.pt", _small(), META)
    obj = torch.load(good, weights_only=True)
    obj["metadata"]["kwargs"]["width"] = 8
    save_torch(obj, tmp_path / "mismatch.pt")  # a valid hash: the content itself is wrong
    with pytest.raises(CheckpointError, match="do not fit the config.*wrong shape"):
        load_teacher(tmp_path / "mismatch.pt")
    obj["metadata"]["kwargs"]["width"] = 4
    obj["metadata"]["arch"] = "resnet99"
    save_torch(obj, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="unknown teacher architecture 'resnet99'"):
        load_teacher(tmp_path / "arch.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_teacher(truncated)
