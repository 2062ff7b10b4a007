"""Cost baselines (hls4ml style): numbers of one small program per chip with a tolerance per key.

Regenerate after a deliberate change of the cost model or a profile:

    python tests/cost/make_baselines.py            # every profile
    python tests/cost/make_baselines.py k210-kpu   # one

and review the diff of tests/baselines/<chip>.json like any other change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cost_programs import small_cnn
from simulator.cost import estimate
from simulator.profiles import load_profile

BASELINE_DIR = Path(__file__).resolve().parents[1] / "baselines"
REGENERATE = "python tests/cost/make_baselines.py"
CYCLES_REL = 1e-6   # the model is deterministic: any drift is a change to review


def measure(chip: str) -> tuple[dict, dict]:
    """(values, tolerances) of the baseline program on ``chip``."""
    est = estimate(small_cnn(), load_profile(chip))
    total = est.total
    values = {"total_cycles": total.cycles, "total_latency_ms": est.total_latency_ms,
              "total_macs": total.macs, "total_activation_bytes": total.activation_bytes,
              "total_weight_bytes": total.weight_bytes,
              "host_ops": sum(op.on_host for op in est.ops),
              "fallbacks": [op.name for op in est.fallbacks]}
    tolerance = {"total_cycles": {"rel": CYCLES_REL}, "total_latency_ms": {"rel": CYCLES_REL},
                 "total_macs": {"exact": True}, "total_activation_bytes": {"rel": 1e-9},
                 "total_weight_bytes": {"rel": 1e-9}, "host_ops": {"exact": True},
                 "fallbacks": {"exact": True}}
    for op in est.ops:
        if op.fused_into:
            continue
        values[f"ops.{op.name}.cycles"] = op.cycles
        values[f"ops.{op.name}.bound"] = op.bound
        tolerance[f"ops.{op.name}.cycles"] = {"rel": CYCLES_REL}
        tolerance[f"ops.{op.name}.bound"] = {"exact": True}
    return values, tolerance


def compare(expected: dict, actual: dict, tolerance: dict) -> list[str]:
    """Every key whose value moved beyond its tolerance (or appeared, or vanished)."""
    problems = [f"{k}: new key" for k in actual if k not in expected]
    for key, want in expected.items():
        if key not in actual:
            problems.append(f"{key}: missing")
            continue
        got, tol = actual[key], tolerance[key]
        if "rel" in tol:
            ok = math.isclose(got, want, rel_tol=tol["rel"], abs_tol=tol.get("abs", 0.0))
        else:
            ok = got == want
        if not ok:
            problems.append(f"{key}: baseline {want!r}, now {got!r} (tolerance {tol})")
    return problems


def write(chip: str) -> Path:
    values, tolerance = measure(chip)
    doc = {"chip": chip, "program": "small_cnn (tests/cost/cost_programs.py)",
           "regenerate": REGENERATE, "tolerance": tolerance, "values": values}
    path = BASELINE_DIR / f"{chip}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
