"""Proof that a student runs on a chip: export it and ask the simulator's op-set rules.

``assert_deployable`` is the gate every lowering result passes: the exported Program (validated by
the IR) is placed node by node with ``simulator.constraints.place``, the same rules that decide
host fallbacks in the cost model and reports (the host's boundary work, an embedding's rows
looked up as it writes the input, is not one). Every violation is listed, not just the first.
"""

from __future__ import annotations

from typing import Sequence

from archnet.errors import ConversionError
from simulator.constraints import place
from simulator.ir.program import Program
from simulator.profiles import ChipProfile, load_profile


def violations(program: Program, profile: ChipProfile) -> list[str]:
    """'node (op): reason' for every reason any node of ``program`` would leave the NPU."""
    ops = {node.name: node.op.value for node in program.nodes}
    return [f"{p.node} ({ops[p.node]}): {reason}"
            for p in place(program, profile) for reason in p.reasons]


def assert_deployable(student, profile: ChipProfile | str,
                      input_shape: Sequence[int] | None = None) -> Program:
    """The student's Program if every node runs on ``profile``'s NPU, else a ConversionError
    listing every violation."""
    profile = load_profile(profile) if isinstance(profile, str) else profile
    program = student.export(input_shape)
    found = violations(program, profile)
    if found:
        raise ConversionError(f"student does not run on {profile.name} without fallback: "
                              f"{len(found)} violation(s): " + "; ".join(found))
    return program
