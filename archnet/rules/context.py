"""What a rule may read besides its node: the graph, the chip, the node's input shapes, and what
the forms already chosen for its producers end in (a clamp fuses into a requantize)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from archnet.capture.graph import TeacherGraph, TeacherNode
from simulator.profiles import ChipProfile

# simulator ops whose output a clamp (ReLU, ReLU6) folds into, as their requantize's bounds
CLAMP_FUSES_INTO = frozenset({"conv2d", "fully_connected", "matmul", "add", "mul"})
# ... and the ops whose requantize multiplier and offset a constant scale or shift folds into
RESCALE_FOLDS_INTO = frozenset({"conv2d", "fully_connected", "matmul"})


@dataclass(frozen=True)
class RuleContext:
    graph: TeacherGraph
    profile: ChipProfile
    in_shapes: tuple[tuple[int, ...], ...]
    producer_ops: tuple[str | None, ...]   # per input: the last simulator op of its form
    producer_readers: tuple[int, ...]      # per input: how many nodes read it
    # per input: the chain of producers a form may take over (``Form.absorbs``), nearest
    # first, each with its chosen form and read by nothing else: views (flatten, reshape) and
    # then a conv kept as it is or a global pool computed by a fully connected layer; None
    # where there is no such chain
    absorbable: tuple[tuple[tuple[TeacherNode, object], ...] | None, ...] = ()
    # per input: the longer chain of single-reader producers through kept convs and the
    # activations fused into them (views too), nearest first: a whole branch a form may take
    # over (``Form.absorbs_depth``)
    branches: tuple[tuple[tuple[TeacherNode, object], ...], ...] = ()
    readers: Mapping[str, int] = field(default_factory=dict)   # every value: how many nodes read it

    def absorbed(self, form) -> tuple[tuple[TeacherNode, object], ...]:
        """The producers ``form`` takes over (nearest first): ``absorbable[k]``, or the first
        ``absorbs_depth`` of ``branches[k]``."""
        k = form.absorbs
        if form.absorbs_depth is not None:
            return self.branches[k][:form.absorbs_depth]
        return self.absorbable[k]

    def chain_input(self, form) -> str:
        """The value a form that absorbs a chain reads instead of that input."""
        return self.absorbed(form)[-1][0].inputs[0]

    def read_once(self, value: str) -> bool:
        """``value`` is a node's output that exactly one node reads (not a graph output)."""
        return value not in self.graph.inputs and value not in self.graph.outputs and \
            self.readers.get(value, 0) == 1

    def sole_reader_of(self, ops) -> bool:
        """Input 0 is made by a form ending in one of ``ops`` and read by nothing else: what
        this node does to it can fold into that producer's requantize."""
        return bool(self.producer_ops) and self.producer_ops[0] in ops and \
            self.producer_readers[0] == 1

    def clamp_fuses(self) -> bool:
        """A clamp on input 0 folds into its producer's requantize bounds."""
        return self.sole_reader_of(CLAMP_FUSES_INTO)
