"""Every argument is checked as given: zero, negative, non-finite and out-of-range numbers and
unlisted bit widths are refused in one line naming the argument, before any work; a value given
is never replaced by a default."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from archnet.cli import build_parser
from hostile_helpers import FAST, archnet, one_error_line

# numeric options where 0 is a meaningful value (every other one needs at least 1, or more than 0)
ZERO_ALLOWED = {"--seed", "--final-steps", "--images", "--crop-pad", "--weight-decay",
                "--label-smoothing", "--mixup", "--cosine-weight"}


def _commands(parser=None, path=()):
    """(command path, its parser) for every command and sub-command of ``archnet``."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _typed_options():
    return [(path, action.option_strings[0], action) for path, sub in _commands()
            for action in sub._actions
            if action.option_strings and action.type is not None and not action.choices]


# the options whose type is one of simulator.argtypes' range checks
NUMERIC = [o for o in _typed_options() if o[2].type.__module__ == "simulator.argtypes"]


def test_every_numeric_option_is_validated():
    """No bare int/float: each numeric option has a type that checks its range."""
    assert len(NUMERIC) > 30
    bare = [(" ".join(p), opt) for p, opt, a in _typed_options() if a.type in (int, float)]
    assert not bare


@pytest.fixture
def stubbed(monkeypatch):
    """Every command's handler replaced by one that records the arguments it would run with."""
    seen = {}
    parser = build_parser()
    for _, sub in _commands(parser):
        if sub.get_default("func") is not None:
            sub.set_defaults(func=lambda args: seen.setdefault("args", args) and 0)
    monkeypatch.setattr("archnet.cli.build_parser", lambda: parser)
    return seen


