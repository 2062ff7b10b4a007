"""Floor 2: chip profiles. Load a TOML file, resolve ``inherit``, validate strictly, freeze.

A profile is data only (``chip_profiles/<name>.toml``, every key documented in
``chip_profiles/README.md``): what a chip runs, with which integer arithmetic, and what it costs.
Validation is strict, unlike Vela's "all properties are optional and initialised to 1": an unknown
key, a missing key, a wrong type or an impossible value is a ``ProfileError`` of one line that
names the file, the dotted field and what is allowed. No hardware number lives in this module.

Lookup of a bare name such as ``ethos-u55-128``: the directories in ``$ARCHNET_PROFILE_PATH``
(``os.pathsep``-separated), then ``chip_profiles/`` next to the ``simulator`` package: the repo's
folder in a checkout or editable install, and the copy pyproject.toml installs beside
``simulator/`` in site-packages (``packages.find`` includes ``chip_profiles*`` and
``package-data`` takes ``*.toml`` and ``*.md``).
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from simulator.contract import (ACTIVATION_FUNCTIONS, AccumulatorSpec, AddRounding,
                                ArithmeticSpec, AvgPoolSum, FcRequant, GlobalAvgPool,
                                Int16Requant, MacOrder, MulScale, Overflow, QuantizeRounding,
                                RequantMode, RequantSpec, RoundingMode, SaturationPoint)
from simulator.errors import ProfileError, SimulatorError

PROFILE_PATH_ENV = "ARCHNET_PROFILE_PATH"
BUNDLED_PROFILE_DIR = Path(__file__).resolve().parent.parent / "chip_profiles"
MAX_PROFILE_BYTES = 1 << 20      # a profile is a page of text; anything larger is not one
MAX_INHERIT_DEPTH = 16
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class ReductionMapping(str, enum.Enum):
    """What fills the MAC array's reduction lanes (decides the utilisation lost to tiling)."""

    INPUT_CHANNELS = "input_channels"  # input channels; kernel taps run in sequence
    KERNEL_TAPS = "kernel_taps"        # kernel taps (K210: 3x3 = 9); channels run in sequence
    IM2COL = "im2col"                  # the flattened cin*kh*kw reduction (a systolic GEMM)


class WeightPort(str, enum.Enum):
    """Whether weights and feature maps cross one external interface or two."""

    SHARED = "shared"      # one bus (DRAM, USB): activation and weight transfers add up
    SEPARATE = "separate"  # weights on their own port (Ethos-U's AXI1 flash): they overlap


class FeatureMapTiling(str, enum.Enum):
    """What of a layer's feature maps must fit in ``memory.sram_bytes`` for them to stay on chip."""

    WHOLE = "whole"      # the whole input and output tensors (layer by layer execution)
    STRIPES = "stripes"  # a stripe of kernel-height input rows and one output row (cascading)


class Broadcast(str, enum.Enum):
    """Which second operands an elementwise add or mul takes beside its first."""

    CHANNEL = "channel"  # the same shape (per sample for add), one value per channel, or one value
    ANY = "any"          # any NumPy broadcast of the second to the first (Ethos-U's IFM2_BROADCAST)


# ----------------------------------------------------------------------------- frozen profile

@dataclass(frozen=True)
class Provenance:
    """Where the numbers come from: citations per field, the fields that are assumptions, and
    what the cycle count includes and leaves out."""

    sources: Mapping[str, str] = field(hash=False)   # a read-only mapping: compared, not hashed
    assumed: tuple[str, ...]
    cycles_include: str
    cycles_exclude: str


@dataclass(frozen=True)
class PrecisionMode:
    """One supported (weight_bits, activation_bits) pair and the MACs per cycle it runs at."""

    weight_bits: int
    activation_bits: int
    macs_per_cycle: float

    @property
    def label(self) -> str:
        return f"w{self.weight_bits}a{self.activation_bits}"


@dataclass(frozen=True)
class ArrayGeometry:
    """Shape of the MAC array (for tiling utilisation), its calibrated efficiency and the fixed
    cost of issuing one op."""

    output_channel_lanes: int
    reduction_lanes: int
    output_pixel_lanes: int
    reduction_mapping: ReductionMapping
    efficiency: float
    op_overhead_cycles: float


@dataclass(frozen=True)
class MemorySpec:
    """On-chip capacity and the two external interfaces the NPU reads and writes."""

    sram_bytes: int                # on-chip buffer for activations and weight tiles
    feature_map_tiling: FeatureMapTiling
    weight_cache_bytes: int        # persistent parameter cache (0: weights stream every inference)
    activation_bytes_per_s: float  # interface of spilled feature maps, graph inputs and outputs
    weight_bytes_per_s: float      # interface the uncached weights stream from (flash, DRAM, USB)
    weight_port: WeightPort        # that interface shared with the feature maps, or its own


