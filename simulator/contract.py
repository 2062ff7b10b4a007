"""Ground floor: the vocabulary of the integer arithmetic contract.

Chip profiles, the Program IR and the numerics all speak these names; this module imports
nothing of ours. The semantics behind each name are implemented once, in
``simulator.numerics.fixed_point``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from simulator.errors import SimulatorError


@dataclass(frozen=True)
class IntType:
    """A two's-complement (signed) or plain binary (unsigned) integer of ``bits`` width."""

    bits: int
    signed: bool

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 64:
            raise SimulatorError(f"integer width {self.bits} out of range 1..64")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def name(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.bits}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class FloatType:
    """IEEE float32: tensors of host (fallback) ops and of float graphs imported for estimation."""

    bits: int = 32

    @property
    def name(self) -> str:
        return "f32"

    def __str__(self) -> str:
        return self.name


DType = IntType | FloatType
FLOAT32 = FloatType()
ACCUMULATOR = IntType(32, True)  # nominal type of MAC outputs; the profile's width applies


_DTYPE_ALIASES = {"int8": "s8", "uint8": "u8", "int16": "s16", "uint16": "u16", "int32": "s32",
                  "int64": "s64", "int4": "s4", "uint4": "u4", "int2": "s2", "uint2": "u2",
                  "float32": "f32", "float": "f32"}


def parse_dtype(name: str) -> DType:
    """``"s8"``, ``"u4"``, ``"int8"``, ``"f32"`` ... -> the type; a clear error otherwise."""
    key = _DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if key == "f32":
        return FLOAT32
    match = re.fullmatch(r"([su])(\d{1,2})", key)
    if not match or not 1 <= int(match.group(2)) <= 64:
        raise SimulatorError(f"unknown dtype {name!r}: use s<bits> or u<bits> (1..64) or f32")
    return IntType(int(match.group(2)), match.group(1) == "s")


class RoundingMode(str, enum.Enum):
    """How ``v / 2**S`` (or ``n / d``) becomes an integer.

    ``tflite`` is gemmlowp's two-step scheme: saturating rounding doubling high multiply by a
    Q0.31 multiplier, then rounding divide by a power of two (ties away from zero), i.e. it
    rounds twice; the others round the exact product once.
    """

    HALF_UP = "half_up"        # add 2**(S-1), arithmetic shift: ties toward +inf
    HALF_EVEN = "half_even"    # ties to even
    HALF_AWAY = "half_away"    # ties away from zero
    FLOOR = "floor"            # arithmetic shift, no rounding constant
    TFLITE = "tflite"          # double rounding: SRDHM then rounding divide by POT


class Overflow(str, enum.Enum):
    WRAP = "wrap"
    SATURATE = "saturate"


class SaturationPoint(str, enum.Enum):
    """Where the accumulator's overflow policy is applied during a reduction."""

    PER_MAC = "per_mac"    # after every multiply-accumulate, in the declared order
    PER_TILE = "per_tile"  # after each K-tile of ``tile_k`` products, summed exactly inside
    FINAL = "final"        # once, on the exact sum


class MacOrder(str, enum.Enum):
    """Order in which a conv's reduction runs (matters only for per_mac / per_tile saturation)."""

    CIN_KH_KW = "cin_kh_kw"  # input channel outermost (NCHW weight order, as ONNX stores it)
    KH_KW_CIN = "kh_kw_cin"  # kernel position outermost, channels innermost (NHWC, as TFLite)


class RequantMode(str, enum.Enum):
    MULTIPLIER_SHIFT = "multiplier_shift"  # integer M of multiplier_bits and right shift S
    FLOAT_SCALE = "float_scale"            # float32 scale, round half to even (ONNX QLinear*)


@dataclass(frozen=True)
class AccumulatorSpec:
    """Width and overflow behaviour of the MAC accumulator."""

    bits: int
    overflow: Overflow
    saturation_point: SaturationPoint = SaturationPoint.FINAL
    tile_k: int = 0
    mac_order: MacOrder = MacOrder.CIN_KH_KW

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 48:
            raise SimulatorError(f"accumulator_bits {self.bits} out of range 8..48")
        if self.saturation_point is SaturationPoint.PER_TILE and self.tile_k < 1:
            raise SimulatorError("saturation_point per_tile needs tile_k >= 1")

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def order_independent(self) -> bool:
        """Wrap is modular and final saturation sees only the exact sum: any order gives one answer."""
        return self.overflow is Overflow.WRAP or self.saturation_point is SaturationPoint.FINAL


@dataclass(frozen=True)
class RequantSpec:
    """How a wide integer becomes a narrow one: mode, rounding and multiplier width."""

    mode: RequantMode
    rounding: RoundingMode
    multiplier_bits: int = 32

    def __post_init__(self) -> None:
        if not 2 <= self.multiplier_bits <= 32:
            raise SimulatorError(f"multiplier_bits {self.multiplier_bits} out of range 2..32")
        if self.rounding is RoundingMode.TFLITE and self.multiplier_bits != 32:
            raise SimulatorError("rounding 'tflite' needs multiplier_bits = 32 (a Q0.31 multiplier)")


@dataclass(frozen=True)
class ArithmeticSpec:
    """Everything a chip decides about the numbers it computes (the profile's [arithmetic])."""

    accumulator: AccumulatorSpec
    requant: RequantSpec

    def __post_init__(self) -> None:
        if (self.requant.mode is RequantMode.MULTIPLIER_SHIFT
                and self.requant.rounding is not RoundingMode.TFLITE
                and self.accumulator.bits + self.requant.multiplier_bits > 64):
            raise SimulatorError(
                f"accumulator_bits {self.accumulator.bits} + multiplier_bits "
                f"{self.requant.multiplier_bits} exceed 64: acc * M would not fit int64")
        if self.requant.rounding is RoundingMode.TFLITE and self.accumulator.bits > 32:
            raise SimulatorError("rounding 'tflite' needs accumulator_bits <= 32")
