"""The cost model against published latencies (reports/calibration.*): every estimate, fitted or
held out, within 1.5x; the fit set at most two thirds of the cases; the report current."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("torch")  # the networks are built in code and exported as users do

from benchmarks.calibrate_cost import (FIT_GROUPS, MAX_FIT_SHARE, MEASUREMENTS,  # noqa: E402
                                       REPORT_DIR, TOLERANCE, calibration_rows, fitted_values)
from simulator.profiles import load_profile  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return calibration_rows()


def test_the_set_spans_chips_and_families():
    assert len(MEASUREMENTS) >= 12
    assert len({m.chip for m in MEASUREMENTS}) >= 5
    assert len({m.family for m in MEASUREMENTS}) >= 4
    fit = [m for m in MEASUREMENTS if m.split == "fit"]
    assert len(fit) <= MAX_FIT_SHARE * len(MEASUREMENTS)
    assert {m.split for m in MEASUREMENTS} == {"fit", "held_out"}
    assert all(m.source and m.measures for m in MEASUREMENTS)


def test_every_case_is_within_tolerance(rows):
    for r in rows:
        assert 1 / TOLERANCE <= r["ratio"] <= TOLERANCE, r
    # every op of these networks runs on these NPUs (ReLU6, hard-swish, pooling included)
    assert all(r["host_ops"] == 0 for r in rows), [(r["chip"], r["network"]) for r in rows
                                                   if r["host_ops"]]


def test_fit_groups_share_their_fields():
    """A group's fitted fields hold one value in every profile of the group."""
    for chips, fields in FIT_GROUPS.values():
        profiles = [load_profile(c) for c in chips]
        for path in fields:
            section, name = path.split(".")
            values = {getattr(getattr(p, section), name) for p in profiles}
            assert len(values) == 1, (path, chips, values)


def test_edge_tpu_large_networks_are_bound_by_streaming_weights(rows):
    r50 = next(r for r in rows if r["chip"] == "edgetpu" and r["network"] == "resnet50_v1")
    assert r50["memory_ms"] > 3 * r50["compute_ms"]
    assert 15 < r50["weight_mb"] < 20   # ~25.6 MB of int8 weights less the 6.9 MiB cache


def test_rockchip_resnet_is_bound_by_compute(rows):
    for r in rows:
        if r["chip"].startswith("rk") and r["network"] == "resnet50":
            assert r["compute_ms"] > r["memory_ms"]


def test_committed_report_is_current(rows):
    with (REPORT_DIR / "calibration.csv").open() as fh:
        committed = list(csv.DictReader(fh))
    assert [(c["chip"], c["network"], c["split"]) for c in committed] == \
        [(r["chip"], r["network"], r["split"]) for r in rows]
    for c, r in zip(committed, rows, strict=True):
        assert float(c["estimate_ms"]) == pytest.approx(r["estimate_ms"], abs=2e-3), \
            "reports/calibration.* are stale: run `python benchmarks/calibrate_cost.py`"
    text = (REPORT_DIR / "calibration.md").read_text()
    for group in FIT_GROUPS:
        for path, value in fitted_values(group).items():
            assert f"`{path}` | {value:.4g} |" in text
