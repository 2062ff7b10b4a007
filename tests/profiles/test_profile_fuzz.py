"""Whatever bytes a profile file holds, load_profile answers a profile or a ProfileError."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from profile_files import flat_profile, to_toml, with_value
from simulator.errors import ProfileError
from simulator.profiles import ChipProfile, load_profile

VALID = with_value(flat_profile("k210-kpu"), "name", "chip")
VALID_BYTES = to_toml(VALID).encode()


def leaf_paths(doc: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in doc.items():
        out += leaf_paths(value, prefix + (key,)) if isinstance(value, dict) else [prefix + (key,)]
    return out


LEAVES = leaf_paths(VALID)
TOML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def answers_cleanly(tmp_path, content: bytes) -> None:
    path = tmp_path / "chip.toml"
    path.write_bytes(content)
    try:
        assert isinstance(load_profile(path), ChipProfile)
    except ProfileError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


@given(st.binary(max_size=4000))
def test_random_bytes(tmp_path_factory, content):
    answers_cleanly(tmp_path_factory.mktemp("fuzz"), content)


@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=8))
def test_mutated_valid_profile(tmp_path_factory, rnd: random.Random, edits):
    data = bytearray(VALID_BYTES)
    for _ in range(edits):
        pos = rnd.randrange(len(data))
        op = rnd.choice(["delete", "insert", "flip", "truncate", "duplicate"])
        if op == "delete":
            del data[pos:pos + rnd.randint(1, 40)]
        elif op == "insert":
            data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == "flip":
            data[pos] = rnd.randrange(256)
        elif op == "truncate":
            del data[pos:]
        else:
            end = min(len(data), pos + rnd.randint(1, 200))
            data[pos:pos] = data[pos:end]
        if not data:
            break
    answers_cleanly(tmp_path_factory.mktemp("fuzz"), bytes(data))


@given(st.sampled_from(LEAVES), TOML_VALUES)
def test_any_value_in_any_field(tmp_path_factory, leaf, value):
    doc = VALID if value is None else with_value(VALID, leaf, value)
    try:
        text = to_toml(doc).encode("utf-8", "surrogatepass")
    except UnicodeEncodeError:
        return
    answers_cleanly(tmp_path_factory.mktemp("fuzz"), text)
