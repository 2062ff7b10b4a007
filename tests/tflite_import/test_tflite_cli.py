"""``archnet simulate`` and ``estimate`` take a .tflite; ``--check litert`` compares the
simulator with LiteRT's reference and optimised kernels; bad input writes nothing."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from graphs import Net

from archnet.cli import main

pytest.importorskip("ai_edge_litert")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tflite_cli")
    rng = np.random.default_rng(4)
    net = Net(rng, (1, 8, 8, 4))
    e = net.conv(net.x, 12, 1, act="RELU6")
    y = net.add(net.x, net.conv(net.depthwise(e, 1, 3, act="RELU6"), 4, 1))
    (d / "block.tflite").write_bytes(net.build(net.fc(net.mean(y, False), 3)))
    np.save(d / "x.npy", net.input_arrays(rng)[0]["x"])
    blob = (d / "block.tflite").read_bytes()
    (d / "cut.tflite").write_bytes(blob[: len(blob) // 2])
    return d


def test_simulate_writes_what_litert_computes(capsys, files):
    from simulator.tflite_import.peers import run_litert
    code, out, _ = run(capsys, "simulate", files / "block.tflite", "--chip", "tflite-reference",
                       "--input", files / "x.npy", "--output", files / "y.npz")
    assert code == 0, out
    with np.load(files / "y.npz") as z:
        (name,) = z.files
        ours = z[name]
    litert = run_litert(files / "block.tflite", {"x": np.load(files / "x.npy")})
    assert np.array_equal(ours, litert[name])


def test_check_litert_reports_reference_and_optimised(capsys, files):
    code, out, _ = run(capsys, "simulate", files / "block.tflite", "--chip", "tflite-reference",
                       "--input", files / "x.npy", "--check", "litert")
    assert code == 0, out
    assert "bit-exact: simulator and litert-reference agree on every element" in out
    assert ("agrees with the reference on every element" in out or
            ("differs from the reference at tensor" in out and "explained by:" in out)), out


def test_estimate_takes_a_tflite(capsys, files):
    code, out, _ = run(capsys, "estimate", files / "block.tflite", "--chip", "tflite-reference")
    assert code == 0 and "conv2d" in out and "fully_connected" in out, out


def test_truncated_model_is_one_line_and_writes_nothing(capsys, files):
    target = files / "never.npz"
    code, _, err = run(capsys, "simulate", files / "cut.tflite", "--chip", "tflite-reference",
                         "--input", files / "x.npy", "--output", target, "--trace",
                         files / "never_trace.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cut.tflite" in err and "truncated" in err
    assert not target.exists() and not (files / "never_trace.npz").exists()


def test_check_without_litert_is_one_line(capsys, files, monkeypatch):
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("ai_edge_litert"):
            raise ImportError("No module named 'ai_edge_litert'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    code, _, err = run(capsys, "simulate", files / "block.tflite", "--chip", "tflite-reference",
                       "--input", files / "x.npy", "--check", "litert")
    assert code == 2 and "pip install ai-edge-litert" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def files16(tmp_path_factory):
    d = tmp_path_factory.mktemp("tflite_cli16")
    rng = np.random.default_rng(16)
    net = Net(rng, (1, 8, 8, 4), int16=True)
    e = net.conv(net.x, 12, 1, act="RELU6")
    y = net.add(net.x, net.conv(net.depthwise(e, 1, 3, act="RELU6"), 4, 1))
    (d / "block16.tflite").write_bytes(net.build(net.fc(net.mean(y, False), 3)))
    np.save(d / "x.npy", net.input_arrays(rng, 2)[1]["x"])
    return d


def test_simulate_and_check_a_16x8_model(capsys, files16):
    from simulator.tflite_import.peers import run_litert
    code, out, _ = run(capsys, "simulate", files16 / "block16.tflite", "--chip",
                       "tflite-reference", "--input", files16 / "x.npy", "--output",
                       files16 / "y.npz", "--check", "litert")
    assert code == 0, out
    assert "bit-exact: simulator and litert-reference agree on every element" in out
    assert "64-bit accumulator" in out  # the 16x8 MACs' own accumulator is reported
    with np.load(files16 / "y.npz") as z:
        (name,) = z.files
        ours = z[name]
    litert = run_litert(files16 / "block16.tflite", {"x": np.load(files16 / "x.npy")})
    assert ours.dtype == np.int16 and np.array_equal(ours, litert[name])


def test_estimate_prices_16x8_layers_at_the_16_bit_mode(capsys, files16):
    """ethos-u55-128 runs w8a16 at 64 MACs per cycle, half its w8a8 rate."""
    from simulator.cost import estimate
    from simulator.profiles import load_profile
    from simulator.tflite_import import import_tflite
    code, out, _ = run(capsys, "estimate", files16 / "block16.tflite", "--chip", "ethos-u55-128")
    assert code == 0 and "w8a16" in out and "w8a8" not in out, out
    chip = load_profile("ethos-u55-128")
    assert chip.mode_for(8, 16).macs_per_cycle == 64
    report = estimate(import_tflite(files16 / "block16.tflite"), chip)
    macs = [op for op in report.ops if op.cost.macs and not op.on_host]
    assert macs and all(op.activation_bits == 16 and op.weight_bits == 8 for op in macs)
    for op in macs:  # compute = MACs / (64 x utilisation x efficiency)
        expected = op.cost.macs / (64 * op.utilisation * chip.array.efficiency)
        assert abs(op.cost.compute_cycles - expected) < 1e-6 * expected, op
