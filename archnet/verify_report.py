"""What every verify report shares, for image and text runs: percentages, the progress bar,
and the simulator's accumulator overflow summed over a run (and the lines that say it)."""

from __future__ import annotations

import sys

import torch

from archnet import distributed as dist
from simulator.ir.program import Program
from simulator.overflow import OverflowSummary


def overflow_result_lines(overflow: OverflowSummary | None, bit_exact: bool) -> list[str]:
    """The lines that go right under ``result:``: whether the chip wrapped or saturated."""
    if overflow is None:
        return []
    lines = [f"  {overflow.sentence()}"]
    if overflow.events and bit_exact:
        lines.append(f"  (bit-exact: the simulator and archnet's emulation {overflow.verb.lower()} "
                     f"alike; that is this chip's arithmetic, and the results above include it)")
    return lines


def pct(frac: float) -> str:
    if frac == 1.0:
        return "100%"
    return f"{min(frac * 100, 99.999):.3f}%"


def progress_bar(total: int, progress: bool | None, chip: str):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress or not dist.is_main():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=f"verify on {chip}", unit="batch", file=sys.stderr, leave=False)


def advance(bar, matched, totals) -> None:
    """One batch done: the bar (if any) moves on and shows the element agreement so far."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(agree=pct(matched.sum() / totals.sum() if totals.sum() else 1.0))


def reduce_overflow(program: Program, chip, stats: dict, over_ranks: bool = True
                    ) -> OverflowSummary:
    """The run's ``OverflowSummary``: ``stats`` ({MAC op: OverflowStats} of this process), with
    ``over_ranks`` summed over the ranks under torchrun (events and outputs added, required bits
    the largest); one row per MAC op of ``program`` in its order (a rank that ran no batch
    contributes zeros)."""
    from simulator.ir.ops import MAC_OPS
    from simulator.overflow import LayerOverflow
    names = [node.name for node in program.nodes if node.op in MAC_OPS]
    counts = torch.tensor([[stats[n].events, stats[n].outputs] if n in stats else [0, 0]
                           for n in names], dtype=torch.int64).reshape(-1, 2)
    need = torch.tensor([stats[n].required_bits if n in stats else 0 for n in names],
                        dtype=torch.int64)
    if over_ranks and dist.active():
        counts = dist.all_reduce_sum(counts)
        torch.distributed.all_reduce(need, op=torch.distributed.ReduceOp.MAX)
    rows = [LayerOverflow(n, int(c[1]), int(c[0]), int(b))
            for n, c, b in zip(names, counts.tolist(), need.tolist())]
    return OverflowSummary.of(chip, rows)


__all__ = ["advance", "overflow_result_lines", "pct", "progress_bar", "reduce_overflow"]
