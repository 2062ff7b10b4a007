"""ResNet-50 estimates stay within 1.5x of the published measurements (reports/calibration.*)."""

from __future__ import annotations

import csv

import pytest

from benchmarks.calibrate_cost import CASES, REPORT_DIR, TOLERANCE, calibration_rows


@pytest.fixture(scope="module")
def rows():
    return calibration_rows()


def test_every_case_is_within_tolerance(rows):
    assert len(rows) == len(CASES) == 3
    for r in rows:
        assert 1 / TOLERANCE <= r["ratio"] <= TOLERANCE, r


def test_edge_tpu_is_bound_by_streaming_weights(rows):
    edge = next(r for r in rows if r["chip"] == "edgetpu")
    assert edge["memory_ms"] > 5 * edge["compute_ms"]
    assert 15 < edge["weight_mb"] < 20   # ~25.6 MB of int8 weights less the 6.9 MiB cache


def test_rockchip_is_bound_by_compute(rows):
    for r in rows:
        if r["chip"].startswith("rk"):
            assert r["compute_ms"] > r["memory_ms"]


def test_committed_report_is_current(rows):
    with (REPORT_DIR / "calibration.csv").open() as fh:
        committed = list(csv.DictReader(fh))
    assert [c["chip"] for c in committed] == [r["chip"] for r in rows]
    for c, r in zip(committed, rows, strict=True):
        assert float(c["estimate_ms"]) == pytest.approx(r["estimate_ms"], abs=2e-3), \
            "reports/calibration.* are stale: run `python benchmarks/calibrate_cost.py`"
