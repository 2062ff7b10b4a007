"""Every shipped profile loads, resolves by name and path, and says what its chip does."""

from __future__ import annotations

import dataclasses

import pytest

from profile_files import CHIP_PROFILES, flat_profile, with_value, write
from simulator.contract import Overflow, RequantMode, RoundingMode
from simulator.errors import ProfileError
from simulator.profiles import (BUNDLED_PROFILE_DIR, ChipProfile, ReductionMapping, list_profiles,
                                load_profile)


@pytest.mark.parametrize("name", CHIP_PROFILES)
def test_every_profile_loads_by_name_and_by_path(name):
    by_name = load_profile(name)
    by_path = load_profile(BUNDLED_PROFILE_DIR / f"{name}.toml")
    assert isinstance(by_name, ChipProfile) and by_name == by_path
    assert by_name.name == name and by_name.provenance.sources and by_name.provenance.assumed


def test_list_profiles_is_the_folder_without_fragments(monkeypatch):
    monkeypatch.delenv("ARCHNET_PROFILE_PATH", raising=False)
    assert list_profiles() == CHIP_PROFILES
    assert "_base" not in list_profiles()
    assert {"ideal", "onnx-qlinear", "k210-kpu", "edgetpu", "rk3588-npu-core", "rk3566-npu",
            "ethos-u55-128", "ethos-u55-256"} <= set(CHIP_PROFILES)


def test_base_is_a_fragment_not_a_profile():
    with pytest.raises(ProfileError, match=r"_base\.toml: field name: missing"):
        load_profile("_base")


def test_profile_path_env_comes_first(tmp_path, monkeypatch):
    doc = with_value(flat_profile("ideal"), "clock_hz", 123e6)
    write(tmp_path, "ideal", doc)
    monkeypatch.setenv("ARCHNET_PROFILE_PATH", str(tmp_path))
    assert load_profile("ideal").clock_hz == 123e6
    monkeypatch.delenv("ARCHNET_PROFILE_PATH")
    assert load_profile("ideal").clock_hz == 1e9


def test_inherit_overrides_only_what_the_child_says():
    small, big = load_profile("ethos-u55-128"), load_profile("ethos-u55-256")
    assert (small.default_mode.macs_per_cycle, big.default_mode.macs_per_cycle) == (128, 256)
    assert (small.array.output_pixel_lanes, big.array.output_pixel_lanes) == (2, 4)
    assert big.memory.sram_bytes == 2 * small.memory.sram_bytes
    assert big.clock_hz == small.clock_hz and big.arithmetic == small.arithmetic
    assert big.ops == small.ops and big.host == small.host
    # the child's sources table merges into the parent's
    assert "clock_hz" in big.provenance.sources and "vela" in big.provenance.sources["array"].lower()


def test_profiles_differ_where_the_chips_differ():
    ideal, k210 = load_profile("ideal"), load_profile("k210-kpu")
    ethos, edge = load_profile("ethos-u55-128"), load_profile("edgetpu")
    ort, rk88, rk66 = load_profile("onnx-qlinear"), load_profile("rk3588-npu-core"), load_profile("rk3566-npu")
    # ops and limits
    assert k210.op("conv2d").kernel_sizes == ((1, 1), (3, 3)) and ideal.op("conv2d").kernel_sizes is None
    assert k210.op("conv2d").max_input_channels == 1024 and not k210.op("add").supported
    assert ideal.op("add").supported and not k210.op("lookup_table").supported
    # activation units: a programmable table, fixed functions, or none
    assert ethos.op("lookup_table").functions is None
    assert edge.op("lookup_table").functions == ("sigmoid", "tanh")
    assert "hardswish" in rk88.op("lookup_table").functions and "gelu" not in \
        rk66.op("lookup_table").functions
    assert not k210.op("mul").supported and edge.op("mul").supported
    assert ethos.op("lookup_table").max_input_bits == 8 and ethos.op("conv2d").max_stride == 3
    # arithmetic
    a = ideal.arithmetic
    assert (a.accumulator.bits, a.accumulator.overflow, a.requant.rounding, a.requant.multiplier_bits) \
        == (40, Overflow.SATURATE, RoundingMode.HALF_EVEN, 24)
    assert ort.arithmetic.accumulator.overflow is Overflow.WRAP
    assert ort.arithmetic.requant.mode is RequantMode.FLOAT_SCALE
    assert ethos.arithmetic.requant.rounding is RoundingMode.TFLITE and ethos.arithmetic.accumulator.bits == 32
    assert k210.arithmetic.requant.rounding is RoundingMode.HALF_UP
    # bit pairs and their rates
    assert rk88.mode_for(4, 4).macs_per_cycle == 2 * rk88.mode_for(8, 8).macs_per_cycle
    assert rk66.mode_for(4, 4) == rk66.mode_for(8, 8)          # no int4: runs as int8
    assert k210.mode_for(16, 8) is None and ethos.mode_for(8, 16).macs_per_cycle == 64
    # memory and host
    assert edge.memory.weight_cache_bytes == int(6.9 * 2**20) and edge.host.sticky_fallback
    assert not rk88.host.sticky_fallback and k210.memory.sram_bytes == 2 * 2**20
    assert k210.array.reduction_mapping is ReductionMapping.KERNEL_TAPS


def test_mode_for_promotes_to_the_fastest_wide_enough_pair():
    ideal = load_profile("ideal")
    assert ideal.mode_for(3, 5).label == "w4a8"
    assert ideal.mode_for(1, 1).label == "w2a2"
    assert ideal.mode_for(17, 8) is None


def test_profiles_are_frozen():
    p = load_profile("k210-kpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.clock_hz = 1.0
    with pytest.raises(TypeError):
        p.ops["conv2d"] = None
