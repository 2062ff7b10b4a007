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
S16 = IntType(16, True)

# TOSA's TABLE for 16-bit inputs: 513 entries, 2**16 / 512 inputs between neighbours, the low
# 7 bits of the input interpolate (fixed_point.lookup_interpolated)
INTERPOLATION_FRACTION_BITS = 7
INTERPOLATED_TABLE_ENTRIES = (1 << (16 - INTERPOLATION_FRACTION_BITS)) + 1


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


# Activation functions an activation unit may evaluate, by the names the importers give a
# lookup_table and the profiles list under ops.lookup_table.functions. A table with no name (a
# student's own) runs only on a programmable table ("any").
ACTIVATION_FUNCTIONS = ("sigmoid", "tanh", "hardsigmoid", "hardswish", "silu", "gelu",
                        "leaky_relu", "prelu", "elu", "softplus", "exp", "rsqrt")


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


class AddRounding(str, enum.Enum):
    """How an integer add brings its two operands to the output's scale."""

    SINGLE = "single"            # (a - za) * Ma + (b - zb) * Mb with one shift: one rounding
    # TFLite ADD: each operand shifted left 20 bits and rescaled on its own (one rounding each),
    # the sum rescaled to the output (a third); every step rounds as the profile's `rounding`
    PER_OPERAND = "per_operand"


class AvgPoolSum(str, enum.Enum):
    """What an average pool sums before it divides by the window's count."""

    CENTRED = "centred"  # x - zero point; the zero point is added back after rounding
    RAW = "raw"          # the stored integers, zero point included (TFLite AVERAGE_POOL_2D)


class GlobalAvgPool(str, enum.Enum):
    """How a global average pool divides its sum by the count."""

    DIVIDE = "divide"            # round_div(sum(x - zp), count) + zp: the output keeps x's scale
    # TFLite's int8 MEAN: sum(x - zp_in) times QuantizeMultiplier(in_scale / out_scale) shifted
    # left floor(log2 count) bits and divided by the count (truncated), rounded as `rounding`,
    # plus zp_out: the output has its own scale and zero point
    TFLITE_MEAN = "tflite_mean"


class QuantizeRounding(str, enum.Enum):
    """How the host's float -> int quantize at the graph's edge rounds ``x / scale``."""

    HALF_EVEN = "half_even"  # rint: ONNX QuantizeLinear, TFLite's optimised kernels
    HALF_AWAY = "half_away"  # roundf: TFLite's reference AffineQuantize


class Int16Requant(str, enum.Enum):
    """How the accumulator of a MAC op whose activations are 16 bits wide is requantized."""

    SAME = "same"  # as every other requantize (the profile's mode and rounding)
    # TFLite's 16x8 kernels: MultiplyByQuantizedMultiplier(int64_t acc, M, shift): the Q0.31
    # multiplier cut to 16 bits, (M + 2**15) >> 16 (0x7FFF from M >= 0x7FFF0000), one rounding
    # half up by S - 16 bits, the result truncated to int32
    TFLITE_REDUCED_MULTIPLIER = "tflite_reduced_multiplier"


class MulScale(str, enum.Enum):
    """In which precision an elementwise mul's scale ``scale_a * scale_b / scale_y`` is formed."""

    FLOAT64 = "float64"  # the product and quotient in double
    # TFLite's mul.cc Prepare: the float32 scales multiplied and divided in float32, the
    # result (a float) then quantized like any scale
    FLOAT32 = "float32"


class FcRequant(str, enum.Enum):
    """How the accumulator of a fully_connected is requantized."""

    SAME = "same"                            # as every other requantize (the profile's mode)
    # TFLite's reference FULLY_CONNECTED: round(acc * scale) in float64, ties away from zero
    FLOAT64_HALF_AWAY = "float64_half_away"


