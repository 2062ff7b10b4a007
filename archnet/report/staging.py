"""Writing a whole folder so that a failure leaves nothing half-written.

``staged_folder(final)`` yields an empty temporary folder beside ``final``; when the block ends
without an exception the temporary folder is renamed to ``final`` (an earlier ``final`` is moved
aside first and deleted after, so it stays intact until the new one is complete); on any
exception the temporary folder is removed and ``final`` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from archnet.errors import ReportError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_target(final: Path) -> None:
    if final.exists() and not final.is_dir():
        raise ReportError(f"{final}: exists and is not a folder; choose another --out")


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike):
    final = Path(final)
    check_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.rmdir(old)
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


__all__ = ["check_target", "staged_folder", "write_text"]
