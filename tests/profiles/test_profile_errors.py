"""Bad profiles are one-line ProfileErrors naming the file, the field and what is allowed."""

from __future__ import annotations

import pytest

from profile_files import DELETE, flat_profile, with_value, write
from simulator.errors import ProfileError
from simulator.profiles import MAX_PROFILE_BYTES, load_profile


def load_error(path) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def chip(**changes) -> dict:
    doc = with_value(flat_profile("k210-kpu"), "name", "chip")
    for dotted, value in changes.items():
        doc = with_value(doc, dotted.replace("__", "."), value)
    return doc


FIELD_CASES = [
    # (changes, field named, words of what is allowed)
    ({"colour": "red"}, "colour", "unknown field"),
    ({"ops__conv2d__kernel_size": [[3, 3]]}, "ops.conv2d.kernel_size", "unknown field"),
    ({"ops__layer_norm": {"supported": True}}, "ops.layer_norm", "unknown field"),
    ({"clock_hz": DELETE}, "clock_hz", "missing"),
    ({"memory__sram_bytes": DELETE}, "memory.sram_bytes", "missing"),
    ({"ops__conv2d__depthwise": DELETE}, "ops.conv2d.depthwise", "missing"),
    ({"clock_hz": "fast"}, "clock_hz", "finite number in 1e5..1e11 (Hz)"),
    ({"clock_hz": 0}, "clock_hz", "finite number in 1e5..1e11 (Hz)"),
    ({"clock_hz": 1e-300}, "clock_hz", "finite number in 1e5..1e11 (Hz)"),
    ({"clock_hz": float("nan")}, "clock_hz", "finite number"),
    ({"clock_hz": float("inf")}, "clock_hz", "finite number"),
    ({"clock_hz": 10**400}, "clock_hz", "finite number"),
    ({"memory__weight_bytes_per_s": -1.0}, "memory.weight_bytes_per_s", "1e3..1e14 (bytes/s)"),
    ({"memory__sram_bytes": 1.5}, "memory.sram_bytes", "an integer in 1.."),
    ({"memory__sram_bytes": True}, "memory.sram_bytes", "an integer in 1.."),
    ({"memory": 5}, "memory", "must be a table"),
    ({"arithmetic__accumulator_bits": 49}, "arithmetic.accumulator_bits", "8..48"),
    ({"arithmetic__accumulator_bits": 7}, "arithmetic.accumulator_bits", "8..48"),
    ({"arithmetic__overflow": "clip"}, "arithmetic.overflow", "'wrap', 'saturate'"),
    ({"arithmetic__rounding": "nearest"}, "arithmetic.rounding", "'half_even'"),
    ({"arithmetic__saturation_point": "per_tile", "arithmetic__tile_k": 0},
     "arithmetic.tile_k", "tile_k >= 1"),
    ({"arithmetic__accumulator_bits": 48, "arithmetic__multiplier_bits": 24},
     "arithmetic.multiplier_bits", "> 64"),
    ({"arithmetic__rounding": "tflite", "arithmetic__multiplier_bits": 16},
     "arithmetic.multiplier_bits", "= 32"),
    ({"arithmetic__int16_accumulator_bits": 65}, "arithmetic.int16_accumulator_bits",
     "8..64 (bits)"),
    ({"arithmetic__int16_requantize": "reduced"}, "arithmetic.int16_requantize",
     "'tflite_reduced_multiplier'"),
    ({"arithmetic__int16_requantize": "tflite_reduced_multiplier",
      "arithmetic__requantize": "float_scale"}, "arithmetic.int16_requantize",
     "multiplier_bits = 32"),
    ({"arithmetic__int16_add_left_shift": 15}, "arithmetic.int16_add_left_shift",
     "'per_operand' only"),
    ({"arithmetic__int16_add_left_shift": 32}, "arithmetic.int16_add_left_shift", "0..31"),
    ({"arithmetic__rounding": "tflite", "arithmetic__multiplier_bits": 32,
      "arithmetic__int16_accumulator_bits": 64}, "arithmetic.int16_accumulator_bits",
     "int16_accumulator_bits <= 32"),
    ({"arithmetic__mul_scale": "float16"}, "arithmetic.mul_scale", "'float32'"),
    ({"array__efficiency": 1.5}, "array.efficiency", "1e-3..1"),
    ({"array__reduction_mapping": "rows"}, "array.reduction_mapping", "'kernel_taps'"),
    ({"array__reduction_lanes": 8}, "array.output_channel_lanes", "576"),
    ({"precision__modes": []}, "precision.modes", "non-empty list"),
    ({"precision__modes": [{"weight_bits": 0, "activation_bits": 8, "macs_per_cycle": 576}]},
     "precision.modes[0].weight_bits", "1..16"),
    ({"precision__modes": [{"weight_bits": 8, "activation_bits": 8, "macs": 576}]},
     "precision.modes[0]", "no field 'macs'"),
    ({"precision__modes": [{"weight_bits": 8, "activation_bits": 8, "macs_per_cycle": 576}] * 2},
     "precision.modes[1]", "listed twice"),
    ({"precision__default_weight_bits": 4}, "precision.default_weight_bits", "not in precision.modes"),
    ({"ops__conv2d__kernel_sizes": [[5, 5]]}, "ops.conv2d.kernel_sizes", "max_kernel_hw"),
    ({"ops__conv2d__kernel_sizes": "all"}, "ops.conv2d.kernel_sizes", '"any" or'),
    ({"ops__conv2d__max_kernel_hw": [3]}, "ops.conv2d.max_kernel_hw", "[height, width]"),
    ({"ops__conv2d__strides": [[3, 3]]}, "ops.conv2d.strides", "max_stride"),
    ({"ops__lookup_table__max_input_bits": 32}, "ops.lookup_table.max_input_bits", "1..16"),
    ({"provenance__assumed": ["memory.sram"]}, "provenance.assumed", "names no profile field"),
    ({"provenance__sources": {"clock": "somewhere"}}, "provenance.sources", "names no profile field"),
    ({"name": "other"}, "name", "must equal the file name"),
    ({"host__sticky_fallback": "yes"}, "host.sticky_fallback", "true or false"),
]


