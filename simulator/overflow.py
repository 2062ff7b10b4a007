"""Accumulator overflow over many runs: sum ``OverflowStats`` per MAC op, and say it plainly.

``execute`` records, for every MAC op, how many outputs left the accumulator's range where its
policy applies (``events``: those outputs differ from the exact sum, because the chip wrapped or
saturated them), out of how many (``outputs``), and the narrowest accumulator with which the
policy would have given every output exactly (``required_bits``). A data set run in batches sums
the first two and takes the largest of the third (``merge_stats``); ``OverflowSummary`` holds the
result with the chip's accumulator and formats it: a per-layer table and one sentence saying
whether the chip wrapped or saturated, and which accumulator would have been safe.

A bit-exact comparison says nothing about this: the simulator and an emulation of the same chip
wrap alike. The summary is how a user sees that the chip's results are not the exact sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from simulator.contract import AccumulatorSpec, Overflow, SaturationPoint
from simulator.numerics.fixed_point import OverflowStats


def merge_stats(into: dict[str, OverflowStats], more: Mapping[str, OverflowStats]
                ) -> dict[str, OverflowStats]:
    """Add one run's per-op stats to ``into`` (in place, and returned): events and outputs
    summed, required bits the largest seen. New ops are appended in ``more``'s order."""
    for name, stats in more.items():
        into[name] = into[name].merge(stats) if name in into else stats
    return into


@dataclass(frozen=True)
class LayerOverflow:
    """One MAC op over the whole run."""

    name: str
    outputs: int
    events: int
    required_bits: int

    def to_dict(self, accumulator_bits: int) -> dict:
        return {"name": self.name, "outputs": self.outputs, "events": self.events,
                "required_bits": self.required_bits,
                "fits": self.required_bits <= accumulator_bits}


