"""Helpers: write variants of a real profile into a temporary directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

from simulator.profiles import BUNDLED_PROFILE_DIR

CHIP_PROFILES = sorted(p.stem for p in BUNDLED_PROFILE_DIR.glob("*.toml") if not p.stem.startswith("_"))


def flat_profile(name: str = "k210-kpu") -> dict:
    """A real profile with its inherit chain merged by hand, as one TOML table."""
    def load(stem):
        doc = tomllib.loads((BUNDLED_PROFILE_DIR / f"{stem}.toml").read_text())
        parent = doc.pop("inherit", None)
        return _merge(load(parent), doc) if parent else doc
    return load(name)


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_toml(doc: dict) -> str:
    """Minimal TOML writer for profile-shaped documents (tables, arrays, scalars)."""
    lines: list[str] = []

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {scalar(x)}' for k, x in v.items()) + " }"
        return repr(v)

    def table(prefix: str, d: dict) -> None:
        simple = {k: v for k, v in d.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f'"{k}" = {scalar(v)}' for k, v in simple.items())
        for k, v in nested.items():
            table(f'{prefix}."{k}"' if prefix else f'"{k}"', v)

    table("", doc)
    return "\n".join(lines) + "\n"


def write(directory: Path, name: str, doc: dict | str | bytes) -> Path:
    path = directory / f"{name}.toml"
    if isinstance(doc, dict):
        doc = to_toml(doc)
    path.write_bytes(doc if isinstance(doc, bytes) else doc.encode())
    return path


def with_value(doc: dict, dotted: str | tuple, value) -> dict:
    """A deep copy of ``doc`` with one field set (``value is DELETE`` removes it); the field is
    a dotted path or a tuple of keys (for keys that hold dots themselves)."""
    import copy
    out = copy.deepcopy(doc)
    *path, last = dotted.split(".") if isinstance(dotted, str) else dotted
    node = out
    for key in path:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()
