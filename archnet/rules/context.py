"""What a rule may read besides its node: the graph, the chip, the node's input shapes, and what
the forms already chosen for its producers end in (a clamp fuses into a requantize)."""

from __future__ import annotations

from dataclasses import dataclass

from archnet.capture.graph import TeacherGraph
from simulator.profiles import ChipProfile

# simulator ops whose output a clamp (ReLU, ReLU6) folds into, as their requantize's bounds
CLAMP_FUSES_INTO = frozenset({"conv2d", "fully_connected", "matmul", "add", "mul"})


@dataclass(frozen=True)
class RuleContext:
    graph: TeacherGraph
    profile: ChipProfile
    in_shapes: tuple[tuple[int, ...], ...]
    producer_ops: tuple[str | None, ...]   # per input: the last simulator op of its form
    producer_readers: tuple[int, ...]      # per input: how many nodes read it

    def clamp_fuses(self) -> bool:
        """A clamp on input 0 folds into its producer's requantize: the producer ends in a MAC,
        add or mul, and nothing else reads the unclamped value."""
        return bool(self.producer_ops) and self.producer_ops[0] in CLAMP_FUSES_INTO and \
            self.producer_readers[0] == 1
