"""The teacher's intermediate features at the values the student's blocks imitate.

A student block names its teacher module by path (``block.tap``: ``maxpool``, ``layer2.0``,
``fc``). ``TeacherTaps`` runs the teacher once per batch and returns the output of every tapped
module, captured with forward hooks (the teacher is only read: eval mode, no gradients).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from archnet.capture.graph import TeacherGraph
from archnet.errors import ConversionError


class _TapsFound(Exception):
    """Raised by the last hook a call needs: the teacher's remaining layers need not run."""


class TeacherTaps:
    def __init__(self, teacher: nn.Module, taps: Sequence[str]):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        modules = dict(teacher.named_modules())
        missing = [t for t in taps if t not in modules]
        if missing:
            raise ConversionError(f"teacher has no module(s) {missing} that the student's blocks "
                                  f"imitate (taps {list(taps)})")
        self.taps = list(taps)
        self._modules = {t: modules[t] for t in dict.fromkeys(taps)}
        # whether each tapped module runs once per forward (learned from the first full one):
        # only then may a forward stop at the last tap it needs (a module run twice, a shared
        # ReLU, keeps its last output)
        self._once: bool | None = None

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor, wanted: Sequence[str] | None = None
                 ) -> dict[str, torch.Tensor]:
        """The tapped modules' outputs (``wanted``: at least these; the forward stops once it
        has them, where that is safe)."""
        found: dict[str, torch.Tensor] = {}
        calls = dict.fromkeys(self._modules, 0)
        stop = set(wanted) if wanted is not None and self._once else None
        handles = []
        for name, module in self._modules.items():
            def hook(_m, _inp, out, name=name):
                found[name] = out.detach().clone()  # later in-place ops must not touch it
                calls[name] += 1
                if stop is not None and stop <= found.keys():
                    raise _TapsFound
            handles.append(module.register_forward_hook(hook))
        try:
            self.teacher(*inputs)
        except _TapsFound:
            pass
        finally:
            for h in handles:
                h.remove()
        if stop is None and self._once is None:
            self._once = all(n == 1 for n in calls.values())
        return found

    def features(self, *inputs: torch.Tensor, blocks: Sequence[int] | None = None
                 ) -> list[torch.Tensor | None]:
        """One target per student block, in block order (``blocks``: only these, the others
        None)."""
        keep = range(len(self.taps)) if blocks is None else set(blocks)
        found = self(*inputs, wanted=None if blocks is None else [self.taps[b] for b in keep])
        return [found[t] if b in keep else None for b, t in enumerate(self.taps)]


class GraphTaps:
    """The same for a captured teacher (``archnet.capture``): a student block names the graph
    value it imitates, and the graph computes it in float (equal to the model, tested)."""

    def __init__(self, graph: TeacherGraph, taps: Sequence[str]):
        known = set(graph.inputs) | {n.name for n in graph.nodes}
        missing = [t for t in taps if t not in known]
        if missing:
            raise ConversionError(f"teacher graph has no value(s) {missing} that the student's "
                                  f"blocks imitate")
        self.graph, self.taps = graph, list(taps)

    @torch.no_grad()
    def features(self, *inputs: torch.Tensor, blocks: Sequence[int] | None = None
                 ) -> list[torch.Tensor | None]:
        keep = range(len(self.taps)) if blocks is None else set(blocks)
        found = self.graph.values(*inputs, keep={self.taps[b] for b in keep})
        return [found[t] if b in keep else None for b, t in enumerate(self.taps)]


class KeptTargets:
    """The teacher's targets of one period, computed the first time an input is drawn and kept
    for the rest of the period, for the blocks the period compares: a period of several passes
    over a small set (sentences) runs the teacher once per input, not once per step. Used only
    when the kept targets fit ``budget_bytes``; otherwise every batch runs the teacher."""

    def __init__(self, taps, data, blocks: Sequence[int], budget_bytes: int = 1 << 30):
        self.taps, self.data, self.blocks = taps, data, list(blocks)
        self.kept: dict[int, list[torch.Tensor]] = {}
        probe = taps.features(*data.teacher(torch.arange(1)), blocks=self.blocks)
        per_input = sum(probe[b][0].numel() * probe[b].element_size() for b in self.blocks)
        self.enabled = per_input * len(data) <= budget_bytes

    def features(self, idx: torch.Tensor) -> list[torch.Tensor | None]:
        """One target per student block (``None`` for blocks the period does not compare)."""
        if not self.enabled:
            return self.taps.features(*self.data.teacher(idx), blocks=self.blocks)
        order = idx.tolist()
        missing = [i for i in dict.fromkeys(order) if i not in self.kept]
        if missing:
            found = self.taps.features(*self.data.teacher(torch.tensor(missing)),
                                       blocks=self.blocks)
            for j, i in enumerate(missing):
                self.kept[i] = [found[b][j].clone() for b in self.blocks]
        n = max(self.blocks) + 1
        out: list[torch.Tensor | None] = [None] * n
        for k, b in enumerate(self.blocks):
            out[b] = torch.stack([self.kept[i][k] for i in order])
        return out