@dataclass(frozen=True)
class AccumulatorSpec:
    """Width and overflow behaviour of the MAC accumulator."""

    bits: int
    overflow: Overflow
    saturation_point: SaturationPoint = SaturationPoint.FINAL
    tile_k: int = 0
    mac_order: MacOrder = MacOrder.CIN_KH_KW

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 64:  # a profile's main accumulator: 8..48 (profiles.py)
            raise SimulatorError(f"accumulator_bits {self.bits} out of range 8..64")
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
    add_rounding: AddRounding = AddRounding.SINGLE
    avgpool_sum: AvgPoolSum = AvgPoolSum.CENTRED
    fc_requantize: FcRequant = FcRequant.SAME
    global_avgpool: GlobalAvgPool = GlobalAvgPool.DIVIDE
    quantize_rounding: QuantizeRounding = QuantizeRounding.HALF_EVEN
    # MAC ops and adds whose activations are 16 bits wide (TFLite's 16x8 quantization): their
    # accumulator (None: the one above), their requantize, and the left shift a per_operand
    # add gives its operands (TFLite's ADD: 20 for 8-bit operands, 15 for 16-bit ones)
    int16_accumulator: AccumulatorSpec | None = None
    int16_requantize: Int16Requant = Int16Requant.SAME
    int16_add_left_shift: int = 20
    mul_scale: MulScale = MulScale.FLOAT64

    def accumulator_for(self, activation_bits: int) -> AccumulatorSpec:
        """The accumulator of a MAC op whose activation input has ``activation_bits``."""
        if activation_bits == 16 and self.int16_accumulator is not None:
            return self.int16_accumulator
        return self.accumulator

    def __post_init__(self) -> None:
        self._check_int16()
        if self.add_rounding is AddRounding.PER_OPERAND and \
                self.requant.mode is not RequantMode.MULTIPLIER_SHIFT:
            raise SimulatorError("add_rounding 'per_operand' needs requantize 'multiplier_shift'")
        if self.global_avgpool is GlobalAvgPool.TFLITE_MEAN and \
                self.requant.mode is not RequantMode.MULTIPLIER_SHIFT:
            raise SimulatorError("global_avgpool 'tflite_mean' needs requantize 'multiplier_shift'")
        if (self.requant.mode is RequantMode.MULTIPLIER_SHIFT
                and self.requant.rounding is not RoundingMode.TFLITE
                and self.accumulator.bits + self.requant.multiplier_bits > 64):
            raise SimulatorError(
                f"accumulator_bits {self.accumulator.bits} + multiplier_bits "
                f"{self.requant.multiplier_bits} exceed 64: acc * M would not fit int64")
        if self.requant.rounding is RoundingMode.TFLITE and self.accumulator.bits > 32:
            raise SimulatorError("rounding 'tflite' needs accumulator_bits <= 32")

    def _check_int16(self) -> None:
        acc16 = self.int16_accumulator
        if self.int16_requantize is Int16Requant.TFLITE_REDUCED_MULTIPLIER:
            if self.requant.mode is not RequantMode.MULTIPLIER_SHIFT or \
                    self.requant.multiplier_bits != 32:
                raise SimulatorError("int16_requantize 'tflite_reduced_multiplier' needs "
                                     "requantize 'multiplier_shift' with multiplier_bits = 32")
        elif acc16 is not None:  # requantized as every other accumulator: the same limits
            if self.requant.rounding is RoundingMode.TFLITE and acc16.bits > 32:
                raise SimulatorError("rounding 'tflite' needs int16_accumulator_bits <= 32")
            if (self.requant.mode is RequantMode.MULTIPLIER_SHIFT
                    and self.requant.rounding is not RoundingMode.TFLITE
                    and acc16.bits + self.requant.multiplier_bits > 64):
                raise SimulatorError(f"int16_accumulator_bits {acc16.bits} + multiplier_bits "
                                     f"{self.requant.multiplier_bits} exceed 64")
        if not 0 <= self.int16_add_left_shift <= 31:
            raise SimulatorError(f"int16_add_left_shift {self.int16_add_left_shift} out of "
                                 f"range 0..31")
