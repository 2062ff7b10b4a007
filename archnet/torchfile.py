"""torch.save / torch.load for archnet's files: no code runs, damage is found, writes are atomic.

Teachers, students and distillation checkpoints are all ``torch.save`` of a plain dict:

- reading uses ``weights_only=True`` always, so a crafted file cannot run code: torch's
  restricted unpickler admits tensors and plain values only, never an arbitrary callable;
- the dict carries the SHA-256 of its own content (``simulator.digest``: every tensor's dtype,
  shape and bytes, every plain value) under ``content_sha256``; reading recomputes and compares
  it, so a flipped bit is an error naming the file, not changed weights;
- writing goes through a temporary name and a rename (``simulator.fileio``), so a crash or kill
  never leaves half a file where a good one was;
- every way torch reports a missing, damaged or foreign file is a ``CheckpointError`` naming it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from archnet.errors import ArchnetError, CheckpointError
from simulator.digest import check_content_hash, with_content_hash
from simulator.fileio import atomic_write_bytes

# a torch file is read whole; nothing archnet writes comes near this (MiniLM's
# distillation checkpoints are about 100 MB)
MAX_FILE_BYTES = 8 << 30


def tensor_leaf(value):
    """``simulator.digest``'s view of a torch tensor: dtype, shape and raw bytes."""
    import torch
    if not isinstance(value, torch.Tensor):
        return None
    t = value.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else t.new_empty(0, dtype=torch.uint8)
    return str(t.dtype), tuple(t.shape), raw.numpy()


def save_torch(obj: dict, path: str | os.PathLike) -> Path:
    """Write the plain dict ``obj``, with its content hash, to ``path`` atomically."""
    import torch
    buf = io.BytesIO()
    torch.save(with_content_hash(obj, tensor_leaf), buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike, what: str) -> dict:
    """The dict in ``path``, its content hash verified; ``what`` names the kind of file in
    error messages. The dict keeps its ``content_sha256``."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size:,} bytes, larger than any {what} ({MAX_FILE_BYTES:,})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports damaged, foreign and code-carrying files many ways
        raise CheckpointError(f"{path}: unreadable {what} ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an archnet {what} (holds a {type(obj).__name__})")
    why = check_content_hash(obj, tensor_leaf)
    if why:
        raise CheckpointError(f"{path}: {what}: {why}")
    return obj


def check_finite(state: dict, where) -> None:
    """A ``CheckpointError`` naming the first weight that is NaN or infinite."""
    import torch
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: weight {name!r} holds NaN or infinite values")


def build_with_state(build, state, where, what: str = "weights"):
    """``build()`` with ``state`` loaded, in eval mode. The module is first built on the meta
    device and its shapes compared with ``state``'s: a config in a damaged or crafted file
    cannot allocate more than the weights the file actually holds. ``build`` raises
    ``ArchnetError`` (or ``TypeError``/``ValueError``/``KeyError``) for a bad config."""
    import torch
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{where}: state_dict must map names to tensors")
    try:
        with torch.device("meta"):
            shell = build()
    except CheckpointError:
        raise
    except (ArchnetError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{where}: bad config: {_first_line(exc)}") from None
    expected = shell.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k, v in expected.items()
             if k in state and (not isinstance(state[k], torch.Tensor)
                                or tuple(state[k].shape) != tuple(v.shape)
                                or state[k].is_floating_point() != v.is_floating_point())]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{where}: {what} do not fit the config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape or type {wrong[:3]}")
    check_finite(state, where)
    module = build()
    module.load_state_dict(state, strict=True)
    return module.eval()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
