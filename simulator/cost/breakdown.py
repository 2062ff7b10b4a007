"""Cost breakdowns that add up, as Vela's ``CycleCost``: per op, then summed for the Program."""

from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass, field

FORMULA = (
    "NPU op: cycles = overhead + max(compute, memory); "
    "compute = MACs / (macs_per_cycle[w,a] x utilisation x efficiency), "
    "or elements / element rate; "
    "memory = activation bytes / (activation_bytes_per_s / clock_hz) "
    "+ weight bytes / (weight_bytes_per_s / clock_hz) (the larger of the two where "
    "memory.weight_port = separate). "
    "Host op: cycles = (FLOPs / host.flops_per_s + transfer bytes / host.link_bytes_per_s "
    "+ hand-off overhead) x clock_hz. Once per inference: host.invoke_overhead_s x clock_hz. "
    "latency_ms = cycles / clock_hz x 1000."
)

BOUNDS = ("compute", "memory", "overhead", "host")


def _finite(d: dict, what: str) -> dict:
    """``d`` unchanged if every number in it is finite. JSON has no inf or NaN, and the profile's
    physical bounds keep every term finite, so one that is not is a bug to surface, not hide."""
    for key, value in d.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cost of {what}: {key} = {value} is not finite")
    return d


@dataclass(frozen=True)
class CycleCost:
    """The additive numbers of one op or of a sum of ops."""

    macs: int = 0
    activation_bytes: float = 0.0   # bytes over the activation interface (or host link, on host)
    weight_bytes: float = 0.0       # bytes over the weight interface
    compute_cycles: float = 0.0
    memory_cycles: float = 0.0
    overhead_cycles: float = 0.0
    cycles: float = 0.0

    def __add__(self, other: "CycleCost") -> "CycleCost":
        return CycleCost(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __mul__(self, k: float) -> "CycleCost":
        return CycleCost(*(a * k for a in astuple(self)))


@dataclass(frozen=True)
class OpCost:
    """One node's cost and where it ran.

    ``bound`` is "compute", "memory" or "overhead" (the largest term of an NPU op) or "host" (a
    host op: its cycles are the sum of host compute, transfers and hand-off). An op fused into
    its producer (``fused_into`` names it) has no cycles of its own and reports the producer's
    bound; a reshape/flatten view has none either and reports "overhead" (of zero).
    """

    name: str
    type: str
    detail: str
    on_host: bool
    bound: str
    fallback_reason: str | None
    weight_bits: int | None
    activation_bits: int | None
    utilisation: float | None
    cost: CycleCost
    clock_hz: float
    fused_into: str | None = None

    @property
    def cycles(self) -> float:
        return self.cost.cycles

    @property
    def macs(self) -> int:
        return self.cost.macs

    @property
    def latency_ms(self) -> float:
        return self.cost.cycles / self.clock_hz * 1e3

    def to_dict(self) -> dict:
        d = {"name": self.name, "type": self.type, "detail": self.detail,
             "placement": "host" if self.on_host else "npu", "bound": self.bound,
             "fallback_reason": self.fallback_reason, "weight_bits": self.weight_bits,
             "activation_bits": self.activation_bits, "utilisation": self.utilisation,
             "fused_into": self.fused_into}
        d.update(asdict(self.cost))
        d["latency_ms"] = self.latency_ms
        return _finite(d, f"op {self.name}")


@dataclass(frozen=True)
class Estimate:
    chip: str
    program: str
    clock_hz: float
    ops: tuple[OpCost, ...] = field(default_factory=tuple)
    invoke: CycleCost = field(default_factory=CycleCost)   # per inference, outside any op

    @property
    def total(self) -> CycleCost:
        out = self.invoke
        for op in self.ops:
            out = out + op.cost
        return out

    @property
    def total_cycles(self) -> float:
        return self.total.cycles

    @property
    def total_latency_ms(self) -> float:
        return self.total_cycles / self.clock_hz * 1e3

    @property
    def fallbacks(self) -> list[OpCost]:
        return [op for op in self.ops if op.fallback_reason is not None]

    def op(self, name: str) -> OpCost:
        return next(o for o in self.ops if o.name == name)

    def to_dict(self) -> dict:
        total = self.total
        d = {"chip": self.chip, "program": self.program, "clock_hz": self.clock_hz,
             "formula": FORMULA, "total_cycles": total.cycles,
             "total_latency_ms": self.total_latency_ms, "total_macs": total.macs,
             "total_activation_bytes": total.activation_bytes,
             "total_weight_bytes": total.weight_bytes,
             "invoke_cycles": self.invoke.cycles,
             "host_ops": sum(op.on_host for op in self.ops),
             "fallbacks": [{"name": op.name, "reason": op.fallback_reason}
                           for op in self.fallbacks],
             "ops": [op.to_dict() for op in self.ops]}
        return _finite(d, f"{self.program} on {self.chip}")