@pytest.mark.parametrize("changes,field,allowed", FIELD_CASES,
                         ids=[case[1] + ":" + case[2] for case in FIELD_CASES])
def test_bad_field_names_file_field_and_allowed(tmp_path, changes, field, allowed):
    path = write(tmp_path, "chip", chip(**changes))
    message = load_error(path)
    assert str(path) in message and f"field {field}" in message and allowed in message, message


def test_error_in_a_base_file_names_the_base_file(tmp_path):
    base = with_value(chip(), "typo_key", 1)
    write(tmp_path, "base", base)
    child = write(tmp_path, "child", 'inherit = "base"\nname = "child"\n')
    message = load_error(child)
    assert "base.toml" in message and "field typo_key" in message


@pytest.mark.parametrize("content,words", [
    (b"\x00\xff\xfe\x80 garbage", "not UTF-8"),
    (b"this is not toml", "not valid TOML"),
    (b"[arithmetic\naccumulator_bits = 32", "not valid TOML"),
    (b"", "field name: missing"),
    (b"a = 1\na = 2\n", "not valid TOML"),
    (b"[" * 5000, "not valid TOML"),
])
def test_garbage_is_a_clear_error(tmp_path, content, words):
    path = write(tmp_path, "chip", content)
    message = load_error(path)
    assert str(path) in message and words in message, message


def test_truncated_profile_is_a_clear_error(tmp_path):
    text = (write(tmp_path, "full", chip(name="chip"))).read_text()
    cut_in_string = text[: text.index('"description" = "') + 25]
    assert "not valid TOML" in load_error(write(tmp_path, "chip", cut_in_string))
    cut_at_line = "\n".join(text.splitlines()[:5]) + "\n"
    assert "missing" in load_error(write(tmp_path, "chip", cut_at_line))


def test_too_large_file(tmp_path):
    path = write(tmp_path, "chip", b"# " + b"x" * MAX_PROFILE_BYTES)
    assert "too large" in load_error(path)


def test_directory_missing_file_and_unknown_name(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    assert "is a directory" in load_error(tmp_path / "dir.toml")
    assert "no such profile file" in load_error(tmp_path / "absent.toml")
    message = load_error("no-such-chip")
    assert "no-such-chip" in message and "known:" in message and "k210-kpu" in message
    assert "not a profile name" in load_error("bad name!")


@pytest.mark.parametrize("files", [
    {"a": 'inherit = "b"\n', "b": 'inherit = "a"\n'},
    {"a": 'inherit = "a"\n'},
    {"a": 'inherit = "b.toml"\n', "b": 'inherit = "c"\n', "c": 'inherit = "a"\n'},
])
def test_inherit_cycle(tmp_path, files):
    for name, text in files.items():
        write(tmp_path, name, text)
    message = load_error(tmp_path / "a.toml")
    assert "field inherit" in message and "cycle" in message


def test_bad_inherit_values(tmp_path):
    assert "field inherit" in load_error(write(tmp_path, "a", 'inherit = "nowhere"\n'))
    assert "field inherit" in load_error(write(tmp_path, "b", "inherit = 5\n"))


def test_a_profile_is_named_by_a_string_or_a_path():
    assert "string or a path" in load_error(123)
    assert "not a profile name" in load_error("")
