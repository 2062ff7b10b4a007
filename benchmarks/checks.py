"""The benchmarks' verdict table: one row per target, its cells, then PASS or MISS."""

from __future__ import annotations

import sys


def report(header: tuple[str, ...], widths: tuple[int, ...], rows, check: bool) -> int:
    """Print ``rows`` (cells..., ok) under ``header`` in fixed-width columns, the last one
    PASS or MISS; the exit status: 1 if ``check`` and a row missed its target, else 0."""
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for *cells, ok in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip((*cells, "PASS" if ok else "MISS"),
                                                         widths)))
    missed = [str(r[0]) for r in rows if not r[-1]]
    if check and missed:
        print(f"missed: {missed}", file=sys.stderr)
        return 1
    return 0
