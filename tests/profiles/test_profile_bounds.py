"""Every number a profile holds has physical bounds, and any profile within them costs finite
numbers that JSON can carry."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profile_files import flat_profile, with_value, write
from simulator.cost import estimate
from simulator.errors import ProfileError
from simulator.examples import example_program
from simulator.profiles import (SCHEMA, ChipProfile, FeatureMapTiling, ReductionMapping,
                                load_profile, schema_fields)

# k210 spells every list field out (no "any"), so each number of the schema has a value here.
VALID = with_value(flat_profile("k210-kpu"), "name", "chip")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(doc: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(doc)
    _get(out, path[:-1])[path[-1]] = value
    return out


def _numeric_slots() -> list[tuple[str, tuple, object]]:
    """(field the error names, path of one number in VALID, the leaf that must bound it) for each
    number a profile holds: scalars, an element of a list, a field of a list of tables. A number
    is found by its value in VALID, not by its leaf, so a leaf without bounds cannot hide."""
    slots = []
    for field in schema_fields():
        path = tuple(field.split("."))
        if getattr(_get(SCHEMA, path), "optional", False):
            continue  # a choice a profile may leave out (add_rounding ...): never a number
        leaf, value = _get(SCHEMA, path), _get(VALID, path)
        if isinstance(leaf, dict):
            continue
        if _is_number(value):
            slots.append((field, path, leaf))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = leaf.items or {}
            slots += [(f"{field}[0].{key}", path + (0, key), items.get(key))
                      for key, v in value[0].items() if _is_number(v)]
        elif isinstance(value, list) and value:
            inner = (0, 0) if isinstance(value[0], list) else (0,)
            if _is_number(_get(value, inner)):
                slots.append((field, path + inner, leaf))
    return slots


SLOTS = _numeric_slots()
CASES = ["below", "above", "nan", "inf"]


def _outside(bounds, case: str):
    lo, hi = bounds
    if case in ("nan", "inf"):
        return float(case)
    if isinstance(lo, int) and isinstance(hi, int):
        return lo - 1 if case == "below" else hi + 1
    return math.nextafter(lo, -math.inf) if case == "below" else math.nextafter(hi, math.inf)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("field,path,leaf", SLOTS, ids=[s[0] for s in SLOTS])
def test_a_number_outside_its_physical_bounds_is_refused(tmp_path, field, path, leaf, case):
    assert leaf is not None and leaf.bounds is not None, f"{field} is a number with no bounds"
    lo, hi = leaf.bounds
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, (field, leaf.bounds)
    file = write(tmp_path, "chip", _set(VALID, path, _outside(leaf.bounds, case)))
    with pytest.raises(ProfileError) as info:
        load_profile(file)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{file}: field {field}: "), message
    assert leaf.allowed in message, message


def test_every_bounded_leaf_is_exercised():
    def bounded(schema, prefix=""):
        for key, spec in schema.items():
            if isinstance(spec, dict):
                yield from bounded(spec, f"{prefix}{key}.")
            elif spec.bounds is not None:
                yield prefix + key
            else:
                yield from (f"{prefix}{key}[0].{k}" for k, item in (spec.items or {}).items()
                            if item.bounds is not None)
    assert set(bounded(SCHEMA)) <= {field for field, _, _ in SLOTS}


# ----------------------------------------------------------------------------- finite costs

PROGRAM = example_program()
# Numbers drawn below; the widths and the lanes are tied by cross-checks and set apart.
DRAWN = [(path, leaf) for field, path, leaf in SLOTS if len(path) == len(field.split("."))
         and path[0] not in ("arithmetic", "precision") and not field.endswith("_lanes")]
BASE = copy.deepcopy(VALID)
for _limits in BASE["ops"].values():  # no kernel or stride list for a drawn max_* to contradict
    _limits.update({k: "any" for k in ("kernel_sizes", "strides") if k in _limits})


def _within(leaf):
    lo, hi = leaf.bounds
    if isinstance(lo, int) and isinstance(hi, int):
        return st.integers(lo, hi)
    return st.sampled_from([lo, hi]) | st.floats(lo, hi)


MACS = SCHEMA["precision"]["modes"].items["macs_per_cycle"]
LANES = SCHEMA["array"]["output_channel_lanes"]


@st.composite
def bounded_profiles(draw) -> dict:
    doc = copy.deepcopy(BASE)
    for path, leaf in DRAWN:
        _get(doc, path[:-1])[path[-1]] = draw(_within(leaf))
    lanes = []  # three axes whose product, the default pair's MACs per cycle, is in bounds too
    for _ in range(3):
        lanes.append(draw(st.integers(1, min(LANES.bounds[1],
                                             int(MACS.bounds[1]) // math.prod(lanes)))))
    doc["array"].update(dict(zip(("output_channel_lanes", "reduction_lanes",
                                  "output_pixel_lanes"), lanes)))
    doc["array"]["reduction_mapping"] = draw(st.sampled_from([m.value for m in ReductionMapping]))
    doc["memory"]["feature_map_tiling"] = draw(st.sampled_from([t.value for t in FeatureMapTiling]))
    doc["host"]["sticky_fallback"] = draw(st.booleans())
    doc["precision"]["modes"] = [
        {"weight_bits": 8, "activation_bits": 8, "macs_per_cycle": math.prod(lanes)},
        {"weight_bits": 16, "activation_bits": 16, "macs_per_cycle": draw(_within(MACS))}]
    return doc


@settings(max_examples=150)  # ~10 ms an example; extremes of several fields must meet
@given(bounded_profiles())
def test_any_accepted_profile_estimates_to_valid_json(tmp_path_factory, doc):
    try:
        profile = load_profile(write(tmp_path_factory.mktemp("bounds"), "chip", doc))
    except ProfileError:
        return
    assert isinstance(profile, ChipProfile)
    est = estimate(PROGRAM, profile)
    json.dumps(est.to_dict(), allow_nan=False)
    assert 0 < est.total_latency_ms < math.inf
