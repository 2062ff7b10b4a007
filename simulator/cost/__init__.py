"""Floor 3: the per-chip cost model. Shapes, dtypes and a profile in; cycles out.

Never imports ``simulator.numerics`` and never reads tensor values (style rule 5).
"""
from simulator.cost.breakdown import FORMULA, CycleCost, Estimate, OpCost
from simulator.cost.model import estimate
from simulator.cost.report import estimate_csv, format_estimate

__all__ = ["FORMULA", "CycleCost", "Estimate", "OpCost", "estimate", "estimate_csv",
           "format_estimate"]
