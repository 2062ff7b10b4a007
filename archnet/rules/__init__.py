"""Stage 2 of conversion: per teacher node, the form the chip runs it in (native first).

One module per operator family (``conv``, ``pool``, ``linear``, ``elementwise``,
``activation``, ``shape``, ``norm``, ``embedding``, ``attention``), each a pure function
``forms(node, context) -> [Form]`` listing the teacher's own op first and the Arch-Net
replacements after it; ``planner.plan_conversion`` asks the chip which fit and picks.
"""

from archnet.rules.forms import Form, Step
from archnet.rules.planner import RECIPES, RULES, ConversionPlan, Decision, plan_conversion

__all__ = ["ConversionPlan", "Decision", "Form", "RECIPES", "RULES", "Step", "plan_conversion"]