@dataclass(frozen=True)
class ElementRates:
    """Throughput of the non-MAC units, per NPU cycle."""

    elements_per_cycle: float          # clamp, standalone requantize
    add_elements_per_cycle: float
    pool_elements_per_cycle: float     # window elements: output elements x kernel area
    lut_elements_per_cycle: float
    softmax_elements_per_cycle: float
    data_movement_bytes_per_cycle: float  # concat, transpose


@dataclass(frozen=True)
class HostSpec:
    """The CPU that runs fallback ops, and the link between it and the NPU."""

    flops_per_s: float
    link_bytes_per_s: float
    fallback_overhead_s: float    # paid at each switch from the NPU to the host
    invoke_overhead_s: float      # paid once per inference: start it, read the result back
    sticky_fallback: bool         # after the first host op, every later op stays on the host


@dataclass(frozen=True)
class OpLimits:
    """Limits of one op kind; fields not meaningful for a kind are None. ``kernel_sizes``,
    ``strides`` and ``dilations`` are None for "any" (within the max_* fields)."""

    supported: bool
    kernel_sizes: tuple[tuple[int, int], ...] | None = None
    max_kernel_hw: tuple[int, int] | None = None
    max_padded_kernel_hw: tuple[int, int] | None = None   # avgpool2d with any padding
    strides: tuple[tuple[int, int], ...] | None = None
    max_stride: int | None = None
    dilations: tuple[int, ...] | None = None
    max_input_channels: int | None = None
    max_output_channels: int | None = None
    max_input_hw: tuple[int, int] | None = None
    depthwise: bool | None = None
    grouped: bool | None = None
    max_input_features: int | None = None
    max_output_features: int | None = None
    max_inner_dim: int | None = None
    max_inputs: int | None = None
    max_input_bits: int | None = None
    max_axis_length: int | None = None
    max_reduced_elements: int | None = None    # mean: elements summed for one output
    functions: tuple[str, ...] | None = None   # lookup_table: None = any table
    interpolated: bool | None = None           # lookup_table: TOSA's 513-entry s16 tables
    broadcast: Broadcast | None = None         # add, sub, mul, minimum


@dataclass(frozen=True)
class ChipProfile:
    name: str
    path: str
    description: str
    provenance: Provenance
    clock_hz: float
    arithmetic: ArithmeticSpec
    precision: tuple[PrecisionMode, ...]
    default_weight_bits: int      # widths assumed for float graphs imported for estimation
    default_activation_bits: int
    array: ArrayGeometry
    memory: MemorySpec
    elementwise: ElementRates
    host: HostSpec
    ops: Mapping[str, OpLimits] = field(hash=False)

    def op(self, kind: str) -> OpLimits:
        return self.ops[kind]

    def mode_for(self, weight_bits: int, activation_bits: int) -> PrecisionMode | None:
        """The mode an op of these widths runs in: the fastest supported pair at least as wide
        (narrow integers run exactly on a wider datapath, at its rate); None if none is."""
        fits = [m for m in self.precision
                if m.weight_bits >= weight_bits and m.activation_bits >= activation_bits]
        if not fits:
            return None
        return min(fits, key=lambda m: (-m.macs_per_cycle, m.weight_bits + m.activation_bits))

    @property
    def default_mode(self) -> PrecisionMode:
        return next(m for m in self.precision if (m.weight_bits, m.activation_bits)
                    == (self.default_weight_bits, self.default_activation_bits))

    @property
    def max_activation_bits(self) -> int:
        return max(m.activation_bits for m in self.precision)


# ----------------------------------------------------------------------------- field checkers

class _Bad(Exception):
    """A value is wrong; ``allowed`` says what would be right, ``sub`` refines the field path."""

    def __init__(self, allowed: str, sub: str = ""):
        super().__init__(allowed)
        self.allowed, self.sub = allowed, sub


@dataclass(frozen=True)
class _Leaf:
    parse: Callable[[Any], Any]
    allowed: str
    bounds: tuple[float, float] | None = None     # inclusive physical bounds of a number
    items: Mapping[str, _Leaf] | None = None      # the fields of each table of a list of tables
    # a field a profile may leave out: the value that keeps what every profile computed before
    # the field existed (documented in chip_profiles/README.md), never a guess
    default: Any = None
    optional: bool = False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fmt(x: float) -> str:
    """The shorter of 1e5 and 100000, of 0.5 and 5e-1."""
    plain = f"{x:g}"
    sci = re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{x:.0e}")
    return sci if float(sci) == x and len(sci) < len(plain) else plain


