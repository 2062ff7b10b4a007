"""JSON as the commands print and write it: always valid JSON (RFC 8259 has no NaN or
Infinity, which Python's ``json`` would emit), numbers that are not finite become null."""

from __future__ import annotations

import json
import math


def finite_or_null(value):
    """``value`` with every non-finite float (NumPy's too) replaced by None, NumPy scalars by
    Python numbers and keys by strings, recursively."""
    if isinstance(value, dict):
        return {str(k): finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # NumPy scalars
        return finite_or_null(value.item())
    return value


def json_text(value, indent: int | None = 2, default=None) -> str:
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False, default=default)
