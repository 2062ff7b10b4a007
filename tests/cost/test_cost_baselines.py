"""Cost numbers of a small program per chip stay where tests/baselines pins them."""

from __future__ import annotations

import json

import pytest

from cost_baselines import BASELINE_DIR, REGENERATE, compare, measure
from simulator.profiles import BUNDLED_PROFILE_DIR

CHIPS = sorted(p.stem for p in BUNDLED_PROFILE_DIR.glob("*.toml") if not p.stem.startswith("_"))


def test_every_chip_has_a_baseline():
    assert sorted(p.stem for p in BASELINE_DIR.glob("*.json")) == CHIPS, f"run `{REGENERATE}`"


@pytest.mark.parametrize("chip", CHIPS)
def test_cost_matches_baseline(chip):
    doc = json.loads((BASELINE_DIR / f"{chip}.json").read_text())
    values, _ = measure(chip)
    assert set(doc["tolerance"]) == set(doc["values"]), "every key needs its own tolerance"
    problems = compare(doc["values"], values, doc["tolerance"])
    assert not problems, f"{chip} moved (if deliberate, run `{REGENERATE}`):\n" + "\n".join(problems)


def test_compare_catches_drift_and_respects_tolerance():
    tol = {"a": {"rel": 0.01}, "b": {"exact": True}}
    assert compare({"a": 100.0, "b": "memory"}, {"a": 100.5, "b": "memory"}, tol) == []
    assert len(compare({"a": 100.0, "b": "memory"}, {"a": 102.0, "b": "compute"}, tol)) == 2
    assert compare({"a": 1.0}, {"a": 1.0, "c": 2}, {"a": {"rel": 0}}) == ["c: new key"]