def _unit(unit: str) -> str:
    return f" ({unit})" if unit else ""


def _integer(lo: int, hi: int, unit: str = "") -> _Leaf:
    allowed = f"an integer in {lo}..{hi}{_unit(unit)}"

    def parse(v):
        if not _is_int(v) or not lo <= v <= hi:
            raise _Bad(allowed)
        return v
    return _Leaf(parse, allowed, (lo, hi))


def _number(lo: float, hi: float, unit: str) -> _Leaf:
    allowed = f"a finite number in {_fmt(lo)}..{_fmt(hi)}{_unit(unit)}"

    def parse(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise _Bad(allowed)
        try:
            f = float(v)
        except OverflowError:  # a TOML integer beyond float range
            raise _Bad(allowed) from None
        if not lo <= f <= hi:  # NaN fails both comparisons
            raise _Bad(allowed)
        return f
    return _Leaf(parse, allowed, (float(lo), float(hi)))


def _flag() -> _Leaf:
    def parse(v):
        if not isinstance(v, bool):
            raise _Bad("true or false")
        return v
    return _Leaf(parse, "true or false")


def _text() -> _Leaf:
    def parse(v):
        if not isinstance(v, str) or not v.strip():
            raise _Bad("a non-empty string")
        return v.strip()
    return _Leaf(parse, "a non-empty string")


def _choice(enum_cls) -> _Leaf:
    values = [e.value for e in enum_cls]
    allowed = "one of " + ", ".join(repr(v) for v in values)

    def parse(v):
        if not isinstance(v, str) or v not in values:
            raise _Bad(allowed)
        return enum_cls(v)
    return _Leaf(parse, allowed)


def _dim(x, hi: int) -> bool:
    return _is_int(x) and 1 <= x <= hi


def _optional_choice(enum_cls, default) -> _Leaf:
    leaf = _choice(enum_cls)
    return _Leaf(leaf.parse, f"{leaf.allowed} (default {default.value!r})", default=default,
                 optional=True)


def _optional_integer(lo: int, hi: int, default, unit: str = "", shown: str = "") -> _Leaf:
    """An integer a profile may leave out (range-checked; no cost ``bounds``: not a cost number)."""
    leaf = _integer(lo, hi, unit)
    return _Leaf(leaf.parse, f"{leaf.allowed} (default {shown or default})", default=default,
                 optional=True)


def _hw(hi: int) -> _Leaf:
    allowed = f"[height, width], integers in 1..{hi}"

    def parse(v):
        if not isinstance(v, list) or len(v) != 2 or not all(_dim(x, hi) for x in v):
            raise _Bad(allowed)
        return (v[0], v[1])
    return _Leaf(parse, allowed, (1, hi))


def _hw_list_or_any(hi: int) -> _Leaf:
    allowed = f'"any" or a non-empty list of [height, width] pairs of integers in 1..{hi}'

    def parse(v):
        if v == "any":
            return None
        if not isinstance(v, list) or not v:
            raise _Bad(allowed)
        pairs = []
        for x in v:
            if not isinstance(x, list) or len(x) != 2 or not all(_dim(i, hi) for i in x):
                raise _Bad(allowed)
            pairs.append((x[0], x[1]))
        return tuple(pairs)
    return _Leaf(parse, allowed, (1, hi))


def _int_list_or_any(hi: int) -> _Leaf:
    allowed = f'"any" or a non-empty list of integers in 1..{hi}'

    def parse(v):
        if v == "any":
            return None
        if not isinstance(v, list) or not v or not all(_dim(x, hi) for x in v):
            raise _Bad(allowed)
        return tuple(v)
    return _Leaf(parse, allowed, (1, hi))


def _functions_or_any() -> _Leaf:
    allowed = '"any" (a programmable table) or a list of ' + ", ".join(ACTIVATION_FUNCTIONS)

    def parse(v):
        if v == "any":
            return None
        if not isinstance(v, list) or any(x not in ACTIVATION_FUNCTIONS for x in v):
            raise _Bad(allowed)
        return tuple(v)
    return _Leaf(parse, allowed)


def _str_list() -> _Leaf:
    allowed = "a list of strings"

    def parse(v):
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise _Bad(allowed)
        return tuple(v)
    return _Leaf(parse, allowed)


def _str_map() -> _Leaf:
    allowed = "a table of field = \"citation\" strings"

    def parse(v):
        if not isinstance(v, dict) or not all(isinstance(x, str) and x.strip() for x in v.values()):
            raise _Bad(allowed)
        return MappingProxyType(dict(v))
    return _Leaf(parse, allowed)


# ----------------------------------------------------------------------------- physical bounds
# Every number a profile holds has inclusive bounds, wide enough for anything from a 1 MHz
# microcontroller to a datacenter accelerator, narrow enough to refuse absurd values. They also
# keep every cycle count and latency the cost model derives finite: the worst ratios are
# 1e11 Hz / 1e3 bytes/s = 1e8 cycles a byte and 1 / (1e-3 MACs x 1e-3 efficiency x 1e-8
# utilisation, lanes multiplying to at most 1e8) = 1e14 cycles a MAC. The comments give the span
# of real chips (bundled profiles, ../shared/CHIPS.md, datasheets).

_CLOCK = _number(1e5, 1e11, "Hz")                   # 1 MHz MCUs .. ~5 GHz CPU cores
_BANDWIDTH = _number(1e3, 1e14, "bytes/s")          # ~10 kB/s I2C EEPROM .. 8 TB/s HBM3e
_HOST_FLOPS = _number(1e3, 1e15, "FLOP/s")          # ~1e4 soft float on an MCU .. ~1e13 server
_HANDOFF = _number(0, 1, "s")                       # 0 (one core) .. ~1 ms driver round trip
_OVERHEAD = _number(0, 1e9, "cycles")               # 0 .. ~2e4 cycles to issue one command
_MACS = _number(1e-3, 1e8, "MACs/cycle")            # ~0.01 MCU with no multiplier .. ~5e5 H100
_LANES = _integer(1, 2**20, "lanes")                # 1 .. 4096 a side of a systolic array
_EFFICIENCY = _number(1e-3, 1, "fraction of peak")  # ~0.3 .. 1; under 0.1 % a chip is broken
_RATE = _number(1e-4, 1e6, "per cycle")             # ~1e-3 software exp on an MCU .. 64 lanes
_SRAM = _integer(1, 2**36, "bytes")                 # 24 KiB U55 .. 44 GB Cerebras WSE-3 on wafer
_CACHE = _integer(0, 2**36, "bytes")                # as SRAM; 0 = weights stream every inference
_BITS = _integer(1, 16, "bits")                     # operand widths the integer kernels implement
_ACC_BITS = _integer(8, 48, "bits")                 # what the int64 emulation holds exactly
# 16x8 MACs: TFLite sums int16 x int8 products in int64 (overflow as int64 wraps)
_ACC16_BITS = _optional_integer(8, 64, None, "bits", "accumulator_bits")
_MULT_BITS = _integer(2, 32, "bits")                # up to a Q0.31 requantize multiplier
_TILE_K = _integer(0, 2**31 - 1, "products")        # 0 = untiled; at most one whole reduction
_SIDE = 2**16 - 1                                   # kernel, stride, dilation, map side, inputs:
_MAX_INPUTS = _integer(1, _SIDE, "tensors")         #   Vela's 16-bit dims, _base's "no limit"
_LENGTH = _integer(1, 2**31 - 1)                    # channels, features, reductions: int32 dims

_MODE_FIELDS = {"weight_bits": _BITS, "activation_bits": _BITS, "macs_per_cycle": _MACS}


def _modes() -> _Leaf:
    allowed = ("a non-empty list of {" + ", ".join(f"{k}: {leaf.allowed}" for k, leaf
                                                  in _MODE_FIELDS.items()) + "} tables")

    def parse(v):
        if not isinstance(v, list) or not v:
            raise _Bad(allowed)
        modes, seen = [], set()
        for i, item in enumerate(v):
            if not isinstance(item, dict):
                raise _Bad(allowed, f"[{i}]")
            unknown = sorted(set(item) - set(_MODE_FIELDS))
            if unknown:
                raise _Bad(f"no field {unknown[0]!r}; allowed: {', '.join(_MODE_FIELDS)}",
                           f"[{i}]")
            vals = {}
            for key, leaf in _MODE_FIELDS.items():
                if key not in item:
                    raise _Bad(f"missing; {leaf.allowed}", f"[{i}].{key}")
                try:
                    vals[key] = leaf.parse(item[key])
                except _Bad as bad:
                    raise _Bad(bad.allowed, f"[{i}].{key}") from None
            mode = PrecisionMode(**vals)
            if (mode.weight_bits, mode.activation_bits) in seen:
                raise _Bad(f"{mode.label} listed twice; each pair once", f"[{i}]")
            seen.add((mode.weight_bits, mode.activation_bits))
            modes.append(mode)
        return tuple(modes)
    return _Leaf(parse, allowed, items=_MODE_FIELDS)


# ----------------------------------------------------------------------------- the schema

_WINDOW = {"supported": _flag(), "kernel_sizes": _hw_list_or_any(_SIDE),
           "max_kernel_hw": _hw(_SIDE), "strides": _hw_list_or_any(_SIDE),
           "max_stride": _integer(1, _SIDE), "max_input_hw": _hw(_SIDE)}

OP_SCHEMA: dict[str, dict[str, _Leaf]] = {
    "conv2d": {**_WINDOW, "dilations": _int_list_or_any(_SIDE), "max_input_channels": _LENGTH,
               "max_output_channels": _LENGTH, "depthwise": _flag(), "grouped": _flag()},
    "fully_connected": {"supported": _flag(), "max_input_features": _LENGTH,
                        "max_output_features": _LENGTH},
    "matmul": {"supported": _flag(), "max_inner_dim": _LENGTH},
    "maxpool2d": dict(_WINDOW),
    "avgpool2d": {**_WINDOW, "max_padded_kernel_hw": _hw(_SIDE)},
    "global_avgpool2d": {"supported": _flag(), "max_input_hw": _hw(_SIDE)},
    "add": {"supported": _flag(), "broadcast": _choice(Broadcast)},
    "sub": {"supported": _flag(), "broadcast": _choice(Broadcast)},
    "minimum": {"supported": _flag(), "broadcast": _choice(Broadcast)},
    "mul": {"supported": _flag(), "broadcast": _choice(Broadcast)},
    "concat": {"supported": _flag(), "max_inputs": _MAX_INPUTS},
    "clamp": {"supported": _flag()},
    "lookup_table": {"supported": _flag(), "max_input_bits": _BITS,
                     "functions": _functions_or_any(), "interpolated": _flag()},
    "mean": {"supported": _flag(), "max_reduced_elements": _LENGTH, "max_axis_length": _LENGTH},
    "gather": {"supported": _flag()},
    "softmax": {"supported": _flag(), "max_axis_length": _LENGTH},
    "requantize": {"supported": _flag()},
    "reshape": {"supported": _flag()},
    "flatten": {"supported": _flag()},
    "transpose": {"supported": _flag()},
}

SCHEMA: dict[str, Any] = {
    "name": _text(),
    "description": _text(),
    "clock_hz": _CLOCK,
    "provenance": {"sources": _str_map(), "assumed": _str_list(),
                   "cycles_include": _text(), "cycles_exclude": _text()},
    "arithmetic": {"accumulator_bits": _ACC_BITS, "overflow": _choice(Overflow),
                   "saturation_point": _choice(SaturationPoint), "tile_k": _TILE_K,
                   "mac_order": _choice(MacOrder), "requantize": _choice(RequantMode),
                   "rounding": _choice(RoundingMode), "multiplier_bits": _MULT_BITS,
                   "add_rounding": _optional_choice(AddRounding, AddRounding.SINGLE),
                   "avgpool_sum": _optional_choice(AvgPoolSum, AvgPoolSum.CENTRED),
                   "fully_connected_requantize": _optional_choice(FcRequant, FcRequant.SAME),
                   "global_avgpool": _optional_choice(GlobalAvgPool, GlobalAvgPool.DIVIDE),
                   "quantize_rounding": _optional_choice(QuantizeRounding,
                                                         QuantizeRounding.HALF_EVEN),
                   "int16_accumulator_bits": _ACC16_BITS,
                   "int16_requantize": _optional_choice(Int16Requant, Int16Requant.SAME),
                   "int16_add_left_shift": _optional_integer(0, 31, 20, "bits"),
                   "mul_scale": _optional_choice(MulScale, MulScale.FLOAT64)},
    "precision": {"modes": _modes(), "default_weight_bits": _BITS,
                  "default_activation_bits": _BITS},
    "array": {"output_channel_lanes": _LANES, "reduction_lanes": _LANES,
              "output_pixel_lanes": _LANES, "reduction_mapping": _choice(ReductionMapping),
              "efficiency": _EFFICIENCY, "op_overhead_cycles": _OVERHEAD},
    "memory": {"sram_bytes": _SRAM, "feature_map_tiling": _choice(FeatureMapTiling),
               "weight_cache_bytes": _CACHE, "activation_bytes_per_s": _BANDWIDTH,
               "weight_bytes_per_s": _BANDWIDTH, "weight_port": _choice(WeightPort)},
    "elementwise": {"elements_per_cycle": _RATE, "add_elements_per_cycle": _RATE,
                    "pool_elements_per_cycle": _RATE, "lut_elements_per_cycle": _RATE,
                    "softmax_elements_per_cycle": _RATE, "data_movement_bytes_per_cycle": _RATE},
    "host": {"flops_per_s": _HOST_FLOPS, "link_bytes_per_s": _BANDWIDTH,
             "fallback_overhead_s": _HANDOFF, "invoke_overhead_s": _HANDOFF,
             "sticky_fallback": _flag()},
    "ops": OP_SCHEMA,
}


def schema_fields(schema: Mapping = SCHEMA, prefix: str = "") -> list[str]:
    """Every dotted field path of the schema (tables and leaves), for docs and provenance."""
    out = []
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(spec, dict):
            out.extend(schema_fields(spec, path + "."))
    return out


# ----------------------------------------------------------------------------- reading files

def profile_dirs() -> list[Path]:
    """Directories searched for a bare profile name, in order."""
    dirs = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    return dirs + [BUNDLED_PROFILE_DIR]


def list_profiles() -> list[str]:
    """Names of every loadable profile on the search path (``_``-prefixed fragments excluded)."""
    names = set()
    for d in profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml") if not p.stem.startswith("_"))
    return sorted(names)


def _resolve(name_or_path, near: Path | None = None) -> Path:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ProfileError(f"{name_or_path!r}: a profile is named by a string or a path")
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".toml") or os.sep in text \
            or "/" in text:
        path = Path(text)
        if near is not None and not path.is_absolute():
            path = near / path
        return path
    if not _NAME.fullmatch(text):
        raise ProfileError(f"{text!r}: not a profile name or a .toml path; names look like "
                           f"'ethos-u55-128'")
    dirs = ([near] if near is not None else []) + profile_dirs()
    for d in dirs:
        candidate = d / f"{text}.toml"
        if candidate.is_file():
            return candidate
    raise ProfileError(f"{text}: no such profile in {', '.join(str(d) for d in dirs)}; "
                       f"known: {', '.join(list_profiles()) or 'none'}")


