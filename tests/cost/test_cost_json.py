"""An estimate's dict is JSON: every number finite, or a clear error instead of Infinity."""

from __future__ import annotations

import json
import math

import pytest

from simulator.cost import estimate
from simulator.cost.breakdown import CycleCost, Estimate, OpCost
from simulator.examples import example_program
from simulator.profiles import list_profiles, load_profile


@pytest.mark.parametrize("chip", list_profiles())
def test_bundled_chips_estimate_to_strict_json(chip):
    est = estimate(example_program(), load_profile(chip))
    assert json.loads(json.dumps(est.to_dict(), allow_nan=False))["chip"] == chip


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_non_finite_cost_is_an_error_not_a_number(bad):
    op = OpCost("conv", "conv2d", "", False, "compute", None, 8, 8, 1.0,
                CycleCost(compute_cycles=bad, cycles=bad), 1e9)
    with pytest.raises(ValueError, match="op conv: compute_cycles = (inf|nan) is not finite"):
        op.to_dict()
    with pytest.raises(ValueError, match="not finite"):
        Estimate("chip", "program", 1e9, (op,)).to_dict()
