"""Arm Vela as a peer of the Ethos-U55 and Ethos-U85 profiles (benchmarks/vela_peer.py): one
network on one chip of each, side by side, within 1.5x, and reports/vela_peer.csv current for it;
and the int8 TFLite file the comparison feeds both tools holds the layers of the network's ONNX
export."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("torch")   # the networks are built in code and exported as users do
pytest.importorskip("tflite")

from benchmarks.tflite_networks import op_counts, to_tflite  # noqa: E402
from benchmarks.vela_peer import (REPORT_DIR, TOLERANCE, compare, network_program,  # noqa: E402
                                  vela_available, vela_target)
from simulator.cost import estimate  # noqa: E402
from simulator.profiles import load_profile  # noqa: E402

NETWORK, CHIP = "mobilenet_v1", "ethos-u55-128"
PINNED_CHIPS = ("ethos-u55-128", "ethos-u85-256")
# the ops Vela runs on the Ethos-U55 that the writer uses for these networks
NPU_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MAX_POOL_2D",
           "AVERAGE_POOL_2D", "MEAN", "CONCATENATION", "RESHAPE", "HARD_SWISH", "LOGISTIC"}


def test_profiles_name_the_vela_configuration_they_model():
    for chip, system, memory in (
            ("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
            ("ethos-u55-256", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
            ("ethos-u85-128", "Ethos_U85_SYS_DRAM_Mid", "Sram_Only"),
            ("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Sram_Only"),
            ("ethos-u85-512", "Ethos_U85_SYS_DRAM_Mid", "Sram_Only")):
        target = vela_target(load_profile(chip))
        assert (target.accelerator, target.system_config, target.memory_mode) == \
            (chip, system, memory)


@pytest.mark.parametrize("network", ["mobilenet_v3_small", "inception_v1"])
def test_tflite_file_holds_the_onnx_layers(network, tmp_path):
    """Squeeze-and-excitation gates, hard-swish and hard-sigmoid (mobilenet_v3_small),
    concatenation and ceil-mode max pools (inception_v1): the TFLite file that Vela and
    archnet read has the ONNX export's MACs, in ops Vela runs on the NPU."""
    from simulator.tflite_import import import_tflite

    program = network_program(network)
    data = to_tflite(program, seed=0)
    assert data == to_tflite(program, seed=0)   # reproducible
    assert set(op_counts(data)) <= NPU_OPS
    path = tmp_path / f"{network}.tflite"
    path.write_bytes(data)
    profile = load_profile(CHIP)
    assert estimate(import_tflite(path), profile).total.macs == \
        estimate(program, profile).total.macs


@pytest.mark.skipif(not vela_available(), reason="Arm Vela is not installed: the peer check "
                    "needs PyPI ethos-u-vela (in the test and peers extras)")
@pytest.mark.parametrize("chip", PINNED_CHIPS)
def test_vela_and_archnet_agree_and_report_is_current(chip, tmp_path):
    row = compare(NETWORK, chip, tmp_path)
    assert row["vela_cpu_ops"] == 0 and row["archnet_host_ops"] == 0, row
    assert 1 / TOLERANCE <= row["ratio"] <= TOLERANCE, \
        f"{NETWORK} on {chip}: archnet {row['archnet_ms']} ms, Vela {row['vela_ms']} ms"
    with open(REPORT_DIR / "vela_peer.csv", newline="") as fh:
        committed = [r for r in csv.DictReader(fh) if (r["network"], r["chip"]) ==
                     (NETWORK, chip) and r["global_pool"] == row["global_pool"]]
    assert len(committed) == 1, "reports/vela_peer.csv has no row for this network and chip"
    for key, tol in (("vela_ms", 0.01), ("archnet_ms", 0.01), ("ratio", 0.005)):
        assert float(committed[0][key]) == pytest.approx(row[key], abs=tol), \
            (f"reports/vela_peer.csv is stale ({key}): run python benchmarks/vela_peer.py")