def _read_toml(path: Path) -> dict:
    where = str(path)
    try:
        if path.is_dir():
            raise ProfileError(f"{where}: is a directory, not a profile file")
        if not path.is_file():
            raise ProfileError(f"{where}: no such profile file")
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{where}: unreadable ({exc.strerror or exc})") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{where}: {len(raw)} bytes is too large for a profile "
                           f"(at most {MAX_PROFILE_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{where}: not UTF-8 text (byte {exc.start}); a profile is TOML") \
            from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{where}: not valid TOML ({_one_line(exc)})") from None
    except (RecursionError, ValueError, TypeError) as exc:  # pathological nesting and the like
        raise ProfileError(f"{where}: not valid TOML ({type(exc).__name__})") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _record_origins(tree: dict, where: str, origins: dict, prefix: tuple = ()) -> None:
    for key, value in tree.items():
        origins[prefix + (key,)] = where
        if isinstance(value, dict):
            _record_origins(value, where, origins, prefix + (key,))


def _merge(base: dict, child: dict) -> dict:
    """Deep merge: tables merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_tree(path: Path, stack: tuple[Path, ...]) -> tuple[dict, dict]:
    """The merged TOML tree of ``path`` and its ``inherit`` chain, with each field's file."""
    real = path.resolve()
    if real in stack:
        chain = " -> ".join(p.name for p in stack + (real,))
        raise ProfileError(f"{stack[-1]}: field inherit: cycle {chain}; an inherit chain must end")
    if len(stack) >= MAX_INHERIT_DEPTH:
        raise ProfileError(f"{path}: field inherit: chain deeper than {MAX_INHERIT_DEPTH}")
    tree = _read_toml(path)
    origins: dict = {}
    _record_origins(tree, str(path), origins)
    parent = tree.pop("inherit", None)
    if parent is None:
        return tree, origins
    if not isinstance(parent, str) or not parent:
        raise ProfileError(f"{path}: field inherit: must be a profile name or a .toml path")
    try:
        base_path = _resolve(parent, near=path.parent)
    except ProfileError as exc:
        raise ProfileError(f"{path}: field inherit: {_one_line(exc)}") from None
    if not base_path.is_file():
        raise ProfileError(f"{path}: field inherit: {parent!r} not found ({base_path})")
    base, base_origins = _load_tree(base_path, stack + (real,))
    base_origins.update({k: v for k, v in origins.items() if k != ("inherit",)})
    return _merge(base, tree), base_origins


