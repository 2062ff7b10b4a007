"""Content hashes: SHA-256 of what a file holds, independent of the container that holds it.

Programs and checkpoints store the hash of their content and verify it on load, so a bit flipped
on a disk or in a copy is an error naming the file, not a model with changed weights. The hash
is of a canonical, type-tagged encoding of the value (dict keys sorted, every array's dtype and
shape with its bytes), so re-zipping, re-pickling or a new timestamp leave it unchanged, and no
two different values encode alike.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Callable

import numpy as np

HASH_KEY = "content_sha256"

# leaf(value) -> (dtype name, shape, raw bytes as any buffer) for array types this module does not
# know (torch tensors)
Leaf = Callable[[object], "tuple[str, tuple[int, ...], object] | None"]


def _update(h, value, leaf: Leaf | None) -> None:
    if value is None:
        h.update(b"N")
    elif value is True or value is False:
        h.update(b"T" if value else b"F")
    elif isinstance(value, int):
        h.update(b"I%d;" % value)
    elif isinstance(value, float):
        h.update(b"D" + struct.pack("<d", value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data) + data)
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"B%d:" % len(value) + bytes(value))
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d:" % len(value))
        for v in value:
            _update(h, v, leaf)
    elif isinstance(value, dict):
        keys = sorted(value, key=lambda k: (type(k).__name__, str(k)))
        h.update(b"M%d:" % len(keys))
        for k in keys:
            _update(h, k, leaf)
            _update(h, value[k], leaf)
    elif isinstance(value, (np.ndarray, np.generic)):
        arr = np.ascontiguousarray(value)
        _array(h, arr.dtype.str, arr.shape, arr.reshape(-1).view(np.uint8))
    else:
        found = leaf(value) if leaf is not None else None
        if found is None:
            raise TypeError(f"no content hash for a value of type {type(value).__name__}")
        _array(h, *found)


def _array(h, dtype: str, shape, data) -> None:
    """``data``: the array's bytes, any buffer (hashed in place, not copied)."""
    dims = ",".join(str(int(d)) for d in shape)
    h.update(b"A%s|%s|%d:" % (dtype.encode(), dims.encode(), memoryview(data).nbytes))
    h.update(data)


def content_digest(value, leaf: Leaf | None = None) -> str:
    """The SHA-256 (hex) of ``value``: plain values, dicts, lists and arrays, nested."""
    h = hashlib.sha256()
    _update(h, value, leaf)
    return h.hexdigest()


def files_sha256(*paths) -> str:
    """The SHA-256 (hex) of the files' bytes, one after another (a file's own digest for one),
    read in 1 MiB blocks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def with_content_hash(payload: dict, leaf: Leaf | None = None) -> dict:
    """``payload`` plus its own hash under ``HASH_KEY`` (of everything else it holds)."""
    body = {k: v for k, v in payload.items() if k != HASH_KEY}
    return {**body, HASH_KEY: content_digest(body, leaf)}


def check_content_hash(payload: dict, leaf: Leaf | None = None) -> str | None:
    """Why ``payload``'s stored hash does not hold (a one-line reason), or None when it does."""
    stored = payload.get(HASH_KEY)
    if not isinstance(stored, str):
        return "it carries no content hash (damaged, or written by an older archnet)"
    body = {k: v for k, v in payload.items() if k != HASH_KEY}
    try:
        actual = content_digest(body, leaf)
    except TypeError as exc:
        return f"it holds a value that cannot be hashed ({exc})"
    if actual != stored:
        return (f"its content does not match its hash (stored {stored[:12]}..., content "
                f"{actual[:12]}...): the file is damaged")
    return None