hostile_numbers = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.sampled_from(["0", "-0", "-1", "0.0", "-0.0", "nan", "NaN", "inf", "-inf", "1e309",
                     "18446744073709551616", "2.5e-320", "1_000", " 3", "0x10", "", "seven"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(which=st.integers(0, len(NUMERIC) - 1), text=hostile_numbers)
def test_numeric_options_refuse_or_keep_exactly(stubbed, capsys, which, text):
    path, option, action = NUMERIC[which]
    stubbed.clear()
    code, _, err = archnet(capsys, *path, f"{option}={text}")
    if "args" not in stubbed:       # refused: by this option, or (value fine) a missing argument
        assert code == 2
        line = one_error_line(err)
        try:
            value = float(text.replace("_", ""))
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0 or \
                (value == 0 and option not in ZERO_ALLOWED):
            assert option in line, (path, option, text, line)
        return
    value = getattr(stubbed["args"], action.dest)   # accepted: exactly what was typed
    assert math.isfinite(value) and float(value) == float(text.replace("_", ""))
    assert value > 0 or (value == 0 and option in ZERO_ALLOWED)


@pytest.mark.parametrize("argv, option", [
    (["convert", "t.pt", "--chip", "k210-kpu", "--out", "r", "--batch-size", "0"], "--batch-size"),
    (["convert", "t.pt", "--chip", "k210-kpu", "--out", "r", "--lr", "0"], "--lr"),
    (["convert", "t.pt", "--chip", "k210-kpu", "--out", "r", "--bits", "3w3a"], "--bits"),
    (["convert", "t.pt", "--chip", "k210-kpu", "--out", "r", "--threads", "-3"], "--threads"),
    (["convert", "t.pt", "--chip", "k210-kpu", "--out", "r", "--seed", str(2**64)], "--seed"),
    (["convert", "t.pt", "--chip", "k210-kpu", "--out", "r", "--calibration-images", "0"],
     "--calibration-images"),
    (["demo", "--bits", "zz"], "--bits"),
    (["demo", "--threads", "0"], "--threads"),
    (["latency-table", "t.pt", "--chip", "k210-kpu", "--options", "4w4a,3w3a"], "--options"),
    (["verify", "p.program", "--chip", "k210-kpu", "--limit", "0"], "--limit"),
    (["export-onnx", "p.program", "--out", "p.onnx", "--opset", "999"], "--opset"),
    (["teacher", "train", "--dataset", "digits", "--out", "t.pt", "--epochs", "0"], "--epochs"),
])
def test_the_issues_arguments_are_refused_before_any_work(capsys, monkeypatch, argv, option):
    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    for target in ("archnet.jobs.demo.run_demo", "archnet.jobs.convert.convert",
                   "archnet.teachers.train.train_teacher",
                   "archnet.jobs.convert.convert_text_graph"):
        monkeypatch.setattr(target, no_work)
    code, _, err = archnet(capsys, *argv)
    assert code == 2
    one_error_line(err, option)


def test_given_values_reach_the_run_unchanged(capsys, monkeypatch, tmp_path):
    """``--batch-size``/``--lr`` given are used as given; absent, the family's defaults."""
    got = []
    monkeypatch.setattr("archnet.jobs.convert.convert",
                        lambda opts, cfg, log=None: got.append(cfg) or {})
    from hostile_helpers import DIGITS_TEACHER
    base = ["convert", DIGITS_TEACHER, "--chip", "k210-kpu", "--out", tmp_path / "r"]
    assert archnet(capsys, *base, "--batch-size", "3", "--lr", "0.01")[0] == 0
    assert archnet(capsys, *base)[0] == 0
    assert (got[0].batch_size, got[0].lr) == (3, 0.01)
    assert (got[1].batch_size, got[1].lr) == (64, 5e-4)


def test_a_text_teachers_values_and_defaults_reach_the_shared_pipeline(capsys, monkeypatch,
                                                                      tmp_path):
    """A text teacher without --recipe goes to the shared pipeline's native recipe at 8w8a;
    --batch-size/--lr given are used as given, absent the text defaults (32, 1e-4)."""
    from hostile_helpers import write_tiny_bert
    got = []
    monkeypatch.setattr("archnet.jobs.convert.convert_text_graph",
                        lambda opts, text_opts, cfg, log=None: got.append((opts, text_opts, cfg)))
    bert = write_tiny_bert(tmp_path / "bert")
    base = ["convert", bert, "--chip", "ethos-u55-128", "--out", tmp_path / "r"]
    assert archnet(capsys, *base, "--batch-size", "3", "--lr", "0.01", "--layers", "1")[0] == 0
    assert archnet(capsys, *base, "--recipe", "paper", "--max-len", "16")[0] == 0
    (opts, text_opts, cfg), (opts2, text_opts2, cfg2) = got
    assert (opts.recipe, opts.bits, cfg.batch_size, cfg.lr) == ("native", "8w8a", 3, 0.01)
    assert (text_opts.layers, text_opts.max_len) == (1, 64)
    assert (opts2.recipe, cfg2.batch_size, cfg2.lr, text_opts2.max_len) == ("paper", 32, 1e-4, 16)
    assert cfg.mixup_fraction == 0.0 and cfg.attention is False


def test_options_of_the_other_family_are_refused(capsys, tmp_path):
    from hostile_helpers import DIGITS_TEACHER
    code, _, err = archnet(capsys, "convert", DIGITS_TEACHER, "--chip", "k210-kpu", "--out",
                           tmp_path / "r", "--max-len", "32")
    assert code == 2
    one_error_line(err, "--max-len")
    code, _, err = archnet(capsys, "convert", DIGITS_TEACHER, "--chip", "k210-kpu", "--out",
                           tmp_path / "r", "--bits", "4w4a", "--latency-budget", "1")
    assert code == 2
    one_error_line(err, "--bits", "--latency-budget")


@pytest.mark.parametrize("extra, names", [
    (["--dataset", "digits", "--max-images", "8"], ["--dataset", "--max-images", "text teacher"]),
    (["--latency-budget", "1", "--bits", "4w4a"], ["--bits", "--latency-budget"]),
    (["--recipe", "resnet"], ["--recipe resnet", "text teacher"]),
    (["--attention-weight", "1"], ["unrecognized arguments: --attention-weight"]),
    (["--no-chip-values"], ["unrecognized arguments: --no-chip-values"]),
    (["--allow-fallback"], ["unrecognized arguments: --allow-fallback"]),
])
def test_a_text_teacher_refuses_what_does_not_apply_to_it(capsys, monkeypatch, tmp_path, extra,
                                                          names):
    """A text teacher goes through the shared pipeline: image-only options and the retired text
    student's options are refused in one line before any work, never ignored."""
    from hostile_helpers import write_tiny_bert

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr("archnet.jobs.convert.convert_text_graph", no_work)
    bert = write_tiny_bert(tmp_path / "bert")
    code, _, err = archnet(capsys, "convert", bert, "--chip", "ethos-u55-128", "--out",
                           tmp_path / "r", *extra)
    assert code == 2
    one_error_line(err, *names)


def test_empty_and_malformed_image_arrays(capsys, tmp_path):
    from hostile_helpers import DIGITS_TEACHER
    cases = {"empty.npy": np.zeros((0,), np.uint8), "none.npy": np.zeros((0, 1, 16, 16), np.uint8),
             "flat.npy": np.zeros((4, 256), np.uint8), "nan.npy": np.full((4, 1, 16, 16), np.nan),
             "ints.npy": np.zeros((4, 1, 16, 16), np.int64), "shape.npy": np.zeros((4, 3, 8, 8))}
    (tmp_path / "zero-bytes.npy").write_bytes(b"")
    np.savez(tmp_path / "archive.npy.npz", images=np.zeros((4, 1, 16, 16), np.uint8))
    (tmp_path / "archive.npy.npz").rename(tmp_path / "archive.npy")
    for name in ("zero-bytes.npy", "archive.npy"):
        code, _, err = archnet(capsys, "convert", DIGITS_TEACHER, "--chip", "k210-kpu", "--data",
                               tmp_path / name, "--out", tmp_path / f"run-{name}", *FAST)
        assert code == 2, name
        one_error_line(err, name)
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        code, _, err = archnet(capsys, "convert", DIGITS_TEACHER, "--chip", "k210-kpu", "--data",
                               tmp_path / name, "--out", tmp_path / f"run-{name}", *FAST)
        assert code == 2, name
        one_error_line(err, name)


def test_a_name_that_is_not_utf8(capsys, tmp_path):
    """A run folder name of raw bytes (as a shell passes it) is written and printed."""
    import os
    from hostile_helpers import DIGITS_TEACHER
    name = os.fsdecode(b"run-\xff\xfe")
    code, out, err = archnet(capsys, "convert", DIGITS_TEACHER, "--chip", "k210-kpu", "--out",
                             tmp_path / name, *FAST)
    assert code == 0, err
    assert (tmp_path / name / "model.program").is_file()


def test_shapes_and_input_names(work, capsys):
    np.savez(work / "named.npz", pixels=np.zeros((1, 1, 16, 16), np.uint8))
    code, _, err = archnet(capsys, "simulate", "run/model.program", "--chip", "k210-kpu", "--input",
                           "named.npz")
    assert code == 2
    one_error_line(err, "named.npz", "'image'")
    for shape in ("image=1x1x0x16", "image=1x-1x16x16", "=1x1x16x16", "image=axb"):
        code, _, err = archnet(capsys, "estimate", "run/model.program", "--chip", "k210-kpu",
                               "--input-shape", shape)
        assert code == 2, shape
        one_error_line(err, "--input-shape")