# ----------------------------------------------------------------------------- validation

class _Checker:
    def __init__(self, path: Path, origins: dict):
        self.path, self.origins = path, origins

    def file_of(self, dotted: tuple) -> str:
        for i in range(len(dotted), 0, -1):
            if dotted[:i] in self.origins:
                return self.origins[dotted[:i]]
        return str(self.path)

    def fail(self, dotted: tuple, message: str, sub: str = "") -> ProfileError:
        field = ".".join(dotted) + sub
        return ProfileError(f"{self.file_of(dotted)}: field {field}: {message}")

    def walk(self, tree: dict, schema: dict, prefix: tuple = ()) -> dict:
        for key in tree:
            if key not in schema:
                allowed = ", ".join(schema)
                raise self.fail(prefix + (key,), f"unknown field; allowed here: {allowed}")
        out = {}
        for key, spec in schema.items():
            dotted = prefix + (key,)
            if key not in tree and not isinstance(spec, dict) and spec.optional:
                out[key] = spec.default
                continue
            if key not in tree:
                what = "a table" if isinstance(spec, dict) else spec.allowed
                raise ProfileError(f"{self.path}: field {'.'.join(dotted)}: missing; "
                                   f"must be {what}")
            value = tree[key]
            if isinstance(spec, dict):
                if not isinstance(value, dict):
                    raise self.fail(dotted, f"must be a table, got {type(value).__name__}")
                out[key] = self.walk(value, spec, dotted)
                continue
            try:
                out[key] = spec.parse(value)
            except _Bad as bad:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise self.fail(dotted, f"{shown} not allowed; must be {bad.allowed}",
                                bad.sub) from None
        return out


