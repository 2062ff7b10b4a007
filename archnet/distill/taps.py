"""The teacher's intermediate features at the values the student's blocks imitate.

A student block names its teacher module by path (``block.tap``: ``maxpool``, ``layer2.0``,
``fc``). ``TeacherTaps`` runs the teacher once per batch and returns the output of every tapped
module, captured with forward hooks (the teacher is only read: eval mode, no gradients).
"""

from __future__ import annotations

import os
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


def memory_budget() -> int:
    """What the kept targets may take: a quarter of the machine's memory, at most 8 GiB."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 4 << 30
    return min(8 << 30, physical // 4)


class KeptTargets:
    """The teacher's targets, computed the first time an input is drawn and kept for the rest of
    the run: every later pass over it, in this period or a later one, reads them instead of
    running the teacher (a period of several passes over a small set of sentences runs the
    teacher once per input, and a later period only runs it for the blocks it adds). Kept block
    by block in tensors over the whole set, the first blocks while they fit ``budget_bytes``; a
    batch that needs a block past those runs the teacher."""

    def __init__(self, taps, data, budget_bytes: int | None = None):
        self.taps, self.data = taps, data
        budget = memory_budget() if budget_bytes is None else budget_bytes
        probe = taps.features(*data.teacher(torch.arange(1)))
        self.keep: set[int] = set()
        used = 0
        for b, p in enumerate(probe):
            used += p[0].numel() * p.element_size() * len(data)
            if used > budget:
                break
            self.keep.add(b)
        self.store: dict[int, torch.Tensor] = {}
        self.have = {b: torch.zeros(len(data), dtype=torch.bool) for b in self.keep}
        self.teacher_inputs = 0     # inputs the teacher ran on, all calls

    def features(self, idx: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor | None]:
        """One target per student block (``None`` for blocks not in ``blocks``)."""
        blocks = list(blocks)
        kept = [b for b in blocks if b in self.keep]
        if len(kept) < len(blocks):
            found = self.taps.features(*self.data.teacher(idx), blocks=blocks)
            self.teacher_inputs += len(idx)
            self._put(idx, found, kept)
            return found
        need = torch.zeros(len(idx), dtype=torch.bool)
        for b in kept:
            need |= ~self.have[b][idx]
        if need.any():
            missing = torch.unique(idx[need])
            self._put(missing, self.taps.features(*self.data.teacher(missing), blocks=kept), kept)
            self.teacher_inputs += len(missing)
        out: list[torch.Tensor | None] = [None] * len(self.taps.taps)
        for b in kept:
            out[b] = self.store[b][idx]
        return out

    def _put(self, idx: torch.Tensor, found: list, blocks: list[int]) -> None:
        for b in blocks:
            if b not in self.store:
                self.store[b] = torch.empty((len(self.data), *found[b].shape[1:]),
                                            dtype=found[b].dtype)
            self.store[b][idx] = found[b]
            self.have[b][idx] = True