@dataclass
class OverflowSummary:
    """The accumulator's behaviour over a run: per MAC op, and the chip's accumulator."""

    accumulator_bits: int
    mode: str                      # "wrap" or "saturate" (contract.Overflow)
    saturation_point: str          # where saturation applies (contract.SaturationPoint)
    layers: list[LayerOverflow] = field(default_factory=list)

    # -- building
    @classmethod
    def of(cls, chip, stats: Mapping[str, OverflowStats] | Iterable[LayerOverflow]
           ) -> "OverflowSummary":
        """From a chip (a ``ChipProfile``, ``ArithmeticSpec`` or ``AccumulatorSpec``) and
        ``{op name: OverflowStats}`` (or ``LayerOverflow`` rows), in the given order."""
        acc = chip if isinstance(chip, AccumulatorSpec) else \
            getattr(chip, "arithmetic", chip).accumulator
        if isinstance(stats, Mapping):
            rows = [LayerOverflow(n, int(s.outputs), int(s.events), int(s.required_bits))
                    for n, s in stats.items()]
        else:
            rows = list(stats)
        return cls(int(acc.bits), Overflow(acc.overflow).value,
                   SaturationPoint(acc.saturation_point).value, rows)

    @classmethod
    def from_dict(cls, d: Mapping) -> "OverflowSummary":
        """The inverse of ``to_dict`` (derived keys are recomputed, not read)."""
        return cls(int(d["accumulator_bits"]), str(d["mode"]), str(d["saturation_point"]),
                   [LayerOverflow(str(r["name"]), int(r["outputs"]), int(r["events"]),
                                  int(r["required_bits"])) for r in d["layers"]])

    # -- derived
    @property
    def events(self) -> int:
        return sum(r.events for r in self.layers)

    @property
    def outputs(self) -> int:
        return sum(r.outputs for r in self.layers)

    @property
    def overflowed(self) -> list[LayerOverflow]:
        """The MAC ops where at least one output wrapped or saturated."""
        return [r for r in self.layers if r.events]

    @property
    def safe_bits(self) -> int | None:
        """The narrowest accumulator that would have held every MAC op exactly, for these
        inputs (None when no MAC op produced an output)."""
        seen = [r.required_bits for r in self.layers if r.outputs]
        return max(seen) if seen else None

    @property
    def verb(self) -> str:
        return "WRAPPED" if self.mode == Overflow.WRAP.value else "SATURATED"

    @property
    def where(self) -> str:
        """Where a saturating accumulator clips ("" for wrapping ones)."""
        if self.mode == Overflow.WRAP.value:
            return ""
        return {"final": "on the final sum", "per_mac": "after every MAC",
                "per_tile": "after every K-tile"}.get(self.saturation_point, self.saturation_point)

    @property
    def describe_accumulator(self) -> str:
        """e.g. ``8-bit, wraps``, ``16-bit, saturates after every MAC``."""
        if self.mode == Overflow.WRAP.value:
            return f"{self.accumulator_bits}-bit, wraps"
        return f"{self.accumulator_bits}-bit, saturates {self.where}"

    def to_dict(self) -> dict:
        return {"accumulator_bits": self.accumulator_bits, "mode": self.mode,
                "saturation_point": self.saturation_point,
                "overflowed": self.events > 0,
                "wrapped": self.events > 0 and self.mode == Overflow.WRAP.value,
                "saturated": self.events > 0 and self.mode == Overflow.SATURATE.value,
                "events": self.events, "outputs": self.outputs,
                "layers_overflowed": len(self.overflowed), "layer_count": len(self.layers),
                "safe_bits": self.safe_bits, "sentence": self.sentence(),
                "layers": [r.to_dict(self.accumulator_bits) for r in self.layers]}

    # -- words
    def sentence(self) -> str:
        """One plain sentence: whether the chip wrapped or saturated, and the safe width."""
        n = len(self.layers)
        safe = self.safe_bits
        if self.events:
            k = len(self.overflowed)
            where = f" ({self.where})" if self.saturation_point != "final" and self.where else ""
            return (f"the chip's {self.accumulator_bits}-bit accumulator {self.verb}{where} in "
                    f"{self.events:,} of {self.outputs:,} outputs in {k} of {n} MAC layer"
                    + ("" if n == 1 else "s")
                    + f"; {_a(safe)} {safe}-bit accumulator would have been safe for these "
                    f"inputs")
        if not n:
            return "no MAC layers: the accumulator was never used"
        return (f"no accumulator overflow: the chip's {self.accumulator_bits}-bit accumulator "
                f"held all {self.outputs:,} outputs of {n} MAC layer" + ("" if n == 1 else "s")
                + (f" exactly ({safe} bits would have been enough for these inputs)"
                   if safe is not None else ""))

    def table(self, only_overflowed: bool = False, indent: str = "") -> list[str]:
        """One row per MAC op (or only those with events): outputs, events, the chip's bits
        and the bits that would have been safe; overflowing rows are flagged."""
        rows = self.overflowed if only_overflowed else self.layers
        return format_table([(r.name, r.outputs, r.events, r.required_bits) for r in rows],
                            self.accumulator_bits, indent)

    def lines(self, indent: str = "  ") -> list[str]:
        """A report section: a heading, then the overflowing layers' table or one line."""
        head = f"accumulator overflow ({self.describe_accumulator})"
        n = len(self.layers)
        if not self.overflowed:
            safe = "" if self.safe_bits is None else \
                f"; the widest needed {self.safe_bits} of {self.accumulator_bits} bits"
            return [head, f"{indent}none in {n} MAC layer" + ("" if n == 1 else "s")
                    + f" ({self.outputs:,} outputs){safe}"]
        return [head + f": {self.verb} in {len(self.overflowed)} of {n} MAC layers",
                *self.table(only_overflowed=True, indent=indent)]


def _a(n: int) -> str:
    """The article before a spoken number: an 8-, 11-, 18-, 80-bit; a 13-bit."""
    return "an" if str(n).startswith("8") or n in (11, 18) else "a"


def format_table(rows: Iterable[tuple[str, int, int, int]], accumulator_bits: int,
                 indent: str = "") -> list[str]:
    """Rows of (MAC op, outputs, overflow events, required bits) as aligned text lines, with
    the chip's accumulator bits beside the safe ones and ``<- overflow`` on rows with events."""
    rows = list(rows)
    width = max([24] + [len(r[0]) for r in rows])
    out = [f"{indent}{'MAC op':<{width}} {'outputs':>12} {'overflows':>12} {'acc bits':>8} "
           f"{'safe bits':>9}"]
    for name, outputs, events, required in rows:
        flag = "  <- overflow" if events else ""
        out.append(f"{indent}{name:<{width}} {outputs:>12,} {events:>12,} {accumulator_bits:>8} "
                   f"{required:>9}{flag}")
    return out


__all__ = ["LayerOverflow", "OverflowSummary", "format_table", "merge_stats"]