def _cross_check(c: _Checker, v: dict) -> None:
    """Rules that relate fields to each other; each names the field to change."""
    a = v["arithmetic"]
    if a["saturation_point"] is SaturationPoint.PER_TILE and a["tile_k"] < 1:
        raise c.fail(("arithmetic", "tile_k"), f"{a['tile_k']} not allowed; saturation_point "
                     "per_tile needs tile_k >= 1")
    if a["rounding"] is RoundingMode.TFLITE and a["multiplier_bits"] != 32:
        raise c.fail(("arithmetic", "multiplier_bits"), "rounding 'tflite' needs multiplier_bits"
                     " = 32 (a Q0.31 multiplier)")
    if a["rounding"] is RoundingMode.TFLITE and a["accumulator_bits"] > 32:
        raise c.fail(("arithmetic", "accumulator_bits"), "rounding 'tflite' needs "
                     "accumulator_bits <= 32")
    if a["int16_requantize"] is Int16Requant.TFLITE_REDUCED_MULTIPLIER and (
            a["requantize"] is not RequantMode.MULTIPLIER_SHIFT or a["multiplier_bits"] != 32):
        raise c.fail(("arithmetic", "int16_requantize"), "'tflite_reduced_multiplier' reduces a "
                     "Q0.31 multiplier: needs requantize 'multiplier_shift' and "
                     "multiplier_bits = 32")
    if a["int16_add_left_shift"] != 20 and a["add_rounding"] is not AddRounding.PER_OPERAND:
        raise c.fail(("arithmetic", "int16_add_left_shift"), "applies to add_rounding "
                     "'per_operand' only")
    acc16 = a["int16_accumulator_bits"]
    if acc16 is not None and a["int16_requantize"] is Int16Requant.SAME:
        if a["rounding"] is RoundingMode.TFLITE and acc16 > 32:
            raise c.fail(("arithmetic", "int16_accumulator_bits"), "rounding 'tflite' needs "
                         "int16_accumulator_bits <= 32 (or int16_requantize "
                         "'tflite_reduced_multiplier')")
        if a["requantize"] is RequantMode.MULTIPLIER_SHIFT and \
                a["rounding"] is not RoundingMode.TFLITE and acc16 + a["multiplier_bits"] > 64:
            raise c.fail(("arithmetic", "int16_accumulator_bits"), f"{acc16} + multiplier_bits "
                         f"{a['multiplier_bits']} > 64; acc * M must fit int64")
    integer_m = a["requantize"] is RequantMode.MULTIPLIER_SHIFT
    if integer_m and a["rounding"] is not RoundingMode.TFLITE \
            and a["accumulator_bits"] + a["multiplier_bits"] > 64:
        raise c.fail(("arithmetic", "multiplier_bits"), f"accumulator_bits {a['accumulator_bits']}"
                     f" + multiplier_bits {a['multiplier_bits']} > 64; acc * M must fit int64")
    p = v["precision"]
    default = (p["default_weight_bits"], p["default_activation_bits"])
    modes = {(m.weight_bits, m.activation_bits): m for m in p["modes"]}
    if default not in modes:
        labels = ", ".join(m.label for m in p["modes"])
        raise c.fail(("precision", "default_weight_bits"), f"default pair w{default[0]}a"
                     f"{default[1]} is not in precision.modes ({labels})")
    arr = v["array"]
    lanes = arr["output_channel_lanes"] * arr["reduction_lanes"] * arr["output_pixel_lanes"]
    if lanes != modes[default].macs_per_cycle:
        raise c.fail(("array", "output_channel_lanes"), f"array lanes {arr['output_channel_lanes']}"
                     f" x {arr['reduction_lanes']} x {arr['output_pixel_lanes']} = {lanes} must "
                     f"equal macs_per_cycle {modes[default].macs_per_cycle:g} of the default pair")
    for kind in ("conv2d", "maxpool2d", "avgpool2d"):
        limits = v["ops"][kind]
        for k in limits["kernel_sizes"] or ():
            if k[0] > limits["max_kernel_hw"][0] or k[1] > limits["max_kernel_hw"][1]:
                raise c.fail(("ops", kind, "kernel_sizes"), f"{list(k)} exceeds max_kernel_hw "
                             f"{list(limits['max_kernel_hw'])}")
        for s in limits["strides"] or ():
            if max(s) > limits["max_stride"]:
                raise c.fail(("ops", kind, "strides"), f"{list(s)} exceeds max_stride "
                             f"{limits['max_stride']}")
    known = set(schema_fields())
    prov = v["provenance"]
    for key in list(prov["sources"]) + list(prov["assumed"]):
        field = key.split("[")[0]
        if field not in known:
            where = "sources" if key in prov["sources"] else "assumed"
            raise c.fail(("provenance", where), f"{key!r} names no profile field; use dotted "
                         f"paths such as 'memory.sram_bytes' or 'ops.conv2d'")


