"""Profiles say where every section's numbers come from; the README documents every key."""

from __future__ import annotations

import ast

import pytest

from profile_files import CHIP_PROFILES
from simulator.ir import OpKind
from simulator.profiles import OP_SCHEMA, BUNDLED_PROFILE_DIR, SCHEMA, load_profile, schema_fields

SECTIONS = ["clock_hz", "arithmetic", "precision", "array", "memory", "elementwise", "host", "ops"]


@pytest.mark.parametrize("name", CHIP_PROFILES)
def test_every_section_is_cited_or_marked_assumed(name):
    prov = load_profile(name).provenance
    covered = [key.split("[")[0] for key in list(prov.sources) + list(prov.assumed)]
    for section in SECTIONS:
        assert any(k == section or k.startswith(section + ".") for k in covered), \
            f"{name}: nothing in [provenance] cites or assumes {section}"


def test_readme_documents_every_key():
    """Each section as a `[section` heading, each op kind and each key in backticks."""
    readme = (BUNDLED_PROFILE_DIR / "README.md").read_text()
    for field in schema_fields():
        top_table = "." not in field and isinstance(SCHEMA[field], dict)
        shown = f"`[{field}" if top_table else f"`{field.split('.')[-1]}`"
        assert shown in readme, f"chip_profiles/README.md lacks {shown}"


def test_op_tables_match_the_ir_op_kinds():
    host_only = {OpKind.FALLBACK, OpKind.QUANTIZE, OpKind.DEQUANTIZE}
    assert set(OP_SCHEMA) == {k.value for k in OpKind if k not in host_only}
    assert SCHEMA["ops"] is OP_SCHEMA


def test_profiles_module_stays_on_floor_two():
    """simulator.profiles may import only the ground floor (contract, errors)."""
    import simulator.profiles as mod
    tree = ast.parse(open(mod.__file__).read())
    ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and n.module and n.module.startswith("simulator")}
    ours |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
             if a.name.startswith("simulator")}
    assert ours <= {"simulator.contract", "simulator.errors"}, ours