def _freeze(path: Path, v: dict) -> ChipProfile:
    a = v["arithmetic"]
    accumulator = AccumulatorSpec(a["accumulator_bits"], a["overflow"], a["saturation_point"],
                                  a["tile_k"], a["mac_order"])
    acc16 = None if a["int16_accumulator_bits"] is None else \
        AccumulatorSpec(a["int16_accumulator_bits"], a["overflow"], a["saturation_point"],
                        a["tile_k"], a["mac_order"])
    arithmetic = ArithmeticSpec(
        accumulator, RequantSpec(a["requantize"], a["rounding"], a["multiplier_bits"]),
        a["add_rounding"], a["avgpool_sum"], a["fully_connected_requantize"],
        a["global_avgpool"], a["quantize_rounding"], acc16, a["int16_requantize"],
        a["int16_add_left_shift"], a["mul_scale"])
    p = v["provenance"]
    ops = {kind: OpLimits(**limits) for kind, limits in v["ops"].items()}
    return ChipProfile(
        name=v["name"], path=str(path), description=v["description"],
        provenance=Provenance(p["sources"], p["assumed"], p["cycles_include"], p["cycles_exclude"]),
        clock_hz=v["clock_hz"], arithmetic=arithmetic, precision=v["precision"]["modes"],
        default_weight_bits=v["precision"]["default_weight_bits"],
        default_activation_bits=v["precision"]["default_activation_bits"],
        array=ArrayGeometry(**v["array"]), memory=MemorySpec(**v["memory"]),
        elementwise=ElementRates(**v["elementwise"]), host=HostSpec(**v["host"]),
        ops=MappingProxyType(ops))


def load_profile(name_or_path: str | os.PathLike) -> ChipProfile:
    """Load, merge (``inherit``) and validate a chip profile; any defect is a one-line
    ProfileError naming the file and the field."""
    path = _resolve(name_or_path)
    tree, origins = _load_tree(path, ())
    checker = _Checker(path, origins)
    values = checker.walk(tree, SCHEMA)
    if values["name"] != path.stem:
        raise checker.fail(("name",), f"{values['name']!r} must equal the file name {path.stem!r}")
    _cross_check(checker, values)
    try:
        return _freeze(path, values)
    except SimulatorError as exc:  # the contract's own checks, should a rule above miss one
        raise ProfileError(f"{path}: field arithmetic: {_one_line(exc)}") from None
